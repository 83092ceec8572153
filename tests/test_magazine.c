/*
 * test_magazine.c -- allocators/magazine.c: frames stranded in other threads' magazines stay
 * within reach of Allocate (the cache locks and the purge, see the allocator's top comment).
 *
 *  - fan_out_producer_never_starves: one producer allocating, three consumers freeing through a
 *    bounded queue, a pool small enough (32 frames against 3 * 2 * 14 rounds of magazine room)
 *    that every free frame can end up in consumers' partly filled magazines. Before the purge the
 *    producer's Allocate returned NULL for good there while the consumers waited for frames (a
 *    livelock); the test counts NULLs, never time: a run of PRODUCER_NULL_CAP NULLs in a row
 *    fails it, and since at most 1 + queue + consumers frames are ever live, the capacity promise
 *    (KS_CAP_GUARANTEED) allows no NULL at all.
 *  - frames_stranded_in_a_parked_thread_are_reachable: thread B frees every frame of the pool
 *    into its own magazines and parks on a condition variable, alive; thread A (the test's) then
 *    allocates the whole pool again.
 *
 * Both talk to the allocator through its dispatch table, with no verifier in between, so what
 * they see is the allocator's own behaviour.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "catalogue.h"
#include "ksalloc.h"

#define FAN_OUT_FRAMES 32u
#define FAN_OUT_CONSUMERS 3u
#define FAN_OUT_QUEUE_SLOTS 8u
#define FAN_OUT_HANDOFFS 60000u
#define PRODUCER_NULL_CAP (1u << 16) /* consecutive NULLs (with a yield between): generous */
#define STRANDED_FRAMES 16u          /* fits one thread's two magazines (2 * 14 rounds) */

static const ks_allocator_entry *magazine_entry(void)
{
    const ks_allocator_entry *entry = ks_catalogue_find("magazine");
    cr_assert_not_null(entry, "no 'magazine' in the catalogue");
    return entry;
}

static void *open_magazine(const ks_allocator_entry *entry, ULONG frames)
{
    KSALLOCATOR_FRAMING framing;
    memset(&framing, 0, sizeof framing);
    framing.Frames = frames;
    framing.FrameSize = 4096;
    framing.FileAlignment = FILE_64_BYTE_ALIGNMENT;
    framing.PoolType = NonPagedPool;
    void *context = NULL;
    cr_assert_eq(entry->dispatch->InitializeAllocator(NULL, &framing, &context), STATUS_SUCCESS);
    cr_assert_eq(framing.Frames, frames);
    return context;
}

static bool find_counter(const ks_allocator_entry *entry, void *context, const char *name, uint64_t *value)
{
    ks_counter counters[64];
    size_t count = entry->counters(context, counters, 64);
    for (size_t index = 0; index < count; index++) {
        if (strcmp(counters[index].name, name) == 0) {
            *value = counters[index].value;
            return true;
        }
    }
    return false;
}

static uint64_t counter_of(const ks_allocator_entry *entry, void *context, const char *name)
{
    uint64_t value = 0;
    cr_assert(find_counter(entry, context, name, &value), "magazine: no counter '%s'", name);
    return value;
}

static void expect_self_check(const ks_allocator_entry *entry, void *context)
{
    char why[512] = "";
    NTSTATUS status = entry->self_check(context, why, sizeof why);
    cr_assert_eq(status, STATUS_SUCCESS, "magazine self_check: %s", why);
}

/* ---- Fan-out: one producer, many consumers -------------------------------------------------- */

typedef struct fan_out {
    const ks_allocator_entry *entry;
    void *context;
    pthread_mutex_t lock;
    pthread_cond_t not_empty;
    pthread_cond_t not_full;
    void *slots[FAN_OUT_QUEUE_SLOTS];
    uint64_t tags[FAN_OUT_QUEUE_SLOTS];
    unsigned head, count;
    bool closed;        /* the producer is done (or gave up): consumers drain and leave */
    uint64_t consumed;  /* under lock */
    uint64_t bad_tags;  /* under lock: a frame whose contents changed between hand-off and free */
} fan_out;

