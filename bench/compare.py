#!/usr/bin/env python3
"""compare.py -- compare two ksalloc benchmark reports and gate on regressions.

    compare.py [--threshold 0.10] [--alpha 0.05] [--relative | --absolute] [--aa A1.json A2.json]
               [--threshold-only] [--quiet] BASE.json NEW.json

Exit status: 0 no regression; 1 a regression, or a benchmark BASE measured fails in NEW; 2 the
input cannot be compared (the message names the file, the problem and the fix), a usage error, or
a crash of this tool. (make turns any failing recipe into its own 2: CI runs this script.)

Per benchmark the figure is the median of the repetitions (CPU time single-threaded, wall time
for /real_time) and the change is NEW/BASE. A benchmark regressed when both hold:

- The change beats the noise: log(NEW/BASE) > max(log(1 + THRESHOLD), K x floor), K = 3. The
  floor is the standard deviation of the difference of the two medians, from the repetitions:
  sqrt(pi/2 x (s_BASE^2 / n_BASE + s_NEW^2 / n_NEW)), s the robust spread of a report's repetitions
  (1.4826 x MAD of the log times, which one preempted repetition does not inflate). That holds
  for independent repetitions, which Google Benchmark's random interleaving gives; repetitions
  run back to back share the run's state and understate the noise between runs. An A/A pair
  (--aa: two runs of one build) measures that noise: the floor is then at least the |log(A2/A1)|
  the pair shows for the benchmark.
- It is significant across the suite: a one-sided Mann-Whitney U test (NEW slower; exact for
  small samples) gives a raw p per benchmark; Benjamini-Hochberg over the benchmarks judged turns
  p into q, the false discovery rate at which it is called; the gate asks q < ALPHA. Speed-ups
  are found the same way in the other direction, and are not gated.

Views. A time can move because the code changed, because the machine or its load did (which
moves the bound, the inline free list of the same run, with everything else), or because the
bound itself wobbled. So: on one machine a benchmark fails only when its time AND its ratio to
the bound of its group (workload, frame size, threads) both regressed, each view with its own
floor and q (the bound's own benchmarks are the reference, reported apart, and a group without
a bound is judged on time). When the machine changed -- the contexts name different hosts or
CPUs, or the bound moved by more than THRESHOLD over the suite -- times say nothing and only the
ratio to the bound is judged; the output says how far each bound moved and that absolute times
were not gated. --relative and --absolute force one view.

Allocators. Per allocator, each of its benchmarks' log change minus the median log change of its
group is a change against its peers, group by group; the allocator regressed when the median of
these exceeds THRESHOLD and a one-sided signed-rank test across its groups, corrected by
Benjamini-Hochberg over the allocators, gives q < ALPHA. A machine or load change moves a group
together and cancels; one allocator made slower does not. The groups replicate here, so this
catches a slowed allocator that no single benchmark can confirm with few repetitions.

Repetitions. With n and m of them the smallest one-sided U p is 1 / C(n+m, n) (0.05 for 3 vs 3,
0.004 for 5 vs 5, 2e-5 for 9 vs 9), and Benjamini-Hochberg over M benchmarks confirms R regressions
only when p <= ALPHA x R / M; the output says how many must regress together, and how many
repetitions a lone regression needs. Fewer than 3 repetitions (a quick report has 1) are refused
with the fix, unless --threshold-only gates on THRESHOLD and the floor alone.

Google Benchmark's own compare.py (Debian's libbenchmark-tools) prints its table of changes and
two-sided U tests first, unless --quiet or only ratios to the bound are judged.
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ksbench  # noqa: E402

try:
    from scipy.stats import mannwhitneyu, wilcoxon  # noqa: E402
except ImportError:  # a missing dependency is bad input to the gate (2), never a regression (1)
    print("compare: scipy is missing for %s: install python3-scipy (make deps), or run the "
          "interpreter make uses (/usr/bin/python3)" % sys.executable, file=sys.stderr)
    sys.exit(2)

GBENCH_COMPARE = "/usr/share/benchmark/compare.py"
EXIT_CLEAN, EXIT_REGRESSED, EXIT_BAD_INPUT = 0, 1, 2
ABSOLUTE, RELATIVE, BOTH = "absolute", "relative", "both"  # what a benchmark is judged by
# A change must beat NOISE_K standard deviations of the difference between two runs' medians.
NOISE_K = 3.0
# The variance of a median of n normal values over that of one value, times n, for large n.
MEDIAN_EFFICIENCY = math.pi / 2
# Fewest repetitions whose spread says something: the MAD of two values is set by either one.
MIN_REPETITIONS = 3
# Largest samples for which the exact U and signed-rank distributions are used (scipy's own
# 'auto' switches at 8 and 50; the normal approximation undershoots small samples' exact p).
EXACT_U_MAX = 20
EXACT_SIGNED_RANK_MAX = 50
# Fewest allocators in a group for its median change to be a reference for each of them.
MIN_PEERS = 3
# Context entries that differ when the two reports come from different machines.
MACHINE_KEYS = ("host_name", "cpu", "ks_cpu", "num_cpus", "mhz_per_cpu")
# Context entry a run sets (--benchmark_context=repetitions_interleaved=yes) when it ran with
# --benchmark_enable_random_interleaving=true.
INTERLEAVED_KEY = "repetitions_interleaved"


class Row:
    """One benchmark judged in one view: its medians, the change, its floor and significance."""

    def __init__(self, name, allocator, group):
        self.name, self.allocator, self.group = name, allocator, group
        self.base_ns = self.new_ns = None  # median ns per operation
        self.base_x = self.new_x = None  # median ratio to the bound (relative view)
        self.log_change = 0.0  # log(NEW/BASE) in the view
        self.floor = 0.0  # noise floor: a standard deviation of log_change
        self.needed = 0.0  # the log change that counts: max(log(1+T), K x floor)
        self.p_slower = self.p_faster = 1.0
        self.q_slower = self.q_faster = 1.0
        self.own_verdict = ""  # "regressed", "improved" or "": this view's
        self.verdict = ""  # the gate's: in the two-view mode, only what both views give
        self.relative = None  # in the two-view mode, the same benchmark's Row relative to the bound

    @property
    def change(self):
        return math.exp(self.log_change)

    @property
    def p(self):
        return self.p_slower if self.log_change >= 0 else self.p_faster

    @property
    def q(self):
        return self.q_slower if self.log_change >= 0 else self.q_faster


# ---- Checks on the input ------------------------------------------------------------------------


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


def min_p_value(n, m):
    """Smallest one-sided p an exact Mann-Whitney U test can reach with n and m samples."""
    if n < 1 or m < 1:
        return 1.0
    return 1.0 / math.comb(n + m, n)


def repetitions_problem(base, new, alpha):
    """Why these reports' repetitions cannot support the gate at alpha, with the fix; or None."""
    n, m = base.repetitions(), new.repetitions()
    fix = ("rerun with 5 or more repetitions (make bench; a quick report: make bench-quick "
           "BENCH_ARGS=--benchmark_repetitions=5), or pass --threshold-only to bench/compare.py to gate on the "
           "threshold alone")
    if min(n, m) == 1:
        which = " and ".join(label for label, count in (("BASE", n), ("NEW", m)) if count == 1)
        return ("1 repetition in %s (a make bench-quick report?): no noise floor and no U test, so a change "
                "cannot be told from noise; %s" % (which, fix))
    floor = min_p_value(n, m)
    if min(n, m) < MIN_REPETITIONS or floor >= alpha:
        return ("%d repetitions in BASE and %d in NEW: a noise floor needs %d or more, and the smallest p-value a "
                "U test can give is %.3f (alpha %g); %s" % (n, m, MIN_REPETITIONS, floor, alpha, fix))
    return None


