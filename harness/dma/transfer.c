/*
 * transfer.c -- whole transfers on frames, as a streaming driver does them: the capture, render
 * and loopback profiles of `ksalloc dma`, the DMA benchmarks and the tests.
 *
 *   capture:  sync for device, the device fills the frame with the pattern, sync for CPU, the CPU
 *             checks every byte;
 *   render:   the CPU fills the frame, sync for device, the device checksums it, the CPU compares
 *             with its own checksum, sync for CPU (the frame is the CPU's again);
 *   loopback: the CPU fills the frame, sync both frames for device, the device copies frame into
 *             second_frame, sync the second for CPU, the CPU checks it.
 *
 * ks_dma_device_write_pattern / ks_dma_device_read_checksum do the device half alone on a mapped
 * range, cut into segments as a driver would program the device.
 *
 * The frames' device segments come from the frame registry (region.c), so any DMA-backed
 * allocator's frames work. KS_DMA_TRANSFER_NO_SYNC leaves the syncs out, which on a non-coherent
 * device (or through bounce buffers) must give stale data: the tests use it to prove the cache
 * model bites. Cost: the device transfer plus one CPU pass over the frame.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dma_internal.h"

#define TRANSFER_TIMEOUT_NS ((uint64_t)10 * 1000000000u) /* a watchdog, far above any stall */
#define LOCAL_SEGMENTS 16u

static const char *const transfer_names[] = {"capture", "render", "loopback"};

const char *ks_dma_transfer_name(ks_dma_transfer transfer)
{
    return (unsigned)transfer <= KS_DMA_TRANSFER_LOOPBACK ? transfer_names[transfer] : "invalid-transfer";
}

ks_dma_transfer ks_dma_transfer_from_name(const char *name)
{
    for (unsigned i = 0; i <= KS_DMA_TRANSFER_LOOPBACK; i++)
        if (strcasecmp(name, transfer_names[i]) == 0)
            return (ks_dma_transfer)i;
    return (ks_dma_transfer)(KS_DMA_TRANSFER_LOOPBACK + 1);
}

/* A frame's segments, in a local array or on the heap when there are many. */
typedef struct frame_segments {
    ks_dma_frame_info info;
    ks_dma_segment local[LOCAL_SEGMENTS];
    ks_dma_segment *segments;
} frame_segments;

static NTSTATUS frame_segments_get(ks_dma_adapter *adapter, const void *frame, frame_segments *out, ks_error *err)
{
    out->segments = out->local;
    NTSTATUS status = ks_dma_frame_lookup(adapter, frame, &out->info, out->local, LOCAL_SEGMENTS, err);
    if (!NT_SUCCESS(status) || out->info.segment_count <= LOCAL_SEGMENTS)
        return status;
    out->segments = malloc((size_t)out->info.segment_count * sizeof *out->segments);
    if (out->segments == NULL) {
        out->segments = out->local;
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma transfer: no memory for %u segments",
                            out->info.segment_count);
    }
    return ks_dma_frame_lookup(adapter, frame, &out->info, out->segments, out->info.segment_count, err);
}

static void frame_segments_release(frame_segments *segments)
{
    if (segments->segments != segments->local)
        free(segments->segments);
}

static NTSTATUS sync_frame(ks_dma_adapter *adapter, const void *frame, ks_dma_sync_target target, unsigned flags,
                           ks_error *err)
{
    if ((flags & KS_DMA_TRANSFER_NO_SYNC) != 0)
        return STATUS_SUCCESS;
    return ks_dma_frame_sync(adapter, frame, target, err);
}

/* Runs one descriptor and turns a device fault into STATUS_UNSUCCESSFUL naming it. */
static NTSTATUS run_descriptor(ks_dma_device *device, const ks_dma_descriptor *descriptor, const void *frame,
                               ks_dma_transfer_result *result, ks_dma_completion *completion, ks_error *err)
{
    NTSTATUS status = ks_dma_device_run(device, descriptor, completion, TRANSFER_TIMEOUT_NS, err);
    if (!NT_SUCCESS(status))
        return status;
    result->device_result = completion->result;
    result->bytes_done = completion->bytes_done;
    result->injected = completion->injected;
    result->stalled = completion->stalled;
    if (completion->result == KS_DMA_RESULT_OK)
        return STATUS_SUCCESS;
    return ks_error_set(err, STATUS_UNSUCCESSFUL,
                        "dma transfer on frame %p: device %s at bus 0x%" PRIx64 " after %" PRIu64 " bytes%s",
                        frame, ks_dma_result_name(completion->result), completion->fault_bus_addr,
                        completion->bytes_done, completion->injected ? " (injected)" : "");
}

