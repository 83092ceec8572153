/*
 * engine.c -- executes ops (from a profile, the fuzz decoder or a trace) against the allocator
 * instances of one workload, bare or through the verifier, recording a trace when asked.
 *
 * Design. The engine owns the heaps and one KSPIN per pin, and per pin the frames live in
 * allocation order, since an op names a frame by its rank k (0 = oldest) rather than by address.
 * That list is a growable ring-buffer deque of frame pointers: ALLOCATE pushes at the back in
 * O(1) amortised; removing the k-th frame closes the gap by moving the shorter side by one slot
 * (memmove, in at most three contiguous pieces because the ring may wrap), so freeing the oldest
 * or the newest -- fifo and lifo, the common cases -- is O(1) and a random k costs
 * O(min(k, live - k)) pointer moves, O(live) in the worst case. The engine keeps the live view
 * that generators and decoders read up to date on every step, so run_profile hands them a
 * pointer instead of rebuilding it per op. With a verifier every pin is opened through
 * ks_verifier_dispatch, and TOUCH goes to ks_verifier_touch, which checks and rewrites the
 * frame's pattern; bare, TOUCH writes the first byte of every 4 KiB page and the last byte, so a
 * frame shorter than FrameSize or on unmapped memory faults as it would in a driver.
 * DMA. When the config names device options, or a pin's entry has KS_CAP_DMA, the engine creates
 * one emulated device (harness/dma/) before the pins and hands its adapter to every pin. A DMA
 * op on a frame of a KS_CAP_DMA allocator goes through ks_dma_frame_transfer, which finds the
 * frame's segments in the adapter's frame registry and syncs as a correct driver does; on any
 * other frame the engine maps the frame for the op (ks_dma_map_single, checked with
 * ks_dma_mapping_error), runs the device, and unmaps it before the CPU checks, so no mapping
 * outlives the op and FREE never meets a mapped frame. After every step the engine compares the
 * checker's report count with the last it saw: a new report fails the step naming it, so an
 * allocator that frees a common buffer badly is caught at the op that did it. A device fault
 * that the device injected on purpose (fault_ppm) is counted, not failed: the op stream stays
 * valid and a fault-injection run measures how the rest copes. The device is stopped and
 * destroyed after the pins are deleted; its teardown leak checks become the close's error.
 * Under a verifier a DMA op snapshots the frame and writes it back afterwards, since the device
 * legitimately overwrites the verifier's pattern.
 * Memory: one pointer per live frame (the deque at most doubles), plus a fixed engine struct,
 * which a closed engine leaves to its thread for the next open (engine_memory_take): a fuzz
 * target opens one per input, and under ASan a fresh 1.7 KiB block is a page fault.
 * Thread safety: one engine belongs to one thread.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "catalogue.h"
#include "dma/dma.h"
#include "heap.h"
#include "trace.h"
#include "verifier.h"
#include "watch.h"
#include "workload.h"

#define DEQUE_INITIAL_SLOTS 16u
#define TOUCH_STRIDE_BYTES 4096u
/* Pattern seeds of DMA ops: the op index spread by the golden ratio, so every op sends new data. */
#define DMA_SEED_STEP 0x9E3779B97F4A7C15ull

_Static_assert((DEQUE_INITIAL_SLOTS & (DEQUE_INITIAL_SLOTS - 1)) == 0, "ring capacity is a power of two");
_Static_assert(KS_MAX_PINS <= 256, "ks_op.pin is a uint8_t");

/* Frames live on one pin, oldest first. slots has capacity entries (a power of two, or 0 before
 * the first push); element k sits at slots[(head + k) & (capacity - 1)]. */
typedef struct live_deque {
    void **slots;
    uint32_t capacity;
    uint32_t head;
    uint32_t count;
} live_deque;

typedef struct engine_pin {
    KSPIN pin;                           /* InitialContext of the allocator (or of the verifier) */
    char name[16];                       /* pin.name points here */
    KSALLOCATOR_FRAMING framing;         /* what the allocator settled on */
    const ks_allocator_entry *entry;
    const KSALLOCATOR_DISPATCH *dispatch; /* the entry's, or ks_verifier_dispatch */
    ks_verifier_pin verifier_pin;
    void *context;
    bool initialized;
    live_deque live;
} engine_pin;

struct ks_engine {
    ks_engine_options options;
    struct ks_watch_slot *watch_slot; /* slot 0 of options.watch, or NULL */
    unsigned pin_count;
    unsigned heap_count;
    ks_heap *heaps[KS_MAX_HEAPS];
    uint64_t live_total; /* over all pins, for peak_live */
    ks_dma_device *dma_device; /* NULL without DMA */
    uint64_t dma_reports_seen; /* the checker's report count after the last step */
    ks_live_view view;   /* kept current by every step */
    ks_run_stats stats;
    engine_pin pins[KS_MAX_PINS]; /* never moves: allocators may keep &pins[i].pin */
};

static const char *op_kind_name(unsigned kind)
{
    switch (kind) {
    case KS_OP_ALLOCATE: return "ALLOCATE";
    case KS_OP_FREE: return "FREE";
    case KS_OP_TOUCH: return "TOUCH";
    case KS_OP_DMA_CAPTURE: return "DMA_CAPTURE";
    case KS_OP_DMA_RENDER: return "DMA_RENDER";
    case KS_OP_DMA_LOOPBACK: return "DMA_LOOPBACK";
    default: return "unknown";
    }
}

