/*
 * mt.h -- the multi-threaded runner: N threads drive one or more allocator instances, bare or
 * through one verifier session, with frames moving between threads the way they do in a media
 * pipeline.
 *
 * Profiles:
 *  - private: every thread allocates, touches and frees only its own frames (a random walk
 *    around a per-thread target live set); the instance sees concurrency but no hand-offs.
 *  - producer-consumer: producers allocate and touch frames and push them into a bounded queue;
 *    consumers pop, touch (the verifier checks the pattern the producer wrote) and free them, as a
 *    capture thread hands frames to a render thread. Either N/2 producer -> consumer pairs (an odd
 *    thread joins the last pair as a second consumer) or, with fan_out, one producer feeding N - 1
 *    consumers through one queue.
 *  - all-to-all: every thread allocates, and hands frames to a random other thread's inbox; the
 *    receiver touches and frees them. Every thread frees frames that other threads allocated.
 *
 * Thread churn: with churn_ops > 0 each thread does churn_ops ops and exits; the runner joins it
 * and starts a new thread that carries on with the same state (its frames, its queue, its random
 * stream), so frames allocated by a thread that has exited are freed by one that did not exist
 * when they were allocated -- what per-thread caches must survive.
 *
 * Determinism: each thread slot draws its op choices from its own generator seeded from (seed,
 * slot), so the stream of choices per slot is a function of the seed; the interleaving of the
 * slots, and therefore which frame a choice acts on in the hand-off profiles, is not.
 *
 * Allocators without KS_CAP_THREAD_SAFE are refused when more than one thread, or a replaced
 * thread, would call an instance; with one thread and no churn the run happens on the caller's
 * thread, so an allocator with thread affinity (one that must be called on the thread that
 * created it) runs too. A KS_CAP_DMA allocator gets one emulated DMA device (harness/dma/, default
 * options) shared by all its instances; a report of its DMA checker fails the run.
 */
#ifndef KS_MT_H
#define KS_MT_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "ksalloc.h"
#include "workload.h"

struct ks_verifier;

#define KS_MT_MAX_THREADS 64u
#define KS_MT_MAX_INSTANCES 16u

typedef enum ks_mt_profile {
    KS_MT_PRIVATE,
    KS_MT_PRODUCER_CONSUMER,
    KS_MT_ALL_TO_ALL,
    KS_MT_PROFILE_COUNT
} ks_mt_profile;

/* "private", "producer-consumer", "all-to-all". */
const char *ks_mt_profile_name(ks_mt_profile profile);
/* Returns KS_MT_PROFILE_COUNT for an unknown name. */
ks_mt_profile ks_mt_profile_from_name(const char *name);
/* Fewest threads the profile runs with (1 for private, 2 for the hand-off profiles). */
unsigned ks_mt_profile_min_threads(ks_mt_profile profile);

typedef struct ks_mt_options {
    const ks_allocator_entry *entry; /* the allocator; must be set */
    KSALLOCATOR_FRAMING framing;     /* what every instance is initialised with */
    ks_mt_profile profile;
    unsigned threads;   /* thread slots running at once, 1..KS_MT_MAX_THREADS */
    unsigned instances; /* allocator instances, 1..KS_MT_MAX_INSTANCES (0 means 1); slot or queue
                           i uses instance i % instances */
    uint64_t ops;       /* op choices in the whole run, split evenly between the slots that make
                           them; a frame received from another thread adds its touch and free */
    uint64_t seed;
    uint64_t churn_ops; /* 0: threads live for the whole run; else each exits after this many ops */
    bool fan_out;       /* producer-consumer: one producer, N - 1 consumers on one queue */
    uint32_t queue_slots; /* bound of each hand-off queue and inbox; 0 = derived from Frames */
    struct ks_verifier *verifier; /* run every instance through this session, or NULL (bare) */
    bool stop_at_fault; /* stop soon after the verifier records its first fault */
    /* Marks every call into the allocator and every frame access (watch.h): the supervising
     * thread in slot 0, thread slot t in slot t + 1; NULL: none. */
    struct ks_watch *watch;
} ks_mt_options;

typedef struct ks_mt_stats {
    /* Sums over the slots, except peak_live (the largest live set one slot held at once; frames
     * in queues are counted by nobody) and elapsed_ns (wall time of the whole run). */
    ks_run_stats total;
    ks_run_stats per_slot[KS_MT_MAX_THREADS]; /* elapsed_ns: time the slot's threads ran */
    unsigned slots;
    uint64_t handoffs;        /* frames that crossed from one thread to another */
    uint64_t threads_started; /* including the replacements started by churn */
} ks_mt_stats;

/* Checks the options against the allocator's catalogue entry (thread safety, thread count)
 * without running anything. The message names the allocator and the option at fault. */
NTSTATUS ks_mt_check(const ks_mt_options *options, ks_error *err);

/* Initialises the instances (through the verifier when given), runs the profile, frees every
 * frame still live or queued, deletes the instances. Verifier faults do not fail the run: read
 * them from the verifier. Fails on bad options, InitializeAllocator failure, thread creation
 * failure, a producer starved of frames for good, or a DMA checker report (STATUS_DATA_ERROR). */
NTSTATUS ks_mt_run(const ks_mt_options *options, ks_mt_stats *stats, ks_error *err);

#endif
