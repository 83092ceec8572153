/*
 * buddy.c -- "buddy": a binary buddy allocator over one contiguous region.
 *
 * Design. The region [lo, hi) is cut into power-of-two blocks aligned to their size as absolute
 * addresses (not merely relative to lo), so a block of order k is 2^k-aligned, its buddy is
 * addr ^ 2^k, and a frame's alignment comes with its block: a pin's block is the smallest
 * 2^k >= max(FrameSize, FileAlignment + 1, min block). A region that is not one aligned power of
 * two is seeded greedily with the largest aligned block that fits at each position (as Linux
 * hands memblock ranges to its buddy), which leaves no two free buddies apart. The free blocks of
 * each order sit in two slots in the control block and, beyond those, on a list doubly linked
 * through the free blocks themselves; two bitmaps (orders with a slotted block, orders with a
 * non-empty list) find the smallest free block >= the request with one count-trailing-zeros. The
 * slots are what keeps the region untouched until it is used: seeding fills them (at most one
 * block of an order on either side of the largest), a split leaves one free half per order it
 * passes, and in the common case of few free blocks per order nothing is written into a free
 * block -- a heap just mapped costs no page fault for the blocks seeded or split, only for the
 * frames handed out (measured: a fifth of fuzz_alloc_buddy's time was such faults). A map with
 * one 16-bit entry per min block records, at each block's first entry, the block's order, whether it is
 * free, live or set aside, and the tag of the instance that owns it. Free reads the order there
 * rather than trusting the caller, and the same entry refuses, in O(1) and in every build, a
 * frame that is not the head of a live block of this instance (already free, set aside, inside a
 * block, another instance's); coalescing asks the map whether the buddy is a free block of the
 * same order.
 *
 * Private or shared. A pin without a heap gets its own mmap'd region of Frames blocks (rounded
 * up to pages) whose min block is its own block, aligned to its size so that it is one block
 * when Frames is a power of two. All buddy pins on one ks_heap share one buddy over the heap's
 * region, min block 64 bytes (more for huge heaps, so the map stays under 4 Mi entries), created
 * by the first heap->attach("buddy") and destroyed by the last detach. Each instance takes a tag
 * (1..255 per buddy), so a Free of another instance's frame is refused (and counted), and
 * DeleteAllocator finds the instance's frames still live and gives them back.
 *
 * Capacity. A private instance always serves Frames frames: its region is Frames blocks of its
 * one order, so free memory is always made of whole blocks. On a shared heap other pins may take
 * everything, so the entry does not claim KS_CAP_GUARANTEED. A pin that asks for MUST_ALLOCATE on
 * a shared heap keeps frames_promised - frames_live frames set aside (taken at
 * InitializeAllocator, which fails with STATUS_INSUFFICIENT_RESOURCES if the heap cannot supply
 * them, and refilled by Free), so its own promise holds whatever the other pins do. They are
 * taken as one block of 2^j frames per bit j of Frames (smaller where the heap has no block that
 * large), held like free blocks in a slot per order, and split as Allocate hands frames out, so
 * that a promise of many frames does not touch them all at InitializeAllocator.
 *
 * Complexity. Allocate: O(1) to find the list, O(log(region / block)) splits. Free: O(1) to find
 * and check the block, O(log(region / block)) merges. DeleteAllocator: O(1) for a private
 * instance, O(blocks) on a shared heap (a walk from block head to block head for the
 * instance's blocks). self_check: the same walk, O(blocks), plus a read of every map entry, for
 * a stale one inside a block -- one memcmp per block, the whole map at the speed of memory.
 *
 * Memory overhead. Up to 2x internal fragmentation (a frame is rounded up to a power of two);
 * 2 bytes of map per min block (1/32 of a shared region at 64-byte min blocks, 2 bytes per frame
 * privately); about 1.7 KiB of control per buddy (1 KiB of it the slots) and 470 bytes per
 * instance; nothing inside live frames. A map of a page or more comes from the region cache.
 *
 * Thread safety. Each buddy, shared or private, has one mutex taken by every operation, so an
 * instance may be called from many threads at once (KS_CAP_THREAD_SAFE). Pins on one heap contend
 * for that mutex; the heap's own lock is taken only in InitializeAllocator and DeleteAllocator.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "framing.h"
#include "ksalloc.h"
#include "region.h"

#define BUDDY_FAMILY "buddy"
#define BUDDY_DEFAULT_FRAMES 64u
#define BUDDY_DEFAULT_FRAME_BYTES 4096u
/* 64 bytes: room for a free-list node, and one cache line so frames never share one. */
#define BUDDY_MIN_ORDER 6u
/* 1 TiB, the largest heap ks_heap_create makes and the largest block or private region. */
#define BUDDY_MAX_ORDER 40u
/* Limits, the catalogue's common ones: FrameSize up to 256 MiB, alignment up to 1 MiB. */
#define BUDDY_MAX_FRAME_ORDER 28u
#define BUDDY_MAX_ALIGN_ORDER 20u
/* A shared buddy's map has at most 2^22 entries (8 MiB); larger heaps get larger min blocks. */
#define BUDDY_MAP_ENTRIES_LOG2 22u
/* Private regions are aligned to their own size up to this, so small ones are a single block. */
#define BUDDY_PRIVATE_ALIGN_MAX_ORDER 30u
#define BUDDY_ORDER_COUNT 64u
#define BUDDY_TAG_COUNT KS_REGION_TAG_COUNT /* tag 0 marks free blocks; instances get 1..255 */
/* Free blocks of each order kept in the buddy's control, not linked through themselves (see the
 * design note): two, because seeding makes at most one block of an order on either side of its
 * largest, and a split leaves one free half of each order it passes. */
#define BUDDY_SLOTS_PER_ORDER 2u

/* Map entry: bits 0-5 order, 6-7 kind, 8-15 owner tag. Entries inside a block are 0. */
typedef uint16_t buddy_entry;
enum buddy_kind { BUDDY_INTERIOR = 0, BUDDY_FREE = 1, BUDDY_LIVE = 2, BUDDY_SET_ASIDE = 3 };
#define BUDDY_ENTRY_ORDER_MASK 0x3Fu
#define BUDDY_ENTRY_KIND_SHIFT 6u
#define BUDDY_ENTRY_TAG_SHIFT 8u

