"""ksbench.py -- reading ksalloc benchmark reports (Google Benchmark JSON), shared by summary.py,
compare.py and report.py.

A benchmark is named  <workload>/<allocator>/<frame_bytes or "mix">[/real_time][/threads:N]  and
one iteration is `ops_per_iteration` allocator calls (Allocate + Free), so a time per iteration
divided by ops_per_iteration is a time per operation. Single-threaded benchmarks are ranked by
CPU time (robust to other processes on a shared machine); threaded ones by wall-clock time (the
only meaningful figure when threads wait for each other), which Google Benchmark marks by the
/real_time suffix. With repetitions the median is the figure; without, the single run.

Errors are ReportError with a message naming the file and what is wrong with it: the tools
print it and exit 2.
"""

import json
import math
import os
import statistics

BASELINE = "inline_freelist"
DIRECT = "pool_direct"  # pool's Allocate/Free called without the table
TABLE = "pool"  # the same code through its dispatch table, as catalogued
BENCH_INTERNAL = (BASELINE, DIRECT)
# General-purpose allocators ksalloc's own are compared with: their KS-conformant instances, and
# the same libraries called bare, as their users call them (no instance, nothing kept per frame):
# <workload>/<peer>_bare/<bytes>.
PEERS = ("system", "jemalloc", "mimalloc", "tcmalloc")
BARE_SUFFIX = "_bare"
BARE_PEERS = tuple(peer + BARE_SUFFIX for peer in PEERS)

_TIME_UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
_REQUIRED = ("name", "real_time", "cpu_time", "time_unit")


class ReportError(Exception):
    """A report that cannot be used, with a message naming the file and the problem."""


class Benchmark:
    """One benchmark of a report: its repetitions and the figures derived from them."""

    def __init__(self, name):
        self.name = name
        self.runs = []  # iteration entries (one per repetition)
        self.aggregates = {}  # aggregate_name -> entry
        self.error = None
        parts = name.split("/")
        self.workload = parts[0]
        self.allocator = parts[1] if len(parts) > 1 else "?"
        self.size = parts[2] if len(parts) > 2 else "?"
        self.real_time = "real_time" in parts[3:]
        self.threads = 1
        for part in parts[3:]:
            if part.startswith("threads:"):
                self.threads = int(part.split(":", 1)[1])

    @property
    def group(self):
        """The comparison group: the same workload, frame size and thread count."""
        return (self.workload, self.size, self.threads)

    @property
    def threaded(self):
        return self.workload.startswith("mt_")

    def _figure(self, entry, key):
        return entry.get(key)

    def representative(self):
        """The entry figures are read from: the median aggregate, else the only run."""
        if "median" in self.aggregates:
            return self.aggregates["median"]
        if len(self.runs) == 1:
            return self.runs[0]
        return None

    def times_ns(self):
        """Primary time per iteration of every repetition, in ns."""
        key = "real_time" if self.real_time else "cpu_time"
        return [run[key] * _TIME_UNIT_NS[run["time_unit"]] for run in self.runs]

    def ops_per_iteration(self):
        entry = self.representative() or (self.runs[0] if self.runs else {})
        return entry.get("ops_per_iteration", 1.0) or 1.0

    def ns_per_op(self):
        times = self.times_ns()
        if not times:
            return None
        return statistics.median(times) / self.ops_per_iteration()

    def relative_spread(self):
        """The repetitions' robust relative spread: 1.4826 x the median absolute deviation of the
        log times, an estimate of their standard deviation as a fraction of the median that one
        preempted repetition cannot inflate. 0.0 with fewer than two positive times."""
        return robust_log_spread(self.times_ns())

    def counter(self, key):
        """A counter's value: from the median aggregate, else the median over repetitions."""
        if "median" in self.aggregates and key in self.aggregates["median"]:
            return self.aggregates["median"][key]
        values = [run[key] for run in self.runs if key in run]
        return statistics.median(values) if values else None

    def blowup(self):
        reserved, live = self.counter("reserved_bytes"), self.counter("live_bytes")
        if reserved is None or not live:
            return None
        return reserved / live


class Report:
    """A loaded, validated report: context and benchmarks by name, in report order."""

    def __init__(self, path, data):
        self.path = path
        self.context = data.get("context", {})
        self.benchmarks = {}
        self.order = []
        for index, entry in enumerate(data["benchmarks"]):
            self._add(index, entry)

    def _add(self, index, entry):
        if not isinstance(entry, dict):
            raise ReportError("%s: benchmark #%d is not an object" % (self.path, index))
        if entry.get("error_occurred"):
            name = entry.get("run_name") or entry.get("name", "?")
            bench = self.benchmarks.setdefault(name, Benchmark(name))
            bench.error = entry.get("error_message", "error")
            if name not in self.order:
                self.order.append(name)
            return
        missing = [key for key in _REQUIRED if key not in entry]
        if missing:
            raise ReportError("%s: benchmark #%d (%s) lacks %s: not a Google Benchmark report, or a corrupt one"
                              % (self.path, index, entry.get("name", "no name"), ", ".join(missing)))
        if entry["time_unit"] not in _TIME_UNIT_NS:
            raise ReportError("%s: benchmark #%d (%s) has unknown time_unit %r"
                              % (self.path, index, entry["name"], entry["time_unit"]))
        for key in ("real_time", "cpu_time"):
            value = entry[key]
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ReportError("%s: benchmark #%d (%s) has %s = %r"
                                  % (self.path, index, entry["name"], key, value))
        name = entry.get("run_name", entry["name"])
        bench = self.benchmarks.get(name)
        if bench is None:
            bench = self.benchmarks[name] = Benchmark(name)
            self.order.append(name)
        if entry.get("run_type") == "aggregate":
            bench.aggregates[entry.get("aggregate_name", "?")] = entry
        else:
            bench.runs.append(entry)

    def measured(self):
        """Benchmarks that ran (no error), in report order."""
        return [self.benchmarks[name] for name in self.order
                if self.benchmarks[name].error is None and self.benchmarks[name].runs]

    def failed(self):
        return [self.benchmarks[name] for name in self.order if self.benchmarks[name].error is not None]

    def skipped(self):
        """(name, reason) for every case the binary did not register."""
        return sorted((key[len("ks_skip."):], value) for key, value in self.context.items()
                      if key.startswith("ks_skip."))

    def bound_name(self):
        """The allocator the run measured as its bound (context ks_baseline), else BASELINE."""
        return self.context.get("ks_baseline") or BASELINE

    def repetitions(self):
        counts = [len(bench.runs) for bench in self.measured()]
        return min(counts) if counts else 0

    def label(self):
        """A short name for plots: <date> <revision> from the file name, else the file name."""
        return os.path.splitext(os.path.basename(self.path))[0]