/* ---- the live deque ------------------------------------------------------------------------- */

static inline void **deque_slot(const live_deque *deque, uint32_t k)
{
    return &deque->slots[(deque->head + k) & (deque->capacity - 1)];
}

/* Makes room for one more frame, so a push after it cannot fail. */
static bool deque_reserve_one(live_deque *deque)
{
    if (deque->count < deque->capacity)
        return true;
    if (deque->capacity > UINT32_MAX / 2)
        return false;
    uint32_t new_capacity = deque->capacity ? deque->capacity * 2 : DEQUE_INITIAL_SLOTS;
    void **slots = malloc((size_t)new_capacity * sizeof *slots);
    if (slots == NULL)
        return false;
    for (uint32_t k = 0; k < deque->count; k++)
        slots[k] = *deque_slot(deque, k);
    free(deque->slots);
    deque->slots = slots;
    deque->capacity = new_capacity;
    deque->head = 0;
    return true;
}

static void deque_push_back(live_deque *deque, void *frame)
{
    *deque_slot(deque, deque->count) = frame;
    deque->count++;
}

/* Moves elements [k + 1, count) down one place, in contiguous pieces. */
static void deque_close_gap_from_back(live_deque *deque, uint32_t k)
{
    uint32_t mask = deque->capacity - 1;
    uint32_t remaining = deque->count - k - 1;
    uint32_t dst = k;
    while (remaining > 0) {
        uint32_t phys_dst = (deque->head + dst) & mask;
        uint32_t phys_src = (phys_dst + 1) & mask;
        if (phys_src == 0) { /* the ring wraps between dst and src */
            deque->slots[phys_dst] = deque->slots[0];
            dst++;
            remaining--;
            continue;
        }
        uint32_t piece = deque->capacity - phys_src < remaining ? deque->capacity - phys_src : remaining;
        memmove(&deque->slots[phys_dst], &deque->slots[phys_src], (size_t)piece * sizeof(void *));
        dst += piece;
        remaining -= piece;
    }
}

/* Moves elements [0, k) up one place, last first, then advances head. */
static void deque_close_gap_from_front(live_deque *deque, uint32_t k)
{
    uint32_t mask = deque->capacity - 1;
    uint32_t remaining = k;
    uint32_t dst_end = k; /* logical index of the highest slot still to fill */
    while (remaining > 0) {
        uint32_t phys_dst = (deque->head + dst_end) & mask;
        if (phys_dst == 0) { /* the ring wraps between src and dst */
            deque->slots[0] = deque->slots[mask];
            dst_end--;
            remaining--;
            continue;
        }
        uint32_t piece = phys_dst < remaining ? phys_dst : remaining;
        memmove(&deque->slots[phys_dst - piece + 1], &deque->slots[phys_dst - piece], (size_t)piece * sizeof(void *));
        dst_end -= piece;
        remaining -= piece;
    }
    deque->head = (deque->head + 1) & mask;
}

/* Removes and returns the k-th frame (k < count), moving the shorter side. */
static void *deque_remove(live_deque *deque, uint32_t k)
{
    void *frame = *deque_slot(deque, k);
    if (k < deque->count / 2)
        deque_close_gap_from_front(deque, k);
    else
        deque_close_gap_from_back(deque, k);
    deque->count--;
    return frame;
}

/* ---- open ----------------------------------------------------------------------------------- */

static NTSTATUS validate_config(const ks_workload_config *config, ks_error *err)
{
    if (config->pin_count == 0 || config->pin_count > KS_MAX_PINS)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "engine: %u pins, expected 1 to %u", config->pin_count,
                            KS_MAX_PINS);
    if (config->heap_count > KS_MAX_HEAPS)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "engine: %u heaps, expected at most %u",
                            config->heap_count, KS_MAX_HEAPS);
    for (unsigned i = 0; i < config->pin_count; i++) {
        const ks_pin_config *pin = &config->pins[i];
        const KSALLOCATOR_DISPATCH *dispatch = pin->entry ? pin->entry->dispatch : NULL;
        if (pin->entry == NULL)
            return ks_error_set(err, STATUS_INVALID_PARAMETER,
                                "engine: pin %u (allocator '%s') has no entry: resolve it first", i, pin->allocator);
        if (dispatch == NULL || !dispatch->InitializeAllocator || !dispatch->DeleteAllocator ||
            !dispatch->Allocate || !dispatch->Free)
            return ks_error_set(err, STATUS_INVALID_PARAMETER,
                                "engine: pin %u: allocator '%s' has an incomplete dispatch table", i,
                                pin->allocator);
        if (pin->heap_index < -1 || pin->heap_index >= (int)config->heap_count)
            return ks_error_set(err, STATUS_INVALID_PARAMETER, "engine: pin %u names heap %d, expected -1 to %d", i,
                                pin->heap_index, (int)config->heap_count - 1);
    }
    return STATUS_SUCCESS;
}

