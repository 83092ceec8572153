/*
 * adapter.c -- the DMA adapter: what DMA_OPERATIONS is to a Windows driver and struct device's
 * dma_ops to a Linux one. This file holds the object, common buffers, the books every mapping is
 * kept in, and the resolution of the device's accesses; streaming.c holds map/unmap/sync.
 *
 * Books: every live mapping (single, sg or coherent) is a ks_dma_mapping of pieces, each piece a
 * bus- and CPU-contiguous run, indexed twice in range maps: by device address (what unmap, sync
 * and the device name) and by CPU address (to see the same memory mapped twice). The checker
 * (debug.c) reads them; the adapter acts on them. A misused call is reported and then handled as
 * safely as possible: an unmap that names nothing unmaps nothing, a free with the wrong CPU
 * address frees the buffer the adapter knows.
 *
 * Device accesses (ks_dma_adapter_resolve) go the way a bus master's would: the address goes
 * through the IOMMU page table (or is the physical address), must fall inside a live mapping
 * that permits the access, and lands on the physical page's device view -- the RAM shadow on a
 * non-coherent device (cache.c), the host page otherwise. Anything else is a fault, counted and
 * reported, and nothing is touched. The engine holds the adapter lock for the access, so memory
 * cannot be unmapped under the device.
 *
 * Costs: map bookkeeping O(log n + n) per mapping (range maps), resolution O(log n) per access
 * plus O(1) per page. One mutex serialises everything: adapters are per device and the data
 * copies, not the bookkeeping, dominate a transfer.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"

#define COHERENT_ALIGN_MAX_BYTES ((uint64_t)4 << 20) /* buddy MAX_ORDER: natural alignment stops here */
#define BUS_SEARCH_SPAN ((uint64_t)1) /* a point query is the range [addr, addr + 1) */

void ks_dma_adapter_lock(ks_dma_adapter *adapter)
{
    pthread_mutex_lock(&adapter->lock);
}

void ks_dma_adapter_unlock(ks_dma_adapter *adapter)
{
    pthread_mutex_unlock(&adapter->lock);
}

/* ---- life cycle ---------------------------------------------------------------------------------- */

static NTSTATUS normalize_description(ks_dma_device_description *device, ks_error *err)
{
    if (device->address_bits == 0)
        device->address_bits = 64;
    if (device->coherent_address_bits == 0)
        device->coherent_address_bits = device->address_bits;
    if (device->align_bytes == 0)
        device->align_bytes = 1;
    if (device->address_bits < 20 || device->address_bits > 64 || device->coherent_address_bits < 20 ||
        device->coherent_address_bits > 64)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma: address widths %u/%u out of 20..64",
                            device->address_bits, device->coherent_address_bits);
    if (!ks_dma_is_pow2(device->align_bytes) || device->align_bytes > (1u << 20))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma: alignment %u is not a power of two up to 1 MiB",
                            device->align_bytes);
    if (device->boundary_bytes != 0 &&
        (!ks_dma_is_pow2(device->boundary_bytes) || device->boundary_bytes < device->align_bytes ||
         device->boundary_bytes < 512u))
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "dma: boundary 0x%" PRIx64 " must be a power of two >= 512 and >= the alignment",
                            device->boundary_bytes);
    if (device->max_segment_bytes != 0 && device->max_segment_bytes < device->align_bytes)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma: max segment %" PRIu64 " below the alignment %u",
                            device->max_segment_bytes, device->align_bytes);
    return STATUS_SUCCESS;
}

