/*
 * tlsf.c -- "tlsf": Two-Level Segregated Fit (Masmano, Ripoll, Crespo, Real; ECRTS 2004) over one
 * region, written from the paper's design.
 *
 * Design. Free blocks are segregated by size into lists: a first level by power of two (the
 * position of the size's top bit) and a second level splitting each power of two into 32 equal
 * ranges; sizes under 512 bytes share first-level 0 in 16-byte steps. A first-level bitmap and
 * one second-level bitmap per first level say which lists are non-empty, so finding a list whose
 * every block is large enough ("good fit": round the request up to the next range, then
 * find-first-set in the bitmaps) takes a constant number of bit operations. Every block starts
 * with a 16-byte header: a pointer to its physical predecessor and one word holding the payload
 * size, the flags FREE, PREV_FREE and SET_ASIDE, and the tag of the owning instance. The
 * predecessor pointer and the size are the boundary tags that reach both physical neighbours in
 * O(1), so Free coalesces immediately with a free neighbour on either side and no two free
 * blocks are ever adjacent. A zero-size used sentinel header closes the region. Free blocks
 * carry their list links in their first payload bytes. Good fit rounds a request up to the next
 * range, so a free block of exactly the request's size (what a freed frame of the same framing
 * leaves) is one list below where it looks; when good fit finds nothing, Allocate gives the
 * first four blocks of that exact-size list a second chance, a constant bound.
 *
 * Aligned frames (FileAlignment + 1 > 16, up to 1 MiB). On a shared heap good fit asks for
 * payload + alignment + 16 bytes, and the gap up to the first aligned payload address that
 * leaves room for a free block (0 or >= 32 bytes) is split off as a free block, the tail beyond
 * the payload likewise. A private instance serves one framing, so it rounds its payload up until
 * header + payload is a multiple of the alignment and starts its region so that the first
 * payload is aligned: its frames tile the region in slots, every free block starts aligned, and
 * good fit needs no padding.
 *
 * Private or shared. A pin without a heap gets its own mmap'd region of at least Frames slots.
 * All tlsf pins on one ks_heap share one control block over the heap's region, created by the
 * first heap->attach("tlsf") and destroyed by the last detach; each pin keeps its own framing
 * (size, alignment) in its instance, so pins of different frame sizes draw from one pool
 * (KS_CAP_ANY_SIZE). Each instance takes a tag (1..255 per control block) stored in its blocks'
 * headers, so a Free of another instance's frame is refused (and counted), and DeleteAllocator
 * finds the frames still live and gives them back.
 *
 * Capacity. A private instance always serves Frames frames: each frame takes one slot, a free
 * slot is always found (one slot by the second chance, a run of them by good fit), and there are
 * Frames slots (tlsf_open_private). On a shared heap other pins' frames of other sizes fragment
 * the region and may take all of it, so the entry does not claim KS_CAP_GUARANTEED. A pin that
 * asks for MUST_ALLOCATE on a shared heap keeps frames_promised - frames_live frames set aside
 * (taken at InitializeAllocator, which fails with STATUS_INSUFFICIENT_RESOURCES if the heap
 * cannot supply them, and refilled by Free), so its promise holds whatever the other pins do.
 * They are reserved as runs of slots (header + payload rounded up to the alignment), one run of
 * Frames slots when the heap has a block that large, and Allocate carves a run's frames off its
 * front one at a time: InitializeAllocator writes a header per run, not per frame, and a frame's
 * memory is first touched when it is handed out (tlsf_fill_set_aside).
 *
 * Complexity. Allocate and Free: O(1), a bounded number of bit scans, list and header updates,
 * whatever the region size or number of blocks. DeleteAllocator: O(1) privately, O(blocks) on a
 * shared heap (a walk for the instance's blocks). self_check: O(blocks), the lists visited through
 * the bitmaps.
 *
 * Memory overhead. 16 bytes of header per frame, plus up to 31 bytes of tail too small to split
 * off; privately, the payload rounded up so that header + payload is a multiple of the
 * alignment (a 4 KiB frame aligned to 4 KiB takes 8 KiB); on a shared heap, an aligned frame may
 * leave a free gap before it that only smaller requests can use. About 8.3 KiB of control per
 * region (32 x 32 list heads, of which only the heads of non-empty lists are ever written or
 * read: creating a region zeroes the bitmaps, not the heads), in a 16 KiB mapping from the
 * region cache, and 170 bytes per instance.
 *
 * Thread safety. Each control block, shared or private, has one mutex taken by every operation,
 * so an instance may be called from many threads at once (KS_CAP_THREAD_SAFE). Pins on one heap
 * contend for that mutex; the heap's own lock is taken only in InitializeAllocator and
 * DeleteAllocator.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "framing.h"
#include "ksalloc.h"
#include "region.h"

#ifndef KS_DEBUG
#define KS_DEBUG 0
#endif

#define TLSF_FAMILY "tlsf"
#define TLSF_DEFAULT_FRAMES 64u
#define TLSF_DEFAULT_FRAME_BYTES 4096u
#define TLSF_ALIGN_LOG2 4u /* payload sizes and addresses are multiples of 16 */
#define TLSF_ALIGN_BYTES ((size_t)1 << TLSF_ALIGN_LOG2)
#define TLSF_SL_LOG2 5u /* 32 second-level ranges per power of two: <= 3.1% rounding in good fit */
#define TLSF_SL_COUNT (1u << TLSF_SL_LOG2)
#define TLSF_FL_SHIFT (TLSF_SL_LOG2 + TLSF_ALIGN_LOG2) /* sizes below 2^9 are first level 0 */
#define TLSF_SMALL_BYTES ((size_t)1 << TLSF_FL_SHIFT)
#define TLSF_MAX_REGION_LOG2 40u /* 1 TiB, the largest heap ks_heap_create makes */
#define TLSF_FL_COUNT (TLSF_MAX_REGION_LOG2 - TLSF_FL_SHIFT + 1u)
/* Limits, the catalogue's common ones: FrameSize up to 256 MiB, alignment up to 1 MiB. */
#define TLSF_MAX_FRAME_BYTES ((size_t)256 << 20)
#define TLSF_MAX_ALIGN_BYTES ((size_t)1 << 20)
#define TLSF_TAG_COUNT KS_REGION_TAG_COUNT                    /* tag 0 marks free blocks; instances get 1..255 */
/* Blocks of the exact-size list Allocate tries when good fit finds nothing (see find_exact_fit). */
#define TLSF_EXACT_FIT_TRIES 4u