static NTSTATUS create_heaps(ks_engine *engine, const ks_workload_config *config, ks_error *err)
{
    for (unsigned i = 0; i < config->heap_count; i++) {
        char name[16];
        snprintf(name, sizeof name, "heap%u", i);
        NTSTATUS status = ks_heap_create(name, config->heap_bytes[i], &engine->heaps[i], err);
        if (!NT_SUCCESS(status))
            return status;
        engine->heap_count = i + 1;
    }
    return STATUS_SUCCESS;
}

static NTSTATUS init_failed(const engine_pin *state, NTSTATUS status, ks_error *err)
{
    const KSALLOCATOR_FRAMING *framing = &state->pin.framing;
    char hint[160];
    return ks_error_set(err, status,
                        "%s (allocator '%s', frames=%u frame_bytes=%u align_mask=0x%x flags=0x%x heap=%s): "
                        "InitializeAllocator failed with %s%s",
                        state->name, state->entry->name ? state->entry->name : "?", (unsigned)framing->Frames,
                        (unsigned)framing->FrameSize, (unsigned)framing->FileAlignment,
                        (unsigned)framing->RequirementsFlags, state->pin.heap ? state->pin.heap->name : "private",
                        ks_status_name(status), ks_framing_limit_hint(state->entry, framing, hint, sizeof hint));
}

static NTSTATUS open_pin(ks_engine *engine, unsigned index, const ks_pin_config *config, ks_error *err)
{
    engine_pin *state = &engine->pins[index];
    snprintf(state->name, sizeof state->name, "pin%u", index);
    state->entry = config->entry;
    state->pin.abi_version = KSALLOC_ABI_VERSION;
    state->pin.id = index;
    state->pin.name = state->name;
    state->pin.framing = config->framing;
    state->pin.heap = config->heap_index >= 0 ? engine->heaps[config->heap_index] : NULL;
    state->pin.dma_adapter = engine->dma_device ? ks_dma_device_adapter(engine->dma_device) : NULL;
    state->pin.host_private = engine;
    state->framing = config->framing;
    void *initial_context = &state->pin;
    state->dispatch = config->entry->dispatch;
    if (engine->options.verifier != NULL) {
        state->verifier_pin = (ks_verifier_pin){engine->options.verifier, config->entry, &state->pin};
        initial_context = &state->verifier_pin;
        state->dispatch = &ks_verifier_dispatch;
    }
    ks_watch_name_pin(engine->options.watch, index, config->entry->name);
    ks_watch_enter(engine->watch_slot, KS_WATCH_INITIALIZE, index, engine->stats.ops);
    NTSTATUS status = state->dispatch->InitializeAllocator(initial_context, &state->framing, &state->context);
    ks_watch_leave(engine->watch_slot);
    if (!NT_SUCCESS(status))
        return init_failed(state, status, err);
    if (state->context == NULL) /* no call may reach the allocator with it: the pin stops here */
        return ks_error_set(err, STATUS_INVALID_HANDLE,
                            "%s (allocator '%s'): InitializeAllocator returned STATUS_SUCCESS with *Context left NULL",
                            state->name, state->entry->name ? state->entry->name : "?");
    state->initialized = true; /* state->framing now holds what the allocator settled on */
    engine->view.frames[index] = state->framing.Frames;
    return STATUS_SUCCESS;
}

/* ---- DMA device ------------------------------------------------------------------------------ */

static bool config_wants_dma(const ks_workload_config *config)
{
    if (config->dma_options[0] != '\0')
        return true;
    for (unsigned i = 0; i < config->pin_count; i++)
        if ((config->pins[i].entry->caps & KS_CAP_DMA) != 0)
            return true;
    return false;
}

static NTSTATUS create_dma_device(ks_engine *engine, const ks_workload_config *config, ks_error *err)
{
    if (!config_wants_dma(config))
        return STATUS_SUCCESS;
    if (memchr(config->dma_options, '\0', sizeof config->dma_options) == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "engine: dma options are not NUL-terminated");
    ks_dma_options options;
    ks_dma_options_init(&options);
    ks_error cause;
    ks_error_clear(&cause);
    NTSTATUS status = ks_dma_options_parse(&options, config->dma_options, &cause);
    if (NT_SUCCESS(status))
        status = ks_dma_device_create(&options, &engine->dma_device, &cause);
    if (!NT_SUCCESS(status))
        return ks_error_set(err, status, "engine: dma device '%s': %s", config->dma_options, cause.message);
    engine->view.dma = true;
    return STATUS_SUCCESS;
}

/* STATUS_DATA_ERROR naming the first report the checker made since the last call, if any. */
static NTSTATUS dma_new_report(ks_engine *engine, const char *where, ks_error *err)
{
    if (engine->dma_device == NULL)
        return STATUS_SUCCESS;
    ks_dma_adapter *adapter = ks_dma_device_adapter(engine->dma_device);
    uint64_t count = ks_dma_report_count(adapter);
    uint64_t seen = engine->dma_reports_seen;
    engine->dma_reports_seen = count;
    if (count <= seen)
        return STATUS_SUCCESS;
    ks_dma_report report;
    bool kept = ks_dma_report_at(adapter, (size_t)seen, &report);
    return ks_error_set(err, STATUS_DATA_ERROR, "%s: %" PRIu64 " DMA-debug report%s; first: %s: %s", where,
                        count - seen, count - seen == 1 ? "" : "s",
                        kept ? ks_dma_rule_name(report.rule) : "?",
                        kept ? report.message : "(not kept: over max_reports_kept)");
}

