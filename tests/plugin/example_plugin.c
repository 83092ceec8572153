/*
 * example_plugin.c -- a complete frame allocator as a ksalloc plugin, small enough to copy as the
 * start of your own. It includes nothing from ksalloc but ksalloc.h and links nothing of it.
 *
 *   build:  cc -std=c11 -O2 -fPIC -shared -I<ksalloc>/harness -o example_plugin.so example_plugin.c
 *   list:   ksalloc list --plugin ./example_plugin.so
 *   run:    ksalloc run --plugin ./example_plugin.so ...   (every op checked by the verifier)
 *
 * Design: a bitmap allocator over one block. InitializeAllocator takes Frames (64 when 0) and
 * FrameSize (4096 when 0), writes both back, and allocates Frames * stride bytes at once, where
 * stride is FrameSize rounded up to the alignment. One bit per frame says whether it is live.
 * Allocate searches the bitmap a 64-bit word at a time from where the last search ended (next
 * fit) and takes the lowest clear bit of the first word that has one; Free clears the frame's
 * bit. The bits past Frames in the last word are set at initialisation so that the search never
 * hands them out. Because the frame index follows from the address, Free can check what it is
 * given for the price of a subtraction and a division: a pointer outside the block, off a frame
 * boundary or not live is ignored and counted, and self_check reports it.
 *
 * Complexity: Free O(1). Allocate O(1) while the pool has room near the cursor, O(Frames / 64)
 * word reads in the worst case (a nearly full pool).
 *
 * Memory: Frames * stride bytes in one block (stride - FrameSize bytes of padding per frame) plus
 * one bit per frame. Nothing is allocated after initialisation, so Allocate never fails while a
 * frame is free: the entry says KS_CAP_BOUNDED | KS_CAP_GUARANTEED.
 *
 * Thread safety: none; the harness calls one instance from one thread at a time.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ksalloc.h"

#define EXAMPLE_DEFAULT_FRAMES 64u
#define EXAMPLE_DEFAULT_FRAME_BYTES 4096u
#define EXAMPLE_MAX_FRAME_BYTES ((size_t)16 << 20)
#define EXAMPLE_MAX_ALIGN_BYTES ((size_t)4096)
#define EXAMPLE_MAX_BLOCK_BYTES ((size_t)256 << 20) /* a bigger pool is refused, not attempted */