_Static_assert(sizeof(uintptr_t) == 8, "absolute block alignment up to 2^40 needs 64-bit addresses");
_Static_assert(BUDDY_MAX_ORDER <= BUDDY_ENTRY_ORDER_MASK, "an order must fit the entry's order field");
_Static_assert(BUDDY_MAX_ORDER < BUDDY_ORDER_COUNT, "free_lists is indexed by order");
_Static_assert(BUDDY_ORDER_COUNT == 64, "nonempty_orders is one uint64_t, one bit per order");
_Static_assert((BUDDY_TAG_COUNT - 1) << BUDDY_ENTRY_TAG_SHIFT <= UINT16_MAX, "a tag must fit the entry");
_Static_assert(BUDDY_MAX_FRAME_ORDER <= BUDDY_MAX_ORDER && BUDDY_MAX_ALIGN_ORDER <= BUDDY_MAX_FRAME_ORDER,
               "a frame's block is a block");
_Static_assert((1ull << BUDDY_MAX_FRAME_ORDER) <= UINT32_MAX, "FrameSize (a ULONG) may reach the limit");

/* Lives in the first bytes of every free block. */
typedef struct buddy_free_node {
    struct buddy_free_node *next;
    struct buddy_free_node *prev;
} buddy_free_node;
_Static_assert(sizeof(buddy_free_node) <= (1u << BUDDY_MIN_ORDER), "a free node must fit the smallest block");

/* One buddy: a private instance's own, or the one all buddy pins on a heap share. */
typedef struct buddy_state {
    pthread_mutex_t lock; /* guards everything below and the instances' counters */
    uintptr_t lo;         /* region, min-block aligned */
    uintptr_t hi;
    unsigned min_order;
    unsigned top_order; /* largest order the seeding made: the largest block there can be */
    /* The free blocks of order k: up to two in slots[k] (0 for an empty slot), the rest on
     * free_lists[k]. Invariants: bit k of slotted_orders iff a slot of order k holds a block; bit
     * k of nonempty_orders iff free_lists[k] != NULL; free_bytes = sum of free block sizes. */
    uint64_t slotted_orders;
    uintptr_t slots[BUDDY_ORDER_COUNT][BUDDY_SLOTS_PER_ORDER];
    uint64_t nonempty_orders;
    buddy_free_node *free_lists[BUDDY_ORDER_COUNT];
    size_t free_bytes;
    buddy_entry *map; /* (hi - lo) >> min_order entries */
    size_t map_entries;
    ks_region_tags tags;
    void *own_mapping; /* a private region this buddy unmaps when destroyed; NULL on a heap */
    size_t own_mapping_bytes;
} buddy_state;

typedef struct buddy_instance {
    buddy_state *state;
    ks_heap *heap; /* NULL: state is this instance's own */
    KSALLOCATOR_FRAMING framing;
    unsigned block_order;
    unsigned tag;
    char pin_name[32];
    /* Guarded by state->lock. Invariant: frames_set_aside == max(0, frames_promised - frames_live),
     * and the instance's map entries count frames_live LIVE blocks and frames_set_aside frames in
     * SET_ASIDE blocks, a block of order block_order + j holding 2^j frames. */
    uint64_t frames_live;
    uint64_t frames_set_aside;
    uint64_t frames_promised;
    /* The SET_ASIDE blocks: one of each order in set_aside_slots (bit k of set_aside_slotted iff
     * set_aside_slots[k] != 0), which writes nothing into it, the rest singly linked through next
     * in set_aside. */
    uint64_t set_aside_slotted;
    uintptr_t set_aside_slots[BUDDY_MAX_ORDER + 1];
    buddy_free_node *set_aside;
    uint64_t allocate_failures;
    uint64_t bad_frees_ignored;
} buddy_instance;

/* ---- small helpers ------------------------------------------------------------------------- */

static unsigned buddy_ceil_log2(uint64_t value)
{
    return value <= 1 ? 0u : ks_floor_log2(value - 1) + 1u;
}

static buddy_entry buddy_entry_make(unsigned kind, unsigned order, unsigned tag)
{
    return (buddy_entry)(order | kind << BUDDY_ENTRY_KIND_SHIFT | tag << BUDDY_ENTRY_TAG_SHIFT);
}

static unsigned buddy_entry_order(buddy_entry entry)
{
    return entry & BUDDY_ENTRY_ORDER_MASK;
}

static unsigned buddy_entry_kind(buddy_entry entry)
{
    return (entry >> BUDDY_ENTRY_KIND_SHIFT) & 3u;
}

static unsigned buddy_entry_tag(buddy_entry entry)
{
    return entry >> BUDDY_ENTRY_TAG_SHIFT;
}

static size_t buddy_index(const buddy_state *state, uintptr_t addr)
{
    return (addr - state->lo) >> state->min_order;
}

static __attribute__((format(printf, 3, 4))) NTSTATUS buddy_why(char *why, size_t why_bytes, const char *fmt, ...)
{
    if (why != NULL && why_bytes > 0) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(why, why_bytes, fmt, args);
        va_end(args);
    }
    return STATUS_DATA_ERROR;
}

/* ---- free lists ---------------------------------------------------------------------------- */

/* The first slot of this order holding addr (0: an empty slot), or BUDDY_SLOTS_PER_ORDER. */
static unsigned buddy_slot_find(const buddy_state *state, unsigned order, uintptr_t addr)
{
    unsigned i = 0;
    while (i < BUDDY_SLOTS_PER_ORDER && state->slots[order][i] != addr)
        i++;
    return i;
}

/* Makes the block at addr a free block of this order: into an empty slot, which writes nothing
 * into the block, or, when both are taken, onto the list through a node in its first bytes. */
