/*
 * pool.h -- `pool`'s Allocate and Free by name, for a caller that holds a pool context (from
 * ks_allocator_pool.dispatch->InitializeAllocator) and wants to call them without the dispatch
 * table: the benchmark's dispatch-cost pair (bench/kernels.c) measures pool through its table
 * against these direct calls. Not part of the plugin ABI. They are never inlined into a caller,
 * so that a direct call is what is measured, not the absence of a call.
 */
#ifndef KS_POOL_H
#define KS_POOL_H

#include "ksalloc.h"

extern const ks_allocator_entry ks_allocator_pool;

PVOID ks_pool_allocate(PVOID context);
void ks_pool_free(PVOID context, PVOID frame);

#endif /* KS_POOL_H */
