/*
 * ring.c -- `ring`: a streaming ring of Frames slots for frames freed roughly in the order they
 * were allocated (capture -> render: the oldest buffer is the first one returned).
 *
 * Design: Frames frames (64 when 0, written back) of FrameSize bytes (4096 when 0, written back)
 * are carved from one aligned, mapped block (region.h), slot i at block + i * stride. The
 * occupied slots form the arc [tail, head) of the ring. Allocate hands out the slot at head and advances it; Free of the
 * slot at tail advances the tail over it and over every slot after it that was already freed, so
 * a stream freed in order never leaves the fast path. A Free that is not at the tail (out of
 * order) only marks the slot a "hole": it stays inside the arc until the tail reaches it and is
 * reclaimed then. When the arc drains completely, head and tail rewind to slot 0, so a lightly
 * loaded stream keeps reusing the same cache-warm frames instead of sweeping the whole block.
 *
 * The head reaching a live slot. A plain ring returns NULL once the arc spans the whole ring (the
 * head has caught up with the live slot at the tail) even if holes inside the arc are free: one
 * long-lived frame then blocks every other slot, and the ring could promise nothing. This ring
 * also threads its holes on a doubly linked list (LIFO), and when the arc is full Allocate hands
 * out the most recently freed hole instead. A hole is unlinked in O(1) when the tail sweeps over
 * it, so it can never be handed out twice. Every slot is then either live, a hole, or outside the
 * arc, and Allocate fails only when all Frames are live: the ring is KS_CAP_GUARANTEED as well as
 * KS_CAP_BOUNDED, and MUST_ALLOCATE needs nothing extra. Ring order (ascending addresses, wrapping)
 * holds while frees keep up; only a full arc falls back to holes.
 *
 * Complexity: Allocate O(1) (no loop). Free O(1) amortised: the tail sweep visits each hole once
 * per lap, and the hole was created by an O(1) Free. Free of a pointer that is not a live frame
 * of this ring (outside the block, off a slot boundary, not live: double free) is ignored and
 * counted in bad_frees -- the per-slot state makes this check free, so it is always on.
 *
 * Memory: Frames * stride bytes of frames (stride = FrameSize rounded up to the alignment; no
 * per-frame header, frames can be 1 byte apart), plus a 12-byte slot record per frame (state and
 * the two hole links), plus the instance. Nothing grows after initialisation.
 *
 * Thread safety: none; one thread at a time (no KS_CAP_THREAD_SAFE). A single-producer /
 * single-consumer lock-free ring (producer owns head, consumer owns tail) was the alternative,
 * but the hole list that makes the ring guaranteed is written by both sides (Free links a hole,
 * Allocate unlinks one, the tail sweep unlinks them too), which needs a lock or a multi-writer
 * lock-free list with its own ABA problem; and KS_CAP_THREAD_SAFE, meaning any number of threads,
 * could not describe an SPSC-only guarantee anyway. A capture pipeline serialises its calls.
 */
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framing.h"
#include "ksalloc.h"
#include "region.h"

/* Frames when the pin names none; written back into the framing. */
#ifndef KS_RING_DEFAULT_FRAMES
#define KS_RING_DEFAULT_FRAMES 64u
#endif
/* FrameSize when the pin names none; written back into the framing. */
#ifndef KS_RING_DEFAULT_FRAME_BYTES
#define KS_RING_DEFAULT_FRAME_BYTES 4096u
#endif
/* Stated limits (the catalogue entry publishes the first two). */
#ifndef KS_RING_MAX_FRAME_BYTES
#define KS_RING_MAX_FRAME_BYTES ((size_t)256 << 20)
#endif
#ifndef KS_RING_MAX_ALIGN_BYTES
#define KS_RING_MAX_ALIGN_BYTES ((size_t)1 << 20)
#endif
/* Slot numbers are 32-bit with RING_NONE as the list terminator; 2^20 slots is far past any
 * streaming depth and keeps the slot table (12 bytes a slot) at 12 MiB at most. */
#ifndef KS_RING_MAX_FRAMES
#define KS_RING_MAX_FRAMES (1u << 20)
#endif
/* The whole block is preallocated, so Frames * stride is capped (as the pool caps it): a larger
 * ring is refused with STATUS_INSUFFICIENT_RESOURCES rather than left to the heap's mercy. */
#ifndef KS_RING_MAX_BLOCK_BYTES
#define KS_RING_MAX_BLOCK_BYTES ((size_t)1 << 30)
#endif

#define RING_NONE UINT32_MAX