/* Header word: bits 0-3 flags, 4-47 payload bytes (a multiple of 16), 48-55 owner tag. */
#define TLSF_FREE 0x1u
#define TLSF_PREV_FREE 0x2u
#define TLSF_SET_ASIDE 0x4u
#define TLSF_FLAG_MASK 0xFull
#define TLSF_SIZE_MASK (((1ull << 48) - 1) & ~TLSF_FLAG_MASK)
#define TLSF_TAG_SHIFT 48u

typedef struct tlsf_block {
    struct tlsf_block *prev_phys; /* the block just before this one in memory; NULL for the first */
    uint64_t word;
    struct tlsf_block *next_free; /* free blocks only: the first payload bytes */
    struct tlsf_block *prev_free;
} tlsf_block;

#define TLSF_HEADER_BYTES offsetof(tlsf_block, next_free)
#define TLSF_MIN_PAYLOAD_BYTES (sizeof(tlsf_block) - TLSF_HEADER_BYTES)
#define TLSF_MIN_BLOCK_BYTES sizeof(tlsf_block)

_Static_assert(sizeof(uintptr_t) == 8 && sizeof(size_t) == 8, "sizes up to 2^40 need 64-bit words");
_Static_assert(TLSF_HEADER_BYTES == 16 && TLSF_HEADER_BYTES % TLSF_ALIGN_BYTES == 0,
               "a 16-byte header keeps payloads 16-aligned");
_Static_assert(TLSF_MIN_PAYLOAD_BYTES % TLSF_ALIGN_BYTES == 0, "the smallest payload holds the list links");
_Static_assert(TLSF_FL_COUNT == 32 && TLSF_SL_COUNT == 32, "fl_bitmap and sl_bitmap[] are uint32_t");
_Static_assert(TLSF_SMALL_BYTES / TLSF_ALIGN_BYTES == TLSF_SL_COUNT, "first level 0 is 32 lists 16 bytes apart");
_Static_assert(TLSF_SIZE_MASK >= (1ull << TLSF_MAX_REGION_LOG2) - 1 - TLSF_FLAG_MASK, "any payload fits the word");
_Static_assert((TLSF_TAG_COUNT - 1) <= (~0ull >> TLSF_TAG_SHIFT), "a tag fits the word");
_Static_assert(TLSF_MAX_FRAME_BYTES <= UINT32_MAX && TLSF_MAX_ALIGN_BYTES <= TLSF_MAX_FRAME_BYTES,
               "FrameSize (a ULONG) may reach the limits");

typedef struct tlsf_control {
    pthread_mutex_t lock; /* guards everything below and the instances' counters */
    /* Invariants: bit fl of fl_bitmap iff sl_bitmap[fl] != 0; free_bytes / free_blocks sum the
     * free blocks' payloads / count them. */
    uint32_t fl_bitmap;
    uint32_t sl_bitmap[TLSF_FL_COUNT];
    uintptr_t lo; /* the first block's header */
    uintptr_t hi; /* the sentinel header is at hi - 16 */
    size_t free_bytes;
    uint64_t free_blocks;
    ks_region_tags tags;
    void *own_mapping; /* a private region this control block unmaps when destroyed; NULL on a heap */
    size_t own_mapping_bytes;
    /* List (fl, sl) exists iff bit sl of sl_bitmap[fl] is set, and then heads[fl][sl] is its first
     * block (never NULL); the head of an empty list is never read, so it is never initialised:
     * the 8 KiB here are touched only where lists are (last in the struct for that reason, see
     * tlsf_control_create). */
    tlsf_block *heads[TLSF_FL_COUNT][TLSF_SL_COUNT];
} tlsf_control;

typedef struct tlsf_instance {
    tlsf_control *control;
    ks_heap *heap; /* NULL: control is this instance's own */
    KSALLOCATOR_FRAMING framing;
    size_t payload_bytes; /* FrameSize rounded up to 16 (private: so that header + payload is a
                           * multiple of the alignment), at least TLSF_MIN_PAYLOAD_BYTES */
    size_t align_bytes;   /* FileAlignment + 1 */
    size_t pad_bytes;     /* added to good fit's search: align + 16 on a shared heap, else 0 */
    size_t slot_bytes;    /* header + payload rounded up to the alignment: one frame of a run */
    unsigned tag;
    char pin_name[32];
    /* Guarded by control->lock. Invariant: frames_set_aside == max(0, frames_promised -
     * frames_live), the frames the set-aside blocks hold (tlsf_set_aside_frames); held_bytes sums
     * header + payload of the blocks with this tag. */
    uint64_t frames_live;
    uint64_t frames_set_aside;
    uint64_t frames_promised;
    tlsf_block *set_aside; /* the SET_ASIDE blocks, linked through next_free */
    uint64_t held_bytes;
    uint64_t allocate_failures;
    uint64_t bad_frees_ignored;
} tlsf_instance;

/* ---- headers --------------------------------------------------------------------------------- */

static size_t tlsf_size(const tlsf_block *block)
{
    return (size_t)(block->word & TLSF_SIZE_MASK);
}

static void tlsf_set_size(tlsf_block *block, size_t size)
{
    block->word = (block->word & ~TLSF_SIZE_MASK) | (uint64_t)size;
}

static unsigned tlsf_tag(const tlsf_block *block)
{
    return (unsigned)(block->word >> TLSF_TAG_SHIFT);
}

static bool tlsf_has(const tlsf_block *block, unsigned flag)
{
    return (block->word & flag) != 0;
}

static tlsf_block *tlsf_next(const tlsf_block *block)
{
    return (tlsf_block *)((uintptr_t)block + TLSF_HEADER_BYTES + tlsf_size(block));
}

static uintptr_t tlsf_payload(const tlsf_block *block)
{
    return (uintptr_t)block + TLSF_HEADER_BYTES;
}

static __attribute__((format(printf, 3, 4))) NTSTATUS tlsf_why(char *why, size_t why_bytes, const char *fmt, ...)
{
    if (why != NULL && why_bytes > 0) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(why, why_bytes, fmt, args);
        va_end(args);
    }
    return STATUS_DATA_ERROR;
}

/* ---- size classes ---------------------------------------------------------------------------- */

/* The list a free block of this payload size lives in. */
static void tlsf_mapping_insert(size_t size, unsigned *fl, unsigned *sl)
{
    if (size < TLSF_SMALL_BYTES) {
        *fl = 0;
        *sl = (unsigned)(size >> TLSF_ALIGN_LOG2);
        return;
    }
    unsigned top = ks_floor_log2(size);
    *sl = (unsigned)(size >> (top - TLSF_SL_LOG2)) ^ TLSF_SL_COUNT;
    *fl = top - (TLSF_FL_SHIFT - 1u);
}

/* The first list whose every block holds size bytes: size rounded up to the start of the next
 * range unless it starts one. False when no list is that large. */
