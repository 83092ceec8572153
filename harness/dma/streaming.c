/*
 * streaming.c -- streaming mappings: ks_dma_map_single / ks_dma_map_sg, their unmaps, syncs and
 * ks_dma_mapping_error (MapTransfer / GetScatterGatherList / FlushAdapterBuffers in Windows).
 *
 * A map pins the caller's pages in emulated physical memory (giving them addresses on first
 * use), then makes them reachable:
 *  - with an IOMMU, one IOVA range for all entries, naturally aligned as Linux's allocator does
 *    (so a mapping no larger than the boundary never crosses it), each page entered in the table
 *    with the permissions of the direction; sg entries that meet on page boundaries merge into
 *    one segment while it stays within the maximum segment length and the boundary;
 *  - without one, each entry at its physical address when it is physically contiguous and below
 *    the mask, else through a swiotlb bounce slot (or, with bouncing off, the map fails). No
 *    merging, like dma-direct.
 * On a non-coherent device the device-visible memory (the caller's or the bounce slot) gets RAM
 * shadows (cache.c) and the map performs the sync for device its direction implies; the unmap
 * performs the sync for CPU. Then the result is checked against the device (segments of an sg
 * list: mask, boundary, length, alignment, count; a single mapping: mask and alignment, as a
 * single buffer is the driver's to split) and indexed.
 *
 * Cost: O(pages) to pin, translate and (with an IOMMU) enter; bounce and cache copies O(bytes);
 * indexing O(log n + n) per piece. Called with the adapter lock taken here.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"

#define IOVA_NATURAL_ALIGN_MAX_PAGES 1024u /* 4 MiB */
#define DEFAULT_BOUNCE_POOL_BYTES ((size_t)64 << 20)
#define BOUNCE_LIMIT_BYTES ((uint64_t)4 << 30) /* swiotlb lives below 4 GiB */

typedef struct map_request {
    const char *call;
    ks_dma_kind kind;
    ks_dma_direction direction;
    const ks_dma_sg *entries;
    uint32_t nents;
    uint64_t op;
} map_request;

static bool direction_valid(ks_dma_direction direction)
{
    return direction == KS_DMA_BIDIRECTIONAL || direction == KS_DMA_TO_DEVICE || direction == KS_DMA_FROM_DEVICE;
}

static unsigned iommu_perms(ks_dma_direction direction)
{
    switch (direction) {
    case KS_DMA_TO_DEVICE:
        return KS_IOMMU_READ;
    case KS_DMA_FROM_DEVICE:
        return KS_IOMMU_WRITE;
    default:
        return KS_IOMMU_READ | KS_IOMMU_WRITE;
    }
}

/* ---- placing the pieces --------------------------------------------------------------------- */

static NTSTATUS pin_entries(ks_dma_adapter *adapter, const map_request *request, ks_error *err)
{
    for (uint32_t i = 0; i < request->nents; i++) {
        const ks_dma_sg *entry = &request->entries[i];
        NTSTATUS status = ks_physmem_pin(adapter->physmem, (uintptr_t)entry->cpu, entry->bytes, err);
        if (!NT_SUCCESS(status)) {
            while (i-- > 0)
                ks_physmem_unpin(adapter->physmem, (uintptr_t)request->entries[i].cpu, request->entries[i].bytes);
            return status;
        }
    }
    return STATUS_SUCCESS;
}

