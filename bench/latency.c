/*
 * latency.c -- the latency pass (latency.h): batch means for the body, single operations in
 * preemption-checked chunks for the tails.
 *
 * Both passes run the workload from where the timed loop left it, for the same number of units
 * (at most latency_ops operations, and no more units than the timed loop ran), and stop after
 * max_ns except for prodcons, whose producer and consumer must run the same count: their batches
 * and chunks are cut the same way on both threads, since the cuts depend on the unit count only.
 *
 * The timer's median cost is subtracted from every sample and a sample never goes below zero; a
 * batch's subtraction is spread over its operations, so its error is the timer's step divided by
 * batch_ops.
 */
#include "latency.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "timer.h"

static uint64_t units_for_ops(uint32_t ops, uint32_t ops_per_unit)
{
    uint64_t units = (ops + ops_per_unit - 1u) / ops_per_unit;
    return units == 0 ? 1 : units;
}

uint64_t ks_latency_involuntary_switches(void)
{
    struct rusage usage;
    if (getrusage(RUSAGE_THREAD, &usage) != 0)
        return 0;
    return (uint64_t)usage.ru_nivcsw;
}

bool ks_latency_init(ks_latency *latency, uint32_t ops_per_unit)
{
    memset(latency, 0, sizeof *latency);
    if (ops_per_unit == 0)
        ops_per_unit = 1;
    ks_histogram_reset(&latency->batch_ps);
    ks_histogram_reset(&latency->op_ns);
    uint64_t chunk_units = units_for_ops(KS_LATENCY_CHUNK_OPS, ops_per_unit);
    latency->sample_capacity = (uint32_t)(chunk_units * ops_per_unit);
    latency->sample_ticks = malloc(latency->sample_capacity * sizeof *latency->sample_ticks);
    latency->batch_ops = (uint32_t)(units_for_ops(KS_LATENCY_BATCH_OPS, ops_per_unit) * ops_per_unit);
    latency->disturbances = ks_latency_involuntary_switches;
    return latency->sample_ticks != NULL;
}

void ks_latency_free(ks_latency *latency)
{
    free(latency->sample_ticks);
    latency->sample_ticks = NULL;
}

static uint64_t timer_cost_ps(void)
{
    return (uint64_t)(ks_timer_state.cost_median_ns * 1000.0 + 0.5);
}

static bool out_of_time(const ks_latency_plan *plan, uint64_t start_ns)
{
    return !plan->exact_units && ks_timer_clock_ns() - start_ns > plan->max_ns;
}

/* Body: untimed kernels between two reads, the mean per op recorded in picoseconds. */
static void measure_batches(ks_latency *latency, ks_bench_run *run, const ks_latency_plan *plan)
{
    uint64_t batch_units = units_for_ops(KS_LATENCY_BATCH_OPS, plan->ops_per_unit);
    uint64_t cost_ps = timer_cost_ps();
    uint64_t start_ns = ks_timer_clock_ns();
    for (uint64_t done = 0; done < plan->units;) {
        uint64_t units = plan->units - done < batch_units ? plan->units - done : batch_units;
        uint64_t start = ks_timer_read();
        plan->untimed(run, units);
        uint64_t elapsed_ps = ks_timer_elapsed_ps(start, ks_timer_read());
        elapsed_ps = elapsed_ps > cost_ps ? elapsed_ps - cost_ps : 0;
        ks_histogram_record(&latency->batch_ps, elapsed_ps / (units * plan->ops_per_unit));
        done += units;
        if (out_of_time(plan, start_ns))
            break;
    }
}

/* Tails: timed kernels in chunks; a chunk during which the thread was switched out keeps only its
 * maximum. */
static void measure_chunks(ks_latency *latency, ks_bench_run *run, const ks_latency_plan *plan)
{
    uint64_t chunk_units = latency->sample_capacity / (plan->ops_per_unit ? plan->ops_per_unit : 1u);
    uint64_t cost_ns = (uint64_t)(ks_timer_state.cost_median_ns + 0.5);
    uint64_t start_ns = ks_timer_clock_ns();
    for (uint64_t done = 0; done < plan->units;) {
        uint64_t units = plan->units - done < chunk_units ? plan->units - done : chunk_units;
        run->op_samples = (ks_op_samples){latency->sample_ticks, 0, latency->sample_capacity, 0};
        uint64_t switches_before = latency->disturbances();
        plan->timed(run, units);
        bool preempted = latency->disturbances() != switches_before;
        latency->op_samples_overflowed += run->op_samples.overflowed;
        latency->chunks++;
        latency->preempted_chunks += preempted;
        for (uint32_t index = 0; index < run->op_samples.count; index++) {
            uint64_t elapsed_ns = ks_timer_elapsed_ns(0, latency->sample_ticks[index]);
            elapsed_ns = elapsed_ns > cost_ns ? elapsed_ns - cost_ns : 0;
            if (elapsed_ns > latency->op_max_all_ns)
                latency->op_max_all_ns = elapsed_ns;
            if (preempted)
                latency->op_samples_disturbed++;
            else
                ks_histogram_record(&latency->op_ns, elapsed_ns);
        }
        done += units;
        if (out_of_time(plan, start_ns))
            break;
    }
    run->op_samples = (ks_op_samples){NULL, 0, 0, 0};
}

void ks_latency_measure(ks_latency *latency, ks_bench_run *run, const ks_latency_plan *plan)
{
    if (plan->units == 0 || plan->ops_per_unit == 0)
        return;
    measure_batches(latency, run, plan);
    measure_chunks(latency, run, plan);
}

void ks_latency_merge(ks_latency *into, const ks_latency *from)
{
    ks_histogram_merge(&into->batch_ps, &from->batch_ps);
    ks_histogram_merge(&into->op_ns, &from->op_ns);
    if (from->op_max_all_ns > into->op_max_all_ns)
        into->op_max_all_ns = from->op_max_all_ns;
    into->op_samples_disturbed += from->op_samples_disturbed;
    into->op_samples_overflowed += from->op_samples_overflowed;
    into->chunks += from->chunks;
    into->preempted_chunks += from->preempted_chunks;
    if (from->batch_ops > into->batch_ops)
        into->batch_ops = from->batch_ops;
}
