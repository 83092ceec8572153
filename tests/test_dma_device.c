/*
 * test_dma_device.c -- the device engine: descriptors, the doorbell, completion callbacks in cookie
 * order, a full ring, waits, terminate, stop and destroy with work pending (submitted but never
 * rung included), engine workers passed from device to device and across fork, the latency and
 * bandwidth model, scatter/gather copies, and fault injection: injected device errors, IOMMU
 * faults and stalls are reported in completions, the device's log and the IOMMU's log, are
 * reproducible from the seed, and never write a byte outside the mapping (guard bytes).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_dma_helpers.h"

#define PAGE 4096u

static uint64_t now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

typedef struct completion_log {
    uint64_t cookies[1024];
    ks_dma_result results[1024];
    _Atomic unsigned count;
} completion_log;

static void log_completion(void *context, const ks_dma_completion *completion)
{
    completion_log *log = context;
    unsigned at = atomic_load(&log->count);
    if (at < 1024) {
        log->cookies[at] = completion->cookie;
        log->results[at] = completion->result;
    }
    atomic_store(&log->count, at + 1u);
}

static ks_dma_addr coherent(ks_dma_adapter *adapter, size_t bytes, void **cpu)
{
    ks_dma_addr bus;
    *cpu = ks_dma_alloc_coherent(adapter, bytes, &bus, NULL);
    cr_assert_not_null(*cpu);
    return bus;
}

/* A device with one coherent page and a FILL descriptor over it whose completions go to log. */
typedef struct fill_scene {
    ks_dma_device *device;
    ks_dma_adapter *adapter;
    void *cpu;
    ks_dma_addr bus;
    ks_dma_segment segment;
    completion_log log;
    ks_dma_descriptor fill;
    uint64_t cookie; /* of the last submit */
} fill_scene;

static void fill_scene_submit(fill_scene *scene, unsigned count)
{
    for (unsigned i = 0; i < count; i++)
        cr_assert_eq(ks_dma_device_submit(scene->device, &scene->fill, &scene->cookie, NULL), STATUS_SUCCESS);
}

/* Opens the scene and submits `submits` fills, none issued. */
static void fill_scene_open(fill_scene *scene, const char *options, unsigned submits)
{
    memset(scene, 0, sizeof *scene);
    scene->device = test_device(options);
    scene->adapter = ks_dma_device_adapter(scene->device);
    scene->bus = coherent(scene->adapter, PAGE, &scene->cpu);
    scene->segment = (ks_dma_segment){scene->bus, PAGE};
    scene->fill = (ks_dma_descriptor){.op = KS_DMA_OP_FILL, .dst = &scene->segment, .dst_count = 1,
                                      .callback = log_completion, .context = &scene->log};
    fill_scene_submit(scene, submits);
}