static void *consumer_main(void *argument)
{
    fan_out *flow = argument;
    for (;;) {
        pthread_mutex_lock(&flow->lock);
        while (flow->count == 0 && !flow->closed)
            pthread_cond_wait(&flow->not_empty, &flow->lock);
        if (flow->count == 0) {
            pthread_mutex_unlock(&flow->lock);
            return NULL;
        }
        void *frame = flow->slots[flow->head];
        uint64_t tag = flow->tags[flow->head];
        flow->head = (flow->head + 1) % FAN_OUT_QUEUE_SLOTS;
        flow->count--;
        pthread_cond_signal(&flow->not_full);
        pthread_mutex_unlock(&flow->lock);
        uint64_t seen;
        memcpy(&seen, frame, sizeof seen);
        bool intact = seen == tag && ((unsigned char *)frame)[4095] == (unsigned char)tag;
        flow->entry->dispatch->Free(flow->context, frame);
        pthread_mutex_lock(&flow->lock);
        flow->consumed++;
        flow->bad_tags += !intact;
        pthread_mutex_unlock(&flow->lock);
    }
}

static void close_flow(fan_out *flow)
{
    pthread_mutex_lock(&flow->lock);
    flow->closed = true;
    pthread_cond_broadcast(&flow->not_empty);
    pthread_mutex_unlock(&flow->lock);
}

Test(magazine, fan_out_producer_never_starves, .timeout = 60)
{
    fan_out flow;
    memset(&flow, 0, sizeof flow);
    flow.entry = magazine_entry();
    flow.context = open_magazine(flow.entry, FAN_OUT_FRAMES);
    pthread_mutex_init(&flow.lock, NULL);
    pthread_cond_init(&flow.not_empty, NULL);
    pthread_cond_init(&flow.not_full, NULL);
    pthread_t consumers[FAN_OUT_CONSUMERS];
    for (unsigned c = 0; c < FAN_OUT_CONSUMERS; c++)
        cr_assert_eq(pthread_create(&consumers[c], NULL, consumer_main, &flow), 0);

    /* The producer is this thread. */
    uint64_t handoffs = 0, nulls = 0, longest_streak = 0;
    while (handoffs < FAN_OUT_HANDOFFS) {
        void *frame = NULL;
        uint64_t streak = 0;
        while ((frame = flow.entry->dispatch->Allocate(flow.context)) == NULL && streak < PRODUCER_NULL_CAP) {
            streak++;
            sched_yield();
        }
        nulls += streak;
        longest_streak = streak > longest_streak ? streak : longest_streak;
        if (frame == NULL)
            break; /* starved: stop the consumers before failing */
        uint64_t tag = handoffs + 1;
        memcpy(frame, &tag, sizeof tag);
        ((unsigned char *)frame)[4095] = (unsigned char)tag;
        pthread_mutex_lock(&flow.lock);
        while (flow.count == FAN_OUT_QUEUE_SLOTS)
            pthread_cond_wait(&flow.not_full, &flow.lock);
        unsigned tail = (flow.head + flow.count) % FAN_OUT_QUEUE_SLOTS;
        flow.slots[tail] = frame;
        flow.tags[tail] = tag;
        flow.count++;
        pthread_cond_signal(&flow.not_empty);
        pthread_mutex_unlock(&flow.lock);
        handoffs++;
    }
    close_flow(&flow);
    for (unsigned c = 0; c < FAN_OUT_CONSUMERS; c++)
        pthread_join(consumers[c], NULL);

    cr_assert_eq(handoffs, FAN_OUT_HANDOFFS,
                 "magazine: producer starved after %llu of %u hand-offs: Allocate returned NULL %u times in a row "
                 "with at most %u of %u frames live (the rest stranded in consumers' magazines)",
                 (unsigned long long)handoffs, FAN_OUT_HANDOFFS, PRODUCER_NULL_CAP,
                 1u + FAN_OUT_QUEUE_SLOTS + FAN_OUT_CONSUMERS, FAN_OUT_FRAMES);
    cr_assert_eq(flow.consumed, FAN_OUT_HANDOFFS, "consumers freed %llu frames",
                 (unsigned long long)flow.consumed);
    cr_assert_eq(flow.bad_tags, 0, "%llu frames changed between hand-off and free (handed out twice?)",
                 (unsigned long long)flow.bad_tags);
    /* At most 1 + queue + consumers (12) of 32 frames are ever live: the capacity promise allows
     * no NULL at all, not just no long run of them. */
    cr_assert_eq(nulls, 0, "magazine: %llu NULLs (longest run %llu) with at most %u of %u frames live",
                 (unsigned long long)nulls, (unsigned long long)longest_streak,
                 1u + FAN_OUT_QUEUE_SLOTS + FAN_OUT_CONSUMERS, FAN_OUT_FRAMES);
    expect_self_check(flow.entry, flow.context);
    cr_assert_eq(counter_of(flow.entry, flow.context, "frames_live"), 0);
    flow.entry->dispatch->DeleteAllocator(flow.context);
    pthread_mutex_destroy(&flow.lock);
    pthread_cond_destroy(&flow.not_empty);
    pthread_cond_destroy(&flow.not_full);
}

