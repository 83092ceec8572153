# fuzz/zoo.mk -- the bug zoo: deliberately broken allocators (fuzz/mutants/mutant_*.c) that the
# fuzzers must catch. Included by the top Makefile (`include fuzz/zoo.mk`).
#
#   make zoo          build every mutant as a plugin, fuzz each for at most ZOO_SECONDS (60) on
#                     ZOO_JOBS cores (nproc), print mutant / bug / fault found / seconds / execs;
#                     exit 1 if a mutant escapes. Crash inputs land in $(ZOO_BUILD)/run/<mutant>/.
#   make zoo-crashes  the same run, then minimise each crash into fuzz/mutants/crashes/<mutant>
#                     (the checked-in regression inputs).
#   make zoo-control  the negative control: every mutant built with -DZOO_FIXED (its bug fixed) and
#                     fuzzed for ZOO_CONTROL_SECONDS (20); exit 1 if any of them crashes, i.e. if a
#                     mutant faults for anything but its one planted bug.
#   make zoo-replay   replay fuzz/mutants/crashes/* without libFuzzer, in the current MODE with
#                     $(CC), and check each one's fault class: fast and deterministic but for the
#                     thread race, which gets ZOO_RACE_TRIES tries. Meant for `make test`.
#
# Runs start from an empty corpus, so time to detection measures the search alone.
# ZOO_SEEDS=fuzz/mutants/seeds starts them instead from two generic workloads in the decoder's
# format (one pin churning; four pins of mixed framings on one shared heap) -- note that these
# already trip some mutants on their first execution.
# Each mutant opens with `Bug:` (one line on its bug) and `Expect:` (the fault class it commits).
# A DMA mutant (KS_CAP_DMA; mutant_dma_*) is driven with a device and DMA ops; a DMA failure is a
# fault of class dma-<rule> (the first DMA-debug report), dma-data or dma-device (zoo_run.h).
# The fuzz target is fuzz/mutants/zoo_fuzz.c (engine + verifier, two threads for thread-safe
# plugins); ZOO_FUZZER=path runs another libFuzzer binary that takes the plugin from
# KSALLOC_FUZZ_PLUGIN instead (e.g. fuzz/fuzz_plugin.c's build). Mutants and the ksalloc library
# are built with -fsanitize=fuzzer-no-link so that libFuzzer sees the mutant's branches; no ASan,
# so that time to detection measures the search and not the sanitizer.

ZOO_BUILD ?= build/zoo
ZOO_SECONDS ?= 60
ZOO_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
ZOO_SEED ?= 1
ZOO_SEEDS ?=
ZOO_RACE_TRIES ?= 1000
ZOO_CC ?= clang
# Coverage scoped as in fuzz.mk (fuzz/coverage.ignorelist): the mutant and the product, not the
# runner; and, as fuzz.mk builds the allocators, edge counters without comparison hooks.
ZOO_SANCOV := -fsanitize=fuzzer-no-link -fsanitize-coverage-ignorelist=$(CURDIR)/fuzz/coverage.ignorelist \
              -fno-sanitize-coverage=trace-cmp

ZOO_MUTANT_SRC := $(sort $(wildcard fuzz/mutants/mutant_*.c))
ZOO_MUTANT_NAMES := $(patsubst fuzz/mutants/%.c,%,$(ZOO_MUTANT_SRC))
ZOO_MUTANTS := $(patsubst %,$(ZOO_BUILD)/mutants/%.so,$(ZOO_MUTANT_NAMES))
ZOO_CONTROLS := $(patsubst %,$(ZOO_BUILD)/control/%.so,$(ZOO_MUTANT_NAMES))
ZOO_CONTROL_SECONDS ?= 20
ZOO_LIB := $(ZOO_BUILD)/lib/libksalloc.a
ZOO_FUZZ_BIN := $(ZOO_BUILD)/bin/zoo_fuzz
ZOO_FUZZER ?= $(ZOO_FUZZ_BIN)
ZOO_CFLAGS := $(CSTD) $(WARN) -O1 -g -Iharness -Ifuzz/mutants -pthread

# In the current MODE, for zoo-replay.
ZOO_REPLAY := $(BUILD)/bin/zoo-replay
ZOO_REPLAY_OBJ := $(BUILD)/obj/fuzz/mutants/zoo_replay.o $(BUILD)/obj/fuzz/mutants/zoo_run.o
ZOO_REPLAY_MUTANTS := $(patsubst %,$(BUILD)/lib/zoo/%.so,$(ZOO_MUTANT_NAMES))

.PHONY: zoo zoo-build zoo-crashes zoo-control zoo-replay zoo-lib-force

zoo: zoo-build
	$(Q)fuzz/run-zoo --fuzzer $(ZOO_FUZZER) --mutants $(ZOO_BUILD)/mutants --out $(ZOO_BUILD)/run \
	    --seconds $(ZOO_SECONDS) --jobs $(ZOO_JOBS) --seed $(ZOO_SEED) $(if $(ZOO_SEEDS),--seeds $(ZOO_SEEDS)) $(ZOO_MUTANT_SRC)

