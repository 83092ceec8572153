#!/usr/bin/env python3
"""generate_gate.py -- writes the reports tests/test_bench_tools.c uses to check bench/compare.py's
gate: the noise floor, Benjamini-Hochberg, the relative view and quick reports. Deterministic:
rerunning it rewrites the same files. (generate.py writes the smaller reports of the other tests;
its entry and aggregate writers are reused here.)

A suite of 21 benchmarks: lifo_pair, random_churn and stream_ring at 4 KiB, each with the bound
(inline_freelist) and six allocators, 5 repetitions 0.3% apart, except random_churn/jemalloc/4096,
whose repetitions spread +-14% (a noisy benchmark).

  gate_base.json         the suite
  gate_lone.json         lifo_pair/tlsf/4096 1.30x: raw p 0.004, but q = 0.004 x 21 = 0.083
  gate_allocator.json    tlsf 1.30x in all three workloads: q = 0.004 x 21 / 3 = 0.028
  gate_base9.json        the suite with 9 repetitions
  gate_lone9.json        ... and lifo_pair/tlsf/4096 1.30x: p 2e-5, a lone regression is caught
  gate_noisy.json        random_churn/{pool,tlsf,jemalloc}/4096 1.35x: the noisy jemalloc's
                         repetitions separate (p 0.004) but 1.35x is within 3 x its noise floor
  gate_aa2.json          an A/A partner of gate_base: lifo_pair/tlsf/4096 came out 1.35x slower
  gate_slower_box.json   everything 1.40x, the bound included, same host: a slower machine
  gate_other_host.json   the same on a host and CPU named differently
  gate_other_host_pool.json  ... and pool a further 1.15x slower in all three workloads
  gate_group_load.json   lifo_pair, the bound included, 1.30x: its times moved, its ratios to the
                         bound did not (the bound moved 1.09x over the suite, within THRESHOLD)
  gate_bound_blip.json   lifo_pair's bound alone 0.78x: the ratios moved, the times did not
  gate_quick.json        the suite with 1 repetition (make bench-quick)
  gate_quick_slow.json   ... with lifo_pair/pool/4096 1.30x

A wide suite of 50 benchmarks with 4 repetitions: five workloads at 64 B and 4 KiB (10 groups),
each with the bound and four allocators. 4 vs 4 repetitions give p >= 1/70, so no benchmark can
reach q < 0.05 unless more than 11 of the 40 regress together; the test of an allocator against
its peers across the 10 groups can (p = 2^-10).

  gate_wide_base.json    the wide suite
  gate_wide_pool.json    pool 1.15x slower in all 10 groups: only its peers test shows it
  gate_wide_load.json    every benchmark of a group, the bound included, 1.00x to 1.36x slower
                         group by group (a load that hits workloads unevenly): nothing regressed
"""
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the fixtures
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from generate import aggregates, entry  # noqa: E402

# Counters the gate does not read: left out to keep the files small.
UNREAD = ("lat_p50_ns", "lat_p99_ns", "lat_p999_ns", "lat_max_ns", "reserved_bytes", "live_bytes",
          "rss_growth_bytes", "allocation_failures_per_op", "family_index", "per_family_instance_index")

WORKLOADS = {"lifo_pair": 1.0, "random_churn": 5.0, "stream_ring": 3.0}
# ns per iteration (two operations) in lifo_pair; the other workloads scale it.
ALLOCATORS = {"inline_freelist": 0.70, "pool": 2.80, "tlsf": 20.0, "buddy": 30.0, "jemalloc": 21.0,
              "system": 40.0, "magazine": 8.0}
QUIET = [0.000, 0.003, -0.002, 0.004, -0.003, 0.001, -0.001, 0.002, -0.004]
NOISY_NAME = "random_churn/jemalloc/4096"
NOISY = [1.00, 0.86, 1.12, 0.88, 1.14]
CONTEXT = {
    "date": "2024-01-01T00:00:00+00:00", "host_name": "fixture", "executable": "ksalloc-bench",
    "num_cpus": 2, "mhz_per_cpu": 2000, "cpu_scaling_enabled": False, "caches": [],
    "load_avg": [0.1, 0.1, 0.1], "library_build_type": "release", "ks_suite": "default",
    "ks_baseline": "inline_freelist", "cpu": "Fixture CPU", "ks_cpu": "Fixture CPU",
    "repetitions_interleaved": "yes",
}