/* ---- engine memory -------------------------------------------------------------------------- */

/* Each thread keeps the struct of the last engine it closed, zeroed again when the next open
 * takes it: memory only, nothing of the closed engine survives the memset. A thread's spare is
 * freed when the thread exits (the key's destructor). */
static pthread_key_t spare_engine_key;
static pthread_once_t spare_engine_once = PTHREAD_ONCE_INIT;
static bool spare_engine_ready;

static void spare_engine_key_create(void)
{
    spare_engine_ready = pthread_key_create(&spare_engine_key, free) == 0;
}

static ks_engine *engine_memory_take(void)
{
    pthread_once(&spare_engine_once, spare_engine_key_create);
    ks_engine *engine = spare_engine_ready ? pthread_getspecific(spare_engine_key) : NULL;
    if (engine == NULL)
        return calloc(1, sizeof *engine);
    pthread_setspecific(spare_engine_key, NULL);
    memset(engine, 0, sizeof *engine);
    return engine;
}

static void engine_memory_give(ks_engine *engine)
{
    if (!spare_engine_ready || pthread_getspecific(spare_engine_key) != NULL ||
        pthread_setspecific(spare_engine_key, engine) != 0)
        free(engine);
}

/* Frees what is live (newest first) unless keep_live, deletes every instance, then destroys the
 * heaps, which must outlive every instance that draws from them. Returns the first error. */
static NTSTATUS teardown(ks_engine *engine, bool keep_live, ks_error *err)
{
    for (unsigned i = 0; i < engine->pin_count; i++) {
        engine_pin *state = &engine->pins[i];
        while (state->initialized && !keep_live && state->live.count > 0) {
            void *frame = deque_remove(&state->live, state->live.count - 1);
            ks_watch_enter(engine->watch_slot, KS_WATCH_FREE, i, engine->stats.ops);
            state->dispatch->Free(state->context, frame);
            ks_watch_leave(engine->watch_slot);
        }
        if (state->initialized) {
            ks_watch_enter(engine->watch_slot, KS_WATCH_DELETE, i, engine->stats.ops);
            state->dispatch->DeleteAllocator(state->context);
            ks_watch_leave(engine->watch_slot);
        }
        state->initialized = false;
        free(state->live.slots);
        state->live = (live_deque){0};
    }
    NTSTATUS first = STATUS_SUCCESS;
    for (unsigned i = 0; i < engine->heap_count; i++) {
        NTSTATUS status = ks_heap_destroy(engine->heaps[i], NT_SUCCESS(first) ? err : NULL);
        if (NT_SUCCESS(first) && !NT_SUCCESS(status))
            first = status;
    }
    if (engine->dma_device != NULL) {
        ks_dma_device_stop(engine->dma_device); /* runs the leak checks */
        NTSTATUS status = dma_new_report(engine, "teardown", NT_SUCCESS(first) ? err : NULL);
        if (NT_SUCCESS(first))
            first = status;
        ks_dma_device_destroy(engine->dma_device);
    }
    engine_memory_give(engine);
    return first;
}

NTSTATUS ks_engine_open(const ks_workload_config *config, const ks_engine_options *options, ks_engine **engine_out,
                        ks_error *err)
{
    if (config == NULL || engine_out == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "engine: %s is NULL", config ? "engine_out" : "config");
    *engine_out = NULL;
    NTSTATUS status = validate_config(config, err);
    if (!NT_SUCCESS(status))
        return status;
    ks_engine *engine = engine_memory_take();
    if (engine == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "engine: out of memory");
    if (options != NULL)
        engine->options = *options;
    engine->watch_slot = ks_watch_slot_at(engine->options.watch, 0);
    engine->view.pin_count = config->pin_count;
    status = create_dma_device(engine, config, err);
    if (NT_SUCCESS(status))
        status = create_heaps(engine, config, err);
    for (unsigned i = 0; NT_SUCCESS(status) && i < config->pin_count; i++) {
        engine->pin_count = i + 1;
        status = open_pin(engine, i, &config->pins[i], err);
    }
    if (!NT_SUCCESS(status)) {
        teardown(engine, false, NULL);
        return status;
    }
    *engine_out = engine;
    return STATUS_SUCCESS;
}

/* ---- step ----------------------------------------------------------------------------------- */

static NTSTATUS validate_op(const ks_engine *engine, const ks_op *op, ks_error *err)
{
    if (op->pin >= engine->pin_count)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "op %s on pin %u: no such pin, the workload has %u",
                            op_kind_name(op->kind), op->pin, engine->pin_count);
    bool dma_op = op->kind >= KS_OP_DMA_FIRST && op->kind <= KS_OP_DMA_LAST;
    if (op->kind != KS_OP_ALLOCATE && op->kind != KS_OP_FREE && op->kind != KS_OP_TOUCH && !dma_op)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "op kind %u on pin %u: unknown kind, expected ALLOCATE, FREE, TOUCH or a DMA op",
                            op->kind, op->pin);
    if (dma_op && engine->dma_device == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "op %s on pin %u: the workload has no DMA device (set dma options)",
                            op_kind_name(op->kind), op->pin);
    uint32_t live = engine->pins[op->pin].live.count;
    if (op->kind != KS_OP_ALLOCATE && op->arg >= live)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "op %s on pin %u: k=%u but %u frame%s live",
                            op_kind_name(op->kind), op->pin, (unsigned)op->arg, (unsigned)live,
                            live == 1 ? " is" : "s are");
    if (op->kind == KS_OP_DMA_LOOPBACK && op->arg + 1 >= live)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "op DMA_LOOPBACK on pin %u: k=%u must be older than the newest of %u live frames",
                            op->pin, (unsigned)op->arg, (unsigned)live);
    return STATUS_SUCCESS;
}