zoo-crashes: zoo-build
	$(Q)fuzz/run-zoo --fuzzer $(ZOO_FUZZER) --mutants $(ZOO_BUILD)/mutants --out $(ZOO_BUILD)/run \
	    --seconds $(ZOO_SECONDS) --jobs $(ZOO_JOBS) --seed $(ZOO_SEED) $(if $(ZOO_SEEDS),--seeds $(ZOO_SEEDS)) --save-crashes fuzz/mutants/crashes \
	    $(ZOO_MUTANT_SRC)

zoo-control: $(ZOO_FUZZ_BIN) $(ZOO_CONTROLS)
	$(Q)fuzz/run-zoo --control --fuzzer $(ZOO_FUZZER) --mutants $(ZOO_BUILD)/control --out $(ZOO_BUILD)/control-run \
	    --seconds $(ZOO_CONTROL_SECONDS) --jobs $(ZOO_JOBS) --seed $(ZOO_SEED) $(if $(ZOO_SEEDS),--seeds $(ZOO_SEEDS)) $(ZOO_MUTANT_SRC)

zoo-build: $(ZOO_FUZZ_BIN) $(ZOO_MUTANTS)

# The library, instrumented, in its own build dir; the sub-make decides what is out of date (and,
# including this file again with BUILD=$(ZOO_BUILD), must not see this rule).
ifneq ($(BUILD),$(ZOO_BUILD))
$(ZOO_LIB): zoo-lib-force
	$(Q)$(MAKE) --no-print-directory MODE=release BUILD=$(ZOO_BUILD) CC=$(ZOO_CC) CFLAGS='$(ZOO_SANCOV)' $@
endif

$(ZOO_BUILD)/obj/zoo/%.o: fuzz/mutants/%.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC [zoo] $<")
	$(Q)$(ZOO_CC) $(ZOO_CFLAGS) $(ZOO_SANCOV) -MMD -MP -c $< -o $@

# -rdynamic: the mutants are dlopened and their coverage hooks resolve against this binary.
$(ZOO_FUZZ_BIN): $(ZOO_BUILD)/obj/zoo/zoo_fuzz.o $(ZOO_BUILD)/obj/zoo/zoo_run.o $(ZOO_LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD [zoo] $@")
	$(Q)$(ZOO_CC) -fsanitize=fuzzer -rdynamic -pthread $^ $(LIBS) -o $@

# Built the way README.md tells users to build a plugin, plus coverage hooks.
$(ZOO_BUILD)/mutants/%.so: fuzz/mutants/%.c harness/ksalloc.h harness/dma/dma.h
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  SO [zoo] $@")
	$(Q)$(ZOO_CC) $(CSTD) $(WARN) -O1 -g -fPIC -shared -pthread $(ZOO_SANCOV) -Iharness -o $@ $<

$(ZOO_BUILD)/control/%.so: fuzz/mutants/%.c harness/ksalloc.h harness/dma/dma.h
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  SO [zoo] $@ (fixed)")
	$(Q)$(ZOO_CC) $(CSTD) $(WARN) -DZOO_FIXED -O1 -g -fPIC -shared -pthread $(ZOO_SANCOV) -Iharness -o $@ $<

# ---- zoo-replay (current MODE, $(CC)) ----------------------------------------------------------
$(BUILD)/lib/zoo/%.so: fuzz/mutants/%.c harness/ksalloc.h harness/dma/dma.h
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  SO [$(MODE)] $@")
	$(Q)$(CC) $(CSTD) $(WARN) -fPIC -shared -pthread -Iharness $(MODE_FLAGS_$(MODE)) -o $@ $<

$(ZOO_REPLAY): $(ZOO_REPLAY_OBJ) $(LIBKS) | $(BUILD)/bin
	@$(if $(Q),echo "  LD [$(MODE)] $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -rdynamic $(ZOO_REPLAY_OBJ) $(LIBKS) $(LIBS) -o $@

zoo-replay: $(ZOO_REPLAY) $(ZOO_REPLAY_MUTANTS)
	$(Q)failed=0; count=0; \
	for src in $(ZOO_MUTANT_SRC); do \
	    name=$$(basename $$src .c); \
	    expect=$$(sed -n 's/^ \* Expect: *//p' $$src | head -n1); \
	    crash=fuzz/mutants/crashes/$$name; \
	    if [ ! -f $$crash ]; then echo "zoo-replay: $$name: no crash input $$crash"; failed=1; continue; fi; \
	    tries=1; if grep -q '^ *\.caps = .*KS_CAP_THREAD_SAFE' $$src; then tries=$(ZOO_RACE_TRIES); fi; \
	    $(ZOO_REPLAY) --tries $$tries $(BUILD)/lib/zoo/$$name.so "$$expect" $$crash || failed=1; \
	    count=$$((count + 1)); \
	done; \
	echo "zoo-replay: $$count crash inputs replayed, $$( [ $$failed = 0 ] && echo all caught || echo FAILURES)"; \
	exit $$failed

# Header dependencies of the zoo's own objects (the Makefile includes only its own).
-include $(ZOO_REPLAY_OBJ:.o=.d) $(ZOO_BUILD)/obj/zoo/zoo_fuzz.d $(ZOO_BUILD)/obj/zoo/zoo_run.d
