/*
 * test_dma_core.c -- the building blocks of the DMA layer on their own: the bitmap allocator, the
 * range map (against a brute-force model), emulated physical memory (placement above and below
 * the boundary, limits, contiguity, reverse lookup, pins that outlive a free), the IOMMU (IOVA
 * window, walks, permissions, the fault log), the non-coherent cache model, patterns and
 * checksums, and the option parser. The bitmap's two levels (leaves made on first use, full and
 * empty leaves skipped) and physmem's host-block quarantine and cache get tests of their own.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "dma/dma_internal.h"
#include "test_dma_helpers.h"

#if defined(__SANITIZE_ADDRESS__)
#define KS_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KS_TEST_ASAN 1
#endif
#endif
#ifdef KS_TEST_ASAN
#include <sanitizer/asan_interface.h>
#endif

/* ---- bitalloc ------------------------------------------------------------------------------ */

Test(dma_bitalloc, aligned_runs_limits_and_reuse)
{
    ks_bitalloc bits;
    cr_assert_eq(ks_bitalloc_init(&bits, 1000, NULL), STATUS_SUCCESS);
    uint64_t first = ks_bitalloc_alloc(&bits, 3, 1, 0, 1000, 0);
    cr_assert_eq(first, 0);
    uint64_t aligned = ks_bitalloc_alloc(&bits, 10, 64, 0, 1000, 0);
    cr_assert_eq(aligned, 64, "an aligned run skips to the next multiple of 64, got %llu", (unsigned long long)aligned);
    /* Within [100, 200) from 150: found at 150, then the range wraps back to 100. */
    cr_assert_eq(ks_bitalloc_alloc(&bits, 50, 1, 100, 200, 150), 150);
    cr_assert_eq(ks_bitalloc_alloc(&bits, 50, 1, 100, 200, 150), 100);
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, 100, 200, 150), KS_BITALLOC_NONE, "the range is full");
    cr_assert(ks_bitalloc_test(&bits, 199));
    ks_bitalloc_free(&bits, 120, 5);
    cr_assert(!ks_bitalloc_test(&bits, 122));
    cr_assert_eq(ks_bitalloc_alloc(&bits, 5, 1, 100, 200, 0), 120, "freed bits are reused");
    cr_assert_eq(ks_bitalloc_alloc(&bits, 6, 1, 100, 200, 0), KS_BITALLOC_NONE, "no run of 6 in a full range");
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 3, 0, 1000, 0), KS_BITALLOC_NONE, "alignment must be a power of two");
    cr_assert_eq(bits.used_bits, 3u + 10u + 100u);
    ks_bitalloc_destroy(&bits);
}

Test(dma_bitalloc, runs_across_word_boundaries)
{
    ks_bitalloc bits;
    cr_assert_eq(ks_bitalloc_init(&bits, 256, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_bitalloc_alloc(&bits, 60, 1, 0, 256, 0), 0);
    cr_assert_eq(ks_bitalloc_alloc(&bits, 100, 1, 0, 256, 0), 60, "a run spanning three words");
    for (uint64_t bit = 0; bit < 160; bit++)
        cr_assert(ks_bitalloc_test(&bits, bit), "bit %llu", (unsigned long long)bit);
    cr_assert(!ks_bitalloc_test(&bits, 160));
    ks_bitalloc_free(&bits, 10, 140);
    cr_assert_eq(ks_bitalloc_alloc(&bits, 140, 2, 0, 256, 0), 10);
    ks_bitalloc_destroy(&bits);
}

Test(dma_bitalloc, leaves_are_made_on_first_use)
{
    const uint64_t total = (uint64_t)2 << 20; /* 8 GiB of 4 KiB pages */
    ks_bitalloc bits;
    cr_assert_eq(ks_bitalloc_init(&bits, total, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_bitalloc_leaves_live(&bits), 0, "nothing set, no leaf made");
    cr_assert(!ks_bitalloc_test(&bits, 1000000));
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, 0, total, 1000000), 1000000, "the search starts at `from`");
    cr_assert_eq(ks_bitalloc_leaves_live(&bits), 1, "one bit set, one leaf made");
    cr_assert(ks_bitalloc_test(&bits, 1000000));
    cr_assert(!ks_bitalloc_test(&bits, 999999));
    cr_assert(!ks_bitalloc_test(&bits, 1000001));
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, 0, total, 0), 0, "a leaf never made is all clear");
    cr_assert_eq(ks_bitalloc_leaves_live(&bits), 2);
    ks_bitalloc_free(&bits, 1000000, 1);
    cr_assert(!ks_bitalloc_test(&bits, 1000000));
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, 0, total, 1000000), 1000000, "the freed bit is found again");
    cr_assert_eq(ks_bitalloc_leaves_live(&bits), 2, "an emptied leaf is kept and reused");
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, total - 1, total, 0), total - 1, "the last bit of the last leaf");
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, total - 1, total, 0), KS_BITALLOC_NONE);
    ks_bitalloc_destroy(&bits);
}