WIDE_WORKLOADS = {"lifo_pair": 1.0, "fifo_batch": 4.0, "random_churn": 5.0, "stream_ring": 3.0, "mixed_heap": 6.0}
WIDE_ALLOCATORS = {"inline_freelist": 0.70, "pool": 2.80, "tlsf": 20.0, "buddy": 30.0, "system": 40.0}
WIDE_SIZES = {"64": 1.0, "4096": 1.2}


def names(workloads=WORKLOADS, allocators=ALLOCATORS, sizes=("4096",)):
    return ["%s/%s/%s" % (workload, allocator, size) for workload in workloads for size in sizes
            for allocator in allocators]


def report(reps=5, scale=None, everything=1.0, context=None, wide=False):
    benchmarks = []
    workloads, allocators = (WIDE_WORKLOADS, WIDE_ALLOCATORS) if wide else (WORKLOADS, ALLOCATORS)
    for name in names(workloads, allocators, WIDE_SIZES if wide else ("4096",)):
        workload, allocator, size = name.split("/")
        base_time = (allocators[allocator] * workloads[workload] * (WIDE_SIZES[size] if wide else 1.0)
                     * everything * (scale or {}).get(name, 1.0))
        runs = []
        for rep in range(reps):
            factor = NOISY[rep] if name == NOISY_NAME and reps == 5 else 1 + QUIET[rep]
            run = entry(name, rep, reps, base_time * factor, 2)
            runs.append({key: value for key, value in run.items() if key not in UNREAD})
        benchmarks += runs + (aggregates(runs) if reps > 1 else [])  # one run: no aggregates
    merged = dict(CONTEXT, **(context or {}))
    if reps == 1:
        merged["ks_suite"] = "quick"
    return {"context": merged, "benchmarks": benchmarks}


def write(name, data):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as handle:
        json.dump(data, handle, separators=(",", ":"))  # one line: the wide reports are large
        handle.write("\n")


def main():
    tlsf_everywhere = {"%s/tlsf/4096" % workload: 1.30 for workload in WORKLOADS}
    pool_everywhere = {"%s/pool/4096" % workload: 1.15 for workload in WORKLOADS}
    other_host = {"host_name": "elsewhere", "cpu": "Other CPU", "ks_cpu": "Other CPU"}
    write("gate_base.json", report())
    write("gate_lone.json", report(scale={"lifo_pair/tlsf/4096": 1.30}))
    write("gate_allocator.json", report(scale=tlsf_everywhere))
    write("gate_base9.json", report(reps=9))
    write("gate_lone9.json", report(reps=9, scale={"lifo_pair/tlsf/4096": 1.30}))
    write("gate_noisy.json", report(scale={"random_churn/%s/4096" % name: 1.35 for name in ("pool", "tlsf", "jemalloc")}))
    write("gate_aa2.json", report(scale={"lifo_pair/tlsf/4096": 1.35}))
    write("gate_slower_box.json", report(everything=1.40))
    write("gate_other_host.json", report(everything=1.40, context=other_host))
    write("gate_other_host_pool.json", report(everything=1.40, scale=pool_everywhere, context=other_host))
    write("gate_group_load.json", report(scale={name: 1.30 for name in names() if name.startswith("lifo_pair/")}))
    write("gate_bound_blip.json", report(scale={"lifo_pair/inline_freelist/4096": 0.78}))
    write("gate_quick.json", report(reps=1))
    write("gate_quick_slow.json", report(reps=1, scale={"lifo_pair/pool/4096": 1.30}))
    wide_names = names(WIDE_WORKLOADS, WIDE_ALLOCATORS, WIDE_SIZES)
    write("gate_wide_base.json", report(reps=4, wide=True))
    write("gate_wide_pool.json", report(reps=4, wide=True,
                                        scale={name: 1.15 for name in wide_names if "/pool/" in name}))
    load = {}
    for index, name in enumerate(wide_names):
        load[name] = 1.0 + 0.04 * (index // len(WIDE_ALLOCATORS))  # 1.00, 1.04, ... 1.36 by group
    write("gate_wide_load.json", report(reps=4, wide=True, scale=load))


if __name__ == "__main__":
    main()
