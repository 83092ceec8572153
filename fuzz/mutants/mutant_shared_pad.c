/*
 * mutant_shared_pad.c -- bug zoo mutant: pins carve chunks of frames from one shared heap.
 *
 * Bug: a chunk's start is the shared offset rounded down to the pin's alignment, not up, so it can begin inside the previous pin's chunk
 * Expect: overlap
 *
 * Design: every instance on a ks_heap shares one bump offset (the family's shared state, behind
 * a mutex) and takes chunks of CHUNK_FRAMES frames from it, each chunk aligned to its own pin's
 * FileAlignment + 1; inside a chunk frames are stride_bytes apart, and an instance keeps its
 * free frames on its own stack, so frames of different pins never mix. A pin without a shared
 * heap takes its chunks from aligned_alloc. Allocate and Free are O(1) (plus a locked bump when a
 * chunk is taken); memory is the chunks (never returned before DeleteAllocator, as with a region
 * heap) plus one pointer per frame. Not thread-safe per instance; the shared offset is locked.
 * Rounding down is harmless for consecutive chunks of one instance (its stride is a multiple of
 * its alignment, so the offset its own chunk leaves is already aligned for it) and wrong only
 * when the previous chunk belongs to a pin whose frames leave the offset unaligned for this
 * one: the shared heap then splits so that two pins' frames share bytes.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "ksalloc.h"

#define FAMILY "mutant_shared_pad"
#define CHUNK_FRAMES 2u
#define DEFAULT_FRAME_BYTES 256u
#define MIN_ALIGN_BYTES 8u
#define MAX_CHUNKS 4096u

typedef struct pad_shared {
    pthread_mutex_t lock;
    size_t bump_offset_bytes;
} pad_shared;

typedef struct pad_allocator {
    ks_heap *heap; /* NULL: private chunks */
    pad_shared *shared;
    size_t align_bytes;
    size_t stride_bytes;
    ULONG frames_max; /* 0: unbounded */
    ULONG live;
    void *private_chunks[MAX_CHUNKS];
    ULONG chunk_count;
    void **free_stack;
    size_t free_count;
    size_t free_slots;
} pad_allocator;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static NTSTATUS pad_shared_create(ks_heap *heap, void *arg, void **state)
{
    (void)heap;
    (void)arg;
    pad_shared *shared = calloc(1, sizeof *shared);
    if (shared == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pthread_mutex_init(&shared->lock, NULL);
    *state = shared;
    return STATUS_SUCCESS;
}

static void pad_shared_destroy(ks_heap *heap, void *state)
{
    (void)heap;
    pad_shared *shared = state;
    pthread_mutex_destroy(&shared->lock);
    free(shared);
}

static NTSTATUS pad_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    KSPIN *pin = initial_context;
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    pad_allocator *alloc = calloc(1, sizeof *alloc);
    if (alloc == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    alloc->align_bytes = ks_framing_align_bytes(framing) < MIN_ALIGN_BYTES ? MIN_ALIGN_BYTES
                                                                            : ks_framing_align_bytes(framing);
    alloc->stride_bytes = round_up(framing->FrameSize, alloc->align_bytes);
    alloc->frames_max = framing->Frames;
    if (pin != NULL && pin->heap != NULL) {
        NTSTATUS status = pin->heap->attach(pin->heap, FAMILY, pad_shared_create, NULL, (void **)&alloc->shared);
        if (!NT_SUCCESS(status)) {
            free(alloc);
            return status;
        }
        alloc->heap = pin->heap;
    }
    *context = alloc;
    return STATUS_SUCCESS;
}

static void pad_delete(PVOID context)
{
    pad_allocator *alloc = context;
    for (ULONG i = 0; i < alloc->chunk_count; i++)
        free(alloc->private_chunks[i]);
    if (alloc->heap != NULL)
        alloc->heap->detach(alloc->heap, FAMILY, pad_shared_destroy);
    free(alloc->free_stack);
    free(alloc);
}

static unsigned char *take_shared_chunk(pad_allocator *alloc, size_t chunk_bytes)
{
    pad_shared *shared = alloc->shared;
    unsigned char *chunk = NULL;
    pthread_mutex_lock(&shared->lock);
    /* The heap's base is page-aligned, so aligning the offset aligns the address. */
#ifndef ZOO_FIXED
    /* bug: rounds the offset down, not up: an offset that another pin left unaligned for this one
     * puts the chunk's head inside that pin's chunk */
    size_t start = shared->bump_offset_bytes / alloc->align_bytes * alloc->align_bytes;
#else
    size_t start = round_up(shared->bump_offset_bytes, alloc->align_bytes);
#endif
    if (start + chunk_bytes <= alloc->heap->size_bytes) {
        chunk = (unsigned char *)alloc->heap->base + start;
        shared->bump_offset_bytes = start + chunk_bytes;
    }
    pthread_mutex_unlock(&shared->lock);
    return chunk;
}

static int add_chunk(pad_allocator *alloc)
{
    size_t chunk_bytes = alloc->stride_bytes * CHUNK_FRAMES;
    /* The free stack must hold every frame the instance owns: they may all come back. */
    size_t frames_owned = ((size_t)alloc->chunk_count + 1) * CHUNK_FRAMES;
    if (alloc->chunk_count == MAX_CHUNKS || frames_owned > alloc->free_slots) {
        size_t slots = alloc->free_slots * 2 > frames_owned ? alloc->free_slots * 2 : frames_owned;
        void **grown = realloc(alloc->free_stack, slots * sizeof *grown);
        if (alloc->chunk_count == MAX_CHUNKS || grown == NULL)
            return -1;
        alloc->free_stack = grown;
        alloc->free_slots = slots;
    }
    unsigned char *chunk = NULL;
    if (alloc->heap != NULL) {
        chunk = take_shared_chunk(alloc, chunk_bytes);
    } else {
        chunk = aligned_alloc(alloc->align_bytes, chunk_bytes);
        if (chunk != NULL)
            alloc->private_chunks[alloc->chunk_count] = chunk;
    }
    if (chunk == NULL)
        return -1;
    alloc->chunk_count++;
    /* The chunk's last frame on top: a chunk is used from its end down, so a pin that holds few
     * frames leaves the head of its newest chunk untouched. */
    for (ULONG i = 0; i < CHUNK_FRAMES; i++)
        alloc->free_stack[alloc->free_count++] = chunk + alloc->stride_bytes * i;
    return 0;
}

static PVOID pad_allocate(PVOID context)
{
    pad_allocator *alloc = context;
    if (alloc->frames_max != 0 && alloc->live >= alloc->frames_max)
        return NULL;
    if (alloc->free_count == 0 && add_chunk(alloc) != 0)
        return NULL;
    alloc->live++;
    return alloc->free_stack[--alloc->free_count];
}

static void pad_free(PVOID context, PVOID frame)
{
    pad_allocator *alloc = context;
    alloc->live--;
    alloc->free_stack[alloc->free_count++] = frame;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH pad_dispatch = {pad_initialize, pad_delete, pad_allocate, pad_free};
static const ks_allocator_entry pad_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_shared_pad",
    .description = "zoo mutant: shared-heap chunk carver that counts alignment padding into the next chunk",
    .caps = KS_CAP_BOUNDED | KS_CAP_SHARED_HEAP | KS_CAP_ANY_SIZE,
    .max_frame_bytes = 65536,
    .dispatch = &pad_dispatch,
};
KSALLOC_PLUGIN(pad_entry)
