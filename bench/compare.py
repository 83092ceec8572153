#!/usr/bin/env python3
"""compare.py -- compare two ksalloc benchmark reports and gate on regressions.

    compare.py [--threshold 0.10] [--alpha 0.05] [--threshold-only] [--quiet] BASE.json NEW.json

1. Both reports are checked first; a missing, empty, truncated or corrupt report, one that is not
   Google Benchmark's JSON, or two reports with no benchmark in common (or with the same benchmark
   measured in different units or different operations per iteration) is an error (exit 2) with a
   message that names the file and the problem.
2. Google Benchmark's own compare.py (Debian's libbenchmark-tools) compares them benchmark by
   benchmark, with a two-sided Mann-Whitney U test over the repetitions; its table is printed.
3. Per allocator: the geometric mean of NEW/BASE time ratios over its benchmarks.
4. The gate: a benchmark has regressed when its median time grew by more than THRESHOLD (0.10 =
   10%) AND the U test says the change is significant (p < ALPHA). Any regression exits 1, and so
   does a benchmark that BASE measured and that fails in NEW (its error is printed).
   Single-threaded benchmarks are compared on CPU time, threaded ones (/real_time) on wall time.

A U test needs repetitions: with n and m of them the smallest two-sided p-value it can give is
2 / C(n+m, n) (0.10 for 3 vs 3, 0.029 for 4 vs 4, 0.008 for 5 vs 5). When that floor is not below
ALPHA no change can be significant, so the gate refuses to pass silently: it is an error, unless
--threshold-only asks to gate on the threshold alone.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ksbench  # noqa: E402

GBENCH_COMPARE = "/usr/share/benchmark/compare.py"


def min_p_value(n, m):
    """Smallest two-sided p an exact Mann-Whitney U test can reach with n and m samples."""
    if n < 1 or m < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n + m, n))


def check_pair(base, new):
    """Common benchmarks in BASE order; raises ReportError when the two cannot be compared."""
    base_names = [bench.name for bench in base.measured()]
    new_measured = {bench.name: bench for bench in new.measured()}
    common = [name for name in base_names if name in new_measured]
    if not common:
        raise ksbench.ReportError(
            "%s and %s have no benchmark in common (%d and %d benchmarks): not the same suite, "
            "or not ksalloc reports" % (base.path, new.path, len(base_names), len(new_measured)))
    for name in common:
        old_bench, new_bench = base.benchmarks[name], new_measured[name]
        old_unit, new_unit = old_bench.runs[0]["time_unit"], new_bench.runs[0]["time_unit"]
        if old_unit != new_unit:
            raise ksbench.ReportError("%s: time unit %s in %s but %s in %s: mismatched reports"
                                      % (name, old_unit, base.path, new_unit, new.path))
        if old_bench.ops_per_iteration() != new_bench.ops_per_iteration():
            raise ksbench.ReportError(
                "%s: %g operations per iteration in %s but %g in %s: the workload changed, times are not "
                "comparable" % (name, old_bench.ops_per_iteration(), base.path, new_bench.ops_per_iteration(),
                                new.path))
    return common


def warnings_for(base, new, common):
    notes = []
    only_base = len(base.measured()) - len(common)
    only_new = len(new.measured()) - len(common)
    if only_base or only_new:
        notes.append("%d benchmarks only in BASE and %d only in NEW are not compared" % (only_base, only_new))
    for key in ("host_name", "num_cpus", "ks_cpu", "ks_build_cflags", "ks_suite"):
        old, now = base.context.get(key), new.context.get(key)
        if old != now:
            notes.append("%s differs: %r in BASE, %r in NEW" % (key, old, now))
    return notes


def run_gbench_compare(base_path, new_path, alpha, quiet):
    """Google Benchmark's compare.py: prints its table, returns its JSON diff (U-test p-values)."""
    if not os.path.exists(GBENCH_COMPARE):
        raise ksbench.ReportError("%s is missing: install Debian's libbenchmark-tools (make deps)" % GBENCH_COMPARE)
    with tempfile.TemporaryDirectory() as scratch:
        dump = os.path.join(scratch, "diff.json")
        command = [sys.executable, GBENCH_COMPARE, "--no-color", "-a", "--alpha", str(alpha), "-d", dump,
                   "benchmarks", base_path, new_path]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not os.path.exists(dump):
            raise ksbench.ReportError("Google Benchmark's compare.py failed (exit %d): %s"
                                      % (result.returncode, (result.stderr or result.stdout).strip()[-800:]))
        if not quiet:
            print(result.stdout.rstrip())
        with open(dump, "r", encoding="utf-8") as handle:
            return json.load(handle)