static void buddy_push_free(buddy_state *state, uintptr_t addr, unsigned order)
{
    unsigned slot = buddy_slot_find(state, order, 0);
    if (slot < BUDDY_SLOTS_PER_ORDER) {
        state->slots[order][slot] = addr;
        state->slotted_orders |= 1ull << order;
    } else {
        buddy_free_node *node = (buddy_free_node *)addr;
        node->prev = NULL;
        node->next = state->free_lists[order];
        if (node->next != NULL)
            node->next->prev = node;
        state->free_lists[order] = node;
        state->nonempty_orders |= 1ull << order;
    }
    state->map[buddy_index(state, addr)] = buddy_entry_make(BUDDY_FREE, order, 0);
    state->free_bytes += (size_t)1 << order;
}

/* Takes the free block at addr of this order out of its slot or its list. Leaves the map entry to
 * the caller, who is about to give the block a new meaning. */
static void buddy_remove_free(buddy_state *state, uintptr_t addr, unsigned order)
{
    unsigned slot = buddy_slot_find(state, order, addr);
    if (slot < BUDDY_SLOTS_PER_ORDER) {
        state->slots[order][slot] = 0;
        bool slotted = false;
        for (unsigned i = 0; i < BUDDY_SLOTS_PER_ORDER; i++)
            slotted = slotted || state->slots[order][i] != 0;
        if (!slotted)
            state->slotted_orders &= ~(1ull << order);
    } else {
        buddy_free_node *node = (buddy_free_node *)addr;
        if (node->prev != NULL)
            node->prev->next = node->next;
        else
            state->free_lists[order] = node->next;
        if (node->next != NULL)
            node->next->prev = node->prev;
        if (state->free_lists[order] == NULL)
            state->nonempty_orders &= ~(1ull << order);
    }
    state->free_bytes -= (size_t)1 << order;
}

/* The smallest free block >= order, split down to order; its map entry is the caller's to set.
 * Returns 0 when no block is large enough. A listed block goes before a slotted one of the same
 * order: its memory has been written already, and the slot it would free keeps the next split's
 * half out of the list. */
static uintptr_t buddy_take(buddy_state *state, unsigned order)
{
    uint64_t candidates = (state->slotted_orders | state->nonempty_orders) & (~0ull << order);
    if (candidates == 0)
        return 0;
    unsigned have = (unsigned)__builtin_ctzll(candidates);
    uintptr_t addr = (uintptr_t)state->free_lists[have];
    if (addr == 0)
        addr = state->slots[have][0] != 0 ? state->slots[have][0] : state->slots[have][1];
    buddy_remove_free(state, addr, have);
    while (have > order) {
        have--;
        buddy_push_free(state, addr + ((uintptr_t)1 << have), have);
    }
    return addr;
}

/* Frees the block at addr and merges it with free buddies as far as they go. Returns the head of
 * the free block that now contains addr, and its order in *merged_order. */
static uintptr_t buddy_release(buddy_state *state, uintptr_t addr, unsigned order, unsigned *merged_order)
{
    state->map[buddy_index(state, addr)] = 0;
    while (order < state->top_order) {
        uintptr_t block_bytes = (uintptr_t)1 << order;
        uintptr_t buddy = addr ^ block_bytes;
        if (buddy < state->lo || buddy >= state->hi || state->hi - buddy < block_bytes)
            break; /* the buddy would stick out of the region: this block is a top block */
        size_t buddy_index_at = buddy_index(state, buddy);
        if (state->map[buddy_index_at] != buddy_entry_make(BUDDY_FREE, order, 0))
            break;
        buddy_remove_free(state, buddy, order);
        state->map[buddy_index_at] = 0;
        addr &= ~block_bytes;
        order++;
    }
    buddy_push_free(state, addr, order);
    *merged_order = order;
    return addr;
}

/* ---- a buddy over a region ----------------------------------------------------------------- */

/* Cuts [lo, hi) into blocks aligned to their size, the largest that fits at each position. At
 * most one block of each order on either side of the largest, so they all go into slots and the
 * region is not written to. */
static void buddy_seed(buddy_state *state)
{
    uintptr_t pos = state->lo;
    state->top_order = state->min_order;
    while (pos < state->hi) {
        unsigned order = (unsigned)__builtin_ctzll(pos);
        unsigned fits = ks_floor_log2(state->hi - pos);
        if (order > fits)
            order = fits;
        if (order > BUDDY_MAX_ORDER)
            order = BUDDY_MAX_ORDER;
        if (order > state->top_order)
            state->top_order = order;
        buddy_push_free(state, pos, order);
        pos += (uintptr_t)1 << order;
    }
}

/*
 * A zeroed map of entries, or NULL. One of a page or more comes from the region cache (region.h)
 * and is zeroed here, as its pages keep what their last user wrote: a large heap's map is a large
 * block itself (256 KiB for 8 MiB), which the process heap would map fresh and unmap for each
 * buddy -- under ASan anything over 128 KiB -- or zero through fresh pages, a page fault each
 * (measured: a tenth of fuzz_alloc_buddy's time in faults on the map and in its munmap).
 */
static buddy_entry *buddy_map_create(size_t entries)
{
    size_t map_bytes = entries * sizeof(buddy_entry), page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    if (map_bytes < page_bytes)
        return calloc(entries, sizeof(buddy_entry));
    buddy_entry *map = ks_region_map_aligned(map_bytes, page_bytes);
    if (map != NULL)
        memset(map, 0, map_bytes);
    return map;
}

static void buddy_map_destroy(buddy_entry *map, size_t entries)
{
    size_t map_bytes = entries * sizeof(buddy_entry);
    if (map_bytes < (size_t)sysconf(_SC_PAGESIZE))
        free(map);
    else
        ks_region_unmap(map, map_bytes);
}

