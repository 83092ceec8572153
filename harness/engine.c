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
 * Memory: one pointer per live frame (the deque at most doubles), plus a fixed engine struct.
 * Thread safety: one engine belongs to one thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heap.h"
#include "trace.h"
#include "verifier.h"
#include "workload.h"

#define DEQUE_INITIAL_SLOTS 16u
#define TOUCH_STRIDE_BYTES 4096u

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
    unsigned pin_count;
    unsigned heap_count;
    ks_heap *heaps[KS_MAX_HEAPS];
    uint64_t live_total; /* over all pins, for peak_live */
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
    return ks_error_set(err, status,
                        "%s (allocator '%s', frames=%u frame_bytes=%u align_mask=0x%x flags=0x%x heap=%s): "
                        "InitializeAllocator failed with %s",
                        state->name, state->entry->name ? state->entry->name : "?", (unsigned)framing->Frames,
                        (unsigned)framing->FrameSize, (unsigned)framing->FileAlignment,
                        (unsigned)framing->RequirementsFlags, state->pin.heap ? state->pin.heap->name : "private",
                        ks_status_name(status));
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
    state->pin.dma_adapter = NULL;
    state->pin.host_private = engine;
    state->framing = config->framing;
    void *initial_context = &state->pin;
    state->dispatch = config->entry->dispatch;
    if (engine->options.verifier != NULL) {
        state->verifier_pin = (ks_verifier_pin){engine->options.verifier, config->entry, &state->pin};
        initial_context = &state->verifier_pin;
        state->dispatch = &ks_verifier_dispatch;
    }
    NTSTATUS status = state->dispatch->InitializeAllocator(initial_context, &state->framing, &state->context);
    if (!NT_SUCCESS(status))
        return init_failed(state, status, err);
    state->initialized = true; /* state->framing now holds what the allocator settled on */
    engine->view.frames[index] = state->framing.Frames;
    return STATUS_SUCCESS;
}

/* Frees what is live (newest first) unless keep_live, deletes every instance, then destroys the
 * heaps, which must outlive every instance that draws from them. Returns the first error. */
static NTSTATUS teardown(ks_engine *engine, bool keep_live, ks_error *err)
{
    for (unsigned i = 0; i < engine->pin_count; i++) {
        engine_pin *state = &engine->pins[i];
        while (state->initialized && !keep_live && state->live.count > 0) {
            void *frame = deque_remove(&state->live, state->live.count - 1);
            state->dispatch->Free(state->context, frame);
        }
        if (state->initialized)
            state->dispatch->DeleteAllocator(state->context);
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
    free(engine);
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
    ks_engine *engine = calloc(1, sizeof *engine);
    if (engine == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "engine: out of memory");
    if (options != NULL)
        engine->options = *options;
    engine->view.pin_count = config->pin_count;
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
    if (op->kind != KS_OP_ALLOCATE && op->kind != KS_OP_FREE && op->kind != KS_OP_TOUCH)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "op kind %u on pin %u: unknown kind, expected ALLOCATE, FREE or TOUCH", op->kind, op->pin);
    uint32_t live = engine->pins[op->pin].live.count;
    if (op->kind != KS_OP_ALLOCATE && op->arg >= live)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "op %s on pin %u: k=%u but %u frame%s live",
                            op_kind_name(op->kind), op->pin, (unsigned)op->arg, (unsigned)live,
                            live == 1 ? " is" : "s are");
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
    void *frame = state->dispatch->Allocate(state->context);
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
        state->dispatch->Free(state->context, frame);
        engine->live_total--;
        engine->stats.frees++;
    } else {
        void *frame = *deque_slot(&state->live, op->arg);
        if (engine->options.verifier != NULL)
            ks_verifier_touch(state->context, frame);
        else
            touch_bare(frame, state->framing.FrameSize, (uint8_t)(engine->stats.ops | 1u));
        engine->stats.touches++;
    }
    engine->view.live[op->pin] = state->live.count;
    engine->stats.ops++;
    if (allocated != NULL)
        *allocated = got_frame;
    if (engine->options.trace != NULL && !NT_SUCCESS(status = ks_trace_writer_op(engine->options.trace, op, got_frame)))
        return ks_error_set(err, status, "op %s on pin %u was executed but the trace writer failed with %s",
                            op_kind_name(op->kind), op->pin, ks_status_name(status));
    return STATUS_SUCCESS;
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
