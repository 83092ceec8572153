/*
 * region.c -- the frame registry: where the device sees a frame a DMA-backed allocator handed out.
 *
 * The dispatch table gives frames as CPU pointers only; a driver also needs their device
 * addresses (AVStream's KSMAPPING tables, videobuf2's dma_addr). Allocators register the memory
 * they carve frames from -- a common buffer, a pool page, a scatter/gather mapped frame -- as a
 * region: its CPU range, the device segments it is mapped at in CPU order, and the frame size.
 * A lookup finds the region holding a frame, translates [frame, frame + frame size) through the
 * region's segments, merges what is contiguous on the bus and splits at the device's boundary
 * and maximum segment length (a scatter/gather device takes the pieces; a device without
 * scatter/gather must get one legal segment, else the checker says why).
 *
 * Registration and every lookup check that each bus range still maps back, through a live
 * mapping, to the CPU bytes it is said to hold (KS_DMA_RULE_FRAME_MISMATCH): an allocator that
 * computes a device address off by a page, or keeps a region after unmapping it, is caught where
 * it lies rather than when the device writes somebody else's memory.
 *
 * Regions sit in a range map by CPU address: lookup O(log regions + segments). Records are
 * allocated at registration. All under the adapter lock.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"

typedef struct dma_region {
    uintptr_t cpu;
    uint64_t bytes;
    uint64_t frame_bytes;
    uint32_t segment_count;
    ks_dma_segment segments[];
} dma_region;

void ks_dma_registry_init(ks_dma_registry *registry)
{
    ks_rangemap_init(&registry->regions);
}

void ks_dma_registry_destroy(ks_dma_registry *registry)
{
    for (size_t i = 0; i < registry->regions.count; i++)
        free(registry->regions.items[i].value);
    ks_rangemap_destroy(&registry->regions);
}

/* Whether [bus, bus + bytes) maps back to [cpu, cpu + bytes) through live pieces; the mapping of
 * the first byte in *mapping. */
static bool maps_back(ks_dma_adapter *adapter, ks_dma_addr bus, uint64_t bytes, uintptr_t cpu,
                      const ks_dma_mapping **mapping)
{
    *mapping = NULL;
    for (uint64_t done = 0; done < bytes;) {
        const ks_dma_piece *piece = ks_dma_adapter_piece_at(adapter, bus + done);
        if (piece == NULL || piece->cpu + (uintptr_t)(bus + done - piece->bus) != cpu + (uintptr_t)done)
            return false;
        if (*mapping == NULL)
            *mapping = piece->mapping;
        uint64_t left_in_piece = piece->bus + piece->bytes - (bus + done);
        done += left_in_piece < bytes - done ? left_in_piece : bytes - done;
    }
    return true;
}

static uint64_t mask_for(const ks_dma_adapter *adapter, const ks_dma_mapping *mapping)
{
    return mapping != NULL && mapping->kind == KS_DMA_KIND_COHERENT ? adapter->coherent_mask : adapter->mask;
}

/* Checks one segment of a region (or a frame's part of it): maps back, below the mask. */
static bool segment_sound(ks_dma_adapter *adapter, const char *call, uint64_t op, ks_dma_addr bus, uint64_t bytes,
                          uintptr_t cpu, const ks_dma_mapping **mapping)
{
    if (!maps_back(adapter, bus, bytes, cpu, mapping)) {
        const ks_dma_piece *near = ks_dma_adapter_piece_at(adapter, bus);
        ks_dma_checker_report(adapter->checker, KS_DMA_RULE_FRAME_MISMATCH, call, op, bus, cpu, bytes,
                              near == NULL ? NULL : near->mapping,
                              "bus 0x%" PRIx64 " + %" PRIu64 " bytes does not map back to cpu 0x%" PRIxPTR
                              " through a live mapping",
                              bus, bytes, cpu);
        return false;
    }
    if (bus + bytes - 1u > mask_for(adapter, *mapping)) {
        ks_dma_checker_report(adapter->checker, KS_DMA_RULE_SEGMENT_MASK, call, op, bus, cpu, bytes, *mapping,
                              "segment bus 0x%" PRIx64 " + %" PRIu64 " bytes reaches beyond the mask 0x%" PRIx64, bus,
                              bytes, mask_for(adapter, *mapping));
        return false;
    }
    return true;
}

