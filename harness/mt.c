/*
 * mt.c -- the multi-threaded runner (mt.h): thread slots, bounded hand-off queues, thread churn.
 *
 * Design. A run has up to KS_MT_MAX_THREADS slots. A slot is the durable state of one logical
 * thread -- its role, its random stream, its live frames, its op budget, its statistics -- and is
 * driven by one OS thread at a time. A thread runs a slice of the slot's work (churn_ops ops, or
 * all of it) and exits; the caller's thread, acting as supervisor, joins it and starts a fresh
 * thread on the same slot until the slot is finished. Hand-offs go through bounded queues (one
 * mutex, two condition variables; a ring of frame references): one per producer group, or one
 * inbox per thread in all-to-all. A frame reference carries the instance that allocated the frame,
 * so whoever frees it frees it to the right instance. The mutex hand-off also gives the receiver a
 * happens-before edge over the sender's writes, so the verifier's pattern check on the receiving
 * side reads what the sender wrote, and TSan sees only the allocator's own races.
 *
 * Termination. Producers have an op budget; when a producer has spent it, it closes its share of
 * its queue, and consumers drain a queue until every producer on it has closed. In all-to-all every
 * peer, once it has spent its budget, closes its share of every inbox and keeps draining its own
 * until all peers have closed. A stop (first fault with stop_at_fault, or an error) wakes every
 * queue: a producer blocked on a full queue frees its frame itself, nobody is replaced, and the
 * supervisor frees what is left -- frames in slots and queues -- before DeleteAllocator.
 *
 * Cost: O(1) per op plus the allocator and the verifier; one queue lock per hand-off. Memory: one
 * frame reference per live or queued frame. Thread safety: ks_mt_run may be called from several
 * threads at once on different options; the allocator is called concurrently only as mt.h says.
 */
#include "mt.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "catalogue.h"
#include "dma/dma.h"
#include "verifier.h"
#include "watch.h"

#define TOUCH_STRIDE_BYTES 4096u
#define DEFAULT_UNBOUNDED_QUEUE_SLOTS 64u
#define DEFAULT_UNBOUNDED_LIVE_TARGET 32u
#define MAX_DERIVED_SLOTS 1024u
#define FAULT_POLL_EVERY_OPS 64u
/* Consecutive NULLs a producer tolerates (yielding between them) before it gives up: frames come
 * back as consumers free them, so a long run of NULLs means they never will. */
#define PRODUCER_MAX_NULL_STREAK (1u << 20)
#define OPS_PER_HANDOFF_FRAME 4u /* allocate + touch on the producer, touch + free on the consumer */

_Static_assert((FAULT_POLL_EVERY_OPS & (FAULT_POLL_EVERY_OPS - 1)) == 0, "fault poll is a mask");
_Static_assert(KS_MT_MAX_INSTANCES <= UINT32_MAX, "frame_ref.instance is a uint32_t");

typedef struct frame_ref {
    void *frame;
    uint32_t instance;
} frame_ref;

/* Bounded MPMC queue. Invariant: count <= capacity; item k sits at slots[(head + k) % capacity].
 * open counts the writers that have not closed; a reader sees the end when open == 0 and count
 * == 0. */
typedef struct frame_queue {
    pthread_mutex_t lock;
    pthread_cond_t not_empty;
    pthread_cond_t not_full;
    frame_ref *slots;
    uint32_t capacity;
    uint32_t head;
    uint32_t count;
    unsigned open;
} frame_queue;

typedef struct mt_instance {
    const KSALLOCATOR_DISPATCH *dispatch;
    void *context;
    KSPIN pin;
    ks_verifier_pin verifier_pin;
    KSALLOCATOR_FRAMING framing; /* what the allocator settled on */
    char name[24]; /* "instance" and a 32-bit number */
    bool initialized;
} mt_instance;

typedef enum slot_role { ROLE_PRIVATE, ROLE_PRODUCER, ROLE_CONSUMER, ROLE_PEER } slot_role;

struct mt_run;

typedef struct mt_slot {
    struct mt_run *run;
    unsigned index;
    slot_role role;
    uint32_t instance;      /* where this slot allocates */
    uint64_t rng_state;
    uint64_t budget_ops;    /* choices left (private, peer) or frames left to produce (producer) */
    bool sending_closed;    /* producer / peer: has closed its share of the queues */
    bool finished;
    frame_ref *live;        /* frames this slot holds */
    uint32_t live_count;
    uint32_t live_target;
    frame_queue *queue;     /* producer / consumer: its group's queue; peer: its inbox */
    ks_run_stats stats;
    uint64_t handoffs;
    uint8_t touch_value;
    ks_watch_slot *watch;   /* this slot's in options->watch, or NULL */
    /* Supervisor bookkeeping, under run->done_lock. */
    pthread_t thread;
    bool thread_running;
    bool thread_exited;
    NTSTATUS status;
    ks_error err;
} mt_slot;

