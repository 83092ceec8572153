#!/bin/bash -eu
# Copyright 2026 the ksalloc authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
#
################################################################################
# OSS-Fuzz build script for ksalloc: builds every fuzz target (one per catalogued allocator, the
# differential, plugin, trace, plugin-entry and DMA targets) from $CC $CFLAGS with
# $LIB_FUZZING_ENGINE, links with $CXX $CXXFLAGS, and writes into $OUT each <target> with its
# <target>_seed_corpus.zip, <target>.dict and <target>.options, the plugin fuzz_plugin loads
# (fuzz_plugin_example.so), and in $OUT/lib every shared library a target needs that OSS-Fuzz's
# runner image does not have (jemalloc, mimalloc and tcmalloc: the targets find them through the
# run path $ORIGIN/lib). Adds no -fsanitize flag of its own; under SANITIZER=memory it leaves out
# the three allocators built on those uninstrumented libraries. Temporaries go to $WORK. The same
# script serves ClusterFuzzLite (.clusterfuzzlite/build.sh), `make oss-fuzz-check` and
# `make fuzz-coverage`.
cd "$SRC/ksalloc"

peers=1
[ "${SANITIZER:-}" = memory ] && peers=0
fuzz_make=(make FUZZ_CC="$CC" FUZZ_LINK="$CXX" FUZZ_CFLAGS="$CFLAGS" FUZZ_LDFLAGS="$CXXFLAGS"
    FUZZ_ENGINE="$LIB_FUZZING_ENGINE" FUZZ_BUILD="$WORK/ksalloc-fuzz" FUZZ_PEERS=$peers
    FUZZ_SHIPPED_LIB_DIR=lib FUZZ_PLUGIN_SRC=tests/plugin/example_plugin.c)

# Warnings stay on but are not errors here: a newer clang in the base image must not break the
# fuzz build.
"${fuzz_make[@]}" -j"$(nproc)" fuzz-build FUZZ_WARN="-Wall -Wextra"

targets=$("${fuzz_make[@]}" -s fuzz-list-targets)
for target in $targets; do
    cp "$WORK/ksalloc-fuzz/bin/$target" "$OUT/$target"
    case $target in
    fuzz_alloc_*) corpus=fuzz/corpus/fuzz_allocator; base=fuzz_allocator ;;
    fuzz_differential | fuzz_plugin) corpus=fuzz/corpus/fuzz_allocator; base=$target ;;
    *) corpus=fuzz/corpus/$target; base=$target ;;
    esac
    rm -f "$OUT/${target}_seed_corpus.zip"
    if [ -d "$corpus" ]; then
        zip -q -j "$OUT/${target}_seed_corpus.zip" "$corpus"/*
        if [ -d "fuzz/corpus/$target" ] && [ "fuzz/corpus/$target" != "$corpus" ]; then
            zip -q -j "$OUT/${target}_seed_corpus.zip" "fuzz/corpus/$target"/*
        fi
    fi
    dict=fuzz/$base.dict
    [ -f "$dict" ] || dict=fuzz/fuzz_allocator.dict
    case $target in fuzz_trace | fuzz_plugin_entry) dict=fuzz/$target.dict ;; esac
    if [ -f "$dict" ]; then cp "$dict" "$OUT/$target.dict"; fi
    opts=fuzz/$target.options
    [ -f "$opts" ] || opts=fuzz/$base.options
    if [ -f "$opts" ]; then cp "$opts" "$OUT/$target.options"; fi
done

# fuzz_plugin fuzzes the plugin beside it when no -plugin= flag names one (no job needs .options).
cp "$WORK/ksalloc-fuzz/bin/fuzz_plugin_example.so" "$OUT/fuzz_plugin_example.so"

# Ship what the runner lacks: every library a target or the plugin resolves outside $OUT, apart
# from the C and C++ runtimes every runner image has.
mkdir -p "$OUT/lib"
for object in $targets fuzz_plugin_example.so; do
    ldd "$OUT/$object" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r soname path; do
    case $soname in
    libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libstdc++.so.* | libgcc_s.so.* | ld-linux*) ;;
    *) case $path in "$OUT"/*) ;; *) cp -L "$path" "$OUT/lib/$soname" ;; esac ;;
    esac
done
