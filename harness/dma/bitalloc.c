/*
 * bitalloc.c -- a bitmap range allocator, in the manner of Linux's genalloc: one bit per unit
 * (a physical page, an IOVA page, a swiotlb slot), set while allocated.
 *
 * An allocation of n units aligned to a finds the first clear bit at or after the search point,
 * rounds it up to the alignment and checks that the n bits from there are clear, skipping past
 * the first set bit otherwise; the scans go a 64-bit word at a time (count-trailing-zeros on the
 * word or its complement). Searching from a caller-given point (next-fit, or a random point to
 * scatter pages) and then from the bottom of the range keeps it first-fit in the worst case.
 * Cost: O(bits / 64) per allocation in the worst case, O(n / 64) to set or clear; memory one bit
 * per unit (8 GiB of emulated RAM in 4 KiB pages: 256 KiB). Not thread-safe.
 */
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"

#define WORD_BITS 64u

NTSTATUS ks_bitalloc_init(ks_bitalloc *bitalloc, uint64_t bits, ks_error *err)
{
    memset(bitalloc, 0, sizeof *bitalloc);
    uint64_t words = (bits + WORD_BITS - 1u) / WORD_BITS;
    bitalloc->words = calloc(words == 0 ? 1 : words, sizeof *bitalloc->words);
    if (bitalloc->words == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "bitalloc: no memory for %llu bits",
                            (unsigned long long)bits);
    bitalloc->bits = bits;
    return STATUS_SUCCESS;
}

void ks_bitalloc_destroy(ks_bitalloc *bitalloc)
{
    free(bitalloc->words);
    memset(bitalloc, 0, sizeof *bitalloc);
}

bool ks_bitalloc_test(const ks_bitalloc *bitalloc, uint64_t bit)
{
    return bit < bitalloc->bits && (bitalloc->words[bit / WORD_BITS] >> (bit % WORD_BITS) & 1u) != 0;
}

/* First bit >= pos and < hi whose value is `want`, or hi. */
static uint64_t find_next(const ks_bitalloc *bitalloc, uint64_t pos, uint64_t hi, bool want)
{
    while (pos < hi) {
        uint64_t word = bitalloc->words[pos / WORD_BITS];
        if (!want)
            word = ~word;
        word &= ~(uint64_t)0 << (pos % WORD_BITS);
        if (word != 0) {
            uint64_t found = ks_dma_align_down(pos, WORD_BITS) + (uint64_t)__builtin_ctzll(word);
            return found < hi ? found : hi;
        }
        pos = ks_dma_align_down(pos, WORD_BITS) + WORD_BITS;
    }
    return hi;
}

static void set_range(ks_bitalloc *bitalloc, uint64_t start, uint64_t count, bool value)
{
    uint64_t pos = start, end = start + count;
    while (pos < end) {
        unsigned shift = (unsigned)(pos % WORD_BITS);
        uint64_t span = WORD_BITS - shift < end - pos ? WORD_BITS - shift : end - pos;
        uint64_t mask = (span == WORD_BITS ? ~(uint64_t)0 : (((uint64_t)1 << span) - 1u)) << shift;
        if (value)
            bitalloc->words[pos / WORD_BITS] |= mask;
        else
            bitalloc->words[pos / WORD_BITS] &= ~mask;
        pos += span;
    }
    if (value)
        bitalloc->used_bits += count;
    else
        bitalloc->used_bits -= count;
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
    if (start != KS_BITALLOC_NONE)
        set_range(bitalloc, start, count, true);
    return start;
}

void ks_bitalloc_free(ks_bitalloc *bitalloc, uint64_t start, uint64_t count)
{
    if (count == 0 || start >= bitalloc->bits || bitalloc->bits - start < count)
        return;
    set_range(bitalloc, start, count, false);
}