static dma_region *region_at(const ks_dma_adapter *adapter, uintptr_t cpu)
{
    const ks_rangemap *regions = &adapter->registry.regions;
    size_t k = ks_rangemap_first_overlap(regions, cpu, cpu + 1u);
    return k < regions->count ? regions->items[k].value : NULL;
}

static NTSTATUS validate_registration(void *cpu, size_t bytes, size_t frame_bytes, const ks_dma_segment *segments,
                                      uint32_t segment_count, ks_error *err)
{
    uint64_t total = 0;
    for (uint32_t i = 0; segments != NULL && i < segment_count; i++)
        total += segments[i].bytes;
    if (cpu == NULL || bytes == 0 || frame_bytes == 0 || frame_bytes > bytes || segments == NULL ||
        segment_count == 0 || total != bytes)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "ks_dma_region_register: region cpu %p of %zu bytes, frames of %zu, %u segments of %" PRIu64
                            " bytes in all: inconsistent",
                            cpu, bytes, frame_bytes, segment_count, total);
    return STATUS_SUCCESS;
}

NTSTATUS ks_dma_region_register(ks_dma_adapter *adapter, void *cpu, size_t bytes, size_t frame_bytes,
                                const ks_dma_segment *segments, uint32_t segment_count, ks_error *err)
{
    NTSTATUS status = validate_registration(cpu, bytes, frame_bytes, segments, segment_count, err);
    if (!NT_SUCCESS(status))
        return status;
    dma_region *region = malloc(sizeof *region + (size_t)segment_count * sizeof(ks_dma_segment));
    if (region == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "ks_dma_region_register: no memory");
    *region = (dma_region){.cpu = (uintptr_t)cpu, .bytes = bytes, .frame_bytes = frame_bytes,
                           .segment_count = segment_count};
    memcpy(region->segments, segments, (size_t)segment_count * sizeof *segments);
    ks_dma_adapter_lock(adapter);
    uint64_t op = adapter->op++;
    uintptr_t segment_cpu = (uintptr_t)cpu;
    for (uint32_t i = 0; i < segment_count && NT_SUCCESS(status); i++) {
        const ks_dma_mapping *mapping;
        if (!segment_sound(adapter, "ks_dma_region_register", op, segments[i].bus_addr, segments[i].bytes,
                           segment_cpu, &mapping))
            status = ks_error_set(err, STATUS_INVALID_PARAMETER,
                                  "ks_dma_region_register: segment %u (bus 0x%" PRIx64 ", %" PRIu64
                                  " bytes) does not hold cpu 0x%" PRIxPTR " within the mask",
                                  i, segments[i].bus_addr, segments[i].bytes, segment_cpu);
        segment_cpu += (uintptr_t)segments[i].bytes;
    }
    ks_rangemap *regions = &adapter->registry.regions;
    if (NT_SUCCESS(status) && ks_rangemap_first_overlap(regions, (uintptr_t)cpu, (uintptr_t)cpu + bytes) != regions->count)
        status = ks_error_set(err, STATUS_INVALID_PARAMETER, "ks_dma_region_register: cpu %p + %zu overlaps a region",
                              cpu, bytes);
    if (NT_SUCCESS(status) && !NT_SUCCESS(ks_rangemap_insert(regions, (uintptr_t)cpu, (uintptr_t)cpu + bytes, region)))
        status = ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "ks_dma_region_register: no memory");
    ks_dma_adapter_unlock(adapter);
    if (!NT_SUCCESS(status))
        free(region);
    return status;
}

void ks_dma_region_unregister(ks_dma_adapter *adapter, void *cpu)
{
    ks_dma_adapter_lock(adapter);
    dma_region *region = region_at(adapter, (uintptr_t)cpu);
    if (region != NULL && region->cpu == (uintptr_t)cpu) {
        ks_rangemap_remove(&adapter->registry.regions, region->cpu, region);
        free(region);
    }
    ks_dma_adapter_unlock(adapter);
}

/* ---- frames ----------------------------------------------------------------------------------- */