def p_values(diff):
    """{benchmark name: {'time': p, 'cpu': p}} from compare.py's JSON diff."""
    values = {}
    for entry in diff:
        utest = entry.get("utest") or {}
        if entry.get("run_type") == "iteration" and "time_pvalue" in utest:
            values[entry["name"]] = {"time": utest["time_pvalue"], "cpu": utest["cpu_pvalue"]}
    return values


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def judge(base, new, common, p_by_name, threshold, alpha, threshold_only):
    """[(name, allocator, ratio, p, verdict)] with verdict 'regressed', 'improved' or ''."""
    rows = []
    for name in common:
        old_bench, new_bench = base.benchmarks[name], new.benchmarks[name]
        ratio = median(new_bench.times_ns()) / median(old_bench.times_ns())
        p = p_by_name.get(name, {}).get("time" if old_bench.real_time else "cpu")
        significant = threshold_only or (p is not None and p < alpha)
        verdict = ""
        if ratio > 1 + threshold and significant:
            verdict = "regressed"
        elif ratio < 1 / (1 + threshold) and significant:
            verdict = "improved"
        rows.append((name, old_bench.allocator, ratio, p, verdict))
    return rows


def per_allocator(rows):
    by_allocator = {}
    for name, allocator, ratio, p, verdict in rows:
        entry = by_allocator.setdefault(allocator, {"ratios": [], "regressed": 0, "improved": 0})
        entry["ratios"].append(ratio)
        if verdict:
            entry[verdict] += 1
    lines = ["per allocator: geometric mean of NEW/BASE time (below 1.00 is faster)",
             "  %-22s %8s %11s %10s %9s" % ("allocator", "geomean", "benchmarks", "regressed", "improved")]
    for allocator, entry in sorted(by_allocator.items(), key=lambda item: -ksbench.geomean(item[1]["ratios"])):
        lines.append("  %-22s %7.3fx %11d %10d %9d" % (allocator, ksbench.geomean(entry["ratios"]),
                                                      len(entry["ratios"]), entry["regressed"], entry["improved"]))
    return lines


def check_repetitions(base, new, alpha, threshold_only):
    n, m = base.repetitions(), new.repetitions()
    floor = min_p_value(n, m)
    if threshold_only or floor < alpha:
        return None
    return ("%d repetitions in BASE and %d in NEW: the smallest p-value a U test can give is %.3f, not below "
            "alpha %.3f, so no change could be called significant. Rerun with --benchmark_repetitions=5 "
            "(make bench does), or pass --threshold-only to gate on the threshold alone." % (n, m, floor, alpha))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the report to compare against (Google Benchmark JSON)")
    parser.add_argument("new", help="the report under test")
    parser.add_argument("--threshold", type=float, default=0.10, help="slowdown that fails the gate (0.10 = 10%%)")
    parser.add_argument("--alpha", type=float, default=0.05, help="U-test significance level")
    parser.add_argument("--threshold-only", action="store_true", help="gate without the significance test")
    parser.add_argument("--quiet", action="store_true", help="omit compare.py's per-benchmark table")
    args = parser.parse_args()
    if args.threshold < 0 or not 0 < args.alpha < 1:
        print("compare: --threshold must be >= 0 and --alpha in (0, 1)", file=sys.stderr)
        return 2
    try:
        base, new = ksbench.load(args.base), ksbench.load(args.new)
        common = check_pair(base, new)
        problem = check_repetitions(base, new, args.alpha, args.threshold_only)
        if problem:
            raise ksbench.ReportError(problem)
        diff = run_gbench_compare(args.base, args.new, args.alpha, args.quiet)
    except ksbench.ReportError as error:
        print("compare: %s" % error, file=sys.stderr)
        return 2
    for note in warnings_for(base, new, common):
        print("compare: warning: %s" % note, file=sys.stderr)
    rows = judge(base, new, common, p_values(diff), args.threshold, args.alpha, args.threshold_only)
    print()
    print("\n".join(per_allocator(rows)))
    regressed = [row for row in rows if row[4] == "regressed"]
    newly_failed = [(bench.name, new.benchmarks[bench.name].error) for bench in base.measured()
                    if bench.name in new.benchmarks and new.benchmarks[bench.name].error is not None]
    print()
    print("gate: %d of %d benchmarks slower by more than %.0f%% %s; %d measured in BASE fail in NEW" % (
        len(regressed), len(rows), 100 * args.threshold,
        "(threshold only)" if args.threshold_only else "with p < %g" % args.alpha, len(newly_failed)))
    for name, allocator, ratio, p, verdict in regressed:
        print("  REGRESSED %-50s %.3fx%s" % (name, ratio, "" if p is None else "  p=%.4f" % p))
    for name, error in newly_failed:
        print("  FAILED    %-50s %s" % (name, error))
    return 1 if regressed or newly_failed else 0


if __name__ == "__main__":
    sys.exit(main())