typedef struct mt_run {
    const ks_mt_options *options;
    mt_instance instances[KS_MT_MAX_INSTANCES];
    unsigned instance_count;
    mt_slot slots[KS_MT_MAX_THREADS];
    unsigned slot_count;
    frame_queue queues[KS_MT_MAX_THREADS];
    unsigned queue_count;
    ks_dma_device *dma_device; /* for a KS_CAP_DMA allocator: one device all instances share */
    atomic_bool stop;
    pthread_mutex_t done_lock;
    pthread_cond_t done_cond;
    uint64_t threads_started;
} mt_run;

/* ---- Profiles -------------------------------------------------------------------------------- */

static const char *const profile_names[KS_MT_PROFILE_COUNT] = {"private", "producer-consumer", "all-to-all"};

const char *ks_mt_profile_name(ks_mt_profile profile)
{
    return (unsigned)profile < KS_MT_PROFILE_COUNT ? profile_names[profile] : "?";
}

ks_mt_profile ks_mt_profile_from_name(const char *name)
{
    for (unsigned p = 0; name != NULL && p < KS_MT_PROFILE_COUNT; p++)
        if (strcmp(name, profile_names[p]) == 0)
            return (ks_mt_profile)p;
    return KS_MT_PROFILE_COUNT;
}

unsigned ks_mt_profile_min_threads(ks_mt_profile profile)
{
    return profile == KS_MT_PRIVATE ? 1u : 2u;
}

/* ---- Random streams (splitmix64 to seed, xorshift64* to draw) ---------------------------------- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint32_t rng_below(uint64_t *state, uint32_t bound)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (uint32_t)(((x * 0x2545F4914F6CDD1Dull) >> 32) % bound);
}

static uint64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

/* ---- Bounded queues ---------------------------------------------------------------------------- */

static NTSTATUS queue_init(frame_queue *queue, uint32_t capacity, unsigned writers, ks_error *err)
{
    memset(queue, 0, sizeof *queue);
    queue->slots = calloc(capacity, sizeof *queue->slots);
    if (queue->slots == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "mt: out of memory for a queue of %u frames",
                            (unsigned)capacity);
    queue->capacity = capacity;
    queue->open = writers;
    pthread_mutex_init(&queue->lock, NULL);
    pthread_cond_init(&queue->not_empty, NULL);
    pthread_cond_init(&queue->not_full, NULL);
    return STATUS_SUCCESS;
}

static void queue_destroy(frame_queue *queue)
{
    if (queue->slots == NULL)
        return;
    pthread_mutex_destroy(&queue->lock);
    pthread_cond_destroy(&queue->not_empty);
    pthread_cond_destroy(&queue->not_full);
    free(queue->slots);
    queue->slots = NULL;
}

static bool stopped(mt_run *run)
{
    return atomic_load_explicit(&run->stop, memory_order_acquire);
}

/* Blocks while the queue is full (unless wait is false or the run stops); false if not queued. */
static bool queue_push(mt_run *run, frame_queue *queue, frame_ref ref, bool wait)
{
    pthread_mutex_lock(&queue->lock);
    while (wait && queue->count == queue->capacity && !stopped(run))
        pthread_cond_wait(&queue->not_full, &queue->lock);
    bool queued = queue->count < queue->capacity;
    if (queued) {
        queue->slots[(queue->head + queue->count) % queue->capacity] = ref;
        queue->count++;
        pthread_cond_signal(&queue->not_empty);
    }
    pthread_mutex_unlock(&queue->lock);
    return queued;
}

/* Blocks while the queue is empty and open (unless wait is false or the run stops); false at the
 * end (or when empty and not waiting). */
static bool queue_pop(mt_run *run, frame_queue *queue, frame_ref *ref, bool wait)
{
    pthread_mutex_lock(&queue->lock);
    while (wait && queue->count == 0 && queue->open > 0 && !stopped(run))
        pthread_cond_wait(&queue->not_empty, &queue->lock);
    bool popped = queue->count > 0;
    if (popped) {
        *ref = queue->slots[queue->head];
        queue->head = (queue->head + 1) % queue->capacity;
        queue->count--;
        pthread_cond_signal(&queue->not_full);
    }
    pthread_mutex_unlock(&queue->lock);
    return popped;
}

