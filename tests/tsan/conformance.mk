# tests/tsan/conformance.mk -- the conformance suite (tests/test_conformance.c) under TSan.
# Included from the Makefile after the build rules (it uses CC, BUILD, MODE, LIBKS, LIBS,
# LDFLAGS_ALL, CFLAGS_ALL and the object rule), like tests/stress/stress.mk.
#
#   make conformance-tsan       build in build/tsan and run every conformance case (one process per
#                               case, 2 at a time): "conformance-tsan: N passed, N failed, N skipped";
#                               a data race (TSan's exit 66), an assertion or a crash fails its case
#   make conformance-tsan CONFORMANCE_TSAN_ARGS='conformance/verifier*'   fnmatch globs on suite/name
#
# Criterion cannot start under TSan (Snaipe/Criterion#274), so test_conformance.c is compiled
# against tests/tsan/criterion/ -- the part of Criterion's API it uses -- and linked with
# tests/tsan/runner.c. The same source, the same cases as the release and ASan legs.

ifndef KS_CONFORMANCE_TSAN_MK_INCLUDED
KS_CONFORMANCE_TSAN_MK_INCLUDED := 1
CONFORMANCE_TSAN_MAKEFILES := $(firstword $(MAKEFILE_LIST)) $(lastword $(MAKEFILE_LIST))
CONFORMANCE_TSAN_BUILD := $(if $(filter tsan,$(MODE)),$(BUILD),build/tsan)
CONFORMANCE_TSAN_OBJ := $(BUILD)/obj/tests/tsan/test_conformance.o $(BUILD)/obj/tests/tsan/runner.o
CONFORMANCE_TSAN_BIN := $(BUILD)/bin/ksalloc-conformance-tsan
CONFORMANCE_TSAN_OPTIONS := halt_on_error=1 exitcode=66 second_deadlock_stack=1
CONFORMANCE_TSAN_ARGS ?=

# The shim's headers come first, so `#include <criterion/criterion.h>` finds them.
$(BUILD)/obj/tests/tsan/test_conformance.o: tests/test_conformance.c | $(BUILD)/obj
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC [$(MODE)] $< (Criterion shim)")
	$(Q)$(CC) -Itests/tsan $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(BUILD)/obj/tests/tsan/runner.o: CFLAGS_ALL += -Itests/tsan

$(CONFORMANCE_TSAN_BIN): $(CONFORMANCE_TSAN_OBJ) $(LIBKS) | $(BUILD)/bin
	@$(if $(Q),echo "  LD [$(MODE)] $@")
	$(Q)$(CC) $(LDFLAGS_ALL) $(CONFORMANCE_TSAN_OBJ) $(LIBKS) $(LIBS) -o $@

.PHONY: conformance-tsan conformance-tsan-bin
conformance-tsan-bin: $(CONFORMANCE_TSAN_BIN) $(PLUGINS)

conformance-tsan:
	$(Q)$(MAKE) --no-print-directory $(addprefix -f ,$(CONFORMANCE_TSAN_MAKEFILES)) MODE=tsan \
	    BUILD=$(CONFORMANCE_TSAN_BUILD) conformance-tsan-bin
	$(Q)TSAN_OPTIONS="$(CONFORMANCE_TSAN_OPTIONS) $(TSAN_OPTIONS)" \
	    $(CONFORMANCE_TSAN_BUILD)/bin/ksalloc-conformance-tsan $(CONFORMANCE_TSAN_ARGS)

-include $(CONFORMANCE_TSAN_OBJ:.o=.d)
endif
