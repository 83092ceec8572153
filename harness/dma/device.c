/*
 * device.c -- the device engine: a DMA controller on its own thread, driven like a dmaengine
 * channel (prepare/submit -> issue pending -> completion callback) or a ring-buffer NIC.
 *
 * Ring: a power-of-two array of descriptors indexed by cookie (1, 2, ...). Submitters fill
 * entries under a mutex and advance `prepared`; the doorbell (issue_pending) publishes
 * `issued` = prepared with release order; the engine consumes entries up to `issued` in order,
 * runs each (copy, fill with the pattern, or checksum, over device addresses resolved through the
 * adapter, with the adapter lock held so nothing is unmapped under it), calls the completion
 * callback -- the interrupt -- and then publishes `completed`, so a waiter that sees its cookie
 * complete also sees everything the callback did. A slot is reused only once its cookie has
 * completed. Descriptors with up to four segments a side are stored inline; longer lists are
 * copied to the heap at submit.
 *
 * Sleeping: the engine spins briefly, then sleeps on a condition variable after announcing it
 * (engine_sleeping); the doorbell stores `issued` before reading engine_sleeping, the engine
 * stores engine_sleeping before re-reading `issued` -- both sequentially consistent, so one of
 * them sees the other and no doorbell is lost. Waiters use the same handshake with `wake_at`, the
 * smallest cookie a sleeping waiter wants: the engine takes the lock and broadcasts only when it
 * completes that cookie, not after every descriptor, so a waiter sleeping on the last of a batch
 * costs the engine nothing until the batch is done.
 *
 * Model: each descriptor occupies the device for latency_ns + bytes / bandwidth; the engine
 * holds the completion until then (a descriptor that took longer on the host is not delayed
 * further). Faults are drawn per descriptor from the seed, so a run is reproducible: a device
 * error or an injected IOMMU fault stops the transfer at a random byte (everything before it is
 * done, nothing after it), a stall holds the descriptor for stall_ns first. Whatever happens,
 * the device only ever touches memory through ks_dma_adapter_resolve, which confines it to live
 * mappings. terminate_all aborts what has not started and waits for what has (dmaengine's
 * terminate + synchronize); stop and destroy do the same and wait for the engine to leave.
 *
 * Threads: the engine loop runs on a worker from a small process-wide pool (at most
 * POOL_IDLE_MAX parked) rather than a thread made and joined per device: under ASan a thread's
 * creation and exit (its stack, TLS and shadow mapped, read from /proc and unmapped) cost more
 * than a whole short fuzz input. A worker carries nothing from one device to the next -- every
 * bit of engine state lives in the device, and the worker only calls engine_main(device) -- so
 * which thread runs a device cannot change any outcome. "Stop" waits (pool_lock, pool_done) until
 * the worker has left engine_main and will not touch the device again. After fork the child's
 * pool is emptied (its workers did not survive the fork).
 *
 * Inline engine (option inline=1): no worker at all. The thread that rings the doorbell runs
 * every issued descriptor before issue_pending returns -- a device that completes the moment it is
 * told to -- and wait, terminate_all and stop run whatever is issued and not yet run the same way.
 * Descriptors still run one at a time in cookie order (inline_lock), through the same code
 * (complete_next), drawing the same faults from the same seed, so a run's outcomes are those of the
 * threaded engine; what changes is timing only: a wait never times out (the waiter runs the
 * descriptor itself, stall and modelled latency included) and callbacks run on a thread that rang
 * or waited, not on a worker. Why: the fuzz targets issue one descriptor at a time and wait for it, and handing each
 * to another thread and back cost two futex wakes and two context switches -- under ASan on this
 * VM a fifth of a DMA fuzz target's time and most of its wall time -- and made the interleaving,
 * not the input, decide when a callback ran. As with the threaded engine, a callback must not
 * wait for a later cookie.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dma_internal.h"

#define INLINE_SEGMENTS 4u
#define DEFAULT_RING_ENTRIES 256u
#define MAX_RING_ENTRIES 65536u
#define DEFAULT_STALL_NS 1000000u
#define ENGINE_SPIN_ROUNDS 256u
#define WAITER_SPIN_ROUNDS 64u
#define SPIN_SLEEP_THRESHOLD_NS 50000u
#define FAULTS_KEPT 64u
#define PPM 1000000u
#define ENGINE_WHO "device engine"

typedef struct ring_entry {
    uint64_t cookie;
    ks_dma_op op;
    uint32_t src_count, dst_count;
    ks_dma_segment *src, *dst; /* the inline arrays or heap copies */
    ks_dma_segment inline_src[INLINE_SEGMENTS], inline_dst[INLINE_SEGMENTS];
    uint64_t pattern_seed;
    ks_dma_callback callback;
    void *context;
} ring_entry;

/* Producer-written, engine-written and rarely-written fields sit on separate cache lines, so a
 * submitter and the engine do not bounce one line per descriptor. */
#define CACHE_LINE_BYTES 64u

