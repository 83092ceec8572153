/*
 * bad_name.c -- a broken plugin for tests/test_plugin.c: its name has a space and a '!', outside
 * [A-Za-z0-9_-], so it could not be named on a command line or in a trace file. ks_plugin_load
 * must refuse it with STATUS_INVALID_IMAGE_FORMAT and a message quoting the name and the first
 * offending character.
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

static void refuse_free(PVOID context, PVOID buffer)
{
    (void)context;
    (void)buffer;
}

static const KSALLOCATOR_DISPATCH dispatch = {refuse_initialize, refuse_delete, refuse_allocate, refuse_free};

static const ks_allocator_entry entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "bad name!", /* the defect */
    .description = "broken on purpose: its name has a space and a '!'",
    .dispatch = &dispatch,
};

const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);
KSALLOC_PLUGIN(entry)