static NTSTATUS place_iommu(ks_dma_adapter *adapter, ks_dma_mapping *mapping, const map_request *request,
                            ks_error *err)
{
    uint64_t total_pages = 0;
    for (uint32_t i = 0; i < request->nents; i++)
        total_pages += ks_dma_pages_spanned((uintptr_t)request->entries[i].cpu, request->entries[i].bytes);
    uint64_t align_pages = ks_dma_pow2_ceil(total_pages);
    if (align_pages > IOVA_NATURAL_ALIGN_MAX_PAGES)
        align_pages = IOVA_NATURAL_ALIGN_MAX_PAGES;
    if (align_pages < (adapter->device.align_bytes >> KS_DMA_PAGE_SHIFT))
        align_pages = adapter->device.align_bytes >> KS_DMA_PAGE_SHIFT;
    ks_dma_addr iova = ks_iommu_alloc_iova(adapter->iommu, total_pages, align_pages);
    if (iova == KS_DMA_ADDR_ERROR)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "%s: IOVA space full (%" PRIu64 " pages wanted)",
                            request->call, total_pages);
    mapping->iova = iova;
    mapping->iova_pages = total_pages;
    ks_dma_addr cursor = iova;
    for (uint32_t i = 0; i < request->nents; i++) {
        const ks_dma_sg *entry = &request->entries[i];
        uintptr_t first_page = (uintptr_t)ks_dma_align_down((uintptr_t)entry->cpu, KS_DMA_PAGE_BYTES);
        uint64_t pages = ks_dma_pages_spanned((uintptr_t)entry->cpu, entry->bytes);
        for (uint64_t p = 0; p < pages; p++) {
            uint64_t phys = 0;
            ks_physmem_run(adapter->physmem, first_page + (uintptr_t)(p << KS_DMA_PAGE_SHIFT), 1, &phys);
            NTSTATUS status = ks_iommu_map(adapter->iommu, cursor + (p << KS_DMA_PAGE_SHIFT), phys,
                                           iommu_perms(request->direction), err);
            if (!NT_SUCCESS(status))
                return status;
        }
        mapping->pieces[i] = (ks_dma_piece){.mapping = mapping, .bus = cursor + ((uintptr_t)entry->cpu & KS_DMA_PAGE_MASK),
                                            .bytes = entry->bytes, .cpu = (uintptr_t)entry->cpu,
                                            .device_host = (uintptr_t)entry->cpu};
        cursor += pages << KS_DMA_PAGE_SHIFT;
    }
    return STATUS_SUCCESS;
}

static NTSTATUS ensure_bounce_pool(ks_dma_adapter *adapter, ks_error *err)
{
    if (adapter->bounce != NULL)
        return STATUS_SUCCESS;
    uint64_t limit = adapter->mask >= BOUNCE_LIMIT_BYTES - 1u ? BOUNCE_LIMIT_BYTES : adapter->mask + 1u;
    size_t pool_bytes = adapter->options.bounce_pool_bytes != 0 ? adapter->options.bounce_pool_bytes
                                                                : DEFAULT_BOUNCE_POOL_BYTES;
    if (pool_bytes > limit / 4u)
        pool_bytes = (size_t)(limit / 4u);
    return ks_bounce_create(adapter->physmem, pool_bytes, limit, &adapter->bounce, err);
}

/* Puts one entry at its physical address, or in a bounce slot when the device cannot reach it. */
static NTSTATUS place_entry_direct(ks_dma_adapter *adapter, ks_dma_piece *piece, const ks_dma_sg *entry,
                                   const char *call, ks_error *err)
{
    uint64_t phys = 0;
    uint64_t run = ks_physmem_run(adapter->physmem, (uintptr_t)entry->cpu, entry->bytes, &phys);
    piece->bytes = entry->bytes;
    piece->cpu = (uintptr_t)entry->cpu;
    if (run == entry->bytes && phys + entry->bytes - 1u <= adapter->mask) {
        piece->bus = phys;
        piece->device_host = piece->cpu;
        return STATUS_SUCCESS;
    }
    if (adapter->options.no_bounce)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES,
                            "%s: cpu 0x%" PRIxPTR " + %zu bytes at phys 0x%" PRIx64 " is %s mask 0x%" PRIx64
                            " and bouncing is off",
                            call, piece->cpu, entry->bytes, phys,
                            run == entry->bytes ? "beyond the DMA" : "not physically contiguous under the",
                            adapter->mask);
    NTSTATUS status = ensure_bounce_pool(adapter, err);
    if (NT_SUCCESS(status))
        status = ks_bounce_map(adapter->bounce, entry->bytes, adapter->device.align_bytes, &piece->device_host,
                               &piece->bus, err);
    if (!NT_SUCCESS(status))
        return status;
    piece->bounced = true;
    /* swiotlb copies whatever the direction, so stale pool data never reaches the device. */
    memcpy((void *)piece->device_host, entry->cpu, entry->bytes);
    adapter->stats.bounce_bytes_copied += entry->bytes;
    return STATUS_SUCCESS;
}

