/*
 * bad_abi_version.c -- a broken plugin for tests/test_plugin.c: a complete, working allocator
 * whose entry claims an ABI version the host does not speak. ks_plugin_load must refuse it with
 * STATUS_REVISION_MISMATCH and a message giving both versions.
 */
#include <stdlib.h>

#include "ksalloc.h"

typedef struct heap_frames {
    size_t frame_bytes;
} heap_frames;

static NTSTATUS heap_initialize(PVOID pin, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)pin;
    if (!ks_framing_align_valid(framing) || framing->FileAlignment != 0)
        return STATUS_INVALID_PARAMETER;
    heap_frames *instance = malloc(sizeof *instance);
    if (instance == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (framing->FrameSize == 0)
        framing->FrameSize = 4096;
    instance->frame_bytes = framing->FrameSize;
    *context = instance;
    return STATUS_SUCCESS;
}

static void heap_delete(PVOID context)
{
    free(context);
}

static PVOID heap_allocate(PVOID context)
{
    return malloc(((heap_frames *)context)->frame_bytes);
}

static void heap_free(PVOID context, PVOID buffer)
{
    (void)context;
    free(buffer);
}

static const KSALLOCATOR_DISPATCH heap_dispatch = {heap_initialize, heap_delete, heap_allocate, heap_free};

static const ks_allocator_entry entry = {
    .abi_version = KSALLOC_ABI_VERSION + 1, /* the defect: built against a newer ksalloc.h */
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "bad_abi_version",
    .description = "broken on purpose: claims ABI version KSALLOC_ABI_VERSION + 1",
    .max_align_bytes = 1,
    .dispatch = &heap_dispatch,
};

const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);
KSALLOC_PLUGIN(entry)
