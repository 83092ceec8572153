/*
 * mutant_grow_align.c -- bug zoo mutant: a free-list allocator that grows by chunks.
 *
 * Bug: only the first chunk comes from aligned_alloc; chunks added when it runs out sit 16 bytes after a malloc header
 * Expect: misaligned
 *
 * Design: frames are carved from chunks of chunk_frames frames (Frames, or a default), each
 * stride_bytes apart; free frames are an intrusive LIFO list (a frame holds the link while it is
 * free, so the stride is at least a pointer). When the list is empty the allocator adds a chunk,
 * so it never returns NULL while memory lasts and claims no bound. Allocate and Free are O(1)
 * (plus a chunk's carving when growing); memory is the chunks plus one header per chunk. Not
 * thread-safe. The first chunk is aligned as asked; growth chunks keep malloc's 16-byte
 * alignment, which is only wrong for FileAlignment above 15 and only once the pin holds more
 * than chunk_frames frames.
 */
#include <stdint.h>
#include <stdlib.h>

#include "ksalloc.h"

#define DEFAULT_CHUNK_FRAMES 8u
#define DEFAULT_FRAME_BYTES 256u

typedef struct chunk_header {
    struct chunk_header *next;
    uint64_t frames; /* keeps the header 16 bytes, malloc's alignment */
} chunk_header;

typedef struct free_frame {
    struct free_frame *next;
} free_frame;

typedef struct grow_allocator {
    size_t align_bytes;
    size_t stride_bytes;
    ULONG chunk_frames;
    chunk_header *chunks;
    void *first_chunk; /* aligned_alloc'd, frames start at its base */
    free_frame *free_list;
} grow_allocator;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static void carve(grow_allocator *alloc, unsigned char *frames)
{
    for (ULONG i = alloc->chunk_frames; i-- > 0;) {
        free_frame *frame = (free_frame *)(frames + alloc->stride_bytes * i);
        frame->next = alloc->free_list;
        alloc->free_list = frame;
    }
}

static int grow(grow_allocator *alloc)
{
    size_t frames_bytes = alloc->stride_bytes * alloc->chunk_frames;
    /* bug: a growth chunk's frames start right after a 16-byte header, whatever the alignment */
    chunk_header *chunk = malloc(sizeof *chunk + frames_bytes + alloc->align_bytes); /* room to align */
    if (chunk == NULL)
        return -1;
    chunk->frames = alloc->chunk_frames;
    chunk->next = alloc->chunks;
    alloc->chunks = chunk;
#ifndef ZOO_FIXED
    carve(alloc, (unsigned char *)(chunk + 1));
#else
    carve(alloc, (unsigned char *)round_up((uintptr_t)(chunk + 1), alloc->align_bytes));
#endif
    return 0;
}

static NTSTATUS grow_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    grow_allocator *alloc = calloc(1, sizeof *alloc);
    if (alloc == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    alloc->align_bytes = ks_framing_align_bytes(framing) < sizeof(void *) ? sizeof(void *)
                                                                           : ks_framing_align_bytes(framing);
    alloc->stride_bytes = round_up(framing->FrameSize < sizeof(void *) ? sizeof(void *) : framing->FrameSize,
                                   alloc->align_bytes);
    alloc->chunk_frames = framing->Frames != 0 ? framing->Frames : DEFAULT_CHUNK_FRAMES;
    alloc->first_chunk = aligned_alloc(alloc->align_bytes, alloc->stride_bytes * alloc->chunk_frames);
    if (alloc->first_chunk == NULL) {
        free(alloc);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    carve(alloc, alloc->first_chunk);
    *context = alloc;
    return STATUS_SUCCESS;
}

static void grow_delete(PVOID context)
{
    grow_allocator *alloc = context;
    while (alloc->chunks != NULL) {
        chunk_header *next = alloc->chunks->next;
        free(alloc->chunks);
        alloc->chunks = next;
    }
    free(alloc->first_chunk);
    free(alloc);
}

static PVOID grow_allocate(PVOID context)
{
    grow_allocator *alloc = context;
    if (alloc->free_list == NULL && grow(alloc) != 0)
        return NULL;
    free_frame *frame = alloc->free_list;
    alloc->free_list = frame->next;
    return frame;
}

static void grow_free(PVOID context, PVOID frame)
{
    grow_allocator *alloc = context;
    free_frame *node = frame;
    node->next = alloc->free_list;
    alloc->free_list = node;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH grow_dispatch = {grow_initialize, grow_delete, grow_allocate, grow_free};
static const ks_allocator_entry grow_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_grow_align",
    .description = "zoo mutant: chunked free list whose growth chunks are only 16-byte aligned",
    .caps = 0,
    .max_frame_bytes = 65536,
    .dispatch = &grow_dispatch,
};
KSALLOC_PLUGIN(grow_entry)
