# tests/stress/stress.mk -- the multi-threaded stress under TSan. Include it from the Makefile
# after the build rules (it uses CC, BUILD, MODE, LIBKS, LIBS, LDFLAGS_ALL and the object rule):
#
#   include tests/stress/stress.mk
#
#   make stress                 build the TSan binary (into build/tsan, or $(BUILD) with MODE=tsan)
#                               and run it: one line per case, then "stress: N passed, N failed";
#                               fails on any verifier fault, run error or TSan report (exit 66)
#   make stress STRESS_ARGS='--allocator tlsf --ops 20000'    pass options to the program
#
# tests/stress/ is outside the tests/*.c wildcard on purpose: the program has its own main and no
# Criterion (Criterion's runner cannot start under TSan, Snaipe/Criterion#274).

ifndef KS_STRESS_MK_INCLUDED
KS_STRESS_MK_INCLUDED := 1
# The top makefile and this file, handed to the TSan sub-make so that it knows these rules whether
# this file was included from the Makefile or named with -f (read twice, the guard skips it).
STRESS_MAKEFILES := $(firstword $(MAKEFILE_LIST)) $(lastword $(MAKEFILE_LIST))
STRESS_SRC := tests/stress/mt_stress.c
STRESS_OBJ := $(BUILD)/obj/tests/stress/mt_stress.o
STRESS_BIN := $(BUILD)/bin/ksalloc-mt-stress
# The stress only means something under TSan: from any other mode, build and run it in build/tsan.
STRESS_BUILD := $(if $(filter tsan,$(MODE)),$(BUILD),build/tsan)
STRESS_TSAN_OPTIONS := halt_on_error=1 exitcode=66 second_deadlock_stack=1

$(STRESS_BIN): $(STRESS_OBJ) $(LIBKS) | $(BUILD)/bin
	@$(if $(Q),echo "  LD [$(MODE)] $@")
	$(Q)$(CC) $(LDFLAGS_ALL) $(STRESS_OBJ) $(LIBKS) $(LIBS) -o $@

.PHONY: stress stress-bin
stress-bin: $(STRESS_BIN)

stress:
	$(Q)$(MAKE) --no-print-directory $(addprefix -f ,$(STRESS_MAKEFILES)) MODE=tsan BUILD=$(STRESS_BUILD) stress-bin
	$(Q)TSAN_OPTIONS="$(STRESS_TSAN_OPTIONS) $(TSAN_OPTIONS)" $(STRESS_BUILD)/bin/ksalloc-mt-stress $(STRESS_ARGS)

-include $(STRESS_OBJ:.o=.d)
endif