static bool tlsf_mapping_search(size_t size, unsigned *fl, unsigned *sl)
{
    if (size >= TLSF_SMALL_BYTES)
        size += ((size_t)1 << (ks_floor_log2(size) - TLSF_SL_LOG2)) - 1;
    tlsf_mapping_insert(size, fl, sl);
    return *fl < TLSF_FL_COUNT;
}

/* The head of the first non-empty list at or after (fl, sl) in size order, or NULL. */
static tlsf_block *tlsf_find(const tlsf_control *control, unsigned *fl, unsigned *sl)
{
    uint32_t sl_map = control->sl_bitmap[*fl] & (~0u << *sl);
    if (sl_map == 0) {
        uint32_t fl_map = *fl + 1u < TLSF_FL_COUNT ? control->fl_bitmap & (~0u << (*fl + 1u)) : 0u;
        if (fl_map == 0)
            return NULL;
        *fl = (unsigned)__builtin_ctz(fl_map);
        sl_map = control->sl_bitmap[*fl];
    }
    *sl = (unsigned)__builtin_ctz(sl_map);
    return control->heads[*fl][*sl];
}

/* ---- free lists ------------------------------------------------------------------------------ */

/* The first block of list (fl, sl), or NULL when the list is empty (its head is then undefined). */
static tlsf_block *tlsf_list_head(const tlsf_control *control, unsigned fl, unsigned sl)
{
    return (control->sl_bitmap[fl] >> sl) & 1u ? control->heads[fl][sl] : NULL;
}

static void tlsf_insert_free(tlsf_control *control, tlsf_block *block)
{
    unsigned fl, sl;
    tlsf_mapping_insert(tlsf_size(block), &fl, &sl);
    block->prev_free = NULL;
    block->next_free = tlsf_list_head(control, fl, sl);
    if (block->next_free != NULL)
        block->next_free->prev_free = block;
    control->heads[fl][sl] = block;
    control->fl_bitmap |= 1u << fl;
    control->sl_bitmap[fl] |= 1u << sl;
    control->free_bytes += tlsf_size(block);
    control->free_blocks++;
}

static void tlsf_remove_free(tlsf_control *control, tlsf_block *block)
{
    unsigned fl, sl;
    tlsf_mapping_insert(tlsf_size(block), &fl, &sl);
    if (block->prev_free != NULL)
        block->prev_free->next_free = block->next_free;
    else
        control->heads[fl][sl] = block->next_free;
    if (block->next_free != NULL)
        block->next_free->prev_free = block->prev_free;
    if (control->heads[fl][sl] == NULL) {
        control->sl_bitmap[fl] &= ~(1u << sl);
        if (control->sl_bitmap[fl] == 0)
            control->fl_bitmap &= ~(1u << fl);
    }
    control->free_bytes -= tlsf_size(block);
    control->free_blocks--;
}

/* Marks a free block free in its own header and its successor's, and lists it. */
static void tlsf_make_free(tlsf_control *control, tlsf_block *block)
{
    tlsf_block *next = tlsf_next(block);
    block->word = (block->word & (TLSF_SIZE_MASK | TLSF_PREV_FREE)) | TLSF_FREE; /* tag 0 */
    next->prev_phys = block;
    next->word |= TLSF_PREV_FREE;
    tlsf_insert_free(control, block);
}

/* ---- blocks ---------------------------------------------------------------------------------- */

/* A just-unlisted free block becomes used. Its predecessor is used: free blocks never touch. */
static void tlsf_make_used(tlsf_block *block)
{
    block->word &= ~(uint64_t)TLSF_FREE;
    tlsf_next(block)->word &= ~(uint64_t)TLSF_PREV_FREE;
}

/* Bytes from a block's payload to the first align-aligned address that leaves room for a free
 * block before it: 0 or >= TLSF_MIN_BLOCK_BYTES, so at most align + 16. */
static size_t tlsf_gap_bytes(const tlsf_block *block, size_t align_bytes)
{
    uintptr_t payload = tlsf_payload(block), mask = (uintptr_t)align_bytes - 1;
    uintptr_t aligned = (payload + mask) & ~mask;
    if (aligned != payload && aligned - payload < TLSF_MIN_BLOCK_BYTES)
        aligned = (payload + TLSF_MIN_BLOCK_BYTES + mask) & ~mask;
    return aligned - payload;
}

static bool tlsf_fits(const tlsf_block *block, size_t size, size_t align_bytes)
{
    size_t gap_bytes = tlsf_gap_bytes(block, align_bytes);
    return gap_bytes <= tlsf_size(block) && tlsf_size(block) - gap_bytes >= size;
}

/* Splits the gap before the aligned payload (tlsf_gap_bytes) in a used block off as a free block,
 * and returns the block that starts after it. */
static tlsf_block *tlsf_trim_leading(tlsf_control *control, tlsf_block *block, size_t align_bytes)
{
    size_t gap_bytes = tlsf_gap_bytes(block, align_bytes);
    if (gap_bytes == 0)
        return block;
    uintptr_t aligned = tlsf_payload(block) + gap_bytes;
    tlsf_block *rest = (tlsf_block *)(aligned - TLSF_HEADER_BYTES);
    rest->prev_phys = block;
    rest->word = (uint64_t)(tlsf_size(block) - gap_bytes);
    tlsf_next(rest)->prev_phys = rest;
    tlsf_set_size(block, gap_bytes - TLSF_HEADER_BYTES);
    tlsf_make_free(control, block); /* sets PREV_FREE in rest */
    return rest;
}

/* Splits whatever a used block has beyond size bytes off as a free block, if a block fits. */
static void tlsf_trim_trailing(tlsf_control *control, tlsf_block *block, size_t size)
{
    size_t have = tlsf_size(block);
    if (have - size < TLSF_MIN_BLOCK_BYTES)
        return;
    tlsf_block *rest = (tlsf_block *)(tlsf_payload(block) + size);
    rest->prev_phys = block;
    rest->word = (uint64_t)(have - size - TLSF_HEADER_BYTES);
    tlsf_set_size(block, size);
    tlsf_make_free(control, rest);
}

/* Good fit: the head of the first non-empty list whose every block holds search_bytes. */
static tlsf_block *tlsf_find_good_fit(const tlsf_control *control, size_t search_bytes)
{
    unsigned fl, sl;
    if (!tlsf_mapping_search(search_bytes, &fl, &sl))
        return NULL;
    return tlsf_find(control, &fl, &sl);
}

/* The second chance: good fit rounds the request up to the next range, so a free block of
 * exactly the frame's size (what a freed frame of the same framing leaves) sits one list below
 * where it looks. Tries the first few blocks of that list; a constant bound keeps Allocate O(1). */