static NTSTATUS adapter_build(ks_dma_adapter *adapter, const ks_dma_options *options, ks_error *err)
{
    ks_physmem_options physmem_options = {
        .high_percent = options->high_memory_percent,
        .high_boundary_bytes = options->high_boundary_bytes,
        .top_bytes = options->phys_top_bytes,
        .seed = options->seed,
    };
    NTSTATUS status = ks_physmem_create(&physmem_options, &adapter->physmem, err);
    if (NT_SUCCESS(status))
        status = ks_dma_checker_create(options, &adapter->checker, err);
    /* Coherent allocations take IOVAs too, so the window must suit the narrower mask. */
    uint64_t iommu_mask = adapter->mask < adapter->coherent_mask ? adapter->mask : adapter->coherent_mask;
    if (NT_SUCCESS(status) && options->iommu)
        status = ks_iommu_create(iommu_mask, &adapter->iommu, err);
    return status;
}

NTSTATUS ks_dma_adapter_create(const ks_dma_options *options, ks_dma_adapter **out, ks_error *err)
{
    *out = NULL;
    ks_dma_device_description device = options->device;
    NTSTATUS status = normalize_description(&device, err);
    if (!NT_SUCCESS(status))
        return status;
    ks_dma_adapter *adapter = calloc(1, sizeof *adapter);
    if (adapter == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma: no memory for an adapter");
    adapter->options = *options;
    adapter->device = device;
    adapter->mask = ks_dma_mask_of_bits(device.address_bits);
    adapter->coherent_mask = ks_dma_mask_of_bits(device.coherent_address_bits);
    ks_rangemap_init(&adapter->by_bus);
    ks_rangemap_init(&adapter->by_cpu);
    ks_dma_registry_init(&adapter->registry);
    pthread_mutex_init(&adapter->lock, NULL);
    status = adapter_build(adapter, options, err);
    if (!NT_SUCCESS(status)) {
        adapter->leaks_checked = true;
        ks_dma_adapter_destroy(adapter);
        return status;
    }
    *out = adapter;
    return STATUS_SUCCESS;
}

void ks_dma_adapter_check_leaks(ks_dma_adapter *adapter)
{
    ks_dma_adapter_lock(adapter);
    if (!adapter->leaks_checked) {
        adapter->leaks_checked = true;
        uint64_t op = adapter->op++;
        for (size_t i = 0; i < adapter->by_bus.count; i++) {
            const ks_dma_piece *piece = adapter->by_bus.items[i].value;
            const ks_dma_mapping *mapping = piece->mapping;
            if (piece != &mapping->pieces[0])
                continue;
            ks_dma_checker_report(adapter->checker, KS_DMA_RULE_LEAK, "teardown", op, mapping->bus, mapping->cpu,
                                  mapping->bytes, mapping, "%s still live when the driver detaches",
                                  mapping->kind == KS_DMA_KIND_COHERENT ? "common buffer" : "mapping");
        }
    }
    ks_dma_adapter_unlock(adapter);
}

void ks_dma_adapter_destroy(ks_dma_adapter *adapter)
{
    if (adapter == NULL)
        return;
    if (adapter->checker != NULL)
        ks_dma_adapter_check_leaks(adapter);
    /* Leaked mappings go without data movement: the caller may have freed their memory. */
    while (adapter->by_bus.count > 0) {
        ks_dma_piece *piece = adapter->by_bus.items[0].value;
        ks_dma_mapping_release(adapter, piece->mapping, adapter->op, false);
    }
    ks_dma_registry_destroy(&adapter->registry);
    ks_rangemap_destroy(&adapter->by_bus);
    ks_rangemap_destroy(&adapter->by_cpu);
    ks_bounce_destroy(adapter->bounce);
    ks_iommu_destroy(adapter->iommu);
    ks_physmem_destroy(adapter->physmem);
    ks_dma_checker_destroy(adapter->checker);
    pthread_mutex_destroy(&adapter->lock);
    free(adapter);
}

const ks_dma_device_description *ks_dma_adapter_description(const ks_dma_adapter *adapter)
{
    return &adapter->device;
}

uint64_t ks_dma_adapter_mask(const ks_dma_adapter *adapter)
{
    return adapter->mask;
}

uint64_t ks_dma_adapter_coherent_mask(const ks_dma_adapter *adapter)
{
    return adapter->coherent_mask;
}

bool ks_dma_adapter_has_iommu(const ks_dma_adapter *adapter)
{
    return adapter->iommu != NULL;
}

/* ---- the books ---------------------------------------------------------------------------------- */

ks_dma_mapping *ks_dma_mapping_alloc(uint32_t piece_count)
{
    ks_dma_mapping *mapping = calloc(1, sizeof *mapping + (size_t)piece_count * sizeof(ks_dma_piece));
    if (mapping == NULL)
        return NULL;
    mapping->piece_count = piece_count;
    for (uint32_t i = 0; i < piece_count; i++)
        mapping->pieces[i].mapping = mapping;
    return mapping;
}

static bool device_may_write(ks_dma_direction direction)
{
    return direction != KS_DMA_TO_DEVICE;
}

/* Linux tracks overlaps only where the device may write: two read-only mappings of one buffer
 * (the same frame sent to two queues) are legitimate. Reported once per map. */
static void check_overlap(ks_dma_adapter *adapter, const ks_dma_mapping *mapping, const char *call)
{
    for (uint32_t i = 0; i < mapping->piece_count; i++) {
        const ks_dma_piece *piece = &mapping->pieces[i];
        for (size_t k = ks_rangemap_first_overlap(&adapter->by_cpu, piece->cpu, piece->cpu + piece->bytes);
             k < adapter->by_cpu.count;
             k = ks_rangemap_next_overlap(&adapter->by_cpu, k + 1u, piece->cpu, piece->cpu + piece->bytes)) {
            const ks_dma_mapping *other = ((const ks_dma_piece *)adapter->by_cpu.items[k].value)->mapping;
            if (!device_may_write(mapping->direction) && !device_may_write(other->direction))
                continue;
            ks_dma_checker_report(adapter->checker, KS_DMA_RULE_OVERLAP, call, mapping->map_op, mapping->bus,
                                  piece->cpu, piece->bytes, other,
                                  "maps cpu 0x%" PRIxPTR " + %" PRIu64 " bytes %s, which overlaps a live mapping",
                                  piece->cpu, piece->bytes, ks_dma_direction_name(mapping->direction));
            return;
        }
    }
}

static void unindex(ks_dma_adapter *adapter, ks_dma_mapping *mapping, uint32_t pieces)
{
    for (uint32_t i = 0; i < pieces; i++) {
        ks_dma_piece *piece = &mapping->pieces[i];
        ks_rangemap_remove(&adapter->by_bus, piece->bus, piece);
        ks_rangemap_remove(&adapter->by_cpu, piece->cpu, piece);
    }
}

NTSTATUS ks_dma_mapping_insert(ks_dma_adapter *adapter, ks_dma_mapping *mapping, const char *call, ks_error *err)
{
    check_overlap(adapter, mapping, call);
    for (uint32_t i = 0; i < mapping->piece_count; i++) {
        ks_dma_piece *piece = &mapping->pieces[i];
        NTSTATUS status = ks_rangemap_insert(&adapter->by_bus, piece->bus, piece->bus + piece->bytes, piece);
        if (NT_SUCCESS(status)) {
            status = ks_rangemap_insert(&adapter->by_cpu, piece->cpu, piece->cpu + piece->bytes, piece);
            if (!NT_SUCCESS(status))
                ks_rangemap_remove(&adapter->by_bus, piece->bus, piece);
        }
        if (!NT_SUCCESS(status)) {
            unindex(adapter, mapping, i);
            return ks_error_set(err, status, "%s: no memory to record the mapping", call);
        }
    }
    adapter->stats.live_mappings++;
    if (mapping->kind == KS_DMA_KIND_COHERENT) {
        adapter->stats.live_coherent_buffers++;
        adapter->stats.live_coherent_bytes += mapping->bytes;
    }
    return STATUS_SUCCESS;
}

ks_dma_mapping *ks_dma_mapping_find_exact(ks_dma_adapter *adapter, ks_dma_addr bus_addr, ks_dma_kind kind,
                                          uint64_t bytes, ks_dma_direction direction)
{
    ks_dma_mapping *best = NULL;
    int best_score = -1;
    if (bus_addr == KS_DMA_ADDR_ERROR)
        return NULL;
    for (size_t k = ks_rangemap_first_overlap(&adapter->by_bus, bus_addr, bus_addr + BUS_SEARCH_SPAN);
         k < adapter->by_bus.count;
         k = ks_rangemap_next_overlap(&adapter->by_bus, k + 1u, bus_addr, bus_addr + BUS_SEARCH_SPAN)) {
        ks_dma_piece *piece = adapter->by_bus.items[k].value;
        ks_dma_mapping *mapping = piece->mapping;
        if (piece != &mapping->pieces[0] || mapping->bus != bus_addr)
            continue;
        int score = (mapping->kind == kind) * 4 + (mapping->bytes == bytes) * 2 + (mapping->direction == direction);
        if (score > best_score) {
            best = mapping;
            best_score = score;
        }
    }
    return best;
}

ks_dma_piece *ks_dma_adapter_piece_at(ks_dma_adapter *adapter, ks_dma_addr bus_addr)
{
    ks_dma_piece *found = NULL;
    if (bus_addr == KS_DMA_ADDR_ERROR)
        return NULL;
    for (size_t k = ks_rangemap_first_overlap(&adapter->by_bus, bus_addr, bus_addr + BUS_SEARCH_SPAN);
         k < adapter->by_bus.count;
         k = ks_rangemap_next_overlap(&adapter->by_bus, k + 1u, bus_addr, bus_addr + BUS_SEARCH_SPAN))
        found = adapter->by_bus.items[k].value;
    return found;
}

/* ---- cache maintenance and bounce copies --------------------------------------------------- */

/*
 * The architecture's sync semantics (arm64's arch_sync_dma_*): for the device, TO_DEVICE and
 * BIDIRECTIONAL clean (CPU view -> RAM) while FROM_DEVICE invalidates (the CPU's stale lines are
 * dropped, so it will read RAM); for the CPU, FROM_DEVICE and BIDIRECTIONAL invalidate and
 * TO_DEVICE does nothing. Bounce copies wrap them as swiotlb does: caller -> slot before the
 * device sync, slot -> caller after the CPU sync.
 */
void ks_dma_piece_sync(ks_dma_adapter *adapter, const ks_dma_piece *piece, uint64_t offset, uint64_t bytes,
                       ks_dma_direction direction, bool for_device)
{
    bool cached = piece->mapping->cached;
    uintptr_t device_memory = piece->device_host + (uintptr_t)offset;
    uintptr_t caller_memory = piece->cpu + (uintptr_t)offset;
    if (for_device) {
        if (piece->bounced && direction != KS_DMA_FROM_DEVICE) {
            memcpy((void *)device_memory, (const void *)caller_memory, bytes);
            adapter->stats.bounce_bytes_copied += bytes;
        }
        if (cached && direction == KS_DMA_FROM_DEVICE)
            adapter->stats.cache_invalidate_bytes += ks_cache_invalidate(adapter->physmem, device_memory, bytes);
        else if (cached)
            adapter->stats.cache_writeback_bytes += ks_cache_writeback(adapter->physmem, device_memory, bytes);
    } else {
        if (cached && direction != KS_DMA_TO_DEVICE)
            adapter->stats.cache_invalidate_bytes += ks_cache_invalidate(adapter->physmem, device_memory, bytes);
        if (piece->bounced && direction != KS_DMA_TO_DEVICE) {
            memcpy((void *)caller_memory, (const void *)device_memory, bytes);
            adapter->stats.bounce_bytes_copied += bytes;
        }
    }
}

static void release_streaming_piece(ks_dma_adapter *adapter, ks_dma_piece *piece, bool move_data)
{
    ks_dma_mapping *mapping = piece->mapping;
    if (move_data)
        ks_dma_piece_sync(adapter, piece, 0, piece->bytes, mapping->direction, false);
    if (mapping->cached)
        ks_cache_detach(adapter->physmem, piece->device_host, piece->bytes);
    if (piece->bounced)
        ks_bounce_unmap(adapter->bounce, piece->bus, piece->bytes);
    ks_physmem_unpin(adapter->physmem, piece->cpu, piece->bytes);
}

static void release_iova(ks_dma_adapter *adapter, ks_dma_mapping *mapping)
{
    if (adapter->iommu == NULL || mapping->iova_pages == 0)
        return;
    for (uint64_t i = 0; i < mapping->iova_pages; i++)
        ks_iommu_unmap(adapter->iommu, mapping->iova + (i << KS_DMA_PAGE_SHIFT));
    ks_iommu_free_iova(adapter->iommu, mapping->iova, mapping->iova_pages);
}

void ks_dma_mapping_release(ks_dma_adapter *adapter, ks_dma_mapping *mapping, uint64_t op, bool move_data)
{
    unindex(adapter, mapping, mapping->piece_count);
    adapter->stats.live_mappings--;
    if (mapping->kind == KS_DMA_KIND_COHERENT) {
        adapter->stats.live_coherent_buffers--;
        adapter->stats.live_coherent_bytes -= mapping->bytes;
        ks_physmem_free(adapter->physmem, (void *)mapping->cpu);
    } else {
        for (uint32_t i = 0; i < mapping->piece_count; i++)
            release_streaming_piece(adapter, &mapping->pieces[i], move_data);
    }
    release_iova(adapter, mapping);
    ks_dma_checker_remember(adapter->checker, mapping, op);
    free(mapping);
}

/* ---- common buffers -------------------------------------------------------------------------- */

/* Gives [host, host + pages) an IOVA range with natural alignment, readable and writable. */
static NTSTATUS iommu_map_coherent(ks_dma_adapter *adapter, ks_dma_mapping *mapping, uint64_t pages,
                                   uint64_t align_bytes, ks_error *err)
{
    uint64_t align_pages = align_bytes >> KS_DMA_PAGE_SHIFT;
    ks_dma_addr iova = ks_iommu_alloc_iova(adapter->iommu, pages, align_pages == 0 ? 1 : align_pages);
    if (iova == KS_DMA_ADDR_ERROR)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "ks_dma_alloc_coherent: IOVA space full (%" PRIu64 " pages)",
                            pages);
    mapping->iova = iova;
    mapping->iova_pages = pages; /* released whole on failure; unmapping an absent entry is a no-op */
    for (uint64_t i = 0; i < pages; i++) {
        uint64_t phys = 0;
        ks_physmem_run(adapter->physmem, mapping->cpu + (uintptr_t)(i << KS_DMA_PAGE_SHIFT), 1, &phys);
        NTSTATUS status = ks_iommu_map(adapter->iommu, iova + (i << KS_DMA_PAGE_SHIFT), phys,
                                       KS_IOMMU_READ | KS_IOMMU_WRITE, err);
        if (!NT_SUCCESS(status))
            return status;
    }
    mapping->bus = iova;
    return STATUS_SUCCESS;
}