def load(path):
    """Loads and validates one report; raises ReportError with a precise message."""
    if not os.path.exists(path):
        raise ReportError("%s: no such file" % path)
    if os.path.getsize(path) == 0:
        raise ReportError("%s: empty file (an interrupted run?)" % path)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ReportError("%s: not valid JSON (line %d, column %d: %s): truncated or corrupt report"
                          % (path, error.lineno, error.colno, error.msg)) from None
    except (UnicodeDecodeError, OSError) as error:
        raise ReportError("%s: cannot read it: %s" % (path, error)) from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError("%s: not a Google Benchmark report (no 'benchmarks' list)" % path)
    if not isinstance(data.get("context"), dict):
        raise ReportError("%s: not a Google Benchmark report (no 'context' object)" % path)
    if not data["benchmarks"]:
        raise ReportError("%s: the report has no benchmarks (an empty run, or a filter that matched nothing)"
                          % path)
    report = Report(path, data)
    if not report.measured():
        raise ReportError("%s: every benchmark in the report failed: %s"
                          % (path, "; ".join("%s: %s" % (b.name, b.error) for b in report.failed()[:3])))
    return report


def geomean(values):
    values = [value for value in values if value and value > 0]
    if not values:
        return None
    return math.exp(sum(math.log(value) for value in values) / len(values))


# 1 / the median absolute deviation of a standard normal: makes a MAD a standard deviation.
MAD_TO_SIGMA = 1.4826


def robust_log_spread(values):
    """1.4826 x MAD of log(values): a standard deviation of the values as a fraction of their
    median, robust to an outlier. 0.0 with fewer than two positive values."""
    logs = [math.log(value) for value in values if value > 0]
    if len(logs) < 2:
        return 0.0
    centre = statistics.median(logs)
    return MAD_TO_SIGMA * statistics.median(abs(value - centre) for value in logs)


def groups(report):
    """{group: {allocator: Benchmark}} in report order."""
    result = {}
    for bench in report.measured():
        result.setdefault(bench.group, {})[bench.allocator] = bench
    return result


def peer_family(name):
    """The peer library a conformant or bare allocator name belongs to, else None."""
    base = name[:-len(BARE_SUFFIX)] if name.endswith(BARE_SUFFIX) else name
    return base if base in PEERS else None


def is_bare_peer(name):
    return name in BARE_PEERS


def is_ksalloc_allocator(name):
    return name not in BENCH_INTERNAL and peer_family(name) is None


def group_title(group):
    workload, size, threads = group
    size_text = "mixed 512/4096/65536 B" if size == "mix" else human_bytes(int(size)) if size.isdigit() else size
    threads_text = " x%d threads" % threads if workload.startswith("mt_") else ""
    return "%s %s%s" % (workload, size_text, threads_text)


def human_bytes(value):
    if value is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            number = value / scale
            return ("%d %s" % (number, unit)) if number == int(number) else ("%.1f %s" % (number, unit))
    return "%d B" % value


def human_time(value_ns):
    """A duration in prose: '1.78 ns', '44.0 us', '8.1 ms'."""
    if value_ns is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if value_ns >= scale:
            return "%.1f %s" % (value_ns / scale, unit)
    return ("%.2f ns" if value_ns < 10 else "%.1f ns") % value_ns


def significant(value, digits=3):
    """A number with `digits` significant digits and no exponent: 0.350, 4.00, 30.0, 1234."""
    if value is None:
        return "-"
    if value == 0 or not math.isfinite(value):
        return "%g" % value
    exponent = math.floor(math.log10(abs(value)))
    rounded = round(value, digits - 1 - exponent)
    if rounded and math.floor(math.log10(abs(rounded))) > exponent:  # 999.6 -> 1000: one digit fewer
        exponent += 1
    return "%.*f" % (max(0, digits - 1 - exponent), value)


def precise_time(value_ns, digits=3):
    """A duration with `digits` significant digits in the largest unit that keeps it at 1 or
    more: '0.350 ns', '1.82 ns', '44.0 us', '8.10 ms'."""
    if value_ns is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        text = significant(value_ns / scale, digits)
        if abs(float(text)) >= 1:
            return "%s %s" % (text, unit)
    return "%s ns" % significant(value_ns, digits)


def human_ns(value):
    if value is None:
        return "-"
    if value >= 1e6:
        return "%.1fms" % (value / 1e6)
    if value >= 1e4:
        return "%.0fus" % (value / 1e3)
    if value >= 1e3:
        return "%.1fus" % (value / 1e3)
    if value >= 100:
        return "%.0f" % value
    if value >= 10:
        return "%.1f" % value
    return "%.2f" % value
