/*
 * bitalloc.c -- a bitmap range allocator, in the manner of Linux's genalloc: one bit per unit
 * (a physical page, an IOVA page, a swiotlb slot), set while allocated.
 *
 * An allocation of n units aligned to a finds the first clear bit at or after the search point,
 * rounds it up to the alignment and checks that the n bits from there are clear, skipping past
 * the first set bit otherwise; the scans go a 64-bit word at a time (count-trailing-zeros on the
 * word or its complement). Searching from a caller-given point (next-fit, or a random point to
 * scatter pages) and then from the bottom of the range keeps it first-fit in the worst case.
 *
 * The bitmap is two-level and lazily populated: leaves of KS_BITALLOC_LEAF_BITS bits, each made
 * (zeroed) the first time one of its bits is set, and a summary of one pointer and one count of
 * set bits per leaf. A leaf never made is all clear, and a leaf whose count is zero or full is
 * skipped whole by the scans. Why: the emulated RAM is 8 GiB (2^21 pages) and a device lives for
 * one fuzz input; a flat bitmap cost a 256 KiB zeroed allocation per device (under ASan an mmap,
 * page faults and a munmap), while an input touches a few leaves. Leaves stay until destroy, so
 * an allocate/free cycle in one leaf does not allocate again; memory is at most the flat bitmap's
 * plus 12 bytes of summary per leaf.
 * Cost: O(bits / 4096 + words scanned in partly used leaves) per allocation, O(n / 64) to set or
 * clear; memory 12 bytes per 4096 units plus 512 bytes per leaf touched. Not thread-safe.
 */
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"

#define WORD_BITS 64u
#define LEAF_WORDS (KS_BITALLOC_LEAF_BITS / WORD_BITS)

_Static_assert(KS_BITALLOC_LEAF_BITS % WORD_BITS == 0 && (KS_BITALLOC_LEAF_BITS & (KS_BITALLOC_LEAF_BITS - 1u)) == 0,
               "a leaf is a power-of-two number of whole words");
_Static_assert(KS_BITALLOC_LEAF_BITS <= UINT32_MAX, "leaf_used counts a leaf's bits in 32 bits");

NTSTATUS ks_bitalloc_init(ks_bitalloc *bitalloc, uint64_t bits, ks_error *err)
{
    memset(bitalloc, 0, sizeof *bitalloc);
    if (bits > KS_BITALLOC_MAX_BITS)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "bitalloc: %llu bits is over the limit of %llu",
                            (unsigned long long)bits, (unsigned long long)KS_BITALLOC_MAX_BITS);
    uint64_t leaf_count = bits / KS_BITALLOC_LEAF_BITS + (bits % KS_BITALLOC_LEAF_BITS != 0);
    if (leaf_count == 0)
        leaf_count = 1;
    /* One block for the summary: the leaf pointers, then the counts. */
    size_t entry_bytes = sizeof(uint64_t *) + sizeof(uint32_t);
    void *summary = leaf_count > SIZE_MAX / entry_bytes ? NULL : calloc((size_t)leaf_count, entry_bytes);
    if (summary == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "bitalloc: no memory for %llu bits",
                            (unsigned long long)bits);
    bitalloc->leaves = summary;
    bitalloc->leaf_used = (uint32_t *)(void *)(bitalloc->leaves + leaf_count);
    bitalloc->leaf_count = leaf_count;
    bitalloc->bits = bits;
    return STATUS_SUCCESS;
}

void ks_bitalloc_destroy(ks_bitalloc *bitalloc)
{
    for (uint64_t i = 0; i < bitalloc->leaf_count; i++)
        free(bitalloc->leaves[i]);
    free(bitalloc->leaves);
    memset(bitalloc, 0, sizeof *bitalloc);
}

bool ks_bitalloc_test(const ks_bitalloc *bitalloc, uint64_t bit)
{
    if (bit >= bitalloc->bits)
        return false;
    const uint64_t *leaf = bitalloc->leaves[bit / KS_BITALLOC_LEAF_BITS];
    return leaf != NULL && (leaf[bit % KS_BITALLOC_LEAF_BITS / WORD_BITS] >> (bit % WORD_BITS) & 1u) != 0;
}

uint64_t ks_bitalloc_leaves_live(const ks_bitalloc *bitalloc)
{
    return bitalloc->leaves_live;
}