def machine_differences(base, new):
    """[(key, BASE value, NEW value)] for the context entries that identify the machine."""
    return [(key, base.context[key], new.context[key]) for key in MACHINE_KEYS
            if key in base.context and key in new.context and base.context[key] != new.context[key]]


def warnings_for(base, new, common):
    notes = []
    only_base = len(base.measured()) - len(common)
    only_new = len(new.measured()) - len(common)
    if only_base or only_new:
        notes.append("%d benchmarks only in BASE and %d only in NEW are not compared" % (only_base, only_new))
    for key in ("ks_build_cflags", "ks_suite", "ks_kernel"):
        old, now = base.context.get(key), new.context.get(key)
        if old != now:
            notes.append("%s differs: %r in BASE, %r in NEW" % (key, old, now))
    return notes


# ---- Statistics ---------------------------------------------------------------------------------


def u_test_greater(sample, other):
    """One-sided Mann-Whitney U p-value that `sample` is stochastically greater than `other`:
    exact for samples of up to EXACT_U_MAX (average ranks for ties), else the normal approximation
    with tie and continuity correction; 1.0 when every value is the same (nothing to tell apart).
    The approximation is not used on small samples, where it undershoots the exact p."""
    if len(set(sample) | set(other)) == 1:
        return 1.0
    exact = max(len(sample), len(other)) <= EXACT_U_MAX
    return float(mannwhitneyu(sample, other, alternative="greater",
                              method="exact" if exact else "asymptotic").pvalue)


