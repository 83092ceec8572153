/*
 * kernels.h -- the one template every benchmark kernel is instantiated from (by kernels.c, once
 * per variant). Not an ordinary header: it has no include guard and is meant to be included
 * several times, each time after defining
 *
 *   KS_KERNEL_SUFFIX                       name suffix of this instantiation (table, inline, ...)
 *   KS_KERNEL_TIMED                        1: a timer read around every Allocate and Free, the
 *                                          ticks between them kept in run->op_samples
 *   KS_KERNEL_ALLOCATE(target)             Allocate for a thread's own target
 *   KS_KERNEL_FREE(target, frame)          Free for a thread's own target
 *   KS_KERNEL_ALLOCATE_SHARED(target)      prodcons: Allocate on the producer ...
 *   KS_KERNEL_FREE_SHARED(target, frame)   ... and Free on the consumer of the same target
 *
 * and it #undefs them at the end. Writing each workload once and varying only the operation is
 * what makes "pool / inline free list" a ratio of like with like: the loop, the slot bookkeeping,
 * the frame write and the random numbers are the same instructions in every variant.
 */

#define KS_K_JOIN2(name, suffix) name##_##suffix
#define KS_K_JOIN(name, suffix) KS_K_JOIN2(name, suffix)
#define KS_K(name) KS_K_JOIN(name, KS_KERNEL_SUFFIX)

static inline void *KS_K(allocate)(ks_bench_run *run, ks_bench_target *target)
{
#if KS_KERNEL_TIMED
    uint64_t start = ks_timer_read();
    void *frame = KS_KERNEL_ALLOCATE(target);
    ks_op_samples_add(&run->op_samples, start, ks_timer_read());
#else
    void *frame = KS_KERNEL_ALLOCATE(target);
#endif
    if (frame == NULL)
        run->allocation_failures++;
    return frame;
}

static inline void KS_K(free)(ks_bench_run *run, ks_bench_target *target, void *frame)
{
#if KS_KERNEL_TIMED
    uint64_t start = ks_timer_read();
    KS_KERNEL_FREE(target, frame);
    ks_op_samples_add(&run->op_samples, start, ks_timer_read());
#else
    (void)run;
    KS_KERNEL_FREE(target, frame);
#endif
}

/* random_churn's and mixed_heap's step: free the slot's frame if it holds one, else fill it. */
static inline void KS_K(toggle)(ks_bench_run *run, ks_bench_target *target, void **slot, uint64_t unit)
{
    if (*slot != NULL) {
        KS_K(free)(run, target, *slot);
        *slot = NULL;
    } else {
        void *frame = KS_K(allocate)(run, target);
        if (frame != NULL)
            ks_frame_touch(frame, unit);
        *slot = frame;
    }
}

static void KS_K(lifo_pair)(ks_bench_run *run, uint64_t units)
{
    ks_bench_target *target = &run->targets[0];
    for (uint64_t unit = 0; unit < units; unit++) {
        void *frame = KS_K(allocate)(run, target);
        if (frame == NULL)
            continue;
        ks_frame_touch(frame, unit);
        KS_K(free)(run, target, frame);
    }
}

static void KS_K(fifo_batch)(ks_bench_run *run, uint64_t units)
{
    ks_bench_target *target = &run->targets[0];
    void **slots = run->slots;
    uint32_t batch = run->slot_count;
    for (uint64_t unit = 0; unit < units; unit++) {
        for (uint32_t index = 0; index < batch; index++) {
            void *frame = KS_K(allocate)(run, target);
            if (frame != NULL)
                ks_frame_touch(frame, index);
            slots[index] = frame;
        }
        for (uint32_t index = 0; index < batch; index++) {
            if (slots[index] != NULL)
                KS_K(free)(run, target, slots[index]);
            slots[index] = NULL;
        }
    }
}

static void KS_K(random_churn)(ks_bench_run *run, uint64_t units)
{
    ks_bench_target *target = &run->targets[0];
    void **slots = run->slots;
    uint32_t slot_count = run->slot_count;
    for (uint64_t unit = 0; unit < units; unit++)
        KS_K(toggle)(run, target, &slots[ks_bench_rng_below(&run->rng, slot_count)], unit);
}