static void queue_close_one(frame_queue *queue)
{
    pthread_mutex_lock(&queue->lock);
    if (queue->open > 0)
        queue->open--;
    pthread_cond_broadcast(&queue->not_empty);
    pthread_mutex_unlock(&queue->lock);
}

/* Every waiter re-reads the stop flag: store it, then wake each queue under its lock so that no
 * waiter can miss the store between its check and its wait. */
static void run_stop(mt_run *run)
{
    atomic_store_explicit(&run->stop, true, memory_order_release);
    for (unsigned q = 0; q < run->queue_count; q++) {
        pthread_mutex_lock(&run->queues[q].lock);
        pthread_cond_broadcast(&run->queues[q].not_empty);
        pthread_cond_broadcast(&run->queues[q].not_full);
        pthread_mutex_unlock(&run->queues[q].lock);
    }
}

/* ---- Ops on frames ------------------------------------------------------------------------------ */

static void count_op(mt_slot *slot)
{
    slot->stats.ops++;
    const ks_mt_options *options = slot->run->options;
    if (options->verifier != NULL && options->stop_at_fault && (slot->stats.ops & (FAULT_POLL_EVERY_OPS - 1)) == 0 &&
        ks_verifier_fault_count(options->verifier) > 0 && !stopped(slot->run))
        run_stop(slot->run);
}

static bool frame_allocate(mt_slot *slot, frame_ref *ref)
{
    mt_instance *instance = &slot->run->instances[slot->instance];
    ks_watch_enter(slot->watch, KS_WATCH_ALLOCATE, slot->instance, slot->stats.ops);
    ref->frame = instance->dispatch->Allocate(instance->context);
    ks_watch_leave(slot->watch);
    ref->instance = slot->instance;
    count_op(slot);
    if (ref->frame == NULL) {
        slot->stats.allocation_failures++;
        return false;
    }
    slot->stats.allocations++;
    return true;
}

static void frame_free(mt_slot *slot, frame_ref ref)
{
    mt_instance *instance = &slot->run->instances[ref.instance];
    ks_watch_enter(slot->watch, KS_WATCH_FREE, ref.instance, slot->stats.ops);
    instance->dispatch->Free(instance->context, ref.frame);
    ks_watch_leave(slot->watch);
    slot->stats.frees++;
    count_op(slot);
}

/* Through the verifier: check the pattern and write a new one. Bare: write the first byte of
 * every page and the last byte, so a frame shorter than FrameSize faults as it would in a driver. */
static void frame_touch(mt_slot *slot, frame_ref ref)
{
    mt_instance *instance = &slot->run->instances[ref.instance];
    ks_watch_enter(slot->watch, KS_WATCH_FRAME_ACCESS, ref.instance, slot->stats.ops);
    if (slot->run->options->verifier != NULL) {
        ks_verifier_touch(instance->context, ref.frame);
    } else if (instance->framing.FrameSize > 0) {
        volatile uint8_t *bytes = ref.frame;
        uint32_t frame_bytes = instance->framing.FrameSize;
        for (uint32_t offset = 0; offset < frame_bytes - 1; offset += TOUCH_STRIDE_BYTES) {
            bytes[offset] = slot->touch_value;
            if (frame_bytes - offset <= TOUCH_STRIDE_BYTES)
                break;
        }
        bytes[frame_bytes - 1] = slot->touch_value++;
    }
    ks_watch_leave(slot->watch);
    slot->stats.touches++;
    count_op(slot);
}

static void live_push(mt_slot *slot, frame_ref ref)
{
    slot->live[slot->live_count++] = ref;
    if (slot->live_count > slot->stats.peak_live)
        slot->stats.peak_live = slot->live_count;
}

/* Removes a random live frame (order does not matter within a slot: swap with the last). */
static frame_ref live_take_random(mt_slot *slot)
{
    uint32_t k = rng_below(&slot->rng_state, slot->live_count);
    frame_ref ref = slot->live[k];
    slot->live[k] = slot->live[--slot->live_count];
    return ref;
}

static void live_free_all(mt_slot *slot)
{
    while (slot->live_count > 0)
        frame_free(slot, slot->live[--slot->live_count]);
}

/* ---- Roles: each runs until the slice is spent or the slot is finished ------------------------ */

static void private_slice(mt_slot *slot, uint64_t slice_ops)
{
    for (uint64_t start = slot->stats.ops; slot->stats.ops - start < slice_ops;) {
        if (slot->budget_ops == 0 || stopped(slot->run)) {
            live_free_all(slot);
            slot->finished = true;
            return;
        }
        slot->budget_ops--;
        uint32_t choice = rng_below(&slot->rng_state, 16);
        frame_ref ref;
        if (slot->live_count == 0 || (slot->live_count < slot->live_target && choice < 8)) {
            if (frame_allocate(slot, &ref))
                live_push(slot, ref);
        } else if (choice < 11) {
            frame_touch(slot, slot->live[rng_below(&slot->rng_state, slot->live_count)]);
        } else {
            frame_free(slot, live_take_random(slot));
        }
    }
}