def signed_rank_greater(values):
    """One-sided Wilcoxon signed-rank p-value that the values are centred above 0, zeros dropped:
    exact for up to EXACT_SIGNED_RANK_MAX values (average ranks for ties), else the normal
    approximation."""
    nonzero = [value for value in values if value != 0]
    if not nonzero:
        return 1.0
    exact = len(nonzero) <= EXACT_SIGNED_RANK_MAX
    return float(wilcoxon(nonzero, alternative="greater", method="exact" if exact else "approx").pvalue)


def benjamini_hochberg(p_values):
    """Benjamini-Hochberg adjusted p-values (q), in the order given: q_i = min over j with
    p_j >= p_i of p_j x M / rank_j, at most 1."""
    count = len(p_values)
    order = sorted(range(count), key=lambda index: p_values[index])
    adjusted = [1.0] * count
    running = 1.0
    for rank in range(count, 0, -1):
        index = order[rank - 1]
        running = min(running, p_values[index] * count / rank)
        adjusted[index] = running
    return adjusted


def detection_limit(repetitions_base, repetitions_new, family, alpha):
    """(smallest number of benchmarks that must regress together for BH to confirm any, the
    repetitions a lone regression needs) for a family of `family` U tests."""
    floor = min_p_value(repetitions_base, repetitions_new)
    together = max(1, math.ceil(floor * family / alpha - 1e-12))
    lone = 2
    while min_p_value(lone, lone) * family > alpha:
        lone += 1
    return together, lone


# ---- The comparison -----------------------------------------------------------------------------


class View:
    """How a benchmark's repetitions become the values compared: times, or ratios to the bound."""

    def __init__(self, base, new, relative):
        self.relative = relative
        self.bound = base.bound_name()
        self.base_bounds = self._bounds(base)
        self.new_bounds = self._bounds(new)

    def _bounds(self, report):
        return {group: by_allocator[self.bound] for group, by_allocator in ksbench.groups(report).items()
                if self.bound in by_allocator}

    def has_bound(self, bench):
        """Whether the benchmark's group has a bound in both runs."""
        return bench.group in self.base_bounds and bench.group in self.new_bounds

    def is_bound(self, bench):
        return bench.allocator == self.bound and self.has_bound(bench)

    def values(self, bench, bounds):
        times = bench.times_ns()
        if not self.relative:
            return times
        bound = statistics.median(bounds[bench.group].times_ns())
        return [time / bound for time in times]

    def variance(self, bench, bounds):
        """Variance of the log of the benchmark's median in this view (see median_variance)."""
        variance = median_variance(bench)
        if self.relative:
            variance += median_variance(bounds[bench.group])
        return variance

    def log_change(self, old, new):
        return math.log(statistics.median(self.values(new, self.new_bounds))
                        / statistics.median(self.values(old, self.base_bounds)))


def median_variance(bench):
    """Variance of the log of a median of n repetitions with robust spread s: (pi/2) s^2 / n, the
    large-sample variance of a median of normal values. It assumes independent repetitions."""
    return MEDIAN_EFFICIENCY * bench.relative_spread() ** 2 / len(bench.times_ns())


def has_positive_times(bench):
    return all(time > 0 for time in bench.times_ns())


def aa_shifts(aa_pair, relative):
    """{benchmark: |log(A2/A1)|} in the view, from an A/A pair of reports."""
    if not aa_pair:
        return {}
    first, second = aa_pair
    view = View(first, second, relative)
    shifts = {}
    for name in check_pair(first, second):
        old, new = first.benchmarks[name], second.benchmarks[name]
        if (not relative or view.has_bound(old)) and has_positive_times(old) and has_positive_times(new):
            shifts[name] = abs(view.log_change(old, new))
    return shifts