static tlsf_block *tlsf_find_exact_fit(const tlsf_control *control, size_t size, size_t align_bytes)
{
    unsigned fl, sl;
    tlsf_mapping_insert(size, &fl, &sl);
    if (fl >= TLSF_FL_COUNT)
        return NULL;
    tlsf_block *block = tlsf_list_head(control, fl, sl);
    for (unsigned tried = 0; block != NULL && tried < TLSF_EXACT_FIT_TRIES; tried++, block = block->next_free)
        if (tlsf_fits(block, size, align_bytes))
            return block;
    return NULL;
}

/* A used block with a payload of at least size bytes aligned to align_bytes, or NULL; the caller
 * sets its tag. Good fit searches for size + pad_bytes: pad_bytes = align + 16 covers any gap, 0
 * is for a private region whose free blocks all start aligned. */
static tlsf_block *tlsf_take(tlsf_control *control, size_t size, size_t align_bytes, size_t pad_bytes)
{
    tlsf_block *block = tlsf_find_good_fit(control, size + pad_bytes);
    if (block == NULL || !tlsf_fits(block, size, align_bytes))
        block = tlsf_find_exact_fit(control, size, align_bytes);
    if (block == NULL)
        return NULL;
    tlsf_remove_free(control, block);
    tlsf_make_used(block);
    if (align_bytes > TLSF_ALIGN_BYTES)
        block = tlsf_trim_leading(control, block, align_bytes);
    tlsf_trim_trailing(control, block, size);
    return block;
}

/* Frees a used block, merging it with free neighbours. Returns the free block that contains it. */
static tlsf_block *tlsf_give(tlsf_control *control, tlsf_block *block)
{
    if (tlsf_has(block, TLSF_PREV_FREE)) {
        tlsf_block *prev = block->prev_phys;
        tlsf_remove_free(control, prev);
        tlsf_set_size(prev, tlsf_size(prev) + TLSF_HEADER_BYTES + tlsf_size(block));
        block = prev;
    }
    tlsf_block *next = tlsf_next(block);
    if (tlsf_has(next, TLSF_FREE)) {
        tlsf_remove_free(control, next);
        tlsf_set_size(block, tlsf_size(block) + TLSF_HEADER_BYTES + tlsf_size(next));
    }
    tlsf_make_free(control, block);
    return block;
}

/* ---- a control block over a region ------------------------------------------------------------ */