static void close_sending(mt_slot *slot)
{
    mt_run *run = slot->run;
    if (slot->sending_closed)
        return;
    slot->sending_closed = true;
    if (slot->role == ROLE_PRODUCER) {
        queue_close_one(slot->queue);
        return;
    }
    for (unsigned q = 0; q < run->queue_count; q++)
        queue_close_one(&run->queues[q]);
}

/* Allocates with retries: a bounded allocator's frames come back as the consumers free them. */
static bool producer_allocate(mt_slot *slot, frame_ref *ref)
{
    for (uint32_t streak = 0; !stopped(slot->run); streak++) {
        if (frame_allocate(slot, ref))
            return true;
        if (streak == PRODUCER_MAX_NULL_STREAK) {
            pthread_mutex_lock(&slot->queue->lock);
            uint32_t queued = slot->queue->count;
            pthread_mutex_unlock(&slot->queue->lock);
            slot->status = ks_error_set(&slot->err, STATUS_INSUFFICIENT_RESOURCES,
                                        "mt: producer slot %u: Allocate on %s (allocator '%s') returned NULL %u "
                                        "times in a row with %u frames queued: frames freed on other threads "
                                        "never became allocatable again",
                                        slot->index, slot->run->instances[slot->instance].name,
                                        slot->run->options->entry->name, streak + 1, (unsigned)queued);
            run_stop(slot->run);
            return false;
        }
        sched_yield();
    }
    return false;
}

static void producer_slice(mt_slot *slot, uint64_t slice_ops)
{
    for (uint64_t start = slot->stats.ops; slot->stats.ops - start < slice_ops;) {
        frame_ref ref;
        if (slot->budget_ops == 0 || stopped(slot->run) || !producer_allocate(slot, &ref)) {
            close_sending(slot);
            slot->finished = true;
            return;
        }
        slot->budget_ops--;
        slot->stats.peak_live = 1; /* a producer holds one frame at a time */
        frame_touch(slot, ref);
        if (queue_push(slot->run, slot->queue, ref, true))
            slot->handoffs++;
        else
            frame_free(slot, ref); /* stopped with the queue full */
    }
}

/* Receives from queue until the slice is spent or the queue ends: touch (the verifier checks what
 * the sender wrote) and free. */
static void drain_slice(mt_slot *slot, uint64_t slice_ops, bool wait)
{
    for (uint64_t start = slot->stats.ops; slot->stats.ops - start < slice_ops;) {
        frame_ref ref;
        if (!queue_pop(slot->run, slot->queue, &ref, wait)) {
            if (wait)
                slot->finished = true;
            return;
        }
        frame_touch(slot, ref);
        frame_free(slot, ref);
    }
}

/* Hands a random live frame to a random other peer. A full inbox is not waited on (two peers
 * sending to each other would deadlock): the sender yields once so that the receiver, on a busy
 * machine, gets a chance to drain, and otherwise keeps the frame. */
static void peer_send(mt_slot *slot)
{
    mt_run *run = slot->run;
    uint32_t other = rng_below(&slot->rng_state, run->slot_count - 1);
    other += other >= slot->index;
    frame_ref ref = live_take_random(slot);
    bool sent = queue_push(run, run->slots[other].queue, ref, false);
    if (!sent) {
        sched_yield();
        sent = queue_push(run, run->slots[other].queue, ref, false);
    }
    if (sent)
        slot->handoffs++;
    else
        live_push(slot, ref);
}

static void peer_slice(mt_slot *slot, uint64_t slice_ops)
{
    uint64_t start = slot->stats.ops;
    while (!slot->sending_closed && slot->stats.ops - start < slice_ops) {
        if (slot->budget_ops == 0 || stopped(slot->run)) {
            live_free_all(slot);
            close_sending(slot);
            break;
        }
        drain_slice(slot, slice_ops - (slot->stats.ops - start), false);
        if (slot->stats.ops - start >= slice_ops)
            break;
        slot->budget_ops--;
        uint32_t choice = rng_below(&slot->rng_state, 16);
        frame_ref ref;
        /* Sending is the common way out, so most frames are freed by a thread that did not
         * allocate them; a few are freed at home. */
        if (slot->live_count == 0 || (slot->live_count < slot->live_target && choice < 8)) {
            if (frame_allocate(slot, &ref))
                live_push(slot, ref);
        } else if (choice < 13) {
            peer_send(slot);
        } else if (choice < 15) {
            frame_touch(slot, slot->live[rng_below(&slot->rng_state, slot->live_count)]);
        } else {
            frame_free(slot, live_take_random(slot));
        }
    }
    uint64_t spent = slot->stats.ops - start;
    if (slot->sending_closed && spent < slice_ops)
        drain_slice(slot, slice_ops - spent, true);
}

