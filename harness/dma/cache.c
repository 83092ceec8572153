/*
 * cache.c -- the non-coherent model: what a device that does not snoop the CPU's caches sees.
 *
 * Host memory is the CPU's view (its cache). While a non-coherent device has a streaming mapping
 * over a cacheable page, the page also has a RAM shadow: a page-sized copy holding what memory
 * holds, which is what the device reads and writes. The two meet only through cache maintenance:
 * writeback (clean: CPU view -> RAM, what a sync for device does) and invalidate (RAM -> CPU view,
 * what a sync for CPU does). So a CPU write without a following sync for device is not seen by
 * the device, and a device write without a following sync for CPU is not seen by the CPU -- on
 * every run, not just when a cache line happens to be evicted, which makes a missing sync show.
 *
 * The shadow is per physical page, shared by every mapping of the page and counted, made from the
 * CPU view when the first mapping arrives (memory and cache agree before the device is involved)
 * and dropped with the last. Uncached pages (common buffers) never get one: CPU and device see
 * the same bytes. Cost: one page copy per page attached; syncs copy the bytes asked for.
 * Not thread-safe: the adapter serialises.
 */
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"

static void detach_pages(ks_physmem *physmem, uintptr_t first, uint64_t pages)
{
    for (uint64_t i = 0; i < pages; i++) {
        ks_phys_page *page = ks_physmem_page_of_host(physmem, first + (uintptr_t)(i << KS_DMA_PAGE_SHIFT));
        if (page == NULL || page->uncached || page->ram_refs == 0)
            continue;
        if (--page->ram_refs == 0) {
            ks_physmem_shadow_free(physmem, page->ram);
            page->ram = NULL;
        }
    }
}

NTSTATUS ks_cache_attach(ks_physmem *physmem, uintptr_t host, uint64_t bytes, ks_error *err)
{
    if (bytes == 0)
        return STATUS_SUCCESS;
    uintptr_t first = (uintptr_t)ks_dma_align_down(host, KS_DMA_PAGE_BYTES);
    uint64_t pages = ks_dma_pages_spanned(host, bytes);
    for (uint64_t i = 0; i < pages; i++) {
        ks_phys_page *page = ks_physmem_page_of_host(physmem, first + (uintptr_t)(i << KS_DMA_PAGE_SHIFT));
        if (page == NULL || page->uncached)
            continue;
        if (page->ram == NULL) {
            page->ram = ks_physmem_shadow_alloc(physmem);
            if (page->ram == NULL) {
                detach_pages(physmem, first, i);
                return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES,
                                    "cache: no memory for the RAM shadow of page 0x%llx",
                                    (unsigned long long)page->phys);
            }
            /* Bytes of the page outside every mapping are never read by the device (accesses are
             * confined to mappings), so they stay zero rather than being read from host memory
             * that may belong to someone else. */
            memset(page->ram, 0, KS_DMA_PAGE_BYTES);
        }
        /* Mapping writes the CPU's view of the mapped bytes back to RAM, as a map for the device
         * does; only this mapping's part of the page is read. */
        uintptr_t page_start = (uintptr_t)page->host;
        uintptr_t copy_from = host > page_start ? host : page_start;
        uintptr_t copy_to = host + bytes < page_start + KS_DMA_PAGE_BYTES ? host + bytes : page_start + KS_DMA_PAGE_BYTES;
        memcpy((unsigned char *)page->ram + (copy_from - page_start), (const void *)copy_from, copy_to - copy_from);
        page->ram_refs++;
    }
    return STATUS_SUCCESS;
}

void ks_cache_detach(ks_physmem *physmem, uintptr_t host, uint64_t bytes)
{
    if (bytes == 0)
        return;
    detach_pages(physmem, (uintptr_t)ks_dma_align_down(host, KS_DMA_PAGE_BYTES), ks_dma_pages_spanned(host, bytes));
}

/* Copies between the CPU view and RAM over [host, host + bytes), page by page. */
static uint64_t move_bytes(ks_physmem *physmem, uintptr_t host, uint64_t bytes, bool to_ram)
{
    uint64_t moved = 0;
    while (bytes > 0) {
        uint64_t offset = host & KS_DMA_PAGE_MASK;
        uint64_t chunk = KS_DMA_PAGE_BYTES - offset < bytes ? KS_DMA_PAGE_BYTES - offset : bytes;
        const ks_phys_page *page = ks_physmem_page_of_host(physmem, host);
        if (page != NULL && page->ram != NULL) {
            if (to_ram)
                memcpy(page->ram + offset, (const void *)host, chunk);
            else
                memcpy((void *)host, page->ram + offset, chunk);
            moved += chunk;
        }
        host += (uintptr_t)chunk;
        bytes -= chunk;
    }
    return moved;
}

uint64_t ks_cache_writeback(ks_physmem *physmem, uintptr_t host, uint64_t bytes)
{
    return move_bytes(physmem, host, bytes, true);
}

uint64_t ks_cache_invalidate(ks_physmem *physmem, uintptr_t host, uint64_t bytes)
{
    return move_bytes(physmem, host, bytes, false);
}
