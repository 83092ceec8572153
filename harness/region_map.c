/*
 * region_map.c -- mapping and unmapping the regions and blocks frames are carved from
 * (region_map.h), with a small cache of regions given back, so that deleting an instance and
 * creating the next one does not cost the system a fresh mapping, a page fault per page touched
 * and an unmap with its TLB shootdown each time.
 *
 * Design. A region given back with ks_region_unmap is kept, up to KS_REGION_CACHE_SLOTS regions
 * and KS_REGION_CACHE_TOTAL_BYTES in all, each at most KS_REGION_CACHE_MAX_BYTES; the oldest goes
 * back to the system first. ks_region_map_aligned takes the most recent cached region of the
 * same mapping size whose start has the alignment asked for. As jemalloc keeps retained extents
 * and mimalloc its segment cache, pages stay resident across the reuse. Mapping sizes are
 * classes -- a cacheable request is rounded up to a power of two, a larger one to pages -- so
 * that regions of nearby sizes can stand in for each other; the tail past what the caller asked
 * for is address space only (MAP_NORESERVE), committed if and when it is touched.
 *
 * A cached region is mprotect'ed PROT_NONE while it waits (poisoned instead under ASan, see
 * region_protect), so a frame used after its instance's DeleteAllocator still faults at once, as
 * it would had the region been unmapped. A reused region
 * keeps what its last user wrote: callers must not expect zeroes (under MemorySanitizer it is
 * marked uninitialised again, so one that reads before writing is caught there).
 *
 * Cost: a reuse is two mprotect calls (two poisons under ASan) and no fault on the pages already
 * touched; a miss is one
 * mmap plus up to two munmap of the alignment slack. ks_region_cache_trim empties the cache (the
 * benchmarks call it before each run so that one allocator's peak RSS is not another's memory).
 * Thread safety: the cache is under one mutex; the system calls run outside it.
 */
#include "region_map.h"
#include "sanitizers.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if KS_MSAN
#include <sanitizer/msan_interface.h>
#define REGION_MARK_UNINITIALISED(start, bytes) __msan_allocated_memory((start), (bytes))
#else
#define REGION_MARK_UNINITIALISED(start, bytes) ((void)(start), (void)(bytes))
#endif

#if KS_ASAN
#include <sanitizer/asan_interface.h>
#endif

/* Makes a region inaccessible while it is cached, or accessible again; false if it could not.
 * used_bytes is what its user asked for (in pages), mapped_bytes its whole mapping. Under ASan
 * the region is poisoned rather than protected: mprotect to PROT_NONE shoots down the TLB of every
 * CPU the process runs on, which cost more than the page faults the cache saves (perf,
 * fuzz_alloc_pool under ASan: 213 against 145 us a run), while a poison costs a write of one
 * shadow byte per 8 bytes, so only the pages used are poisoned: nothing points past them. */
static bool region_protect(void *start, size_t used_bytes, size_t mapped_bytes, bool accessible)
{
#if KS_REGION_CACHE_PARKS_BY_POISON
    (void)mapped_bytes;
    if (accessible)
        ASAN_UNPOISON_MEMORY_REGION(start, used_bytes);
    else
        ASAN_POISON_MEMORY_REGION(start, used_bytes);
    return true;
#else
    (void)used_bytes;
    return mprotect(start, mapped_bytes, accessible ? PROT_READ | PROT_WRITE : PROT_NONE) == 0;
#endif
}

/* Unmaps a cached region. ASan's poison lives in its shadow, not in the mapping, so it is lifted
 * first, from the whole mapping (earlier users may have poisoned more than the last one used): a
 * later mapping at the same address must not inherit it. */
static void region_release(void *start, size_t bytes)
{
#if KS_ASAN
    ASAN_UNPOISON_MEMORY_REGION(start, bytes);
#endif
    munmap(start, bytes);
}