static void slot_run_slice(mt_slot *slot, uint64_t slice_ops)
{
    uint64_t start_ns = monotonic_ns();
    switch (slot->role) {
    case ROLE_PRIVATE: private_slice(slot, slice_ops); break;
    case ROLE_PRODUCER: producer_slice(slot, slice_ops); break;
    case ROLE_CONSUMER: drain_slice(slot, slice_ops, true); break;
    case ROLE_PEER: peer_slice(slot, slice_ops); break;
    }
    slot->stats.elapsed_ns += monotonic_ns() - start_ns;
}

/* ---- Threads and the supervisor ------------------------------------------------------------------ */

static void *slot_thread(void *arg)
{
    mt_slot *slot = arg;
    mt_run *run = slot->run;
    uint64_t churn_ops = run->options->churn_ops;
    slot_run_slice(slot, churn_ops ? churn_ops : UINT64_MAX);
    pthread_mutex_lock(&run->done_lock);
    slot->thread_exited = true;
    pthread_cond_signal(&run->done_cond);
    pthread_mutex_unlock(&run->done_lock);
    return NULL;
}

static NTSTATUS slot_start(mt_slot *slot, ks_error *err)
{
    slot->thread_exited = false;
    int rc = pthread_create(&slot->thread, NULL, slot_thread, slot);
    if (rc != 0)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "mt: slot %u: pthread_create failed: %s",
                            slot->index, strerror(rc));
    slot->thread_running = true;
    slot->run->threads_started++;
    return STATUS_SUCCESS;
}

/* A slot nobody will run again: close what it would have closed so the others can end; its frames
 * are freed by the teardown. */
static void slot_abandon(mt_slot *slot)
{
    if (slot->role == ROLE_PRODUCER || slot->role == ROLE_PEER)
        close_sending(slot);
    slot->finished = true;
}

/* Joins threads as they exit and replaces those whose slot is not finished, until none runs.
 * Returns the first error (thread creation); the run is stopped on it. */
static NTSTATUS supervise(mt_run *run, ks_error *err)
{
    NTSTATUS first = STATUS_SUCCESS;
    unsigned running = 0;
    for (unsigned i = 0; i < run->slot_count; i++) {
        NTSTATUS status = NT_SUCCESS(first) ? slot_start(&run->slots[i], err) : STATUS_UNSUCCESSFUL;
        if (NT_SUCCESS(status)) {
            running++;
            continue;
        }
        if (NT_SUCCESS(first)) {
            first = status;
            run_stop(run);
        }
        slot_abandon(&run->slots[i]);
    }
    while (running > 0) {
        pthread_mutex_lock(&run->done_lock);
        mt_slot *exited = NULL;
        while (exited == NULL) {
            for (unsigned i = 0; i < run->slot_count && exited == NULL; i++)
                if (run->slots[i].thread_running && run->slots[i].thread_exited)
                    exited = &run->slots[i];
            if (exited == NULL)
                pthread_cond_wait(&run->done_cond, &run->done_lock);
        }
        pthread_mutex_unlock(&run->done_lock);
        pthread_join(exited->thread, NULL);
        exited->thread_running = false;
        running--;
        if (exited->finished)
            continue;
        if (stopped(run)) {
            slot_abandon(exited);
            continue;
        }
        NTSTATUS status = slot_start(exited, NT_SUCCESS(first) ? err : NULL);
        if (NT_SUCCESS(status)) {
            running++;
            continue;
        }
        if (NT_SUCCESS(first))
            first = status;
        run_stop(run);
        slot_abandon(exited);
    }
    return first;
}

/* ---- Set-up and teardown ------------------------------------------------------------------------- */

