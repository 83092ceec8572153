# fuzz/fuzz.mk -- fuzz targets, corpus replay, OSS-Fuzz simulation and AFL++; included by the
# Makefile (`include fuzz/fuzz.mk`), which provides CSTD, WARN, LIBS, CFLAGS_ALL, LDFLAGS_ALL,
# BUILD, MODE, LIBKS, PLUGINS and Q.
#
#   make fuzz [FUZZ_SECONDS=10]   build every target with clang (libFuzzer+ASan+UBSan) into
#                                 build/fuzz/ and run each for FUZZ_SECONDS over `nproc` cores;
#                                 prints target, runs, exec/s, cov, ft, corpus growth, crashes
#   make fuzz-replay              every checked-in corpus through the regression driver, built in
#                                 the current MODE with $(CC) (no libFuzzer): part of `make test`
#   make fuzz-build               only build the libFuzzer targets (FUZZ_CC, FUZZ_CFLAGS,
#                                 FUZZ_ENGINE, FUZZ_LINK, FUZZ_BUILD select how; build.sh uses it)
#   make oss-fuzz-check           run fuzz/oss-fuzz/build.sh as OSS-Fuzz's base-builder would, for
#                                 every sanitizer and engine project.yaml lists, and check $$OUT as
#                                 its base-runner does (fuzz/oss-fuzz/check-build says how);
#                                 OSS_FUZZ_SANITIZERS / OSS_FUZZ_ENGINES narrow the matrix,
#                                 OSS_FUZZ_DIR=<google/oss-fuzz checkout> adds its own test_all.py
#   make fuzz-coverage            OSS-Fuzz's coverage job: source coverage of every target over
#                                 its corpus, an HTML report and a summary (fuzz/coverage.mk)
#   make fuzz-afl                 the same targets with afl-clang-fast, one run briefly
#
# The per-allocator targets come from the catalogue at build time: the names are the
# `&ks_allocator_<name>,` lines of the table in harness/catalogue.c, read with sed. Reading the
# source rather than running a host-built `ksalloc list` keeps every fuzz build (OSS-Fuzz's MSan
# and cross builds included) free of running anything it built; the catalogue's own rule
# (an entry's name is its variable's suffix) makes the two agree, and fuzz_allocator.c refuses
# to start if they ever do not. Registering an allocator there is all it takes to get
# fuzz_alloc_<name>, its replay in `make test` and its OSS-Fuzz binary.

FUZZ_ALLOCATORS := $(shell sed -n 's/^[[:space:]]*&ks_allocator_\([A-Za-z0-9_]*\),.*/\1/p' harness/catalogue.c)
# FUZZ_PEERS=0 leaves out the allocators that wrap libraries ksalloc does not build (jemalloc,
# mimalloc, tcmalloc from the distribution, uninstrumented): MemorySanitizer needs every line it
# runs instrumented, so its build (build.sh with SANITIZER=memory) fuzzes ksalloc's own code only.
FUZZ_PEERS ?= 1
FUZZ_PEER_ALLOCATORS := jemalloc mimalloc tcmalloc
ifeq ($(FUZZ_PEERS),0)
FUZZ_ALLOCATORS := $(filter-out $(FUZZ_PEER_ALLOCATORS),$(FUZZ_ALLOCATORS))
FUZZ_LIBS ?= -ldl -lm
FUZZ_PEER_DEFINE := -DKS_WITH_PEER_LIBS=0
else ifeq ($(FUZZ_PEERS),1)
FUZZ_LIBS ?= $(LIBS)
else
$(error FUZZ_PEERS is '$(FUZZ_PEERS)': use 1 (with the jemalloc, mimalloc and tcmalloc allocators) or 0 (without))
endif
# FUZZ_SHIPPED_LIB_DIR=lib links the targets with the run path $$ORIGIN/lib, so that shared
# libraries shipped in a lib/ folder beside them (build.sh copies every one OSS-Fuzz's runner
# image lacks) are found wherever the folder is moved; empty, the system's are used.
FUZZ_SHIPPED_LIB_DIR ?=
comma := ,
FUZZ_RUNPATH = $(if $(FUZZ_SHIPPED_LIB_DIR),-Wl$(comma)-rpath$(comma)'$$ORIGIN/$(FUZZ_SHIPPED_LIB_DIR)')
FUZZ_ALLOC_TARGETS := $(addprefix fuzz_alloc_,$(FUZZ_ALLOCATORS))
FUZZ_OTHER_TARGETS := fuzz_differential fuzz_plugin fuzz_trace fuzz_plugin_entry fuzz_dma
FUZZ_TARGETS := $(FUZZ_ALLOC_TARGETS) $(FUZZ_OTHER_TARGETS)