typedef struct cached_region {
    void *start;
    size_t bytes; /* the mapping size class, as ks_region_mapping_bytes gives it */
} cached_region;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static cached_region cache[KS_REGION_CACHE_SLOTS]; /* oldest first */
static unsigned cache_count;
static size_t cache_bytes;

static size_t page_size_bytes(void)
{
    return (size_t)sysconf(_SC_PAGESIZE);
}

/* bytes rounded up to whole pages, at least one. */
static size_t page_round(size_t bytes)
{
    size_t page_bytes = page_size_bytes();
    size_t rounded_bytes = (bytes + page_bytes - 1) & ~(page_bytes - 1);
    return rounded_bytes != 0 ? rounded_bytes : page_bytes;
}

size_t ks_region_mapping_bytes(size_t bytes)
{
    size_t mapped_bytes = page_round(bytes);
    if (mapped_bytes > KS_REGION_CACHE_MAX_BYTES)
        return mapped_bytes;
    return (size_t)1 << (64 - __builtin_clzll((unsigned long long)mapped_bytes - 1)); /* >= one page */
}

/* The most recent cached region of mapped_bytes whose start is align_bytes-aligned, taken out of
 * the cache; NULL if there is none. */
static void *cache_take(size_t mapped_bytes, size_t align_bytes)
{
    void *found = NULL;
    pthread_mutex_lock(&cache_lock);
    for (unsigned index = cache_count; index-- > 0;) {
        if (cache[index].bytes != mapped_bytes || ((uintptr_t)cache[index].start & (align_bytes - 1)) != 0)
            continue;
        found = cache[index].start;
        cache_bytes -= mapped_bytes;
        for (unsigned later = index + 1; later < cache_count; later++)
            cache[later - 1] = cache[later];
        cache_count--;
        break;
    }
    pthread_mutex_unlock(&cache_lock);
    return found;
}

/* A region of at least bytes, aligned; *reused tells whether it came from the cache (and so
 * holds what its last user wrote) or is a fresh mapping (zero). */