def judge(base, new, names, view, shifts, args):
    """[Row] for the benchmarks named, in this view, with BH over them and their verdicts."""
    rows = []
    for name in names:
        old, now = base.benchmarks[name], new.benchmarks[name]
        row = Row(name, old.allocator, old.group)
        row.base_ns, row.new_ns = old.ns_per_op(), now.ns_per_op()
        old_values, new_values = view.values(old, view.base_bounds), view.values(now, view.new_bounds)
        if view.relative:
            row.base_x, row.new_x = statistics.median(old_values), statistics.median(new_values)
        row.log_change = view.log_change(old, now)
        row.floor = max(math.sqrt(view.variance(old, view.base_bounds) + view.variance(now, view.new_bounds)),
                        shifts.get(name, 0.0))
        row.needed = max(math.log1p(args.threshold), NOISE_K * row.floor)
        row.p_slower = u_test_greater(new_values, old_values)
        row.p_faster = u_test_greater(old_values, new_values)
        rows.append(row)
    for direction in ("slower", "faster"):
        for row, q in zip(rows, benjamini_hochberg([getattr(row, "p_" + direction) for row in rows])):
            setattr(row, "q_" + direction, q)
    for row in rows:
        if row.log_change > row.needed and (args.threshold_only or row.q_slower < args.alpha):
            row.own_verdict = "regressed"
        elif -row.log_change > row.needed and (args.threshold_only or row.q_faster < args.alpha):
            row.own_verdict = "improved"
        row.verdict = row.own_verdict
    return rows


def both_views(absolute_rows, relative_rows):
    """The absolute rows, each holding its relative row, with a verdict only where both views give
    it. A group without a bound has no relative row: its absolute verdict stands."""
    by_name = {row.name: row for row in relative_rows}
    for row in absolute_rows:
        row.relative = by_name.get(row.name)
        if row.relative is not None and row.relative.verdict != row.verdict:
            row.verdict = ""
    return absolute_rows


def bound_moves(view, threshold):
    """[(group, NEW/BASE of the bound, the log change that would count)] for every group with a bound."""
    moves = []
    for group, old in view.base_bounds.items():
        now = view.new_bounds.get(group)
        if now is None or not has_positive_times(old) or not has_positive_times(now):
            continue
        change = statistics.median(now.times_ns()) / statistics.median(old.times_ns())
        floor = math.sqrt(median_variance(old) + median_variance(now))
        moves.append((group, change, max(math.log1p(threshold), NOISE_K * floor)))
    return moves


def choose_mode(args, base, new):
    """(ABSOLUTE, RELATIVE or BOTH, why) from the flags, the contexts and the bound.

    On one machine a benchmark fails only when its time and its ratio to the bound both moved: a
    change of the machine's state moves the time alone (and the bound with it), the bound's own
    noise moves the ratio alone, a slower allocator moves both. When the machine changed (another
    host or CPU, or the bound as a whole moved by more than THRESHOLD), times say nothing, and
    the ratio to the bound is the judge."""
    if args.relative:
        return RELATIVE, "--relative"
    if args.absolute:
        return ABSOLUTE, "--absolute"
    differences = machine_differences(base, new)
    if differences:
        return RELATIVE, "the reports come from different machines (%s)" % "; ".join(
            "%s %r vs %r" % difference for difference in differences)
    moves = bound_moves(View(base, new, False), args.threshold)
    if not moves:
        return ABSOLUTE, "no group has its bound (%s) in both runs" % base.bound_name()
    overall = ksbench.geomean([change for _, change, _ in moves])
    if abs(math.log(overall)) > math.log1p(args.threshold):
        return RELATIVE, ("the bound moved %.3fx over the suite, more than THRESHOLD: the machine (or its state) "
                          "changed" % overall)
    return BOTH, "same machine, and the bound moved %.3fx over the suite, within THRESHOLD" % overall


MODE_TITLES = {ABSOLUTE: "absolute times", RELATIVE: "ratios to the bound of the same run",
               BOTH: "absolute times and ratios to the bound; a benchmark fails only when both show it"}


def judge_all(args, base, new, common, mode, aa_pair):
    """[Row] in the mode, and the names left unjudged (no bound in the relative view)."""
    absolute, relative = View(base, new, False), View(base, new, True)
    usable = [name for name in common
              if has_positive_times(base.benchmarks[name]) and has_positive_times(new.benchmarks[name])]
    for name in sorted(set(common) - set(usable)):
        print("compare: warning: %s: a time of 0 in a repetition, no ratio: not judged" % name, file=sys.stderr)
    with_bound = [name for name in usable if relative.has_bound(base.benchmarks[name])
                  and not relative.is_bound(base.benchmarks[name])]
    if mode == ABSOLUTE:
        return judge(base, new, usable, absolute, aa_shifts(aa_pair, False), args), []
    relative_rows = judge(base, new, with_bound, relative, aa_shifts(aa_pair, True), args)
    if mode == RELATIVE:
        return relative_rows, [name for name in usable if not relative.has_bound(base.benchmarks[name])]
    # The bounds are the reference here, reported apart: a bound alone has no ratio to itself.
    gated = [name for name in usable if not relative.is_bound(base.benchmarks[name])]
    return both_views(judge(base, new, gated, absolute, aa_shifts(aa_pair, False), args), relative_rows), []