/* A buddy over [base, base + bytes) with blocks of at least 2^min_order bytes. */
static NTSTATUS buddy_state_create(void *base, size_t bytes, unsigned min_order, buddy_state **state_out)
{
    uintptr_t min_block = (uintptr_t)1 << min_order;
    uintptr_t lo = ((uintptr_t)base + min_block - 1) & ~(min_block - 1);
    uintptr_t hi = ((uintptr_t)base + bytes) & ~(min_block - 1);
    if (hi <= lo)
        return STATUS_INSUFFICIENT_RESOURCES; /* not even one min block */
    buddy_state *state = calloc(1, sizeof *state);
    if (state == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    state->lo = lo;
    state->hi = hi;
    state->min_order = min_order;
    state->map_entries = (hi - lo) >> min_order;
    state->map = buddy_map_create(state->map_entries);
    if (state->map == NULL || pthread_mutex_init(&state->lock, NULL) != 0) {
        if (state->map != NULL)
            buddy_map_destroy(state->map, state->map_entries);
        free(state);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    buddy_seed(state);
    *state_out = state;
    return STATUS_SUCCESS;
}

static void buddy_state_destroy(buddy_state *state)
{
    pthread_mutex_destroy(&state->lock);
    if (state->own_mapping != NULL)
        ks_region_unmap(state->own_mapping, state->own_mapping_bytes);
    buddy_map_destroy(state->map, state->map_entries);
    free(state);
}

/* ks_heap callbacks: one buddy over the heap's whole region, shared by every buddy pin on it. */
static NTSTATUS buddy_heap_create(ks_heap *heap, void *arg, void **state)
{
    (void)arg;
    if (heap->base == NULL || heap->size_bytes == 0 || heap->size_bytes > ((size_t)1 << BUDDY_MAX_ORDER))
        return STATUS_INVALID_PARAMETER;
    unsigned region_order = buddy_ceil_log2(heap->size_bytes);
    unsigned min_order = BUDDY_MIN_ORDER;
    if (region_order > BUDDY_MAP_ENTRIES_LOG2 + min_order)
        min_order = region_order - BUDDY_MAP_ENTRIES_LOG2;
    buddy_state *created = NULL;
    NTSTATUS status = buddy_state_create(heap->base, heap->size_bytes, min_order, &created);
    *state = created;
    return status;
}

static void buddy_heap_destroy(ks_heap *heap, void *state)
{
    (void)heap;
    buddy_state_destroy(state);
}

/* ---- instances ----------------------------------------------------------------------------- */

static const ks_framing_rules buddy_framing_rules = {
    .default_frames = BUDDY_DEFAULT_FRAMES,
    .default_frame_bytes = BUDDY_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = (size_t)1 << BUDDY_MAX_FRAME_ORDER,
    .max_align_bytes = (size_t)1 << BUDDY_MAX_ALIGN_ORDER,
    .min_align_bytes = 1, /* a block is aligned to its size, which the order below covers */
};

/* Defaults written back, limits checked; *order is the pin's block order before the buddy's
 * min block is known. */
static NTSTATUS buddy_choose_framing(KSALLOCATOR_FRAMING *framing, unsigned *order)
{
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &buddy_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    ks_framing_write_back(framing, &settled);
    size_t need_bytes = settled.frame_bytes > settled.align_bytes ? settled.frame_bytes : settled.align_bytes;
    *order = buddy_ceil_log2(need_bytes);
    if (*order < BUDDY_MIN_ORDER)
        *order = BUDDY_MIN_ORDER;
    return STATUS_SUCCESS;
}

/* A private region of Frames blocks (whole pages), with its own buddy. */
static NTSTATUS buddy_open_private(buddy_instance *instance)
{
    unsigned order = instance->block_order;
    if ((uint64_t)instance->framing.Frames > (1ull << (BUDDY_MAX_ORDER - order)))
        return STATUS_INVALID_PARAMETER; /* Frames x block over the 1 TiB region limit */
    size_t page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    size_t region_bytes = (size_t)instance->framing.Frames << order;
    region_bytes = (region_bytes + page_bytes - 1) & ~(page_bytes - 1);
    unsigned align_order = buddy_ceil_log2(region_bytes);
    if (align_order > BUDDY_PRIVATE_ALIGN_MAX_ORDER)
        align_order = order > BUDDY_PRIVATE_ALIGN_MAX_ORDER ? order : BUDDY_PRIVATE_ALIGN_MAX_ORDER;
    size_t align_bytes = (size_t)1 << align_order;
    void *region = ks_region_map_aligned(region_bytes, align_bytes < page_bytes ? page_bytes : align_bytes);
    if (region == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    NTSTATUS status = buddy_state_create(region, region_bytes, order, &instance->state);
    if (!NT_SUCCESS(status)) {
        ks_region_unmap(region, region_bytes);
        return status;
    }
    instance->state->own_mapping = region;
    instance->state->own_mapping_bytes = region_bytes;
    ks_region_tag_take(&instance->state->tags, &instance->tag);
    return STATUS_SUCCESS;
}

/* Joins (or creates) the heap's shared buddy and takes a tag in it. */
static NTSTATUS buddy_join_heap(buddy_instance *instance, ks_heap *heap)
{
    void *shared = NULL;
    NTSTATUS status = heap->attach(heap, BUDDY_FAMILY, buddy_heap_create, NULL, &shared);
    if (!NT_SUCCESS(status))
        return status;
    buddy_state *state = shared;
    pthread_mutex_lock(&state->lock);
    if (instance->block_order < state->min_order)
        instance->block_order = state->min_order;
    if (instance->block_order > state->top_order)
        status = STATUS_INSUFFICIENT_RESOURCES; /* no block of the heap is large enough */
    else if (!ks_region_tag_take(&state->tags, &instance->tag))
        status = STATUS_INSUFFICIENT_RESOURCES; /* 255 instances already share this buddy */
    pthread_mutex_unlock(&state->lock);
    if (!NT_SUCCESS(status)) {
        heap->detach(heap, BUDDY_FAMILY, buddy_heap_destroy);
        return status;
    }
    instance->state = state;
    instance->heap = heap;
    return STATUS_SUCCESS;
}

/* Gives back every block the instance owns (live or set aside) on a shared heap. Called with
 * the lock held; a walk whose visitor frees as it goes (see buddy_walk). */
static uintptr_t buddy_release_owned_visit(void *arg, uintptr_t addr, unsigned order, buddy_entry entry)
{
    buddy_instance *instance = arg;
    unsigned kind = buddy_entry_kind(entry);
    if ((kind != BUDDY_LIVE && kind != BUDDY_SET_ASIDE) || buddy_entry_tag(entry) != instance->tag)
        return addr + ((uintptr_t)1 << order);
    unsigned merged_order = 0;
    uintptr_t merged = buddy_release(instance->state, addr, order, &merged_order);
    return merged + ((uintptr_t)1 << merged_order);
}

typedef uintptr_t (*buddy_visit_fn)(void *arg, uintptr_t addr, unsigned order, buddy_entry entry);
static NTSTATUS buddy_walk(buddy_state *state, buddy_visit_fn visit, void *arg, char *why, size_t why_bytes);

static void buddy_close(buddy_instance *instance)
{
    buddy_state *state = instance->state;
    if (instance->heap == NULL) {
        buddy_state_destroy(state); /* unmaps the region, live frames and all */
        return;
    }
    pthread_mutex_lock(&state->lock);
    if (instance->frames_live + instance->frames_set_aside > 0)
        buddy_walk(state, buddy_release_owned_visit, instance, NULL, 0);
    ks_region_tag_give_back(&state->tags, instance->tag);
    pthread_mutex_unlock(&state->lock);
    instance->heap->detach(instance->heap, BUDDY_FAMILY, buddy_heap_destroy);
}

/* Sets the block at addr of the given order (>= block_order) aside for the instance: 2^(order -
 * block_order) of its frames. Into the order's slot if it is empty, else onto the list. */
static void buddy_set_aside_push(buddy_instance *instance, uintptr_t addr, unsigned order)
{
    if (instance->set_aside_slots[order] == 0) {
        instance->set_aside_slots[order] = addr;
        instance->set_aside_slotted |= 1ull << order;
    } else {
        buddy_free_node *node = (buddy_free_node *)addr;
        node->next = instance->set_aside;
        instance->set_aside = node;
    }
    instance->frames_set_aside += 1ull << (order - instance->block_order);
    instance->state->map[buddy_index(instance->state, addr)] =
        buddy_entry_make(BUDDY_SET_ASIDE, order, instance->tag);
}

/* A frame from the set-aside blocks: the list's head (a frame given back, usually), else the
 * smallest slotted block, split down to one frame's block as buddy_take splits a free block. The
 * upper halves stay set aside, each in the slot of its order, which is empty: no slotted block is
 * smaller than the one split. So the blocks reserved at InitializeAllocator are written to only
 * when handed out. The map entry is the caller's to set. O(log(block / frame)). */
static uintptr_t buddy_set_aside_pop(buddy_instance *instance)
{
    buddy_state *state = instance->state;
    uintptr_t addr;
    unsigned have;
    if (instance->set_aside != NULL) {
        addr = (uintptr_t)instance->set_aside;
        have = buddy_entry_order(state->map[buddy_index(state, addr)]);
        instance->set_aside = instance->set_aside->next;
    } else {
        have = (unsigned)__builtin_ctzll(instance->set_aside_slotted);
        addr = instance->set_aside_slots[have];
        instance->set_aside_slots[have] = 0;
        instance->set_aside_slotted &= ~(1ull << have);
    }
    instance->frames_set_aside -= 1ull << (have - instance->block_order);
    while (have > instance->block_order) {
        have--;
        buddy_set_aside_push(instance, addr + ((uintptr_t)1 << have), have);
    }
    return addr;
}

/*
 * MUST_ALLOCATE on a shared heap: take Frames frames' worth of blocks now so that later pins
 * cannot, as few blocks as the heap allows -- one per bit of Frames, each a block of 2^j frames,
 * halved only when no free block is that large. Taking a power-of-two block out of a buddy wastes
 * nothing, so this succeeds exactly when Frames blocks of the frame's order could be taken one by
 * one; but it writes a free-list node into O(log Frames) blocks, not into every frame's block:
 * the heap's pages are touched when frames are handed out (buddy_set_aside_pop), not here.
 */
static NTSTATUS buddy_fill_set_aside(buddy_instance *instance)
{
    buddy_state *state = instance->state;
    unsigned order = instance->block_order;
    NTSTATUS status = STATUS_SUCCESS;
    pthread_mutex_lock(&state->lock);
    instance->frames_promised = instance->framing.Frames;
    uint64_t owed = instance->frames_promised;
    unsigned chunk_log2 = state->top_order - order; /* no block is larger than the top order */
    while (owed > 0) {
        while ((1ull << chunk_log2) > owed)
            chunk_log2--;
        uintptr_t addr = buddy_take(state, order + chunk_log2);
        if (addr == 0 && chunk_log2 == 0) {
            status = STATUS_INSUFFICIENT_RESOURCES;
            break;
        }
        if (addr == 0) {
            chunk_log2--; /* and never larger again: the heap only shrinks from here */
            continue;
        }
        buddy_set_aside_push(instance, addr, order + chunk_log2);
        owed -= 1ull << chunk_log2;
    }
    pthread_mutex_unlock(&state->lock);
    return status;
}

static NTSTATUS buddy_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    const KSPIN *pin = initial_context;
    if (pin == NULL || framing == NULL || context == NULL)
        return STATUS_INVALID_PARAMETER;
    if (pin->abi_version != KSALLOC_ABI_VERSION)
        return STATUS_REVISION_MISMATCH;
    KSALLOCATOR_FRAMING chosen = *framing;
    unsigned order = 0;
    NTSTATUS status = buddy_choose_framing(&chosen, &order);
    if (!NT_SUCCESS(status))
        return status;
    buddy_instance *instance = calloc(1, sizeof *instance);
    if (instance == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    instance->framing = chosen;
    instance->block_order = order;
    snprintf(instance->pin_name, sizeof instance->pin_name, "%s", pin->name != NULL ? pin->name : "?");
    status = pin->heap != NULL ? buddy_join_heap(instance, pin->heap) : buddy_open_private(instance);
    bool must_allocate = (chosen.RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) != 0;
    if (NT_SUCCESS(status) && pin->heap != NULL && must_allocate) {
        status = buddy_fill_set_aside(instance);
        if (!NT_SUCCESS(status))
            buddy_close(instance);
    }
    if (!NT_SUCCESS(status)) {
        free(instance);
        return status;
    }
    *framing = chosen;
    *context = instance;
    return STATUS_SUCCESS;
}

static void buddy_delete(PVOID context)
{
    buddy_instance *instance = context;
    if (instance == NULL)
        return;
    buddy_close(instance);
    free(instance);
}

static PVOID buddy_allocate(PVOID context)
{
    buddy_instance *instance = context;
    buddy_state *state = instance->state;
    pthread_mutex_lock(&state->lock);
    uintptr_t addr;
    if (instance->set_aside != NULL || instance->set_aside_slotted != 0) {
        addr = buddy_set_aside_pop(instance);
    } else {
        addr = buddy_take(state, instance->block_order);
    }
    if (addr != 0) {
        state->map[buddy_index(state, addr)] = buddy_entry_make(BUDDY_LIVE, instance->block_order, instance->tag);
        instance->frames_live++;
    } else {
        instance->allocate_failures++;
    }
    pthread_mutex_unlock(&state->lock);
    return (PVOID)addr;
}

/* True when addr is the head of a live block of this instance's order and tag: one map read, so
 * it is always on. It also catches "already free" (the entry says FREE, SET_ASIDE or INTERIOR). */
static bool buddy_owns_live(const buddy_instance *instance, uintptr_t addr)
{
    const buddy_state *state = instance->state;
    if (addr < state->lo || addr >= state->hi || (addr & (((uintptr_t)1 << state->min_order) - 1)) != 0)
        return false;
    return state->map[buddy_index(state, addr)] ==
           buddy_entry_make(BUDDY_LIVE, instance->block_order, instance->tag);
}

static void buddy_free(PVOID context, PVOID frame)
{
    buddy_instance *instance = context;
    buddy_state *state = instance->state;
    uintptr_t addr = (uintptr_t)frame;
    pthread_mutex_lock(&state->lock);
    if (!buddy_owns_live(instance, addr)) {
        instance->bad_frees_ignored++; /* not ours, not live: touching it could only do harm */
    } else {
        instance->frames_live--;
        if (instance->frames_live + instance->frames_set_aside < instance->frames_promised) {
            buddy_set_aside_push(instance, addr, instance->block_order);
        } else {
            unsigned merged_order = 0;
            buddy_release(state, addr, instance->block_order, &merged_order);
        }
    }
    pthread_mutex_unlock(&state->lock);
}

/* ---- walk, self-check, counters ------------------------------------------------------------ */

/*
 * Visits every block of the region in address order, from its head entry, with the lock held.
 * The visitor returns where the walk goes on: addr + block bytes, or further when it freed the
 * block and the block merged with free blocks ahead (the delete walk), or 0 to stop. Fails with a
 * message when the map does not tile [lo, hi) with blocks.
 */
static NTSTATUS buddy_walk(buddy_state *state, buddy_visit_fn visit, void *arg, char *why, size_t why_bytes)
{
    uintptr_t pos = state->lo;
    while (pos < state->hi) {
        buddy_entry entry = state->map[buddy_index(state, pos)];
        unsigned order = buddy_entry_order(entry);
        uintptr_t block_bytes = (uintptr_t)1 << order;
        if (buddy_entry_kind(entry) == BUDDY_INTERIOR || order < state->min_order || order > state->top_order ||
            (pos & (block_bytes - 1)) != 0 || state->hi - pos < block_bytes)
            return buddy_why(why, why_bytes, "map entry 0x%04x at 0x%" PRIxPTR " is not the head of a block that fits",
                             (unsigned)entry, pos);
        uintptr_t next = visit(arg, pos, order, entry);
        if (next == 0)
            return STATUS_DATA_ERROR;
        if (next <= pos)
            return buddy_why(why, why_bytes, "walk went backwards at 0x%" PRIxPTR, pos);
        pos = next;
    }
    return STATUS_SUCCESS;
}

typedef struct buddy_census {
    const buddy_instance *instance;
    buddy_state *state;
    uint64_t free_blocks[BUDDY_ORDER_COUNT];
    size_t free_bytes;
    uint64_t own_live;
    uint64_t own_set_aside;
    char *why;
    size_t why_bytes;
} buddy_census;

/* True when the count entries are all 0: the range compared with itself one entry on (equal iff
 * each entry equals the next, so all equal the first). One vectorised libc call per block where a
 * loop paid a sanitizer check and a coverage callback per entry: the interior is nearly all of the
 * map (on average 450 entries per block in fuzz_alloc_buddy's corpus), and that loop was 45% of
 * the target's time. Still reads every entry, so a stray write anywhere in the map is seen. */
static bool buddy_entries_zero(const buddy_entry *entries, size_t count)
{
    return count == 0 || (entries[0] == 0 && memcmp(entries, entries + 1, (count - 1) * sizeof *entries) == 0);
}

/* Per block: no stale heads inside it, a free block has no free buddy of its order, an owned
 * block belongs to an instance that exists. Returns 0 (stop) after writing why. */
static uintptr_t buddy_census_visit(void *arg, uintptr_t addr, unsigned order, buddy_entry entry)
{
    buddy_census *census = arg;
    buddy_state *state = census->state;
    size_t first = buddy_index(state, addr), end = first + ((size_t)1 << (order - state->min_order));
    if (!buddy_entries_zero(state->map + first + 1, end - first - 1)) {
        size_t index = first + 1;
        while (state->map[index] == 0)
            index++;
        buddy_why(census->why, census->why_bytes, "map entry 0x%04x inside block 0x%" PRIxPTR " order %u",
                  (unsigned)state->map[index], addr, order);
        return 0;
    }
    unsigned kind = buddy_entry_kind(entry), tag = buddy_entry_tag(entry);
    if (kind == BUDDY_FREE) {
        uintptr_t buddy = addr ^ ((uintptr_t)1 << order);
        if (tag != 0 || (order < state->top_order && buddy >= state->lo && buddy < state->hi &&
                         state->map[buddy_index(state, buddy)] == entry)) {
            buddy_why(census->why, census->why_bytes,
                      "free block 0x%" PRIxPTR " order %u: buddy 0x%" PRIxPTR " also free (or tag %u), not coalesced",
                      addr, order, buddy, tag);
            return 0;
        }
        census->free_blocks[order]++;
        census->free_bytes += (size_t)1 << order;
    } else if (tag == 0 || !ks_region_tag_in_use(&state->tags, tag)) {
        buddy_why(census->why, census->why_bytes, "block 0x%" PRIxPTR " order %u held by tag %u, which no instance has",
                  addr, order, tag);
        return 0;
    } else if (tag == census->instance->tag) {
        unsigned block_order = census->instance->block_order;
        if (kind == BUDDY_LIVE ? order != block_order : order < block_order) {
            buddy_why(census->why, census->why_bytes,
                      "block 0x%" PRIxPTR " order %u of pin '%s' (tag %u) is %s, its frames' order is %u", addr, order,
                      census->instance->pin_name, tag, kind == BUDDY_LIVE ? "live" : "set aside", block_order);
            return 0;
        }
        census->own_live += kind == BUDDY_LIVE;
        census->own_set_aside += kind == BUDDY_SET_ASIDE ? 1ull << (order - block_order) : 0;
    }
    return addr + ((uintptr_t)1 << order);
}

/* Bits lo..hi (hi < 64) set. */
static uint64_t buddy_orders_mask(unsigned lo, unsigned hi)
{
    return (~0ull >> (63u - hi)) & (~0ull << lo);
}

/* The slots of one order hold free blocks of that order, no block twice, and the bitmap says
 * whether any does. Counts them into *count. */
static NTSTATUS buddy_check_slots(const buddy_state *state, unsigned order, uint64_t *count, char *why,
                                  size_t why_bytes)
{
    const uintptr_t *slots = state->slots[order];
    bool slotted = false;
    for (unsigned i = 0; i < BUDDY_SLOTS_PER_ORDER; i++) {
        uintptr_t addr = slots[i];
        if (addr == 0)
            continue;
        bool repeated = false;
        for (unsigned j = 0; j < i; j++)
            repeated = repeated || slots[j] == addr;
        if (repeated || addr < state->lo || addr >= state->hi ||
            (addr & (((uintptr_t)1 << state->min_order) - 1)) != 0 ||
            state->map[buddy_index(state, addr)] != buddy_entry_make(BUDDY_FREE, order, 0))
            return buddy_why(why, why_bytes,
                             "slot %u of order %u: 0x%" PRIxPTR " is not a free block of that order "
                             "(or is in two slots)",
                             i, order, addr);
        slotted = true;
        ++*count;
    }
    if (((state->slotted_orders >> order) & 1u) != slotted)
        return buddy_why(why, why_bytes, "slot bitmap bit %u is %u but the slots hold %s", order,
                         (unsigned)((state->slotted_orders >> order) & 1u), slotted ? "a block" : "none");
    return STATUS_SUCCESS;
}

/* The slots and the list of each order hold exactly the free blocks of that order (as the walk
 * counted them), each once: the list's nodes linked both ways and in no slot. The bitmaps say
 * which orders have slotted blocks and which lists are non-empty. */
static NTSTATUS buddy_check_lists(const buddy_state *state, const buddy_census *census, char *why, size_t why_bytes)
{
    /* Blocks are of orders min_order..top_order (the walk checked the map's): the bitmaps say no
     * other order has any, and the slots and lists of other orders are never read. */
    uint64_t outside = ~buddy_orders_mask(state->min_order, state->top_order);
    if (((state->slotted_orders | state->nonempty_orders) & outside) != 0)
        return buddy_why(why, why_bytes, "bitmaps 0x%" PRIx64 " (slots) and 0x%" PRIx64 " (lists) name orders "
                         "outside %u..%u", state->slotted_orders, state->nonempty_orders, state->min_order,
                         state->top_order);
    for (unsigned order = state->min_order; order <= state->top_order; order++) {
        uint64_t count = 0;
        NTSTATUS status = buddy_check_slots(state, order, &count, why, why_bytes);
        if (!NT_SUCCESS(status))
            return status;
        uint64_t slotted = count;
        const buddy_free_node *prev = NULL;
        for (const buddy_free_node *node = state->free_lists[order]; node != NULL; node = node->next) {
            uintptr_t addr = (uintptr_t)node;
            if (++count > census->free_blocks[order] || node->prev != prev || addr < state->lo || addr >= state->hi ||
                state->map[buddy_index(state, addr)] != buddy_entry_make(BUDDY_FREE, order, 0) ||
                buddy_slot_find(state, order, addr) < BUDDY_SLOTS_PER_ORDER)
                return buddy_why(why, why_bytes,
                                 "free list %u: node 0x%" PRIxPTR " (#%" PRIu64 ") is not a free block of that order "
                                 "linked both ways, or is also in a slot (walk found %" PRIu64 ")",
                                 order, addr, count, census->free_blocks[order]);
            prev = node;
        }
        if (count != census->free_blocks[order])
            return buddy_why(why, why_bytes,
                             "order %u: %" PRIu64 " free blocks in slots and %" PRIu64 " on the list, the map %" PRIu64,
                             order, slotted, count - slotted, census->free_blocks[order]);
        if (((state->nonempty_orders >> order) & 1u) != (count != slotted))
            return buddy_why(why, why_bytes, "bitmap bit %u is %u but the list has %" PRIu64 " blocks", order,
                             (unsigned)((state->nonempty_orders >> order) & 1u), count - slotted);
    }
    return STATUS_SUCCESS;
}

/* True when addr is the head of one of the instance's SET_ASIDE blocks (of this order, unless it
 * is BUDDY_ORDER_COUNT) and its frames, added to *listed, stay within frames_set_aside (which
 * also stops a list that loops). */
static bool buddy_set_aside_counts(const buddy_instance *instance, uintptr_t addr, unsigned want_order,
                                   uint64_t *listed)
{
    const buddy_state *state = instance->state;
    if (addr < state->lo || addr >= state->hi || (addr & (((uintptr_t)1 << state->min_order) - 1)) != 0)
        return false;
    buddy_entry entry = state->map[buddy_index(state, addr)];
    unsigned order = buddy_entry_order(entry);
    if (buddy_entry_kind(entry) != BUDDY_SET_ASIDE || buddy_entry_tag(entry) != instance->tag ||
        order < instance->block_order || order > state->top_order ||
        (want_order != BUDDY_ORDER_COUNT && order != want_order))
        return false;
    *listed += 1ull << (order - instance->block_order);
    return *listed <= instance->frames_set_aside;
}

/* The instance's counters agree with the map, and its set-aside slots and list hold its SET_ASIDE
 * blocks, each once: as many frames as it counts. */
static NTSTATUS buddy_check_instance(const buddy_instance *instance, const buddy_census *census, char *why,
                                     size_t why_bytes)
{
    if (census->own_live != instance->frames_live || census->own_set_aside != instance->frames_set_aside)
        return buddy_why(why, why_bytes,
                         "pin '%s' tag %u counts %" PRIu64 " live + %" PRIu64 " set aside, the map %" PRIu64
                         " + %" PRIu64,
                         instance->pin_name, instance->tag, instance->frames_live, instance->frames_set_aside,
                         census->own_live, census->own_set_aside);
    uint64_t listed = 0; /* frames */
    const buddy_state *state = instance->state;
    if ((instance->set_aside_slotted & ~buddy_orders_mask(instance->block_order, state->top_order)) != 0)
        return buddy_why(why, why_bytes, "pin '%s': set-aside slot bitmap 0x%" PRIx64 " names orders outside %u..%u",
                         instance->pin_name, instance->set_aside_slotted, instance->block_order, state->top_order);
    for (unsigned order = instance->block_order; order <= state->top_order; order++) {
        uintptr_t addr = instance->set_aside_slots[order];
        if (((instance->set_aside_slotted >> order) & 1u) != (addr != 0))
            return buddy_why(why, why_bytes, "pin '%s': set-aside slot bit %u disagrees with its slot 0x%" PRIxPTR,
                             instance->pin_name, order, addr);
        if (addr != 0 && !buddy_set_aside_counts(instance, addr, order, &listed))
            return buddy_why(why, why_bytes, "pin '%s': set-aside slot %u holds 0x%" PRIxPTR
                             ", not its set-aside block of that order",
                             instance->pin_name, order, addr);
    }
    for (const buddy_free_node *node = instance->set_aside; node != NULL; node = node->next) {
        uintptr_t addr = (uintptr_t)node;
        if (!buddy_set_aside_counts(instance, addr, BUDDY_ORDER_COUNT, &listed))
            return buddy_why(why, why_bytes, "pin '%s': set-aside node 0x%" PRIxPTR " is not its set-aside block",
                             instance->pin_name, addr);
    }
    uint64_t promised = instance->frames_promised, live = instance->frames_live;
    uint64_t owed = promised > live ? promised - live : 0;
    if (listed != instance->frames_set_aside || instance->frames_set_aside != owed)
        return buddy_why(why, why_bytes, "pin '%s' set aside: %" PRIu64 " listed, %" PRIu64 " counted, %" PRIu64
                         " owed",
                         instance->pin_name, listed, instance->frames_set_aside, owed);
    return STATUS_SUCCESS;
}

static NTSTATUS buddy_self_check(PVOID context, char *why, size_t why_bytes)
{
    const buddy_instance *instance = context;
    buddy_state *state = instance->state;
    buddy_census census = {.instance = instance, .state = state, .why = why, .why_bytes = why_bytes};
    pthread_mutex_lock(&state->lock);
    NTSTATUS status = buddy_walk(state, buddy_census_visit, &census, why, why_bytes);
    if (NT_SUCCESS(status) && census.free_bytes != state->free_bytes)
        status = buddy_why(why, why_bytes, "free_bytes is %zu, the map adds up to %zu", state->free_bytes,
                           census.free_bytes);
    if (NT_SUCCESS(status))
        status = buddy_check_lists(state, &census, why, why_bytes);
    if (NT_SUCCESS(status))
        status = buddy_check_instance(instance, &census, why, why_bytes);
    pthread_mutex_unlock(&state->lock);
    return status;
}

static size_t buddy_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const buddy_instance *instance = context;
    buddy_state *state = instance->state;
    pthread_mutex_lock(&state->lock);
    uint64_t held_bytes = (instance->frames_live + instance->frames_set_aside) << instance->block_order;
    uint64_t free_orders = state->nonempty_orders | state->slotted_orders;
    uint64_t largest_free = free_orders ? 1ull << ks_floor_log2(free_orders) : 0;
    const ks_counter all[] = {
        /* private: the region it mapped; shared: the blocks it holds of the heap */
        {"reserved_bytes", instance->heap != NULL ? held_bytes : (uint64_t)state->own_mapping_bytes},
        {"frames_live", instance->frames_live},
        {"free_bytes", state->free_bytes}, /* of the whole buddy, shared or not */
        {"largest_free_bytes", largest_free},
        {"region_bytes", state->hi - state->lo},
        {"block_bytes", 1ull << instance->block_order},
        {"frames_set_aside", instance->frames_set_aside},
        {"map_bytes", state->map_entries * sizeof *state->map},
        {"allocate_failures", instance->allocate_failures},
        {"bad_frees_ignored", instance->bad_frees_ignored},
    };
    pthread_mutex_unlock(&state->lock);
    size_t count = sizeof all / sizeof all[0];
    if (count > max_counters)
        count = max_counters;
    memcpy(out, all, count * sizeof *out);
    return count;
}

static const KSALLOCATOR_DISPATCH buddy_dispatch = {
    .InitializeAllocator = buddy_initialize,
    .DeleteAllocator = buddy_delete,
    .Allocate = buddy_allocate,
    .Free = buddy_free,
};

extern const ks_allocator_entry ks_allocator_buddy;
const ks_allocator_entry ks_allocator_buddy = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "buddy",
    .description = "binary buddy over one region (private or a shared heap): power-of-two blocks, O(log n) split/merge",
    .caps = KS_CAP_THREAD_SAFE | KS_CAP_SHARED_HEAP | KS_CAP_ANY_SIZE,
    .max_frame_bytes = (size_t)1 << BUDDY_MAX_FRAME_ORDER,
    .max_align_bytes = (size_t)1 << BUDDY_MAX_ALIGN_ORDER,
    .dispatch = &buddy_dispatch,
    .self_check = buddy_self_check,
    .counters = buddy_counters,
};