Test(dma_device, ops_and_callbacks_in_cookie_order)
{
    ks_dma_device *device = test_device("mask=32");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    unsigned char *a, *b;
    ks_dma_addr bus_a = coherent(adapter, 8 * PAGE, (void **)&a), bus_b = coherent(adapter, 8 * PAGE, (void **)&b);
    completion_log log = {0};
    ks_dma_segment seg_a = {bus_a, 8 * PAGE}, seg_b = {bus_b, 8 * PAGE};
    ks_dma_descriptor fill = {.op = KS_DMA_OP_FILL, .dst = &seg_a, .dst_count = 1, .pattern_seed = 21,
                              .callback = log_completion, .context = &log};
    ks_dma_descriptor copy = {.op = KS_DMA_OP_COPY, .src = &seg_a, .src_count = 1, .dst = &seg_b, .dst_count = 1,
                              .callback = log_completion, .context = &log};
    ks_dma_descriptor sum = {.op = KS_DMA_OP_CHECKSUM, .src = &seg_b, .src_count = 1, .callback = log_completion,
                             .context = &log};
    uint64_t cookies[3];
    cr_assert_eq(ks_dma_device_submit(device, &fill, &cookies[0], NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_dma_device_submit(device, &copy, &cookies[1], NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_dma_device_submit(device, &sum, &cookies[2], NULL), STATUS_SUCCESS);
    cr_assert_eq(cookies[0] + 1, cookies[1]);
    cr_assert_eq(atomic_load(&log.count), 0, "nothing runs before the doorbell");
    ks_dma_device_issue_pending(device);
    cr_assert_eq(ks_dma_device_wait(device, cookies[2], 0, NULL), STATUS_SUCCESS);
    cr_assert_eq(atomic_load(&log.count), 3, "waiting for the last means its callback returned");
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(log.cookies[i], cookies[i], "completions in cookie order");
        cr_assert_eq(log.results[i], KS_DMA_RESULT_OK);
    }
    cr_assert_eq(ks_dma_pattern_check(b, 8 * PAGE, 21, 0), SIZE_MAX, "fill then copy");
    ks_dma_completion completion;
    cr_assert_eq(ks_dma_device_run(device, &sum, &completion, 0, NULL), STATUS_SUCCESS);
    cr_assert_eq(completion.checksum, ks_dma_checksum(b, 8 * PAGE));
    cr_assert_eq(completion.context, &log, "run hands back the caller's context");
    ks_dma_device_stats stats;
    ks_dma_device_get_stats(device, &stats);
    cr_assert_eq(stats.completed, 4);
    cr_assert_eq(stats.bytes_transferred, 4 * 8 * PAGE);
    ks_dma_free_coherent(adapter, 8 * PAGE, a, bus_a);
    ks_dma_free_coherent(adapter, 8 * PAGE, b, bus_b);
    ks_dma_device_destroy(device);
}

Test(dma_device, scatter_gather_copy_between_uneven_lists)
{
    ks_dma_device *device = test_device("mask=32,sg=1");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    unsigned char *src, *dst;
    ks_dma_addr src_bus = coherent(adapter, 16 * PAGE, (void **)&src), dst_bus = coherent(adapter, 16 * PAGE, (void **)&dst);
    ks_dma_pattern_fill(src, 16 * PAGE, 22, 0);
    /* Seven pieces of the source in order, five of the destination reversed. */
    size_t src_cuts[] = {100, 4000, 3, 20000, 9000, 17, 0};
    ks_dma_segment src_segments[7], dst_segments[5];
    size_t total = 0;
    for (int i = 0; i < 6; i++) {
        src_segments[i] = (ks_dma_segment){src_bus + total, src_cuts[i]};
        total += src_cuts[i];
    }
    src_segments[6] = (ks_dma_segment){src_bus + total, 16 * PAGE - total};
    size_t piece = 16 * PAGE / 5;
    for (int i = 0; i < 5; i++)
        dst_segments[i] = (ks_dma_segment){dst_bus + (size_t)(4 - i) * piece, i == 0 ? 16 * PAGE - 4 * piece : piece};
    ks_dma_descriptor copy = {.op = KS_DMA_OP_COPY, .src = src_segments, .src_count = 7, .dst = dst_segments,
                              .dst_count = 5};
    ks_dma_completion completion;
    ks_error err;
    cr_assert_eq(ks_dma_device_run(device, &copy, &completion, 0, &err), STATUS_SUCCESS, "%s", err.message);
    cr_assert_eq(completion.result, KS_DMA_RESULT_OK);
    cr_assert_eq(completion.bytes_done, 16 * PAGE);
    size_t offset = 0;
    for (int i = 0; i < 5; i++) {
        size_t bytes = dst_segments[i].bytes;
        cr_assert_eq(ks_dma_pattern_check(dst + (dst_segments[i].bus_addr - dst_bus), bytes, 22, offset), SIZE_MAX,
                     "destination segment %d holds source bytes %zu..", i, offset);
        offset += bytes;
    }
    ks_dma_descriptor mismatched = copy;
    mismatched.dst_count = 4;
    cr_assert_eq(ks_dma_device_submit(device, &mismatched, &completion.cookie, &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "destination bytes"), "%s", err.message);
    ks_dma_free_coherent(adapter, 16 * PAGE, src, src_bus);
    ks_dma_free_coherent(adapter, 16 * PAGE, dst, dst_bus);
    ks_dma_device_destroy(device);
}

Test(dma_device, full_ring_and_waits)
{
    ks_dma_device *device = test_device("mask=32,ring=4");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    void *cpu;
    ks_dma_addr bus = coherent(adapter, PAGE, &cpu);
    ks_dma_segment segment = {bus, PAGE};
    ks_dma_descriptor fill = {.op = KS_DMA_OP_FILL, .dst = &segment, .dst_count = 1};
    uint64_t cookie;
    ks_error err;
    for (int i = 0; i < 4; i++)
        cr_assert_eq(ks_dma_device_submit(device, &fill, &cookie, &err), STATUS_SUCCESS);
    cr_assert_eq(ks_dma_device_submit(device, &fill, &cookie, &err), STATUS_DEVICE_BUSY, "a ring of 4 holds 4");
    cr_assert_eq(ks_dma_device_wait(device, 1, 0, &err), STATUS_INVALID_PARAMETER, "cookie 1 was never issued");
    cr_assert_not_null(strstr(err.message, "never issued"), "%s", err.message);
    ks_dma_device_issue_pending(device);
    cr_assert_eq(ks_dma_device_wait(device, 4, 1000000000u, &err), STATUS_SUCCESS, "%s", err.message);
    for (int round = 0; round < 300; round++) { /* the ring wraps many times */
        NTSTATUS status;
        while ((status = ks_dma_device_submit(device, &fill, &cookie, NULL)) == STATUS_DEVICE_BUSY)
            ks_dma_device_issue_pending(device);
        cr_assert_eq(status, STATUS_SUCCESS);
        if (round % 2 == 0 || round % 7 == 0)
            ks_dma_device_issue_pending(device);
        if (round % 7 == 0)
            cr_assert_eq(ks_dma_device_wait(device, cookie, 0, NULL), STATUS_SUCCESS);
    }
    ks_dma_device_issue_pending(device);
    cr_assert_eq(ks_dma_device_wait(device, cookie, 0, NULL), STATUS_SUCCESS);
    ks_dma_device_stats stats;
    ks_dma_device_get_stats(device, &stats);
    cr_assert_eq(stats.completed, stats.submitted);
    cr_assert_eq(stats.submitted, cookie);
    ks_dma_free_coherent(adapter, PAGE, cpu, bus);
    ks_dma_device_destroy(device);
}

Test(dma_device, terminate_aborts_what_has_not_started)
{
    static fill_scene scene;
    fill_scene_open(&scene, "mask=32,latency_ns=2000000", 10);
    ks_dma_device_issue_pending(scene.device);
    uint64_t started = now_ns();
    ks_dma_device_terminate_all(scene.device);
    cr_assert_lt(now_ns() - started, 15000000u, "terminate does not wait for ten 2 ms descriptors");
    cr_assert_eq(atomic_load(&scene.log.count), 10, "every descriptor completed, callbacks included");
    unsigned aborted = 0;
    for (int i = 0; i < 10; i++)
        aborted += scene.log.results[i] == KS_DMA_RESULT_ABORTED;
    cr_assert_geq(aborted, 8, "at most the running one or two finished");
    ks_dma_device_stats stats;
    ks_dma_device_get_stats(scene.device, &stats);
    cr_assert_eq(stats.aborted, aborted);
    ks_dma_free_coherent(scene.adapter, PAGE, scene.cpu, scene.bus);
    ks_dma_device_destroy(scene.device);
}

Test(dma_device, destroy_with_work_pending_and_submit_after_stop)
{
    static fill_scene scene;
    fill_scene_open(&scene, "mask=32,latency_ns=1000000", 20);
    ks_dma_device_issue_pending(scene.device);
    fill_scene_submit(&scene, 5); /* never issued */
    uint64_t started = now_ns();
    ks_dma_device_stop(scene.device);
    cr_assert_lt(now_ns() - started, 10000000u, "stop aborts instead of draining");
    ks_error err;
    cr_assert_eq(ks_dma_device_submit(scene.device, &scene.fill, &scene.cookie, &err), STATUS_UNSUCCESSFUL);
    cr_assert_not_null(strstr(err.message, "stopped"), "%s", err.message);
    cr_assert_eq(ks_dma_report_count_rule(scene.adapter, KS_DMA_RULE_LEAK), 1, "the common buffer is reported at stop");
    ks_dma_device_destroy(scene.device); /* frees it: LSan is the proof */
}

Test(dma_device, submitted_but_never_issued_completes_aborted_at_stop)
{
    /* The engine starts on the first doorbell; a stop with descriptors submitted but never rung
     * must still start it, so that each completes (aborted) and its callback runs. */
    static fill_scene scene;
    fill_scene_open(&scene, "mask=32", 3);
    ks_dma_free_coherent(scene.adapter, PAGE, scene.cpu, scene.bus);
    ks_dma_device_stop(scene.device);
    cr_assert_eq(atomic_load(&scene.log.count), 3, "every submitted descriptor completed at stop");
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(scene.log.cookies[i], (uint64_t)i + 1u);
        cr_assert_eq(scene.log.results[i], KS_DMA_RESULT_ABORTED);
    }
    ks_dma_device_destroy(scene.device);
}

