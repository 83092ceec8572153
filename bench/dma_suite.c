/*
 * dma_suite.c -- the DMA streaming benchmarks: dma_capture and dma_render through the emulated
 * device of harness/dma/, for every catalogued allocator (and plugin).
 *
 * One iteration is one frame through a capture or render stream, exactly as `ksalloc dma` and
 * the engine's capture/render profiles do it: Allocate a frame, one device op on it (capture:
 * the device writes a pattern, the CPU checks it after the sync; render: the CPU fills the frame,
 * the device reads it and checksums it), then Free the oldest frame once DMA_WINDOW_FRAMES are
 * in flight. A KS_CAP_DMA allocator's frames are used where it mapped them (with the syncs a
 * correct driver makes); any other allocator's frame is mapped for the op with dma_map_single
 * and unmapped after it, bounced when the device cannot reach it. So the figure is the whole
 * streaming path: allocator, DMA API, device emulation and the data check. The engine runs
 * without the verifier; every op still checks the data the device moved, and a mismatch, an
 * uninjected device fault or a DMA-debug report stops the run with the engine's message.
 *
 * The bound, labelled inline_freelist like the other suites' bound: frames from a free list in
 * the loop, and the bytes a capture moves written and checked by the CPU directly (memset, then
 * a compare), with no DMA API and no device. "x bound" therefore reads as the price of the whole
 * emulated path per frame, of which the allocator is one part; allocators are compared with each
 * other by ns/op within a group.
 *
 * Two more groups measure the engine itself, with no allocator: dma_copy/engine/<bytes> is one
 * batch of DMA_COPY_BATCH COPY descriptors between two coherent buffers (submitted together, one
 * doorbell, the next batch queued before the last is waited for: the ring stays fed), beside dma_copy/memcpy/<bytes>, as many memcpys of the same
 * bytes (64 KiB and 1 MiB): their ratio is the engine's copy throughput against the host's. dma_descriptor/engine/64 submits a batch of
 * DMA_DESCRIPTOR_BATCH 64-byte copies, rings once and waits for the last, so its time per op
 * (ops_per_iteration = the batch) is the engine's per-descriptor overhead when the ring is fed.
 *
 * The device: DMA_DEVICE ("mask=64,sg=1": coherent, scatter/gather, no IOMMU), so that no
 * allocator is measured bouncing and dma_sg can run. The time is wall-clock time (the device
 * works on its own thread, which the process's CPU time of the benchmark thread would miss). Frame sizes 4 KiB and 64 KiB (64 KiB in quick mode). No latency
 * histogram (one op is microseconds: Google Benchmark's mean is the figure) and one thread: the
 * emulated device runs its own worker thread.
 */
#include "dma_suite.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dma/dma.h"
#include "gbench_c.h"
#include "progress.h"
#include "workload.h"

#define DMA_WINDOW_FRAMES 8u
#define DMA_DEVICE "mask=64,sg=1"
#define DMA_ALIGN_MASK 4095u /* page-aligned, as DMA buffers are */

#define DMA_DESCRIPTOR_BATCH 32u
#define DMA_COPY_BATCH 32u
#define DMA_DESCRIPTOR_BYTES 64u

static const size_t dma_sizes_full[] = {4096, 65536};
static const size_t dma_copy_sizes[] = {65536, 1048576};
static const size_t dma_sizes_quick[] = {65536};

typedef enum dma_kind { DMA_STREAM, DMA_STREAM_BOUND, DMA_COPY_ENGINE, DMA_COPY_MEMCPY, DMA_DESCRIPTORS } dma_kind;

typedef struct dma_case {
    char name[160];
    dma_kind kind;
    const ks_allocator_entry *entry; /* NULL: the inline bound */
    const char *label;
    ks_profile profile;
    size_t frame_bytes;
} dma_case;

struct ks_bench_dma_cases {
    dma_case *cases;
    size_t count;
    size_t capacity;
};

static KSALLOCATOR_FRAMING dma_framing(size_t frame_bytes)
{
    KSALLOCATOR_FRAMING framing;
    memset(&framing, 0, sizeof framing);
    framing.PoolType = NonPagedPool;
    framing.Frames = DMA_WINDOW_FRAMES + 1;
    framing.FrameSize = (ULONG)frame_bytes;
    framing.FileAlignment = DMA_ALIGN_MASK;
    return framing;
}

