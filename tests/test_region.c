/*
 * test_region.c -- the region mapping and its cache (harness/region_map.h, region_map.c): sizes
 * classes, alignment, reuse of a region given back, its inaccessibility while cached, the cache's
 * bounds and its trim. Each Criterion test runs in its own process, so each starts with an empty
 * cache.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "heap.h"
#include "region_map.h"

static size_t page_bytes(void)
{
    return (size_t)sysconf(_SC_PAGESIZE);
}

Test(region, mapping_sizes_are_pages_then_powers_of_two)
{
    cr_assert_eq(ks_region_mapping_bytes(0), page_bytes());
    cr_assert_eq(ks_region_mapping_bytes(1), page_bytes());
    cr_assert_eq(ks_region_mapping_bytes(page_bytes() + 1), 2 * page_bytes());
    cr_assert_eq(ks_region_mapping_bytes(3 * page_bytes()), 4 * page_bytes());
    cr_assert_eq(ks_region_mapping_bytes(KS_REGION_CACHE_MAX_BYTES), KS_REGION_CACHE_MAX_BYTES);
    size_t over = KS_REGION_CACHE_MAX_BYTES + page_bytes() + 1;
    cr_assert_eq(ks_region_mapping_bytes(over), KS_REGION_CACHE_MAX_BYTES + 2 * page_bytes(),
                 "past the cache's limit only pages");
}

Test(region, a_region_is_aligned_and_writable_to_its_end)
{
    size_t align = (size_t)1 << 20;
    unsigned char *region = ks_region_map_aligned(3 * page_bytes() + 5, align);
    cr_assert_not_null(region);
    cr_assert_eq((uintptr_t)region % align, 0);
    memset(region, 0xA5, 3 * page_bytes() + 5);
    ks_region_unmap(region, 3 * page_bytes() + 5);
}

Test(region, a_region_given_back_is_reused_by_the_next_request_of_its_class)
{
    unsigned char *first = ks_region_map_aligned(5 * page_bytes(), page_bytes());
    cr_assert_not_null(first);
    first[0] = 1;
    ks_region_unmap(first, 5 * page_bytes());
    cr_assert_eq(ks_region_cache_bytes(), 8 * page_bytes(), "cached at its class, 8 pages");
    unsigned char *second = ks_region_map_aligned(7 * page_bytes(), page_bytes()); /* same class */
    cr_assert_eq(second, first, "the cached region comes back");
    cr_assert_eq(ks_region_cache_bytes(), 0);
    second[7 * page_bytes() - 1] = 2; /* writable again, to the end of what was asked */
    ks_region_unmap(second, 7 * page_bytes());
}

/* ks_region_map_zeroed: a reused region is cleared to what was asked, as a fresh one reads. */
Test(region, a_zeroed_region_reads_as_zero_fresh_or_reused)
{
    size_t bytes = 5 * page_bytes() + 100;
    unsigned char *fresh = ks_region_map_zeroed(bytes, page_bytes());
    cr_assert_not_null(fresh);
    for (size_t offset = 0; offset < bytes; offset += 97)
        cr_assert_eq(fresh[offset], 0, "fresh, offset %zu", offset);
    memset(fresh, 0x5A, bytes);
    ks_region_unmap(fresh, bytes);
    unsigned char *reused = ks_region_map_zeroed(bytes, page_bytes());
    cr_assert_eq(reused, fresh, "the cached region comes back");
    for (size_t offset = 0; offset < bytes; offset++)
        if (reused[offset] != 0)
            cr_assert_fail("reused, offset %zu holds 0x%02x", offset, reused[offset]);
    ks_region_unmap(reused, bytes);
}

/* A reused region whose last user touched scattered pages (resident runs between untouched ones,
 * the partial last page among them): every byte reads as zero again. */
Test(region, a_zeroed_region_clears_scattered_pages_its_last_user_wrote)
{
    size_t page = page_bytes(), bytes = 40 * page + 123;
    static const unsigned touched[] = {0, 5, 6, 7, 20, 39, 40};
    unsigned char *first = ks_region_map_zeroed(bytes, page);
    cr_assert_not_null(first);
    for (size_t i = 0; i < sizeof touched / sizeof touched[0]; i++) {
        size_t at = touched[i] * page, length = at + page <= bytes ? page : bytes - at;
        memset(first + at, 0x77, length);
    }
    ks_region_unmap(first, bytes);
    unsigned char *again = ks_region_map_zeroed(bytes, page);
    cr_assert_eq(again, first, "the cached region comes back");
    for (size_t offset = 0; offset < bytes; offset++)
        if (again[offset] != 0)
            cr_assert_fail("page %zu, offset %zu holds 0x%02x", offset / page, offset % page, again[offset]);
    ks_region_unmap(again, bytes);
}

Test(region, a_cached_region_is_not_handed_out_at_a_larger_alignment_it_lacks)
{
    unsigned char *regions[8];
    unsigned char *misaligned = NULL;
    for (int i = 0; i < 8 && misaligned == NULL; i++) { /* find a region not 1 MiB aligned */
        regions[i] = ks_region_map_aligned(page_bytes(), page_bytes());
        cr_assert_not_null(regions[i]);
        if ((uintptr_t)regions[i] % ((size_t)1 << 20) != 0)
            misaligned = regions[i];
    }
    cr_assert_not_null(misaligned);
    ks_region_unmap(misaligned, page_bytes());
    unsigned char *aligned = ks_region_map_aligned(page_bytes(), (size_t)1 << 20);
    cr_assert_not_null(aligned);
    cr_assert_neq(aligned, misaligned);
    cr_assert_eq((uintptr_t)aligned % ((size_t)1 << 20), 0);
    cr_assert_eq(ks_region_cache_bytes(), page_bytes(), "the misaligned one stays cached");
    ks_region_unmap(aligned, page_bytes());
}

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
#include <sanitizer/asan_interface.h>
#endif