Test(dma_bitalloc, runs_across_leaf_boundaries)
{
    const uint64_t leaf = KS_BITALLOC_LEAF_BITS, total = 4 * KS_BITALLOC_LEAF_BITS;
    ks_bitalloc bits;
    cr_assert_eq(ks_bitalloc_init(&bits, total, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_bitalloc_alloc(&bits, 10, 1, 0, total, leaf - 5), leaf - 5, "a run over two leaves");
    cr_assert_eq(ks_bitalloc_leaves_live(&bits), 2);
    for (uint64_t bit = leaf - 5; bit < leaf + 5; bit++)
        cr_assert(ks_bitalloc_test(&bits, bit), "bit %llu", (unsigned long long)bit);
    cr_assert(!ks_bitalloc_test(&bits, leaf - 6));
    cr_assert(!ks_bitalloc_test(&bits, leaf + 5));
    /* First fit from 0: [0, leaf) holds set bits at its end, so the run starts past them and
     * reaches into a leaf not made yet. */
    cr_assert_eq(ks_bitalloc_alloc(&bits, leaf, 1, 0, total, 0), leaf + 5);
    cr_assert_eq(ks_bitalloc_leaves_live(&bits), 3);
    cr_assert(ks_bitalloc_test(&bits, 2 * leaf + 4));
    cr_assert(!ks_bitalloc_test(&bits, 2 * leaf + 5));
    ks_bitalloc_free(&bits, leaf - 5, 10);
    /* A full leaf is skipped whole, and a hole punched in it is found. */
    cr_assert_eq(ks_bitalloc_alloc(&bits, leaf, 1, 0, leaf, 0), 0, "leaf 0 filled");
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, 0, total, 0), leaf, "past the full leaf");
    ks_bitalloc_free(&bits, 100, 1);
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, 0, total, 0), 100, "the hole in the full leaf");
    cr_assert_eq(ks_bitalloc_alloc(&bits, 8, leaf, 0, total, 0), 3 * leaf, "aligned to a leaf: the first free one");
    cr_assert_eq(ks_bitalloc_leaves_live(&bits), 4);
    ks_bitalloc_destroy(&bits);
}

Test(dma_bitalloc, counts_follow_the_bits_that_change)
{
    const uint64_t total = 2 * KS_BITALLOC_LEAF_BITS;
    ks_bitalloc bits;
    cr_assert_eq(ks_bitalloc_init(&bits, total, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_bitalloc_alloc(&bits, 10, 1, 0, total, 100), 100);
    /* Freeing clear bits (next to the set ones, and in a leaf never made) must not lower the
     * leaf's count: at zero the leaf would read as empty and the run below would overlap 100..109. */
    ks_bitalloc_free(&bits, 20, 10);
    ks_bitalloc_free(&bits, KS_BITALLOC_LEAF_BITS + 7, 50);
    cr_assert_eq(ks_bitalloc_alloc(&bits, 200, 1, 0, total, 0), 110, "the run steps past the set bits");
    ks_bitalloc_free(&bits, 110, 200);
    ks_bitalloc_free(&bits, 100, 10);
    ks_bitalloc_free(&bits, 100, 10); /* twice: the second clears nothing */
    cr_assert_eq(ks_bitalloc_alloc(&bits, total, 1, 0, total, 0), 0, "all free again: the whole range in one run");
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, 0, total, 0), KS_BITALLOC_NONE, "and then full");
    ks_bitalloc_destroy(&bits);
}

Test(dma_bitalloc, init_refuses_absurd_sizes)
{
    ks_bitalloc bits;
    ks_error err;
    cr_assert_eq(ks_bitalloc_init(&bits, UINT64_MAX, &err), STATUS_INVALID_PARAMETER,
                 "2^64 bits (whose leaf count would wrap to 1 if rounded up naively)");
    cr_assert_not_null(strstr(err.message, "bitalloc"), "%s", err.message);
    cr_assert_eq(ks_bitalloc_init(&bits, KS_BITALLOC_MAX_BITS + 1u, NULL), STATUS_INVALID_PARAMETER);
    cr_assert_eq(ks_bitalloc_init(&bits, KS_BITALLOC_LEAF_BITS + 1u, NULL), STATUS_SUCCESS);
    cr_assert_eq(bits.leaf_count, 2, "a partial last leaf counts");
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, KS_BITALLOC_LEAF_BITS, KS_BITALLOC_LEAF_BITS + 1u, 0),
                 KS_BITALLOC_LEAF_BITS, "and its bit is usable");
    ks_bitalloc_destroy(&bits);
    cr_assert_eq(ks_bitalloc_init(&bits, 0, NULL), STATUS_SUCCESS, "an empty bitmap is valid");
    cr_assert_eq(ks_bitalloc_alloc(&bits, 1, 1, 0, 1, 0), KS_BITALLOC_NONE);
    ks_bitalloc_destroy(&bits);
}