/* Runs one FILL with pattern seed over a fresh coherent page of device and reports whether it
 * completed and landed. No Criterion assertion, so that a forked child can call it. */
static bool run_one_fill(ks_dma_device *device, unsigned seed)
{
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    ks_dma_addr bus;
    void *cpu = ks_dma_alloc_coherent(adapter, PAGE, &bus, NULL);
    if (cpu == NULL)
        return false;
    ks_dma_segment segment = {bus, PAGE};
    ks_dma_descriptor fill = {.op = KS_DMA_OP_FILL, .dst = &segment, .dst_count = 1, .pattern_seed = seed};
    ks_dma_completion completion;
    bool landed = ks_dma_device_run(device, &fill, &completion, 5000000000u, NULL) == STATUS_SUCCESS &&
                  completion.result == KS_DMA_RESULT_OK && ks_dma_pattern_check(cpu, PAGE, seed, 0) == SIZE_MAX;
    ks_dma_free_coherent(adapter, PAGE, cpu, bus);
    return landed;
}

/* One device's life: idle (no engine start) or one fill that must land. */
static void device_life(bool runs, unsigned round)
{
    ks_dma_device *device = test_device("mask=32");
    if (runs)
        cr_assert(run_one_fill(device, round), "round %u: the engine ran and the fill landed", round);
    ks_dma_device_destroy(device);
}

