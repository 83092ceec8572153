/*
 * histogram.c -- the cold half of the log-linear latency histogram (histogram.h): bucket bounds,
 * merging and percentiles. Recording is inline in the header because it sits between two timer
 * reads.
 *
 * Bucket layout (P = KS_HISTOGRAM_PRECISION_BITS, H = 2^(P-1)):
 *   index < 2^P          holds exactly the value index;
 *   index = 2^P + (s-1)*H + k, for shift s >= 1 and k < H, holds [(H+k) << s, ((H+k+1) << s) - 1].
 * Each octave [2^m, 2^(m+1)) with m >= P uses shift s = m - P + 1, so its H buckets are 2^s wide
 * and the relative width is at most 2^s / (H << s) = 1/H.
 *
 * Percentile: walk the cumulative counts to the bucket holding the rank-th smallest value; the
 * cost is O(buckets), paid once per reported figure, never while recording.
 */
#include "histogram.h"

#include <string.h>

_Static_assert(KS_HISTOGRAM_BUCKETS * sizeof(uint64_t) <= 32 * 1024, "a histogram stays small enough per thread");

void ks_histogram_reset(ks_histogram *histogram)
{
    memset(histogram, 0, sizeof *histogram);
    histogram->min_ns = UINT64_MAX;
}

/* Shift and sub-bucket of an index above the exact range. */
static void split_index(size_t index, unsigned *shift, uint64_t *sub_bucket)
{
    size_t offset = index - KS_HISTOGRAM_EXACT;
    *shift = (unsigned)(offset / KS_HISTOGRAM_HALF) + 1u;
    *sub_bucket = KS_HISTOGRAM_HALF + offset % KS_HISTOGRAM_HALF;
}

uint64_t ks_histogram_bucket_low(size_t index)
{
    if (index < KS_HISTOGRAM_EXACT)
        return index;
    unsigned shift;
    uint64_t sub_bucket;
    split_index(index, &shift, &sub_bucket);
    return sub_bucket << shift;
}

uint64_t ks_histogram_bucket_high(size_t index)
{
    if (index < KS_HISTOGRAM_EXACT)
        return index;
    if (index == KS_HISTOGRAM_BUCKETS - 1)
        return UINT64_MAX; /* also holds every clamped value */
    unsigned shift;
    uint64_t sub_bucket;
    split_index(index, &shift, &sub_bucket);
    return ((sub_bucket + 1) << shift) - 1;
}

void ks_histogram_merge(ks_histogram *into, const ks_histogram *from)
{
    if (from->count == 0)
        return;
    for (size_t index = 0; index < KS_HISTOGRAM_BUCKETS; index++)
        into->buckets[index] += from->buckets[index];
    into->count += from->count;
    uint64_t sum = into->sum_ns + from->sum_ns;
    into->sum_ns = sum < from->sum_ns ? UINT64_MAX : sum;
    into->clamped += from->clamped;
    if (from->min_ns < into->min_ns)
        into->min_ns = from->min_ns;
    if (from->max_ns > into->max_ns)
        into->max_ns = from->max_ns;
}

uint64_t ks_histogram_percentile(const ks_histogram *histogram, double percentile)
{
    if (histogram->count == 0)
        return 0;
    if (percentile <= 0.0)
        return histogram->min_ns;
    if (percentile >= 100.0)
        return histogram->max_ns;
    /* Rounded to the nearest rank, as HdrHistogram does: ceil() would turn 99.9% of 1000 samples,
     * 999.0000000000001 in binary floating point, into the 1000th. */
    uint64_t rank = (uint64_t)(percentile / 100.0 * (double)histogram->count + 0.5);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (size_t index = 0; index < KS_HISTOGRAM_BUCKETS; index++) {
        seen += histogram->buckets[index];
        if (seen >= rank) {
            uint64_t high = ks_histogram_bucket_high(index);
            return high < histogram->max_ns ? high : histogram->max_ns;
        }
    }
    return histogram->max_ns;
}

double ks_histogram_mean(const ks_histogram *histogram)
{
    return histogram->count == 0 ? 0.0 : (double)histogram->sum_ns / (double)histogram->count;
}
