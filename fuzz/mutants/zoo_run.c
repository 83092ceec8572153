/*
 * zoo_run.c -- one fuzz input, one allocator, engine + verifier; see zoo_run.h.
 *
 * Design. Phase 1 is the standard decode: ks_decode_config for the pins, ks_decode_op per op,
 * ks_engine_step through the verifier, ks_engine_close (which frees what is live and deletes
 * every instance, so the verifier's DeleteAllocator self-check runs). Phase 2, only for
 * allocators that claim KS_CAP_THREAD_SAFE, re-reads the same bytes: the same config gives pin
 * 0's framing, and each byte after it becomes one op of one of two threads (bit 0 picks the
 * thread, bits 1-3 the kind with the decoder's 4:3:1 allocate/free/touch weights, bits 4-7 which
 * of the thread's own frames). The threads meet at a barrier, then again before every
 * THREAD_MEET_OPS-th op (so their ops start together, see thread_meet), run their lists at least
 * THREAD_ROUNDS times and for at least thread_min_ops ops each (KS_ZOO_THREAD_MIN_OPS when
 * fuzzing) over one verified instance, and free what they still hold; the verifier's shadow
 * map is thread-safe, so a frame handed to both threads at once is a double-handout and a frame
 * written behind one thread's back is corruption. Op lists are a pure function of the bytes;
 * only the interleaving is not.
 * Cost: phase 1 is O(ops log live) plus the verifier's pattern fills; phase 2 adds about
 * 2 * max(thread_min_ops, THREAD_OPS_MAX * THREAD_ROUNDS) ops. Thread safety: each call is
 * self-contained.
 */
#include "zoo_run.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "dma/dma.h"
#include "workload.h"

#define ZOO_FAULTS_KEPT 64u
#define THREAD_COUNT 2u
#define THREAD_OPS_MAX 256u
#define THREAD_ROUNDS 8u
#define THREAD_LIVE_MAX 128u
/* Above this FrameSize one round is enough: the pattern fills dominate and the race window is
 * no wider for bigger frames. */
#define THREAD_BIG_FRAME_BYTES 65536u
/* The threads meet before every THREAD_MEET_OPS-th op, so that their next ops start together
 * (see thread_meet); a waiting thread polls this many times before it goes on alone. */
#define THREAD_MEET_OPS 4u
#define THREAD_MEET_SPINS 4096u

_Static_assert(THREAD_COUNT == 2, "bit 0 of an op byte picks the thread");

/* Under two threads a NULL from an allocator that promised capacity is not a fault the verifier
 * can pin on it: the verifier drops a frame from its shadow map before the inner Free runs, so
 * an Allocate on the other thread in between may see the allocator still full while the shadow
 * count is below Frames. Phase 2 therefore leaves null-promised out (the single-threaded phase
 * checks it exactly); no other check has such a window (the shadow count never runs ahead of
 * the allocator's). */
static bool fault_counts(const ks_fault *fault, unsigned phase)
{
    return phase == 1 || fault->kind != KS_FAULT_NULL_PROMISED;
}

static void result_take_faults(ks_zoo_result *result, const ks_verifier *verifier, unsigned phase)
{
    uint64_t count = ks_verifier_fault_count(verifier);
    for (uint64_t i = 0; i < count; i++) {
        const ks_fault *fault = ks_verifier_fault_at(verifier, i);
        if (fault == NULL) {
            if (phase == 1)
                result->fault_count += count - i; /* past the ones kept: all count in phase 1 */
            break;
        }
        if (!fault_counts(fault, phase))
            continue;
        if (result->fault_count == 0) {
            result->first_fault = *fault;
            result->phase = phase;
            snprintf(result->first_class, sizeof result->first_class, "%s", ks_fault_kind_name(fault->kind));
        }
        if (result->faults_kept < sizeof result->faults / sizeof result->faults[0])
            result->faults[result->faults_kept++] = *fault;
        result->fault_count++;
    }
}