Test(dma_device, engine_workers_serve_one_device_after_another, .timeout = 60)
{
    /* Devices that never ring reserve a worker and give it back; devices that do run on a parked
     * worker. Several alive at once need several workers (more than the pool parks). */
    for (unsigned round = 0; round < 60; round++)
        device_life(round % 3 != 0, round);
    ks_dma_device *alive[8];
    for (unsigned i = 0; i < 8; i++)
        alive[i] = test_device("mask=32");
    for (unsigned i = 0; i < 8; i++)
        ks_dma_device_destroy(alive[i]);
    for (unsigned round = 0; round < 10; round++)
        device_life(true, 100 + round);
}

Test(dma_device, a_forked_child_does_not_inherit_parked_workers, .timeout = 60)
{
    device_life(true, 7); /* leaves a worker parked in this process */
    fflush(NULL);
    pid_t child = fork();
    cr_assert_neq(child, -1);
    if (child == 0) {
        /* The parked worker did not survive the fork: handing it a device would never run it. */
        ks_dma_device *device = test_device("mask=32");
        bool landed = run_one_fill(device, 9);
        ks_dma_device_destroy(device);
        _exit(landed ? 0 : 1);
    }
    int wstatus;
    cr_assert_eq(waitpid(child, &wstatus, 0), child);
    cr_assert(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0, "the child's device ran (status 0x%x)", wstatus);
    device_life(true, 8);
}

Test(dma_device, latency_and_bandwidth_model)
{
    ks_dma_device *device = test_device("mask=32,latency_ns=300000,bandwidth=256M");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    void *cpu;
    ks_dma_addr bus = coherent(adapter, 1 << 20, &cpu);
    ks_dma_segment small = {bus, 64}, large = {bus, 1 << 20};
    ks_dma_descriptor fill = {.op = KS_DMA_OP_FILL, .dst = &small, .dst_count = 1};
    ks_dma_completion completion;
    uint64_t started = now_ns();
    cr_assert_eq(ks_dma_device_run(device, &fill, &completion, 0, NULL), STATUS_SUCCESS);
    cr_assert_geq(now_ns() - started, 300000u, "latency holds a 64-byte descriptor 300 us");
    fill.dst = &large;
    started = now_ns();
    cr_assert_eq(ks_dma_device_run(device, &fill, &completion, 0, NULL), STATUS_SUCCESS);
    cr_assert_geq(now_ns() - started, 300000u + 3900000u, "1 MiB at 256 MiB/s takes about 3.9 ms more");
    ks_dma_free_coherent(adapter, 1 << 20, cpu, bus);
    ks_dma_device_destroy(device);
}

Test(dma_device, wait_timeout_then_terminate)
{
    ks_dma_device *device = test_device("mask=32,fault_ppm=1000000,faults=stall,stall_ns=500000000");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    void *cpu;
    ks_dma_addr bus = coherent(adapter, PAGE, &cpu);
    ks_dma_segment segment = {bus, PAGE};
    ks_dma_descriptor fill = {.op = KS_DMA_OP_FILL, .dst = &segment, .dst_count = 1};
    ks_dma_completion completion;
    ks_error err;
    uint64_t started = now_ns();
    cr_assert_eq(ks_dma_device_run(device, &fill, &completion, 5000000u, &err), STATUS_DEVICE_BUSY,
                 "a stalled device times the wait out");
    cr_assert_lt(now_ns() - started, 200000000u, "and terminate cuts the 500 ms stall short");
    cr_assert_eq(completion.result, KS_DMA_RESULT_ABORTED, "the stalled descriptor was aborted");
    cr_assert(completion.stalled);
    ks_dma_free_coherent(adapter, PAGE, cpu, bus);
    ks_dma_device_destroy(device);
}