struct ks_dma_device {
    /* Fixed at creation. */
    ks_dma_adapter *adapter;
    ks_dma_options options;
    unsigned fault_kinds;
    uint64_t stall_ns;
    ring_entry *ring;
    uint32_t ring_mask;
    struct engine_worker *worker; /* reserved at creation; NULL once given back */
    bool engine_running;          /* pool_lock: the worker runs engine_main for this device */
    /* Submitters' line. */
    _Alignas(CACHE_LINE_BYTES) pthread_mutex_t submit_lock;
    bool stopped;                 /* submit_lock */
    bool engine_handed;           /* submit_lock: the worker was given the device */
    _Atomic uint64_t prepared;    /* last cookie submitted; written under submit_lock */
    _Atomic uint64_t issued;      /* last cookie the doorbell released */
    _Atomic uint64_t stat_submitted;
    /* The engine's line: it alone writes these. */
    _Alignas(CACHE_LINE_BYTES) _Atomic uint64_t completed; /* last cookie whose callback returned */
    uint64_t random_state;
    uint64_t busy_until_ns;
    _Atomic uint64_t stat_completed, stat_aborted, stat_bytes;
    _Atomic uint64_t stat_device_errors, stat_iommu_faults, stat_stalls, stat_access_faults, stat_sleeps;
    /* Rarely written. */
    _Alignas(CACHE_LINE_BYTES) _Atomic uint64_t abort_upto; /* cookies up to this complete as ABORTED */
    _Atomic bool stopping;
    _Atomic int engine_sleeping;
    _Atomic uint64_t wake_at;     /* smallest cookie a sleeping waiter wants; UINT64_MAX for none */
    pthread_mutex_t wake_lock;
    pthread_cond_t engine_wake, waiter_wake;
    pthread_mutex_t fault_lock;
    ks_dma_device_fault faults[FAULTS_KEPT];
    uint64_t fault_count;
    pthread_mutex_t inline_lock;        /* inline engine: held by the thread running descriptors */
    _Atomic(const void *) inline_owner; /* that thread's inline_thread_token, NULL when none */
};

uint64_t ks_dma_now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Each counter has one writer at a time (the engine, or a submitter under submit_lock): a plain
 * load and store, atomic only so that readers on other threads see whole values. */
static void add_stat(_Atomic uint64_t *counter, uint64_t amount)
{
    atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + amount, memory_order_relaxed);
}

static struct timespec deadline_timespec(uint64_t deadline_ns)
{
    return (struct timespec){.tv_sec = (time_t)(deadline_ns / 1000000000u), .tv_nsec = (long)(deadline_ns % 1000000000u)};
}

const char *ks_dma_result_name(ks_dma_result result)
{
    switch (result) {
    case KS_DMA_RESULT_OK:
        return "ok";
    case KS_DMA_RESULT_DEVICE_ERROR:
        return "device-error";
    case KS_DMA_RESULT_IOMMU_FAULT:
        return "iommu-fault";
    case KS_DMA_RESULT_ACCESS_ERROR:
        return "access-error";
    case KS_DMA_RESULT_ABORTED:
        return "aborted";
    }
    return "invalid-result";
}

/* ---- the engine: running one descriptor ------------------------------------------------------ */

typedef struct cursor {
    const ks_dma_segment *segments;
    uint32_t count, index;
    uint64_t offset;
} cursor;

static ks_dma_addr cursor_bus(const cursor *at)
{
    return at->segments[at->index].bus_addr + at->offset;
}

static uint64_t cursor_left(const cursor *at)
{
    return at->segments[at->index].bytes - at->offset;
}

static void cursor_advance(cursor *at, uint64_t bytes)
{
    at->offset += bytes;
    while (at->index < at->count && at->offset == at->segments[at->index].bytes) {
        at->index++;
        at->offset = 0;
    }
}

static uint64_t segments_total(const ks_dma_segment *segments, uint32_t count)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < count; i++)
        total += segments[i].bytes;
    return total;
}

typedef struct run_state {
    const ring_entry *entry;
    uint64_t total;
    uint64_t stop_at; /* injected fault offset, or UINT64_MAX */
    ks_dma_checksum_state checksum;
    ks_dma_completion *completion;
} run_state;

/* One step: resolves the next run of the source and/or destination and moves it. Returns the
 * bytes moved, 0 with completion->result set on a fault. */
static uint64_t run_step(ks_dma_device *device, run_state *state, cursor *src, cursor *dst, uint64_t limit)
{
    const ring_entry *entry = state->entry;
    ks_dma_access from = {0}, to = {0};
    if (entry->op != KS_DMA_OP_FILL) {
        from = ks_dma_adapter_resolve(device->adapter, cursor_bus(src), cursor_left(src) < limit ? cursor_left(src) : limit,
                                      false, ENGINE_WHO);
        if (from.fault != KS_DMA_RESULT_OK) {
            state->completion->result = from.fault;
            state->completion->fault_bus_addr = cursor_bus(src);
            return 0;
        }
        limit = from.bytes;
    }
    if (entry->op != KS_DMA_OP_CHECKSUM) {
        to = ks_dma_adapter_resolve(device->adapter, cursor_bus(dst), cursor_left(dst) < limit ? cursor_left(dst) : limit,
                                    true, ENGINE_WHO);
        if (to.fault != KS_DMA_RESULT_OK) {
            state->completion->result = to.fault;
            state->completion->fault_bus_addr = cursor_bus(dst);
            return 0;
        }
        limit = to.bytes;
    }
    uint64_t done = state->completion->bytes_done;
    if (entry->op == KS_DMA_OP_COPY)
        memmove(to.host, from.host, limit);
    else if (entry->op == KS_DMA_OP_FILL)
        ks_dma_pattern_fill(to.host, limit, entry->pattern_seed, done);
    else
        ks_dma_checksum_update(&state->checksum, from.host, limit);
    return limit;
}

