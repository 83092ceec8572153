#!/bin/bash -eu
# ClusterFuzzLite: the very same build as OSS-Fuzz's (one script, one place to change).
exec "$SRC/ksalloc/fuzz/oss-fuzz/build.sh"
