/*
 * test_bench_latency.c -- the benchmarks' latency pass (bench/latency.c), with kernels whose cost
 * is set by the timer itself and a disturbance counter that plants a preemption:
 *   - batch means resolve a 2 ns difference per operation although the timer steps in 10-20 ns,
 *     and an empty batch reads as (almost) nothing, because one read's cost is subtracted;
 *   - a chunk in which the thread was preempted keeps its maximum but leaves the tail
 *     percentiles, while a slow operation in an undisturbed chunk stays in them;
 *   - samples past a chunk's buffer are counted, never written;
 *   - a pass stops at its deadline, except prodcons's, which must run every unit;
 *   - merging two threads' figures adds them.
 * The spin kernels measure the method, not the machine: what they take is fixed in timer ticks.
 *
 * bench/ is not part of libksalloc, so the files under test are compiled into this test directly
 * (histogram.c comes in through test_bench_histogram.c, in the same test binary).
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>

#include "../bench/latency.c"
#include "../bench/timer.c"

static ks_latency latency, other;
static ks_bench_run run;

static uint64_t ticks_for_ps(uint64_t ps)
{
    return ks_timer_state.use_tsc ? (uint64_t)((double)ps * ks_timer_state.tsc_per_ns / 1000.0) : ps / 1000u;
}

/* Spins until the timer has advanced by units * spin_ps_per_unit. */
static uint64_t spin_ps_per_unit;
static void spin_kernel(ks_bench_run *unused, uint64_t units)
{
    (void)unused;
    uint64_t ticks = ticks_for_ps(units * spin_ps_per_unit);
    uint64_t start = ks_timer_read();
    while (ks_timer_read() - start < ticks)
        ;
}

static void empty_kernel(ks_bench_run *unused_run, uint64_t unused_units)
{
    (void)unused_run;
    (void)unused_units;
}

static double batch_p50_ns(ks_bench_kernel kernel, uint64_t ps_per_op)
{
    spin_ps_per_unit = ps_per_op;
    ks_latency_free(&latency);
    cr_assert(ks_latency_init(&latency, 1));
    ks_latency_plan plan = {kernel, kernel, 1, 20000, UINT64_MAX, false};
    measure_batches(&latency, &run, &plan);
    cr_assert_eq(latency.batch_ps.count, 20000 / KS_LATENCY_BATCH_OPS + (20000 % KS_LATENCY_BATCH_OPS != 0));
    return (double)ks_histogram_percentile(&latency.batch_ps, 50.0) / 1000.0;
}

static void setup(void)
{
    ks_timer_calibrate();
    cr_assert(ks_latency_init(&latency, 1));
    cr_assert(ks_latency_init(&other, 1));
}

static void teardown(void)
{
    ks_latency_free(&latency);
    ks_latency_free(&other);
}

TestSuite(bench_latency, .init = setup, .fini = teardown);

Test(bench_latency, batch_means_resolve_below_the_timer_step)
{
    double three = batch_p50_ns(spin_kernel, 3000), five = batch_p50_ns(spin_kernel, 5000);
    cr_log_info("timer: %s, resolution %.1f ns, read %.1f ns; 3 ns/op reads %.3f, 5 ns/op reads %.3f",
                ks_timer_state.source, ks_timer_state.resolution_ns, ks_timer_state.cost_median_ns, three, five);
    /* The spin itself reads the timer at least twice and stops up to a step late: at most three
     * reads and a step per batch beyond its target. */
    double slack_ns = (3.0 * ks_timer_state.cost_median_ns + ks_timer_state.resolution_ns) / KS_LATENCY_BATCH_OPS;
    cr_assert(three >= 3.0 - 0.05 && three <= 3.0 + slack_ns, "3 ns/op read as %.3f (slack %.3f)", three, slack_ns);
    cr_assert(five >= 5.0 - 0.05 && five <= 5.0 + slack_ns, "5 ns/op read as %.3f (slack %.3f)", five, slack_ns);
    cr_assert(five - three > 1.4 && five - three < 2.6, "2 ns/op apart, below the timer's %.0f ns step, read as %.3f",
              ks_timer_state.resolution_ns, five - three);
}

Test(bench_latency, an_empty_batch_reads_as_almost_nothing)
{
    /* Without the read's cost subtracted, an empty batch would read as cost / 64 per op. */
    double empty = batch_p50_ns(empty_kernel, 0);
    double unsubtracted = ks_timer_state.cost_median_ns / KS_LATENCY_BATCH_OPS;
    cr_assert_lt(empty, unsubtracted * 0.75, "an empty batch reads %.3f ns/op; one read is %.3f ns/op", empty,
                 unsubtracted);
}

