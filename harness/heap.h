/*
 * heap.h -- shared backing heaps (struct ks_heap in ksalloc.h): a page-aligned region reserved
 * with mmap plus one attachment slot for the allocator family that manages it. Pins that name
 * the same heap draw from one pool of memory, which is what makes the fragmenting profile
 * fragment.
 */
#ifndef KS_HEAP_H
#define KS_HEAP_H

#include "error.h"
#include "ksalloc.h"

#define KS_HEAP_FAMILY_BYTES 64u

/* Reserves size_bytes (rounded up to pages, at least one page) of read/write memory. */
NTSTATUS ks_heap_create(const char *name, size_t size_bytes, ks_heap **heap, ks_error *err);

/* Unmaps the region. A heap still attached by some family returns STATUS_DEVICE_BUSY and is
 * left as it is (the caller deleted its pins out of order). */
NTSTATUS ks_heap_destroy(ks_heap *heap, ks_error *err);

/* Name of the family managing the heap, or NULL. */
const char *ks_heap_family(const ks_heap *heap);

#endif