/* Runs the transfer up to its end or state->stop_at; adapter lock held. */
static void run_transfer(ks_dma_device *device, run_state *state)
{
    const ring_entry *entry = state->entry;
    cursor src = {.segments = entry->src, .count = entry->src_count};
    cursor dst = {.segments = entry->dst, .count = entry->dst_count};
    ks_dma_completion *completion = state->completion;
    uint64_t end = state->stop_at < state->total ? state->stop_at : state->total;
    while (completion->bytes_done < end) {
        uint64_t moved = run_step(device, state, &src, &dst, end - completion->bytes_done);
        if (moved == 0)
            return;
        completion->bytes_done += moved;
        if (entry->op != KS_DMA_OP_FILL)
            cursor_advance(&src, moved);
        if (entry->op != KS_DMA_OP_CHECKSUM)
            cursor_advance(&dst, moved);
    }
    if (state->stop_at >= state->total)
        return;
    /* The injected fault strikes here: at the next byte either side would touch. */
    bool on_destination = entry->op != KS_DMA_OP_CHECKSUM;
    completion->fault_bus_addr = on_destination ? cursor_bus(&dst) : cursor_bus(&src);
    completion->injected = true;
}

/* Draws this descriptor's fault from the seed: 0 for none, else one KS_DMA_FAULT_* bit. */
static unsigned draw_fault(ks_dma_device *device)
{
    uint64_t draw = ks_dma_random_next(&device->random_state);
    if (device->options.fault_rate_ppm == 0 || draw % PPM >= device->options.fault_rate_ppm)
        return 0;
    unsigned kinds[3], count = 0;
    for (unsigned bit = KS_DMA_FAULT_DEVICE_ERROR; bit <= KS_DMA_FAULT_STALL; bit <<= 1)
        if ((device->fault_kinds & bit) != 0)
            kinds[count++] = bit;
    return count == 0 ? 0 : kinds[ks_dma_random_next(&device->random_state) % count];
}

static bool abort_requested(ks_dma_device *device, uint64_t cookie)
{
    return cookie <= atomic_load_explicit(&device->abort_upto, memory_order_acquire) ||
           atomic_load_explicit(&device->stopping, memory_order_acquire);
}

/* Holds the engine until deadline_ns, spinning when it is near; returns early on abort or stop. */
static void engine_sleep_until(ks_dma_device *device, uint64_t cookie, uint64_t deadline_ns)
{
    for (uint64_t now = ks_dma_now_ns(); now < deadline_ns; now = ks_dma_now_ns()) {
        if (abort_requested(device, cookie))
            return;
        if (deadline_ns - now < SPIN_SLEEP_THRESHOLD_NS) {
            cpu_relax();
            continue;
        }
        struct timespec until = deadline_timespec(deadline_ns);
        pthread_mutex_lock(&device->wake_lock);
        if (!abort_requested(device, cookie))
            pthread_cond_timedwait(&device->engine_wake, &device->wake_lock, &until);
        pthread_mutex_unlock(&device->wake_lock);
    }
}

static void log_fault(ks_dma_device *device, const ks_dma_completion *completion)
{
    pthread_mutex_lock(&device->fault_lock);
    if (device->fault_count < FAULTS_KEPT)
        device->faults[device->fault_count] = (ks_dma_device_fault){
            .cookie = completion->cookie, .result = completion->result, .bus_addr = completion->fault_bus_addr,
            .injected = completion->injected};
    device->fault_count++;
    pthread_mutex_unlock(&device->fault_lock);
}

/* Turns an injected fault that struck into its result, recording an IOMMU fault in the log. */
static void settle_injected(ks_dma_device *device, unsigned fault, bool write, ks_dma_completion *completion)
{
    if (fault == KS_DMA_FAULT_DEVICE_ERROR) {
        completion->result = KS_DMA_RESULT_DEVICE_ERROR;
        add_stat(&device->stat_device_errors, 1);
        return;
    }
    add_stat(&device->stat_iommu_faults, 1);
    ks_iommu *iommu = device->adapter->iommu;
    if (iommu == NULL) {
        completion->result = KS_DMA_RESULT_ACCESS_ERROR; /* a bus error: there is no IOMMU to fault */
        return;
    }
    completion->result = KS_DMA_RESULT_IOMMU_FAULT;
    ks_iommu_record_fault(iommu, completion->fault_bus_addr, write, KS_IOMMU_INJECTED);
}

static void model_delay(ks_dma_device *device, uint64_t cookie, uint64_t started_ns, uint64_t bytes)
{
    const ks_dma_options *options = &device->options;
    if (options->latency_ns == 0 && options->bandwidth_bytes_per_s == 0)
        return;
    uint64_t service_ns = options->latency_ns;
    if (options->bandwidth_bytes_per_s != 0)
        service_ns += (uint64_t)((double)bytes * 1e9 / (double)options->bandwidth_bytes_per_s);
    uint64_t start = started_ns > device->busy_until_ns ? started_ns : device->busy_until_ns;
    device->busy_until_ns = start + service_ns;
    engine_sleep_until(device, cookie, device->busy_until_ns);
}

