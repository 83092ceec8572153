/*
 * bad_no_symbol.c -- a broken plugin for tests/test_plugin.c: a valid entry, exported under the
 * wrong name (a typo a user could make), so KSALLOC_PLUGIN_SYMBOL is missing. ks_plugin_load
 * must refuse it with STATUS_ENTRYPOINT_NOT_FOUND and a message naming the symbol it wanted.
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
    .name = "bad_no_symbol",
    .description = "broken on purpose: exports ksalloc_plugin_entr1 instead of ksalloc_plugin_entry",
    .dispatch = &dispatch,
};

/* The defect: the right signature under the wrong name. */
const ks_allocator_entry *ksalloc_plugin_entr1(ULONG host_abi);
__attribute__((visibility("default"))) const ks_allocator_entry *ksalloc_plugin_entr1(ULONG host_abi)
{
    (void)host_abi;
    return &entry;
}