/* The timed kernel's samples: 100 ns each, one 5 us in chunk 0, and 1 ms each in chunk 2; the
 * planted disturbance counter reports a preemption during chunk 2 only. */
static unsigned chunk_calls, disturbance_reads;
static void sample_kernel(ks_bench_run *target, uint64_t units)
{
    for (uint64_t unit = 0; unit < units; unit++) {
        uint64_t ps = chunk_calls == 2 ? UINT64_C(1000000000) : chunk_calls == 0 && unit == 7 ? 5000000u : 100000u;
        ks_op_samples_add(&target->op_samples, 0, ticks_for_ps(ps));
    }
    chunk_calls++;
}

static uint64_t planted_disturbances(void)
{
    /* Read before and after every chunk: reads 4 and 5 bracket chunk 2. */
    return disturbance_reads++ >= 5 ? 1 : 0;
}

Test(bench_latency, a_preempted_chunk_keeps_only_its_maximum)
{
    chunk_calls = disturbance_reads = 0;
    latency.disturbances = planted_disturbances;
    uint64_t chunk = latency.sample_capacity;
    ks_latency_plan plan = {spin_kernel, sample_kernel, 1, 4 * chunk, UINT64_MAX, false};
    measure_chunks(&latency, &run, &plan);
    cr_assert_eq(latency.chunks, 4);
    cr_assert_eq(latency.preempted_chunks, 1);
    cr_assert_eq(latency.op_samples_disturbed, chunk);
    cr_assert_eq(latency.op_ns.count, 3 * chunk);
    uint64_t max_ns = ks_histogram_percentile(&latency.op_ns, 100.0);
    cr_assert(max_ns > 4900 && max_ns < 5100, "the undisturbed 5 us sample is the tail's max (%llu ns)",
              (unsigned long long)max_ns);
    cr_assert_gt(latency.op_max_all_ns, 990000, "the preempted chunk's 1 ms still counts in max_all");
    uint64_t p50 = ks_histogram_percentile(&latency.op_ns, 50.0);
    uint64_t expected = 100 - (uint64_t)(ks_timer_state.cost_median_ns + 0.5);
    cr_assert(p50 + 2 >= expected && p50 <= expected + 2, "p50 %llu ns: 100 ns less one read (%llu)",
              (unsigned long long)p50, (unsigned long long)expected);
    cr_assert_null(run.op_samples.ticks, "the buffer is detached after the pass");
}

static void greedy_kernel(ks_bench_run *target, uint64_t units)
{
    for (uint64_t unit = 0; unit < units * 3; unit++)
        ks_op_samples_add(&target->op_samples, 0, 1);
}

Test(bench_latency, samples_past_the_buffer_are_counted_not_written)
{
    ks_latency_plan plan = {spin_kernel, greedy_kernel, 1, latency.sample_capacity, UINT64_MAX, false};
    measure_chunks(&latency, &run, &plan);
    cr_assert_eq(latency.op_ns.count + latency.op_samples_disturbed, latency.sample_capacity);
    cr_assert_eq(latency.op_samples_overflowed, 2 * (uint64_t)latency.sample_capacity);
}

Test(bench_latency, a_pass_stops_at_its_deadline_unless_every_unit_must_run)
{
    spin_ps_per_unit = 0;
    ks_latency_plan plan = {spin_kernel, spin_kernel, 1, 100 * KS_LATENCY_BATCH_OPS, 0, false};
    ks_latency_measure(&latency, &run, &plan);
    cr_assert_eq(latency.batch_ps.count, 1, "a deadline of 0 stops after the first batch");
    cr_assert_eq(latency.chunks, 1);
    plan.exact_units = true;
    ks_latency_measure(&other, &run, &plan);
    cr_assert_eq(other.batch_ps.count, 100, "prodcons runs every batch");
    cr_assert_eq(other.chunks, (100 * KS_LATENCY_BATCH_OPS + other.sample_capacity - 1) / other.sample_capacity);
    uint64_t batches = latency.batch_ps.count + other.batch_ps.count, chunks = latency.chunks + other.chunks;
    ks_latency_merge(&latency, &other);
    cr_assert_eq(latency.batch_ps.count, batches);
    cr_assert_eq(latency.chunks, chunks);
}