static NTSTATUS coherent_build(ks_dma_adapter *adapter, size_t bytes, uint64_t op, ks_dma_mapping **out,
                               ks_error *err)
{
    uint64_t rounded = ks_dma_align_up(bytes, KS_DMA_PAGE_BYTES);
    uint64_t align = ks_dma_pow2_ceil(rounded);
    if (align > COHERENT_ALIGN_MAX_BYTES)
        align = COHERENT_ALIGN_MAX_BYTES;
    if (align < adapter->device.align_bytes)
        align = adapter->device.align_bytes;
    uint64_t limit = adapter->iommu != NULL || adapter->coherent_mask == UINT64_MAX ? 0 : adapter->coherent_mask + 1u;
    void *host = NULL;
    NTSTATUS status = ks_physmem_alloc(adapter->physmem, rounded, align, limit, KS_PHYS_CONTIGUOUS | KS_PHYS_UNCACHED,
                                       &host, err);
    if (!NT_SUCCESS(status))
        return status;
    ks_dma_mapping *mapping = ks_dma_mapping_alloc(1);
    if (mapping == NULL) {
        ks_physmem_free(adapter->physmem, host);
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "ks_dma_alloc_coherent: no memory");
    }
    *mapping = (ks_dma_mapping){.kind = KS_DMA_KIND_COHERENT, .direction = KS_DMA_BIDIRECTIONAL,
                                .cpu = (uintptr_t)host, .bytes = bytes, .map_op = op, .error_checked = true,
                                .piece_count = 1};
    ks_physmem_run(adapter->physmem, (uintptr_t)host, 1, &mapping->bus);
    if (adapter->iommu != NULL)
        status = iommu_map_coherent(adapter, mapping, rounded >> KS_DMA_PAGE_SHIFT, align, err);
    mapping->pieces[0] = (ks_dma_piece){.mapping = mapping, .bus = mapping->bus, .bytes = bytes,
                                        .cpu = (uintptr_t)host, .device_host = (uintptr_t)host};
    if (NT_SUCCESS(status))
        status = ks_dma_mapping_insert(adapter, mapping, "ks_dma_alloc_coherent", err);
    if (!NT_SUCCESS(status)) {
        release_iova(adapter, mapping);
        ks_physmem_free(adapter->physmem, host);
        free(mapping);
        return status;
    }
    *out = mapping;
    return STATUS_SUCCESS;
}

