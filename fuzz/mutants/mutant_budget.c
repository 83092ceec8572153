/*
 * mutant_budget.c -- bug zoo mutant: a lookaside list in front of aligned_alloc, bounded by a budget.
 *
 * Bug: a Free that finds the lookaside full releases the frame through the drain helper, which uncounts it a second time
 * Expect: over-capacity
 *
 * Design: every frame is its own aligned_alloc block with a header linking it into the
 * instance's list of all frames (so DeleteAllocator can release frames still live); up to
 * LOOKASIDE_DEPTH freed frames are kept on a lookaside stack for reuse, the rest go back to the
 * C library -- the ExAllocateFromNPagedLookasideList pattern. outstanding counts frames handed
 * out and not yet returned, against Frames (KS_CAP_BOUNDED). Allocate and Free are O(1) plus
 * malloc's cost on a lookaside miss; memory is one header (rounded to the alignment) per frame.
 * Not thread-safe. release_frame was written for DeleteAllocator's drain and uncounts the frame
 * itself; the overflow path of Free calls it after Free already did, so each Free past a full
 * lookaside lifts the budget by one.
 */
#include <stdint.h>
#include <stdlib.h>

#include "ksalloc.h"

#define DEFAULT_FRAMES 16u
#define DEFAULT_FRAME_BYTES 256u
#define MIN_ALIGN_BYTES 16u
#define LOOKASIDE_DEPTH 4u

typedef struct frame_header {
    struct frame_header *prev;
    struct frame_header *next;
} frame_header;

typedef struct budget_allocator {
    size_t align_bytes;
    size_t header_bytes;
    size_t block_bytes;
    int64_t frames_max;
    int64_t outstanding;
    frame_header *all; /* every frame this instance holds, live or on the lookaside */
    void *lookaside[LOOKASIDE_DEPTH];
    unsigned lookaside_count;
} budget_allocator;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static NTSTATUS budget_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    if (framing->Frames == 0)
        framing->Frames = DEFAULT_FRAMES;
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    budget_allocator *alloc = calloc(1, sizeof *alloc);
    if (alloc == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    alloc->align_bytes = ks_framing_align_bytes(framing) < MIN_ALIGN_BYTES ? MIN_ALIGN_BYTES
                                                                            : ks_framing_align_bytes(framing);
    alloc->header_bytes = round_up(sizeof(frame_header), alloc->align_bytes);
    alloc->block_bytes = round_up(alloc->header_bytes + framing->FrameSize, alloc->align_bytes);
    alloc->frames_max = framing->Frames;
    *context = alloc;
    return STATUS_SUCCESS;
}

static frame_header *header_of(const budget_allocator *alloc, void *frame)
{
    return (frame_header *)((unsigned char *)frame - alloc->header_bytes);
}

/* Unlinks and frees one frame and uncounts it: DeleteAllocator's drain. */
static void release_frame(budget_allocator *alloc, frame_header *header)
{
    if (header->prev != NULL)
        header->prev->next = header->next;
    else
        alloc->all = header->next;
    if (header->next != NULL)
        header->next->prev = header->prev;
    free(header);
    alloc->outstanding--;
}

static void budget_delete(PVOID context)
{
    budget_allocator *alloc = context;
    while (alloc->all != NULL)
        release_frame(alloc, alloc->all);
    free(alloc);
}

static PVOID budget_allocate(PVOID context)
{
    budget_allocator *alloc = context;
    if (alloc->outstanding >= alloc->frames_max)
        return NULL;
    void *frame = NULL;
    if (alloc->lookaside_count > 0) {
        frame = alloc->lookaside[--alloc->lookaside_count];
    } else {
        frame_header *header = aligned_alloc(alloc->align_bytes, alloc->block_bytes);
        if (header == NULL)
            return NULL;
        header->prev = NULL;
        header->next = alloc->all;
        if (alloc->all != NULL)
            alloc->all->prev = header;
        alloc->all = header;
        frame = (unsigned char *)header + alloc->header_bytes;
    }
    alloc->outstanding++;
    return frame;
}

static void budget_free(PVOID context, PVOID frame)
{
    budget_allocator *alloc = context;
    alloc->outstanding--;
    if (alloc->lookaside_count < LOOKASIDE_DEPTH) {
        alloc->lookaside[alloc->lookaside_count++] = frame;
        return;
    }
    /* bug: release_frame uncounts the frame too; this Free already did */
    release_frame(alloc, header_of(alloc, frame));
#ifdef ZOO_FIXED
    alloc->outstanding++; /* release_frame uncounted it again */
#endif
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH budget_dispatch = {budget_initialize, budget_delete, budget_allocate, budget_free};
static const ks_allocator_entry budget_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_budget",
    .description = "zoo mutant: bounded lookaside whose overflow path uncounts a frame twice",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = 65536,
    .dispatch = &budget_dispatch,
};
KSALLOC_PLUGIN(budget_entry)