static void run_entry(ks_dma_device *device, const ring_entry *entry, ks_dma_completion *completion)
{
    *completion = (ks_dma_completion){.cookie = entry->cookie, .context = entry->context};
    unsigned fault = draw_fault(device);
    if (fault == KS_DMA_FAULT_STALL) {
        completion->stalled = completion->injected = true;
        add_stat(&device->stat_stalls, 1);
        engine_sleep_until(device, entry->cookie, ks_dma_now_ns() + device->stall_ns);
    }
    if (entry->cookie <= atomic_load_explicit(&device->abort_upto, memory_order_acquire)) {
        completion->result = KS_DMA_RESULT_ABORTED;
        add_stat(&device->stat_aborted, 1);
        return;
    }
    bool modelled = device->options.latency_ns != 0 || device->options.bandwidth_bytes_per_s != 0;
    uint64_t started_ns = modelled ? ks_dma_now_ns() : 0;
    run_state state = {.entry = entry, .completion = completion, .stop_at = UINT64_MAX};
    state.total = entry->op == KS_DMA_OP_FILL ? segments_total(entry->dst, entry->dst_count)
                                              : segments_total(entry->src, entry->src_count);
    if ((fault == KS_DMA_FAULT_DEVICE_ERROR || fault == KS_DMA_FAULT_IOMMU) && state.total > 0)
        state.stop_at = ks_dma_random_next(&device->random_state) % state.total;
    ks_dma_checksum_init(&state.checksum);
    ks_dma_adapter_lock(device->adapter);
    run_transfer(device, &state);
    if (completion->injected && !completion->stalled && completion->result == KS_DMA_RESULT_OK)
        settle_injected(device, fault, entry->op != KS_DMA_OP_CHECKSUM, completion);
    ks_dma_adapter_unlock(device->adapter);
    if (entry->op == KS_DMA_OP_CHECKSUM)
        completion->checksum = ks_dma_checksum_final(&state.checksum);
    if (completion->result == KS_DMA_RESULT_IOMMU_FAULT || completion->result == KS_DMA_RESULT_ACCESS_ERROR)
        if (!completion->injected)
            add_stat(&device->stat_access_faults, 1);
    add_stat(&device->stat_bytes, completion->bytes_done);
    model_delay(device, entry->cookie, started_ns, completion->bytes_done);
}

/* ---- the engine thread -------------------------------------------------------------------- */

/* Waits for the doorbell to release cookie `next` (or for stop): a short spin, then sleep. */
static void engine_idle(ks_dma_device *device, uint64_t next)
{
    for (unsigned round = 0; round < ENGINE_SPIN_ROUNDS; round++) {
        if (atomic_load_explicit(&device->issued, memory_order_acquire) >= next ||
            atomic_load_explicit(&device->stopping, memory_order_acquire))
            return;
        cpu_relax();
    }
    pthread_mutex_lock(&device->wake_lock);
    atomic_store(&device->engine_sleeping, 1);
    while (atomic_load(&device->issued) < next && !atomic_load(&device->stopping)) {
        add_stat(&device->stat_sleeps, 1);
        pthread_cond_wait(&device->engine_wake, &device->wake_lock);
    }
    atomic_store(&device->engine_sleeping, 0);
    pthread_mutex_unlock(&device->wake_lock);
}

static void wake_engine(ks_dma_device *device)
{
    pthread_mutex_lock(&device->wake_lock);
    pthread_cond_signal(&device->engine_wake);
    pthread_mutex_unlock(&device->wake_lock);
}

static void release_entry_segments(ring_entry *entry)
{
    if (entry->src != entry->inline_src)
        free(entry->src);
    if (entry->dst != entry->inline_dst)
        free(entry->dst);
    entry->src = entry->inline_src;
    entry->dst = entry->inline_dst;
}

/* Runs issued cookie `next`, calls its callback, then publishes it complete and wakes a waiter
 * that asked for it. The one path a descriptor takes, on the engine's worker or inline. */
static void complete_next(ks_dma_device *device, uint64_t next)
{
    ring_entry *entry = &device->ring[(next - 1u) & device->ring_mask];
    ks_dma_completion completion;
    run_entry(device, entry, &completion);
    if (completion.result != KS_DMA_RESULT_OK && completion.result != KS_DMA_RESULT_ABORTED)
        log_fault(device, &completion);
    if (entry->callback != NULL)
        entry->callback(entry->context, &completion);
    release_entry_segments(entry);
    add_stat(&device->stat_completed, 1);
    atomic_store(&device->completed, next);
    if (atomic_load(&device->wake_at) <= next) {
        pthread_mutex_lock(&device->wake_lock);
        atomic_store(&device->wake_at, UINT64_MAX); /* waiters not done publish their cookie again */
        pthread_cond_broadcast(&device->waiter_wake);
        pthread_mutex_unlock(&device->wake_lock);
    }
}

static void *engine_main(void *arg)
{
    ks_dma_device *device = arg;
    for (uint64_t next = 1;;) {
        if (atomic_load_explicit(&device->issued, memory_order_acquire) < next) {
            if (atomic_load_explicit(&device->stopping, memory_order_acquire))
                return NULL;
            engine_idle(device, next);
            continue;
        }
        complete_next(device, next);
        next++;
    }
}

/* ---- the inline engine --------------------------------------------------------------------- */

/* A per-thread address that names the thread running a device's descriptors (inline_owner), so
 * that a callback ringing the same device again only publishes -- the loop below picks the new
 * cookies up -- even when callbacks of several devices nest on one thread. */
static _Thread_local char inline_thread_token;

/* Runs every issued cookie not yet complete, in order, on the calling thread. */
static void inline_drain(ks_dma_device *device)
{
    if (atomic_load(&device->inline_owner) == &inline_thread_token)
        return;
    pthread_mutex_lock(&device->inline_lock);
    atomic_store(&device->inline_owner, &inline_thread_token);
    for (uint64_t next = atomic_load(&device->completed) + 1u; next <= atomic_load(&device->issued); next++)
        complete_next(device, next);
    atomic_store(&device->inline_owner, NULL);
    pthread_mutex_unlock(&device->inline_lock);
}

/* ---- the worker pool ----------------------------------------------------------------------- */