/* ---- DMA: the zoo's devices and DMA faults ------------------------------------------------------ */

/* Devices the decoder's table does not have: no scatter/gather, a boundary (see zoo_run.h). Like
 * the decoder's, they run descriptors inline (harness/dma/device.c). */
static const char *const zoo_dma_devices[3] = {
    "mask=32,boundary=8K,inline=1",
    "mask=32,coherent=0,boundary=4K,inline=1",
    "mask=32,iommu=1,boundary=64K,inline=1",
};

static void zoo_pick_device(ks_byte_reader *reader, ks_workload_config *config)
{
    if (config->dma_options[0] == '\0')
        return;
    unsigned pick = ks_reader_u8(reader) % 4u;
    if (pick != 0)
        snprintf(config->dma_options, sizeof config->dma_options, "%s", zoo_dma_devices[pick - 1u]);
}

/* A DMA failure of an engine step or of teardown: its class -- "dma-<rule>" of the adapter's first
 * report (a step fails at the first report, so it is this step's), or of the engine's
 * "...; first: <rule>: ..." message at teardown, else by status -- and message. false: not a DMA
 * failure. */
typedef struct dma_outcome {
    bool faulted;
    char class_name[48];
    char message[400];
} dma_outcome;

static bool dma_failure(NTSTATUS status, const ks_error *err, ks_engine *engine, dma_outcome *dma)
{
    if (status != STATUS_DATA_ERROR && status != STATUS_UNSUCCESSFUL && status != STATUS_INVALID_PARAMETER &&
        status != STATUS_OBJECT_NAME_NOT_FOUND)
        return false;
    const char *first = strstr(err->message, "DMA-debug report");
    first = first != NULL ? strstr(first, "; first: ") : NULL;
    size_t length = 0;
    ks_dma_report report;
    report.message[0] = '\0';
    if (engine != NULL && ks_engine_dma_device(engine) != NULL &&
        ks_dma_report_at(ks_dma_device_adapter(ks_engine_dma_device(engine)), 0, &report)) {
        first = ks_dma_rule_name(report.rule);
        length = strlen(first);
    } else if (first != NULL) {
        first += strlen("; first: ");
        while ((first[length] >= 'a' && first[length] <= 'z') || first[length] == '-')
            length++;
    }
    if (length > 0 && length < sizeof dma->class_name - 4u)
        snprintf(dma->class_name, sizeof dma->class_name, "dma-%.*s", (int)length, first);
    else
        snprintf(dma->class_name, sizeof dma->class_name, "%s",
                 status == STATUS_DATA_ERROR ? "dma-data" : status == STATUS_UNSUCCESSFUL ? "dma-device" : "dma-lookup");
    /* Precisions keep the whole within the message (gcc checks the worst case). */
    snprintf(dma->message, sizeof dma->message, "%.40s: %.180s%s%.150s", dma->class_name, err->message,
             report.message[0] != '\0' ? "; first report: " : "", report.message);
    dma->faulted = true;
    return true;
}

/* ---- phase 1: the engine ---------------------------------------------------------------------- */