NTSTATUS ks_mt_check(const ks_mt_options *options, ks_error *err)
{
    if (options == NULL || options->entry == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "mt: %s is NULL", options ? "options->entry" : "options");
    const char *name = options->entry->name ? options->entry->name : "?";
    if ((unsigned)options->profile >= KS_MT_PROFILE_COUNT)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "mt: unknown profile %d", (int)options->profile);
    if (options->threads == 0 || options->threads > KS_MT_MAX_THREADS)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "--threads %u: must be 1 to %u", options->threads,
                            KS_MT_MAX_THREADS);
    if (options->threads < ks_mt_profile_min_threads(options->profile))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "profile '%s' needs --threads >= %u (got %u)",
                            ks_mt_profile_name(options->profile), ks_mt_profile_min_threads(options->profile),
                            options->threads);
    if (options->instances > KS_MT_MAX_INSTANCES)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "mt: %u instances: at most %u", options->instances,
                            KS_MT_MAX_INSTANCES);
    if (options->threads > 1 && !(options->entry->caps & KS_CAP_THREAD_SAFE))
        return ks_error_set(err, STATUS_NOT_SUPPORTED,
                            "allocator '%s' is not thread-safe: --threads needs KS_CAP_THREAD_SAFE", name);
    return STATUS_SUCCESS;
}

static NTSTATUS open_instance(mt_run *run, unsigned index, ks_error *err)
{
    const ks_mt_options *options = run->options;
    mt_instance *instance = &run->instances[index];
    snprintf(instance->name, sizeof instance->name, "instance%u", index);
    instance->pin = (KSPIN){.abi_version = KSALLOC_ABI_VERSION, .id = index, .name = instance->name,
                            .framing = options->framing, .host_private = run};
    if (run->dma_device != NULL)
        instance->pin.dma_adapter = ks_dma_device_adapter(run->dma_device);
    instance->framing = options->framing;
    void *initial_context = &instance->pin;
    instance->dispatch = options->entry->dispatch;
    if (options->verifier != NULL) {
        instance->verifier_pin = (ks_verifier_pin){options->verifier, options->entry, &instance->pin};
        initial_context = &instance->verifier_pin;
        instance->dispatch = &ks_verifier_dispatch;
    }
    ks_watch_slot *watch = ks_watch_slot_at(options->watch, 0);
    if (index == 0)
        ks_watch_name_pin(options->watch, 0, options->entry->name);
    ks_watch_enter(watch, KS_WATCH_INITIALIZE, index, 0);
    NTSTATUS status = instance->dispatch->InitializeAllocator(initial_context, &instance->framing, &instance->context);
    ks_watch_leave(watch);
    if (NT_SUCCESS(status) && instance->context == NULL) /* no call may reach it: the run stops */
        return ks_error_set(err, STATUS_INVALID_HANDLE,
                            "%s (allocator '%s'): InitializeAllocator returned STATUS_SUCCESS with *Context left NULL",
                            instance->name, options->entry->name);
    char hint[160];
    if (!NT_SUCCESS(status))
        return ks_error_set(err, status,
                            "%s (allocator '%s', frames=%u frame_bytes=%u align_mask=0x%x): InitializeAllocator "
                            "failed with %s%s",
                            instance->name, options->entry->name, (unsigned)options->framing.Frames,
                            (unsigned)options->framing.FrameSize, (unsigned)options->framing.FileAlignment,
                            ks_status_name(status),
                            ks_framing_limit_hint(options->entry, &options->framing, hint, sizeof hint));
    instance->initialized = true;
    return STATUS_SUCCESS;
}

/* share of a bounded instance's Frames for each of sharers, or fallback when unbounded. */
static uint32_t share_of_frames(const mt_run *run, unsigned sharers, uint32_t fallback)
{
    uint32_t frames = run->instances[0].framing.Frames;
    if (frames == 0)
        return fallback;
    uint32_t share = frames / (sharers ? sharers : 1u);
    return share == 0 ? 1u : share > MAX_DERIVED_SLOTS ? MAX_DERIVED_SLOTS : share;
}

static unsigned per_instance(unsigned users, unsigned instances)
{
    return (users + instances - 1) / instances;
}

/* Roles and queues of producer-consumer: pairs (producer 2p, consumer 2p + 1; an odd last thread
 * is one more consumer of the last queue) or one producer fanning out to all others. */
static void assign_producer_consumer(mt_run *run, uint64_t *producers)
{
    unsigned threads = run->slot_count;
    run->queue_count = run->options->fan_out ? 1u : threads / 2;
    *producers = run->options->fan_out ? 1u : run->queue_count;
    for (unsigned t = 0; t < threads; t++) {
        mt_slot *slot = &run->slots[t];
        unsigned queue = run->options->fan_out ? 0u : (t / 2 < run->queue_count ? t / 2 : run->queue_count - 1);
        slot->role = (run->options->fan_out ? t == 0 : (t % 2 == 0 && t / 2 < run->queue_count)) ? ROLE_PRODUCER
                                                                                                : ROLE_CONSUMER;
        slot->queue = &run->queues[queue];
        slot->instance = queue % run->instance_count;
    }
}