#define POOL_IDLE_MAX 4u

typedef struct engine_worker {
    pthread_cond_t wake;   /* signalled when device or quit is set */
    ks_dma_device *device; /* pool_lock: the device to run; NULL while parked or reserved */
    bool quit;             /* pool_lock: leave instead of parking */
    struct engine_worker *next_idle;
} engine_worker;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_done = PTHREAD_COND_INITIALIZER; /* a worker left a device */
static engine_worker *pool_idle;                             /* pool_lock */
static unsigned pool_idle_count;                             /* pool_lock */
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_prepare_fork(void)
{
    pthread_mutex_lock(&pool_lock);
}

static void pool_parent_fork(void)
{
    pthread_mutex_unlock(&pool_lock);
}

/* The parked workers are gone in the child: forget them (their records leak, a few bytes). */
static void pool_child_fork(void)
{
    pool_idle = NULL;
    pool_idle_count = 0;
    pthread_mutex_unlock(&pool_lock);
}

static void pool_register_fork_handlers(void)
{
    pthread_atfork(pool_prepare_fork, pool_parent_fork, pool_child_fork);
}

/* Parks a worker no device holds, or tells it to leave when enough are parked. pool_lock held. */
static void pool_park(engine_worker *worker)
{
    if (pool_idle_count >= POOL_IDLE_MAX) {
        worker->quit = true;
        pthread_cond_signal(&worker->wake);
        return;
    }
    worker->next_idle = pool_idle;
    pool_idle = worker;
    pool_idle_count++;
}

static void *worker_main(void *arg)
{
    engine_worker *worker = arg;
    pthread_mutex_lock(&pool_lock);
    for (;;) {
        while (worker->device == NULL && !worker->quit)
            pthread_cond_wait(&worker->wake, &pool_lock);
        if (worker->quit)
            break;
        ks_dma_device *device = worker->device;
        pthread_mutex_unlock(&pool_lock);
        engine_main(device);
        pthread_mutex_lock(&pool_lock);
        worker->device = NULL;
        device->engine_running = false; /* from here on the worker never touches device */
        pthread_cond_broadcast(&pool_done);
        pool_park(worker);
    }
    pthread_mutex_unlock(&pool_lock);
    pthread_cond_destroy(&worker->wake);
    free(worker);
    return NULL;
}

/* Reserves a worker for the device -- a parked one, or a new thread -- without waking it, so a
 * device that never issues a descriptor costs no context switch. False if no thread starts. */
static bool engine_reserve(ks_dma_device *device)
{
    pthread_once(&pool_once, pool_register_fork_handlers);
    pthread_mutex_lock(&pool_lock);
    engine_worker *worker = pool_idle;
    if (worker != NULL) {
        pool_idle = worker->next_idle;
        pool_idle_count--;
    }
    pthread_mutex_unlock(&pool_lock);
    if (worker == NULL) {
        worker = calloc(1, sizeof *worker);
        pthread_attr_t attributes;
        bool started = false;
        if (worker != NULL && pthread_attr_init(&attributes) == 0) {
            pthread_cond_init(&worker->wake, NULL);
            pthread_t thread;
            started = pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED) == 0 &&
                      pthread_create(&thread, &attributes, worker_main, worker) == 0;
            pthread_attr_destroy(&attributes);
            if (!started)
                pthread_cond_destroy(&worker->wake);
        }
        if (!started) {
            free(worker);
            return false;
        }
    }
    device->worker = worker;
    return true;
}

/* Starts the engine on the reserved worker, once. submit_lock held. */
static void engine_hand_off(ks_dma_device *device)
{
    if (device->options.inline_engine || device->engine_handed)
        return; /* inline: no worker; inline_drain runs what the caller's thread rang */
    device->engine_handed = true;
    pthread_mutex_lock(&pool_lock);
    device->engine_running = true;
    device->worker->device = device;
    pthread_cond_signal(&device->worker->wake);
    pthread_mutex_unlock(&pool_lock);
}

/* Gives back a worker the device reserved and never started. */
static void engine_release(ks_dma_device *device)
{
    pthread_mutex_lock(&pool_lock);
    pool_park(device->worker);
    pthread_mutex_unlock(&pool_lock);
    device->worker = NULL;
}

/* Waits until the device's worker has left engine_main (stopping is set). */
static void engine_join(ks_dma_device *device)
{
    pthread_mutex_lock(&pool_lock);
    while (device->engine_running)
        pthread_cond_wait(&pool_done, &pool_lock);
    pthread_mutex_unlock(&pool_lock);
    device->worker = NULL;
}

/* ---- create / stop / destroy ---------------------------------------------------------------- */

static NTSTATUS init_sync_objects(ks_dma_device *device, ks_error *err)
{
    pthread_condattr_t attributes;
    if (pthread_condattr_init(&attributes) != 0)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma device: no condition attributes");
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_mutex_init(&device->submit_lock, NULL);
    pthread_mutex_init(&device->wake_lock, NULL);
    pthread_mutex_init(&device->fault_lock, NULL);
    pthread_mutex_init(&device->inline_lock, NULL);
    pthread_cond_init(&device->engine_wake, &attributes);
    pthread_cond_init(&device->waiter_wake, &attributes);
    pthread_condattr_destroy(&attributes);
    return STATUS_SUCCESS;
}

static void destroy_sync_objects(ks_dma_device *device)
{
    pthread_cond_destroy(&device->engine_wake);
    pthread_cond_destroy(&device->waiter_wake);
    pthread_mutex_destroy(&device->submit_lock);
    pthread_mutex_destroy(&device->wake_lock);
    pthread_mutex_destroy(&device->fault_lock);
    pthread_mutex_destroy(&device->inline_lock);
}