class AllocatorRow:
    """One allocator against its peers: how much more its benchmarks changed than their groups."""

    def __init__(self, allocator, against_peers):
        self.allocator = allocator
        self.against_peers = against_peers  # per group: its log change minus the group's median
        self.log_change = statistics.median(against_peers)
        self.p = signed_rank_greater(against_peers)
        self.q = 1.0
        self.verdict = ""

    @property
    def change(self):
        return math.exp(self.log_change)


def judge_allocators(base, new, common, args):
    """[AllocatorRow]: per allocator, its time changes over those of its peers, group by group.

    A change of the machine or of its load moves a group's allocators together and the group's
    median with them; one allocator made slower moves alone. So each benchmark's log change is
    taken relative to the median of its group's (MIN_PEERS or more), and an allocator regressed
    when the median of these over its groups exceeds THRESHOLD and a signed-rank test across the
    groups, corrected by Benjamini-Hochberg over the allocators, says q < ALPHA. The groups, not
    the repetitions, replicate here: with 5 repetitions no lone benchmark of a 400-benchmark suite
    can reach q < 0.05, but an allocator slowed in its 27 or more groups does."""
    by_group = {}
    for name in common:
        old, now = base.benchmarks[name], new.benchmarks[name]
        if has_positive_times(old) and has_positive_times(now):
            by_group.setdefault(old.group, {})[old.allocator] = math.log(
                statistics.median(now.times_ns()) / statistics.median(old.times_ns()))
    against_peers = {}
    for changes in by_group.values():
        if len(changes) >= MIN_PEERS:
            reference = statistics.median(changes.values())
            for allocator, change in changes.items():
                against_peers.setdefault(allocator, []).append(change - reference)
    rows = [AllocatorRow(allocator, values) for allocator, values in against_peers.items()]
    for row, q in zip(rows, benjamini_hochberg([row.p for row in rows])):
        row.q = q
        if row.log_change > math.log1p(args.threshold) and (args.threshold_only or q < args.alpha):
            row.verdict = "regressed"
    return rows


# ---- Output -------------------------------------------------------------------------------------


def percent(log_value):
    return "%+.1f%%" % (100.0 * (math.exp(log_value) - 1.0))


def probability(value):
    """A p or q: four decimals, or two significant digits below 0.001."""
    return "%.4f" % value if value >= 0.001 else "%.1e" % value


def table(rows, mode):
    """Every row: figures per operation with 3 significant digits, the change, and its test."""
    width = max([len("benchmark")] + [len(row.name) for row in rows])
    header = "%-*s %10s %10s %9s %8s %8s %8s" % (width, "benchmark", "BASE ns/op", "NEW ns/op", "change", "needs",
                                                 "p", "q")
    if mode != ABSOLUTE:
        header += " | %8s %8s %9s %8s %8s %8s" % ("BASE x", "NEW x", "change", "needs", "p", "q")
    lines = ["per benchmark: medians per operation; change = NEW/BASE (x: ratio to the bound); needs = the change "
             "that counts, max(THRESHOLD, %g x noise floor); p = one-sided U test in the direction of the change; "
             "q = p adjusted by Benjamini-Hochberg over the %d benchmarks of the view" % (NOISE_K, len(rows)),
             header]
    for row in rows:
        absolute = None if mode == RELATIVE else row
        relative = row if mode == RELATIVE else row.relative
        line = "%-*s %10s %10s" % (width, row.name, ksbench.precise_time(row.base_ns), ksbench.precise_time(row.new_ns))
        line += (" %8.3fx %8s %8s %8s" % (absolute.change, percent(absolute.needed), probability(absolute.p),
                                          probability(absolute.q)) if absolute else " %9s %8s %8s %8s" % (("",) * 4))
        if mode != ABSOLUTE:
            line += (" | %8s %8s %8.3fx %8s %8s %8s" % (
                ksbench.significant(relative.base_x), ksbench.significant(relative.new_x), relative.change,
                percent(relative.needed), probability(relative.p), probability(relative.q))
                if relative else " | %8s" % "-")
        lines.append("%s  %s" % (line, row.verdict.upper()))
    return lines