static NTSTATUS place_direct(ks_dma_adapter *adapter, ks_dma_mapping *mapping, const map_request *request,
                             ks_error *err)
{
    bool bounced = false;
    for (uint32_t i = 0; i < request->nents; i++) {
        ks_dma_piece *piece = &mapping->pieces[i];
        piece->mapping = mapping;
        NTSTATUS status = place_entry_direct(adapter, piece, &request->entries[i], request->call, err);
        if (!NT_SUCCESS(status))
            return status;
        bounced |= piece->bounced;
    }
    if (bounced)
        adapter->stats.bounced_mappings++;
    return STATUS_SUCCESS;
}

/* The cache half of the sync for device a map implies (the bounce half is done). */
static NTSTATUS attach_caches(ks_dma_adapter *adapter, ks_dma_mapping *mapping, ks_error *err)
{
    if (adapter->device.coherent)
        return STATUS_SUCCESS;
    for (uint32_t i = 0; i < mapping->piece_count; i++) {
        const ks_dma_piece *piece = &mapping->pieces[i];
        NTSTATUS status = ks_cache_attach(adapter->physmem, piece->device_host, piece->bytes, err);
        if (!NT_SUCCESS(status)) {
            while (i-- > 0)
                ks_cache_detach(adapter->physmem, mapping->pieces[i].device_host, mapping->pieces[i].bytes);
            return status;
        }
    }
    mapping->cached = true;
    for (uint32_t i = 0; i < mapping->piece_count; i++) {
        const ks_dma_piece *piece = &mapping->pieces[i];
        if (mapping->direction == KS_DMA_FROM_DEVICE)
            adapter->stats.cache_invalidate_bytes += ks_cache_invalidate(adapter->physmem, piece->device_host, piece->bytes);
        else
            adapter->stats.cache_writeback_bytes += ks_cache_writeback(adapter->physmem, piece->device_host, piece->bytes);
    }
    return STATUS_SUCCESS;
}

/* Undoes a map that failed part-way: pieces [0, placed) may hold bounce slots. */
static void abandon_mapping(ks_dma_adapter *adapter, ks_dma_mapping *mapping, const map_request *request,
                            uint32_t placed)
{
    for (uint32_t i = 0; i < placed; i++)
        if (mapping->pieces[i].bounced)
            ks_bounce_unmap(adapter->bounce, mapping->pieces[i].bus, mapping->pieces[i].bytes);
    if (adapter->iommu != NULL && mapping->iova_pages != 0) {
        for (uint64_t i = 0; i < mapping->iova_pages; i++)
            ks_iommu_unmap(adapter->iommu, mapping->iova + (i << KS_DMA_PAGE_SHIFT));
        ks_iommu_free_iova(adapter->iommu, mapping->iova, mapping->iova_pages);
    }
    for (uint32_t i = 0; i < request->nents; i++)
        ks_physmem_unpin(adapter->physmem, (uintptr_t)request->entries[i].cpu, request->entries[i].bytes);
    free(mapping);
}

/* ---- segments ------------------------------------------------------------------------------ */

/* The device segments of a mapping: IOMMU pieces merge where they meet on page boundaries,
 * within the maximum segment length and the boundary; direct pieces stay apart. */