static NTSTATUS run_engine_phase(const ks_allocator_entry *entry, const uint8_t *data, size_t size_bytes,
                                 unsigned min_ops, ks_verifier *verifier, dma_outcome *dma, ks_error *err)
{
    (void)min_ops; /* phase 2 only */
    ks_byte_reader reader = {.data = data, .size_bytes = size_bytes, .offset = 0};
    const ks_allocator_entry *entries[] = {entry};
    ks_workload_config config;
    ks_decode_config(&reader, entries, 1, &config);
    zoo_pick_device(&reader, &config);
    bool has_dma = config.dma_options[0] != '\0';
    ks_engine_options options = {.verifier = verifier, .trace = NULL, .keep_live_at_close = false};
    ks_engine *engine = NULL;
    ks_error open_err;
    if (!NT_SUCCESS(ks_engine_open(&config, &options, &engine, &open_err)))
        return STATUS_SUCCESS; /* the allocator refused the framing: its right, a clean run */
    ks_live_view view;
    ks_op op;
    NTSTATUS status = STATUS_SUCCESS;
    ks_engine_view(engine, &view);
    while (NT_SUCCESS(status) && ks_decode_op(&reader, &view, &op)) {
        status = ks_engine_step(engine, &op, NULL, err);
        ks_engine_view(engine, &view);
    }
    if (!NT_SUCCESS(status) && has_dma && dma_failure(status, err, engine, dma))
        status = STATUS_SUCCESS;
    ks_error close_err;
    NTSTATUS close_status = ks_engine_close(engine, &close_err);
    if (!NT_SUCCESS(close_status) && has_dma && !dma->faulted && dma_failure(close_status, &close_err, NULL, dma))
        close_status = STATUS_SUCCESS;
    if (!NT_SUCCESS(close_status) && NT_SUCCESS(status) && !dma->faulted && err != NULL)
        *err = close_err;
    return NT_SUCCESS(status) ? (dma->faulted ? STATUS_SUCCESS : close_status) : status;
}

/* ---- phase 2: two threads on one instance ----------------------------------------------------- */

typedef struct thread_op {
    uint8_t kind;     /* ks_op_kind */
    uint8_t selector; /* which of the thread's live frames, modulo how many it holds */
} thread_op;

/* A two-thread rendezvous that gives up: arrivals counts up forever, and the arrivals 2k and
 * 2k+1 meet (a thread that gave up waiting is paired with whoever comes next). */
typedef struct thread_meeting {
    _Atomic unsigned long arrivals;
    _Atomic unsigned finished; /* threads past their last meeting: nobody waits for them */
} thread_meeting;

/* Overlap is what shows a race, and a loaded machine gives little of it: each thread may run its
 * whole op list inside one time slice while the other waits for a CPU (a saved race input then
 * took hundreds of replays, and once escaped 1,000, with eight busy loops on two cores). So the
 * threads meet every few ops: the first to arrive spins, so it is on a CPU when the other comes,
 * and both leave together, their next ops -- often the same Allocate -- starting within a
 * cache-line transfer of each other. When the partner does not come within THREAD_MEET_SPINS
 * polls (it is descheduled) the thread goes on alone: waiting for a time slice would cost
 * milliseconds per meeting (yielding instead made one replay take 80 s under that load). The
 * meetings only shape the timing: the op lists are the same, and the allocator and the verifier
 * see nothing of them. */
static void thread_meet(thread_meeting *meeting)
{
    unsigned long ticket = atomic_fetch_add_explicit(&meeting->arrivals, 1, memory_order_acq_rel);
    unsigned long leave_at = ticket - ticket % THREAD_COUNT + THREAD_COUNT;
    for (unsigned polls = 0; polls < THREAD_MEET_SPINS; polls++)
        if (atomic_load_explicit(&meeting->arrivals, memory_order_acquire) >= leave_at ||
            atomic_load_explicit(&meeting->finished, memory_order_acquire) != 0)
            return;
}

typedef struct thread_plan {
    void *instance; /* the verifier's context for the shared instance */
    pthread_barrier_t *start;
    thread_meeting *meeting;
    unsigned rounds;
    unsigned op_count;
    thread_op ops[THREAD_OPS_MAX];
    unsigned live;
    void *frames[THREAD_LIVE_MAX]; /* oldest first */
} thread_plan;

static ks_op_kind thread_kind_of_bits(unsigned bits)
{
    if (bits < 4)
        return KS_OP_ALLOCATE;
    return bits < 7 ? KS_OP_FREE : KS_OP_TOUCH;
}

/* Enough rounds that each thread runs at least min_ops ops: a short input (a minimised crash)
 * must still give the two threads time to overlap. */