def bound_lines(moves, bound, mode):
    """How far the bound moved, per group beyond its own floor; in the relative view, that
    absolute times were not gated."""
    if not moves:
        return []
    changes = [change for _, change, _ in moves]
    beyond = [(group, change, needed) for group, change, needed in moves if abs(math.log(change)) > needed]
    lines = ["the bound (%s) moved %.3fx (geometric mean over %d group%s, %.3fx to %.3fx); beyond its own noise "
             "floor in %d" % (bound, ksbench.geomean(changes), len(moves), "" if len(moves) == 1 else "s",
                              min(changes), max(changes), len(beyond))]
    if mode == RELATIVE:
        lines.append("absolute times were not gated: every benchmark was judged by its ratio to the bound of its "
                     "own run")
    lines += ["  bound moved  %-40s %.3fx (beyond %s)" % (ksbench.group_title(group), change, percent(needed))
              for group, change, needed in beyond]
    return lines


def per_allocator(rows, allocator_rows, mode):
    """Per allocator: the geometric mean of its changes, its verdicts, and its test against peers."""
    by_allocator = {}
    for row in rows:
        entry = by_allocator.setdefault(row.allocator, {"ratios": [], "relative": [], "regressed": 0, "improved": 0})
        entry["ratios"].append(row.change)
        if row.relative is not None:
            entry["relative"].append(row.relative.change)
        if row.verdict:
            entry[row.verdict] += 1
    peers = {row.allocator: row for row in allocator_rows}
    for allocator in peers:  # the bound, in the two-view mode, is judged against its peers only
        by_allocator.setdefault(allocator, {"ratios": [], "relative": [], "regressed": 0, "improved": 0})
    measure = {RELATIVE: "ratio to the bound", ABSOLUTE: "time", BOTH: "time (and of the ratio to the bound)"}[mode]
    lines = ["per allocator: geometric mean of NEW/BASE %s (below 1.00 is faster); vs peers: the median over its "
             "groups of its change over the group's median change, p: one-sided signed-rank test across those "
             "groups, q: Benjamini-Hochberg over %d allocators" % (measure, len(peers)),
             "  %-22s %8s %11s %10s %9s%s %9s %8s %8s" % (
                 "allocator", "geomean", "benchmarks", "regressed", "improved", "  vs bound" if mode == BOTH else "",
                 "vs peers", "p", "q")]
    for allocator, entry in sorted(by_allocator.items(), key=lambda item: -(ksbench.geomean(item[1]["ratios"]) or 0)):
        versus, overall = ksbench.geomean(entry["relative"]), ksbench.geomean(entry["ratios"])
        peer = peers.get(allocator)
        lines.append("  %-22s %8s %11d %10d %9d%s %s  %s" % (
            allocator, "%7.3fx" % overall if overall else "-", len(entry["ratios"]), entry["regressed"],
            entry["improved"],
            "" if mode != BOTH else "  %7.3fx" % versus if versus else "        -",
            "%8.3fx %8s %8s" % (peer.change, probability(peer.p), probability(peer.q)) if peer else "%9s" % "-",
            peer.verdict.upper() if peer else ""))
    return lines


def row_line(label, row, mode):
    """One flagged benchmark: its change, what it needed, p and q, and the figures."""
    if mode == RELATIVE:
        figures = "%sx -> %sx bound (%s -> %s)" % (ksbench.significant(row.base_x), ksbench.significant(row.new_x),
                                                    ksbench.precise_time(row.base_ns),
                                                    ksbench.precise_time(row.new_ns))
    else:
        figures = "%s -> %s" % (ksbench.precise_time(row.base_ns), ksbench.precise_time(row.new_ns))
    line = "  %-9s %-50s %.3fx  needs %s  p=%s q=%s  %s" % (
        label, row.name, row.change, percent(row.needed), probability(row.p), probability(row.q), figures)
    if row.relative is not None:
        line += "; vs bound %.3fx needs %s q=%s" % (row.relative.change, percent(row.relative.needed),
                                                  probability(row.relative.q))
    return line


def run_gbench_compare(base_path, new_path, alpha):
    """Google Benchmark's compare.py table (absolute times, two-sided U tests), or why not."""
    if not os.path.exists(GBENCH_COMPARE):
        return ["(Google Benchmark's table skipped: %s is missing; install Debian's libbenchmark-tools)"
                % GBENCH_COMPARE]
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, GBENCH_COMPARE, "--no-color", "-a", "--alpha", str(alpha),
                   "-d", os.path.join(scratch, "diff.json"), "benchmarks", base_path, new_path]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return ["(Google Benchmark's table skipped: its compare.py exited %d: %s)"
                % (result.returncode, (result.stderr or result.stdout).strip()[-400:])]
    return ["Google Benchmark's compare.py (absolute times in whole units, two-sided U tests, no correction "
            "for multiple comparisons; the gate below does not use it):", result.stdout.rstrip()]