static uint32_t build_segments(const ks_dma_adapter *adapter, const ks_dma_mapping *mapping, ks_dma_segment *out)
{
    uint32_t count = 0;
    const ks_dma_device_description *device = &adapter->device;
    for (uint32_t i = 0; i < mapping->piece_count; i++) {
        const ks_dma_piece *piece = &mapping->pieces[i];
        if (count > 0 && adapter->iommu != NULL) {
            ks_dma_segment *last = &out[count - 1u];
            uint64_t merged = last->bytes + piece->bytes;
            bool meets = last->bus_addr + last->bytes == piece->bus && (piece->bus & KS_DMA_PAGE_MASK) == 0;
            bool fits = (device->max_segment_bytes == 0 || merged <= device->max_segment_bytes) &&
                        (device->boundary_bytes == 0 ||
                         ((last->bus_addr ^ (last->bus_addr + merged - 1u)) & ~(device->boundary_bytes - 1u)) == 0);
            if (meets && fits) {
                last->bytes = merged;
                continue;
            }
        }
        out[count++] = (ks_dma_segment){.bus_addr = piece->bus, .bytes = piece->bytes};
    }
    return count;
}

static void check_result(ks_dma_adapter *adapter, const ks_dma_mapping *mapping, const ks_dma_segment *segments,
                         uint32_t count, const map_request *request)
{
    ks_dma_device_description rules = adapter->device;
    if (request->kind == KS_DMA_KIND_SINGLE) {
        rules.boundary_bytes = 0;
        rules.max_segment_bytes = 0;
    }
    for (uint32_t i = 0; i < count; i++)
        ks_dma_check_segment(adapter->checker, request->call, request->op, &rules, adapter->mask,
                             segments[i].bus_addr, segments[i].bytes, mapping->pieces[0].cpu, mapping);
    if (request->kind == KS_DMA_KIND_SG)
        ks_dma_check_segment_count(adapter->checker, request->call, request->op, &adapter->device, count,
                                   segments[0].bus_addr, mapping);
}

/* ---- map ------------------------------------------------------------------------------------ */

static NTSTATUS map_entries(ks_dma_adapter *adapter, const map_request *request, ks_dma_mapping **out,
                            ks_dma_segment *segments, uint32_t *segment_count, ks_error *err)
{
    ks_dma_mapping *mapping = ks_dma_mapping_alloc(request->nents);
    if (mapping == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "%s: no memory", request->call);
    mapping->kind = request->kind;
    mapping->direction = request->direction;
    mapping->map_op = request->op;
    mapping->sg_nents = request->kind == KS_DMA_KIND_SG ? request->nents : 0;
    mapping->cpu = (uintptr_t)request->entries[0].cpu;
    for (uint32_t i = 0; i < request->nents; i++)
        mapping->bytes += request->entries[i].bytes;
    NTSTATUS status = pin_entries(adapter, request, err);
    if (!NT_SUCCESS(status)) {
        free(mapping);
        return status;
    }
    status = adapter->iommu != NULL ? place_iommu(adapter, mapping, request, err)
                                    : place_direct(adapter, mapping, request, err);
    if (NT_SUCCESS(status))
        status = attach_caches(adapter, mapping, err);
    if (NT_SUCCESS(status)) {
        *segment_count = build_segments(adapter, mapping, segments);
        mapping->bus = segments[0].bus_addr;
        mapping->sg_mapped = *segment_count;
        status = ks_dma_mapping_insert(adapter, mapping, request->call, err);
        if (!NT_SUCCESS(status) && mapping->cached)
            for (uint32_t i = 0; i < mapping->piece_count; i++)
                ks_cache_detach(adapter->physmem, mapping->pieces[i].device_host, mapping->pieces[i].bytes);
    }
    if (!NT_SUCCESS(status)) {
        abandon_mapping(adapter, mapping, request, request->nents);
        return status;
    }
    check_result(adapter, mapping, segments, *segment_count, request);
    *out = mapping;
    return STATUS_SUCCESS;
}