/* ---- rangemap ------------------------------------------------------------------------------- */

Test(dma_rangemap, overlap_queries_match_brute_force)
{
    ks_rangemap map;
    ks_rangemap_init(&map);
    enum { RANGES = 300 };
    uint64_t starts[RANGES], ends[RANGES];
    bool present[RANGES];
    uint64_t random_state = 7;
    for (int i = 0; i < RANGES; i++) {
        starts[i] = ks_dma_random_next(&random_state) % 10000u;
        ends[i] = starts[i] + 1u + ks_dma_random_next(&random_state) % (i % 10 == 0 ? 3000u : 50u);
        present[i] = true;
        cr_assert_eq(ks_rangemap_insert(&map, starts[i], ends[i], &present[i]), STATUS_SUCCESS);
    }
    for (int i = 0; i < RANGES; i += 3) {
        cr_assert(ks_rangemap_remove(&map, starts[i], &present[i]));
        present[i] = false;
    }
    cr_assert(!ks_rangemap_remove(&map, starts[0], &present[0]), "a removed entry is gone");
    for (int query = 0; query < 500; query++) {
        uint64_t a = ks_dma_random_next(&random_state) % 11000u, b = a + 1u + ks_dma_random_next(&random_state) % 200u;
        int expected = 0, found = 0;
        for (int i = 0; i < RANGES; i++)
            expected += present[i] && starts[i] < b && ends[i] > a;
        for (size_t k = ks_rangemap_first_overlap(&map, a, b); k < map.count; k = ks_rangemap_next_overlap(&map, k + 1u, a, b)) {
            bool *flag = map.items[k].value;
            cr_assert(*flag && map.items[k].start < b && map.items[k].end > a);
            found++;
        }
        cr_assert_eq(found, expected, "query [%llu, %llu): %d found, %d expected", (unsigned long long)a,
                     (unsigned long long)b, found, expected);
    }
    ks_rangemap_destroy(&map);
}

/* Two ranges share the longest span: removing one must leave the search reaching back far
 * enough for the other (the map counts how many ranges are that long). */
Test(dma_rangemap, the_longest_span_outlives_one_of_two_equals)
{
    ks_rangemap map;
    ks_rangemap_init(&map);
    int first, second, shorts[20];
    cr_assert_eq(ks_rangemap_insert(&map, 0, 1000, &first), STATUS_SUCCESS);
    cr_assert_eq(ks_rangemap_insert(&map, 10, 1010, &second), STATUS_SUCCESS);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(ks_rangemap_insert(&map, 100u + 40u * (uint64_t)i, 105u + 40u * (uint64_t)i, &shorts[i]),
                     STATUS_SUCCESS);
    cr_assert(ks_rangemap_remove(&map, 0, &first));
    size_t k = ks_rangemap_first_overlap(&map, 1005, 1006);
    cr_assert_lt(k, map.count, "the second long range still overlaps [1005, 1006)");
    cr_assert_eq(map.items[k].value, &second);
    cr_assert(ks_rangemap_remove(&map, 10, &second));
    cr_assert_eq(ks_rangemap_first_overlap(&map, 1005, 1006), map.count, "both long ranges gone");
    cr_assert_eq(map.max_span, 5u, "the span falls back to the short ranges'");
    ks_rangemap_destroy(&map);
}

/* ---- physmem ------------------------------------------------------------------------------- */

static ks_physmem *test_physmem(unsigned high_percent, uint64_t boundary)
{
    ks_physmem_options options = {.high_percent = high_percent, .high_boundary_bytes = boundary, .seed = 3};
    ks_physmem *physmem;
    ks_error err;
    cr_assert_eq(ks_physmem_create(&options, &physmem, &err), STATUS_SUCCESS, "%s", err.message);
    return physmem;
}