static NTSTATUS dma_open(const dma_case *dc, ks_engine **engine, ks_error *err)
{
    ks_workload_config config;
    KSALLOCATOR_FRAMING framing = dma_framing(dc->frame_bytes);
    NTSTATUS status = ks_profile_config(dc->profile, dc->entry, dc->label, &framing, &config, err);
    if (!NT_SUCCESS(status))
        return status;
    snprintf(config.dma_options, sizeof config.dma_options, "%s", DMA_DEVICE);
    ks_engine_options options = {0};
    return ks_engine_open(&config, &options, engine, err);
}

/* One frame through the stream: Allocate, the device op on it, Free the oldest at a full window.
 * A NULL from Allocate is counted and the frame's op skipped, as the engine's profiles do. */
static NTSTATUS dma_frame(ks_engine *engine, ks_op_kind kind, uint64_t *failures, ks_error *err)
{
    bool allocated = false;
    ks_op op = {.kind = KS_OP_ALLOCATE};
    NTSTATUS status = ks_engine_step(engine, &op, &allocated, err);
    if (!NT_SUCCESS(status))
        return status;
    ks_live_view view;
    ks_engine_view(engine, &view);
    if (!allocated)
        (*failures)++;
    else if (!NT_SUCCESS(status = ks_engine_step(engine, &(ks_op){.kind = (uint8_t)kind, .arg = view.live[0] - 1},
                                                 NULL, err)))
        return status;
    if (view.live[0] >= DMA_WINDOW_FRAMES || (!allocated && view.live[0] > 0))
        status = ks_engine_step(engine, &(ks_op){.kind = KS_OP_FREE, .arg = 0}, NULL, err);
    return status;
}

static void dma_engine_body(ks_gbench_state *state, const dma_case *dc)
{
    ks_engine *engine = NULL;
    ks_error err;
    ks_error_clear(&err);
    if (!NT_SUCCESS(dma_open(dc, &engine, &err))) {
        ks_gbench_skip_with_error(state, err.message);
        while (ks_gbench_keep_running_batch(state, 1)) {
        }
        return;
    }
    ks_op_kind kind = dc->profile == KS_PROFILE_CAPTURE ? KS_OP_DMA_CAPTURE : KS_OP_DMA_RENDER;
    uint64_t failures = 0;
    bool failed = false;
    for (unsigned warm = 0; warm < 2 * DMA_WINDOW_FRAMES && !failed; warm++)
        failed = !NT_SUCCESS(dma_frame(engine, kind, &failures, &err));
    uint64_t dma_bytes_start = ks_engine_stats(engine)->dma_bytes;
    while (ks_gbench_keep_running_batch(state, 1)) {
        if (!failed && !NT_SUCCESS(dma_frame(engine, kind, &failures, &err))) {
            failed = true;
            ks_gbench_skip_with_error(state, err.message);
        }
    }
    uint64_t iterations = ks_gbench_iterations(state);
    uint64_t moved = ks_engine_stats(engine)->dma_bytes - dma_bytes_start;
    ks_error close_err;
    ks_error_clear(&close_err);
    if (!NT_SUCCESS(ks_engine_close(engine, &close_err)) && !failed)
        ks_gbench_skip_with_error(state, close_err.message);
    ks_gbench_set_items_processed(state, (int64_t)iterations);
    ks_gbench_set_bytes_processed(state, (int64_t)moved);
    ks_gbench_counter(state, "ops_per_iteration", 1.0, KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "allocation_failures_per_op", iterations ? (double)failures / (double)iterations : 0.0,
                      KS_GBENCH_COUNTER_DEFAULT);
}

/* The bound: a free list of DMA_WINDOW_FRAMES + 1 frames in the loop; a capture's bytes written
 * and checked by the CPU (render: filled, then summed), nothing else. */