static unsigned thread_rounds(unsigned op_count, unsigned min_ops)
{
    if (op_count == 0)
        return 1;
    unsigned rounds = (min_ops + op_count - 1) / op_count;
    return rounds < THREAD_ROUNDS ? THREAD_ROUNDS : rounds;
}

static void decode_thread_plans(ks_byte_reader *reader, thread_plan plans[THREAD_COUNT])
{
    while (!ks_reader_done(reader)) {
        uint8_t byte = ks_reader_u8(reader);
        thread_plan *plan = &plans[byte & 1u];
        if (plan->op_count == THREAD_OPS_MAX)
            continue;
        plan->ops[plan->op_count].kind = (uint8_t)thread_kind_of_bits((byte >> 1) & 7u);
        plan->ops[plan->op_count].selector = (uint8_t)(byte >> 4);
        plan->op_count++;
    }
}

static void thread_free_at(thread_plan *plan, unsigned index)
{
    ks_verifier_dispatch.Free(plan->instance, plan->frames[index]);
    memmove(&plan->frames[index], &plan->frames[index + 1], (plan->live - index - 1) * sizeof plan->frames[0]);
    plan->live--;
}

static void thread_step(thread_plan *plan, const thread_op *op)
{
    if (op->kind == KS_OP_ALLOCATE || plan->live == 0) {
        if (plan->live == THREAD_LIVE_MAX)
            thread_free_at(plan, 0);
        void *frame = ks_verifier_dispatch.Allocate(plan->instance);
        if (frame != NULL)
            plan->frames[plan->live++] = frame;
        return;
    }
    unsigned index = op->selector % plan->live;
    if (op->kind == KS_OP_FREE)
        thread_free_at(plan, index);
    else
        ks_verifier_touch(plan->instance, plan->frames[index]);
}

static void *thread_main(void *arg)
{
    thread_plan *plan = arg;
    pthread_barrier_wait(plan->start);
    unsigned long steps = 0;
    for (unsigned round = 0; round < plan->rounds; round++)
        for (unsigned i = 0; i < plan->op_count; i++) {
            if (steps++ % THREAD_MEET_OPS == 0)
                thread_meet(plan->meeting);
            thread_step(plan, &plan->ops[i]);
        }
    atomic_fetch_add_explicit(&plan->meeting->finished, 1, memory_order_acq_rel);
    while (plan->live > 0)
        thread_free_at(plan, plan->live - 1);
    return NULL;
}

static NTSTATUS run_threads(thread_plan plans[THREAD_COUNT], ks_error *err)
{
    pthread_barrier_t start;
    if (pthread_barrier_init(&start, NULL, THREAD_COUNT) != 0)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "zoo: pthread_barrier_init failed");
    thread_meeting meeting;
    atomic_init(&meeting.arrivals, 0);
    atomic_init(&meeting.finished, 0);
    for (unsigned i = 0; i < THREAD_COUNT; i++) {
        plans[i].start = &start;
        plans[i].meeting = &meeting;
    }
    /* The calling thread runs the last plan itself. */
    pthread_t threads[THREAD_COUNT - 1];
    unsigned started = 0;
    for (; started < THREAD_COUNT - 1; started++)
        if (pthread_create(&threads[started], NULL, thread_main, &plans[started]) != 0)
            break;
    NTSTATUS status = STATUS_SUCCESS;
    if (started == THREAD_COUNT - 1)
        thread_main(&plans[THREAD_COUNT - 1]);
    else
        status = ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "zoo: pthread_create failed for thread %u", started);
    for (unsigned i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start);
    return status;
}