Test(dma_device, device_write_and_read_of_a_mapped_range)
{
    ks_dma_device *device = test_device("mask=32,sg=1,boundary=4K,max_seg=2K,max_segs=64,coherent=0");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    guarded buffer = guarded_alloc(5 * PAGE + 300, 64);
    ks_error err;
    ks_dma_addr bus = ks_dma_map_single(adapter, buffer.user, buffer.bytes, KS_DMA_BIDIRECTIONAL, &err);
    cr_assert(!ks_dma_mapping_error(adapter, bus), "%s", err.message);
    ks_dma_completion completion;
    cr_assert_eq(ks_dma_device_write_pattern(device, bus, buffer.bytes, 31, &completion, &err), STATUS_SUCCESS, "%s",
                 err.message);
    cr_assert_eq(completion.result, KS_DMA_RESULT_OK);
    cr_assert_eq(completion.bytes_done, buffer.bytes, "cut into 2 KiB segments, all written");
    ks_dma_sync_single_for_cpu(adapter, bus, buffer.bytes, KS_DMA_BIDIRECTIONAL);
    cr_assert_eq(ks_dma_pattern_check(buffer.user, buffer.bytes, 31, 0), SIZE_MAX);
    ks_dma_pattern_fill(buffer.user, buffer.bytes, 32, 0);
    ks_dma_sync_single_for_device(adapter, bus, buffer.bytes, KS_DMA_BIDIRECTIONAL);
    cr_assert_eq(ks_dma_device_read_checksum(device, bus, buffer.bytes, &completion, &err), STATUS_SUCCESS);
    cr_assert_eq(completion.checksum, ks_dma_checksum(buffer.user, buffer.bytes));
    cr_assert(guards_intact(&buffer));
    ks_dma_unmap_single(adapter, bus, buffer.bytes, KS_DMA_BIDIRECTIONAL);
    ks_dma_device_stop(device);
    test_expect_rules(adapter, 0, "a range cut as the device wants it");
    ks_dma_device_destroy(device);

    device = test_device("mask=32,boundary=4K"); /* no scatter/gather: one segment or nothing */
    adapter = ks_dma_device_adapter(device);
    ks_dma_addr coherent_bus;
    void *cpu = ks_dma_alloc_coherent(adapter, 2 * PAGE, &coherent_bus, NULL);
    cr_assert_eq(ks_dma_device_write_pattern(device, coherent_bus, PAGE, 33, &completion, &err), STATUS_SUCCESS);
    cr_assert_eq(ks_dma_device_write_pattern(device, coherent_bus, 2 * PAGE, 33, &completion, &err),
                 STATUS_INVALID_PARAMETER, "8 KiB cannot be one segment under a 4 KiB boundary");
    cr_assert_eq(ks_dma_report_count_rule(adapter, KS_DMA_RULE_SEGMENT_BOUNDARY), 1);
    ks_dma_free_coherent(adapter, 2 * PAGE, cpu, coherent_bus);
    ks_dma_device_destroy(device);
    guarded_free(&buffer);
}

/* ---- fault injection ------------------------------------------------------------------------- */

typedef struct fault_run {
    ks_dma_result results[200];
    uint64_t bytes[200];
    bool injected[200], stalled[200];
} fault_run;

