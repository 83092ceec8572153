#!/usr/bin/env python3
"""generate.py -- writes the small Google Benchmark reports tests/test_bench_tools.c feeds to
bench/compare.py, bench/summary.py and bench/report.py. Deterministic: rerunning it rewrites the
same files.

  base.json          4 benchmarks x 5 repetitions (+ mean/median/stddev/cv aggregates)
  noise.json         base with +-2% noise: no regression
  slow.json          base with lifo_pair/pool/4096 planted 30% slower (CPU and wall time)
  slow_mt.json       base with mt_all2all/pool/4096/real_time/threads:2 planted 30% slower in wall
                     time only (threaded benchmarks are judged on wall time)
  failing.json       base where lifo_pair/pool/4096 failed (error_occurred) in every repetition
  two_reps.json      base cut to 2 repetitions: too few for a significant U test
  mismatched.json    other benchmark names: nothing in common with base
  ops_changed.json   base with ops_per_iteration changed: the same names, not comparable
  empty.json         a report with an empty benchmarks list
  not_gbench.json    valid JSON that is not a Google Benchmark report
  corrupt.json       base cut off in the middle (an interrupted write)
  zero.json          a zero-byte file
"""
import copy
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = [
    ("lifo_pair/inline_freelist/4096", 0.70, 2),
    ("lifo_pair/pool/4096", 2.80, 2),
    ("lifo_pair/jemalloc/4096", 21.0, 2),
    ("mt_all2all/pool/4096/real_time/threads:2", 40.0, 2),
]
# Relative wiggle per repetition: small, fixed, so the U test sees five distinct values.
WIGGLE = [0.000, 0.004, -0.003, 0.006, -0.005]
CONTEXT = {
    "date": "2024-01-01T00:00:00+00:00", "host_name": "fixture", "executable": "ksalloc-bench",
    "num_cpus": 2, "mhz_per_cpu": 2000, "cpu_scaling_enabled": False, "caches": [],
    "load_avg": [0.1, 0.1, 0.1], "library_build_type": "release", "ks_suite": "default",
    "ks_timer_cost_ns": "20.00", "ks_skip.mt_prodcons/pool/4096/threads:2":
    "2 threads call one instance and it does not state KS_CAP_THREAD_SAFE",
}


def entry(name, rep, reps, time, ops):
    threaded = "/threads:" in name
    cpu = time * (2.0 if threaded else 1.0)
    return {
        "name": name, "family_index": 0, "per_family_instance_index": 0, "run_name": name,
        "run_type": "iteration", "repetitions": reps, "repetition_index": rep,
        "threads": 2 if threaded else 1, "iterations": 1000000, "real_time": time * (1.05 if not threaded else 1.0),
        "cpu_time": cpu, "time_unit": "ns", "ops_per_iteration": float(ops),
        "items_per_second": ops * 1e9 / time, "lat_p50_ns": 20.0, "lat_p99_ns": 30.0, "lat_p999_ns": 40.0,
        "lat_max_ns": 900.0, "reserved_bytes": 8192.0, "live_bytes": 4096.0, "rss_growth_bytes": 0.0,
        "allocation_failures_per_op": 0.0,
    }


def aggregates(runs):
    out = []
    for kind in ("mean", "median", "stddev", "cv"):
        agg = copy.deepcopy(runs[0])
        del agg["repetition_index"]
        agg.update({"name": runs[0]["name"] + "_" + kind, "run_type": "aggregate", "aggregate_name": kind,
                    "aggregate_unit": "percentage" if kind == "cv" else "time", "iterations": len(runs)})
        for key in ("real_time", "cpu_time"):
            values = sorted(run[key] for run in runs)
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            agg[key] = {"mean": mean, "median": values[len(values) // 2], "stddev": std, "cv": std / mean}[kind]
        out.append(agg)
    return out


def report(scale=None, reps=5, names=NAMES, ops_delta=0, wall_only=None, noise=0.0):
    benchmarks = []
    for name, base_time, ops in names:
        runs = []
        for rep in range(reps):
            time = base_time * (1 + WIGGLE[rep] + noise * (1 if rep % 2 else -1))
            if scale and name in scale:
                time *= scale[name]
            run = entry(name, rep, reps, time, ops + ops_delta)
            if wall_only and name in wall_only:
                run["real_time"] *= wall_only[name]
            runs.append(run)
        benchmarks += runs + aggregates(runs)
    return {"context": CONTEXT, "benchmarks": benchmarks}


def failing():
    data = report()
    kept = [b for b in data["benchmarks"] if b["run_name"] != "lifo_pair/pool/4096"]
    for rep in range(5):
        kept.append({"name": "lifo_pair/pool/4096", "family_index": 0, "per_family_instance_index": 0,
                     "run_name": "lifo_pair/pool/4096", "run_type": "iteration", "repetitions": 5,
                     "repetition_index": rep, "threads": 1, "iterations": 0, "real_time": 0.0, "cpu_time": 0.0,
                     "time_unit": "ns", "error_occurred": True,
                     "error_message": "InitializeAllocator(FrameSize 4096, Frames 1, alignment 64) returned "
                                      "STATUS_INSUFFICIENT_RESOURCES"})
    data["benchmarks"] = kept
    return data


def write(name, data):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as handle:
        if isinstance(data, str):
            handle.write(data)
        else:
            json.dump(data, handle, indent=1)
            handle.write("\n")


def main():
    write("base.json", report())
    write("noise.json", report(noise=0.02))
    write("slow.json", report(scale={"lifo_pair/pool/4096": 1.30}))
    write("slow_mt.json", report(wall_only={"mt_all2all/pool/4096/real_time/threads:2": 1.30}))
    write("failing.json", failing())
    write("two_reps.json", report(reps=2))
    write("mismatched.json", report(names=[("fifo_batch/pool/64", 3.0, 128), ("fifo_batch/system/64", 30.0, 128)]))
    write("ops_changed.json", report(ops_delta=1))
    write("empty.json", {"context": CONTEXT, "benchmarks": []})
    write("not_gbench.json", {"results": [1, 2, 3]})
    text = json.dumps(report(), indent=1)
    write("corrupt.json", text[: len(text) // 2])
    write("zero.json", "")


if __name__ == "__main__":
    main()