void *ks_dma_alloc_coherent(ks_dma_adapter *adapter, size_t bytes, ks_dma_addr *bus_addr, ks_error *err)
{
    *bus_addr = KS_DMA_ADDR_ERROR;
    ks_dma_adapter_lock(adapter);
    uint64_t op = adapter->op++;
    ks_dma_mapping *mapping = NULL;
    NTSTATUS status;
    if (bytes == 0) {
        ks_dma_checker_report(adapter->checker, KS_DMA_RULE_INVALID_MAP, "ks_dma_alloc_coherent", op, 0, 0, 0, NULL,
                              "allocates a common buffer of 0 bytes");
        status = ks_error_set(err, STATUS_INVALID_PARAMETER, "ks_dma_alloc_coherent: 0 bytes");
    } else {
        status = coherent_build(adapter, bytes, op, &mapping, err);
    }
    if (NT_SUCCESS(status)) {
        adapter->stats.coherent_allocs++;
        if (mapping->bus + bytes - 1u > adapter->coherent_mask)
            ks_dma_checker_report(adapter->checker, KS_DMA_RULE_SEGMENT_MASK, "ks_dma_alloc_coherent", op,
                                  mapping->bus, mapping->cpu, bytes, mapping,
                                  "common buffer ends beyond the coherent mask 0x%" PRIx64, adapter->coherent_mask);
        *bus_addr = mapping->bus;
    } else {
        adapter->stats.map_failures++;
    }
    ks_dma_adapter_unlock(adapter);
    return mapping == NULL ? NULL : (void *)mapping->cpu;
}