/* Writes the first byte of every 4 KiB page of the frame and its last byte. */
static void touch_bare(void *frame, uint32_t frame_bytes, uint8_t value)
{
    volatile uint8_t *bytes = frame;
    if (frame_bytes == 0)
        return;
    for (uint32_t offset = 0; offset < frame_bytes; offset += TOUCH_STRIDE_BYTES) {
        bytes[offset] = value;
        if (frame_bytes - offset <= TOUCH_STRIDE_BYTES)
            break; /* the next stride would overflow offset near 4 GiB */
    }
    bytes[frame_bytes - 1] = value;
}

static NTSTATUS step_allocate(ks_engine *engine, engine_pin *state, unsigned pin, bool *allocated, ks_error *err)
{
    if (!deque_reserve_one(&state->live))
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES,
                            "op ALLOCATE on pin %u: out of memory tracking %u live frames", pin,
                            (unsigned)state->live.count);
    ks_watch_enter(engine->watch_slot, KS_WATCH_ALLOCATE, pin, engine->stats.ops);
    void *frame = state->dispatch->Allocate(state->context);
    ks_watch_leave(engine->watch_slot);
    *allocated = frame != NULL;
    engine->view.last_allocate_failed[pin] = frame == NULL;
    if (frame == NULL) {
        engine->stats.allocation_failures++;
        return STATUS_SUCCESS;
    }
    deque_push_back(&state->live, frame);
    engine->stats.allocations++;
    if (++engine->live_total > engine->stats.peak_live)
        engine->stats.peak_live = engine->live_total;
    return STATUS_SUCCESS;
}

/* ---- DMA ops -------------------------------------------------------------------------------- */

/* One DMA op in progress: where it acts and what came of it. */
typedef struct dma_job {
    ks_engine *engine;
    const ks_op *op;
    engine_pin *state;
    void *frame;
    void *second;        /* loopback: the newest live frame, the copy's destination */
    size_t frame_bytes;  /* what the op moves */
    uint64_t seed;
    ks_dma_addr bus;     /* the frame's device address, KS_DMA_ADDR_ERROR until known */
    uint64_t bytes_done;
    bool injected_fault; /* the device stopped on a fault it injected on purpose */
} dma_job;

static ks_dma_adapter *job_adapter(const dma_job *job)
{
    return ks_dma_device_adapter(job->engine->dma_device);
}

static bool pin_is_dma(const engine_pin *state)
{
    return (state->entry->caps & KS_CAP_DMA) != 0;
}

/* The frame size and first bus address of a frame in the adapter's registry. */
static NTSTATUS registered_frame(dma_job *job, const void *frame, size_t *bytes, ks_error *err)
{
    ks_dma_frame_info info;
    ks_dma_segment first;
    NTSTATUS status = ks_dma_frame_lookup(job_adapter(job), frame, &info, &first, 1, err);
    if (!NT_SUCCESS(status))
        return status;
    *bytes = info.bytes;
    if (frame == job->frame)
        job->bus = info.bus_addr;
    return STATUS_SUCCESS;
}

/* A device result other than OK: an injected fault is noted, anything else fails the op. */
static NTSTATUS device_outcome(dma_job *job, const ks_dma_completion *completion, ks_error *err)
{
    job->bytes_done += completion->bytes_done;
    if (completion->result == KS_DMA_RESULT_OK)
        return STATUS_SUCCESS;
    if (completion->injected) {
        job->injected_fault = true;
        return STATUS_SUCCESS;
    }
    return ks_error_set(err, STATUS_UNSUCCESSFUL, "device %s at bus 0x%" PRIx64 " after %" PRIu64 " bytes",
                        ks_dma_result_name(completion->result), completion->fault_bus_addr, completion->bytes_done);
}

static NTSTATUS check_received(const void *frame, size_t bytes, uint64_t seed, const char *who, ks_error *err)
{
    size_t bad = ks_dma_pattern_check(frame, bytes, seed, 0);
    if (bad == SIZE_MAX)
        return STATUS_SUCCESS;
    return ks_error_set(err, STATUS_DATA_ERROR, "byte %zu of %zu is not what the %s sent", bad, bytes, who);
}

/* Maps frame for one op; a failed map leaves err filled and returns KS_DMA_ADDR_ERROR. */
static ks_dma_addr map_for_op(dma_job *job, void *frame, ks_dma_direction direction, ks_error *err)
{
    ks_dma_addr bus = ks_dma_map_single(job_adapter(job), frame, job->frame_bytes, direction, err);
    if (ks_dma_mapping_error(job_adapter(job), bus))
        return KS_DMA_ADDR_ERROR;
    if (frame == job->frame)
        job->bus = bus;
    return bus;
}

