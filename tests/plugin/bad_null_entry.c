/*
 * bad_null_entry.c -- a broken plugin for tests/test_plugin.c: it exports the entry function,
 * which returns NULL (as a plugin might when it refuses the host's ABI version without saying
 * why). ks_plugin_load must refuse it with STATUS_INVALID_IMAGE_FORMAT and say that the entry
 * function returned NULL.
 */
#include <stddef.h>

#include "ksalloc.h"

const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);
__attribute__((visibility("default"))) const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi)
{
    (void)host_abi;
    return NULL; /* the defect */
}