/* First bit >= pos and < hi whose value is `want`, or hi. */
static uint64_t find_next(const ks_bitalloc *bitalloc, uint64_t pos, uint64_t hi, bool want)
{
    while (pos < hi) {
        uint64_t leaf_index = pos / KS_BITALLOC_LEAF_BITS;
        uint64_t leaf_end = (leaf_index + 1u) * KS_BITALLOC_LEAF_BITS;
        const uint64_t *leaf = bitalloc->leaves[leaf_index];
        uint32_t used = bitalloc->leaf_used[leaf_index];
        if (!want && leaf == NULL)
            return pos; /* a leaf never made is all clear */
        if (want ? used == 0 : used == KS_BITALLOC_LEAF_BITS) {
            pos = leaf_end; /* nothing to find in this leaf */
            continue;
        }
        uint64_t stop = leaf_end < hi ? leaf_end : hi;
        while (pos < stop) {
            uint64_t word = leaf[pos % KS_BITALLOC_LEAF_BITS / WORD_BITS];
            if (!want)
                word = ~word;
            word &= ~(uint64_t)0 << (pos % WORD_BITS);
            if (word != 0) {
                uint64_t found = ks_dma_align_down(pos, WORD_BITS) + (uint64_t)__builtin_ctzll(word);
                return found < hi ? found : hi;
            }
            pos = ks_dma_align_down(pos, WORD_BITS) + WORD_BITS;
        }
    }
    return hi;
}

/* Makes every leaf [start, start + count) touches; false if one cannot be made (the ones made
 * stay, empty: harmless, and reused by the next set). */
static bool make_leaves(ks_bitalloc *bitalloc, uint64_t start, uint64_t count)
{
    uint64_t last = (start + count - 1u) / KS_BITALLOC_LEAF_BITS;
    for (uint64_t i = start / KS_BITALLOC_LEAF_BITS; i <= last; i++) {
        if (bitalloc->leaves[i] != NULL)
            continue;
        bitalloc->leaves[i] = calloc(LEAF_WORDS, sizeof(uint64_t));
        if (bitalloc->leaves[i] == NULL)
            return false;
        bitalloc->leaves_live++;
    }
    return true;
}

/* Sets or clears the bits; when setting, every leaf they touch exists. The counts follow the
 * bits that really changed, so clearing clear bits never corrupts them. */
static void set_range(ks_bitalloc *bitalloc, uint64_t start, uint64_t count, bool value)
{
    uint64_t pos = start, end = start + count;
    while (pos < end) {
        unsigned shift = (unsigned)(pos % WORD_BITS);
        uint64_t span = WORD_BITS - shift < end - pos ? WORD_BITS - shift : end - pos;
        uint64_t mask = (span == WORD_BITS ? ~(uint64_t)0 : (((uint64_t)1 << span) - 1u)) << shift;
        uint64_t leaf_index = pos / KS_BITALLOC_LEAF_BITS;
        uint64_t *leaf = bitalloc->leaves[leaf_index];
        if (leaf != NULL) {
            uint64_t *word = &leaf[pos % KS_BITALLOC_LEAF_BITS / WORD_BITS];
            unsigned changed = (unsigned)__builtin_popcountll(value ? mask & ~*word : mask & *word);
            if (value) {
                *word |= mask;
                bitalloc->leaf_used[leaf_index] += changed;
                bitalloc->used_bits += changed;
            } else {
                *word &= ~mask;
                bitalloc->leaf_used[leaf_index] -= changed;
                bitalloc->used_bits -= changed;
            }
        }
        pos += span;
    }
}

/* First-fit over [lo, hi) from lo. */
static uint64_t search(const ks_bitalloc *bitalloc, uint64_t count, uint64_t align, uint64_t lo, uint64_t hi)
{
    uint64_t pos = ks_dma_align_up(lo, align);
    while (pos < hi && hi - pos >= count) {
        uint64_t start = find_next(bitalloc, pos, hi, false);
        if (start >= hi)
            return KS_BITALLOC_NONE;
        start = ks_dma_align_up(start, align);
        if (start >= hi || hi - start < count)
            return KS_BITALLOC_NONE;
        uint64_t taken = find_next(bitalloc, start, start + count, true);
        if (taken == start + count)
            return start;
        pos = ks_dma_align_up(taken + 1u, align);
    }
    return KS_BITALLOC_NONE;
}

uint64_t ks_bitalloc_alloc(ks_bitalloc *bitalloc, uint64_t count, uint64_t align, uint64_t lo, uint64_t hi,
                           uint64_t from)
{
    if (hi > bitalloc->bits)
        hi = bitalloc->bits;
    if (count == 0 || align == 0 || !ks_dma_is_pow2(align) || lo >= hi || hi - lo < count)
        return KS_BITALLOC_NONE;
    if (bitalloc->bits - bitalloc->used_bits < count)
        return KS_BITALLOC_NONE;
    uint64_t start = KS_BITALLOC_NONE;
    if (from > lo && from < hi)
        start = search(bitalloc, count, align, from, hi);
    if (start == KS_BITALLOC_NONE)
        start = search(bitalloc, count, align, lo, hi);
    if (start == KS_BITALLOC_NONE || !make_leaves(bitalloc, start, count))
        return KS_BITALLOC_NONE;
    set_range(bitalloc, start, count, true);
    return start;
}

void ks_bitalloc_free(ks_bitalloc *bitalloc, uint64_t start, uint64_t count)
{
    if (count == 0 || start >= bitalloc->bits || bitalloc->bits - start < count)
        return;
    set_range(bitalloc, start, count, false);
}