void ks_dma_free_coherent(ks_dma_adapter *adapter, size_t bytes, void *cpu, ks_dma_addr bus_addr)
{
    ks_dma_adapter_lock(adapter);
    uint64_t op = adapter->op++;
    ks_dma_mapping *found = ks_dma_mapping_find_exact(adapter, bus_addr, KS_DMA_KIND_COHERENT, bytes,
                                                      KS_DMA_BIDIRECTIONAL);
    ks_dma_check_release(adapter->checker, "ks_dma_free_coherent", op, KS_DMA_KIND_COHERENT, bus_addr,
                         (uintptr_t)cpu, bytes, KS_DMA_BIDIRECTIONAL, 0, found);
    if (found != NULL && found->kind == KS_DMA_KIND_COHERENT) {
        adapter->stats.coherent_frees++;
        ks_dma_mapping_release(adapter, found, op, false);
    }
    ks_dma_adapter_unlock(adapter);
}

/* ---- pages for streaming DMA ----------------------------------------------------------------- */

void *ks_dma_alloc_pages(ks_dma_adapter *adapter, size_t bytes, ks_error *err)
{
    void *host = NULL;
    ks_dma_adapter_lock(adapter);
    uint64_t limit = adapter->iommu != NULL || adapter->mask == UINT64_MAX ? 0 : adapter->mask + 1u;
    NTSTATUS status = bytes == 0 ? ks_error_set(err, STATUS_INVALID_PARAMETER, "ks_dma_alloc_pages: 0 bytes")
                                 : ks_physmem_alloc(adapter->physmem, bytes, KS_DMA_PAGE_BYTES, limit, 0, &host, err);
    ks_dma_adapter_unlock(adapter);
    return NT_SUCCESS(status) ? host : NULL;
}

