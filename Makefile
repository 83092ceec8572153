# ksalloc -- build, test, bench.
#
#   make [MODE=release|debug|asan|tsan]   build build/$(MODE)/bin/ksalloc and the test binary
#   make test                               deps, then the test suite in release and asan builds
#   make bench                              deps, then the benchmark suite (the main job)
#   make deps                               install missing Debian packages (root) or print the command
#   make clean                              remove build/
#   V=1                                     show the commands
#
# Out-of-tree builds live in build/<mode>/ with -MMD dependencies; one directory per mode so that
# switching modes never mixes objects.

MODE ?= release
BUILD ?= build/$(MODE)
CC ?= cc
CXX ?= c++

ifeq ($(origin CC),default)
CC := cc
endif

MODES := release debug asan tsan
ifeq ($(filter $(MODE),$(MODES)),)
$(error unknown MODE '$(MODE)': use one of $(MODES))
endif

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wpointer-arith \
        -Wformat=2 -Wvla -Wundef -Werror
CSTD := -std=c11 -D_GNU_SOURCE
MODE_FLAGS_release := -O2 -g
MODE_FLAGS_debug := -O0 -g -DKS_DEBUG=2
MODE_FLAGS_asan := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all -DKS_DEBUG=1
MODE_FLAGS_tsan := -O1 -g -fno-omit-frame-pointer -fsanitize=thread -DKS_DEBUG=1
MODE_LDFLAGS_asan := -fsanitize=address,undefined
MODE_LDFLAGS_tsan := -fsanitize=thread

CFLAGS_ALL := $(CSTD) $(WARN) $(MODE_FLAGS_$(MODE)) -Iharness -pthread $(CFLAGS)
LDFLAGS_ALL := $(MODE_LDFLAGS_$(MODE)) -pthread $(LDFLAGS)
# Three allocators that each define malloc share this process; what each name resolves to is set
# by the order of DT_NEEDED (measured on Debian 12 with gcc 12 and clang 14, release/ASan/TSan):
#  - jemalloc first: plain malloc/free/new/delete are jemalloc's (ASan's or TSan's in those modes,
#    whose runtimes come first), so the harness's own bookkeeping stays out of the heaps measured
#    by `system` (glibc), `mimalloc` and `tcmalloc`; allocators/jemalloc.c uses its own arenas.
#  - libc next: libmimalloc and libtcmalloc also define __libc_malloc/__libc_memalign/__libc_free;
#    linked ahead of libc they would capture allocators/system.c, which must reach glibc's own.
#  - mimalloc and tcmalloc last, reached only through their prefixed APIs (mi_heap_*, tc_*), and
#    --as-needed (Debian's gcc drops its default --as-needed under -fsanitize; clang has none) so
#    that a binary loads them only when it links allocators/mimalloc.c or tcmalloc.c.
#    libtcmalloc_minimal, not libtcmalloc: the full one's start-up code frees through the wrong
#    allocator under clang's ASan and TSan and crashes before main.
LIBS := -ljemalloc -lc -Wl,--push-state,--as-needed -lmimalloc -ltcmalloc_minimal -Wl,--pop-state -ldl -lm

ifeq ($(V),1)
Q :=
else
Q := @
endif

