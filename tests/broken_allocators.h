/*
 * broken_allocators.h -- allocators broken on purpose, one per fault class an allocator can
 * commit (verifier.h), plus a correct reference allocator as the negative control. Each is a
 * complete ks_allocator_entry; the tests drive them through ks_verifier_dispatch and prove that
 * every check catches what it claims and stays silent on correct use.
 *
 * Every broken allocator is correct apart from its one bug, so a test that provokes the bug sees
 * exactly one fault class.
 */
#ifndef KS_TEST_BROKEN_ALLOCATORS_H
#define KS_TEST_BROKEN_ALLOCATORS_H

#include <stdint.h>

#include "ksalloc.h"

/* Correct: malloc-backed, one mutex, thread-safe, bounded by Frames and guaranteed up to it.
 * Settles FrameSize 0 to KS_TEST_REFERENCE_DEFAULT_FRAME_BYTES. Has a self_check. */
extern const ks_allocator_entry ks_test_reference_entry;
#define KS_TEST_REFERENCE_DEFAULT_FRAME_BYTES 256u

/* Calls into ks_test_reference_entry in this process, all instances together. */
typedef struct ks_test_reference_calls {
    uint64_t initialize;
    uint64_t delete_allocator;
    uint64_t allocate;   /* Allocate calls that returned a frame */
    uint64_t free_frame; /* Free calls */
    uint64_t frames_live;
} ks_test_reference_calls;
void ks_test_reference_calls_get(ks_test_reference_calls *calls);

/* The pool-based allocators below default Frames to 16 and FrameSize to 64 when they are 0. */
#define KS_TEST_POOL_DEFAULT_FRAMES 16u
#define KS_TEST_POOL_DEFAULT_FRAME_BYTES 64u

extern const ks_allocator_entry ks_broken_null_promised_entry;   /* NULL_PROMISED */
extern const ks_allocator_entry ks_broken_over_capacity_entry;   /* OVER_CAPACITY */
extern const ks_allocator_entry ks_broken_misaligned_entry;      /* MISALIGNED */
extern const ks_allocator_entry ks_broken_double_handout_entry;  /* DOUBLE_HANDOUT, within one instance */
extern const ks_allocator_entry ks_broken_static_frame_entry;    /* DOUBLE_HANDOUT, across instances */
extern const ks_allocator_entry ks_broken_short_frame_entry;     /* SHORT_FRAME */
extern const ks_allocator_entry ks_broken_overlap_entry;         /* OVERLAP; needs KSPIN.heap */
extern const ks_allocator_entry ks_broken_corruption_entry;      /* CORRUPTION; FrameSize >= 16 */
extern const ks_allocator_entry ks_broken_self_check_entry;      /* SELF_CHECK */
extern const ks_allocator_entry ks_broken_init_weakened_entry;   /* INIT_FAILED: weaker write-back */
extern const ks_allocator_entry ks_broken_init_null_context_entry; /* INIT_FAILED: NULL Context */

/* ks_broken_init_weakened_entry's silent limits. */
#define KS_TEST_WEAKENED_MAX_FRAME_BYTES 4096u
#define KS_TEST_WEAKENED_MAX_ALIGNMENT_MASK 0xFu
#define KS_TEST_WEAKENED_MAX_FRAMES 16u

#endif