static NTSTATUS run_thread_phase(const ks_allocator_entry *entry, const uint8_t *data, size_t size_bytes,
                                 unsigned min_ops, ks_verifier *verifier, dma_outcome *dma, ks_error *err)
{
    (void)dma; /* no device in this phase: a DMA allocator refuses it */
    ks_byte_reader reader = {.data = data, .size_bytes = size_bytes, .offset = 0};
    const ks_allocator_entry *entries[] = {entry};
    ks_workload_config config;
    ks_decode_config(&reader, entries, 1, &config);
    zoo_pick_device(&reader, &config);
    KSPIN pin = {.abi_version = KSALLOC_ABI_VERSION, .id = 0, .name = "pin0", .framing = config.pins[0].framing};
    ks_verifier_pin vpin = {.verifier = verifier, .inner = entry, .pin = &pin};
    KSALLOCATOR_FRAMING framing = pin.framing;
    void *instance = NULL;
    if (!NT_SUCCESS(ks_verifier_dispatch.InitializeAllocator(&vpin, &framing, &instance)))
        return STATUS_SUCCESS; /* refused: a clean run */
    thread_plan plans[THREAD_COUNT];
    memset(plans, 0, sizeof plans);
    decode_thread_plans(&reader, plans);
    bool big_frames = ks_verifier_framing(instance)->FrameSize > THREAD_BIG_FRAME_BYTES;
    for (unsigned i = 0; i < THREAD_COUNT; i++) {
        plans[i].instance = instance;
        plans[i].rounds = big_frames ? 1u : thread_rounds(plans[i].op_count, min_ops);
    }
    NTSTATUS status = run_threads(plans, err);
    ks_verifier_dispatch.DeleteAllocator(instance);
    return status;
}

/* ---- both phases ------------------------------------------------------------------------------ */

typedef NTSTATUS (*phase_fn)(const ks_allocator_entry *entry, const uint8_t *data, size_t size_bytes,
                             unsigned min_ops, ks_verifier *verifier, dma_outcome *dma, ks_error *err);

static NTSTATUS run_phase(phase_fn phase, unsigned phase_number, const ks_allocator_entry *entry, const uint8_t *data,
                          size_t size_bytes, unsigned min_ops, ks_zoo_result *result, ks_error *err)
{
    ks_verifier *verifier = NULL;
    ks_verifier_options options = {.self_check_every_ops = 0, .max_faults_kept = ZOO_FAULTS_KEPT, .on_fault = NULL};
    NTSTATUS status = ks_verifier_create(&options, &verifier, err);
    if (!NT_SUCCESS(status))
        return status;
    dma_outcome dma = {.faulted = false};
    status = phase(entry, data, size_bytes, min_ops, verifier, &dma, err);
    result_take_faults(result, verifier, phase_number);
    ks_verifier_destroy(verifier);
    if (dma.faulted) {
        /* After any verifier fault of the run: those came first. */
        ks_fault fault = {.kind = KS_FAULT_NONE, .allocator = entry->name};
        snprintf(fault.message, sizeof fault.message, "%s", dma.message);
        if (result->fault_count == 0) {
            result->first_fault = fault;
            result->phase = phase_number;
            snprintf(result->first_class, sizeof result->first_class, "%s", dma.class_name);
        }
        if (result->faults_kept < sizeof result->faults / sizeof result->faults[0])
            result->faults[result->faults_kept++] = fault;
        result->fault_count++;
    }
    return status;
}

NTSTATUS ks_zoo_run(const ks_allocator_entry *entry, const uint8_t *data, size_t size_bytes, unsigned thread_min_ops,
                    ks_zoo_result *result, ks_error *err)
{
    unsigned min_ops = thread_min_ops != 0 ? thread_min_ops : KS_ZOO_THREAD_MIN_OPS;
    memset(result, 0, sizeof *result);
    if (entry == NULL || entry->dispatch == NULL || (data == NULL && size_bytes != 0))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "zoo: %s is NULL", entry == NULL ? "entry" : "data");
    NTSTATUS status = run_phase(run_engine_phase, 1, entry, data, size_bytes, min_ops, result, err);
    if (NT_SUCCESS(status) && result->fault_count == 0 && (entry->caps & KS_CAP_THREAD_SAFE))
        status = run_phase(run_thread_phase, 2, entry, data, size_bytes, min_ops, result, err);
    return status;
}