static NTSTATUS make_ring(ks_dma_device *device, uint32_t entries, ks_error *err)
{
    if (entries == 0)
        entries = DEFAULT_RING_ENTRIES;
    if (!ks_dma_is_pow2(entries) || entries > MAX_RING_ENTRIES)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma device: ring of %u entries is not a power of two <= %u",
                            entries, MAX_RING_ENTRIES);
    /* Made by the first submit (ring_alloc), not here: a device that runs nothing costs no ring. */
    device->ring_mask = entries - 1u;
    return STATUS_SUCCESS;
}

NTSTATUS ks_dma_device_create(const ks_dma_options *options, ks_dma_device **out, ks_error *err)
{
    *out = NULL;
    size_t device_bytes = (sizeof(ks_dma_device) + CACHE_LINE_BYTES - 1u) & ~(size_t)(CACHE_LINE_BYTES - 1u);
    ks_dma_device *device = aligned_alloc(CACHE_LINE_BYTES, device_bytes);
    if (device == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma device: no memory");
    memset(device, 0, device_bytes);
    device->options = *options;
    device->fault_kinds = options->fault_kinds == 0 ? KS_DMA_FAULT_ALL : options->fault_kinds & KS_DMA_FAULT_ALL;
    device->stall_ns = options->stall_ns == 0 ? DEFAULT_STALL_NS : options->stall_ns;
    device->random_state = options->seed ^ 0xD1B54A32D192ED03ull;
    atomic_init(&device->wake_at, UINT64_MAX);
    atomic_init(&device->inline_owner, NULL);
    NTSTATUS status = make_ring(device, options->ring_entries, err);
    if (NT_SUCCESS(status))
        status = ks_dma_adapter_create(options, &device->adapter, err);
    if (NT_SUCCESS(status))
        status = init_sync_objects(device, err);
    if (NT_SUCCESS(status) && !options->inline_engine && !engine_reserve(device)) {
        destroy_sync_objects(device);
        status = ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma device: cannot start the engine thread");
    }
    if (!NT_SUCCESS(status)) {
        ks_dma_adapter_destroy(device->adapter);
        free(device->ring);
        free(device);
        return status;
    }
    *out = device;
    return STATUS_SUCCESS;
}

ks_dma_adapter *ks_dma_device_adapter(ks_dma_device *device)
{
    return device->adapter;
}

void ks_dma_device_stop(ks_dma_device *device)
{
    pthread_mutex_lock(&device->submit_lock);
    bool first = !device->stopped;
    device->stopped = true;
    uint64_t prepared = atomic_load(&device->prepared);
    if (first) {
        atomic_store(&device->abort_upto, prepared);
        atomic_store(&device->issued, prepared);
        if (prepared > 0)
            engine_hand_off(device); /* submitted, never issued: the engine completes them as aborted */
    }
    bool handed = device->engine_handed;
    pthread_mutex_unlock(&device->submit_lock);
    if (!first)
        return;
    atomic_store(&device->stopping, true);
    if (device->options.inline_engine) {
        inline_drain(device); /* what is left completes as aborted */
    } else if (handed) {
        wake_engine(device);
        engine_join(device);
    } else {
        engine_release(device);
    }
    ks_dma_adapter_check_leaks(device->adapter);
}

void ks_dma_device_destroy(ks_dma_device *device)
{
    if (device == NULL)
        return;
    ks_dma_device_stop(device);
    ks_dma_adapter_destroy(device->adapter);
    uint64_t prepared = atomic_load(&device->prepared);
    uint64_t touched = device->ring == NULL ? 0 : prepared <= device->ring_mask ? prepared : (uint64_t)device->ring_mask + 1u;
    for (uint64_t i = 0; i < touched; i++)
        release_entry_segments(&device->ring[i]);
    free(device->ring);
    destroy_sync_objects(device);
    free(device);
}

/* ---- submit, doorbell, wait ---------------------------------------------------------------- */

/* The ring, on the first submit (submit_lock held). Not zeroed: a submit writes an entry whole
 * before the engine reads it, and destroy looks only at entries a submit reached. The engine
 * reads device->ring only for cookies the doorbell released after this store. */
static NTSTATUS ring_alloc(ks_dma_device *device, ks_error *err)
{
    device->ring = malloc(((size_t)device->ring_mask + 1u) * sizeof *device->ring);
    if (device->ring == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma device: no memory for %u ring entries",
                            device->ring_mask + 1u);
    return STATUS_SUCCESS;
}

/* Shape of a descriptor, before the device rules: what a device could not even decode. */
static NTSTATUS validate_shape(const ks_dma_descriptor *descriptor, ks_error *err)
{
    bool wants_src = descriptor->op != KS_DMA_OP_FILL, wants_dst = descriptor->op != KS_DMA_OP_CHECKSUM;
    if ((unsigned)descriptor->op > KS_DMA_OP_CHECKSUM)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "ks_dma_device_submit: unknown op %u", (unsigned)descriptor->op);
    if ((wants_src && (descriptor->src == NULL || descriptor->src_count == 0)) ||
        (wants_dst && (descriptor->dst == NULL || descriptor->dst_count == 0)))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "ks_dma_device_submit: op %u needs %s%s segments",
                            (unsigned)descriptor->op, wants_src ? "source " : "", wants_dst ? "destination" : "");
    if (descriptor->op == KS_DMA_OP_COPY &&
        segments_total(descriptor->src, descriptor->src_count) != segments_total(descriptor->dst, descriptor->dst_count))
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "ks_dma_device_submit: copy of %" PRIu64 " source bytes into %" PRIu64 " destination bytes",
                            segments_total(descriptor->src, descriptor->src_count),
                            segments_total(descriptor->dst, descriptor->dst_count));
    return STATUS_SUCCESS;
}

