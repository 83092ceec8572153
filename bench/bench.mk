# bench/bench.mk -- benchmarks, reports and comparison; included by the top-level Makefile.
#
#   make bench                          deps, build, run the default suite (a few minutes on 2 cores),
#                                       write results/local/<host>-<date>-<commit>.json, print the summary
#   make bench-quick                    the CI smoke suite (about a minute), report in $(BUILD)/bench/
#   make compare BASE=a.json NEW=b.json per benchmark: the change against a noise floor learned from
#                                       the repetitions, one-sided U tests corrected by Benjamini-Hochberg,
#                                       judged on time and on the ratio to the bound (on the ratio alone
#                                       across machines); per allocator: against its peers, group by
#                                       group. compare.py exits 0 clean, 1 regression, 2 unusable input;
#                                       make turns 1 and 2 into its own 2 (CI: ksalloc compare)
#   make ab BASE=rev|a.so NEW=rev|b.so  two revisions (built in build/ab/) or two plugins benchmarked
#                                       in one sitting, AB_ROUNDS (9) interleaved rounds, gated by
#                                       compare.py; AB_FILTER narrows the benchmarks
#   make report [REPORTS="a.json b.json"]  Markdown and PNG/SVG plots into results/local/report-<name>/
#                                       (default: this machine's newest report in results/local/)
#   make perf BENCH=<filter> [REPORT=r.json]  one benchmark under perf stat (and perf record where it
#                                       works), filed under the report this same binary wrote
#
# results/local/ holds this machine's runs and is ignored by git; results/baselines/ holds the
# committed reports, each from the machine its name and context give.
#
# Knobs: BENCH_MIN_TIME (s per repetition), BENCH_REPETITIONS, BENCH_ARGS (extra flags for the
# binary: --benchmark_filter=..., --plugin=x.so, --ks_max_threads=N), COMPARE_ARGS (more
# compare.py flags: --relative, --absolute, --aa A1.json A2.json, --threshold-only), THRESHOLD
# (0.10 = 10% slower), ALPHA (false discovery rate of the gate: Benjamini-Hochberg q), AB_ROUNDS,
# AB_FILTER, PYTHON.
#
# The benchmark binary links the harness library and Google Benchmark (C++), so it is linked by
# $(CXX); bench/gbench_c.cc is the only C++ source.