static void *region_map(size_t bytes, size_t align_bytes, bool *reused)
{
    *reused = false;
    size_t page_bytes = page_size_bytes();
    if (align_bytes < page_bytes)
        align_bytes = page_bytes;
    size_t mapped_bytes = ks_region_mapping_bytes(bytes);
    if (mapped_bytes <= KS_REGION_CACHE_MAX_BYTES) {
        void *cached = cache_take(mapped_bytes, align_bytes);
        if (cached != NULL) {
            if (region_protect(cached, page_round(bytes), mapped_bytes, true)) {
                REGION_MARK_UNINITIALISED(cached, mapped_bytes);
                *reused = true;
                return cached;
            }
            region_release(cached, mapped_bytes); /* cannot happen short of ENOMEM; map afresh */
        }
    }
    size_t extra_bytes = align_bytes - page_bytes;
    if (mapped_bytes + extra_bytes < mapped_bytes)
        return NULL;
    void *raw = mmap(NULL, mapped_bytes + extra_bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uintptr_t raw_start = (uintptr_t)raw;
    uintptr_t start = (raw_start + align_bytes - 1) & ~((uintptr_t)align_bytes - 1);
    uintptr_t raw_end = raw_start + mapped_bytes + extra_bytes;
    if (start > raw_start)
        munmap(raw, start - raw_start);
    if (raw_end > start + mapped_bytes)
        munmap((void *)(start + mapped_bytes), raw_end - (start + mapped_bytes));
    return (void *)start;
}

void *ks_region_map_aligned(size_t bytes, size_t align_bytes)
{
    bool reused;
    return region_map(bytes, align_bytes, &reused);
}

/* Makes [start, start + bytes) of a reused region read as zero, paying for the pages its last
 * user touched only. mincore tells which pages are resident: those are cleared with memset (no
 * fault: they are in memory). A page that is not resident either was never touched, and reads as
 * zero already, or was swapped out with its data, so each run of them is dropped with
 * MADV_DONTNEED, after which it too reads as zero (a private anonymous mapping's contract). Both
 * are exact, so the result never depends on what the previous user did. If mincore fails, the
 * whole range is cleared. */
static void region_clear(void *start, size_t bytes)
{
    enum { CHUNK_PAGES = 512 };
    unsigned char resident[CHUNK_PAGES];
    size_t page_bytes = page_size_bytes();
    unsigned char *base = start;
    size_t pages = page_round(bytes) / page_bytes;
    for (size_t first = 0; first < pages; first += CHUNK_PAGES) {
        size_t count = pages - first < CHUNK_PAGES ? pages - first : CHUNK_PAGES;
        unsigned char *chunk = base + first * page_bytes;
        size_t chunk_bytes = first + count == pages ? bytes - first * page_bytes : count * page_bytes;
        if (mincore(chunk, count * page_bytes, resident) != 0) {
            memset(chunk, 0, chunk_bytes);
            continue;
        }
        for (size_t run = 0; run < count;) {
            bool in_core = (resident[run] & 1u) != 0;
            size_t end = run + 1;
            while (end < count && ((resident[end] & 1u) != 0) == in_core)
                end++;
            size_t run_bytes = (end == count ? chunk_bytes : end * page_bytes) - run * page_bytes;
            if (in_core || madvise(chunk + run * page_bytes, page_round(run_bytes), MADV_DONTNEED) != 0)
                memset(chunk + run * page_bytes, 0, run_bytes);
            run = end;
        }
    }
}

void *ks_region_map_zeroed(size_t bytes, size_t align_bytes)
{
    bool reused;
    void *region = region_map(bytes, align_bytes, &reused);
    if (region != NULL && reused)
        region_clear(region, bytes);
    return region;
}

void ks_region_unmap(void *region, size_t bytes)
{
    if (region == NULL)
        return;
    size_t mapped_bytes = ks_region_mapping_bytes(bytes);
    if (mapped_bytes > KS_REGION_CACHE_MAX_BYTES || !region_protect(region, page_round(bytes), mapped_bytes, false)) {
        munmap(region, mapped_bytes);
        return;
    }
    cached_region evicted[KS_REGION_CACHE_SLOTS];
    unsigned evicted_count = 0;
    pthread_mutex_lock(&cache_lock);
    while (cache_count > 0 &&
           (cache_count == KS_REGION_CACHE_SLOTS || cache_bytes + mapped_bytes > KS_REGION_CACHE_TOTAL_BYTES)) {
        evicted[evicted_count++] = cache[0];
        cache_bytes -= cache[0].bytes;
        for (unsigned later = 1; later < cache_count; later++)
            cache[later - 1] = cache[later];
        cache_count--;
    }
    cache[cache_count++] = (cached_region){.start = region, .bytes = mapped_bytes};
    cache_bytes += mapped_bytes;
    pthread_mutex_unlock(&cache_lock);
    for (unsigned index = 0; index < evicted_count; index++)
        region_release(evicted[index].start, evicted[index].bytes);
}

size_t ks_region_cache_trim(void)
{
    cached_region taken[KS_REGION_CACHE_SLOTS];
    pthread_mutex_lock(&cache_lock);
    unsigned taken_count = cache_count;
    size_t taken_bytes = cache_bytes;
    for (unsigned index = 0; index < cache_count; index++)
        taken[index] = cache[index];
    cache_count = 0;
    cache_bytes = 0;
    pthread_mutex_unlock(&cache_lock);
    for (unsigned index = 0; index < taken_count; index++)
        region_release(taken[index].start, taken[index].bytes);
    return taken_bytes;
}

size_t ks_region_cache_bytes(void)
{
    pthread_mutex_lock(&cache_lock);
    size_t bytes = cache_bytes;
    pthread_mutex_unlock(&cache_lock);
    return bytes;
}