/* The device rules (checker reports): every segment legal, not too many of them. The rules read
 * only the description, fixed at creation, so the lock is taken only to report a breach. */
static bool segments_acceptable(ks_dma_adapter *adapter, const ks_dma_segment *segments, uint32_t count)
{
    const ks_dma_device_description *device = &adapter->device;
    uint64_t limit = !device->scatter_gather ? 1u : device->max_segments == 0 ? UINT32_MAX : device->max_segments;
    bool acceptable = count <= limit;
    for (uint32_t i = 0; i < count && acceptable; i++)
        acceptable = ks_dma_segment_legal(device, adapter->mask, segments[i].bus_addr, segments[i].bytes);
    if (acceptable)
        return true;
    ks_dma_adapter_lock(adapter);
    uint64_t op = adapter->op++;
    for (uint32_t i = 0; i < count; i++)
        acceptable &= ks_dma_check_segment(adapter->checker, "ks_dma_device_submit", op, &adapter->device,
                                           adapter->mask, segments[i].bus_addr, segments[i].bytes, 0, NULL);
    acceptable &= ks_dma_check_segment_count(adapter->checker, "ks_dma_device_submit", op, &adapter->device, count,
                                             count > 0 ? segments[0].bus_addr : 0, NULL);
    ks_dma_adapter_unlock(adapter);
    return acceptable;
}

static ks_dma_segment *copy_segments(const ks_dma_segment *segments, uint32_t count, ks_dma_segment *inline_store)
{
    ks_dma_segment *copy = count <= INLINE_SEGMENTS ? inline_store : malloc((size_t)count * sizeof *copy);
    if (copy != NULL && count > 0)
        memcpy(copy, segments, (size_t)count * sizeof *copy);
    return copy;
}

NTSTATUS ks_dma_device_submit(ks_dma_device *device, const ks_dma_descriptor *descriptor, uint64_t *cookie,
                              ks_error *err)
{
    *cookie = 0;
    NTSTATUS status = validate_shape(descriptor, err);
    if (!NT_SUCCESS(status))
        return status;
    bool wants_src = descriptor->op != KS_DMA_OP_FILL, wants_dst = descriptor->op != KS_DMA_OP_CHECKSUM;
    if ((wants_src && !segments_acceptable(device->adapter, descriptor->src, descriptor->src_count)) ||
        (wants_dst && !segments_acceptable(device->adapter, descriptor->dst, descriptor->dst_count)))
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "ks_dma_device_submit: a segment breaks the device's rules (see the DMA reports)");
    pthread_mutex_lock(&device->submit_lock);
    uint64_t prepared = atomic_load_explicit(&device->prepared, memory_order_relaxed);
    if (device->stopped)
        status = ks_error_set(err, STATUS_UNSUCCESSFUL, "ks_dma_device_submit: the device is stopped");
    else if (prepared - atomic_load_explicit(&device->completed, memory_order_acquire) > device->ring_mask)
        status = ks_error_set(err, STATUS_DEVICE_BUSY, "ks_dma_device_submit: ring of %u entries full",
                              device->ring_mask + 1u);
    else if (device->ring == NULL)
        status = ring_alloc(device, err);
    ring_entry *entry = NT_SUCCESS(status) ? &device->ring[prepared & device->ring_mask] : NULL;
    if (NT_SUCCESS(status)) {
        entry->src = wants_src ? copy_segments(descriptor->src, descriptor->src_count, entry->inline_src) : entry->inline_src;
        entry->dst = wants_dst ? copy_segments(descriptor->dst, descriptor->dst_count, entry->inline_dst) : entry->inline_dst;
        if (entry->src == NULL || entry->dst == NULL) {
            release_entry_segments(entry);
            status = ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "ks_dma_device_submit: no memory for segments");
        }
    }
    if (NT_SUCCESS(status)) {
        entry->cookie = prepared + 1u;
        entry->op = descriptor->op;
        entry->src_count = wants_src ? descriptor->src_count : 0;
        entry->dst_count = wants_dst ? descriptor->dst_count : 0;
        entry->pattern_seed = descriptor->pattern_seed;
        entry->callback = descriptor->callback;
        entry->context = descriptor->context;
        atomic_store_explicit(&device->prepared, prepared + 1u, memory_order_relaxed);
        *cookie = prepared + 1u;
        add_stat(&device->stat_submitted, 1);
    }
    pthread_mutex_unlock(&device->submit_lock);
    return status;
}

void ks_dma_device_issue_pending(ks_dma_device *device)
{
    pthread_mutex_lock(&device->submit_lock);
    uint64_t prepared = atomic_load_explicit(&device->prepared, memory_order_relaxed);
    atomic_store(&device->issued, prepared);
    bool rung = prepared > 0 && !device->stopped;
    if (rung)
        engine_hand_off(device);
    pthread_mutex_unlock(&device->submit_lock);
    if (rung && device->options.inline_engine)
        inline_drain(device);
    else if (atomic_load(&device->engine_sleeping))
        wake_engine(device);
}

static bool completed_at_least(ks_dma_device *device, uint64_t cookie)
{
    return atomic_load_explicit(&device->completed, memory_order_acquire) >= cookie;
}