BENCH_BIN := $(BUILD)/bin/ksalloc-bench
BENCH_C_SRC := $(wildcard bench/*.c)
BENCH_CXX_SRC := $(wildcard bench/*.cc)
BENCH_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(BENCH_C_SRC)) $(patsubst %.cc,$(BUILD)/obj/%.o,$(BENCH_CXX_SRC))
BENCH_CXXFLAGS := -std=c++17 -Wall -Wextra -Wshadow -Werror $(MODE_FLAGS_$(MODE)) -Iharness -pthread $(CXXFLAGS)

# Debian's interpreter: python3-matplotlib, -numpy and -scipy (compare.py's U test) are installed
# for it by `make deps`; a python3 earlier on PATH (pyenv, a venv) may lack them.
PYTHON ?= $(if $(wildcard /usr/bin/python3),/usr/bin/python3,python3)
# 9 interleaved repetitions (about 8 minutes on 2 cores): with 5, the smallest one-sided U-test p
# (0.004) cannot pass Benjamini-Hochberg over ~480 benchmarks unless dozens regress together, so
# `make compare` missed an allocator planted 15% slower in its own single-thread benchmarks (and
# 8% over all 31 of its benchmarks, threaded and DMA included): measured, 5 reps flagged nothing.
# With 9 a lone benchmark can be confirmed (p down to 2e-5), as `make ab` does with its 9 rounds.
BENCH_MIN_TIME ?= 0.05
BENCH_REPETITIONS ?= 9
THRESHOLD ?= 0.10
ALPHA ?= 0.05
BENCH_ARGS ?=
RESULTS_LOCAL := results/local
# Handed to bench/run-bench and bench/run-perf through the environment, where they are split on
# blanks only: a filter such as 'a/(b|c)' reaches the binary as it was typed.
export BENCH_ARGS

# What the report's context records about the build (the run adds the machine and revision).
$(BUILD)/obj/bench/main.o: CFLAGS_ALL += -DKS_BENCH_MODE='"$(MODE)"' \
    -DKS_BENCH_CFLAGS='"$(strip $(CSTD) $(MODE_FLAGS_$(MODE)))"'

$(BUILD)/obj/bench/%.o: bench/%.cc | $(BUILD)/obj
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CXX [$(MODE)] $<")
	$(Q)$(CXX) $(BENCH_CXXFLAGS) -MMD -MP -c $< -o $@

$(BENCH_BIN): $(BENCH_OBJ) $(LIBKS) | $(BUILD)/bin
	@$(if $(Q),echo "  LD [$(MODE)] $@")
	$(Q)$(CXX) $(LDFLAGS_ALL) $(BENCH_OBJ) $(LIBKS) -lbenchmark $(LIBS) -lpthread -o $@

.PHONY: bench bench-quick bench-bin compare ab report perf
bench-bin: $(BENCH_BIN)

BENCH_ENV = CC='$(CC)' MODE='$(MODE)' BENCH_CFLAGS='$(strip $(CSTD) $(MODE_FLAGS_$(MODE)) $(CFLAGS))'

bench: deps $(BENCH_BIN)
	$(Q)$(BENCH_ENV) bench/run-bench --bin $(BENCH_BIN) --out-dir $(RESULTS_LOCAL) --python '$(PYTHON)' \
	    --min-time $(BENCH_MIN_TIME) --repetitions $(BENCH_REPETITIONS)

bench-quick: deps $(BENCH_BIN)
	$(Q)$(BENCH_ENV) bench/run-bench --quick --bin $(BENCH_BIN) --out-dir $(BUILD)/bench --python '$(PYTHON)'

# GNU make exits 0 or 2 whatever a recipe returns (1 only under -q), so compare.py's 1 (a
# regression) and 2 (bad input) both end as make's 2; its own status stays in make's last line
# ('[compare] Error 1'). CI that branches on the status runs `ksalloc compare`, which keeps it.
compare:
	@test -n '$(BASE)' -a -n '$(NEW)' || { echo "usage: make compare BASE=a.json NEW=b.json [THRESHOLD=0.10] [ALPHA=0.05] [COMPARE_ARGS='--relative|--absolute|--aa A1 A2|--threshold-only']" >&2; exit 2; }
	$(Q)$(PYTHON) bench/compare.py --threshold $(THRESHOLD) --alpha $(ALPHA) $(COMPARE_ARGS) '$(BASE)' '$(NEW)'; \
	    status=$$?; [ $$status != 1 ] || echo "compare: a regression (compare.py exits 1; make reports any failure as 2: CI runs ksalloc compare)" >&2; exit $$status

AB_ROUNDS ?= 9
AB_FILTER ?=
ab: $(BENCH_BIN)
	@test -n '$(BASE)' -a -n '$(NEW)' || { echo "usage: make ab BASE=<revision|a.so> NEW=<revision|b.so> [AB_ROUNDS=5] [AB_FILTER=regex]" >&2; exit 2; }
	$(Q)bench/run-ab --base '$(BASE)' --new '$(NEW)' --bin $(BENCH_BIN) --python '$(PYTHON)' --rounds '$(AB_ROUNDS)' \
	    --min-time '$(BENCH_MIN_TIME)' $(if $(AB_FILTER),--filter '$(AB_FILTER)') -- --threshold $(THRESHOLD) --alpha $(ALPHA)

report:
	$(Q)$(PYTHON) bench/report.py --into $(RESULTS_LOCAL) $(if $(REPORTS),$(REPORTS),--latest $(RESULTS_LOCAL))

perf: deps $(BENCH_BIN)
	@test -n '$(BENCH)' || { echo "usage: make perf BENCH=<benchmark filter regex>" >&2; exit 2; }
	$(Q)bench/run-perf --bin $(BENCH_BIN) --filter '$(BENCH)' --results $(RESULTS_LOCAL) \
	    $(if $(REPORT),--report '$(REPORT)')

-include $(BENCH_OBJ:.o=.d)