HARNESS_SRC := $(wildcard harness/*.c harness/dma/*.c)
ALLOC_SRC := $(wildcard allocators/*.c)
CLI_SRC := $(wildcard harness/cli/*.c)
TEST_SRC := $(wildcard tests/*.c)

LIB_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(HARNESS_SRC) $(ALLOC_SRC))
CLI_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(CLI_SRC))
TEST_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(TEST_SRC))

LIBKS := $(BUILD)/lib/libksalloc.a
KSALLOC := $(BUILD)/bin/ksalloc
TESTS := $(BUILD)/bin/ksalloc-tests
PLUGIN_SRC := $(wildcard tests/plugin/*.c)
PLUGINS := $(patsubst tests/plugin/%.c,$(BUILD)/lib/plugins/%.so,$(PLUGIN_SRC))

.PHONY: all test test-mode bench deps clean check-deps
all: $(KSALLOC) $(TESTS) $(PLUGINS)

# Tests find the binaries and plugins of their own build.
$(BUILD)/obj/tests/%.o: CFLAGS_ALL += -DKS_BUILD_DIR='"$(abspath $(BUILD))"' -DKS_SOURCE_DIR='"$(CURDIR)"'
# `ksalloc compare` and `ksalloc ab` run bench/'s tools from the tree they were built from.
$(BUILD)/obj/harness/cli/bench_tool.o: CFLAGS_ALL += -DKS_SOURCE_DIR='"$(CURDIR)"'

$(BUILD)/obj/%.o: %.c | $(BUILD)/obj
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC [$(MODE)] $<")
	$(Q)$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(LIBKS): $(LIB_OBJ) | $(BUILD)/lib
	@$(if $(Q),echo "  AR [$(MODE)] $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(KSALLOC): $(CLI_OBJ) $(LIBKS) | $(BUILD)/bin
	@$(if $(Q),echo "  LD [$(MODE)] $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -rdynamic $(CLI_OBJ) $(LIBKS) $(LIBS) -o $@

$(TESTS): $(TEST_OBJ) $(LIBKS) | $(BUILD)/bin
	@$(if $(Q),echo "  LD [$(MODE)] $@")
	$(Q)$(CC) $(LDFLAGS_ALL) $(TEST_OBJ) $(LIBKS) -lcriterion $(LIBS) -o $@

# Plugins the tests load (good and deliberately bad ones): built the way README.md tells users
# to build theirs, with no ksalloc library linked in.
$(BUILD)/lib/plugins/%.so: tests/plugin/%.c harness/ksalloc.h
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  SO [$(MODE)] $@")
	$(Q)$(CC) -std=c11 -O2 -fPIC -shared -Iharness $(MODE_FLAGS_$(MODE)) -o $@ $<

$(BUILD)/obj $(BUILD)/lib $(BUILD)/bin:
	@mkdir -p $@

# ---- test ------------------------------------------------------------------------------------
# The suite runs in the release build and under ASan+UBSan. Criterion prints its own synthesis
# line per run; tests/run-suite prints the combined "N passed, N failed" line. Then every
# checked-in fuzz corpus replays in both modes (fuzz/fuzz.mk: a past crash stays fixed), and the
# bug zoo's crash inputs replay against their mutants (fuzz/zoo.mk: each must still be caught),
# oss-fuzz-check's checks fire on their broken inputs (fuzz/oss-fuzz/check-build --self-test),
# and the multi-threaded stress runs under TSan (tests/stress/: Criterion cannot start under TSan).
TEST_MODES ?= release asan
test: deps
	$(Q)for m in $(TEST_MODES); do $(MAKE) --no-print-directory MODE=$$m all || exit 1; done
	$(Q)tests/run-suite $(TEST_MODES)
	$(Q)for m in $(TEST_MODES); do $(MAKE) --no-print-directory MODE=$$m fuzz-replay || exit 1; done
	$(Q)$(MAKE) --no-print-directory MODE=release zoo-replay
	$(Q)$(MAKE) --no-print-directory oss-fuzz-selftest
	$(Q)$(MAKE) --no-print-directory stress

# ---- fuzz targets, corpus replay, OSS-Fuzz build, AFL++ (fuzz/fuzz.mk) --------------------------
include fuzz/fuzz.mk

# ---- bench, compare, report, perf (bench/bench.mk) ---------------------------------------------
include bench/bench.mk
all: $(BENCH_BIN)

# ---- the multi-threaded stress under TSan (tests/stress/stress.mk) -----------------------------
include tests/stress/stress.mk

# ---- deps --------------------------------------------------------------------------------------
# Debian packages the project builds, tests, fuzzes and benchmarks with.
DEB_PACKAGES := build-essential clang libclang-rt-14-dev llvm libcriterion-dev libjemalloc-dev \
                libmimalloc-dev libgoogle-perftools-dev libbenchmark-dev libbenchmark-tools \
                afl++ file linux-perf python3 python3-matplotlib python3-numpy python3-scipy zip
deps:
	$(Q)missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "deps: missing Debian packages:" $$missing; \
	if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	else \
	    echo "deps: run as root: apt-get update && apt-get install -y $$missing"; exit 1; \
	fi

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

# ---- the bug zoo (fuzz/zoo.mk): uses LIBKS, BUILD, WARN, LIBS from above -----------------------
include fuzz/zoo.mk
