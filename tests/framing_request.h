/*
 * framing_request.h -- the KSALLOCATOR_FRAMING a test pin asks for: Frames, FrameSize, the
 * FileAlignment mask, MUST_ALLOCATE or not, non-paged pool, nothing else set. Shared by the tests
 * that open allocators through their dispatch tables (test_conformance.c, test_buddy_tlsf.c).
 */
#ifndef KS_TEST_FRAMING_REQUEST_H
#define KS_TEST_FRAMING_REQUEST_H

#include <stdbool.h>
#include <string.h>

#include "ksalloc.h"

static inline KSALLOCATOR_FRAMING ks_test_framing(ULONG frames, ULONG frame_bytes, ULONG align_mask,
                                                  bool must_allocate)
{
    KSALLOCATOR_FRAMING framing;
    memset(&framing, 0, sizeof framing);
    framing.RequirementsFlags = must_allocate ? KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE : 0;
    framing.PoolType = NonPagedPool;
    framing.Frames = frames;
    framing.FrameSize = frame_bytes;
    framing.FileAlignment = align_mask;
    return framing;
}

#endif