_Static_assert((KS_RING_MAX_ALIGN_BYTES & (KS_RING_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(KS_RING_DEFAULT_FRAME_BYTES <= KS_RING_MAX_FRAME_BYTES, "default frame within the limit");
_Static_assert(KS_RING_DEFAULT_FRAMES <= KS_RING_MAX_FRAMES, "default depth within the limit");
_Static_assert(KS_RING_MAX_FRAME_BYTES <= ULONG_MAX, "FrameSize is a ULONG");
_Static_assert(KS_RING_MAX_FRAMES < RING_NONE, "RING_NONE is never a slot number");
_Static_assert(sizeof(size_t) >= 8, "Frames * stride is computed in size_t without overflow");

typedef enum ring_slot_state {
    RING_SLOT_FREE = 0, /* outside the arc [tail, head): the head will hand it out in turn */
    RING_SLOT_LIVE = 1, /* handed out, not yet freed */
    RING_SLOT_HOLE = 2, /* freed out of order, inside the arc, on the hole list */
} ring_slot_state;

/* Invariant: state == RING_SLOT_HOLE exactly for the slots on the hole list; hole_prev and
 * hole_next are meaningful only then. */
typedef struct ring_slot {
    uint32_t hole_prev; /* towards hole_top (more recently freed), RING_NONE at the top */
    uint32_t hole_next; /* older hole, RING_NONE at the end */
    uint8_t state;      /* ring_slot_state */
} ring_slot;
_Static_assert(sizeof(ring_slot) == 12, "the slot record is the stated 12 bytes of overhead per frame");

/* Invariants (checked by ring_self_check):
 *   occupied <= frames, head == (tail + occupied) mod frames;
 *   slots of the arc [tail, head) are LIVE or HOLE, all others FREE;
 *   the slot at tail is LIVE whenever the arc is not empty (the sweep never stops on a hole);
 *   holes == number of HOLE slots == length of the hole list;
 *   frames live == occupied - holes. */
typedef struct ring {
    unsigned char *block; /* slot i's frame is block + i * stride_bytes */
    ring_slot *slots;
    size_t stride_bytes;
    size_t block_bytes;
    int stride_shift; /* log2(stride_bytes) if it is a power of two, else -1 (Free divides) */
    uint32_t frames;
    uint32_t head;     /* next slot handed out in ring order */
    uint32_t tail;     /* oldest slot of the arc */
    uint32_t occupied; /* slots in the arc: live or holes */
    uint32_t holes;
    uint32_t hole_top; /* the most recently freed hole, RING_NONE when there is none */
    /* Counters, none on the in-order fast path. */
    uint64_t hole_reuses;        /* Allocates served from a hole because the arc was full */
    uint64_t out_of_order_frees; /* Frees that made a hole */
    uint64_t refusals;           /* Allocates that returned NULL (all Frames live) */
    uint64_t bad_frees;          /* Frees of anything but a live frame of this ring, ignored */
} ring;

/* Defaults (written back on success only), limits; frames are carved from one block. */
static const ks_framing_rules ring_framing_rules = {
    .default_frames = KS_RING_DEFAULT_FRAMES,
    .default_frame_bytes = KS_RING_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = KS_RING_MAX_FRAME_BYTES,
    .max_align_bytes = KS_RING_MAX_ALIGN_BYTES,
    .min_align_bytes = 1,
    .max_frames = KS_RING_MAX_FRAMES,
    .max_block_bytes = KS_RING_MAX_BLOCK_BYTES,
};

static NTSTATUS ring_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    const KSPIN *pin = initial_context; /* a shared heap, if any, is not used: the ring is private */
    if (framing == NULL || context == NULL)
        return STATUS_INVALID_PARAMETER;
    if (pin != NULL && pin->abi_version != KSALLOC_ABI_VERSION)
        return STATUS_REVISION_MISMATCH;
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &ring_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    size_t stride_bytes = settled.stride_bytes;

    ring *instance = calloc(1, sizeof *instance);
    ring_slot *slots = calloc(settled.frames, sizeof *slots); /* calloc: every slot RING_SLOT_FREE */
    size_t block_bytes = settled.block_bytes;
    void *block = instance != NULL && slots != NULL ? ks_region_map_aligned(block_bytes, settled.align_bytes) : NULL;
    if (block == NULL) {
        free(slots);
        free(instance);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    ks_framing_write_back(framing, &settled);
    instance->block = block;
    instance->slots = slots;
    instance->stride_bytes = stride_bytes;
    instance->block_bytes = block_bytes;
    instance->stride_shift = (stride_bytes & (stride_bytes - 1)) == 0 ? __builtin_ctzll(stride_bytes) : -1;
    instance->frames = framing->Frames;
    instance->hole_top = RING_NONE;
    *context = instance;
    return STATUS_SUCCESS;
}

static void ring_delete(PVOID context)
{
    ring *instance = context;
    ks_region_unmap(instance->block, instance->block_bytes); /* frames still live go with it */
    free(instance->slots);
    free(instance);
}

static uint32_t ring_next_slot(const ring *instance, uint32_t slot)
{
    return slot + 1 == instance->frames ? 0 : slot + 1;
}

static void ring_hole_push(ring *instance, uint32_t slot)
{
    ring_slot *record = &instance->slots[slot];
    record->state = RING_SLOT_HOLE;
    record->hole_prev = RING_NONE;
    record->hole_next = instance->hole_top;
    if (instance->hole_top != RING_NONE)
        instance->slots[instance->hole_top].hole_prev = slot;
    instance->hole_top = slot;
    instance->holes++;
}

/* Takes a hole off the list from anywhere in it; the caller sets its new state. */
static void ring_hole_unlink(ring *instance, uint32_t slot)
{
    const ring_slot *record = &instance->slots[slot];
    if (record->hole_prev != RING_NONE)
        instance->slots[record->hole_prev].hole_next = record->hole_next;
    else
        instance->hole_top = record->hole_next;
    if (record->hole_next != RING_NONE)
        instance->slots[record->hole_next].hole_prev = record->hole_prev;
    instance->holes--;
}

static PVOID ring_allocate(PVOID context)
{
    ring *instance = context;
    uint32_t slot;
    if (instance->occupied < instance->frames) {
        slot = instance->head;
        instance->head = ring_next_slot(instance, slot);
        instance->occupied++;
    } else if (instance->hole_top != RING_NONE) {
        /* The arc spans the ring and the head would run into the live tail: reuse a hole. It
         * stays inside the arc, now live, and the tail will stop at it like any live slot. */
        slot = instance->hole_top;
        ring_hole_unlink(instance, slot);
        instance->hole_reuses++;
    } else {
        instance->refusals++;
        return NULL;
    }
    instance->slots[slot].state = RING_SLOT_LIVE;
    return instance->block + (size_t)slot * instance->stride_bytes;
}

/* The live slot of frame, or RING_NONE if frame is not a live frame of this ring. */
static uint32_t ring_live_slot_of(const ring *instance, const void *frame)
{
    uintptr_t offset_bytes = (uintptr_t)frame - (uintptr_t)instance->block;
    if (offset_bytes >= instance->block_bytes)
        return RING_NONE; /* also catches frame below block: the subtraction wraps */
    size_t slot = instance->stride_shift >= 0 ? offset_bytes >> instance->stride_shift
                                              : offset_bytes / instance->stride_bytes;
    if (slot * instance->stride_bytes != offset_bytes || instance->slots[slot].state != RING_SLOT_LIVE)
        return RING_NONE;
    return (uint32_t)slot;
}

/* The tail slot has just been freed: advance past it and every hole behind it. */
static void ring_sweep_tail(ring *instance)
{
    for (;;) {
        instance->slots[instance->tail].state = RING_SLOT_FREE;
        instance->tail = ring_next_slot(instance, instance->tail);
        instance->occupied--;
        if (instance->occupied == 0) {
            instance->head = instance->tail = 0; /* drained: rewind to the cache-warm start */
            return;
        }
        if (instance->slots[instance->tail].state != RING_SLOT_HOLE)
            return;
        ring_hole_unlink(instance, instance->tail);
    }
}

static void ring_free(PVOID context, PVOID buffer)
{
    ring *instance = context;
    uint32_t slot = ring_live_slot_of(instance, buffer);
    if (slot == RING_NONE) {
        instance->bad_frees++;
        return;
    }
    if (slot == instance->tail) {
        ring_sweep_tail(instance);
    } else {
        ring_hole_push(instance, slot);
        instance->out_of_order_frees++;
    }
}

/* ---- self_check and counters ----------------------------------------------------------------- */

static const char *ring_state_name(uint8_t state)
{
    switch (state) {
    case RING_SLOT_FREE: return "free";
    case RING_SLOT_LIVE: return "live";
    case RING_SLOT_HOLE: return "hole";
    default: return "corrupt";
    }
}

/* Every slot's state against its place inside or outside the arc; counts the holes. */
static NTSTATUS ring_check_slots(const ring *instance, char *why, size_t why_bytes, uint32_t *holes_seen)
{
    *holes_seen = 0;
    for (uint32_t slot = 0; slot < instance->frames; slot++) {
        uint32_t distance = slot >= instance->tail ? slot - instance->tail : slot + instance->frames - instance->tail;
        bool in_arc = distance < instance->occupied;
        uint8_t state = instance->slots[slot].state;
        bool ok = in_arc ? (state == RING_SLOT_LIVE || state == RING_SLOT_HOLE) : state == RING_SLOT_FREE;
        if (!ok) {
            snprintf(why, why_bytes, "ring: slot %u (frame %p) is %s but lies %s the arc [tail %u, head %u) of %u slots",
                     (unsigned)slot, (void *)(instance->block + (size_t)slot * instance->stride_bytes),
                     ring_state_name(state), in_arc ? "inside" : "outside", (unsigned)instance->tail,
                     (unsigned)instance->head, (unsigned)instance->occupied);
            return STATUS_DATA_ERROR;
        }
        *holes_seen += state == RING_SLOT_HOLE;
    }
    return STATUS_SUCCESS;
}

/* Walks the hole list from the top: links agree both ways, every entry is a hole, and the walk
 * ends within `holes` steps (so a cycle cannot hide). */
static NTSTATUS ring_check_hole_list(const ring *instance, char *why, size_t why_bytes)
{
    uint32_t previous = RING_NONE;
    uint32_t walked = 0;
    for (uint32_t slot = instance->hole_top; slot != RING_NONE; slot = instance->slots[slot].hole_next) {
        if (slot >= instance->frames || walked == instance->holes) {
            snprintf(why, why_bytes, "ring: hole list entry %u is slot %u: past %u holes or beyond %u slots (a cycle "
                     "or a stray link)", (unsigned)walked, (unsigned)slot, (unsigned)instance->holes,
                     (unsigned)instance->frames);
            return STATUS_DATA_ERROR;
        }
        const ring_slot *record = &instance->slots[slot];
        if (record->state != RING_SLOT_HOLE || record->hole_prev != previous) {
            snprintf(why, why_bytes, "ring: hole list entry %u is slot %u, which is %s with back link %d (expected %d)",
                     (unsigned)walked, (unsigned)slot, ring_state_name(record->state), (int)record->hole_prev,
                     (int)previous);
            return STATUS_DATA_ERROR;
        }
        previous = slot;
        walked++;
    }
    if (walked != instance->holes) {
        snprintf(why, why_bytes, "ring: hole list has %u entries, counter says %u", (unsigned)walked,
                 (unsigned)instance->holes);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static NTSTATUS ring_self_check(PVOID context, char *why, size_t why_bytes)
{
    const ring *instance = context;
    if (instance->occupied > instance->frames || instance->head >= instance->frames ||
        instance->tail >= instance->frames ||
        (instance->tail + instance->occupied) % instance->frames != instance->head) {
        snprintf(why, why_bytes, "ring: head %u, tail %u and %u occupied slots disagree for a ring of %u",
                 (unsigned)instance->head, (unsigned)instance->tail, (unsigned)instance->occupied,
                 (unsigned)instance->frames);
        return STATUS_DATA_ERROR;
    }
    if (instance->occupied != 0 && instance->slots[instance->tail].state != RING_SLOT_LIVE) {
        snprintf(why, why_bytes, "ring: the tail rests on slot %u, which is %s, not live", (unsigned)instance->tail,
                 ring_state_name(instance->slots[instance->tail].state));
        return STATUS_DATA_ERROR;
    }
    uint32_t holes_seen = 0;
    NTSTATUS status = ring_check_slots(instance, why, why_bytes, &holes_seen);
    if (!NT_SUCCESS(status))
        return status;
    if (holes_seen != instance->holes) {
        snprintf(why, why_bytes, "ring: %u slots are holes, counter says %u", (unsigned)holes_seen,
                 (unsigned)instance->holes);
        return STATUS_DATA_ERROR;
    }
    return ring_check_hole_list(instance, why, why_bytes);
}

static size_t ring_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const ring *instance = context;
    const ks_counter counters[] = {
        {"frames", instance->frames},
        {"stride_bytes", instance->stride_bytes},
        {"reserved_bytes", instance->block_bytes},
        {"frames_live", (uint64_t)instance->occupied - instance->holes},
        {"occupied_slots", instance->occupied},
        {"holes", instance->holes},
        {"hole_reuses", instance->hole_reuses},
        {"out_of_order_frees", instance->out_of_order_frees},
        {"refusals", instance->refusals},
        {"bad_frees", instance->bad_frees},
    };
    size_t count = 0;
    for (; count < sizeof counters / sizeof counters[0] && count < max_counters; count++)
        out[count] = counters[count];
    return count;
}

static const KSALLOCATOR_DISPATCH ring_dispatch = {
    .InitializeAllocator = ring_initialize,
    .DeleteAllocator = ring_delete,
    .Allocate = ring_allocate,
    .Free = ring_free,
};

const ks_allocator_entry ks_allocator_ring = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "ring",
    .description = "streaming ring of Frames slots freed in allocation order; out-of-order holes reused when full",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = KS_RING_MAX_FRAME_BYTES,
    .max_align_bytes = KS_RING_MAX_ALIGN_BYTES,
    .dispatch = &ring_dispatch,
    .self_check = ring_self_check,
    .counters = ring_counters,
};