/* Whether the byte at address may be used. Under ASan a cached region is poisoned, so ASan is
 * asked. Otherwise it is PROT_NONE, and the kernel is asked (write(2) from it fails with EFAULT),
 * rather than touching it, so that no signal handler is involved. */
static bool readable(const void *address)
{
#ifdef TEST_ASAN
    return !__asan_address_is_poisoned(address);
#else
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    ssize_t written = write(fds[1], address, 1);
    int saved = errno;
    close(fds[0]);
    close(fds[1]);
    cr_assert(written == 1 || saved == EFAULT, "write: %s", strerror(saved));
    return written == 1;
#endif
}

/* A frame used after its instance's DeleteAllocator faults, cached region or not. */
Test(region, a_cached_region_is_inaccessible_until_reused)
{
    unsigned char *region = ks_region_map_aligned(page_bytes(), page_bytes());
    cr_assert_not_null(region);
    region[0] = 1;
    cr_assert(readable(region));
    ks_region_unmap(region, page_bytes());
    cr_assert_eq(ks_region_cache_bytes(), page_bytes(), "it is cached, not unmapped");
    cr_assert_not(readable(region), "a cached region must not be accessible");
    cr_assert_eq(ks_region_map_aligned(page_bytes(), page_bytes()), region);
    cr_assert(readable(region));
    ks_region_unmap(region, page_bytes());
}

Test(region, a_region_over_the_cache_limit_is_unmapped_not_cached)
{
    size_t bytes = KS_REGION_CACHE_MAX_BYTES + page_bytes();
    void *region = ks_region_map_aligned(bytes, page_bytes());
    cr_assert_not_null(region);
    ks_region_unmap(region, bytes);
    cr_assert_eq(ks_region_cache_bytes(), 0);
}

Test(region, the_cache_keeps_its_slot_and_byte_bounds_and_trims_to_nothing)
{
    enum { REGIONS = KS_REGION_CACHE_SLOTS + 4 };
    void *regions[REGIONS];
    for (int i = 0; i < REGIONS; i++) {
        regions[i] = ks_region_map_aligned(page_bytes(), page_bytes());
        cr_assert_not_null(regions[i]);
    }
    for (int i = 0; i < REGIONS; i++)
        ks_region_unmap(regions[i], page_bytes());
    cr_assert_eq(ks_region_cache_bytes(), KS_REGION_CACHE_SLOTS * page_bytes(), "the oldest were evicted");
    /* The newest is the one reused first. */
    cr_assert_eq(ks_region_map_aligned(page_bytes(), page_bytes()), regions[REGIONS - 1]);
    ks_region_unmap(regions[REGIONS - 1], page_bytes());

    size_t big = KS_REGION_CACHE_MAX_BYTES;
    size_t fit = KS_REGION_CACHE_TOTAL_BYTES / big;
    void *bigs[KS_REGION_CACHE_SLOTS];
    cr_assert_leq(fit + 1, KS_REGION_CACHE_SLOTS);
    for (size_t i = 0; i < fit + 1; i++) {
        bigs[i] = ks_region_map_aligned(big, page_bytes());
        cr_assert_not_null(bigs[i]);
    }
    for (size_t i = 0; i < fit + 1; i++)
        ks_region_unmap(bigs[i], big);
    size_t held = ks_region_cache_bytes();
    cr_assert_leq(held, KS_REGION_CACHE_TOTAL_BYTES, "held %zu", held);
    cr_assert_geq(held, KS_REGION_CACHE_TOTAL_BYTES - big, "the newest big regions are held: %zu", held);
    cr_assert_eq(ks_region_cache_trim(), held, "trim gives back what it held");
    cr_assert_eq(ks_region_cache_bytes(), 0);
}

/* The shared heaps (harness/heap.c) map their region through the cache too: a fuzz target that
 * creates a heap per input reuses one region instead of mapping and unmapping it each time. */
Test(region, a_destroyed_heap_leaves_its_region_for_the_next_heap)
{
    ks_error err;
    ks_error_clear(&err);
    ks_heap *first = NULL, *second = NULL;
    cr_assert_eq(ks_heap_create("first", 3 * page_bytes(), &first, &err), STATUS_SUCCESS, "%s", err.message);
    cr_assert_eq(first->size_bytes, 3 * page_bytes());
    unsigned char *base = first->base;
    memset(base, 0x5A, first->size_bytes); /* writable to its end */
    cr_assert_eq(ks_region_cache_bytes(), 0);
    cr_assert_eq(ks_heap_destroy(first, &err), STATUS_SUCCESS, "%s", err.message);
    cr_assert_eq(ks_region_cache_bytes(), 4 * page_bytes(), "the heap's region is cached at its class");
    cr_assert_eq(ks_heap_create("second", 4 * page_bytes(), &second, &err), STATUS_SUCCESS, "%s", err.message);
    cr_assert_eq(second->base, base, "the next heap of that class reuses it");
    cr_assert_eq(ks_region_cache_bytes(), 0);
    cr_assert_eq(ks_heap_destroy(second, &err), STATUS_SUCCESS, "%s", err.message);
}
