# fuzz/coverage.mk -- OSS-Fuzz's coverage job on this machine; included by fuzz/fuzz.mk (uses Q, CURDIR).
#
#   make fuzz-coverage            source coverage of every target over its corpus, as OSS-Fuzz reports it
#
# Two steps, each the one OSS-Fuzz runs. The build is fuzz/oss-fuzz/build.sh in the environment
# base-builder gives it (fuzz/oss-fuzz/base-env: clang's source-based coverage flags, no
# sanitizer), with build/fuzz-coverage/ as the container's root: src/ksalloc links to this tree,
# work/ keeps the objects (so a second run rebuilds only what changed), out/ is $OUT. The run is
# fuzz/oss-fuzz/coverage, base-runner's `coverage` script: every target replays its corpus once
# and llvm-cov reports the merged profile. The corpus a target gets is its seed corpus plus what
# `make fuzz` has added to build/fuzz/corpus/<target>/, so the figures grow as the fuzzing does.
# fuzz/coverage-summary.py then reduces the report to per-target, per-directory and per-allocator
# figures and the functions no target reaches.

FUZZ_COVERAGE_ROOT := $(CURDIR)/build/fuzz-coverage
FUZZ_COVERAGE_CORPUS ?= build/fuzz/corpus

.PHONY: fuzz-coverage
fuzz-coverage:
	@for tool in clang:clang zip:zip; do command -v $${tool%%:*} >/dev/null || \
	    { echo "fuzz-coverage: $${tool%%:*} not found: install the Debian package $${tool#*:} (make deps)"; exit 1; }; done
	@mkdir -p '$(FUZZ_COVERAGE_ROOT)'
	@$(if $(Q),echo "  BUILD [coverage] $(FUZZ_COVERAGE_ROOT)/out (log: $(FUZZ_COVERAGE_ROOT)/build.log)")
	$(Q)bash -euc '. fuzz/oss-fuzz/base-env; \
	    oss_fuzz_builder_env coverage libfuzzer "$$1"; \
	    mkdir -p "$$SRC" && ln -sfn "$$2" "$$SRC/ksalloc"; \
	    cd "$$SRC" && bash -eu "$$2/fuzz/oss-fuzz/build.sh"' \
	    fuzz-coverage '$(FUZZ_COVERAGE_ROOT)' '$(CURDIR)' >'$(FUZZ_COVERAGE_ROOT)/build.log' 2>&1 || \
	    { tail -n 30 '$(FUZZ_COVERAGE_ROOT)/build.log'; echo "fuzz-coverage: the coverage build failed"; exit 1; }
	$(Q)rm -rf '$(FUZZ_COVERAGE_ROOT)/report'; \
	    fuzz/oss-fuzz/coverage '$(FUZZ_COVERAGE_ROOT)/out' '$(FUZZ_COVERAGE_CORPUS)' '$(FUZZ_COVERAGE_ROOT)'; \
	    status=$$?; \
	    [ -f '$(FUZZ_COVERAGE_ROOT)/report/linux/coverage.json' ] || exit 1; \
	    echo; python3 fuzz/coverage-summary.py '$(FUZZ_COVERAGE_ROOT)' || exit 1; \
	    echo; echo "fuzz-coverage: report $(FUZZ_COVERAGE_ROOT)/report/index.html"; \
	    echo "fuzz-coverage: summary $(FUZZ_COVERAGE_ROOT)/report/summary.txt"; \
	    exit $$status