/* 200 fills of a guarded from-device mapping at a 40% fault rate; checks after each one. */
static void run_faulty(const char *spec, fault_run *run)
{
    ks_dma_device *device = test_device(spec);
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    guarded buffer = guarded_alloc(6 * PAGE + 40, 8);
    ks_error err;
    ks_dma_addr bus = ks_dma_map_single(adapter, buffer.user, buffer.bytes, KS_DMA_FROM_DEVICE, &err);
    cr_assert(!ks_dma_mapping_error(adapter, bus), "%s", err.message);
    ks_dma_segment segment = {bus, buffer.bytes};
    unsigned failed = 0;
    for (int i = 0; i < 200; i++) {
        ks_dma_descriptor fill = {.op = KS_DMA_OP_FILL, .dst = &segment, .dst_count = 1, .pattern_seed = (uint64_t)i};
        ks_dma_completion completion;
        cr_assert_eq(ks_dma_device_run(device, &fill, &completion, 0, &err), STATUS_SUCCESS, "%s", err.message);
        run->results[i] = completion.result;
        run->bytes[i] = completion.bytes_done;
        run->injected[i] = completion.injected;
        run->stalled[i] = completion.stalled;
        cr_assert(guards_intact(&buffer), "%s: descriptor %d (%s) wrote outside the mapping", spec, i,
                  ks_dma_result_name(completion.result));
        ks_dma_sync_single_for_cpu(adapter, bus, buffer.bytes, KS_DMA_FROM_DEVICE);
        if (completion.result == KS_DMA_RESULT_OK) {
            cr_assert_eq(completion.bytes_done, buffer.bytes);
            cr_assert_eq(ks_dma_pattern_check(buffer.user, buffer.bytes, (uint64_t)i, 0), SIZE_MAX);
        } else {
            failed++;
            cr_assert(completion.injected, "%s: only injected faults here", spec);
            cr_assert_lt(completion.bytes_done, buffer.bytes);
            cr_assert_eq(completion.fault_bus_addr, bus + completion.bytes_done, "the fault is where it stopped");
            cr_assert_eq(ks_dma_pattern_check(buffer.user, completion.bytes_done, (uint64_t)i, 0), SIZE_MAX,
                         "%s: what was written before the fault is right", spec);
        }
        ks_dma_sync_single_for_device(adapter, bus, buffer.bytes, KS_DMA_FROM_DEVICE);
    }
    ks_dma_device_stats stats;
    ks_dma_device_get_stats(device, &stats);
    cr_assert_gt(stats.injected_device_errors, 0, "%s", spec);
    cr_assert_gt(stats.injected_iommu_faults, 0, "%s", spec);
    cr_assert_gt(stats.injected_stalls, 0, "%s", spec);
    cr_assert_eq(stats.injected_device_errors + stats.injected_iommu_faults, failed);
    cr_assert_eq(ks_dma_device_fault_count(device), failed, "every fault is in the device's log");
    ks_dma_device_fault fault;
    cr_assert(ks_dma_device_fault_at(device, 0, &fault));
    cr_assert(fault.injected);
    ks_dma_unmap_single(adapter, bus, buffer.bytes, KS_DMA_FROM_DEVICE);
    ks_dma_device_stop(device);
    test_expect_rules(adapter, 0, "injected faults are the device's, not the driver's misuse");
    ks_dma_device_destroy(device);
    guarded_free(&buffer);
}

Test(dma_device, injected_faults_are_reported_and_stay_inside_the_mapping, .timeout = 60)
{
    static fault_run plain, translated, non_coherent;
    run_faulty("mask=32,fault_ppm=400000,stall_ns=100000,seed=5", &plain);
    run_faulty("mask=32,iommu=1,fault_ppm=400000,stall_ns=100000,seed=6", &translated);
    run_faulty("mask=32,high=100,coherent=0,fault_ppm=400000,stall_ns=100000,seed=7", &non_coherent);
    bool iommu_result = false;
    for (int i = 0; i < 200; i++)
        iommu_result |= translated.results[i] == KS_DMA_RESULT_IOMMU_FAULT;
    cr_assert(iommu_result, "with an IOMMU an injected translation failure is an IOMMU fault");
}

Test(dma_device, fault_injection_is_reproducible_from_the_seed, .timeout = 60)
{
    static fault_run first, second, other;
    run_faulty("mask=32,fault_ppm=400000,stall_ns=100000,seed=42", &first);
    run_faulty("mask=32,fault_ppm=400000,stall_ns=100000,seed=42", &second);
    run_faulty("mask=32,fault_ppm=400000,stall_ns=100000,seed=43", &other);
    cr_assert_eq(memcmp(first.results, second.results, sizeof first.results), 0, "same seed, same faults");
    cr_assert_eq(memcmp(first.bytes, second.bytes, sizeof first.bytes), 0, "at the same bytes");
    cr_assert_neq(memcmp(first.results, other.results, sizeof first.results), 0, "another seed, other faults");
}

Test(dma_device, frame_transfer_reports_an_injected_fault)
{
    ks_dma_device *device = test_device("mask=32,fault_ppm=1000000,faults=device");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    void *cpu;
    ks_dma_addr bus = coherent(adapter, 4 * PAGE, &cpu);
    ks_dma_segment region = {bus, 4 * PAGE};
    cr_assert_eq(ks_dma_region_register(adapter, cpu, 4 * PAGE, 4 * PAGE, &region, 1, NULL), STATUS_SUCCESS);
    ks_dma_transfer_result result;
    ks_error err;
    cr_assert_eq(ks_dma_frame_transfer(device, KS_DMA_TRANSFER_CAPTURE, cpu, NULL, 1, 0, &result, &err),
                 STATUS_UNSUCCESSFUL);
    cr_assert_eq(result.device_result, KS_DMA_RESULT_DEVICE_ERROR);
    cr_assert(result.injected);
    cr_assert_not_null(strstr(err.message, "device-error"), "%s", err.message);
    cr_assert_not_null(strstr(err.message, "(injected)"), "%s", err.message);
    ks_dma_region_unregister(adapter, cpu);
    ks_dma_free_coherent(adapter, 4 * PAGE, cpu, bus);
    ks_dma_device_destroy(device);
}

