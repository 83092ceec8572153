/*
 * bad_null_member.c -- a broken plugin for tests/test_plugin.c: its dispatch table has no Free.
 * ks_plugin_load must refuse it with STATUS_INVALID_IMAGE_FORMAT and a message naming
 * "dispatch->Free".
 */
#include "ksalloc.h"

static NTSTATUS refuse_initialize(PVOID pin, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)pin;
    (void)framing;
    (void)context;
    return STATUS_NOT_SUPPORTED;
}

static void refuse_delete(PVOID context)
{
    (void)context;
}

static PVOID refuse_allocate(PVOID context)
{
    (void)context;
    return NULL;
}

static const KSALLOCATOR_DISPATCH dispatch = {
    .InitializeAllocator = refuse_initialize,
    .DeleteAllocator = refuse_delete,
    .Allocate = refuse_allocate,
    .Free = NULL, /* the defect */
};

static const ks_allocator_entry entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "bad_null_member",
    .description = "broken on purpose: dispatch->Free is NULL",
    .dispatch = &dispatch,
};

const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);
KSALLOC_PLUGIN(entry)