/* Cuts [bus, bus + bytes) as a driver programs the device: at the boundary and the maximum
 * segment length on a scatter/gather device, one segment otherwise. Returns the count. */
static uint32_t cut_range(const ks_dma_device_description *device, ks_dma_addr bus, uint64_t bytes,
                          ks_dma_segment *segments, uint32_t max_segments)
{
    uint32_t count = 0;
    while (bytes > 0 && count < max_segments) {
        uint64_t piece = bytes;
        if (device->scatter_gather && device->max_segment_bytes != 0 && piece > device->max_segment_bytes)
            piece = device->max_segment_bytes;
        if (device->scatter_gather && device->boundary_bytes != 0) {
            uint64_t to_boundary = device->boundary_bytes - (bus & (device->boundary_bytes - 1));
            piece = piece < to_boundary ? piece : to_boundary;
        }
        segments[count++] = (ks_dma_segment){.bus_addr = bus, .bytes = piece};
        bus += piece;
        bytes -= piece;
    }
    return count;
}

static uint32_t cut_bound(const ks_dma_device_description *device, uint64_t bytes)
{
    uint64_t limit = 0;
    if (device->scatter_gather) {
        limit = device->max_segment_bytes;
        if (device->boundary_bytes != 0 && (limit == 0 || device->boundary_bytes < limit))
            limit = device->boundary_bytes;
    }
    uint64_t bound = limit == 0 ? 1 : bytes / limit + 2;
    return bound > UINT32_MAX ? UINT32_MAX : (uint32_t)bound;
}

/* The device copies src into dst, both mapped, in one descriptor. */
static NTSTATUS device_copy(dma_job *job, ks_dma_addr src, ks_dma_addr dst, ks_error *err)
{
    const ks_dma_device_description *device = ks_dma_adapter_description(job_adapter(job));
    uint32_t bound = cut_bound(device, job->frame_bytes);
    ks_dma_segment *segments = malloc(2 * (size_t)bound * sizeof *segments);
    if (segments == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "no memory for %u segments", bound);
    ks_dma_descriptor descriptor = {.op = KS_DMA_OP_COPY, .src = segments, .dst = segments + bound};
    descriptor.src_count = cut_range(device, src, job->frame_bytes, segments, bound);
    descriptor.dst_count = cut_range(device, dst, job->frame_bytes, segments + bound, bound);
    ks_dma_completion completion;
    NTSTATUS status = ks_dma_device_run(job->engine->dma_device, &descriptor, &completion, 0, err);
    free(segments);
    return NT_SUCCESS(status) ? device_outcome(job, &completion, err) : status;
}

/* The op on memory the allocator did not map for DMA: map, run, unmap, check. */
static NTSTATUS mapped_capture(dma_job *job, ks_error *err)
{
    ks_dma_addr bus = map_for_op(job, job->frame, KS_DMA_FROM_DEVICE, err);
    if (bus == KS_DMA_ADDR_ERROR)
        return STATUS_INSUFFICIENT_RESOURCES;
    ks_dma_completion completion;
    NTSTATUS status =
        ks_dma_device_write_pattern(job->engine->dma_device, bus, job->frame_bytes, job->seed, &completion, err);
    ks_dma_unmap_single(job_adapter(job), bus, job->frame_bytes, KS_DMA_FROM_DEVICE); /* the sync for CPU */
    if (NT_SUCCESS(status))
        status = device_outcome(job, &completion, err);
    if (NT_SUCCESS(status) && !job->injected_fault)
        status = check_received(job->frame, job->frame_bytes, job->seed, "device", err);
    return status;
}

static NTSTATUS mapped_render(dma_job *job, ks_error *err)
{
    ks_dma_pattern_fill(job->frame, job->frame_bytes, job->seed, 0);
    uint64_t expected = ks_dma_checksum(job->frame, job->frame_bytes);
    ks_dma_addr bus = map_for_op(job, job->frame, KS_DMA_TO_DEVICE, err); /* the sync for device */
    if (bus == KS_DMA_ADDR_ERROR)
        return STATUS_INSUFFICIENT_RESOURCES;
    ks_dma_completion completion;
    NTSTATUS status = ks_dma_device_read_checksum(job->engine->dma_device, bus, job->frame_bytes, &completion, err);
    ks_dma_unmap_single(job_adapter(job), bus, job->frame_bytes, KS_DMA_TO_DEVICE);
    if (NT_SUCCESS(status))
        status = device_outcome(job, &completion, err);
    if (NT_SUCCESS(status) && !job->injected_fault && completion.checksum != expected)
        status = ks_error_set(err, STATUS_DATA_ERROR, "device checksum 0x%016" PRIx64 " differs from the CPU's 0x%016" PRIx64,
                              completion.checksum, expected);
    return status;
}

