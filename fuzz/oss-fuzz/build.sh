#!/bin/bash -eu
# OSS-Fuzz build script for ksalloc: builds every fuzz target (one per catalogued allocator, the
# differential, plugin, trace and plugin-entry targets) from $CC $CFLAGS with
# $LIB_FUZZING_ENGINE, links with $CXX, and writes into $OUT each <target> with its
# <target>_seed_corpus.zip, <target>.dict and <target>.options. Adds no -fsanitize flag of its
# own: the sanitizer comes from $CFLAGS. Temporaries go to $WORK. The same script serves
# ClusterFuzzLite (.clusterfuzzlite/build.sh) and `make oss-fuzz-check`.
cd "$SRC/ksalloc"

# fuzz/fuzz.mk's fuzz-build with OSS-Fuzz's compiler, flags and engine. Warnings stay on but are
# not errors here: a newer clang in the base image must not break the fuzz build.
${KSALLOC_MAKE:-make} -j"$(nproc)" fuzz-build \
    FUZZ_CC="$CC" FUZZ_LINK="$CXX" FUZZ_CFLAGS="$CFLAGS" FUZZ_LDFLAGS="$CXXFLAGS" \
    FUZZ_ENGINE="$LIB_FUZZING_ENGINE" FUZZ_BUILD="$WORK/ksalloc-fuzz" FUZZ_WARN="-Wall -Wextra" \
    FUZZ_PLUGIN_SRC=tests/plugin/example_plugin.c

targets=$(${KSALLOC_MAKE:-make} -s fuzz-list-targets)
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

# fuzz_plugin needs a plugin to fuzz: ship the example one next to it and name it in the
# options (ClusterFuzz passes the [libfuzzer] flags on the command line; -plugin= is read in
# LLVMFuzzerInitialize, relative paths are taken from the binary's directory).
cp "$WORK/ksalloc-fuzz/lib/plugins/example_plugin.so" "$OUT/fuzz_plugin_example.so"
printf '[libfuzzer]\nmax_len = 2048\nplugin = fuzz_plugin_example.so\n' >"$OUT/fuzz_plugin.options"