NTSTATUS ks_dma_device_wait(ks_dma_device *device, uint64_t cookie, uint64_t timeout_ns, ks_error *err)
{
    if (cookie == 0 || cookie > atomic_load(&device->issued))
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "ks_dma_device_wait: cookie %" PRIu64 " was never issued (last issued %" PRIu64 ")", cookie,
                            atomic_load(&device->issued));
    if (device->options.inline_engine) {
        inline_drain(device); /* issued from a callback, or by another thread still running it */
        if (completed_at_least(device, cookie))
            return STATUS_SUCCESS;
        return ks_error_set(err, STATUS_DEVICE_BUSY, "ks_dma_device_wait: cookie %" PRIu64 " waited for from its own "
                            "completion callback on an inline engine", cookie);
    }
    for (unsigned round = 0; round < WAITER_SPIN_ROUNDS; round++) {
        if (completed_at_least(device, cookie))
            return STATUS_SUCCESS;
        cpu_relax();
    }
    uint64_t deadline_ns = timeout_ns == 0 ? 0 : ks_dma_now_ns() + timeout_ns;
    struct timespec until = deadline_timespec(deadline_ns);
    pthread_mutex_lock(&device->wake_lock);
    while (!completed_at_least(device, cookie)) {
        if (atomic_load(&device->wake_at) > cookie)
            atomic_store(&device->wake_at, cookie);
        if (completed_at_least(device, cookie))
            break; /* completed between the check and the store: the engine may not have seen it */
        if (timeout_ns == 0)
            pthread_cond_wait(&device->waiter_wake, &device->wake_lock);
        else if (ks_dma_now_ns() >= deadline_ns)
            break;
        else
            pthread_cond_timedwait(&device->waiter_wake, &device->wake_lock, &until);
    }
    pthread_mutex_unlock(&device->wake_lock);
    if (completed_at_least(device, cookie))
        return STATUS_SUCCESS;
    return ks_error_set(err, STATUS_DEVICE_BUSY, "ks_dma_device_wait: cookie %" PRIu64 " not complete after %" PRIu64 " ns",
                        cookie, timeout_ns);
}

void ks_dma_device_terminate_all(ks_dma_device *device)
{
    pthread_mutex_lock(&device->submit_lock);
    uint64_t prepared = atomic_load(&device->prepared);
    if (atomic_load(&device->abort_upto) < prepared)
        atomic_store(&device->abort_upto, prepared);
    atomic_store(&device->issued, prepared);
    bool running = !device->stopped;
    if (running && prepared > 0)
        engine_hand_off(device);
    pthread_mutex_unlock(&device->submit_lock);
    if (!running || prepared == 0)
        return;
    if (device->options.inline_engine) {
        inline_drain(device);
        return;
    }
    wake_engine(device);
    ks_dma_device_wait(device, prepared, 0, NULL);
}

typedef struct run_context {
    ks_dma_completion *completion;
    ks_dma_callback callback;
    void *context;
} run_context;

static void run_callback(void *context, const ks_dma_completion *completion)
{
    run_context *run = context;
    *run->completion = *completion;
    run->completion->context = run->context;
    if (run->callback != NULL)
        run->callback(run->context, run->completion);
}

NTSTATUS ks_dma_device_run(ks_dma_device *device, const ks_dma_descriptor *descriptor,
                           ks_dma_completion *completion, uint64_t timeout_ns, ks_error *err)
{
    run_context run = {.completion = completion, .callback = descriptor->callback, .context = descriptor->context};
    ks_dma_descriptor wrapped = *descriptor;
    wrapped.callback = run_callback;
    wrapped.context = &run;
    uint64_t cookie;
    memset(completion, 0, sizeof *completion);
    NTSTATUS status = ks_dma_device_submit(device, &wrapped, &cookie, err);
    if (!NT_SUCCESS(status))
        return status;
    ks_dma_device_issue_pending(device);
    status = ks_dma_device_wait(device, cookie, timeout_ns, err);
    if (status == STATUS_DEVICE_BUSY)
        ks_dma_device_terminate_all(device); /* the callback must not outlive `run` */
    return status;
}

/* ---- stats and the fault log ------------------------------------------------------------- */

void ks_dma_device_get_stats(ks_dma_device *device, ks_dma_device_stats *stats)
{
    *stats = (ks_dma_device_stats){
        .submitted = atomic_load(&device->stat_submitted),
        .completed = atomic_load(&device->stat_completed),
        .aborted = atomic_load(&device->stat_aborted),
        .bytes_transferred = atomic_load(&device->stat_bytes),
        .injected_device_errors = atomic_load(&device->stat_device_errors),
        .injected_iommu_faults = atomic_load(&device->stat_iommu_faults),
        .injected_stalls = atomic_load(&device->stat_stalls),
        .access_faults = atomic_load(&device->stat_access_faults),
        .engine_sleeps = atomic_load(&device->stat_sleeps),
    };
}

uint64_t ks_dma_device_fault_count(ks_dma_device *device)
{
    pthread_mutex_lock(&device->fault_lock);
    uint64_t count = device->fault_count;
    pthread_mutex_unlock(&device->fault_lock);
    return count;
}

bool ks_dma_device_fault_at(ks_dma_device *device, size_t index, ks_dma_device_fault *fault)
{
    pthread_mutex_lock(&device->fault_lock);
    bool found = index < device->fault_count && index < FAULTS_KEPT;
    if (found)
        *fault = device->faults[index];
    pthread_mutex_unlock(&device->fault_lock);
    return found;
}