/* Zero length, NULL memory, an invalid direction: reported, and the map fails. */
static bool request_invalid(ks_dma_adapter *adapter, const map_request *request, ks_error *err)
{
    const char *why = NULL;
    if (!direction_valid(request->direction))
        why = "an invalid direction";
    else if (request->nents == 0 || request->entries == NULL)
        why = "no entries";
    for (uint32_t i = 0; why == NULL && i < request->nents; i++)
        if (request->entries[i].cpu == NULL || request->entries[i].bytes == 0)
            why = request->entries[i].cpu == NULL ? "NULL memory" : "zero length";
    if (why == NULL)
        return false;
    uintptr_t cpu = request->entries != NULL && request->nents > 0 ? (uintptr_t)request->entries[0].cpu : 0;
    ks_dma_checker_report(adapter->checker, KS_DMA_RULE_INVALID_MAP, request->call, request->op, 0, cpu, 0, NULL,
                          "maps %s (%s, %u entries)", why, ks_dma_direction_name(request->direction), request->nents);
    ks_error_set(err, STATUS_INVALID_PARAMETER, "%s: %s", request->call, why);
    adapter->stats.map_failures++;
    return true;
}

ks_dma_addr ks_dma_map_single(ks_dma_adapter *adapter, void *cpu, size_t bytes, ks_dma_direction direction,
                              ks_error *err)
{
    ks_dma_sg entry = {.cpu = cpu, .bytes = bytes};
    ks_dma_adapter_lock(adapter);
    map_request request = {.call = "ks_dma_map_single", .kind = KS_DMA_KIND_SINGLE, .direction = direction,
                           .entries = &entry, .nents = 1, .op = adapter->op++};
    ks_dma_addr bus = KS_DMA_ADDR_ERROR;
    if (!request_invalid(adapter, &request, err)) {
        ks_dma_mapping *mapping;
        ks_dma_segment segment;
        uint32_t count = 0;
        if (NT_SUCCESS(map_entries(adapter, &request, &mapping, &segment, &count, err))) {
            adapter->stats.maps_single++;
            bus = mapping->bus;
        } else {
            adapter->stats.map_failures++;
        }
    }
    ks_dma_adapter_unlock(adapter);
    return bus;
}

uint32_t ks_dma_map_sg(ks_dma_adapter *adapter, ks_dma_sg *sg, uint32_t nents, ks_dma_direction direction,
                       ks_error *err)
{
    ks_dma_segment *segments = nents == 0 ? NULL : calloc(nents, sizeof *segments);
    ks_dma_adapter_lock(adapter);
    map_request request = {.call = "ks_dma_map_sg", .kind = KS_DMA_KIND_SG, .direction = direction,
                           .entries = sg, .nents = nents, .op = adapter->op++};
    uint32_t count = 0;
    if (!request_invalid(adapter, &request, err)) {
        ks_dma_mapping *mapping;
        NTSTATUS status = segments == NULL ? ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "ks_dma_map_sg: no memory")
                                           : map_entries(adapter, &request, &mapping, segments, &count, err);
        if (NT_SUCCESS(status))
            adapter->stats.maps_sg++;
        else
            adapter->stats.map_failures++;
    }
    for (uint32_t i = 0; sg != NULL && i < nents; i++) {
        sg[i].bus_addr = i < count ? segments[i].bus_addr : KS_DMA_ADDR_ERROR;
        sg[i].bus_bytes = i < count ? segments[i].bytes : 0;
    }
    ks_dma_adapter_unlock(adapter);
    free(segments);
    return count;
}

bool ks_dma_mapping_error(ks_dma_adapter *adapter, ks_dma_addr bus_addr)
{
    if (bus_addr == KS_DMA_ADDR_ERROR)
        return true;
    ks_dma_adapter_lock(adapter);
    for (size_t k = ks_rangemap_first_overlap(&adapter->by_bus, bus_addr, bus_addr + 1u); k < adapter->by_bus.count;
         k = ks_rangemap_next_overlap(&adapter->by_bus, k + 1u, bus_addr, bus_addr + 1u)) {
        ks_dma_mapping *mapping = ((ks_dma_piece *)adapter->by_bus.items[k].value)->mapping;
        if (mapping->bus == bus_addr)
            mapping->error_checked = true;
    }
    ks_dma_adapter_unlock(adapter);
    return false;
}

/* ---- unmap ------------------------------------------------------------------------------------ */

