/*
 * kernels.c -- the eight instantiations of kernels.h: {table, bare, direct, inline} x {untimed,
 * timed}.
 *
 * table:  target->dispatch->Allocate(target->context), an indirect call through the table as
 *         the harness makes it; the table pointer is runtime data, so nothing is devirtualised.
 * bare:   target->bare->allocate(frame_bytes, align_bytes), an indirect call into the peer's
 *         library as its users call it, with nothing kept per frame: the same call shape as
 *         table, so that table over bare is what the KS contract adds.
 * direct: ks_pool_allocate(target->context), a direct call into allocators/pool.c (marked
 *         noinline there): the very code `pool` runs behind its table.
 * inline: a pop from / push to the thread's free list, a stack of frame pointers beside the
 *         frames (an intrusive list, linked through the frames as pool's is, was tried first: on
 *         4 KiB-strided frames its loads and stores to frame memory made the supposed bound
 *         slower than pool called out of line, in fifo_batch by 1.3x), in the loop itself. For
 *         prodcons, frames go back from the consumer to the producer through a second SPSC
 *         ring, the cheapest correct way to recycle frames across two threads.
 */
#include "bench.h"
#include "../allocators/pool.h"
#include "timer.h"

static inline void *inline_list_pop(ks_bench_target *target)
{
    return target->free_count != 0 ? target->free_stack[--target->free_count] : NULL;
}

static inline void inline_list_push(ks_bench_target *target, void *frame)
{
    target->free_stack[target->free_count++] = frame;
}

static inline void *inline_ring_pop(ks_bench_target *target)
{
    void *frame = NULL;
    return ks_spsc_try_pop(target->return_ring, &frame) ? frame : NULL;
}

/* ---- table --------------------------------------------------------------------------------- */
#define KS_KERNEL_SUFFIX table
#define KS_KERNEL_TIMED 0
#define KS_KERNEL_ALLOCATE(target) ((target)->dispatch->Allocate((target)->context))
#define KS_KERNEL_FREE(target, frame) ((target)->dispatch->Free((target)->context, (frame)))
#define KS_KERNEL_ALLOCATE_SHARED KS_KERNEL_ALLOCATE
#define KS_KERNEL_FREE_SHARED KS_KERNEL_FREE
#include "kernels.h"

#define KS_KERNEL_SUFFIX table_timed
#define KS_KERNEL_TIMED 1
#define KS_KERNEL_ALLOCATE(target) ((target)->dispatch->Allocate((target)->context))
#define KS_KERNEL_FREE(target, frame) ((target)->dispatch->Free((target)->context, (frame)))
#define KS_KERNEL_ALLOCATE_SHARED KS_KERNEL_ALLOCATE
#define KS_KERNEL_FREE_SHARED KS_KERNEL_FREE
#include "kernels.h"

/* ---- bare ---------------------------------------------------------------------------------- */
#define KS_KERNEL_SUFFIX bare
#define KS_KERNEL_TIMED 0
#define KS_KERNEL_ALLOCATE(target) ((target)->bare->allocate((target)->frame_bytes, (target)->align_bytes))
#define KS_KERNEL_FREE(target, frame) ((target)->bare->free((frame), (target)->frame_bytes, (target)->align_bytes))
#define KS_KERNEL_ALLOCATE_SHARED KS_KERNEL_ALLOCATE
#define KS_KERNEL_FREE_SHARED KS_KERNEL_FREE
#include "kernels.h"

#define KS_KERNEL_SUFFIX bare_timed
#define KS_KERNEL_TIMED 1
#define KS_KERNEL_ALLOCATE(target) ((target)->bare->allocate((target)->frame_bytes, (target)->align_bytes))
#define KS_KERNEL_FREE(target, frame) ((target)->bare->free((frame), (target)->frame_bytes, (target)->align_bytes))
#define KS_KERNEL_ALLOCATE_SHARED KS_KERNEL_ALLOCATE
#define KS_KERNEL_FREE_SHARED KS_KERNEL_FREE
#include "kernels.h"

/* ---- direct -------------------------------------------------------------------------------- */
#define KS_KERNEL_SUFFIX direct
#define KS_KERNEL_TIMED 0
#define KS_KERNEL_ALLOCATE(target) ks_pool_allocate((target)->context)
#define KS_KERNEL_FREE(target, frame) ks_pool_free((target)->context, (frame))
#define KS_KERNEL_ALLOCATE_SHARED KS_KERNEL_ALLOCATE
#define KS_KERNEL_FREE_SHARED KS_KERNEL_FREE
#include "kernels.h"

#define KS_KERNEL_SUFFIX direct_timed
#define KS_KERNEL_TIMED 1
#define KS_KERNEL_ALLOCATE(target) ks_pool_allocate((target)->context)
#define KS_KERNEL_FREE(target, frame) ks_pool_free((target)->context, (frame))
#define KS_KERNEL_ALLOCATE_SHARED KS_KERNEL_ALLOCATE
#define KS_KERNEL_FREE_SHARED KS_KERNEL_FREE
#include "kernels.h"

/* ---- inline -------------------------------------------------------------------------------- */
#define KS_KERNEL_SUFFIX inline
#define KS_KERNEL_TIMED 0
#define KS_KERNEL_ALLOCATE(target) inline_list_pop(target)
#define KS_KERNEL_FREE(target, frame) inline_list_push((target), (frame))
#define KS_KERNEL_ALLOCATE_SHARED(target) inline_ring_pop(target)
#define KS_KERNEL_FREE_SHARED(target, frame) ks_spsc_push_wait((target)->return_ring, (frame))
#include "kernels.h"

#define KS_KERNEL_SUFFIX inline_timed
#define KS_KERNEL_TIMED 1
#define KS_KERNEL_ALLOCATE(target) inline_list_pop(target)
#define KS_KERNEL_FREE(target, frame) inline_list_push((target), (frame))
#define KS_KERNEL_ALLOCATE_SHARED(target) inline_ring_pop(target)
#define KS_KERNEL_FREE_SHARED(target, frame) ks_spsc_push_wait((target)->return_ring, (frame))
#include "kernels.h"

static const ks_bench_kernel *const kernel_tables[KS_IMPL_COUNT][2] = {
    [KS_IMPL_TABLE] = {kernels_table, kernels_table_timed},
    [KS_IMPL_DIRECT] = {kernels_direct, kernels_direct_timed},
    [KS_IMPL_INLINE] = {kernels_inline, kernels_inline_timed},
    [KS_IMPL_BARE] = {kernels_bare, kernels_bare_timed},
};

ks_bench_kernel ks_bench_kernel_for(ks_workload workload, ks_impl impl, bool timed)
{
    return kernel_tables[impl][timed ? 1 : 0][workload];
}
