/*
 * iommu.c -- an emulated IOMMU: an IOVA allocator and a page table the device's accesses walk.
 *
 * The table has the shape of an x86-64 or Arm SMMU stage-1 table: four levels of 512 entries
 * over a 48-bit IOVA, 4 KiB pages. A leaf entry holds the physical page and the permissions
 * (KS_IOMMU_READ: the device may read, KS_IOMMU_WRITE: it may write); an entry without either is
 * absent. ks_iommu_translate walks it for each page a device access touches; a missing entry or
 * a missing permission is a fault, recorded in the fault log, and the access never reaches host
 * memory. Tables are made on first use and kept until destroy (a device's IOVA footprint is
 * small and reused), so map and unmap are O(levels).
 *
 * IOVAs come from a window at the top of the device's reach -- below the mask, at most 4 GiB
 * of it, like Linux's allocator that hands out IOVAs top-down -- so a 64-bit device really gets
 * addresses above 4 GiB. The window is a bitmap (bitalloc.c) indexed from a base that is aligned
 * to the window size, so an alignment request is an alignment of the IOVA itself. IOVA 0 is
 * never handed out. Not thread-safe: the adapter serialises.
 */
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"

#define IOVA_BITS 48u
#define LEVEL_BITS 9u
#define LEVELS 4u
#define TABLE_ENTRIES ((size_t)1 << LEVEL_BITS)
#define WINDOW_PAGES_MAX ((uint64_t)1 << 20) /* 4 GiB of IOVA */
#define FAULTS_KEPT 64u
#define PTE_PERMS ((uint64_t)(KS_IOMMU_READ | KS_IOMMU_WRITE))
#define PTE_ADDRESS_MASK (((uint64_t)1 << 52) - 1u - KS_DMA_PAGE_MASK)

_Static_assert(KS_DMA_PAGE_SHIFT + LEVELS * LEVEL_BITS == IOVA_BITS, "four 9-bit levels over 4 KiB pages");

typedef struct iommu_table {
    uint64_t entries[TABLE_ENTRIES]; /* leaf level: PTEs; above: pointers to the next level */
} iommu_table;

struct ks_iommu {
    uint64_t base_page; /* bitmap bit i is IOVA page base_page + i */
    /* Paging-structure cache: the leaf table of the last 2 MiB of IOVA walked. Tables live until
     * destroy and a leaf never moves, so the entry never goes stale and needs no invalidation. */
    uint64_t cached_leaf_key;
    const iommu_table *cached_leaf;
    ks_bitalloc iova;
    uint64_t next_fit;
    iommu_table *root;
    uint64_t mapped_pages;
    uint64_t fault_count;
    ks_iommu_fault faults[FAULTS_KEPT];
};

static unsigned level_index(ks_dma_addr iova, unsigned level)
{
    return (unsigned)(iova >> (KS_DMA_PAGE_SHIFT + LEVEL_BITS * (LEVELS - 1u - level))) & (TABLE_ENTRIES - 1u);
}

NTSTATUS ks_iommu_create(uint64_t dma_mask, ks_iommu **out, ks_error *err)
{
    *out = NULL;
    uint64_t top_page = dma_mask >= ((uint64_t)1 << IOVA_BITS) - 1u ? (uint64_t)1 << (IOVA_BITS - KS_DMA_PAGE_SHIFT)
                                                                    : (dma_mask + 1u) >> KS_DMA_PAGE_SHIFT;
    if (top_page < 2u || !ks_dma_is_pow2(top_page))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "iommu: DMA mask 0x%llx is not 2^n - 1 of at least 8 KiB",
                            (unsigned long long)dma_mask);
    ks_iommu *iommu = calloc(1, sizeof *iommu);
    iommu_table *root = calloc(1, sizeof *root);
    if (iommu == NULL || root == NULL) {
        free(iommu);
        free(root);
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "iommu: no memory");
    }
    iommu->root = root;
    iommu->base_page = top_page > WINDOW_PAGES_MAX ? top_page - WINDOW_PAGES_MAX : 0;
    NTSTATUS status = ks_bitalloc_init(&iommu->iova, top_page - iommu->base_page, err);
    if (!NT_SUCCESS(status)) {
        free(root);
        free(iommu);
        return status;
    }
    if (iommu->base_page == 0)
        ks_bitalloc_alloc(&iommu->iova, 1, 1, 0, 1, 0); /* IOVA 0 is never valid */
    *out = iommu;
    return STATUS_SUCCESS;
}

static void free_table(iommu_table *table, unsigned level)
{
    if (level + 1u < LEVELS)
        for (size_t i = 0; i < TABLE_ENTRIES; i++)
            if (table->entries[i] != 0)
                free_table((iommu_table *)(uintptr_t)table->entries[i], level + 1u);
    free(table);
}

void ks_iommu_destroy(ks_iommu *iommu)
{
    if (iommu == NULL)
        return;
    free_table(iommu->root, 0);
    ks_bitalloc_destroy(&iommu->iova);
    free(iommu);
}