static NTSTATUS mapped_loopback(dma_job *job, ks_error *err)
{
    ks_dma_pattern_fill(job->frame, job->frame_bytes, job->seed, 0);
    ks_dma_addr src = map_for_op(job, job->frame, KS_DMA_TO_DEVICE, err);
    if (src == KS_DMA_ADDR_ERROR)
        return STATUS_INSUFFICIENT_RESOURCES;
    ks_dma_addr dst = map_for_op(job, job->second, KS_DMA_FROM_DEVICE, err);
    NTSTATUS status = dst == KS_DMA_ADDR_ERROR ? STATUS_INSUFFICIENT_RESOURCES : device_copy(job, src, dst, err);
    if (dst != KS_DMA_ADDR_ERROR)
        ks_dma_unmap_single(job_adapter(job), dst, job->frame_bytes, KS_DMA_FROM_DEVICE);
    ks_dma_unmap_single(job_adapter(job), src, job->frame_bytes, KS_DMA_TO_DEVICE);
    if (NT_SUCCESS(status) && !job->injected_fault)
        status = check_received(job->second, job->frame_bytes, job->seed, "device's copy", err);
    return status;
}

static ks_dma_transfer transfer_of(uint8_t kind)
{
    return kind == KS_OP_DMA_CAPTURE  ? KS_DMA_TRANSFER_CAPTURE
           : kind == KS_OP_DMA_RENDER ? KS_DMA_TRANSFER_RENDER
                                      : KS_DMA_TRANSFER_LOOPBACK;
}

/* The op on a DMA allocator's frame, where its allocator mapped it. */
static NTSTATUS registered_transfer(dma_job *job, ks_error *err)
{
    if (job->second != NULL) {
        size_t second_bytes = 0;
        NTSTATUS status = registered_frame(job, job->second, &second_bytes, err);
        if (NT_SUCCESS(status) && second_bytes != job->frame_bytes)
            status = ks_error_set(err, STATUS_INVALID_PARAMETER, "loopback frames differ in size (%zu, %zu)",
                                  job->frame_bytes, second_bytes);
        if (!NT_SUCCESS(status))
            return status;
    }
    ks_dma_transfer_result result;
    NTSTATUS status = ks_dma_frame_transfer(job->engine->dma_device, transfer_of(job->op->kind), job->frame,
                                            job->second, job->seed, job->engine->options.dma_transfer_flags,
                                            &result, err);
    job->bytes_done += result.bytes_done;
    if (status == STATUS_UNSUCCESSFUL && result.injected) {
        job->injected_fault = true;
        return STATUS_SUCCESS;
    }
    return status;
}

/* Saves the frames the device may overwrite, for the verifier's pattern (NULL: nothing saved). */
static uint8_t *snapshot_take(const dma_job *job)
{
    if (job->engine->options.verifier == NULL)
        return NULL;
    uint8_t *saved = malloc(2 * job->frame_bytes);
    if (saved == NULL)
        return NULL;
    memcpy(saved, job->frame, job->frame_bytes);
    if (job->second != NULL)
        memcpy(saved + job->frame_bytes, job->second, job->frame_bytes);
    return saved;
}

static void snapshot_restore(const dma_job *job, uint8_t *saved)
{
    if (saved == NULL)
        return;
    memcpy(job->frame, saved, job->frame_bytes);
    if (job->second != NULL)
        memcpy(job->second, saved + job->frame_bytes, job->frame_bytes);
    free(saved);
}

static NTSTATUS dma_job_run(dma_job *job, ks_error *err)
{
    if (job->frame_bytes == 0)
        return STATUS_SUCCESS; /* nothing to move */
    uint8_t *saved = snapshot_take(job);
    if (saved == NULL && job->engine->options.verifier != NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "no memory to keep the verifier's pattern");
    NTSTATUS status;
    if (pin_is_dma(job->state))
        status = registered_transfer(job, err);
    else if (job->op->kind == KS_OP_DMA_CAPTURE)
        status = mapped_capture(job, err);
    else if (job->op->kind == KS_OP_DMA_RENDER)
        status = mapped_render(job, err);
    else
        status = mapped_loopback(job, err);
    snapshot_restore(job, saved);
    return status;
}

static NTSTATUS step_dma(ks_engine *engine, engine_pin *state, const ks_op *op, ks_error *err)
{
    dma_job job = {.engine = engine, .op = op, .state = state, .bus = KS_DMA_ADDR_ERROR,
                   .seed = (engine->stats.ops + 1) * DMA_SEED_STEP};
    job.frame = *deque_slot(&state->live, op->arg);
    if (op->kind == KS_OP_DMA_LOOPBACK)
        job.second = *deque_slot(&state->live, state->live.count - 1);
    ks_error cause;
    ks_error_clear(&cause);
    NTSTATUS status = STATUS_SUCCESS;
    if (pin_is_dma(state))
        status = registered_frame(&job, job.frame, &job.frame_bytes, &cause);
    else
        job.frame_bytes = state->framing.FrameSize;
    if (NT_SUCCESS(status))
        status = dma_job_run(&job, &cause);
    engine->stats.dma_ops++;
    engine->stats.dma_bytes += job.bytes_done;
    engine->stats.dma_injected_faults += job.injected_fault ? 1 : 0;
    if (NT_SUCCESS(status))
        return STATUS_SUCCESS;
    return ks_error_set(err, status, "op %s on pin %u k=%u (frame %p, bus 0x%" PRIx64 ", %zu bytes): %s",
                        op_kind_name(op->kind), op->pin, (unsigned)op->arg, job.frame, job.bus, job.frame_bytes,
                        cause.message);
}