static NTSTATUS setup_slots(mt_run *run, ks_error *err)
{
    const ks_mt_options *options = run->options;
    uint64_t seed_state = options->seed;
    uint64_t choosers = run->slot_count;
    uint32_t live_target = 0;
    uint32_t capacity = options->queue_slots;
    if (options->profile == KS_MT_PRODUCER_CONSUMER) {
        assign_producer_consumer(run, &choosers);
        if (capacity == 0)
            capacity = share_of_frames(run, 2 * per_instance(run->queue_count, run->instance_count),
                                       DEFAULT_UNBOUNDED_QUEUE_SLOTS);
    } else {
        unsigned sharers = per_instance(run->slot_count, run->instance_count);
        bool peers = options->profile == KS_MT_ALL_TO_ALL;
        live_target = share_of_frames(run, peers ? 2 * sharers : sharers, DEFAULT_UNBOUNDED_LIVE_TARGET);
        run->queue_count = peers ? run->slot_count : 0;
        if (capacity == 0)
            capacity = live_target;
        for (unsigned t = 0; t < run->slot_count; t++) {
            run->slots[t].role = peers ? ROLE_PEER : ROLE_PRIVATE;
            run->slots[t].instance = t % run->instance_count;
            run->slots[t].queue = peers ? &run->queues[t] : NULL;
        }
    }
    uint64_t budget = options->ops / (options->profile == KS_MT_PRODUCER_CONSUMER ? OPS_PER_HANDOFF_FRAME : 1u);
    for (unsigned q = 0; q < run->queue_count; q++) {
        unsigned writers = options->profile == KS_MT_ALL_TO_ALL ? run->slot_count : 1u;
        NTSTATUS status = queue_init(&run->queues[q], capacity, writers, err);
        if (!NT_SUCCESS(status))
            return status;
    }
    for (unsigned t = 0; t < run->slot_count; t++) {
        mt_slot *slot = &run->slots[t];
        slot->run = run;
        slot->index = t;
        slot->watch = ks_watch_slot_at(options->watch, t + 1);
        slot->rng_state = splitmix64(&seed_state) | 1u; /* xorshift needs a non-zero state */
        slot->live_target = live_target;
        slot->status = STATUS_SUCCESS;
        bool chooses = slot->role != ROLE_CONSUMER;
        slot->budget_ops = chooses ? budget / choosers + (t < budget % choosers ? 1u : 0u) : 0u;
        if (live_target > 0 && (slot->live = calloc(live_target, sizeof *slot->live)) == NULL)
            return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "mt: out of memory for slot %u", t);
    }
    return STATUS_SUCCESS;
}

/* A KS_CAP_DMA allocator maps its frames through a device's adapter: one emulated device with
 * the default options (the same the engine gives such a pin), shared by every instance. */
static NTSTATUS create_dma_device(mt_run *run, ks_error *err)
{
    if (!(run->options->entry->caps & KS_CAP_DMA))
        return STATUS_SUCCESS;
    ks_dma_options options;
    ks_dma_options_init(&options);
    ks_error cause;
    ks_error_clear(&cause);
    NTSTATUS status = ks_dma_device_create(&options, &run->dma_device, &cause);
    if (!NT_SUCCESS(status))
        return ks_error_set(err, status, "mt: allocator '%s': DMA device: %s", run->options->entry->name,
                            cause.message);
    return STATUS_SUCCESS;
}

/* Stops the device (its leak checks run then) and destroys it; STATUS_DATA_ERROR naming the first
 * report when the DMA checker made any. */
static NTSTATUS destroy_dma_device(ks_dma_device *device, const char *allocator, ks_error *err)
{
    if (device == NULL)
        return STATUS_SUCCESS;
    ks_dma_device_stop(device);
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    uint64_t count = ks_dma_report_count(adapter);
    NTSTATUS status = STATUS_SUCCESS;
    if (count > 0) {
        ks_dma_report report;
        bool kept = ks_dma_report_at(adapter, 0, &report);
        status = ks_error_set(err, STATUS_DATA_ERROR, "mt: allocator '%s': %llu DMA-debug report%s; first: %s: %s",
                              allocator, (unsigned long long)count, count == 1 ? "" : "s",
                              kept ? ks_dma_rule_name(report.rule) : "?",
                              kept ? report.message : "(not kept)");
    }
    ks_dma_device_destroy(device);
    return status;
}

/* Frees what slots and queues still hold, deletes the instances, releases the queues and the DMA
 * device. Returns a DMA checker report as an error (the only failure teardown can find). */
