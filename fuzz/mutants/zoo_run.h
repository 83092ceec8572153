/*
 * zoo_run.h -- runs one fuzz input against one allocator entry through the engine and the
 * verifier, the way the bug zoo's fuzz target and its replay driver both need it.
 *
 * One input is one complete, independent run: the head of the bytes decodes to pins, framings
 * and shared heaps (ks_decode_config), the rest to ops (ks_decode_op) executed by the engine with
 * every pin behind the verifier. When the entry claims KS_CAP_THREAD_SAFE the same bytes then
 * drive a second phase: pin 0's framing on one instance shared by two threads, each running its
 * own op list decoded deterministically from the input (the interleaving is the scheduler's, so
 * a racy allocator shows up as verifier faults with high probability, not certainty).
 * No state survives between calls.
 *
 * DMA. For a KS_CAP_DMA entry the decoder adds a device byte (ks_decode_config); the zoo reads one
 * more byte right after the config: 0 (mod 4) keeps the decoded device, 1-3 pick one of the zoo's
 * own devices without scatter/gather and with a boundary (which the decoder's table lacks, and
 * without which a frame straddling the boundary is legal: a scatter/gather device takes it split).
 * Entries without KS_CAP_DMA read no such byte, so their inputs decode as before. An engine step
 * that fails for DMA reasons (a DMA-debug report, stale data, a device fault) is a fault of the
 * run (see first_class), not a harness error.
 */
#ifndef KS_ZOO_RUN_H
#define KS_ZOO_RUN_H

#include <stddef.h>
#include <stdint.h>

#include "ksalloc.h"
#include "verifier.h"

typedef struct ks_zoo_result {
    uint64_t fault_count; /* verifier faults over both phases (see zoo_run.c on null-promised) */
    ks_fault first_fault; /* valid when fault_count > 0 */
    ks_fault faults[8];   /* the first few, in the order found */
    unsigned faults_kept;
    unsigned phase;       /* 1 = single-threaded engine run, 2 = two-thread run; where the first fault was */
    /* The first fault's class: a verifier kind name ("double-handout"), or for a DMA failure of
     * the engine (a KS_CAP_DMA allocator) "dma-<rule>" naming the first DMA-debug report
     * ("dma-frame-mismatch"), "dma-data" (stale or wrong data) or "dma-device" (a device fault
     * that was not injected). A DMA failure is kept as a fault of kind KS_FAULT_NONE whose message
     * starts with the class. */
    char first_class[48];
} ks_zoo_result;

/* Runs the input. Returns STATUS_SUCCESS when the run itself could be carried out (faults are
 * results, not errors); an allocator refusing the decoded framing is a clean run. An error status
 * means the harness could not run (out of memory), with err filled. */
/* thread_min_ops: phase 2 repeats each thread's op list until it has run at least this many ops
 * (0 = the fuzzing default, KS_ZOO_THREAD_MIN_OPS). Replaying a race, a longer run of the same
 * schedule makes the overlap that shows it more likely. */
#define KS_ZOO_THREAD_MIN_OPS 512u
NTSTATUS ks_zoo_run(const ks_allocator_entry *entry, const uint8_t *data, size_t size_bytes, unsigned thread_min_ops,
                    ks_zoo_result *result, ks_error *err);

#endif