/* Visits the bus ranges of [offset, offset + bytes) of the region, bus-contiguous ones merged. */
typedef bool (*range_visitor)(void *context, ks_dma_addr bus, uint64_t bytes, uintptr_t cpu);

static bool visit_frame(const dma_region *region, uint64_t offset, uint64_t bytes, range_visitor visit,
                        void *context)
{
    ks_dma_addr pending_bus = 0;
    uint64_t pending_bytes = 0, segment_start = 0;
    uintptr_t pending_cpu = 0;
    for (uint32_t i = 0; i < region->segment_count && bytes > 0; i++) {
        const ks_dma_segment *segment = &region->segments[i];
        uint64_t segment_end = segment_start + segment->bytes;
        if (offset < segment_end) {
            uint64_t inner = offset - segment_start;
            uint64_t take = segment->bytes - inner < bytes ? segment->bytes - inner : bytes;
            ks_dma_addr bus = segment->bus_addr + inner;
            if (pending_bytes != 0 && pending_bus + pending_bytes == bus) {
                pending_bytes += take;
            } else {
                if (pending_bytes != 0 && !visit(context, pending_bus, pending_bytes, pending_cpu))
                    return false;
                pending_bus = bus;
                pending_bytes = take;
                pending_cpu = region->cpu + (uintptr_t)offset;
            }
            offset += take;
            bytes -= take;
        }
        segment_start = segment_end;
    }
    return pending_bytes == 0 || visit(context, pending_bus, pending_bytes, pending_cpu);
}

typedef struct lookup_state {
    ks_dma_adapter *adapter;
    uint64_t op;
    ks_dma_segment *out;
    uint32_t max_out;
    uint32_t count;
    bool sound;
    bool needs_sync;
    const ks_dma_mapping *first_mapping;
} lookup_state;

static void lookup_emit(lookup_state *state, ks_dma_addr bus, uint64_t bytes, uintptr_t cpu,
                        const ks_dma_mapping *mapping)
{
    ks_dma_adapter *adapter = state->adapter;
    ks_dma_check_segment(adapter->checker, "ks_dma_frame_lookup", state->op, &adapter->device,
                         mask_for(adapter, mapping), bus, bytes, cpu, mapping);
    if (state->count < state->max_out)
        state->out[state->count] = (ks_dma_segment){.bus_addr = bus, .bytes = bytes};
    state->count++;
}

/* Largest first piece of [bus, bus + bytes) a scatter/gather device takes in one segment. */
static uint64_t split_length(const ks_dma_device_description *device, ks_dma_addr bus, uint64_t bytes)
{
    uint64_t take = bytes;
    if (device->boundary_bytes != 0) {
        uint64_t to_boundary = device->boundary_bytes - (bus & (device->boundary_bytes - 1u));
        if (take > to_boundary)
            take = to_boundary;
    }
    if (device->max_segment_bytes != 0 && take > device->max_segment_bytes)
        take = device->max_segment_bytes;
    return take;
}

static bool lookup_visit(void *context, ks_dma_addr bus, uint64_t bytes, uintptr_t cpu)
{
    lookup_state *state = context;
    ks_dma_adapter *adapter = state->adapter;
    const ks_dma_mapping *mapping;
    if (!segment_sound(adapter, "ks_dma_frame_lookup", state->op, bus, bytes, cpu, &mapping)) {
        state->sound = false;
        return false;
    }
    if (state->first_mapping == NULL)
        state->first_mapping = mapping;
    const ks_dma_piece *piece = ks_dma_adapter_piece_at(adapter, bus);
    state->needs_sync |= mapping->cached || (piece != NULL && piece->bounced);
    if (!adapter->device.scatter_gather) {
        lookup_emit(state, bus, bytes, cpu, mapping);
        return true;
    }
    for (uint64_t done = 0; done < bytes;) {
        uint64_t take = split_length(&adapter->device, bus + done, bytes - done);
        lookup_emit(state, bus + done, take, cpu + (uintptr_t)done, mapping);
        done += take;
    }
    return true;
}

