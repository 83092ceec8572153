/*
 * test_bench_histogram.c -- the benchmarks' log-linear latency histogram (bench/histogram.c):
 * buckets tile the value range with no gap or overlap, every value lands in the bucket whose
 * bounds hold it, no bucket is wider than its stated precision, percentiles are the highest value
 * of the right bucket and never below the true percentile, merging is the same as recording
 * everything into one, and values past the range are clamped yet keep the exact maximum.
 *
 * bench/ is not part of libksalloc, so the file under test is compiled into this test directly.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>

#include "../bench/histogram.c"

static ks_histogram histogram, other, merged;

Test(bench_histogram, buckets_tile_the_range)
{
    cr_assert_eq(ks_histogram_bucket_low(0), 0);
    for (size_t index = 0; index + 1 < KS_HISTOGRAM_BUCKETS; index++) {
        uint64_t high = ks_histogram_bucket_high(index);
        cr_assert_leq(ks_histogram_bucket_low(index), high, "bucket %zu is empty", index);
        cr_assert_eq(ks_histogram_bucket_low(index + 1), high + 1, "gap or overlap after bucket %zu (high %llu)",
                     index, (unsigned long long)high);
    }
    cr_assert_eq(ks_histogram_bucket_low(KS_HISTOGRAM_BUCKETS - 1) >> (KS_HISTOGRAM_MAX_BITS - 1), 1,
                 "the last bucket starts in the top octave");
}

Test(bench_histogram, small_values_are_exact)
{
    for (uint64_t value = 0; value < KS_HISTOGRAM_EXACT; value++) {
        size_t index = ks_histogram_bucket(value);
        cr_assert_eq(ks_histogram_bucket_low(index), value);
        cr_assert_eq(ks_histogram_bucket_high(index), value);
    }
}

/* Powers of two, their neighbours and a value in between: each lands in a bucket that holds it,
 * and above the exact range that bucket is at most 1/HALF of its low bound wide (but the last,
 * which also takes everything clamped). */
Test(bench_histogram, every_value_lands_in_its_bucket)
{
    for (unsigned bit = 1; bit < KS_HISTOGRAM_MAX_BITS; bit++) {
        uint64_t power = UINT64_C(1) << bit;
        uint64_t probes[] = {power - 1, power, power + 1, power + power / 3, power * 2 - 1};
        for (size_t probe = 0; probe < sizeof probes / sizeof probes[0]; probe++) {
            uint64_t value = probes[probe];
            size_t index = ks_histogram_bucket(value);
            cr_assert_lt(index, KS_HISTOGRAM_BUCKETS);
            uint64_t low = ks_histogram_bucket_low(index), high = ks_histogram_bucket_high(index);
            cr_assert(low <= value && value <= high, "%llu in bucket %zu [%llu, %llu]", (unsigned long long)value,
                      index, (unsigned long long)low, (unsigned long long)high);
            if (low < KS_HISTOGRAM_EXACT)
                cr_assert_eq(high, low, "bucket %zu in the exact range holds one value", index);
            else if (index == KS_HISTOGRAM_BUCKETS - 1)
                cr_assert_eq(high, UINT64_MAX, "the last bucket also holds every clamped value");
            else
                cr_assert_leq((high - low + 1) * KS_HISTOGRAM_HALF, low,
                              "bucket %zu [%llu, %llu] is wider than 1/%u of its values", index,
                              (unsigned long long)low, (unsigned long long)high, KS_HISTOGRAM_HALF);
        }
    }
}

Test(bench_histogram, percentiles_of_a_uniform_distribution)
{
    ks_histogram_reset(&histogram);
    for (uint64_t value = 1; value <= 100000; value++)
        ks_histogram_record(&histogram, value);
    cr_assert_eq(histogram.count, 100000);
    cr_assert_eq(ks_histogram_percentile(&histogram, 0.0), 1);
    cr_assert_eq(ks_histogram_percentile(&histogram, 100.0), 100000);
    const double percentiles[] = {50.0, 90.0, 99.0, 99.9};
    for (size_t index = 0; index < 4; index++) {
        double exact = percentiles[index] / 100.0 * 100000.0;
        double reported = (double)ks_histogram_percentile(&histogram, percentiles[index]);
        cr_assert(reported >= exact && reported <= exact * (1.0 + 1.0 / KS_HISTOGRAM_HALF),
                  "p%g: %g reported for %g exact", percentiles[index], reported, exact);
    }
    cr_assert_float_eq(ks_histogram_mean(&histogram), 50000.5, 1e-9);
}

Test(bench_histogram, a_lone_outlier_is_the_max_not_the_p99)
{
    ks_histogram_reset(&histogram);
    for (int sample = 0; sample < 999; sample++)
        ks_histogram_record(&histogram, 20);
    ks_histogram_record(&histogram, 5000000);
    cr_assert_eq(ks_histogram_percentile(&histogram, 99.0), 20);
    cr_assert_eq(ks_histogram_percentile(&histogram, 99.9), 20);
    cr_assert_eq(ks_histogram_percentile(&histogram, 99.99), 5000000, "the top sample is exact (capped at max)");
    cr_assert_eq(histogram.max_ns, 5000000);
}

Test(bench_histogram, merge_equals_recording_into_one)
{
    ks_histogram_reset(&histogram);
    ks_histogram_reset(&other);
    ks_histogram_reset(&merged);
    uint64_t state = 12345;
    for (int sample = 0; sample < 20000; sample++) {
        state = state * 6364136223846793005u + 1442695040888963407u;
        uint64_t value = (state >> 33) % 1000000;
        ks_histogram_record(sample % 3 ? &histogram : &other, value);
        ks_histogram_record(&merged, value);
    }
    ks_histogram_merge(&histogram, &other);
    cr_assert_eq(histogram.count, merged.count);
    cr_assert_eq(histogram.sum_ns, merged.sum_ns);
    cr_assert_eq(histogram.min_ns, merged.min_ns);
    cr_assert_eq(histogram.max_ns, merged.max_ns);
    cr_assert_arr_eq(histogram.buckets, merged.buckets, sizeof merged.buckets);
}

Test(bench_histogram, values_past_the_range_are_clamped_with_an_exact_max)
{
    ks_histogram_reset(&histogram);
    uint64_t huge = UINT64_C(1) << 50;
    ks_histogram_record(&histogram, huge);
    ks_histogram_record(&histogram, 7);
    cr_assert_eq(histogram.clamped, 1);
    cr_assert_eq(histogram.buckets[KS_HISTOGRAM_BUCKETS - 1], 1);
    cr_assert_eq(ks_histogram_percentile(&histogram, 100.0), huge);
    cr_assert_eq(ks_histogram_percentile(&histogram, 99.0), huge, "rank 2 of 2 is the clamped sample, reported exactly");
    cr_assert_eq(ks_histogram_percentile(&histogram, 50.0), 7);
}

Test(bench_histogram, empty_histogram_reports_zero)
{
    ks_histogram_reset(&histogram);
    cr_assert_eq(ks_histogram_percentile(&histogram, 50.0), 0);
    cr_assert_eq(ks_histogram_percentile(&histogram, 100.0), 0);
    cr_assert_float_eq(ks_histogram_mean(&histogram), 0.0, 1e-12);
}