void ks_dma_unmap_single(ks_dma_adapter *adapter, ks_dma_addr bus_addr, size_t bytes, ks_dma_direction direction)
{
    ks_dma_adapter_lock(adapter);
    uint64_t op = adapter->op++;
    ks_dma_mapping *found = ks_dma_mapping_find_exact(adapter, bus_addr, KS_DMA_KIND_SINGLE, bytes, direction);
    ks_dma_check_release(adapter->checker, "ks_dma_unmap_single", op, KS_DMA_KIND_SINGLE, bus_addr, 0, bytes,
                         direction, 0, found);
    if (found != NULL && found->kind == KS_DMA_KIND_SINGLE) {
        adapter->stats.unmaps_single++;
        ks_dma_mapping_release(adapter, found, op, true);
    }
    ks_dma_adapter_unlock(adapter);
}

static uint64_t sg_total_bytes(const ks_dma_sg *sg, uint32_t nents)
{
    uint64_t total = 0;
    for (uint32_t i = 0; sg != NULL && i < nents; i++)
        total += sg[i].bytes;
    return total;
}

void ks_dma_unmap_sg(ks_dma_adapter *adapter, ks_dma_sg *sg, uint32_t nents, ks_dma_direction direction)
{
    ks_dma_addr bus_addr = sg != NULL && nents > 0 ? sg[0].bus_addr : KS_DMA_ADDR_ERROR;
    uint64_t bytes = sg_total_bytes(sg, nents);
    ks_dma_adapter_lock(adapter);
    uint64_t op = adapter->op++;
    ks_dma_mapping *found = ks_dma_mapping_find_exact(adapter, bus_addr, KS_DMA_KIND_SG, bytes, direction);
    ks_dma_check_release(adapter->checker, "ks_dma_unmap_sg", op, KS_DMA_KIND_SG, bus_addr,
                         sg != NULL && nents > 0 ? (uintptr_t)sg[0].cpu : 0, bytes, direction, nents, found);
    if (found != NULL && found->kind == KS_DMA_KIND_SG) {
        adapter->stats.unmaps_sg++;
        ks_dma_mapping_release(adapter, found, op, true);
    }
    ks_dma_adapter_unlock(adapter);
}

/* ---- sync ------------------------------------------------------------------------------------ */

static const ks_dma_piece *piece_of(const ks_dma_mapping *mapping, ks_dma_addr bus_addr)
{
    for (uint32_t i = 0; i < mapping->piece_count; i++)
        if (bus_addr >= mapping->pieces[i].bus && bus_addr - mapping->pieces[i].bus < mapping->pieces[i].bytes)
            return &mapping->pieces[i];
    return NULL;
}

/* Walks [bus_addr, bus_addr + bytes) through the mapping's pieces while they hold it; syncs each
 * part when perform is set. Returns the bytes the mapping holds. */
static uint64_t walk_range(ks_dma_adapter *adapter, const ks_dma_mapping *mapping, ks_dma_addr bus_addr,
                           uint64_t bytes, ks_dma_direction direction, bool for_device, bool perform)
{
    uint64_t covered = 0;
    while (covered < bytes) {
        const ks_dma_piece *piece = piece_of(mapping, bus_addr + covered);
        if (piece == NULL)
            break;
        uint64_t offset = bus_addr + covered - piece->bus;
        uint64_t chunk = piece->bytes - offset < bytes - covered ? piece->bytes - offset : bytes - covered;
        if (perform)
            ks_dma_piece_sync(adapter, piece, offset, chunk, direction, for_device);
        covered += chunk;
    }
    return covered;
}

/* The direction a sync is performed in: the one asked, unless it is invalid or contradicts the
 * mapping (reported), in which case the mapping's. */
static ks_dma_direction effective_direction(const ks_dma_mapping *mapping, ks_dma_direction asked)
{
    if (direction_valid(asked) && (mapping->direction == KS_DMA_BIDIRECTIONAL || asked == mapping->direction))
        return asked;
    return mapping->direction;
}