NTSTATUS ks_dma_frame_lookup(ks_dma_adapter *adapter, const void *cpu, ks_dma_frame_info *info,
                             ks_dma_segment *segments, uint32_t max_segments, ks_error *err)
{
    memset(info, 0, sizeof *info);
    ks_dma_adapter_lock(adapter);
    uint64_t op = adapter->op++;
    const dma_region *region = region_at(adapter, (uintptr_t)cpu);
    NTSTATUS status = STATUS_SUCCESS;
    lookup_state state = {.adapter = adapter, .op = op, .out = segments, .max_out = segments == NULL ? 0 : max_segments,
                          .sound = true};
    if (region == NULL) {
        status = ks_error_set(err, STATUS_OBJECT_NAME_NOT_FOUND, "ks_dma_frame_lookup: no DMA region holds frame %p",
                              cpu);
    } else if ((uintptr_t)cpu + region->frame_bytes > region->cpu + region->bytes) {
        ks_dma_checker_report(adapter->checker, KS_DMA_RULE_FRAME_MISMATCH, "ks_dma_frame_lookup", op, 0,
                              (uintptr_t)cpu, region->frame_bytes, NULL,
                              "frame %p of %" PRIu64 " bytes runs past the end of its region (cpu 0x%" PRIxPTR " + %" PRIu64 ")",
                              cpu, region->frame_bytes, region->cpu, region->bytes);
        status = ks_error_set(err, STATUS_INVALID_PARAMETER, "ks_dma_frame_lookup: frame %p runs past its region", cpu);
    } else {
        visit_frame(region, (uintptr_t)cpu - region->cpu, region->frame_bytes, lookup_visit, &state);
        if (!state.sound)
            status = ks_error_set(err, STATUS_INVALID_PARAMETER,
                                  "ks_dma_frame_lookup: frame %p does not map back to itself (see the DMA reports)", cpu);
    }
    if (NT_SUCCESS(status)) {
        ks_dma_check_segment_count(adapter->checker, "ks_dma_frame_lookup", op, &adapter->device, state.count,
                                   state.max_out > 0 ? segments[0].bus_addr : 0, state.first_mapping);
        *info = (ks_dma_frame_info){.cpu = (void *)(uintptr_t)cpu, .bytes = region->frame_bytes,
                                    .kind = state.first_mapping->kind, .direction = state.first_mapping->direction,
                                    .needs_sync = state.needs_sync, .segment_count = state.count,
                                    .bus_addr = state.max_out > 0 ? segments[0].bus_addr : 0};
    }
    ks_dma_adapter_unlock(adapter);
    return status;
}

typedef struct sync_state {
    ks_dma_adapter *adapter;
    uint64_t op;
    bool for_device;
} sync_state;

static bool sync_visit(void *context, ks_dma_addr bus, uint64_t bytes, uintptr_t cpu)
{
    (void)cpu;
    sync_state *state = context;
    const ks_dma_piece *piece = ks_dma_adapter_piece_at(state->adapter, bus);
    ks_dma_direction direction = piece == NULL ? KS_DMA_BIDIRECTIONAL : piece->mapping->direction;
    ks_dma_sync_range_locked(state->adapter, "ks_dma_frame_sync", state->op, bus, bytes, direction, state->for_device);
    return true;
}

NTSTATUS ks_dma_frame_sync(ks_dma_adapter *adapter, const void *cpu, ks_dma_sync_target target, ks_error *err)
{
    ks_dma_adapter_lock(adapter);
    uint64_t op = adapter->op++;
    const dma_region *region = region_at(adapter, (uintptr_t)cpu);
    NTSTATUS status = STATUS_SUCCESS;
    if (region == NULL || (uintptr_t)cpu + region->frame_bytes > region->cpu + region->bytes) {
        status = ks_error_set(err, STATUS_OBJECT_NAME_NOT_FOUND, "ks_dma_frame_sync: no DMA region holds frame %p",
                              cpu);
    } else {
        sync_state state = {.adapter = adapter, .op = op, .for_device = target == KS_DMA_SYNC_FOR_DEVICE};
        visit_frame(region, (uintptr_t)cpu - region->cpu, region->frame_bytes, sync_visit, &state);
    }
    ks_dma_adapter_unlock(adapter);
    return status;
}