# ---- Main ---------------------------------------------------------------------------------------


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the report to compare against (Google Benchmark JSON)")
    parser.add_argument("new", help="the report under test")
    parser.add_argument("--threshold", type=float, default=0.10, help="smallest slowdown that fails (0.10 = 10%%)")
    parser.add_argument("--alpha", type=float, default=0.05, help="false discovery rate of the gate (BH q)")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--relative", action="store_true", help="judge ratios to the bound of the same run only")
    view.add_argument("--absolute", action="store_true", help="judge times only, even across machines")
    parser.add_argument("--aa", nargs=2, metavar=("A1", "A2"),
                        help="two runs of one build: their per-benchmark difference raises the noise floor")
    parser.add_argument("--threshold-only", action="store_true", help="gate without the significance test")
    parser.add_argument("--quiet", action="store_true", help="print only what was flagged, not the tables")
    return parser.parse_args()


def load_inputs(args):
    """(BASE, NEW, common benchmark names, A/A pair or None); ReportError when unusable."""
    if args.threshold < 0 or not 0 < args.alpha < 1:
        raise ksbench.ReportError("--threshold must be >= 0 and --alpha in (0, 1)")
    base, new = ksbench.load(args.base), ksbench.load(args.new)
    common = check_pair(base, new)
    problem = None if args.threshold_only else repetitions_problem(base, new, args.alpha)
    if problem:
        raise ksbench.ReportError(problem)
    aa_pair = [ksbench.load(path) for path in args.aa] if args.aa else None
    return base, new, common, aa_pair


def context_lines(args, base, new, mode, rows, allocator_rows, unjudged):
    """What the reader must know to trust the verdict: the bound, the floor's source, the power."""
    lines = bound_lines(bound_moves(View(base, new, False), args.threshold), base.bound_name(), mode)
    if unjudged:
        lines.append("not judged, no bound in their group: %s" % ", ".join(unjudged))
    n, m = base.repetitions(), new.repetitions()
    if args.aa:
        lines.append("A/A floor from %s and %s" % tuple(args.aa))
    elif min(n, m) == 1:
        lines.append("no noise floor: 1 repetition in %s; gating on THRESHOLD alone"
                     % " and ".join(label for label, count in (("BASE", n), ("NEW", m)) if count == 1))
    else:
        back_to_back = [label for label, report in (("BASE", base), ("NEW", new))
                        if report.context.get(INTERLEAVED_KEY) != "yes"]
        if back_to_back:
            lines.append("note: the repetitions of %s ran back to back (no %s=yes in the context): their spread "
                         "understates the noise between runs; give an A/A pair (--aa A1 A2) or interleave them "
                         "(--benchmark_enable_random_interleaving=true)"
                         % (" and ".join(back_to_back), INTERLEAVED_KEY))
    if not args.threshold_only:
        together, lone = detection_limit(n, m, len(rows), args.alpha)
        if together > 1:
            lines.append("power: with %d and %d repetitions the smallest one-sided p is %.4f, so over %d benchmarks "
                         "q < %g needs at least %d of them to regress together; a lone regression needs %d "
                         "repetitions (BENCH_REPETITIONS=%d)"
                         % (n, m, min_p_value(n, m), len(rows), args.alpha, together, lone, lone))
        groups = max([len(row.against_peers) for row in allocator_rows] or [0])
        if allocator_rows and 0.5 ** groups * len(allocator_rows) >= args.alpha:
            needed = math.ceil(math.log2(len(allocator_rows) / args.alpha))
            lines.append("power: an allocator runs in at most %d group%s here, so its test against its peers cannot "
                         "reach q < %g over %d allocators (that needs %d groups: a wider filter, or the whole suite)"
                         % (groups, "" if groups == 1 else "s", args.alpha, len(allocator_rows), needed))
    return lines