/* One free block over [base, base + bytes) and a sentinel at its end. */
static NTSTATUS tlsf_control_create(void *base, size_t bytes, tlsf_control **control_out)
{
    uintptr_t lo = ((uintptr_t)base + TLSF_ALIGN_BYTES - 1) & ~(uintptr_t)(TLSF_ALIGN_BYTES - 1);
    uintptr_t hi = ((uintptr_t)base + bytes) & ~(uintptr_t)(TLSF_ALIGN_BYTES - 1);
    if (hi <= lo || hi - lo < TLSF_MIN_BLOCK_BYTES + TLSF_HEADER_BYTES || hi - lo > (1ull << TLSF_MAX_REGION_LOG2))
        return STATUS_INSUFFICIENT_RESOURCES;
    /* From the region cache rather than the heap: 8 KiB, mostly list heads, that an instance
     * created per fuzz input would otherwise take fresh (a page fault or two) each time. */
    tlsf_control *control = ks_region_map_aligned(sizeof *control, _Alignof(tlsf_control));
    if (control == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    memset(control, 0, offsetof(tlsf_control, heads)); /* the heads are written as lists appear */
    if (pthread_mutex_init(&control->lock, NULL) != 0) {
        ks_region_unmap(control, sizeof *control);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    control->lo = lo;
    control->hi = hi;
    tlsf_block *first = (tlsf_block *)lo;
    tlsf_block *sentinel = (tlsf_block *)(hi - TLSF_HEADER_BYTES);
    first->prev_phys = NULL;
    first->word = (uint64_t)(hi - lo - 2 * TLSF_HEADER_BYTES);
    sentinel->prev_phys = first;
    sentinel->word = 0;
    tlsf_make_free(control, first);
    *control_out = control;
    return STATUS_SUCCESS;
}

static void tlsf_control_destroy(tlsf_control *control)
{
    pthread_mutex_destroy(&control->lock);
    if (control->own_mapping != NULL)
        ks_region_unmap(control->own_mapping, control->own_mapping_bytes);
    ks_region_unmap(control, sizeof *control);
}

/* ks_heap callbacks: one control block over the heap's region, shared by every tlsf pin on it. */
static NTSTATUS tlsf_heap_create(ks_heap *heap, void *arg, void **state)
{
    (void)arg;
    if (heap->base == NULL)
        return STATUS_INVALID_PARAMETER;
    tlsf_control *created = NULL;
    NTSTATUS status = tlsf_control_create(heap->base, heap->size_bytes, &created);
    *state = created;
    return status;
}

static void tlsf_heap_destroy(ks_heap *heap, void *state)
{
    (void)heap;
    tlsf_control_destroy(state);
}

/* ---- instances ------------------------------------------------------------------------------- */

static const ks_framing_rules tlsf_framing_rules = {
    .default_frames = TLSF_DEFAULT_FRAMES,
    .default_frame_bytes = TLSF_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = TLSF_MAX_FRAME_BYTES,
    .max_align_bytes = TLSF_MAX_ALIGN_BYTES,
    .min_align_bytes = TLSF_ALIGN_BYTES, /* every payload is 16-aligned anyway */
};

/* Defaults written back, limits checked, the instance's payload size, alignment and search pad
 * set. A private instance rounds its payload so that header + payload is a multiple of the
 * alignment: its frames then tile the region from an aligned first payload, every free block
 * starts aligned, and good fit needs no pad for the gap. */
static NTSTATUS tlsf_choose_framing(tlsf_instance *instance, KSALLOCATOR_FRAMING *framing, bool shared)
{
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &tlsf_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    ks_framing_write_back(framing, &settled);
    size_t align_bytes = settled.align_bytes;
    size_t payload_bytes = (settled.frame_bytes + TLSF_ALIGN_BYTES - 1) & ~(TLSF_ALIGN_BYTES - 1);
    if (payload_bytes < TLSF_MIN_PAYLOAD_BYTES)
        payload_bytes = TLSF_MIN_PAYLOAD_BYTES;
    if (!shared)
        payload_bytes =
            ((payload_bytes + TLSF_HEADER_BYTES + align_bytes - 1) & ~(align_bytes - 1)) - TLSF_HEADER_BYTES;
    instance->payload_bytes = payload_bytes;
    instance->align_bytes = align_bytes;
    instance->pad_bytes = shared && align_bytes > TLSF_ALIGN_BYTES ? align_bytes + TLSF_HEADER_BYTES : 0;
    instance->slot_bytes = (TLSF_HEADER_BYTES + payload_bytes + align_bytes - 1) & ~(align_bytes - 1);
    instance->framing = *framing;
    return STATUS_SUCCESS;
}

/*
 * A private region tiled with slots of header + payload bytes (a multiple of the alignment), the
 * first payload aligned: lead bytes, then at least Frames slots, then the sentinel. Every frame
 * takes exactly one slot (what is left of a free block after a frame is whole slots, >= 32
 * bytes or nothing), so every free block is a run of slots starting aligned: one slot is found
 * by the exact-fit second chance (its list holds nothing else), two or more by good fit. While
 * fewer than Frames frames are live a slot is free, so Allocate cannot fail: the pin is served
 * its Frames without setting any aside.
 */
static NTSTATUS tlsf_open_private(tlsf_instance *instance)
{
    uint64_t slot_bytes = TLSF_HEADER_BYTES + instance->payload_bytes;
    uint64_t lead_bytes = instance->align_bytes - TLSF_HEADER_BYTES;
    uint64_t need_bytes = lead_bytes + instance->framing.Frames * slot_bytes + TLSF_HEADER_BYTES;
    if (need_bytes > (1ull << TLSF_MAX_REGION_LOG2))
        return STATUS_INVALID_PARAMETER; /* Frames x frame over the 1 TiB region limit */
    size_t page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    size_t region_bytes = (size_t)((need_bytes + page_bytes - 1) & ~((uint64_t)page_bytes - 1));
    size_t map_align_bytes = instance->align_bytes > page_bytes ? instance->align_bytes : page_bytes;
    uint8_t *region = ks_region_map_aligned(region_bytes, map_align_bytes);
    if (region == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    uint64_t slots = (region_bytes - lead_bytes - TLSF_HEADER_BYTES) / slot_bytes;
    NTSTATUS status =
        tlsf_control_create(region + lead_bytes, slots * slot_bytes + TLSF_HEADER_BYTES, &instance->control);
    if (!NT_SUCCESS(status)) {
        ks_region_unmap(region, region_bytes);
        return status;
    }
    instance->control->own_mapping = region;
    instance->control->own_mapping_bytes = region_bytes;
    ks_region_tag_take(&instance->control->tags, &instance->tag);
    return STATUS_SUCCESS;
}

/* Joins (or creates) the heap's shared control block and takes a tag in it. */
static NTSTATUS tlsf_join_heap(tlsf_instance *instance, ks_heap *heap)
{
    void *shared = NULL;
    NTSTATUS status = heap->attach(heap, TLSF_FAMILY, tlsf_heap_create, NULL, &shared);
    if (!NT_SUCCESS(status))
        return status;
    tlsf_control *control = shared;
    pthread_mutex_lock(&control->lock);
    bool tagged = ks_region_tag_take(&control->tags, &instance->tag);
    pthread_mutex_unlock(&control->lock);
    if (!tagged) {
        heap->detach(heap, TLSF_FAMILY, tlsf_heap_destroy);
        return STATUS_INSUFFICIENT_RESOURCES; /* 255 instances already share this heap */
    }
    instance->control = control;
    instance->heap = heap;
    return STATUS_SUCCESS;
}

typedef tlsf_block *(*tlsf_visit_fn)(void *arg, tlsf_block *block);
static NTSTATUS tlsf_walk(tlsf_control *control, tlsf_visit_fn visit, void *arg, char *why, size_t why_bytes);

/* Delete walk on a shared heap: gives back each block with the instance's tag, and goes on after
 * the free block it merged into (which may reach past free blocks ahead). */
static tlsf_block *tlsf_release_owned_visit(void *arg, tlsf_block *block)
{
    tlsf_instance *instance = arg;
    if (tlsf_has(block, TLSF_FREE) || tlsf_tag(block) != instance->tag)
        return tlsf_next(block);
    return tlsf_next(tlsf_give(instance->control, block));
}

static void tlsf_close(tlsf_instance *instance)
{
    tlsf_control *control = instance->control;
    if (instance->heap == NULL) {
        tlsf_control_destroy(control); /* unmaps the region, live frames and all */
        return;
    }
    pthread_mutex_lock(&control->lock);
    if (instance->frames_live + instance->frames_set_aside > 0)
        tlsf_walk(control, tlsf_release_owned_visit, instance, NULL, 0);
    ks_region_tag_give_back(&control->tags, instance->tag);
    pthread_mutex_unlock(&control->lock);
    instance->heap->detach(instance->heap, TLSF_FAMILY, tlsf_heap_destroy);
}

/* A used block (from tlsf_take) becomes the instance's: tagged, counted in held_bytes. */
static tlsf_block *tlsf_own(tlsf_instance *instance, tlsf_block *block)
{
    if (block != NULL) {
        block->word = (block->word & (TLSF_SIZE_MASK | TLSF_PREV_FREE)) | (uint64_t)instance->tag << TLSF_TAG_SHIFT;
        instance->held_bytes += TLSF_HEADER_BYTES + tlsf_size(block);
    }
    return block;
}

/* A block of this instance's size and alignment, tagged as its own, or NULL. */
static tlsf_block *tlsf_take_own(tlsf_instance *instance)
{
    return tlsf_own(instance,
                    tlsf_take(instance->control, instance->payload_bytes, instance->align_bytes, instance->pad_bytes));
}

/*
 * The frames a set-aside block holds. A frame (given back by Free, or taken alone) holds one: its
 * header + payload is under two slots (a payload is at most payload_bytes + 16, a slot at least
 * 16 + payload_bytes >= 32). A run -- a block of two or more whole slots, its payload aligned,
 * reserved at InitializeAllocator -- holds one frame per slot; Allocate carves them off its front.
 */
static uint64_t tlsf_set_aside_frames(const tlsf_instance *instance, const tlsf_block *block)
{
    uint64_t block_bytes = TLSF_HEADER_BYTES + tlsf_size(block);
    return block_bytes >= 2 * (uint64_t)instance->slot_bytes ? block_bytes / instance->slot_bytes : 1u;
}

static void tlsf_set_aside_push(tlsf_instance *instance, tlsf_block *block)
{
    block->word |= TLSF_SET_ASIDE;
    block->next_free = instance->set_aside;
    instance->set_aside = block;
    instance->frames_set_aside += tlsf_set_aside_frames(instance, block);
}

/* The head of the set-aside list, as a frame (still flagged SET_ASIDE). A run gives its first slot:
 * the rest, still a set-aside block (a run or one frame), takes its place in the list. O(1). */
static tlsf_block *tlsf_set_aside_pop(tlsf_instance *instance)
{
    tlsf_block *block = instance->set_aside;
    if (tlsf_set_aside_frames(instance, block) == 1) {
        instance->set_aside = block->next_free;
    } else {
        tlsf_block *rest = (tlsf_block *)((uintptr_t)block + instance->slot_bytes);
        rest->prev_phys = block;
        rest->word = (uint64_t)(tlsf_size(block) - instance->slot_bytes) | TLSF_SET_ASIDE |
                     (uint64_t)instance->tag << TLSF_TAG_SHIFT;
        tlsf_next(rest)->prev_phys = rest;
        rest->next_free = block->next_free;
        instance->set_aside = rest;
        tlsf_set_size(block, instance->slot_bytes - TLSF_HEADER_BYTES);
    }
    instance->frames_set_aside--;
    return block;
}

/*
 * MUST_ALLOCATE on a shared heap: reserve Frames frames now, so that other pins cannot take them.
 * As runs (tlsf_set_aside_frames): one run of Frames slots when the heap has a free block that
 * large, halving the run while it has not, and single frames taken as Allocate takes them when
 * not even two slots are left in one piece. One header per run is written here; the heap's pages
 * are touched as Allocate carves frames, not all at InitializeAllocator. A slot is never more
 * than the space a frame takes alone, and a failed take changes nothing, so this fails only where
 * taking the frames one by one would run out too.
 */
static NTSTATUS tlsf_fill_set_aside(tlsf_instance *instance)
{
    tlsf_control *control = instance->control;
    NTSTATUS status = STATUS_SUCCESS;
    pthread_mutex_lock(&control->lock);
    instance->frames_promised = instance->framing.Frames;
    uint64_t run_frames = (control->hi - control->lo) / instance->slot_bytes; /* no run is larger */
    while (instance->frames_set_aside < instance->frames_promised) {
        uint64_t owed = instance->frames_promised - instance->frames_set_aside;
        if (run_frames > owed)
            run_frames = owed;
        tlsf_block *block = NULL;
        if (run_frames >= 2) {
            block = tlsf_take(control, run_frames * instance->slot_bytes - TLSF_HEADER_BYTES, instance->align_bytes,
                              instance->pad_bytes);
            if (block == NULL) {
                run_frames /= 2; /* and never larger again: the free blocks only shrink from here */
                continue;
            }
            tlsf_own(instance, block);
        } else {
            block = tlsf_take_own(instance);
            if (block == NULL) {
                status = STATUS_INSUFFICIENT_RESOURCES;
                break;
            }
        }
        tlsf_set_aside_push(instance, block);
    }
    pthread_mutex_unlock(&control->lock);
    return status;
}

static NTSTATUS tlsf_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    const KSPIN *pin = initial_context;
    if (pin == NULL || framing == NULL || context == NULL)
        return STATUS_INVALID_PARAMETER;
    if (pin->abi_version != KSALLOC_ABI_VERSION)
        return STATUS_REVISION_MISMATCH;
    tlsf_instance *instance = calloc(1, sizeof *instance);
    if (instance == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    KSALLOCATOR_FRAMING chosen = *framing;
    NTSTATUS status = tlsf_choose_framing(instance, &chosen, pin->heap != NULL);
    if (NT_SUCCESS(status)) {
        snprintf(instance->pin_name, sizeof instance->pin_name, "%s", pin->name != NULL ? pin->name : "?");
        status = pin->heap != NULL ? tlsf_join_heap(instance, pin->heap) : tlsf_open_private(instance);
        if (NT_SUCCESS(status) && pin->heap != NULL &&
            (chosen.RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE)) {
            status = tlsf_fill_set_aside(instance);
            if (!NT_SUCCESS(status))
                tlsf_close(instance);
        }
    }
    if (!NT_SUCCESS(status)) {
        free(instance);
        return status;
    }
    *framing = chosen;
    *context = instance;
    return STATUS_SUCCESS;
}

static void tlsf_delete(PVOID context)
{
    tlsf_instance *instance = context;
    if (instance == NULL)
        return;
    tlsf_close(instance);
    free(instance);
}

static PVOID tlsf_allocate(PVOID context)
{
    tlsf_instance *instance = context;
    tlsf_control *control = instance->control;
    pthread_mutex_lock(&control->lock);
    tlsf_block *block = NULL;
    if (instance->set_aside != NULL) {
        block = tlsf_set_aside_pop(instance);
        block->word &= ~(uint64_t)TLSF_SET_ASIDE;
    } else {
        block = tlsf_take_own(instance);
    }
    if (block != NULL)
        instance->frames_live++;
    else
        instance->allocate_failures++;
    pthread_mutex_unlock(&control->lock);
    return block != NULL ? (PVOID)tlsf_payload(block) : NULL;
}

/* The block of a frame this instance holds live, or NULL. Always: the frame is inside the region,
 * its header is used, not set aside, has this tag and room for a frame, and the next header
 * points back to it. Debug builds also check the previous block points forward to it. */
static tlsf_block *tlsf_owned_live(const tlsf_instance *instance, uintptr_t addr)
{
    const tlsf_control *control = instance->control;
    if ((addr & (TLSF_ALIGN_BYTES - 1)) != 0 || addr < control->lo + TLSF_HEADER_BYTES ||
        addr >= control->hi - TLSF_HEADER_BYTES)
        return NULL;
    tlsf_block *block = (tlsf_block *)(addr - TLSF_HEADER_BYTES);
    if ((block->word & (TLSF_FREE | TLSF_SET_ASIDE)) != 0 || tlsf_tag(block) != instance->tag ||
        tlsf_size(block) < instance->payload_bytes || tlsf_size(block) > control->hi - TLSF_HEADER_BYTES - addr ||
        tlsf_next(block)->prev_phys != block)
        return NULL;
#if KS_DEBUG >= 1
    const tlsf_block *prev = block->prev_phys;
    if (prev == NULL ? (uintptr_t)block != control->lo
                     : (uintptr_t)prev < control->lo || (uintptr_t)prev >= (uintptr_t)block || tlsf_next(prev) != block)
        return NULL;
#endif
    return block;
}

static void tlsf_free(PVOID context, PVOID frame)
{
    tlsf_instance *instance = context;
    tlsf_control *control = instance->control;
    pthread_mutex_lock(&control->lock);
    tlsf_block *block = tlsf_owned_live(instance, (uintptr_t)frame);
    if (block == NULL) {
        instance->bad_frees_ignored++; /* not ours, not live: touching it could only do harm */
    } else {
        instance->frames_live--;
        if (instance->frames_live + instance->frames_set_aside < instance->frames_promised) {
            tlsf_set_aside_push(instance, block);
        } else {
            instance->held_bytes -= TLSF_HEADER_BYTES + tlsf_size(block);
            tlsf_give(control, block);
        }
    }
    pthread_mutex_unlock(&control->lock);
}

/* ---- walk, self-check, counters ---------------------------------------------------------------- */

/*
 * Visits every block from the first to the sentinel in address order, with the lock held, after
 * checking that its header is sane (size a multiple of 16, block inside the region). The visitor
 * returns the block where the walk goes on (tlsf_next(block), or further when it freed the block
 * and it merged with a free block ahead) or NULL to stop. Fails with a message when the headers
 * do not tile the region up to a sentinel at hi - 16.
 */
static NTSTATUS tlsf_walk(tlsf_control *control, tlsf_visit_fn visit, void *arg, char *why, size_t why_bytes)
{
    uintptr_t sentinel = control->hi - TLSF_HEADER_BYTES;
    uintptr_t pos = control->lo;
    while (pos != sentinel) {
        tlsf_block *block = (tlsf_block *)pos;
        size_t size = tlsf_size(block);
        if (size < TLSF_MIN_PAYLOAD_BYTES || size > sentinel - pos - TLSF_HEADER_BYTES)
            return tlsf_why(why, why_bytes, "block 0x%" PRIxPTR ": payload of %zu bytes does not fit the region", pos,
                            size);
        tlsf_block *next = visit(arg, block);
        if (next == NULL)
            return STATUS_DATA_ERROR;
        if ((uintptr_t)next <= pos || (uintptr_t)next > sentinel)
            return tlsf_why(why, why_bytes, "walk from 0x%" PRIxPTR " went to 0x%" PRIxPTR, pos, (uintptr_t)next);
        pos = (uintptr_t)next;
    }
    const tlsf_block *end = (const tlsf_block *)sentinel;
    if (end->prev_phys == NULL || end->word != (tlsf_has(end->prev_phys, TLSF_FREE) ? TLSF_PREV_FREE : 0u))
        return tlsf_why(why, why_bytes, "sentinel 0x%" PRIxPTR " has word 0x%" PRIx64, sentinel, end->word);
    return STATUS_SUCCESS;
}

typedef struct tlsf_census {
    const tlsf_instance *instance;
    tlsf_control *control;
    uint64_t free_blocks;
    size_t free_bytes;
    uint64_t own_live;
    uint64_t own_set_aside;
    uint64_t own_bytes;
    char *why;
    size_t why_bytes;
} tlsf_census;

/* Boundary tags agree in both directions, no two free blocks touch, free blocks are untagged and
 * used ones belong to an instance that exists. Returns NULL (stop) after writing why. */
static tlsf_block *tlsf_census_visit(void *arg, tlsf_block *block)
{
    tlsf_census *census = arg;
    tlsf_block *next = tlsf_next(block);
    bool free_block = tlsf_has(block, TLSF_FREE);
    bool prev_free = block->prev_phys != NULL && tlsf_has(block->prev_phys, TLSF_FREE);
    bool own = !free_block && tlsf_tag(block) == census->instance->tag;
    bool own_run = own && tlsf_has(block, TLSF_SET_ASIDE) && tlsf_set_aside_frames(census->instance, block) > 1;
    const char *broken = NULL;
    if (next->prev_phys != block)
        broken = "the next block's prev_phys does not point back";
    else if ((uintptr_t)block == census->control->lo ? block->prev_phys != NULL : block->prev_phys == NULL)
        broken = "prev_phys is wrong for its place";
    else if (tlsf_has(block, TLSF_PREV_FREE) != prev_free)
        broken = "PREV_FREE disagrees with the previous block";
    else if (free_block && prev_free)
        broken = "free and its previous block free: not coalesced";
    else if (free_block ? (block->word >> TLSF_TAG_SHIFT) != 0 || tlsf_has(block, TLSF_SET_ASIDE)
                        : !ks_region_tag_in_use(&census->control->tags, tlsf_tag(block)))
        broken = free_block ? "free but tagged or set aside" : "used by a tag no instance has";
    else if (own_run && (tlsf_payload(block) & (census->instance->align_bytes - 1)) != 0)
        broken = "a set-aside run whose payload is not aligned: its frames would not be";
    if (broken != NULL) {
        tlsf_why(census->why, census->why_bytes, "block 0x%" PRIxPTR " (word 0x%" PRIx64 "): %s", (uintptr_t)block,
                 block->word, broken);
        return NULL;
    }
    if (free_block) {
        census->free_blocks++;
        census->free_bytes += tlsf_size(block);
    } else if (own) {
        census->own_set_aside += tlsf_has(block, TLSF_SET_ASIDE) ? tlsf_set_aside_frames(census->instance, block) : 0;
        census->own_live += !tlsf_has(block, TLSF_SET_ASIDE);
        census->own_bytes += TLSF_HEADER_BYTES + tlsf_size(block);
    }
    return next;
}

/* One list: free blocks of its range in the region, linked both ways. Counts them into *listed. */
static NTSTATUS tlsf_check_list(const tlsf_control *control, unsigned fl, unsigned sl, uint64_t limit,
                                uint64_t *listed, char *why, size_t why_bytes)
{
    const tlsf_block *prev = NULL;
    for (const tlsf_block *block = control->heads[fl][sl]; block != NULL; block = block->next_free) {
        uintptr_t addr = (uintptr_t)block;
        unsigned block_fl = TLSF_FL_COUNT, block_sl = TLSF_SL_COUNT;
        bool inside = addr >= control->lo && addr < control->hi - TLSF_HEADER_BYTES && addr % TLSF_ALIGN_BYTES == 0 &&
                      tlsf_size(block) <= control->hi - 2 * TLSF_HEADER_BYTES - addr;
        if (inside)
            tlsf_mapping_insert(tlsf_size(block), &block_fl, &block_sl);
        if (++*listed > limit || !inside || block->prev_free != prev || !tlsf_has(block, TLSF_FREE) ||
            block_fl != fl || block_sl != sl || tlsf_next(block)->prev_phys != block)
            return tlsf_why(why, why_bytes,
                            "list (%u,%u): 0x%" PRIxPTR " is not a free block of that range linked both ways "
                            "(or the lists hold more than the %" PRIu64 " free blocks)",
                            fl, sl, addr, limit);
        prev = block;
    }
    return STATUS_SUCCESS;
}

/* Every list the bitmaps name is non-empty and holds blocks of its own range only, and the lists
 * hold as many blocks as the walk found free, so every free block is in the list of its range: a
 * bit cleared while its list still held blocks leaves them out of the count. O(free blocks): only
 * the lists that exist are visited. */
static NTSTATUS tlsf_check_lists(const tlsf_control *control, const tlsf_census *census, char *why, size_t why_bytes)
{
    uint64_t listed = 0;
    for (unsigned fl = 0; fl < TLSF_FL_COUNT; fl++) {
        if (((control->fl_bitmap >> fl) & 1u) != (control->sl_bitmap[fl] != 0))
            return tlsf_why(why, why_bytes, "fl_bitmap bit %u disagrees with sl_bitmap[%u] = 0x%08x", fl, fl,
                            control->sl_bitmap[fl]);
        for (uint32_t lists = control->sl_bitmap[fl]; lists != 0; lists &= lists - 1) {
            unsigned sl = (unsigned)__builtin_ctz(lists);
            if (control->heads[fl][sl] == NULL)
                return tlsf_why(why, why_bytes, "sl_bitmap[%u] bit %u is set but its list is empty", fl, sl);
            NTSTATUS status = tlsf_check_list(control, fl, sl, census->free_blocks, &listed, why, why_bytes);
            if (!NT_SUCCESS(status))
                return status;
        }
    }
    if (listed != census->free_blocks || control->free_blocks != census->free_blocks ||
        control->free_bytes != census->free_bytes)
        return tlsf_why(why, why_bytes,
                        "lists hold %" PRIu64 " blocks, counters say %" PRIu64 " blocks / %zu bytes, the walk %" PRIu64
                        " / %zu",
                        listed, control->free_blocks, control->free_bytes, census->free_blocks, census->free_bytes);
    return STATUS_SUCCESS;
}

/* The instance's counters agree with the headers, its set-aside list holds its set-aside blocks. */
static NTSTATUS tlsf_check_instance(const tlsf_instance *instance, const tlsf_census *census, char *why,
                                    size_t why_bytes)
{
    if (census->own_live != instance->frames_live || census->own_set_aside != instance->frames_set_aside ||
        census->own_bytes != instance->held_bytes)
        return tlsf_why(why, why_bytes,
                        "pin '%s' tag %u counts %" PRIu64 " live + %" PRIu64 " set aside in %" PRIu64
                        " bytes, the headers %" PRIu64 " + %" PRIu64 " in %" PRIu64,
                        instance->pin_name, instance->tag, instance->frames_live, instance->frames_set_aside,
                        instance->held_bytes, census->own_live, census->own_set_aside, census->own_bytes);
    uint64_t listed = 0; /* frames */
    for (const tlsf_block *block = instance->set_aside; block != NULL; block = block->next_free) {
        uintptr_t addr = (uintptr_t)block;
        if (addr < instance->control->lo || addr >= instance->control->hi || !tlsf_has(block, TLSF_SET_ASIDE) ||
            tlsf_has(block, TLSF_FREE) || tlsf_tag(block) != instance->tag ||
            (listed += tlsf_set_aside_frames(instance, block)) > instance->frames_set_aside)
            return tlsf_why(why, why_bytes, "pin '%s': set-aside node 0x%" PRIxPTR " is not its set-aside block",
                            instance->pin_name, addr);
    }
    uint64_t promised = instance->frames_promised, live = instance->frames_live;
    uint64_t owed = promised > live ? promised - live : 0;
    if (listed != instance->frames_set_aside || instance->frames_set_aside != owed)
        return tlsf_why(why, why_bytes, "pin '%s' set aside: %" PRIu64 " listed, %" PRIu64 " counted, %" PRIu64
                        " owed",
                        instance->pin_name, listed, instance->frames_set_aside, owed);
    return STATUS_SUCCESS;
}

static NTSTATUS tlsf_self_check(PVOID context, char *why, size_t why_bytes)
{
    const tlsf_instance *instance = context;
    tlsf_control *control = instance->control;
    tlsf_census census = {.instance = instance, .control = control, .why = why, .why_bytes = why_bytes};
    pthread_mutex_lock(&control->lock);
    NTSTATUS status = tlsf_walk(control, tlsf_census_visit, &census, why, why_bytes);
    if (NT_SUCCESS(status))
        status = tlsf_check_lists(control, &census, why, why_bytes);
    if (NT_SUCCESS(status))
        status = tlsf_check_instance(instance, &census, why, why_bytes);
    pthread_mutex_unlock(&control->lock);
    return status;
}

/* The largest free payload: the largest block of the highest non-empty list. */
static size_t tlsf_largest_free_bytes(const tlsf_control *control)
{
    if (control->fl_bitmap == 0)
        return 0;
    unsigned fl = ks_floor_log2(control->fl_bitmap);
    unsigned sl = ks_floor_log2(control->sl_bitmap[fl]);
    size_t largest = 0;
    for (const tlsf_block *block = control->heads[fl][sl]; block != NULL; block = block->next_free)
        if (tlsf_size(block) > largest)
            largest = tlsf_size(block);
    return largest;
}

static size_t tlsf_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const tlsf_instance *instance = context;
    tlsf_control *control = instance->control;
    pthread_mutex_lock(&control->lock);
    const ks_counter all[] = {
        /* private: the region it mapped; shared: header + payload of the blocks it holds */
        {"reserved_bytes", instance->heap != NULL ? instance->held_bytes : (uint64_t)control->own_mapping_bytes},
        {"frames_live", instance->frames_live},
        {"free_bytes", control->free_bytes}, /* free payload bytes of the whole region */
        {"largest_free_bytes", tlsf_largest_free_bytes(control)},
        {"region_bytes", control->hi - control->lo},
        {"free_blocks", control->free_blocks},
        {"frames_set_aside", instance->frames_set_aside},
        {"control_bytes", sizeof *control},
        {"allocate_failures", instance->allocate_failures},
        {"bad_frees_ignored", instance->bad_frees_ignored},
    };
    pthread_mutex_unlock(&control->lock);
    size_t count = sizeof all / sizeof all[0];
    if (count > max_counters)
        count = max_counters;
    memcpy(out, all, count * sizeof *out);
    return count;
}

static const KSALLOCATOR_DISPATCH tlsf_dispatch = {
    .InitializeAllocator = tlsf_initialize,
    .DeleteAllocator = tlsf_delete,
    .Allocate = tlsf_allocate,
    .Free = tlsf_free,
};

extern const ks_allocator_entry ks_allocator_tlsf;
const ks_allocator_entry ks_allocator_tlsf = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "tlsf",
    .description = "Two-Level Segregated Fit over one region (private or a shared heap): O(1), any size and alignment",
    .caps = KS_CAP_THREAD_SAFE | KS_CAP_SHARED_HEAP | KS_CAP_ANY_SIZE,
    .max_frame_bytes = TLSF_MAX_FRAME_BYTES,
    .max_align_bytes = TLSF_MAX_ALIGN_BYTES,
    .dispatch = &tlsf_dispatch,
    .self_check = tlsf_self_check,
    .counters = tlsf_counters,
};