Test(dma_physmem, placement_follows_high_percent_and_limits)
{
    const uint64_t four_gib = (uint64_t)4 << 30;
    ks_physmem *all_high = test_physmem(100, 0), *all_low = test_physmem(0, 0);
    void *high, *low, *limited;
    cr_assert_eq(ks_physmem_alloc(all_high, 64 * 1024, 4096, 0, KS_PHYS_CONTIGUOUS, &high, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_physmem_alloc(all_low, 64 * 1024, 4096, 0, KS_PHYS_CONTIGUOUS, &low, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_physmem_alloc(all_high, 8192, 4096, four_gib, KS_PHYS_CONTIGUOUS, &limited, NULL), STATUS_SUCCESS);
    uint64_t phys;
    cr_assert_eq(ks_physmem_run(all_high, (uintptr_t)high, 64 * 1024, &phys), 64 * 1024, "contiguous");
    cr_assert_geq(phys, four_gib, "high_percent=100 places memory above 4 GiB: 0x%llx", (unsigned long long)phys);
    cr_assert_eq(ks_physmem_run(all_low, (uintptr_t)low, 64 * 1024, &phys), 64 * 1024);
    cr_assert_lt(phys + 64 * 1024, four_gib, "high_percent=0 places it below");
    cr_assert_neq(phys, 0, "page 0 is never handed out");
    cr_assert_eq(ks_physmem_run(all_high, (uintptr_t)limited, 8192, &phys), 8192);
    cr_assert_lt(phys + 8192, four_gib + 1u, "a limit wins over the preference");
    cr_assert_eq(ks_physmem_pages_high(all_high), 16);
    ks_physmem_destroy(all_high);
    ks_physmem_destroy(all_low);
}

Test(dma_physmem, isa_boundary_and_alignment)
{
    const uint64_t sixteen_mib = (uint64_t)16 << 20;
    ks_physmem *physmem = test_physmem(0, sixteen_mib);
    void *host;
    cr_assert_eq(ks_physmem_alloc(physmem, 3 * 4096, 64 * 1024, 0, KS_PHYS_CONTIGUOUS, &host, NULL), STATUS_SUCCESS);
    uint64_t phys;
    cr_assert_eq(ks_physmem_run(physmem, (uintptr_t)host, 3 * 4096, &phys), 3 * 4096);
    cr_assert_eq((uintptr_t)host % (64 * 1024), 0, "host aligned");
    cr_assert_eq(phys % (64 * 1024), 0, "physical aligned");
    cr_assert_lt(phys, sixteen_mib, "below the 16 MiB boundary");
    cr_assert_eq(ks_physmem_high_boundary(physmem), sixteen_mib);
    ks_physmem_destroy(physmem);
}

Test(dma_physmem, scattered_pages_and_reverse_lookup)
{
    ks_physmem *physmem = test_physmem(50, 0);
    void *host;
    cr_assert_eq(ks_physmem_alloc(physmem, 32 * 4096, 4096, 0, 0, &host, NULL), STATUS_SUCCESS);
    unsigned discontinuities = 0;
    for (unsigned i = 0; i < 32; i++) {
        uintptr_t page_host = (uintptr_t)host + i * 4096u;
        const ks_phys_page *page = ks_physmem_page_of_host(physmem, page_host + 100u);
        cr_assert_not_null(page);
        cr_assert_eq(ks_physmem_page_of_phys(physmem, page->phys + 17u), page, "reverse lookup finds the same page");
        const ks_phys_page *next = i + 1 < 32 ? ks_physmem_page_of_host(physmem, page_host + 4096u) : NULL;
        discontinuities += next != NULL && next->phys != page->phys + 4096u;
    }
    cr_assert_gt(discontinuities, 16, "scattered pages are not physically contiguous (%u breaks)", discontinuities);
    cr_assert_eq(ks_physmem_pages_live(physmem), 32);
    ks_physmem_free(physmem, host);
    cr_assert_eq(ks_physmem_pages_live(physmem), 0);
    ks_physmem_destroy(physmem);
}

Test(dma_physmem, pins_give_contiguous_runs_and_outlive_a_free)
{
    ks_physmem *physmem = test_physmem(0, 0);
    unsigned char *caller = aligned_alloc(4096, 8 * 4096);
    cr_assert_eq(ks_physmem_pin(physmem, (uintptr_t)caller + 10u, 5 * 4096, NULL), STATUS_SUCCESS);
    uint64_t phys;
    cr_assert_eq(ks_physmem_run(physmem, (uintptr_t)caller, 6 * 4096, &phys), 6 * 4096,
                 "unknown pages get one physical run");
    cr_assert_eq(ks_physmem_pages_live(physmem), 6);
    ks_physmem_unpin(physmem, (uintptr_t)caller + 10u, 5 * 4096);
    cr_assert_eq(ks_physmem_pages_live(physmem), 0, "the last unpin forgets the pages");
    free(caller);

    void *host;
    cr_assert_eq(ks_physmem_alloc(physmem, 2 * 4096, 4096, 0, KS_PHYS_CONTIGUOUS, &host, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_physmem_pin(physmem, (uintptr_t)host, 4096, NULL), STATUS_SUCCESS);
    ks_physmem_free(physmem, host);
    cr_assert_eq(ks_physmem_pages_live(physmem), 1, "a pinned page outlives the free");
    memset(host, 0x5A, 4096); /* still mapped: ASan and the MMU agree */
    ks_physmem_unpin(physmem, (uintptr_t)host, 4096);
    cr_assert_eq(ks_physmem_pages_live(physmem), 0);
    ks_physmem_destroy(physmem);
}

static bool all_zero(const unsigned char *bytes, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (bytes[i] != 0)
            return false;
    return true;
}

Test(dma_physmem, freed_host_memory_is_quarantined_then_reused_zeroed)
{
    ks_physmem *physmem = test_physmem(0, 0);
    void *first, *second;
    cr_assert_eq(ks_physmem_alloc(physmem, 2 * 4096, 4096, 0, KS_PHYS_CONTIGUOUS, &first, NULL), STATUS_SUCCESS);
    cr_assert(all_zero(first, 2 * 4096));
    memset(first, 0xA5, 2 * 4096);
    ks_physmem_free(physmem, first);
#ifdef KS_TEST_ASAN
    cr_assert(__asan_address_is_poisoned(first), "a freed block is poisoned");
    cr_assert(__asan_address_is_poisoned((char *)first + 4096 + 123));
#endif
    cr_assert_eq(ks_physmem_alloc(physmem, 2 * 4096, 4096, 0, KS_PHYS_CONTIGUOUS, &second, NULL), STATUS_SUCCESS);
    cr_assert_neq(second, first, "a block freed by this physmem is not handed back at once");
    memset(second, 0x5A, 2 * 4096);
    ks_physmem_destroy(physmem); /* second goes back too */

    /* A later physmem draws from the process-wide cache: the same blocks, zeroed. */
    physmem = test_physmem(0, 0);
    void *again[2];
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(ks_physmem_alloc(physmem, 2 * 4096, 8192, 0, KS_PHYS_CONTIGUOUS, &again[i], NULL), STATUS_SUCCESS);
        cr_assert(again[i] == first || again[i] == second, "block %d comes from the cache", i);
        cr_assert(all_zero(again[i], 2 * 4096), "block %d is zeroed", i);
        cr_assert_eq((uintptr_t)again[i] % 8192, 0, "and aligned as asked");
    }
    ks_physmem_destroy(physmem);
}

Test(dma_physmem, a_full_quarantine_feeds_reuse_with_zeroed_memory)
{
    ks_physmem *physmem = test_physmem(0, 0);
    /* 40 allocate/dirty/free cycles of 16 pages: 640 pages through a 256-page quarantine, so
     * blocks come back within the physmem; every one must be zeroed again. */
    for (int i = 0; i < 40; i++) {
        void *host;
        cr_assert_eq(ks_physmem_alloc(physmem, 16 * 4096, 4096, 0, KS_PHYS_CONTIGUOUS, &host, NULL), STATUS_SUCCESS);
        cr_assert(all_zero(host, 16 * 4096), "cycle %d: zeroed", i);
        memset(host, 0xC3, 16 * 4096);
        ks_physmem_free(physmem, host);
    }
    /* Above the block size the memory is mapped, and zeroed by the kernel. */
    void *large;
    cr_assert_eq(ks_physmem_alloc(physmem, 32 * 4096, 65536, 0, KS_PHYS_CONTIGUOUS, &large, NULL), STATUS_SUCCESS);
    cr_assert(all_zero(large, 32 * 4096));
    cr_assert_eq((uintptr_t)large % 65536, 0);
    ks_physmem_free(physmem, large);
    cr_assert_eq(ks_physmem_pages_live(physmem), 0);
    ks_physmem_destroy(physmem);
}

/* ---- iommu --------------------------------------------------------------------------------- */

Test(dma_iommu, window_walk_permissions_and_faults)
{
    ks_iommu *iommu;
    ks_error err;
    cr_assert_eq(ks_iommu_create(ks_dma_mask_of_bits(32), &iommu, &err), STATUS_SUCCESS, "%s", err.message);
    ks_dma_addr iova = ks_iommu_alloc_iova(iommu, 4, 4);
    cr_assert_neq(iova, KS_DMA_ADDR_ERROR);
    cr_assert_neq(iova, 0, "IOVA 0 is never handed out");
    cr_assert_eq(iova % (4 * 4096), 0, "aligned to 4 pages");
    cr_assert_lt(iova, (uint64_t)1 << 32, "below a 32-bit mask");
    cr_assert_eq(ks_iommu_map(iommu, iova, 0x123456000ull, KS_IOMMU_READ, &err), STATUS_SUCCESS);
    cr_assert_eq(ks_iommu_map(iommu, iova, 0x1000ull, KS_IOMMU_READ, &err), STATUS_INVALID_PARAMETER, "mapped twice");
    uint64_t phys = 0;
    cr_assert(ks_iommu_translate(iommu, iova + 0x10, false, &phys));
    cr_assert_eq(phys, 0x123456010ull);
    cr_assert(!ks_iommu_translate(iommu, iova + 0x10, true, &phys), "read-only page refuses a write");
    cr_assert(!ks_iommu_translate(iommu, iova + 4096, false, &phys), "no entry for the next page");
    cr_assert_eq(ks_iommu_fault_count(iommu), 2);
    ks_iommu_fault fault;
    cr_assert(ks_iommu_fault_at(iommu, 0, &fault));
    cr_assert_eq(fault.reason, KS_IOMMU_DENIED);
    cr_assert(fault.write);
    cr_assert(ks_iommu_fault_at(iommu, 1, &fault));
    cr_assert_eq(fault.reason, KS_IOMMU_NOT_PRESENT);
    cr_assert_eq(fault.iova, iova + 4096);
    ks_iommu_unmap(iommu, iova);
    cr_assert(!ks_iommu_lookup(iommu, iova, false, &phys), "unmapped");
    cr_assert_eq(ks_iommu_mapped_pages(iommu), 0);
    ks_iommu_free_iova(iommu, iova, 4);
    ks_iommu_destroy(iommu);
}

Test(dma_iommu, wide_masks_get_high_iovas)
{
    ks_iommu *iommu;
    cr_assert_eq(ks_iommu_create(UINT64_MAX, &iommu, NULL), STATUS_SUCCESS);
    ks_dma_addr iova = ks_iommu_alloc_iova(iommu, 1, 1);
    cr_assert_geq(iova, (uint64_t)4 << 30, "a 64-bit device gets IOVAs above 4 GiB: 0x%llx", (unsigned long long)iova);
    cr_assert_lt(iova, (uint64_t)1 << 48);
    ks_iommu_destroy(iommu);
    cr_assert_eq(ks_iommu_create(0x12345, &iommu, NULL), STATUS_INVALID_PARAMETER, "a mask must be 2^n - 1");
}

/* ---- cache --------------------------------------------------------------------------------- */

Test(dma_cache, shadow_diverges_until_maintenance)
{
    ks_physmem *physmem = test_physmem(0, 0);
    unsigned char *buffer = aligned_alloc(4096, 2 * 4096);
    memset(buffer, 1, 2 * 4096);
    cr_assert_eq(ks_physmem_pin(physmem, (uintptr_t)buffer, 2 * 4096, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_cache_attach(physmem, (uintptr_t)buffer, 2 * 4096, NULL), STATUS_SUCCESS);
    const ks_phys_page *page = ks_physmem_page_of_host(physmem, (uintptr_t)buffer);
    unsigned char *ram = ks_cache_device_view(page, 0, false);
    cr_assert_neq(ram, buffer, "a non-coherent device sees RAM, not the CPU view");
    cr_assert_eq(ks_cache_device_view(page, 0, true), buffer, "a coherent one sees the CPU view");
    cr_assert_eq(ram[5], 1, "RAM starts equal to the CPU view");
    buffer[5] = 2;
    cr_assert_eq(ram[5], 1, "a CPU write stays in the cache");
    cr_assert_eq(ks_cache_writeback(physmem, (uintptr_t)buffer + 5, 1), 1);
    cr_assert_eq(ram[5], 2, "until written back");
    ram[6] = 3;
    cr_assert_eq(buffer[6], 1, "a device write stays in RAM");
    ks_cache_invalidate(physmem, (uintptr_t)buffer, 4096);
    cr_assert_eq(buffer[6], 3, "until invalidated");
    ks_cache_detach(physmem, (uintptr_t)buffer, 2 * 4096);
    cr_assert_null(page->ram, "the last detach drops the shadow");
    ks_physmem_unpin(physmem, (uintptr_t)buffer, 2 * 4096);
    free(buffer);
    ks_physmem_destroy(physmem);
}

/* A mapping of a small buffer in the middle of a page copies only its own bytes into the RAM
 * shadow. The first version copied the whole page, which reads past a malloc'd buffer: ASan
 * reported a heap-buffer-overflow here, and the shadow held bytes of unrelated memory. */
Test(dma_cache, attach_reads_only_the_mapped_bytes)
{
    ks_physmem *physmem = test_physmem(0, 0);
    unsigned char *block = aligned_alloc(4096, 4096);
    unsigned char *buffer = malloc(100); /* its own heap chunk: bytes around it are not ours */
    cr_assert_not_null(block);
    cr_assert_not_null(buffer);
    memset(buffer, 0xa5, 100);
    /* Two mappings in one page, at offsets 100 and 1000, attached one after the other. */
    memset(block, 0x11, 4096);
    cr_assert_eq(ks_physmem_pin(physmem, (uintptr_t)buffer, 100, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_cache_attach(physmem, (uintptr_t)buffer, 100, NULL), STATUS_SUCCESS);
    const ks_phys_page *page = ks_physmem_page_of_host(physmem, (uintptr_t)buffer);
    uintptr_t offset = (uintptr_t)buffer & 4095;
    unsigned char *ram = ks_cache_device_view(page, 0, false);
    for (uintptr_t i = 0; i < 4096; i++) {
        unsigned char want = (i >= offset && i < offset + 100) ? 0xa5 : 0;
        cr_assert_eq(ram[i], want, "RAM byte %lu of the page: 0x%02x, expected 0x%02x", (unsigned long)i, ram[i], want);
    }
    cr_assert_eq(ks_physmem_pin(physmem, (uintptr_t)block + 100, 50, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_cache_attach(physmem, (uintptr_t)block + 100, 50, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_physmem_pin(physmem, (uintptr_t)block + 1000, 24, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_cache_attach(physmem, (uintptr_t)block + 1000, 24, NULL), STATUS_SUCCESS);
    page = ks_physmem_page_of_host(physmem, (uintptr_t)block);
    ram = ks_cache_device_view(page, 0, false);
    cr_assert_eq(ram[99], 0);
    cr_assert_eq(ram[100], 0x11);
    cr_assert_eq(ram[149], 0x11);
    cr_assert_eq(ram[150], 0, "bytes between mappings are not read from the CPU view");
    cr_assert_eq(ram[1000], 0x11, "a second mapping in the same page copies its own bytes");
    cr_assert_eq(ram[1024], 0);
    ks_cache_detach(physmem, (uintptr_t)block + 1000, 24);
    ks_cache_detach(physmem, (uintptr_t)block + 100, 50);
    ks_cache_detach(physmem, (uintptr_t)buffer, 100);
    cr_assert_null(page->ram, "the last detach of the page drops its shadow");
    ks_physmem_unpin(physmem, (uintptr_t)block + 1000, 24);
    ks_physmem_unpin(physmem, (uintptr_t)block + 100, 50);
    ks_physmem_unpin(physmem, (uintptr_t)buffer, 100);
    ks_physmem_destroy(physmem);
    free(buffer);
    free(block);
}

/* ---- pattern and checksum -------------------------------------------------------------------- */

Test(dma_pattern, byte_offsets_and_detection)
{
    unsigned char whole[1000], pieces[1000];
    ks_dma_pattern_fill(whole, sizeof whole, 42, 0);
    ks_dma_pattern_fill(pieces, 3, 42, 0);
    ks_dma_pattern_fill(pieces + 3, 500, 42, 3);
    ks_dma_pattern_fill(pieces + 503, 497, 42, 503);
    cr_assert_eq(memcmp(whole, pieces, sizeof whole), 0, "a byte depends only on seed and offset");
    cr_assert_eq(ks_dma_pattern_check(whole, sizeof whole, 42, 0), SIZE_MAX);
    cr_assert_eq(ks_dma_pattern_check(whole + 9, 100, 42, 9), SIZE_MAX);
    cr_assert_neq(ks_dma_pattern_check(whole, sizeof whole, 43, 0), SIZE_MAX, "another seed differs");
    whole[777] ^= 0x10;
    cr_assert_eq(ks_dma_pattern_check(whole, sizeof whole, 42, 0), 777, "the first bad byte is named");
    unsigned char shifted[64];
    ks_dma_pattern_fill(shifted, sizeof shifted, 42, 8);
    cr_assert_eq(ks_dma_pattern_check(shifted, sizeof shifted, 42, 0), 0, "a block one word off is caught");
}

Test(dma_pattern, checksum_is_split_independent_and_order_sensitive)
{
    unsigned char data[999];
    ks_dma_pattern_fill(data, sizeof data, 5, 0);
    uint64_t whole = ks_dma_checksum(data, sizeof data);
    ks_dma_checksum_state state;
    ks_dma_checksum_init(&state);
    size_t cuts[] = {1, 7, 8, 13, 64, 100, 806};
    size_t at = 0;
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        ks_dma_checksum_update(&state, data + at, cuts[i]);
        at += cuts[i];
    }
    cr_assert_eq(at, sizeof data);
    cr_assert_eq(ks_dma_checksum_final(&state), whole, "pieces give the same checksum");
    unsigned char swapped[999];
    memcpy(swapped, data, sizeof data);
    memcpy(swapped, data + 8, 8);
    memcpy(swapped + 8, data, 8);
    cr_assert_neq(ks_dma_checksum(swapped, sizeof swapped), whole, "swapped words change it");
    cr_assert_neq(ks_dma_checksum(data, sizeof data - 1), whole, "the length counts");
}

/* ---- options -------------------------------------------------------------------------------- */

Test(dma_options, parse_and_reject)
{
    ks_dma_options options;
    ks_error err;
    ks_dma_options_init(&options);
    cr_assert_eq(ks_dma_options_parse(&options,
                                      "mask=32,coherent=0,iommu=yes,sg=1,max_seg=64K,max_segs=16,align=64,"
                                      "boundary=4G,high=75,high_boundary=16M,fault_ppm=1000,faults=device+stall,"
                                      "bounce=off,seed=99,bandwidth=1G/s",
                                      &err),
                 STATUS_SUCCESS, "%s", err.message);
    cr_assert_eq(options.device.address_bits, 32);
    cr_assert(!options.device.coherent);
    cr_assert(options.iommu);
    cr_assert(options.device.scatter_gather);
    cr_assert_eq(options.device.max_segment_bytes, 64 * 1024);
    cr_assert_eq(options.device.max_segments, 16);
    cr_assert_eq(options.device.align_bytes, 64);
    cr_assert_eq(options.device.boundary_bytes, (uint64_t)4 << 30);
    cr_assert_eq(options.high_memory_percent, 75);
    cr_assert_eq(options.high_boundary_bytes, 16u << 20);
    cr_assert_eq(options.fault_kinds, KS_DMA_FAULT_DEVICE_ERROR | KS_DMA_FAULT_STALL);
    cr_assert(options.no_bounce);
    cr_assert_eq(options.seed, 99);
    cr_assert_eq(options.bandwidth_bytes_per_s, (uint64_t)1 << 30);
    char described[256];
    cr_assert_not_null(strstr(ks_dma_options_describe(&options, described, sizeof described), "mask=32,coherent=0"));
    cr_assert(!options.inline_engine, "a device's engine has its own thread unless asked");
    cr_assert_null(strstr(described, "inline"), "%s", described);
    cr_assert_eq(ks_dma_options_parse(&options, "inline=1", &err), STATUS_SUCCESS, "%s", err.message);
    cr_assert(options.inline_engine);
    cr_assert_not_null(strstr(ks_dma_options_describe(&options, described, sizeof described), ",inline=1"), "%s",
                       described);
    cr_assert_eq(ks_dma_options_parse(&options, "inline=sometimes", &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "inline='sometimes': expected 1/0, yes/no"), "%s", err.message);

    cr_assert_eq(ks_dma_options_parse(&options, "mask=32,colour=blue", &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "unknown key 'colour'"), "%s", err.message);
    cr_assert_not_null(strstr(err.message, "iommu"), "the message lists the keys: %s", err.message);
    cr_assert_eq(ks_dma_options_parse(&options, "mask=12", &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "mask='12': expected an address width in bits, 24 to 64"), "%s",
                       err.message);
    cr_assert_eq(ks_dma_options_parse(&options, "mask=24,fault_ppm=1000000", &err), STATUS_SUCCESS, "%s", err.message);
    cr_assert_eq(ks_dma_options_parse(&options, "fault_ppm=1000001", &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "fault_ppm='1000001': expected a rate in parts per million, 0 to 1000000"),
                       "%s", err.message);
    cr_assert_eq(ks_dma_options_parse(&options, "high=101", &err), STATUS_INVALID_PARAMETER);
    cr_assert_eq(ks_dma_options_parse(&options, "faults=sometimes", &err), STATUS_INVALID_PARAMETER);
    cr_assert_eq(ks_dma_options_parse(&options, "iommu", &err), STATUS_INVALID_PARAMETER);
}

Test(dma_options, adapter_rejects_impossible_devices)
{
    const char *bad[] = {"align=48", "boundary=100", "boundary=1K,align=4K", "max_seg=16,align=64"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ks_dma_options options = test_dma_options(bad[i]);
        ks_dma_adapter *adapter = NULL;
        ks_error err;
        cr_assert_eq(ks_dma_adapter_create(&options, &adapter, &err), STATUS_INVALID_PARAMETER, "%s accepted", bad[i]);
        cr_assert_null(adapter);
    }
}

Test(dma_options, rule_names_are_distinct)
{
    for (int a = 0; a < KS_DMA_RULE_COUNT; a++) {
        const char *name = ks_dma_rule_name((ks_dma_rule)a);
        cr_assert_str_neq(name, "unknown-rule", "rule %d has no name", a);
        for (int b = 0; b < a; b++)
            cr_assert_str_neq(name, ks_dma_rule_name((ks_dma_rule)b), "rules %d and %d share a name", a, b);
    }
    cr_assert_str_eq(ks_dma_rule_name(KS_DMA_RULE_COUNT), "unknown-rule");
    cr_assert_eq(ks_dma_transfer_from_name("render"), KS_DMA_TRANSFER_RENDER);
    cr_assert_eq(ks_dma_transfer_from_name("teleport"), KS_DMA_TRANSFER_LOOPBACK + 1);
}