def verdict_lines(args, rows, allocator_rows, failed, mode):
    """The gate's line, then every benchmark flagged and every near miss, each with its numbers."""
    significant = (lambda row: True) if args.threshold_only else (lambda row: row.q_slower < args.alpha)
    slower = [row for row in rows if row.own_verdict == "regressed" or
              (row.relative is not None and row.relative.own_verdict == "regressed")]
    listed = set()

    def first_listing(flagged):  # each benchmark under the first heading that takes it
        flagged = [row for row in flagged if row.name not in listed]
        listed.update(row.name for row in flagged)
        return flagged

    kinds = (
        ("REGRESSED", None, first_listing([row for row in rows if row.verdict == "regressed"])),
        ("one view", "slower in one view only: time alone (the machine's state) or ratio to the bound alone (the "
                     "bound's noise)", first_listing(slower)),
        ("unproven", "slower beyond the floor, not significant after correction (q >= %g)" % args.alpha,
         first_listing([row for row in rows if not row.own_verdict and row.log_change > row.needed])),
        ("in noise", "slower than the threshold%s, but within their noise floor"
         % ("" if args.threshold_only else " and significant"),
         first_listing([row for row in rows
                        if row.needed >= row.log_change > math.log1p(args.threshold) and significant(row)])),
        ("faster", "faster beyond the floor, significant (not gated)",
         first_listing([row for row in rows if row.verdict == "improved"])))
    criterion = "slower beyond max(%g%%, %g x noise floor)%s" % (
        100 * args.threshold, NOISE_K,
        " (threshold only: no significance test)" if args.threshold_only else " with q < %g" % args.alpha)
    slower_allocators = [row for row in allocator_rows if row.verdict == "regressed"]
    lines = ["gate: %d of %d benchmarks %s%s%s; %d of %d allocators slower than their peers by more than %g%%%s; "
             "%d measured in BASE fail in NEW"
             % (len(kinds[0][2]), len(rows), "relative to the bound " if mode == RELATIVE else "", criterion,
                " in both views" if mode == BOTH else "", len(slower_allocators), len(allocator_rows),
                100 * args.threshold, "" if args.threshold_only else " with q < %g" % args.alpha, len(failed))]
    lines += [row_line("REGRESSED", row, mode) for row in kinds[0][2]]
    lines += ["  REGRESSED allocator %-40s %.3fx its peers' change (median over %d groups)  p=%s q=%s"
              % (row.allocator, row.change, len(row.against_peers), probability(row.p), probability(row.q))
              for row in slower_allocators]
    lines += ["  FAILED    %-50s %s" % failure for failure in failed]
    for label, title, flagged in kinds[1:]:
        if flagged:
            lines.append("%d %s:" % (len(flagged), title))
            lines += [row_line(label, row, mode) for row in flagged]
    return lines


def compare(args):
    """(the lines to print, the exit status: 0 clean, 1 regression)."""
    base, new, common, aa_pair = load_inputs(args)
    mode, why = choose_mode(args, base, new)
    if mode == RELATIVE and not View(base, new, True).base_bounds:
        raise ksbench.ReportError("%s: no group has its bound (%s): the relative view needs it in the same run"
                                  % (base.path, base.bound_name()))
    rows, unjudged = judge_all(args, base, new, common, mode, aa_pair)
    if not rows:
        raise ksbench.ReportError("%s and %s: no benchmark could be judged" % (base.path, new.path))
    failed = [(bench.name, new.benchmarks[bench.name].error) for bench in base.measured()
              if bench.name in new.benchmarks and new.benchmarks[bench.name].error is not None]
    for note in warnings_for(base, new, common):
        print("compare: warning: %s" % note, file=sys.stderr)
    out = ["view: %s, because %s" % (MODE_TITLES[mode], why)]
    if not args.quiet:
        if mode == RELATIVE:
            out.append("(Google Benchmark's table compares absolute times: not shown in the relative view)")
        else:
            out += run_gbench_compare(args.base, args.new, args.alpha)
        out += [""] + table(rows, mode)
    allocator_rows = judge_allocators(base, new, common, args)
    out += [""] + context_lines(args, base, new, mode, rows, allocator_rows, unjudged)
    out += [""] + per_allocator(rows, allocator_rows, mode)
    out += [""] + verdict_lines(args, rows, allocator_rows, failed, mode)
    regressed = [row for row in rows + allocator_rows if row.verdict == "regressed"]
    return out, EXIT_REGRESSED if regressed or failed else EXIT_CLEAN


def main():
    args = parse_arguments()  # a usage error exits 2 (argparse)
    try:
        lines, status = compare(args)
    except ksbench.ReportError as error:
        print("compare: %s" % error, file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:  # noqa: BLE001 -- a crash must not read as a regression (1)
        traceback.print_exc()
        print("compare: internal error (above): nothing was judged", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        print("\n".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the verdict stands
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


if __name__ == "__main__":
    sys.exit(main())
