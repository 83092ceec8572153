/*
 * histogram.h -- a log-linear latency histogram in the manner of HdrHistogram: fixed memory, O(1)
 * record, percentiles, and merging (one histogram per thread, merged at the end).
 *
 * Values (nanoseconds) below 2^P are counted exactly, one bucket each. Above, every power of two
 * [2^m, 2^(m+1)) is cut into 2^(P-1) equal sub-buckets, so a bucket is never wider than 1/2^(P-1)
 * of the values it holds: with P = 7, percentiles are exact to 1.6% (the relative error of
 * HdrHistogram with about two significant digits). Values from 2^KS_HISTOGRAM_MAX_BITS on land in
 * the last bucket and are counted in `clamped`; min and max are kept exactly.
 *
 * A percentile is reported as the highest value of the bucket the rank falls in (as HdrHistogram
 * does), capped at the exact maximum, so it never understates a tail.
 */
#ifndef KS_BENCH_HISTOGRAM_H
#define KS_BENCH_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

#define KS_HISTOGRAM_PRECISION_BITS 7u /* P: 2^P exact buckets, 2^(P-1) sub-buckets per octave */
#define KS_HISTOGRAM_MAX_BITS 40u      /* 2^40 ns, about 18 minutes, is the largest distinct value */
#define KS_HISTOGRAM_EXACT (1u << KS_HISTOGRAM_PRECISION_BITS)
#define KS_HISTOGRAM_HALF (KS_HISTOGRAM_EXACT / 2u)
#define KS_HISTOGRAM_BUCKETS \
    (KS_HISTOGRAM_EXACT + (KS_HISTOGRAM_MAX_BITS - KS_HISTOGRAM_PRECISION_BITS) * KS_HISTOGRAM_HALF)

_Static_assert(KS_HISTOGRAM_PRECISION_BITS >= 2 && KS_HISTOGRAM_PRECISION_BITS < KS_HISTOGRAM_MAX_BITS,
               "at least two exact buckets, and fewer exact bits than value bits");
_Static_assert(KS_HISTOGRAM_MAX_BITS < 64, "values are uint64_t");

typedef struct ks_histogram {
    uint64_t count;
    uint64_t sum_ns; /* saturates rather than wraps */
    uint64_t min_ns;
    uint64_t max_ns;
    uint64_t clamped; /* values >= 2^KS_HISTOGRAM_MAX_BITS, counted in the last bucket */
    uint64_t buckets[KS_HISTOGRAM_BUCKETS];
} ks_histogram;

/* Bucket of a value: exact below 2^P, then 2^(P-1) sub-buckets per power of two. */
static inline size_t ks_histogram_bucket(uint64_t value_ns)
{
    if (value_ns < KS_HISTOGRAM_EXACT)
        return (size_t)value_ns;
    unsigned msb = 63u - (unsigned)__builtin_clzll(value_ns);
    if (msb >= KS_HISTOGRAM_MAX_BITS)
        return KS_HISTOGRAM_BUCKETS - 1;
    unsigned shift = msb - KS_HISTOGRAM_PRECISION_BITS + 1u; /* value >> shift is in [HALF, EXACT) */
    size_t sub_bucket = (size_t)(value_ns >> shift) - KS_HISTOGRAM_HALF;
    return KS_HISTOGRAM_EXACT + (size_t)(shift - 1u) * KS_HISTOGRAM_HALF + sub_bucket;
}

static inline void ks_histogram_record(ks_histogram *histogram, uint64_t value_ns)
{
    histogram->buckets[ks_histogram_bucket(value_ns)]++;
    histogram->count++;
    uint64_t sum = histogram->sum_ns + value_ns;
    histogram->sum_ns = sum < value_ns ? UINT64_MAX : sum;
    if (value_ns < histogram->min_ns)
        histogram->min_ns = value_ns;
    if (value_ns > histogram->max_ns)
        histogram->max_ns = value_ns;
    if (value_ns >> KS_HISTOGRAM_MAX_BITS)
        histogram->clamped++;
}

/* Empties the histogram (min starts at UINT64_MAX so that the first record sets it). */
void ks_histogram_reset(ks_histogram *histogram);

/* Lowest and highest value that fall into bucket index (< KS_HISTOGRAM_BUCKETS). */
uint64_t ks_histogram_bucket_low(size_t index);
uint64_t ks_histogram_bucket_high(size_t index);

/* Adds every count of from into into (histograms of several threads into one). */
void ks_histogram_merge(ks_histogram *into, const ks_histogram *from);

/* The value at percentile (0..100): the highest value of the bucket holding the rank-th smallest
 * sample, rank = percentile/100 * count rounded to nearest (at least 1), capped at max;
 * 0 = min, 100 = max. 0 when the histogram is empty. */
uint64_t ks_histogram_percentile(const ks_histogram *histogram, double percentile);

/* Mean of the recorded values (0 when empty). */
double ks_histogram_mean(const ks_histogram *histogram);

#endif /* KS_BENCH_HISTOGRAM_H */