static NTSTATUS check_pattern(const void *frame, size_t bytes, uint64_t seed, ks_dma_transfer_result *result,
                              const char *what, ks_error *err)
{
    result->first_bad_offset = ks_dma_pattern_check(frame, bytes, seed, 0);
    result->data_ok = result->first_bad_offset == SIZE_MAX;
    if (result->data_ok)
        return STATUS_SUCCESS;
    return ks_error_set(err, STATUS_DATA_ERROR,
                        "dma %s: frame %p byte %zu of %zu is not what the device sent (stale data: a missing sync?)",
                        what, frame, result->first_bad_offset, bytes);
}

static NTSTATUS capture(ks_dma_device *device, void *frame, const frame_segments *segments, uint64_t seed,
                        unsigned flags, ks_dma_transfer_result *result, ks_error *err)
{
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    ks_dma_completion completion;
    ks_dma_descriptor descriptor = {.op = KS_DMA_OP_FILL, .dst = segments->segments,
                                    .dst_count = segments->info.segment_count, .pattern_seed = seed};
    NTSTATUS status = sync_frame(adapter, frame, KS_DMA_SYNC_FOR_DEVICE, flags, err);
    if (NT_SUCCESS(status))
        status = run_descriptor(device, &descriptor, frame, result, &completion, err);
    NTSTATUS sync_status = sync_frame(adapter, frame, KS_DMA_SYNC_FOR_CPU, flags, NT_SUCCESS(status) ? err : NULL);
    if (NT_SUCCESS(status))
        status = sync_status;
    if (NT_SUCCESS(status))
        status = check_pattern(frame, segments->info.bytes, seed, result, "capture", err);
    return status;
}

static NTSTATUS render(ks_dma_device *device, void *frame, const frame_segments *segments, uint64_t seed,
                       unsigned flags, ks_dma_transfer_result *result, ks_error *err)
{
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    ks_dma_completion completion;
    ks_dma_descriptor descriptor = {.op = KS_DMA_OP_CHECKSUM, .src = segments->segments,
                                    .src_count = segments->info.segment_count};
    ks_dma_pattern_fill(frame, segments->info.bytes, seed, 0);
    result->expected_checksum = ks_dma_checksum(frame, segments->info.bytes);
    NTSTATUS status = sync_frame(adapter, frame, KS_DMA_SYNC_FOR_DEVICE, flags, err);
    if (NT_SUCCESS(status))
        status = run_descriptor(device, &descriptor, frame, result, &completion, err);
    NTSTATUS sync_status = sync_frame(adapter, frame, KS_DMA_SYNC_FOR_CPU, flags, NT_SUCCESS(status) ? err : NULL);
    if (NT_SUCCESS(status))
        status = sync_status;
    if (!NT_SUCCESS(status))
        return status;
    result->device_checksum = completion.checksum;
    result->data_ok = completion.checksum == result->expected_checksum;
    if (result->data_ok)
        return STATUS_SUCCESS;
    return ks_error_set(err, STATUS_DATA_ERROR,
                        "dma render: device checksum 0x%016" PRIx64 " of frame %p differs from the CPU's 0x%016" PRIx64
                        " (stale data: a missing sync?)",
                        completion.checksum, frame, result->expected_checksum);
}

static NTSTATUS loopback(ks_dma_device *device, void *frame, const frame_segments *from, void *second_frame,
                         const frame_segments *to, uint64_t seed, unsigned flags, ks_dma_transfer_result *result,
                         ks_error *err)
{
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    if (from->info.bytes != to->info.bytes)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma loopback: frames %p and %p differ in size (%zu, %zu)",
                            frame, second_frame, from->info.bytes, to->info.bytes);
    ks_dma_completion completion;
    ks_dma_descriptor descriptor = {.op = KS_DMA_OP_COPY, .src = from->segments, .src_count = from->info.segment_count,
                                    .dst = to->segments, .dst_count = to->info.segment_count};
    ks_dma_pattern_fill(frame, from->info.bytes, seed, 0);
    NTSTATUS status = sync_frame(adapter, frame, KS_DMA_SYNC_FOR_DEVICE, flags, err);
    if (NT_SUCCESS(status))
        status = sync_frame(adapter, second_frame, KS_DMA_SYNC_FOR_DEVICE, flags, err);
    if (NT_SUCCESS(status))
        status = run_descriptor(device, &descriptor, frame, result, &completion, err);
    NTSTATUS sync_status = sync_frame(adapter, second_frame, KS_DMA_SYNC_FOR_CPU, flags, NT_SUCCESS(status) ? err : NULL);
    if (NT_SUCCESS(status))
        status = sync_status;
    if (NT_SUCCESS(status))
        status = check_pattern(second_frame, to->info.bytes, seed, result, "loopback", err);
    return status;
}

