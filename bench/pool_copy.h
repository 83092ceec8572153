/*
 * pool_copy.h -- the bench's own copy of the `pool` algorithm (allocators/pool.c), so that the
 * cost of the dispatch table can be measured: the same Allocate/Free are called once through a
 * KSALLOCATOR_DISPATCH (like every allocator) and once by direct calls.
 *
 * allocators/pool.c keeps its functions static, so the catalogued pool cannot be called
 * directly; this copy stands in until it exports them. Its results are labelled pool_copy_table
 * and pool_copy_direct, never "pool".
 */
#ifndef KS_BENCH_POOL_COPY_H
#define KS_BENCH_POOL_COPY_H

#include "ksalloc.h"

/* The copy behind a dispatch table, as a catalogue entry (not in the catalogue). */
extern const ks_allocator_entry ks_bench_pool_copy_entry;

/* The same Allocate and Free as the table's, for direct calls. Never inlined: a direct call
 * and an indirect call through the table are what is compared, not a call and no call. */
PVOID ks_bench_pool_copy_allocate(PVOID context);
void ks_bench_pool_copy_free(PVOID context, PVOID frame);

#endif /* KS_BENCH_POOL_COPY_H */
