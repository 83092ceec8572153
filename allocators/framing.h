/*
 * framing.h -- internal: how an allocator settles the KSALLOCATOR_FRAMING a pin asks for.
 *
 * Every allocator does the same first steps at InitializeAllocator: refuse an alignment mask that
 * is not 2^k - 1 or an alignment or FrameSize over its stated limits (STATUS_INVALID_PARAMETER),
 * replace FrameSize 0 (and, for allocators with a frame count, Frames 0) by its documented
 * default, raise the alignment to what its own links need, round a frame up to a stride and, for
 * allocators that carve Frames frames from one block, refuse a block over their limit
 * (STATUS_INSUFFICIENT_RESOURCES) or a frame count over theirs (STATUS_INVALID_PARAMETER).
 * ks_framing_settle does those steps once, without touching the framing, so that an allocator
 * that fails later leaves the pin's framing as it was; ks_framing_write_back then writes the
 * defaults back at the point where the allocator commits (the harness reads them from there).
 * Not part of the plugin ABI: only allocators/ includes it, by relative path.
 */
#ifndef KS_FRAMING_H
#define KS_FRAMING_H

#include <stddef.h>

#include "ksalloc.h"

typedef struct ks_framing_rules {
    ULONG default_frames;      /* Frames 0 becomes this; 0 leaves Frames 0 (no frame count) */
    ULONG default_frame_bytes; /* FrameSize 0 becomes this; not 0 */
    size_t max_frame_bytes;    /* FrameSize above it is refused */
    size_t max_align_bytes;    /* FileAlignment + 1 above it is refused; a power of two */
    size_t min_align_bytes;    /* the effective alignment is at least this; a power of two, 1 = none */
    ULONG max_frames;          /* Frames (after the default) above it is refused; 0 = no limit */
    size_t max_block_bytes;    /* frames * stride above it is STATUS_INSUFFICIENT_RESOURCES; 0 = none */
} ks_framing_rules;

typedef struct ks_framing_settled {
    ULONG frames;        /* Frames, defaulted */
    size_t frame_bytes;  /* FrameSize, defaulted */
    size_t align_bytes;  /* max(FileAlignment + 1, min_align_bytes) */
    size_t stride_bytes; /* frame_bytes rounded up to align_bytes: frames laid end to end stay aligned */
    size_t block_bytes;  /* frames * stride_bytes: one block holding every frame */
} ks_framing_settled;

/* Checks framing against rules and fills *settled; framing itself is left unchanged. Returns
 * STATUS_INVALID_PARAMETER (and leaves *settled unspecified) for a mask that is not 2^k - 1, an
 * alignment above max_align_bytes, a FrameSize above max_frame_bytes or Frames above max_frames,
 * and STATUS_INSUFFICIENT_RESOURCES for a block above max_block_bytes. O(1). */
static inline NTSTATUS ks_framing_settle(const KSALLOCATOR_FRAMING *framing, const ks_framing_rules *rules,
                                         ks_framing_settled *settled)
{
    if (!ks_framing_align_valid(framing) || ks_framing_align_bytes(framing) > rules->max_align_bytes)
        return STATUS_INVALID_PARAMETER;
    settled->frames = framing->Frames != 0 ? framing->Frames : rules->default_frames;
    settled->frame_bytes = framing->FrameSize != 0 ? framing->FrameSize : rules->default_frame_bytes;
    if (settled->frame_bytes > rules->max_frame_bytes)
        return STATUS_INVALID_PARAMETER;
    size_t align_bytes = ks_framing_align_bytes(framing);
    settled->align_bytes = align_bytes > rules->min_align_bytes ? align_bytes : rules->min_align_bytes;
    /* frame_bytes <= ULONG_MAX and align_bytes <= 2^32 (a mask is a ULONG): no overflow in size_t. */
    _Static_assert(sizeof(size_t) >= 8, "a stride is FrameSize + alignment in size_t");
    settled->stride_bytes = (settled->frame_bytes + settled->align_bytes - 1) & ~(settled->align_bytes - 1);
    if (rules->max_frames != 0 && settled->frames > rules->max_frames)
        return STATUS_INVALID_PARAMETER;
    /* frames < 2^32 and stride <= 2^32: the product fits a 64-bit size_t. */
    settled->block_bytes = (size_t)settled->frames * settled->stride_bytes;
    if (rules->max_block_bytes != 0 && settled->block_bytes > rules->max_block_bytes)
        return STATUS_INSUFFICIENT_RESOURCES;
    return STATUS_SUCCESS;
}

/* Writes the settled Frames and FrameSize back into the pin's framing. */
static inline void ks_framing_write_back(KSALLOCATOR_FRAMING *framing, const ks_framing_settled *settled)
{
    framing->Frames = settled->frames;
    framing->FrameSize = (ULONG)settled->frame_bytes;
}

#endif /* KS_FRAMING_H */