static void teardown_free(mt_run *run, ks_watch_slot *watch, frame_ref ref)
{
    ks_watch_enter(watch, KS_WATCH_FREE, ref.instance, 0);
    run->instances[ref.instance].dispatch->Free(run->instances[ref.instance].context, ref.frame);
    ks_watch_leave(watch);
}

static NTSTATUS teardown(mt_run *run, ks_error *err)
{
    ks_watch_slot *watch = ks_watch_slot_at(run->options->watch, 0);
    for (unsigned t = 0; t < run->slot_count; t++) {
        mt_slot *slot = &run->slots[t];
        while (slot->live_count > 0)
            teardown_free(run, watch, slot->live[--slot->live_count]);
        free(slot->live);
    }
    for (unsigned q = 0; q < run->queue_count; q++) {
        frame_ref ref;
        if (run->queues[q].slots == NULL)
            continue; /* set-up failed before this queue */
        run->queues[q].open = 0;
        while (queue_pop(run, &run->queues[q], &ref, false))
            teardown_free(run, watch, ref);
        queue_destroy(&run->queues[q]);
    }
    for (unsigned i = 0; i < run->instance_count; i++) {
        if (!run->instances[i].initialized)
            continue;
        ks_watch_enter(watch, KS_WATCH_DELETE, i, 0);
        run->instances[i].dispatch->DeleteAllocator(run->instances[i].context);
        ks_watch_leave(watch);
    }
    NTSTATUS status = destroy_dma_device(run->dma_device, run->options->entry->name, err);
    pthread_mutex_destroy(&run->done_lock);
    pthread_cond_destroy(&run->done_cond);
    free(run);
    return status;
}

static void merge_stats(const mt_run *run, uint64_t elapsed_ns, ks_mt_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    stats->slots = run->slot_count;
    stats->threads_started = run->threads_started;
    for (unsigned t = 0; t < run->slot_count; t++) {
        const mt_slot *slot = &run->slots[t];
        stats->per_slot[t] = slot->stats;
        stats->total.ops += slot->stats.ops;
        stats->total.allocations += slot->stats.allocations;
        stats->total.allocation_failures += slot->stats.allocation_failures;
        stats->total.frees += slot->stats.frees;
        stats->total.touches += slot->stats.touches;
        if (slot->stats.peak_live > stats->total.peak_live)
            stats->total.peak_live = slot->stats.peak_live;
        stats->handoffs += slot->handoffs;
    }
    stats->total.elapsed_ns = elapsed_ns;
}

/* The first error a slot recorded, if any. */
static NTSTATUS slot_error(const mt_run *run, ks_error *err)
{
    for (unsigned t = 0; t < run->slot_count; t++)
        if (!NT_SUCCESS(run->slots[t].status)) {
            if (err != NULL)
                *err = run->slots[t].err;
            return run->slots[t].status;
        }
    return STATUS_SUCCESS;
}

static NTSTATUS run_threads(mt_run *run, ks_error *err)
{
    const ks_mt_options *options = run->options;
    if (run->slot_count == 1 && options->churn_ops == 0) {
        /* On the caller's thread, so that an allocator bound to its creating thread runs too. */
        run->threads_started = 0;
        slot_run_slice(&run->slots[0], UINT64_MAX);
        return STATUS_SUCCESS;
    }
    return supervise(run, err);
}

NTSTATUS ks_mt_run(const ks_mt_options *options, ks_mt_stats *stats, ks_error *err)
{
    if (stats != NULL)
        memset(stats, 0, sizeof *stats);
    NTSTATUS status = ks_mt_check(options, err);
    if (!NT_SUCCESS(status))
        return status;
    mt_run *run = calloc(1, sizeof *run);
    if (run == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "mt: out of memory");
    run->options = options;
    run->instance_count = options->instances ? options->instances : 1u;
    run->slot_count = options->threads;
    atomic_init(&run->stop, false);
    pthread_mutex_init(&run->done_lock, NULL);
    pthread_cond_init(&run->done_cond, NULL);
    status = create_dma_device(run, err);
    for (unsigned i = 0; NT_SUCCESS(status) && i < run->instance_count; i++)
        status = open_instance(run, i, err);
    if (NT_SUCCESS(status))
        status = setup_slots(run, err);
    uint64_t start_ns = monotonic_ns();
    if (NT_SUCCESS(status))
        status = run_threads(run, err);
    if (NT_SUCCESS(status))
        status = slot_error(run, err);
    if (stats != NULL)
        merge_stats(run, monotonic_ns() - start_ns, stats);
    NTSTATUS teardown_status = teardown(run, NT_SUCCESS(status) ? err : NULL);
    return NT_SUCCESS(status) ? teardown_status : status;
}