static void KS_K(stream_ring)(ks_bench_run *run, uint64_t units)
{
    ks_bench_target *target = &run->targets[0];
    void **slots = run->slots;
    uint32_t window = run->slot_count;
    uint32_t oldest = run->ring_index;
    for (uint64_t unit = 0; unit < units; unit++) {
        if (slots[oldest] != NULL)
            KS_K(free)(run, target, slots[oldest]);
        void *frame = KS_K(allocate)(run, target);
        if (frame != NULL)
            ks_frame_touch(frame, unit);
        slots[oldest] = frame;
        oldest = oldest + 1 == window ? 0 : oldest + 1;
    }
    run->ring_index = oldest;
}

static void KS_K(mixed_heap)(ks_bench_run *run, uint64_t units)
{
    void **slots = run->slots;
    uint32_t per_target = run->slots_per_target;
    for (uint64_t unit = 0; unit < units; unit++) {
        uint32_t pin = ks_bench_rng_below(&run->rng, run->target_count);
        uint32_t slot = pin * per_target + ks_bench_rng_below(&run->rng, per_target);
        KS_K(toggle)(run, &run->targets[pin], &slots[slot], unit);
    }
}

static void KS_K(prodcons)(ks_bench_run *run, uint64_t units)
{
    ks_bench_target *target = &run->targets[0];
    if (run->producer) {
        for (uint64_t unit = 0; unit < units; unit++) {
#if KS_KERNEL_TIMED
            uint64_t start = ks_timer_read();
            void *frame = KS_KERNEL_ALLOCATE_SHARED(target);
            ks_op_samples_add(&run->op_samples, start, ks_timer_read());
#else
            void *frame = KS_KERNEL_ALLOCATE_SHARED(target);
#endif
            if (frame != NULL)
                ks_frame_touch(frame, unit);
            else
                run->allocation_failures++;
            ks_spsc_push_wait(run->queue, frame);
        }
        return;
    }
    for (uint64_t unit = 0; unit < units; unit++) {
        void *frame = ks_spsc_pop_wait(run->queue);
        if (frame == NULL)
            continue;
        ks_bench_consume(*(const uint64_t *)frame); /* the consumer reads what was produced */
#if KS_KERNEL_TIMED
        uint64_t start = ks_timer_read();
        KS_KERNEL_FREE_SHARED(target, frame);
        ks_op_samples_add(&run->op_samples, start, ks_timer_read());
#else
        KS_KERNEL_FREE_SHARED(target, frame);
#endif
    }
}

static void KS_K(all2all)(ks_bench_run *run, uint64_t units)
{
    ks_bench_target *target = &run->targets[0];
    ks_exchange *exchange = run->exchange;
    for (uint64_t unit = 0; unit < units; unit++) {
        void *frame = KS_K(allocate)(run, target);
        if (frame != NULL)
            ks_frame_touch(frame, unit);
        uint32_t slot = ks_bench_rng_below(&run->rng, exchange->slot_count);
        void *previous = atomic_exchange_explicit(&exchange->slots[slot].frame, frame, memory_order_acq_rel);
        if (previous != NULL)
            KS_K(free)(run, target, previous);
    }
}

static const ks_bench_kernel KS_K(kernels)[KS_WL_COUNT] = {
    [KS_WL_LIFO_PAIR] = KS_K(lifo_pair),       [KS_WL_FIFO_BATCH] = KS_K(fifo_batch),
    [KS_WL_RANDOM_CHURN] = KS_K(random_churn), [KS_WL_STREAM_RING] = KS_K(stream_ring),
    [KS_WL_MIXED_HEAP] = KS_K(mixed_heap),     [KS_WL_MT_PRIVATE] = KS_K(stream_ring),
    [KS_WL_MT_PRODCONS] = KS_K(prodcons),      [KS_WL_MT_ALL2ALL] = KS_K(all2all),
};

#undef KS_K
#undef KS_K_JOIN
#undef KS_K_JOIN2
#undef KS_KERNEL_SUFFIX
#undef KS_KERNEL_TIMED
#undef KS_KERNEL_ALLOCATE
#undef KS_KERNEL_FREE
#undef KS_KERNEL_ALLOCATE_SHARED
#undef KS_KERNEL_FREE_SHARED