void ks_dma_free_pages(ks_dma_adapter *adapter, void *cpu)
{
    if (cpu == NULL)
        return;
    ks_dma_adapter_lock(adapter);
    ks_physmem_free(adapter->physmem, cpu);
    ks_dma_adapter_unlock(adapter);
}

/* ---- the device's accesses -------------------------------------------------------------------- */

static ks_dma_access access_fault(ks_dma_adapter *adapter, ks_dma_result fault, const char *who, ks_dma_addr bus,
                                  uint64_t want, bool write, const ks_dma_mapping *near, const char *why)
{
    if (fault == KS_DMA_RESULT_IOMMU_FAULT)
        adapter->stats.iommu_faults++;
    else
        adapter->stats.access_faults++;
    ks_dma_checker_report(adapter->checker, KS_DMA_RULE_DEVICE_ACCESS, who, adapter->op, bus, 0, want, near,
                          "device %s of %" PRIu64 " bytes at bus 0x%" PRIx64 " refused: %s", write ? "write" : "read",
                          want, bus, why);
    return (ks_dma_access){.host = NULL, .bytes = 0, .fault = fault};
}

static bool piece_permits(const ks_dma_piece *piece, bool write)
{
    ks_dma_direction direction = piece->mapping->direction;
    return write ? direction != KS_DMA_TO_DEVICE : direction != KS_DMA_FROM_DEVICE;
}