static void dma_bound_body(ks_gbench_state *state, const dma_case *dc)
{
    unsigned char *block = aligned_alloc(4096, (DMA_WINDOW_FRAMES + 1) * dc->frame_bytes);
    if (block == NULL) {
        ks_gbench_skip_with_error(state, "out of memory for the bound's frames");
        while (ks_gbench_keep_running_batch(state, 1)) {
        }
        return;
    }
    unsigned char *free_stack[DMA_WINDOW_FRAMES + 1], *ring[DMA_WINDOW_FRAMES + 1];
    unsigned free_count = 0, head = 0, live = 0;
    for (unsigned index = 0; index <= DMA_WINDOW_FRAMES; index++)
        free_stack[free_count++] = block + (size_t)index * dc->frame_bytes;
    uint64_t checksum = 0, mismatches = 0;
    unsigned char pattern = 1;
    while (ks_gbench_keep_running_batch(state, 1)) {
        unsigned char *frame = free_stack[--free_count];
        memset(frame, pattern, dc->frame_bytes);
        if (dc->profile == KS_PROFILE_CAPTURE) {
            mismatches += frame[0] != pattern || frame[dc->frame_bytes - 1] != pattern ||
                          memcmp(frame, frame + dc->frame_bytes / 2, dc->frame_bytes / 2) != 0;
        } else {
            for (size_t offset = 0; offset < dc->frame_bytes; offset += sizeof(uint64_t)) {
                uint64_t word;
                memcpy(&word, frame + offset, sizeof word);
                checksum += word;
            }
        }
        pattern++;
        ring[(head + live) % (DMA_WINDOW_FRAMES + 1)] = frame;
        if (++live >= DMA_WINDOW_FRAMES) {
            free_stack[free_count++] = ring[head];
            head = (head + 1) % (DMA_WINDOW_FRAMES + 1);
            live--;
        }
    }
    uint64_t iterations = ks_gbench_iterations(state);
    ks_gbench_set_items_processed(state, (int64_t)iterations);
    ks_gbench_set_bytes_processed(state, (int64_t)(iterations * dc->frame_bytes));
    ks_gbench_counter(state, "ops_per_iteration", 1.0, KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "bound_checksum", (double)(checksum & 0xffff) + (double)mismatches,
                      KS_GBENCH_COUNTER_DEFAULT); /* keeps the work observable */
    free(block);
}

/* ---- The engine alone ------------------------------------------------------------------------ */

typedef struct dma_engine_rig {
    ks_dma_device *device;
    ks_dma_adapter *adapter;
    void *src, *dst;
    ks_dma_addr src_bus, dst_bus;
    size_t bytes;
} dma_engine_rig;

static void dma_rig_close(dma_engine_rig *rig)
{
    if (rig->src != NULL)
        ks_dma_free_coherent(rig->adapter, rig->bytes, rig->src, rig->src_bus);
    if (rig->dst != NULL)
        ks_dma_free_coherent(rig->adapter, rig->bytes, rig->dst, rig->dst_bus);
    if (rig->device != NULL) {
        ks_dma_device_stop(rig->device);
        ks_dma_device_destroy(rig->device);
    }
    memset(rig, 0, sizeof *rig);
}