NTSTATUS ks_engine_step(ks_engine *engine, const ks_op *op, bool *allocated, ks_error *err)
{
    if (engine == NULL || op == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "engine step: %s is NULL", engine ? "op" : "engine");
    NTSTATUS status = validate_op(engine, op, err);
    if (!NT_SUCCESS(status))
        return status;
    engine_pin *state = &engine->pins[op->pin];
    bool got_frame = false;
    if (op->kind == KS_OP_ALLOCATE) {
        status = step_allocate(engine, state, op->pin, &got_frame, err);
        if (!NT_SUCCESS(status))
            return status;
    } else if (op->kind == KS_OP_FREE) {
        void *frame = deque_remove(&state->live, op->arg);
        ks_watch_enter(engine->watch_slot, KS_WATCH_FREE, op->pin, engine->stats.ops);
        state->dispatch->Free(state->context, frame);
        ks_watch_leave(engine->watch_slot);
        engine->live_total--;
        engine->stats.frees++;
    } else if (op->kind >= KS_OP_DMA_FIRST) {
        ks_watch_enter(engine->watch_slot, KS_WATCH_FRAME_ACCESS, op->pin, engine->stats.ops);
        status = step_dma(engine, state, op, err);
        ks_watch_leave(engine->watch_slot);
    } else {
        void *frame = *deque_slot(&state->live, op->arg);
        ks_watch_enter(engine->watch_slot, KS_WATCH_FRAME_ACCESS, op->pin, engine->stats.ops);
        if (engine->options.verifier != NULL)
            ks_verifier_touch(state->context, frame);
        else
            touch_bare(frame, state->framing.FrameSize, (uint8_t)(engine->stats.ops | 1u));
        ks_watch_leave(engine->watch_slot);
        engine->stats.touches++;
    }
    engine->view.live[op->pin] = state->live.count;
    engine->stats.ops++;
    NTSTATUS report_status = dma_new_report(engine, op_kind_name(op->kind), NT_SUCCESS(status) ? err : NULL);
    if (NT_SUCCESS(status))
        status = report_status;
    if (allocated != NULL)
        *allocated = got_frame;
    /* A failed DMA op ran all the same: the trace records it, so a replay fails at it too. */
    NTSTATUS trace_status = STATUS_SUCCESS;
    if (engine->options.trace != NULL &&
        !NT_SUCCESS(trace_status = ks_trace_writer_op(engine->options.trace, op, got_frame)) && NT_SUCCESS(status))
        return ks_error_set(err, trace_status, "op %s on pin %u was executed but the trace writer failed with %s",
                            op_kind_name(op->kind), op->pin, ks_status_name(trace_status));
    return status;
}

/* ---- accessors ------------------------------------------------------------------------------ */

void ks_engine_view(const ks_engine *engine, ks_live_view *view)
{
    *view = engine->view;
}

void *ks_engine_frame(const ks_engine *engine, unsigned pin, uint32_t k)
{
    if (engine == NULL || pin >= engine->pin_count || k >= engine->pins[pin].live.count)
        return NULL;
    return *deque_slot(&engine->pins[pin].live, k);
}

const KSALLOCATOR_FRAMING *ks_engine_framing(const ks_engine *engine, unsigned pin)
{
    if (engine == NULL || pin >= engine->pin_count)
        return NULL;
    return &engine->pins[pin].framing;
}

struct ks_dma_device *ks_engine_dma_device(const ks_engine *engine)
{
    return engine != NULL ? engine->dma_device : NULL;
}

const ks_run_stats *ks_engine_stats(const ks_engine *engine)
{
    return &engine->stats;
}

NTSTATUS ks_engine_close(ks_engine *engine, ks_error *err)
{
    if (engine == NULL)
        return STATUS_SUCCESS;
    return teardown(engine, engine->options.keep_live_at_close, err);
}

/* ---- run_profile ---------------------------------------------------------------------------- */

static uint64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

NTSTATUS ks_engine_run_profile(ks_engine *engine, ks_profile profile, uint64_t seed, uint64_t op_count,
                               bool stop_at_fault, ks_error *err)
{
    if (engine == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "run profile: engine is NULL");
    if ((unsigned)profile >= KS_PROFILE_COUNT)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "run profile: unknown profile %d", (int)profile);
    const struct ks_verifier *verifier = stop_at_fault ? engine->options.verifier : NULL;
    ks_generator gen;
    ks_generator_init(&gen, profile, seed, &engine->view);
    NTSTATUS status = STATUS_SUCCESS;
    uint64_t start_ns = monotonic_ns();
    for (uint64_t i = 0; i < op_count; i++) {
        ks_op op;
        ks_generator_next(&gen, &engine->view, &op);
        uint64_t op_index = engine->stats.ops;
        status = ks_engine_step(engine, &op, NULL, err);
        if (!NT_SUCCESS(status)) {
            ks_error cause = err ? *err : (ks_error){0};
            ks_error_set(err, status, "profile %s seed %llu op %llu: %s", ks_profile_name(profile),
                         (unsigned long long)seed, (unsigned long long)op_index, cause.message);
            break;
        }
        if (verifier != NULL && ks_verifier_fault_count(verifier) > 0)
            break;
    }
    engine->stats.elapsed_ns += monotonic_ns() - start_ns;
    return status;
}