/* Physical address of bus_addr as the device's bus sees it, without recording faults. */
static bool bus_to_phys(ks_dma_adapter *adapter, ks_dma_addr bus_addr, bool write, uint64_t *phys)
{
    if (adapter->iommu == NULL) {
        *phys = bus_addr;
        return true;
    }
    return ks_iommu_lookup(adapter->iommu, bus_addr, write, phys);
}

ks_dma_access ks_dma_adapter_resolve(ks_dma_adapter *adapter, ks_dma_addr bus_addr, uint64_t want, bool write,
                                     const char *who)
{
    uint64_t phys = 0;
    if (adapter->iommu != NULL && !ks_iommu_translate(adapter->iommu, bus_addr, write, &phys))
        return access_fault(adapter, KS_DMA_RESULT_IOMMU_FAULT, who, bus_addr, want, write, NULL,
                            "IOMMU fault (no entry or no permission)");
    const ks_dma_piece *piece = ks_dma_adapter_piece_at(adapter, bus_addr);
    if (piece == NULL)
        return access_fault(adapter, KS_DMA_RESULT_ACCESS_ERROR, who, bus_addr, want, write, NULL,
                            "outside every live mapping");
    if (!piece_permits(piece, write))
        return access_fault(adapter, KS_DMA_RESULT_ACCESS_ERROR, who, bus_addr, want, write, piece->mapping,
                            write ? "the mapping is to-device (read-only for the device)"
                                  : "the mapping is from-device (write-only for the device)");
    if (adapter->iommu == NULL)
        phys = bus_addr;
    const ks_phys_page *page = ks_physmem_page_of_phys(adapter->physmem, phys);
    if (page == NULL)
        return access_fault(adapter, KS_DMA_RESULT_ACCESS_ERROR, who, bus_addr, want, write, piece->mapping,
                            "decode error: no memory at that physical address");
    uint64_t available = piece->bus + piece->bytes - bus_addr;
    if (available > want)
        available = want;
    bool coherent = adapter->device.coherent;
    unsigned char *host = ks_cache_device_view(page, phys & KS_DMA_PAGE_MASK, coherent);
    /* Without an IOMMU a piece is physically and host-contiguous by construction (the map checked
     * it or bounced), and a coherent device has no RAM shadows: the whole piece is one run. The
     * page lookup above must agree; if it ever did not, the page-by-page walk below decides. */
    if (adapter->iommu == NULL && coherent && host == (unsigned char *)piece->device_host + (bus_addr - piece->bus))
        return (ks_dma_access){.host = host, .bytes = available, .fault = KS_DMA_RESULT_OK};
    uint64_t run = KS_DMA_PAGE_BYTES - (phys & KS_DMA_PAGE_MASK);
    /* Extend over following pages while the device view stays contiguous in host memory. */
    while (run < available) {
        uint64_t next_phys;
        if (!bus_to_phys(adapter, bus_addr + run, write, &next_phys))
            break;
        const ks_phys_page *next = ks_physmem_page_of_phys(adapter->physmem, next_phys);
        if (next == NULL || ks_cache_device_view(next, 0, coherent) != host + run)
            break;
        run += KS_DMA_PAGE_BYTES;
    }
    return (ks_dma_access){.host = host, .bytes = run < available ? run : available, .fault = KS_DMA_RESULT_OK};
}