/* A device and two coherent buffers of bytes each. */
static NTSTATUS dma_rig_open(dma_engine_rig *rig, size_t bytes, ks_error *err)
{
    memset(rig, 0, sizeof *rig);
    ks_dma_options options;
    ks_dma_options_init(&options);
    NTSTATUS status = ks_dma_options_parse(&options, DMA_DEVICE, err);
    if (NT_SUCCESS(status))
        status = ks_dma_device_create(&options, &rig->device, err);
    if (!NT_SUCCESS(status))
        return status;
    rig->adapter = ks_dma_device_adapter(rig->device);
    rig->bytes = bytes;
    rig->src = ks_dma_alloc_coherent(rig->adapter, bytes, &rig->src_bus, err);
    rig->dst = rig->src != NULL ? ks_dma_alloc_coherent(rig->adapter, bytes, &rig->dst_bus, err) : NULL;
    if (rig->dst == NULL) {
        dma_rig_close(rig);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    memset(rig->src, 0x5a, bytes);
    return STATUS_SUCCESS;
}

static void dma_fail_loop(ks_gbench_state *state, const char *message)
{
    ks_gbench_skip_with_error(state, message);
    while (ks_gbench_keep_running_batch(state, 1)) {
    }
}

/* The ring kept fed: the next batch is queued and rung before the submitter waits for the one
 * before it, so the engine has work the moment it finishes a batch and neither thread sleeps
 * between batches (waiting for each batch alone would time two thread wake-ups per batch, the
 * VM's scheduler latency, not the engine). A batch is queued before the loop; each iteration
 * queues one and completes one, so the timed loop holds exactly its iterations' worth of
 * completed work, plus the queueing of one batch whose completion is waited for untimed. */
typedef NTSTATUS (*dma_batch_fn)(dma_engine_rig *rig, uint64_t *last_cookie, ks_error *err);

static bool dma_pipelined_loop(ks_gbench_state *state, dma_engine_rig *rig, dma_batch_fn queue_batch, ks_error *err)
{
    uint64_t pending = 0, queued = 0;
    bool ok = NT_SUCCESS(queue_batch(rig, &pending, err));
    if (ok)
        ks_dma_device_issue_pending(rig->device);
    while (ks_gbench_keep_running_batch(state, 1)) {
        if (!ok)
            continue;
        ok = NT_SUCCESS(queue_batch(rig, &queued, err));
        if (ok) {
            ks_dma_device_issue_pending(rig->device);
            ok = NT_SUCCESS(ks_dma_device_wait(rig->device, pending, 0, err));
            pending = queued;
        }
    }
    return ok && NT_SUCCESS(ks_dma_device_wait(rig->device, pending, 0, err));
}

static NTSTATUS dma_queue_copies(dma_engine_rig *rig, uint64_t *last_cookie, ks_error *err)
{
    ks_dma_segment src = {rig->src_bus, rig->bytes}, dst = {rig->dst_bus, rig->bytes};
    ks_dma_descriptor descriptor = {.op = KS_DMA_OP_COPY, .src = &src, .src_count = 1, .dst = &dst, .dst_count = 1};
    NTSTATUS status = STATUS_SUCCESS;
    for (unsigned copy = 0; copy < DMA_COPY_BATCH && NT_SUCCESS(status); copy++)
        status = ks_dma_device_submit(rig->device, &descriptor, last_cookie, err);
    return status;
}

/* DMA_DESCRIPTOR_BATCH copies of DMA_DESCRIPTOR_BYTES, each its own slice of the buffers. */
static NTSTATUS dma_queue_small_copies(dma_engine_rig *rig, uint64_t *last_cookie, ks_error *err)
{
    NTSTATUS status = STATUS_SUCCESS;
    for (unsigned index = 0; index < DMA_DESCRIPTOR_BATCH && NT_SUCCESS(status); index++) {
        ks_dma_addr offset = (ks_dma_addr)index * DMA_DESCRIPTOR_BYTES;
        ks_dma_segment src = {rig->src_bus + offset, DMA_DESCRIPTOR_BYTES};
        ks_dma_segment dst = {rig->dst_bus + offset, DMA_DESCRIPTOR_BYTES};
        ks_dma_descriptor descriptor = {.op = KS_DMA_OP_COPY, .src = &src, .src_count = 1, .dst = &dst, .dst_count = 1};
        status = ks_dma_device_submit(rig->device, &descriptor, last_cookie, err);
    }
    return status;
}

/* DMA_COPY_BATCH copies of the whole buffer per iteration, submitted together with one doorbell
 * and pipelined (dma_pipelined_loop): the ring stays fed, as a streaming driver keeps it, so the figure
 * is the engine's throughput. The bytes are checked at the end. */
static void dma_copy_engine_body(ks_gbench_state *state, const dma_case *dc)
{
    dma_engine_rig rig;
    ks_error err;
    ks_error_clear(&err);
    if (!NT_SUCCESS(dma_rig_open(&rig, dc->frame_bytes, &err))) {
        dma_fail_loop(state, err.message);
        return;
    }
    bool failed = !dma_pipelined_loop(state, &rig, dma_queue_copies, &err);
    if (failed)
        ks_gbench_skip_with_error(state, err.message);
    else if (memcmp(rig.src, rig.dst, dc->frame_bytes) != 0)
        ks_gbench_skip_with_error(state, "the engine's copy did not arrive intact");
    uint64_t iterations = ks_gbench_iterations(state);
    ks_gbench_set_bytes_processed(state, (int64_t)(iterations * DMA_COPY_BATCH * dc->frame_bytes));
    ks_gbench_counter(state, "ops_per_iteration", DMA_COPY_BATCH, KS_GBENCH_COUNTER_DEFAULT);
    dma_rig_close(&rig);
}

static void dma_copy_memcpy_body(ks_gbench_state *state, const dma_case *dc)
{
    unsigned char *src = aligned_alloc(4096, dc->frame_bytes), *dst = aligned_alloc(4096, dc->frame_bytes);
    if (src == NULL || dst == NULL) {
        free(src);
        free(dst);
        dma_fail_loop(state, "out of memory for the memcpy buffers");
        return;
    }
    memset(src, 0x5a, dc->frame_bytes);
    while (ks_gbench_keep_running_batch(state, 1)) {
        for (unsigned copy = 0; copy < DMA_COPY_BATCH; copy++) {
            memcpy(dst, src, dc->frame_bytes);
            __asm__ __volatile__("" : : "r"(dst) : "memory"); /* the copy is not dead */
        }
    }
    uint64_t iterations = ks_gbench_iterations(state);
    ks_gbench_set_bytes_processed(state, (int64_t)(iterations * DMA_COPY_BATCH * dc->frame_bytes));
    ks_gbench_counter(state, "ops_per_iteration", DMA_COPY_BATCH, KS_GBENCH_COUNTER_DEFAULT);
    free(src);
    free(dst);
}

/* DMA_DESCRIPTOR_BATCH small copies per iteration, one doorbell, pipelined like the copies. */
static void dma_descriptors_body(ks_gbench_state *state, const dma_case *dc)
{
    dma_engine_rig rig;
    ks_error err;
    ks_error_clear(&err);
    if (!NT_SUCCESS(dma_rig_open(&rig, (size_t)DMA_DESCRIPTOR_BATCH * DMA_DESCRIPTOR_BYTES, &err))) {
        dma_fail_loop(state, err.message);
        return;
    }
    if (!dma_pipelined_loop(state, &rig, dma_queue_small_copies, &err))
        ks_gbench_skip_with_error(state, err.message);
    (void)dc;
    uint64_t iterations = ks_gbench_iterations(state);
    ks_gbench_set_items_processed(state, (int64_t)(iterations * DMA_DESCRIPTOR_BATCH));
    ks_gbench_counter(state, "ops_per_iteration", DMA_DESCRIPTOR_BATCH, KS_GBENCH_COUNTER_DEFAULT);
    dma_rig_close(&rig);
}

static void dma_body(ks_gbench_state *state, void *arg)
{
    const dma_case *dc = arg;
    switch (dc->kind) {
    case DMA_STREAM_BOUND: dma_bound_body(state, dc); break;
    case DMA_STREAM: dma_engine_body(state, dc); break;
    case DMA_COPY_ENGINE: dma_copy_engine_body(state, dc); break;
    case DMA_COPY_MEMCPY: dma_copy_memcpy_body(state, dc); break;
    case DMA_DESCRIPTORS: dma_descriptors_body(state, dc); break;
    }
    ks_bench_progress_tick();
}

/* Opens and closes the case's engine once, as the run will; false with why if that fails. */
static bool dma_probe(const dma_case *dc, char *why, size_t why_bytes)
{
    ks_engine *engine = NULL;
    ks_error err;
    ks_error_clear(&err);
    uint64_t failures = 0;
    NTSTATUS status = dma_open(dc, &engine, &err);
    if (NT_SUCCESS(status))
        status = dma_frame(engine, dc->profile == KS_PROFILE_CAPTURE ? KS_OP_DMA_CAPTURE : KS_OP_DMA_RENDER,
                           &failures, &err);
    if (engine != NULL) {
        ks_error close_err;
        ks_error_clear(&close_err);
        NTSTATUS close_status = ks_engine_close(engine, &close_err);
        if (NT_SUCCESS(status) && !NT_SUCCESS(close_status)) {
            status = close_status;
            err = close_err;
        }
    }
    if (NT_SUCCESS(status) && failures != 0) {
        snprintf(why, why_bytes, "Allocate returned NULL on the first frame");
        return false;
    }
    if (!NT_SUCCESS(status))
        snprintf(why, why_bytes, "%.200s", err.message);
    return NT_SUCCESS(status);
}

/* Registers dc (named, kind and sizes set) unless --benchmark_filter leaves it out; an allocator
 * case whose limits or probe run refuse it goes to skip instead. Google Benchmark keeps the
 * pointer handed at registration, so the table never moves: ks_bench_register_dma sizes it for
 * every case up front. */
static NTSTATUS dma_register(ks_bench_dma_cases *cases, const dma_case *dc, ks_bench_skip_fn skip, void *skip_context,
                             size_t *registered, ks_error *err)
{
    char instance_name[176], why[256];
    snprintf(instance_name, sizeof instance_name, "%s/real_time", dc->name);
    if (!ks_gbench_selected(instance_name))
        return STATUS_SUCCESS;
    if (dc->entry != NULL && dc->entry->max_frame_bytes != 0 && dc->frame_bytes > dc->entry->max_frame_bytes) {
        snprintf(why, sizeof why, "FrameSize %zu is past its max_frame_bytes %zu", dc->frame_bytes,
                 dc->entry->max_frame_bytes);
        skip(skip_context, dc->name, why);
        return STATUS_SUCCESS;
    }
    if (dc->entry != NULL && !dma_probe(dc, why, sizeof why)) {
        skip(skip_context, dc->name, why);
        return STATUS_SUCCESS;
    }
    if (cases->count == cases->capacity)
        return ks_error_set(err, STATUS_UNSUCCESSFUL, "DMA suite case table full");
    cases->cases[cases->count] = *dc;
    ks_gbench *bench = ks_gbench_register(dc->name, dma_body, &cases->cases[cases->count]);
    if (bench == NULL) {
        skip(skip_context, dc->name, "Google Benchmark refused the registration");
        return STATUS_SUCCESS;
    }
    cases->count++;
    ks_gbench_use_real_time(bench);
    (*registered)++;
    return STATUS_SUCCESS;
}

NTSTATUS ks_bench_register_dma(const ks_bench_config *config, ks_bench_skip_fn skip, void *skip_context,
                               ks_bench_dma_cases **cases_out, size_t *registered, ks_error *err)
{
    static const ks_profile profiles[] = {KS_PROFILE_CAPTURE, KS_PROFILE_RENDER};
    const size_t *sizes = config->quick ? dma_sizes_quick : dma_sizes_full;
    size_t size_count = config->quick ? sizeof dma_sizes_quick / sizeof dma_sizes_quick[0]
                                      : sizeof dma_sizes_full / sizeof dma_sizes_full[0];
    ks_bench_dma_cases *cases = calloc(1, sizeof *cases);
    size_t copy_count = sizeof dma_copy_sizes / sizeof dma_copy_sizes[0];
    size_t most = 2 * size_count * (config->allocator_count + 1) + 2 * copy_count + 1;
    if (cases == NULL || (cases->cases = calloc(most, sizeof *cases->cases)) == NULL) {
        free(cases);
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "out of memory registering the DMA suites");
    }
    cases->capacity = most;
    *cases_out = cases;
    *registered = 0;
    for (size_t p = 0; p < 2; p++)
        for (size_t s = 0; s < size_count; s++)
            for (size_t index = 0; index <= config->allocator_count; index++) {
                dma_case dc = {.kind = index == 0 ? DMA_STREAM_BOUND : DMA_STREAM, .profile = profiles[p],
                               .frame_bytes = sizes[s]};
                dc.entry = index == 0 ? NULL : config->allocators[index - 1].entry;
                dc.label = index == 0 ? "inline_freelist" : config->allocators[index - 1].label;
                snprintf(dc.name, sizeof dc.name, "dma_%s/%s/%zu", ks_profile_name(dc.profile), dc.label,
                         dc.frame_bytes);
                NTSTATUS status = dma_register(cases, &dc, skip, skip_context, registered, err);
                if (!NT_SUCCESS(status))
                    return status;
            }
    for (size_t c = 0; c <= 2 * copy_count; c++) {
        dma_case dc = {.entry = NULL};
        if (c == 2 * copy_count) {
            dc.kind = DMA_DESCRIPTORS;
            dc.frame_bytes = DMA_DESCRIPTOR_BYTES;
            snprintf(dc.name, sizeof dc.name, "dma_descriptor/engine/%u", DMA_DESCRIPTOR_BYTES);
        } else {
            dc.kind = c % 2 == 0 ? DMA_COPY_MEMCPY : DMA_COPY_ENGINE;
            dc.frame_bytes = dma_copy_sizes[c / 2];
            snprintf(dc.name, sizeof dc.name, "dma_copy/%s/%zu", dc.kind == DMA_COPY_MEMCPY ? "memcpy" : "engine",
                     dc.frame_bytes);
        }
        NTSTATUS status = dma_register(cases, &dc, skip, skip_context, registered, err);
        if (!NT_SUCCESS(status))
            return status;
    }
    return STATUS_SUCCESS;
}

void ks_bench_dma_release(ks_bench_dma_cases *cases)
{
    if (cases == NULL)
        return;
    free(cases->cases);
    free(cases);
}
