/*
 * verifier.h -- a checking layer that wraps any allocator's dispatch table, as Driver Verifier's
 * special pool wraps a driver, and keeps a shadow model of the live frames of every instance
 * opened in one session.
 *
 * ks_verifier_dispatch is itself a KSALLOCATOR_DISPATCH: its InitializeAllocator takes a
 * ks_verifier_pin (the session, the inner entry and the pin the inner allocator should see) as
 * InitialContext, so anything that drives a dispatch table drives a verified allocator the same
 * way. Faults are recorded in the session (Free returns void, like the real table) and read with
 * ks_verifier_fault_count / ks_verifier_fault_at, or handed to an on_fault callback.
 *
 * Checks, each a ks_fault_kind below: NULL where capacity was promised; more than Frames live on
 * a bounded allocator; misalignment; a frame handed out twice; a frame overlapping a live frame
 * of any instance of the session (partial overlap within one instance means the allocator made
 * a frame shorter than FrameSize); data in a live frame changed behind the user's back (each
 * frame is filled with a per-frame pattern on Allocate, so the whole FrameSize is written, and
 * checked on Touch and Free); a Free of a frame that is not live in that instance; frames still
 * live at DeleteAllocator; a failing self-check. It assumes nothing of allocator internals.
 * Cost: O(log live) per op for the shadow map plus O(FrameSize) to write and check the pattern.
 * Thread-safe: one mutex around the shadow map, never held while the inner allocator runs.
 */
#ifndef KS_VERIFIER_H
#define KS_VERIFIER_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "ksalloc.h"

typedef enum ks_fault_kind {
    KS_FAULT_NONE = 0,
    KS_FAULT_INIT_FAILED,       /* InitializeAllocator failed where the framing is one it must serve */
    KS_FAULT_NULL_PROMISED,     /* Allocate returned NULL with fewer than Frames live and capacity promised */
    KS_FAULT_OVER_CAPACITY,     /* a bounded allocator handed out frame Frames + 1 */
    KS_FAULT_MISALIGNED,        /* frame not aligned to FileAlignment + 1 */
    KS_FAULT_DOUBLE_HANDOUT,    /* a frame already live handed out again */
    KS_FAULT_SHORT_FRAME,       /* a new frame partly overlaps a live frame of the same instance */
    KS_FAULT_OVERLAP,           /* a new frame overlaps a live frame of another instance */
    KS_FAULT_CORRUPTION,        /* a live frame's data changed behind the user's back */
    KS_FAULT_BAD_FREE,          /* Free of a frame not live in that instance */
    KS_FAULT_LEAK,              /* frames still live at DeleteAllocator */
    KS_FAULT_SELF_CHECK,        /* the allocator's own self_check failed */
    KS_FAULT_UNWRITABLE_FRAME,  /* Allocate returned memory that cannot be written (probe_frames) */
    KS_FAULT_KIND_COUNT
} ks_fault_kind;

/* "null-promised", "misaligned", ... stable names, used in reports and tests. */
const char *ks_fault_kind_name(ks_fault_kind kind);

typedef struct ks_fault {
    ks_fault_kind kind;
    const char *allocator; /* entry name */
    unsigned instance;     /* instance number within the session, from 0 */
    uint64_t op_index;     /* the session's op counter when it was found */
    uintptr_t address;     /* the frame concerned, 0 if none */
    char message[400];     /* the whole story, one line */
} ks_fault;

typedef struct ks_verifier ks_verifier;

typedef struct ks_verifier_options {
    /* Call the allocator's self_check every this many ops of an instance (0 = only at
     * DeleteAllocator; allocators without one are skipped). */
    uint32_t self_check_every_ops;
    /* Keep at most this many faults (the count goes on); 0 means 64. */
    uint32_t max_faults_kept;
    /* Called once per fault, with the session's lock not held. May be NULL. */
    void (*on_fault)(void *arg, const ks_fault *fault);
    void *on_fault_arg;
    /* Before the verifier first writes a new frame, the kernel writes it (read(2) from /dev/zero,
     * which fails with EFAULT on an unmapped or read-only page instead of faulting this process):
     * a frame that cannot be written is a fault and never reaches the caller (Allocate returns
     * NULL). One system call per Allocate; the CLI sets it, the fuzz targets (under ASan) do not. */
    bool probe_frames;
} ks_verifier_options;

NTSTATUS ks_verifier_create(const ks_verifier_options *options, ks_verifier **verifier, ks_error *err);
/* Instances must all be deleted first; live shadow entries left are released silently. */
void ks_verifier_destroy(ks_verifier *verifier);
/* Makes the session as if just created with the same options (op and instance numbers from 0,
 * no faults kept or counted, no internal failures, a new pattern salt) while keeping its memory
 * (the shadow's node slabs, deleted instances' records), so that a caller running many short
 * sessions -- a fuzz target, one per input -- pays no allocation per session. Every instance
 * must have been deleted: STATUS_DEVICE_BUSY otherwise, with the session unchanged. */
NTSTATUS ks_verifier_reset(ks_verifier *verifier, ks_error *err);

/* InitialContext of ks_verifier_dispatch.InitializeAllocator. */
typedef struct ks_verifier_pin {
    ks_verifier *verifier;
    const ks_allocator_entry *inner;
    KSPIN *pin; /* what the inner allocator receives as InitialContext */
} ks_verifier_pin;

extern const KSALLOCATOR_DISPATCH ks_verifier_dispatch;

/* The framing the inner allocator settled on (after InitializeAllocator wrote back its choices). */
const KSALLOCATOR_FRAMING *ks_verifier_framing(void *instance_context);

/* A user access to a live frame: checks its pattern, then writes a fresh one (a new generation),
 * as a driver filling a frame would. A frame not live in that instance is a BAD_FREE-class
 * fault (reported as such with "touch" in the message). Counts as one op. */
void ks_verifier_touch(void *instance_context, void *frame);

/* Runs the inner self_check now (no-op without one). Counts as no op. */
void ks_verifier_self_check(void *instance_context);

/* Frames live in one instance. */
uint64_t ks_verifier_live(void *instance_context);

uint64_t ks_verifier_fault_count(const ks_verifier *verifier);
/* The index-th fault kept (0 = first found), or NULL. */
const ks_fault *ks_verifier_fault_at(const ks_verifier *verifier, uint64_t index);
/* Internal failures of the verifier itself (its shadow node pool could not grow; Allocate then
 * gave the frame back and returned NULL). Not faults of the allocator. err (may be NULL) gets the
 * first one's message. */
uint64_t ks_verifier_internal_failures(ks_verifier *verifier, ks_error *err);

/* Ops counted so far in the session (Allocate, Free and Touch calls). */
uint64_t ks_verifier_op_count(const ks_verifier *verifier);

#endif