_Static_assert((EXAMPLE_MAX_ALIGN_BYTES & (EXAMPLE_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "the bit scans work on 64-bit words");

typedef struct bitmap_pool {
    unsigned char *block;
    size_t stride_bytes;
    size_t block_bytes;
    ULONG frames;
    ULONG frames_live;
    size_t word_count;
    size_t cursor_word; /* where the next search starts */
    uint64_t bad_frees;
    uintptr_t first_bad_free;
    uint64_t live_bits[]; /* bit i of word w: frame w * 64 + i is live (or does not exist) */
} bitmap_pool;

/* The bits of the last word that name no frame: set forever so the search skips them. */
static uint64_t tail_mask(ULONG frames)
{
    unsigned used_bits = frames % 64u;
    return used_bits == 0 ? 0 : ~UINT64_C(0) << used_bits;
}

static NTSTATUS bitmap_initialize(PVOID pin, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)pin; /* this allocator needs nothing from the pin */
    if (!ks_framing_align_valid(framing) || ks_framing_align_bytes(framing) > EXAMPLE_MAX_ALIGN_BYTES ||
        framing->FrameSize > EXAMPLE_MAX_FRAME_BYTES)
        return STATUS_INVALID_PARAMETER;
    if (framing->Frames == 0)
        framing->Frames = EXAMPLE_DEFAULT_FRAMES;
    if (framing->FrameSize == 0)
        framing->FrameSize = EXAMPLE_DEFAULT_FRAME_BYTES;

    size_t align_bytes = ks_framing_align_bytes(framing);
    size_t stride_bytes = ((size_t)framing->FrameSize + align_bytes - 1) / align_bytes * align_bytes;
    if ((size_t)framing->Frames > EXAMPLE_MAX_BLOCK_BYTES / stride_bytes)
        return STATUS_INSUFFICIENT_RESOURCES;
    size_t word_count = ((size_t)framing->Frames + 63) / 64;
    bitmap_pool *pool = calloc(1, sizeof *pool + word_count * sizeof pool->live_bits[0]);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->block_bytes = (size_t)framing->Frames * stride_bytes; /* a multiple of align_bytes, as C11 asks */
    pool->block = aligned_alloc(align_bytes, pool->block_bytes);
    if (pool->block == NULL) {
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    pool->stride_bytes = stride_bytes;
    pool->frames = framing->Frames;
    pool->word_count = word_count;
    pool->live_bits[word_count - 1] = tail_mask(pool->frames);
    *context = pool;
    return STATUS_SUCCESS;
}

static void bitmap_delete(PVOID context)
{
    bitmap_pool *pool = context;
    free(pool->block); /* frames still live go with the block */
    free(pool);
}

static PVOID bitmap_allocate(PVOID context)
{
    bitmap_pool *pool = context;
    size_t word = pool->cursor_word;
    for (size_t searched = 0; searched < pool->word_count; searched++) {
        uint64_t bits = pool->live_bits[word];
        if (bits != ~UINT64_C(0)) {
            unsigned bit = (unsigned)__builtin_ctzll(~bits);
            pool->live_bits[word] = bits | (UINT64_C(1) << bit);
            pool->cursor_word = word;
            pool->frames_live++;
            return pool->block + (word * 64 + bit) * pool->stride_bytes;
        }
        word = word + 1 == pool->word_count ? 0 : word + 1;
    }
    return NULL; /* all Frames frames are live */
}

static void bitmap_free(PVOID context, PVOID buffer)
{
    bitmap_pool *pool = context;
    uintptr_t offset_bytes = (uintptr_t)buffer - (uintptr_t)pool->block; /* wraps for buffer < block */
    size_t index = offset_bytes / pool->stride_bytes;
    uint64_t bit = UINT64_C(1) << (index % 64);
    if (offset_bytes >= pool->block_bytes || offset_bytes % pool->stride_bytes != 0 ||
        !(pool->live_bits[index / 64] & bit)) {
        if (pool->bad_frees++ == 0)
            pool->first_bad_free = (uintptr_t)buffer;
        return;
    }
    pool->live_bits[index / 64] &= ~bit;
    pool->frames_live--;
}

static NTSTATUS bitmap_self_check(PVOID context, char *why, size_t why_bytes)
{
    const bitmap_pool *pool = context;
    if (pool->bad_frees != 0) {
        snprintf(why, why_bytes, "example-bitmap: %llu Free call(s) of a frame not live here, first %p",
                 (unsigned long long)pool->bad_frees, (void *)pool->first_bad_free);
        return STATUS_DATA_ERROR;
    }
    uint64_t tail = tail_mask(pool->frames);
    if ((pool->live_bits[pool->word_count - 1] & tail) != tail) {
        snprintf(why, why_bytes, "example-bitmap: a bit past frame %u is clear, so it could be handed out",
                 (unsigned)pool->frames);
        return STATUS_DATA_ERROR;
    }
    unsigned long long live_bits = 0;
    for (size_t word = 0; word < pool->word_count; word++)
        live_bits += (unsigned long long)__builtin_popcountll(pool->live_bits[word]);
    live_bits -= (unsigned long long)__builtin_popcountll(tail);
    if (live_bits != pool->frames_live || pool->cursor_word >= pool->word_count) {
        snprintf(why, why_bytes, "example-bitmap: %llu live bits but frames_live is %u (cursor word %zu of %zu)",
                 live_bits, (unsigned)pool->frames_live, pool->cursor_word, pool->word_count);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static size_t bitmap_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const bitmap_pool *pool = context;
    const ks_counter counters[] = {
        {"frames", pool->frames},
        {"frames_live", pool->frames_live},
        {"stride_bytes", pool->stride_bytes},
        {"reserved_bytes", pool->block_bytes + pool->word_count * sizeof pool->live_bits[0]},
        {"bad_frees", pool->bad_frees},
    };
    size_t count = 0;
    for (; count < sizeof counters / sizeof counters[0] && count < max_counters; count++)
        out[count] = counters[count];
    return count;
}

static const KSALLOCATOR_DISPATCH bitmap_dispatch = {
    .InitializeAllocator = bitmap_initialize,
    .DeleteAllocator = bitmap_delete,
    .Allocate = bitmap_allocate,
    .Free = bitmap_free,
};

static const ks_allocator_entry bitmap_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "example-bitmap",
    .description = "example plugin: Frames frames in one block, a live bit per frame, next-fit search",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = EXAMPLE_MAX_FRAME_BYTES,
    .max_align_bytes = EXAMPLE_MAX_ALIGN_BYTES,
    .dispatch = &bitmap_dispatch,
    .self_check = bitmap_self_check,
    .counters = bitmap_counters,
};

/* Declared first so that the plugin also builds with -Wmissing-prototypes. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);
KSALLOC_PLUGIN(bitmap_entry)