/* ---- Frames stranded in a parked thread's magazines ------------------------------------------ */

typedef struct parked {
    const ks_allocator_entry *entry;
    void *context;
    void **frames;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool freed;   /* B has freed every frame it was given and is parked */
    bool release; /* A lets B go */
} parked;

static void *parked_main(void *argument)
{
    parked *b = argument;
    for (unsigned index = 0; index < STRANDED_FRAMES; index++)
        b->entry->dispatch->Free(b->context, b->frames[index]);
    pthread_mutex_lock(&b->lock);
    b->freed = true;
    pthread_cond_broadcast(&b->cond);
    while (!b->release)
        pthread_cond_wait(&b->cond, &b->lock);
    pthread_mutex_unlock(&b->lock);
    return NULL; /* its cache goes to the depot in the key's destructor */
}

/* No .timeout: it cannot block (B only frees, then waits for A's release), and Criterion's runner
 * leaked 48 bytes (reported by LeakSanitizer in the asan build) whenever both tests of this suite
 * carried one and ran in parallel. */
Test(magazine, frames_stranded_in_a_parked_thread_are_reachable)
{
    parked b;
    memset(&b, 0, sizeof b);
    b.entry = magazine_entry();
    b.context = open_magazine(b.entry, STRANDED_FRAMES);
    void *given[STRANDED_FRAMES], *again[STRANDED_FRAMES + 1];
    for (unsigned index = 0; index < STRANDED_FRAMES; index++) {
        given[index] = b.entry->dispatch->Allocate(b.context);
        cr_assert_not_null(given[index], "frame %u of a fresh pool of %u", index, STRANDED_FRAMES);
    }
    cr_assert_null(b.entry->dispatch->Allocate(b.context), "a pool of %u handed out one more", STRANDED_FRAMES);
    b.frames = given;
    pthread_mutex_init(&b.lock, NULL);
    pthread_cond_init(&b.cond, NULL);
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, parked_main, &b), 0);
    pthread_mutex_lock(&b.lock);
    while (!b.freed)
        pthread_cond_wait(&b.cond, &b.lock);
    pthread_mutex_unlock(&b.lock);

    /* B is alive and idle with every frame in its own magazines (16 <= 2 * 14 rounds: it never
     * visited the depot). A must reach all of them. */
    uint64_t purges_before = 0;
    find_counter(b.entry, b.context, "purges", &purges_before); /* checked after the frames are */
    unsigned served = 0;
    while (served < STRANDED_FRAMES && (again[served] = b.entry->dispatch->Allocate(b.context)) != NULL)
        served++;
    /* Release B before asserting, so that a failure does not leave it parked. */
    pthread_mutex_lock(&b.lock);
    b.release = true;
    pthread_cond_broadcast(&b.cond);
    pthread_mutex_unlock(&b.lock);
    pthread_join(thread, NULL);

    cr_assert_eq(served, STRANDED_FRAMES,
                 "magazine: Allocate returned NULL after %u frames while %u were free in a parked thread's "
                 "magazines", served, STRANDED_FRAMES - served);
    cr_assert_gt(counter_of(b.entry, b.context, "purges"), purges_before, "served without a purge?");
    for (unsigned index = 0; index < STRANDED_FRAMES; index++)
        for (unsigned other = 0; other < index; other++)
            cr_assert_neq(again[index], again[other], "frame %p handed out twice", again[index]);
    /* Every frame is live again: the pool is exhausted, and still bounded. */
    again[STRANDED_FRAMES] = b.entry->dispatch->Allocate(b.context);
    cr_assert_null(again[STRANDED_FRAMES], "a pool of %u handed out %u", STRANDED_FRAMES, STRANDED_FRAMES + 1);
    for (unsigned index = 0; index < STRANDED_FRAMES; index++)
        b.entry->dispatch->Free(b.context, again[index]);
    expect_self_check(b.entry, b.context);
    cr_assert_eq(counter_of(b.entry, b.context, "frames_live"), 0);
    b.entry->dispatch->DeleteAllocator(b.context);
    pthread_mutex_destroy(&b.lock);
    pthread_cond_destroy(&b.cond);
}