/* ---- several submitters ------------------------------------------------------------------------ */

typedef struct submitter {
    ks_dma_device *device;
    ks_dma_segment segment;
    uint64_t checksum_expected;
    unsigned mismatches;
} submitter;

static void *submit_many(void *arg)
{
    submitter *self = arg;
    for (int i = 0; i < 300; i++) {
        ks_dma_descriptor sum = {.op = KS_DMA_OP_CHECKSUM, .src = &self->segment, .src_count = 1};
        ks_dma_completion completion;
        if (ks_dma_device_run(self->device, &sum, &completion, 0, NULL) != STATUS_SUCCESS ||
            completion.checksum != self->checksum_expected)
            self->mismatches++;
    }
    return NULL;
}

/* 300 checksums from each of two threads over their own buffers, on one device. */
static void two_submitters(const char *spec)
{
    ks_dma_device *device = test_device(spec);
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    void *cpu[2];
    submitter submitters[2];
    pthread_t threads[2];
    for (int t = 0; t < 2; t++) {
        ks_dma_addr bus = coherent(adapter, 2 * PAGE, &cpu[t]);
        ks_dma_pattern_fill(cpu[t], 2 * PAGE, (uint64_t)t, 0);
        submitters[t] = (submitter){device, {bus, 2 * PAGE}, ks_dma_checksum(cpu[t], 2 * PAGE), 0};
    }
    for (int t = 0; t < 2; t++)
        pthread_create(&threads[t], NULL, submit_many, &submitters[t]);
    for (int t = 0; t < 2; t++)
        pthread_join(threads[t], NULL);
    for (int t = 0; t < 2; t++)
        cr_assert_eq(submitters[t].mismatches, 0, "thread %d", t);
    ks_dma_device_stats stats;
    ks_dma_device_get_stats(device, &stats);
    cr_assert_eq(stats.completed, 600);
    for (int t = 0; t < 2; t++)
        ks_dma_free_coherent(adapter, 2 * PAGE, cpu[t], submitters[t].segment.bus_addr);
    ks_dma_device_destroy(device);
}

Test(dma_device, two_submitting_threads, .timeout = 60)
{
    two_submitters("mask=32,ring=8");
}

/* ---- the inline engine ------------------------------------------------------------------------ */

/* Inline, the descriptors run between a thread's ring (or wait) and its return: one thread at a
 * time, in cookie order, whichever thread it is. */
Test(dma_device, inline_engine_with_two_submitting_threads, .timeout = 60)
{
    two_submitters("mask=32,ring=8,inline=1");
}

static pthread_t ringing_thread;
static _Atomic unsigned callbacks_elsewhere;

static void log_on_ringing_thread(void *context, const ks_dma_completion *completion)
{
    if (!pthread_equal(pthread_self(), ringing_thread))
        atomic_fetch_add(&callbacks_elsewhere, 1);
    log_completion(context, completion);
}

Test(dma_device, inline_engine_runs_at_the_doorbell_on_the_ringing_thread)
{
    static fill_scene scene;
    fill_scene_open(&scene, "mask=32,inline=1,seed=3", 0);
    scene.fill.callback = log_on_ringing_thread;
    scene.fill.pattern_seed = 77;
    fill_scene_submit(&scene, 3);
    cr_assert_eq(atomic_load(&scene.log.count), 0, "nothing runs before the doorbell");
    ringing_thread = pthread_self();
    ks_dma_device_issue_pending(scene.device);
    cr_assert_eq(atomic_load(&scene.log.count), 3, "the three ran before issue_pending returned");
    cr_assert_eq(atomic_load(&callbacks_elsewhere), 0, "on the thread that rang");
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(scene.log.cookies[i], (uint64_t)i + 1u, "in cookie order");
        cr_assert_eq(scene.log.results[i], KS_DMA_RESULT_OK);
    }
    cr_assert_eq(ks_dma_device_wait(scene.device, scene.cookie, 0, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_dma_pattern_check(scene.cpu, PAGE, 77, 0), SIZE_MAX, "the fill landed");
    /* Submitted, never rung: terminate and stop still complete them, aborted. */
    fill_scene_submit(&scene, 2);
    ks_dma_device_terminate_all(scene.device);
    cr_assert_eq(atomic_load(&scene.log.count), 5);
    cr_assert_eq(scene.log.results[3], KS_DMA_RESULT_ABORTED);
    cr_assert_eq(scene.log.results[4], KS_DMA_RESULT_ABORTED);
    fill_scene_submit(&scene, 1);
    ks_dma_free_coherent(scene.adapter, PAGE, scene.cpu, scene.bus);
    ks_dma_device_stop(scene.device);
    cr_assert_eq(atomic_load(&scene.log.count), 6, "stop completed the last one");
    cr_assert_eq(scene.log.results[5], KS_DMA_RESULT_ABORTED);
    ks_dma_device_stats stats;
    ks_dma_device_get_stats(scene.device, &stats);
    cr_assert_eq(stats.completed, 6);
    cr_assert_eq(stats.aborted, 3);
    cr_assert_eq(stats.engine_sleeps, 0, "no engine thread to sleep");
    ks_dma_device_destroy(scene.device);
}

