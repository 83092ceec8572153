/*
 * rangemap.c -- an ordered map of [start, end) ranges that may overlap: the adapter's index of
 * mapping pieces by device address and by CPU address, and the frame registry's regions.
 *
 * A sorted array (by start, then insertion order) with binary search. Overlaps are allowed
 * because the checker must see them (the same memory mapped twice is a reportable bug, and
 * without an IOMMU both mappings have the same bus address), so a query for [a, b) starts at the
 * first entry whose start is >= a - max_span, max_span being the longest range present, and
 * walks forward while start < b. Lookup O(log n + k) for k candidates, insert and remove O(n) by
 * memmove of 24-byte entries, which for the hundreds to few thousands of live mappings a device
 * has costs less than a tree's pointer chasing. max_span is recomputed (O(n)) only when the last
 * range of that length leaves: mappings are mostly of one length (a page, a frame), and
 * recomputing whenever one of them left made tearing down n of them O(n^2) -- a third of
 * fuzz_alloc_dma_sg's time on a one-byte input. Not thread-safe.
 */
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"

void ks_rangemap_init(ks_rangemap *map)
{
    memset(map, 0, sizeof *map);
}

void ks_rangemap_destroy(ks_rangemap *map)
{
    free(map->items);
    memset(map, 0, sizeof *map);
}

/* First index whose start is >= key. */
static size_t lower_bound(const ks_rangemap *map, uint64_t key)
{
    size_t lo = 0, hi = map->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2u;
        if (map->items[mid].start < key)
            lo = mid + 1u;
        else
            hi = mid;
    }
    return lo;
}

NTSTATUS ks_rangemap_insert(ks_rangemap *map, uint64_t start, uint64_t end, void *value)
{
    if (end <= start)
        return STATUS_INVALID_PARAMETER;
    if (map->count == map->capacity) {
        size_t capacity = map->capacity == 0 ? 16u : map->capacity * 2u;
        ks_range *items = realloc(map->items, capacity * sizeof *items);
        if (items == NULL)
            return STATUS_INSUFFICIENT_RESOURCES;
        map->items = items;
        map->capacity = capacity;
    }
    /* After every entry with the same start: insertion order among equals. */
    size_t index = lower_bound(map, start);
    while (index < map->count && map->items[index].start == start)
        index++;
    memmove(&map->items[index + 1u], &map->items[index], (map->count - index) * sizeof *map->items);
    map->items[index] = (ks_range){.start = start, .end = end, .value = value};
    map->count++;
    if (end - start > map->max_span) {
        map->max_span = end - start;
        map->max_span_count = 1;
    } else if (end - start == map->max_span) {
        map->max_span_count++;
    }
    return STATUS_SUCCESS;
}

static void recompute_max_span(ks_rangemap *map)
{
    map->max_span = 0;
    map->max_span_count = 0;
    for (size_t i = 0; i < map->count; i++) {
        uint64_t span = map->items[i].end - map->items[i].start;
        if (span > map->max_span) {
            map->max_span = span;
            map->max_span_count = 1;
        } else if (span == map->max_span) {
            map->max_span_count++;
        }
    }
}

bool ks_rangemap_remove(ks_rangemap *map, uint64_t start, void *value)
{
    for (size_t index = lower_bound(map, start); index < map->count && map->items[index].start == start; index++) {
        if (map->items[index].value != value)
            continue;
        uint64_t span = map->items[index].end - map->items[index].start;
        memmove(&map->items[index], &map->items[index + 1u], (map->count - index - 1u) * sizeof *map->items);
        map->count--;
        if (span == map->max_span && --map->max_span_count == 0)
            recompute_max_span(map);
        return true;
    }
    return false;
}

size_t ks_rangemap_next_overlap(const ks_rangemap *map, size_t from, uint64_t start, uint64_t end)
{
    for (size_t index = from; index < map->count && map->items[index].start < end; index++)
        if (map->items[index].end > start)
            return index;
    return map->count;
}

size_t ks_rangemap_first_overlap(const ks_rangemap *map, uint64_t start, uint64_t end)
{
    uint64_t from_key = start > map->max_span ? start - map->max_span : 0;
    return ks_rangemap_next_overlap(map, lower_bound(map, from_key), start, end);
}