FUZZ_SECONDS ?= 10
FUZZ_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
FUZZ_CC ?= clang
FUZZ_LINK ?= clang++
FUZZ_SANITIZE ?= -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS ?= -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link $(FUZZ_SANITIZE)
FUZZ_LDFLAGS ?= $(FUZZ_SANITIZE)
FUZZ_ENGINE ?= -fsanitize=fuzzer
FUZZ_BUILD ?= build/fuzz
FUZZ_WARN ?= $(WARN)
# The plugin fuzz_plugin drives in `make fuzz` and `make fuzz-replay` (a user passes their own).
FUZZ_PLUGIN_SRC ?= tests/plugin/example_plugin.c

FUZZ_LIB_SRC := $(filter-out $(if $(FUZZ_PEER_DEFINE),$(FUZZ_PEER_ALLOCATORS:%=allocators/%.c)),\
                $(wildcard harness/*.c harness/dma/*.c allocators/*.c))
# Coverage is the code under test's: fuzz/coverage.ignorelist names the harness machinery left
# uninstrumented (why: that file). Kept out of FUZZ_CFLAGS so that OSS-Fuzz's $$CFLAGS keep it.
FUZZ_COVERAGE_SCOPE := -fsanitize-coverage-ignorelist=$(CURDIR)/fuzz/coverage.ignorelist
# Comparison hooks (trace-cmp) feed libFuzzer's table of compared values, which finds the magic
# tokens of a parser; an allocator, the shared heap and the DMA model compare pointers, counts and
# sizes computed at run time, so there they only cost a callback per compare (a fifth of
# fuzz_alloc_tlsf's time, in its heap walks). Those files keep their edge counters and drop the
# hooks; the parsers (trace.c, plugin.c, the DMA option string) and the targets keep both.
FUZZ_NO_CMP_SRC := $(wildcard allocators/*.c) harness/heap.c $(filter-out harness/dma/options.c,$(wildcard harness/dma/*.c))
$(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(FUZZ_NO_CMP_SRC)): FUZZ_CMP_SCOPE := -fno-sanitize-coverage=trace-cmp
FUZZ_COMPILE = $(FUZZ_CC) $(CSTD) $(FUZZ_WARN) $(FUZZ_CFLAGS) $(FUZZ_COVERAGE_SCOPE) $(FUZZ_CMP_SCOPE) $(FUZZ_PEER_DEFINE) -Iharness -Ifuzz -pthread
FUZZ_LIB := $(FUZZ_BUILD)/lib/libksalloc-fuzz.a
FUZZ_LIB_OBJ := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(FUZZ_LIB_SRC))
FUZZ_HELPER_OBJ := $(FUZZ_BUILD)/obj/fuzz/fuzz_helpers.o
FUZZ_BINS := $(addprefix $(FUZZ_BUILD)/bin/,$(FUZZ_TARGETS))
# The minimal allocate/free harness the issue measures our speed against; built, not shipped.
FUZZ_BASELINE := $(FUZZ_BUILD)/bin/fuzz_baseline_malloc
# It sits beside the targets under the name fuzz_plugin loads when no plugin is named.
FUZZ_PLUGIN_SO := $(FUZZ_BUILD)/bin/fuzz_plugin_example.so

.PHONY: fuzz fuzz-build fuzz-replay oss-fuzz-check fuzz-afl

fuzz-build: $(FUZZ_BINS) $(FUZZ_BASELINE) $(FUZZ_PLUGIN_SO)

$(FUZZ_BUILD)/obj/%.o: %.c fuzz/coverage.ignorelist
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC [fuzz] $<")
	$(Q)$(FUZZ_COMPILE) -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/obj/fuzz/fuzz_alloc_%.o: fuzz/fuzz_allocator.c fuzz/coverage.ignorelist
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC [fuzz] $< ($*)")
	$(Q)$(FUZZ_COMPILE) -DKS_FUZZ_ALLOCATOR='"$*"' -MMD -MP -c $< -o $@

$(FUZZ_LIB): $(FUZZ_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(FUZZ_BUILD)/bin/%: $(FUZZ_BUILD)/obj/fuzz/%.o $(FUZZ_HELPER_OBJ) $(FUZZ_LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD [fuzz] $@")
	$(Q)$(FUZZ_LINK) $(FUZZ_LDFLAGS) $(FUZZ_ENGINE) $(FUZZ_LINK_EXTRA) $(FUZZ_RUNPATH) $< $(FUZZ_HELPER_OBJ) $(FUZZ_LIB) $(FUZZ_LIBS) -pthread -o $@

# fuzz_plugin dlopens a plugin built with coverage: its hooks (and __sancov_lowest_stack, which
# OSS-Fuzz's stack-depth flag adds) must resolve against the target, which only an ASan build
# happens to export; -rdynamic exports them in every build.
$(FUZZ_BUILD)/bin/fuzz_plugin: FUZZ_LINK_EXTRA := -rdynamic

$(FUZZ_BASELINE): fuzz/baseline_malloc.c
	@mkdir -p $(dir $@)
	$(Q)$(FUZZ_CC) $(CSTD) $(FUZZ_WARN) $(FUZZ_CFLAGS) $(FUZZ_ENGINE) $< -o $@

# The plugin is the code under test, so it is built as a user is told to build theirs for fuzzing
# (README.md): with the fuzz flags, coverage included; its hooks resolve against the target.
$(FUZZ_PLUGIN_SO): $(FUZZ_PLUGIN_SRC) harness/ksalloc.h
	@mkdir -p $(dir $@)
	$(Q)$(FUZZ_CC) $(CSTD) $(FUZZ_CFLAGS) -fPIC -shared -Iharness -o $@ $<

# ---- make fuzz -----------------------------------------------------------------------------------
fuzz: fuzz-build
	$(Q)FUZZ_BUILD='$(FUZZ_BUILD)' FUZZ_SECONDS='$(FUZZ_SECONDS)' FUZZ_JOBS='$(FUZZ_JOBS)' \
	    KSALLOC_FUZZ_PLUGIN='$(abspath $(FUZZ_PLUGIN_SO))' KS_REPLAY_BUILD='$(BUILD)' \
	    fuzz/run-fuzz $(FUZZ_TARGETS) fuzz_baseline_malloc

# ---- make fuzz-replay: the corpora as regression tests, any compiler, any MODE --------------------
FUZZ_REPLAY_DIR := $(BUILD)/fuzz
FUZZ_REPLAY_BINS := $(addprefix $(FUZZ_REPLAY_DIR)/regress_,$(FUZZ_TARGETS))
FUZZ_REPLAY_OBJ := $(BUILD)/obj/fuzz/fuzz_helpers.o $(BUILD)/obj/fuzz/regression_driver.o

$(BUILD)/obj/fuzz/fuzz_alloc_%.o: fuzz/fuzz_allocator.c | $(BUILD)/obj
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC [$(MODE)] $< ($*)")
	$(Q)$(CC) $(CFLAGS_ALL) -Ifuzz -DKS_FUZZ_ALLOCATOR='"$*"' -MMD -MP -c $< -o $@

$(FUZZ_REPLAY_DIR)/regress_%: $(BUILD)/obj/fuzz/%.o $(FUZZ_REPLAY_OBJ) $(LIBKS)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD [$(MODE)] $@")
	$(Q)$(CC) $(LDFLAGS_ALL) $< $(FUZZ_REPLAY_OBJ) $(LIBKS) $(LIBS) -o $@

# Corpus of a target: fuzz/corpus/<target>/; the targets reading the allocator input format
# (fuzz_alloc_*, fuzz_differential, fuzz_plugin) share fuzz/corpus/fuzz_allocator/ and add
# fuzz/corpus/<target>/ when one exists (inputs that crashed that target once). fuzz_plugin
# replays twice: with no plugin named, so it loads the example plugin as fuzz_plugin_example.so
# from beside the binary, as on OSS-Fuzz; and on `lookaside` (thread-safe: the two-thread schedule).
fuzz-replay: $(FUZZ_REPLAY_BINS) $(PLUGINS) $(FUZZ_REPLAY_DIR)/fuzz_plugin_example.so
	$(Q)failed=0; for t in $(FUZZ_TARGETS); do \
	    case $$t in fuzz_alloc_*|fuzz_differential|fuzz_plugin) \
	                    dirs="fuzz/corpus/fuzz_allocator $$(ls -d fuzz/corpus/$$t 2>/dev/null)";; \
	                *) dirs=fuzz/corpus/$$t;; esac; \
	    plugins=-; [ $$t = fuzz_plugin ] && plugins="beside lookaside"; \
	    for p in $$plugins; do \
	        log=$(FUZZ_REPLAY_DIR)/regress_$$t.log; label=$$t; [ $$p = - ] || label="$$t ($$p)"; \
	        plugin_env="KSALLOC_FUZZ_PLUGIN=$$p"; [ $$p = beside ] && plugin_env="-u KSALLOC_FUZZ_PLUGIN"; \
	        if env $$plugin_env $(FUZZ_REPLAY_DIR)/regress_$$t $$dirs >$$log 2>&1; then \
	            printf '  fuzz-replay [$(MODE)] %-34s %s\n' "$$label" "$$(tail -n 1 $$log | sed 's/^regression driver: //')"; \
	        else failed=1; echo "  fuzz-replay [$(MODE)] $$label FAILED:"; tail -n 20 $$log; fi; \
	    done; \
	done; exit $$failed

$(FUZZ_REPLAY_DIR)/fuzz_plugin_example.so: $(BUILD)/lib/plugins/example_plugin.so
	@mkdir -p $(dir $@)
	$(Q)cp $< $@

-include $(FUZZ_LIB_OBJ:.o=.d) $(wildcard $(FUZZ_BUILD)/obj/fuzz/*.d) $(wildcard $(BUILD)/obj/fuzz/*.d)
# Dependency files are never remade: without this, make would try to build fuzz_alloc_x.d from
# fuzz_alloc_x.d.o through the fuzz_alloc_%.o pattern above.
$(FUZZ_BUILD)/obj/%.d: ;
$(BUILD)/obj/fuzz/%.d: ;

# ---- make oss-fuzz-check ----------------------------------------------------------------------------
.PHONY: oss-fuzz-selftest
# Seconds: each of oss-fuzz-check's checks against the broken input it exists for (in make test).
oss-fuzz-selftest:
	$(Q)fuzz/oss-fuzz/check-build --self-test

oss-fuzz-check:
	$(Q)OSS_FUZZ_SANITIZERS='$(OSS_FUZZ_SANITIZERS)' OSS_FUZZ_ENGINES='$(OSS_FUZZ_ENGINES)' \
	    OSS_FUZZ_DIR='$(OSS_FUZZ_DIR)' fuzz/oss-fuzz/check-build

# ---- make fuzz-coverage (fuzz/coverage.mk) ------------------------------------------------------------
include fuzz/coverage.mk

# ---- make fuzz-afl ------------------------------------------------------------------------------------
FUZZ_AFL_BUILD := build/fuzz-afl
FUZZ_AFL_TARGET ?= fuzz_alloc_pool
FUZZ_AFL_SECONDS ?= 15
fuzz-afl:
	$(Q)AFL_QUIET=1 $(MAKE) --no-print-directory fuzz-build FUZZ_BUILD=$(FUZZ_AFL_BUILD) FUZZ_CC=afl-clang-fast \
	    FUZZ_LINK=afl-clang-fast++ FUZZ_CFLAGS='-O1 -g -fsanitize=fuzzer-no-link $(FUZZ_SANITIZE)' \
	    FUZZ_ENGINE=-fsanitize=fuzzer
	$(Q)fuzz/run-afl $(FUZZ_AFL_BUILD) $(FUZZ_AFL_TARGET) $(FUZZ_AFL_SECONDS)

# Objects reached only through pattern rules would be deleted as intermediates; keep them.
.SECONDARY: $(patsubst %,$(FUZZ_BUILD)/obj/fuzz/%.o,$(FUZZ_TARGETS)) $(FUZZ_HELPER_OBJ) \
            $(patsubst %,$(BUILD)/obj/fuzz/%.o,$(FUZZ_TARGETS)) $(FUZZ_REPLAY_OBJ)

# The target names, one per line (fuzz/oss-fuzz/build.sh packages each).
.PHONY: fuzz-list-targets
fuzz-list-targets:
	@printf '%s\n' $(FUZZ_TARGETS)