/* Callbacks that ring devices nest on one thread: A's callback rings B, whose callback rings A
 * again. Each ring runs what it can at once; the nested ring of A, already running on this
 * thread, only publishes and the outer loop runs it. */
typedef struct ping {
    ks_dma_device *device[2];
    fill_scene *scene[2];
    unsigned rung[2];
    completion_log log;
} ping;

static void ping_other(void *context, const ks_dma_completion *completion)
{
    ping *p = context;
    log_completion(&p->log, completion);
    unsigned count = atomic_load(&p->log.count);
    if (count > 3)
        return;
    unsigned to = count % 2u; /* completions alternate A (count 1), B (2), A (3) */
    uint64_t cookie;
    ks_dma_descriptor fill = p->scene[to]->fill;
    fill.callback = ping_other;
    fill.context = p;
    if (ks_dma_device_submit(p->device[to], &fill, &cookie, NULL) == STATUS_SUCCESS) {
        p->rung[to]++;
        ks_dma_device_issue_pending(p->device[to]);
    }
}

static void *ring_first(void *arg)
{
    ks_dma_device_issue_pending(arg);
    return NULL;
}

/* The ring runs on a thread joined with a deadline, so that a deadlock fails the test instead of
 * hanging it (Criterion's own .timeout leaked 48 bytes in its runner under ASan on a fast test). */
Test(dma_device, inline_engine_callbacks_ringing_devices_nest)
{
    static fill_scene a, b;
    static ping p;
    fill_scene_open(&a, "mask=32,inline=1", 0);
    fill_scene_open(&b, "mask=32,inline=1", 0);
    p = (ping){.device = {a.device, b.device}, .scene = {&a, &b}};
    ks_dma_descriptor first = a.fill;
    first.callback = ping_other;
    first.context = &p;
    uint64_t cookie;
    cr_assert_eq(ks_dma_device_submit(a.device, &first, &cookie, NULL), STATUS_SUCCESS);
    pthread_t ringer;
    cr_assert_eq(pthread_create(&ringer, NULL, ring_first, a.device), 0);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 20;
    cr_assert_eq(pthread_timedjoin_np(ringer, NULL, &deadline), 0, "the nested rings deadlocked");
    cr_assert_eq(atomic_load(&p.log.count), 4, "A, then B from A's callback, then A again, then B");
    cr_assert_eq(p.rung[0] + p.rung[1], 3);
    cr_assert_eq(ks_dma_device_wait(a.device, 2, 0, NULL), STATUS_SUCCESS);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(p.log.results[i], KS_DMA_RESULT_OK);
    fill_scene *scenes[2] = {&a, &b};
    for (int i = 0; i < 2; i++) {
        ks_dma_free_coherent(scenes[i]->adapter, PAGE, scenes[i]->cpu, scenes[i]->bus);
        ks_dma_device_destroy(scenes[i]->device);
    }
}

/* Same seed, same faults, stalls and bytes done, whichever engine runs the descriptors. */
Test(dma_device, inline_engine_draws_the_threaded_engines_faults, .timeout = 60)
{
    static fault_run threaded, inlined;
    run_faulty("mask=32,fault_ppm=400000,stall_ns=100000,seed=42", &threaded);
    run_faulty("mask=32,fault_ppm=400000,stall_ns=100000,seed=42,inline=1", &inlined);
    cr_assert_eq(memcmp(threaded.results, inlined.results, sizeof threaded.results), 0, "the same results");
    cr_assert_eq(memcmp(threaded.bytes, inlined.bytes, sizeof threaded.bytes), 0, "at the same bytes");
    cr_assert_eq(memcmp(threaded.injected, inlined.injected, sizeof threaded.injected), 0);
    cr_assert_eq(memcmp(threaded.stalled, inlined.stalled, sizeof threaded.stalled), 0, "the same stalls");
}