void ks_dma_sync_range_locked(ks_dma_adapter *adapter, const char *call, uint64_t op, ks_dma_addr bus_addr,
                              uint64_t bytes, ks_dma_direction direction, bool for_device)
{
    adapter->stats.syncs++;
    const ks_dma_piece *piece = ks_dma_adapter_piece_at(adapter, bus_addr);
    const ks_dma_mapping *mapping = piece == NULL ? NULL : piece->mapping;
    uint64_t covered = mapping == NULL ? 0 : walk_range(adapter, mapping, bus_addr, bytes, direction, for_device, false);
    ks_dma_check_sync(adapter->checker, call, op, bus_addr, bytes, direction, mapping, covered);
    if (mapping != NULL && mapping->kind != KS_DMA_KIND_COHERENT)
        walk_range(adapter, mapping, bus_addr, covered, effective_direction(mapping, direction), for_device, true);
}

void ks_dma_sync_single_for_cpu(ks_dma_adapter *adapter, ks_dma_addr bus_addr, size_t bytes,
                                ks_dma_direction direction)
{
    ks_dma_adapter_lock(adapter);
    ks_dma_sync_range_locked(adapter, "ks_dma_sync_single_for_cpu", adapter->op++, bus_addr, bytes, direction, false);
    ks_dma_adapter_unlock(adapter);
}

void ks_dma_sync_single_for_device(ks_dma_adapter *adapter, ks_dma_addr bus_addr, size_t bytes,
                                   ks_dma_direction direction)
{
    ks_dma_adapter_lock(adapter);
    ks_dma_sync_range_locked(adapter, "ks_dma_sync_single_for_device", adapter->op++, bus_addr, bytes, direction,
                             true);
    ks_dma_adapter_unlock(adapter);
}

static void sync_sg(ks_dma_adapter *adapter, const char *call, ks_dma_sg *sg, uint32_t nents,
                    ks_dma_direction direction, bool for_device)
{
    ks_dma_addr bus_addr = sg != NULL && nents > 0 ? sg[0].bus_addr : KS_DMA_ADDR_ERROR;
    ks_dma_adapter_lock(adapter);
    uint64_t op = adapter->op++;
    adapter->stats.syncs++;
    ks_dma_mapping *mapping = ks_dma_mapping_find_exact(adapter, bus_addr, KS_DMA_KIND_SG, sg_total_bytes(sg, nents),
                                                        direction);
    if (mapping == NULL || mapping->kind != KS_DMA_KIND_SG) {
        ks_dma_check_sync(adapter->checker, call, op, bus_addr, sg_total_bytes(sg, nents), direction, NULL, 0);
    } else {
        if (nents != mapping->sg_nents && ks_dma_checker_enabled(adapter->checker))
            ks_dma_checker_report(adapter->checker, KS_DMA_RULE_SG_COUNT_MISMATCH, call, op, bus_addr, 0,
                                  mapping->bytes, mapping, "syncs an sg list of %u entries that was mapped with %u",
                                  nents, mapping->sg_nents);
        ks_dma_check_sync(adapter->checker, call, op, bus_addr, mapping->bytes, direction, mapping, mapping->bytes);
        ks_dma_direction effective = effective_direction(mapping, direction);
        for (uint32_t i = 0; i < mapping->piece_count; i++)
            ks_dma_piece_sync(adapter, &mapping->pieces[i], 0, mapping->pieces[i].bytes, effective, for_device);
    }
    ks_dma_adapter_unlock(adapter);
}

void ks_dma_sync_sg_for_cpu(ks_dma_adapter *adapter, ks_dma_sg *sg, uint32_t nents, ks_dma_direction direction)
{
    sync_sg(adapter, "ks_dma_sync_sg_for_cpu", sg, nents, direction, false);
}

void ks_dma_sync_sg_for_device(ks_dma_adapter *adapter, ks_dma_sg *sg, uint32_t nents, ks_dma_direction direction)
{
    sync_sg(adapter, "ks_dma_sync_sg_for_device", sg, nents, direction, true);
}
