/*
 * bounce.c -- swiotlb: a pool of memory the device can reach, used to bounce mappings of memory
 * it cannot (beyond its mask, or not physically contiguous) when there is no IOMMU.
 *
 * As in Linux, the pool is cut into 2 KiB slots and one mapping takes a run of at most 128
 * consecutive slots (256 KiB); the adapter copies the caller's buffer into the slots on map and
 * sync for device, and back on sync for CPU and unmap. The pool is one physically contiguous
 * allocation below the device's limit (emulated memory: its host pages are committed only as
 * slots are used), and the slots are a bitmap (bitalloc.c) searched next-fit. Map O(pool / 64)
 * worst case, unmap O(1). Not thread-safe: the adapter serialises.
 */
#include <stdlib.h>

#include "dma_internal.h"

_Static_assert(KS_BOUNCE_SLOT_BYTES * KS_BOUNCE_MAX_SLOTS == 256u * 1024u, "swiotlb: 128 slots of 2 KiB");

struct ks_bounce {
    ks_physmem *physmem;
    void *host;
    uint64_t phys;
    uint64_t slots_total;
    ks_bitalloc slots;
    uint64_t next_fit;
};

NTSTATUS ks_bounce_create(ks_physmem *physmem, size_t pool_bytes, uint64_t phys_limit, ks_bounce **out,
                          ks_error *err)
{
    *out = NULL;
    pool_bytes = (size_t)ks_dma_align_up(pool_bytes, KS_BOUNCE_SLOT_BYTES * KS_BOUNCE_MAX_SLOTS);
    ks_bounce *bounce = calloc(1, sizeof *bounce);
    if (bounce == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "swiotlb: no memory");
    bounce->physmem = physmem;
    NTSTATUS status = ks_physmem_alloc(physmem, pool_bytes, KS_DMA_PAGE_BYTES, phys_limit, KS_PHYS_CONTIGUOUS,
                                       &bounce->host, err);
    if (NT_SUCCESS(status))
        status = ks_bitalloc_init(&bounce->slots, pool_bytes / KS_BOUNCE_SLOT_BYTES, err);
    if (!NT_SUCCESS(status)) {
        if (bounce->host != NULL)
            ks_physmem_free(physmem, bounce->host);
        free(bounce);
        return status;
    }
    ks_physmem_run(physmem, (uintptr_t)bounce->host, 1, &bounce->phys);
    bounce->slots_total = pool_bytes / KS_BOUNCE_SLOT_BYTES;
    *out = bounce;
    return STATUS_SUCCESS;
}

void ks_bounce_destroy(ks_bounce *bounce)
{
    if (bounce == NULL)
        return;
    ks_physmem_free(bounce->physmem, bounce->host);
    ks_bitalloc_destroy(&bounce->slots);
    free(bounce);
}

NTSTATUS ks_bounce_map(ks_bounce *bounce, uint64_t bytes, uint64_t align_bytes, uintptr_t *host, uint64_t *phys,
                       ks_error *err)
{
    uint64_t slots = (bytes + KS_BOUNCE_SLOT_BYTES - 1u) / KS_BOUNCE_SLOT_BYTES;
    uint64_t align_slots = align_bytes <= KS_BOUNCE_SLOT_BYTES ? 1u : align_bytes / KS_BOUNCE_SLOT_BYTES;
    if (bytes == 0 || slots > KS_BOUNCE_MAX_SLOTS)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "swiotlb: %llu bytes need %llu slots, at most %u may be bounced at once",
                            (unsigned long long)bytes, (unsigned long long)slots, KS_BOUNCE_MAX_SLOTS);
    uint64_t start = ks_bitalloc_alloc(&bounce->slots, slots, align_slots, 0, bounce->slots_total, bounce->next_fit);
    if (start == KS_BITALLOC_NONE)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "swiotlb: pool of %llu slots has no run of %llu free",
                            (unsigned long long)bounce->slots_total, (unsigned long long)slots);
    bounce->next_fit = start + slots;
    *host = (uintptr_t)bounce->host + (uintptr_t)(start * KS_BOUNCE_SLOT_BYTES);
    *phys = bounce->phys + start * KS_BOUNCE_SLOT_BYTES;
    return STATUS_SUCCESS;
}

void ks_bounce_unmap(ks_bounce *bounce, uint64_t phys, uint64_t bytes)
{
    if (phys < bounce->phys)
        return;
    ks_bitalloc_free(&bounce->slots, (phys - bounce->phys) / KS_BOUNCE_SLOT_BYTES,
                     (bytes + KS_BOUNCE_SLOT_BYTES - 1u) / KS_BOUNCE_SLOT_BYTES);
}