NTSTATUS ks_dma_frame_transfer(ks_dma_device *device, ks_dma_transfer transfer, void *frame, void *second_frame,
                               uint64_t seed, unsigned flags, ks_dma_transfer_result *result, ks_error *err)
{
    ks_dma_transfer_result scratch;
    if (result == NULL)
        result = &scratch;
    *result = (ks_dma_transfer_result){.first_bad_offset = SIZE_MAX};
    if ((unsigned)transfer > KS_DMA_TRANSFER_LOOPBACK || frame == NULL ||
        (transfer == KS_DMA_TRANSFER_LOOPBACK && second_frame == NULL))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma transfer: %s needs %s", ks_dma_transfer_name(transfer),
                            transfer == KS_DMA_TRANSFER_LOOPBACK ? "two frames" : "a frame");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    frame_segments first, second;
    NTSTATUS status = frame_segments_get(adapter, frame, &first, err);
    if (!NT_SUCCESS(status))
        return status;
    if (transfer == KS_DMA_TRANSFER_CAPTURE) {
        status = capture(device, frame, &first, seed, flags, result, err);
    } else if (transfer == KS_DMA_TRANSFER_RENDER) {
        status = render(device, frame, &first, seed, flags, result, err);
    } else {
        status = frame_segments_get(adapter, second_frame, &second, err);
        if (NT_SUCCESS(status))
            status = loopback(device, frame, &first, second_frame, &second, seed, flags, result, err);
        frame_segments_release(&second);
    }
    frame_segments_release(&first);
    return status;
}

/* ---- the device half alone, on a mapped range ------------------------------------------------ */

/* Longest first segment of [bus, bus + bytes) the device takes: cut at the boundary and the
 * maximum segment length on a scatter/gather device; the whole range otherwise. */
static uint64_t segment_length(const ks_dma_device_description *device, ks_dma_addr bus, uint64_t bytes)
{
    if (!device->scatter_gather)
        return bytes;
    uint64_t take = bytes;
    if (device->boundary_bytes != 0 && take > device->boundary_bytes - (bus & (device->boundary_bytes - 1u)))
        take = device->boundary_bytes - (bus & (device->boundary_bytes - 1u));
    if (device->max_segment_bytes != 0 && take > device->max_segment_bytes)
        take = device->max_segment_bytes;
    return take;
}

static NTSTATUS run_range(ks_dma_device *device, ks_dma_op op, ks_dma_addr bus_addr, uint64_t bytes, uint64_t seed,
                          ks_dma_completion *completion, ks_error *err)
{
    const ks_dma_device_description *desc = ks_dma_adapter_description(ks_dma_device_adapter(device));
    memset(completion, 0, sizeof *completion);
    uint32_t count = 0;
    for (uint64_t done = 0; done < bytes && count < UINT32_MAX; count++)
        done += segment_length(desc, bus_addr + done, bytes - done);
    ks_dma_segment local[LOCAL_SEGMENTS];
    ks_dma_segment *segments = count <= LOCAL_SEGMENTS ? local : malloc((size_t)count * sizeof *segments);
    if (segments == NULL || bytes == 0)
        return ks_error_set(err, bytes == 0 ? STATUS_INVALID_PARAMETER : STATUS_INSUFFICIENT_RESOURCES,
                            "dma device %s of %" PRIu64 " bytes at bus 0x%" PRIx64 ": %s",
                            op == KS_DMA_OP_FILL ? "write" : "read", bytes, bus_addr, bytes == 0 ? "empty" : "no memory");
    uint64_t done = 0;
    for (uint32_t i = 0; i < count; i++) {
        segments[i] = (ks_dma_segment){.bus_addr = bus_addr + done, .bytes = segment_length(desc, bus_addr + done, bytes - done)};
        done += segments[i].bytes;
    }
    ks_dma_descriptor descriptor = {.op = op, .pattern_seed = seed};
    if (op == KS_DMA_OP_FILL) {
        descriptor.dst = segments;
        descriptor.dst_count = count;
    } else {
        descriptor.src = segments;
        descriptor.src_count = count;
    }
    NTSTATUS status = ks_dma_device_run(device, &descriptor, completion, TRANSFER_TIMEOUT_NS, err);
    if (segments != local)
        free(segments);
    return status;
}

NTSTATUS ks_dma_device_write_pattern(ks_dma_device *device, ks_dma_addr bus_addr, uint64_t bytes, uint64_t seed,
                                     ks_dma_completion *completion, ks_error *err)
{
    return run_range(device, KS_DMA_OP_FILL, bus_addr, bytes, seed, completion, err);
}

NTSTATUS ks_dma_device_read_checksum(ks_dma_device *device, ks_dma_addr bus_addr, uint64_t bytes,
                                     ks_dma_completion *completion, ks_error *err)
{
    return run_range(device, KS_DMA_OP_CHECKSUM, bus_addr, bytes, 0, completion, err);
}