ks_dma_addr ks_iommu_alloc_iova(ks_iommu *iommu, uint64_t pages, uint64_t align_pages)
{
    uint64_t start = ks_bitalloc_alloc(&iommu->iova, pages, align_pages, 0, iommu->iova.bits, iommu->next_fit);
    if (start == KS_BITALLOC_NONE)
        return KS_DMA_ADDR_ERROR;
    iommu->next_fit = start + pages;
    return (iommu->base_page + start) << KS_DMA_PAGE_SHIFT;
}

void ks_iommu_free_iova(ks_iommu *iommu, ks_dma_addr iova, uint64_t pages)
{
    uint64_t page = iova >> KS_DMA_PAGE_SHIFT;
    if (page < iommu->base_page)
        return;
    ks_bitalloc_free(&iommu->iova, page - iommu->base_page, pages);
}

/* The leaf entry of iova, making the tables on the way when create is set. */
static uint64_t *leaf_entry(ks_iommu *iommu, ks_dma_addr iova, bool create)
{
    if (iova >> IOVA_BITS != 0)
        return NULL;
    iommu_table *table = iommu->root;
    for (unsigned level = 0; level + 1u < LEVELS; level++) {
        uint64_t *slot = &table->entries[level_index(iova, level)];
        if (*slot == 0) {
            if (!create)
                return NULL;
            iommu_table *next = calloc(1, sizeof *next);
            if (next == NULL)
                return NULL;
            *slot = (uint64_t)(uintptr_t)next;
        }
        table = (iommu_table *)(uintptr_t)*slot;
    }
    return &table->entries[level_index(iova, LEVELS - 1u)];
}

/* The hardware walk: the leaf entry of iova, 0 when a level is missing. */
static uint64_t walk(ks_iommu *iommu, ks_dma_addr iova)
{
    if (iova >> IOVA_BITS != 0)
        return 0;
    uint64_t leaf_key = iova >> (KS_DMA_PAGE_SHIFT + LEVEL_BITS);
    if (iommu->cached_leaf != NULL && iommu->cached_leaf_key == leaf_key)
        return iommu->cached_leaf->entries[level_index(iova, LEVELS - 1u)];
    const iommu_table *table = iommu->root;
    for (unsigned level = 0; level + 1u < LEVELS; level++) {
        uint64_t next = table->entries[level_index(iova, level)];
        if (next == 0)
            return 0;
        table = (const iommu_table *)(uintptr_t)next;
    }
    iommu->cached_leaf = table;
    iommu->cached_leaf_key = leaf_key;
    return table->entries[level_index(iova, LEVELS - 1u)];
}

NTSTATUS ks_iommu_map(ks_iommu *iommu, ks_dma_addr iova, uint64_t phys, unsigned perms, ks_error *err)
{
    uint64_t *pte = leaf_entry(iommu, iova, true);
    if (pte == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "iommu: no page table for IOVA 0x%llx",
                            (unsigned long long)iova);
    if ((*pte & PTE_PERMS) != 0)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "iommu: IOVA 0x%llx is already mapped",
                            (unsigned long long)iova);
    *pte = (phys & PTE_ADDRESS_MASK) | (perms & PTE_PERMS);
    iommu->mapped_pages++;
    return STATUS_SUCCESS;
}

void ks_iommu_unmap(ks_iommu *iommu, ks_dma_addr iova)
{
    uint64_t *pte = leaf_entry(iommu, iova, false);
    if (pte == NULL || (*pte & PTE_PERMS) == 0)
        return;
    *pte = 0;
    iommu->mapped_pages--;
}

void ks_iommu_record_fault(ks_iommu *iommu, ks_dma_addr iova, bool write, ks_iommu_fault_reason reason)
{
    if (iommu->fault_count < FAULTS_KEPT)
        iommu->faults[iommu->fault_count] = (ks_iommu_fault){.iova = iova, .write = write, .reason = reason};
    iommu->fault_count++;
}

bool ks_iommu_lookup(ks_iommu *iommu, ks_dma_addr iova, bool write, uint64_t *phys)
{
    uint64_t entry = walk(iommu, iova);
    if ((entry & (write ? KS_IOMMU_WRITE : KS_IOMMU_READ)) == 0)
        return false;
    *phys = (entry & PTE_ADDRESS_MASK) | (iova & KS_DMA_PAGE_MASK);
    return true;
}

bool ks_iommu_translate(ks_iommu *iommu, ks_dma_addr iova, bool write, uint64_t *phys)
{
    if (ks_iommu_lookup(iommu, iova, write, phys))
        return true;
    bool present = (walk(iommu, iova) & PTE_PERMS) != 0;
    ks_iommu_record_fault(iommu, iova, write, present ? KS_IOMMU_DENIED : KS_IOMMU_NOT_PRESENT);
    return false;
}

uint64_t ks_iommu_fault_count(const ks_iommu *iommu)
{
    return iommu->fault_count;
}

bool ks_iommu_fault_at(const ks_iommu *iommu, size_t index, ks_iommu_fault *fault)
{
    if (index >= iommu->fault_count || index >= FAULTS_KEPT)
        return false;
    *fault = iommu->faults[index];
    return true;
}

uint64_t ks_iommu_mapped_pages(const ks_iommu *iommu)
{
    return iommu->mapped_pages;
}