/* ---- reports, stats, queries -------------------------------------------------------------- */

uint64_t ks_dma_report_count(ks_dma_adapter *adapter)
{
    ks_dma_adapter_lock(adapter);
    uint64_t count = ks_dma_checker_count(adapter->checker);
    ks_dma_adapter_unlock(adapter);
    return count;
}

uint64_t ks_dma_report_count_rule(ks_dma_adapter *adapter, ks_dma_rule rule)
{
    ks_dma_adapter_lock(adapter);
    uint64_t count = ks_dma_checker_count_rule(adapter->checker, rule);
    ks_dma_adapter_unlock(adapter);
    return count;
}

bool ks_dma_report_at(ks_dma_adapter *adapter, size_t index, ks_dma_report *report)
{
    ks_dma_adapter_lock(adapter);
    bool found = ks_dma_checker_report_at(adapter->checker, index, report);
    ks_dma_adapter_unlock(adapter);
    return found;
}

void ks_dma_reports_clear(ks_dma_adapter *adapter)
{
    ks_dma_adapter_lock(adapter);
    ks_dma_checker_clear(adapter->checker);
    ks_dma_adapter_unlock(adapter);
}

void ks_dma_adapter_get_stats(ks_dma_adapter *adapter, ks_dma_adapter_stats *stats)
{
    ks_dma_adapter_lock(adapter);
    *stats = adapter->stats;
    stats->ops = adapter->op;
    stats->phys_pages_live = ks_physmem_pages_live(adapter->physmem);
    stats->phys_pages_high = ks_physmem_pages_high(adapter->physmem);
    stats->reports = ks_dma_checker_count(adapter->checker);
    ks_dma_adapter_unlock(adapter);
}

bool ks_dma_adapter_phys_of(ks_dma_adapter *adapter, const void *cpu, uint64_t *phys)
{
    ks_dma_adapter_lock(adapter);
    bool known = ks_physmem_run(adapter->physmem, (uintptr_t)cpu, 1, phys) != 0;
    ks_dma_adapter_unlock(adapter);
    return known;
}
