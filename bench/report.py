#!/usr/bin/env python3
"""report.py -- Markdown and plots (matplotlib, PNG and SVG) from ksalloc benchmark reports.

    report.py [--out DIR] REPORT.json [REPORT.json ...]
    report.py [--out DIR] --latest RESULTS_DIR        (the newest *.json there)

The last report given is the one described; with several, a history plot and table compare
every allocator across them (geometric mean of its time per operation relative to the first).
Writes into DIR (default: <RESULTS_DIR or the last report's directory>/report-<its name>/):
  report.md                  context, the figures below, the ranked summary tables
  throughput.png/.svg        time per operation for every allocator, workload and frame size
  latency.png/.svg           per-operation latency percentiles (HdrHistogram-style percentile plot)
  scaling.png/.svg           throughput against thread count for the threaded workloads
  memory.png/.svg            blowup (reserved / live bytes) and peak RSS growth
  history.png/.svg           (several reports only) each allocator across the reports
"""

import argparse
import glob
import math
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ksbench  # noqa: E402
import summary  # noqa: E402

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # pragma: no cover - reported to the user
    plt = None

SINGLE_WORKLOADS = ("lifo_pair", "fifo_batch", "random_churn", "stream_ring", "mixed_heap")
PERCENTILES = (("lat_min_ns", 0.0), ("lat_p50_ns", 50.0), ("lat_p90_ns", 90.0), ("lat_p99_ns", 99.0),
               ("lat_p999_ns", 99.9), ("lat_p9999_ns", 99.99), ("lat_max_ns", 100.0))


def allocator_order(report):
    """Baseline and bench-internal first, then as they appear in the report."""
    seen = []
    for bench in report.measured():
        if bench.allocator not in seen:
            seen.append(bench.allocator)
    return sorted(seen, key=lambda name: (name not in ksbench.BENCH_INTERNAL, seen.index(name)))


def colours(names):
    cmap = plt.get_cmap("tab20")
    return {name: cmap(index % 20) for index, name in enumerate(names)}


def size_key(size):
    return int(size) if size.isdigit() else 1 << 40


def save(figure, out_dir, stem):
    figure.tight_layout()
    for extension in ("png", "svg"):
        figure.savefig(os.path.join(out_dir, "%s.%s" % (stem, extension)), dpi=110)
    plt.close(figure)


def subplot_grid(count):
    columns = min(count, 2) or 1
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(7.5 * columns, 4.2 * rows), squeeze=False)
    flat = [axis for row in axes for axis in row]
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat


def empty_figure(out_dir, stem, message):
    figure, axis = plt.subplots(figsize=(6, 2))
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center")
    save(figure, out_dir, stem)


def legend_of_all(axes, **kwargs):
    """One legend, on the first panel, naming every allocator drawn on any panel (the DMA panels
    have entries the others lack)."""
    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        axes[0].legend(handles, labels, **kwargs)


def unit_label(workload):
    """What one op of a workload is, for the y axis."""
    if workload in ("dma_capture", "dma_render"):
        return "ns per frame (Allocate, device op, Free)"
    if workload == "dma_copy":
        return "ns per 64 KiB / 1 MiB copy"
    if workload == "dma_descriptor":
        return "ns per descriptor"
    return "ns per Allocate or Free"


def plot_throughput(report, out_dir, palette):
    by_workload = {}
    for bench in report.measured():
        if not bench.threaded:
            by_workload.setdefault(bench.workload, []).append(bench)
    workloads = [w for w in SINGLE_WORKLOADS if w in by_workload] + \
        [w for w in by_workload if w not in SINGLE_WORKLOADS]
    if not workloads:
        return empty_figure(out_dir, "throughput", "no single-threaded benchmarks in this report")
    figure, axes = subplot_grid(len(workloads))
    for axis, workload in zip(axes, workloads):
        benches = by_workload[workload]
        sizes = sorted({bench.size for bench in benches}, key=size_key)
        names = [name for name in palette if any(bench.allocator == name for bench in benches)]
        width = 0.8 / max(1, len(names))
        for slot, name in enumerate(names):
            xs, ys = [], []
            for position, size in enumerate(sizes):
                match = [bench for bench in benches if bench.allocator == name and bench.size == size]
                if match:
                    xs.append(position + (slot - (len(names) - 1) / 2) * width)
                    ys.append(match[0].ns_per_op())
            axis.bar(xs, ys, width=width, color=palette[name], label=name)
        axis.set_xticks(range(len(sizes)))
        axis.set_xticklabels([ksbench.human_bytes(int(s)) if s.isdigit() else s for s in sizes])
        axis.set_yscale("log")
        axis.set_ylabel(unit_label(workload))
        axis.set_title(workload)
        axis.grid(axis="y", which="both", alpha=0.3)
    legend_of_all(axes, fontsize=7, ncol=2)
    save(figure, out_dir, "throughput")


def percentile_x(percentile):
    """HdrHistogram's percentile axis: 1/(1-p), with max drawn one decade past 99.99%."""
    if percentile >= 100.0:
        return 1e5
    return 1.0 / (1.0 - percentile / 100.0)


def plot_latency(report, out_dir, palette):
    chosen = {}
    for bench in report.measured():
        if bench.threaded or bench.counter("lat_p50_ns") is None:
            continue
        # One frame size per workload: 4 KiB where it ran, else the smallest.
        current = chosen.setdefault(bench.workload, bench.size)
        if bench.size == "4096" or (current != "4096" and size_key(bench.size) < size_key(current)):
            chosen[bench.workload] = bench.size
    if not chosen:
        return empty_figure(out_dir, "latency", "no latency figures in this report")
    workloads = [w for w in SINGLE_WORKLOADS if w in chosen] + [w for w in chosen if w not in SINGLE_WORKLOADS]
    figure, axes = subplot_grid(len(workloads))
    timer_ns = report.context.get("ks_timer_cost_ns")
    for axis, workload in zip(axes, workloads):
        for bench in report.measured():
            if bench.workload != workload or bench.size != chosen[workload] or bench.threaded:
                continue
            points = [(percentile_x(p), bench.counter(key)) for key, p in PERCENTILES if bench.counter(key)]
            axis.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=3,
                      color=palette[bench.allocator], label=bench.allocator)
        if timer_ns:
            axis.axhline(float(timer_ns), color="grey", linestyle=":", linewidth=1, label="timer read")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks([percentile_x(p) for _, p in PERCENTILES[1:]])
        axis.set_xticklabels(["50%", "90%", "99%", "99.9%", "99.99%", "max"])
        axis.set_ylabel("latency (ns)")
        size = chosen[workload]
        axis.set_title("%s, %s" % (workload, ksbench.human_bytes(int(size)) if size.isdigit() else size))
        axis.grid(which="both", alpha=0.3)
    legend_of_all(axes, fontsize=7, ncol=2)
    save(figure, out_dir, "latency")


def plot_scaling(report, out_dir, palette):
    series = {}
    for bench in report.measured():
        if bench.threaded:
            series.setdefault((bench.workload, bench.size), {}).setdefault(bench.allocator, []).append(bench)
    if not series:
        return empty_figure(out_dir, "scaling", "no threaded benchmarks in this report")
    keys = sorted(series, key=lambda key: (key[0], size_key(key[1])))
    figure, axes = subplot_grid(len(keys))
    for axis, key in zip(axes, keys):
        for name, benches in series[key].items():
            benches.sort(key=lambda bench: bench.threads)
            axis.plot([b.threads for b in benches], [1e3 / b.ns_per_op() for b in benches], marker="o",
                      color=palette[name], label=name)
        axis.set_xlabel("threads")
        axis.set_ylabel("million operations per second")
        axis.set_title("%s, %s" % (key[0], ksbench.human_bytes(int(key[1])) if key[1].isdigit() else key[1]))
        axis.grid(alpha=0.3)
        axis.set_xticks(sorted({b.threads for benches in series[key].values() for b in benches}))
    legend_of_all(axes, fontsize=7, ncol=2)
    save(figure, out_dir, "scaling")


def memory_rows(report):
    """[(workload label, allocator, blowup, rss growth)] at 4 KiB (mixed for mixed_heap)."""
    rows = []
    for bench in report.measured():
        if bench.size not in ("4096", "mix") or bench.threads != 1:
            continue
        rows.append((bench.workload, bench.allocator, bench.blowup(), bench.counter("rss_growth_bytes")))
    return rows


def plot_memory(report, out_dir, palette):
    rows = memory_rows(report)
    if not rows:
        return empty_figure(out_dir, "memory", "no 4 KiB single-thread benchmarks in this report")
    workloads = sorted({row[0] for row in rows}, key=lambda w: SINGLE_WORKLOADS.index(w) if w in SINGLE_WORKLOADS else 99)
    names = [name for name in palette if any(row[1] == name for row in rows)]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5))
    width = 0.8 / max(1, len(names))
    for slot, name in enumerate(names):
        for axis, column in ((top, 2), (bottom, 3)):
            xs, ys = [], []
            for position, workload in enumerate(workloads):
                match = [row for row in rows if row[0] == workload and row[1] == name and row[column] is not None]
                if match:
                    xs.append(position + (slot - (len(names) - 1) / 2) * width)
                    ys.append(max(match[0][column], 1e-3) if column == 2 else match[0][column] / 1024.0)
            axis.bar(xs, ys, width=width, color=palette[name], label=name)
    for axis, label in ((top, "blowup: reserved / live bytes"), (bottom, "peak RSS growth (KiB)")):
        axis.set_xticks(range(len(workloads)))
        axis.set_xticklabels(workloads)
        axis.set_ylabel(label)
        axis.set_yscale("symlog" if axis is bottom else "log")
        axis.grid(axis="y", which="both", alpha=0.3)
    top.set_title("memory at 4 KiB frames (mixed_heap: its three sizes)")
    top.legend(fontsize=7, ncol=3)
    save(figure, out_dir, "memory")


def history_table(reports):
    """{allocator: [geomean ratio to the first report, per report]} over common benchmarks."""
    first = reports[0]
    table = {}
    for report in reports:
        ratios = {}
        for bench in report.measured():
            old = first.benchmarks.get(bench.name)
            if old is None or old.error is not None or not old.runs:
                continue
            ratios.setdefault(bench.allocator, []).append(bench.ns_per_op() / old.ns_per_op())
        for allocator, values in ratios.items():
            table.setdefault(allocator, [None] * len(reports))[reports.index(report)] = ksbench.geomean(values)
    return table


def plot_history(reports, out_dir, palette):
    table = history_table(reports)
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(reports)), 4.5))
    for allocator, values in table.items():
        xs = [i for i, v in enumerate(values) if v is not None]
        axis.plot(xs, [values[i] for i in xs], marker="o", label=allocator, color=palette.get(allocator))
    axis.set_xticks(range(len(reports)))
    axis.set_xticklabels([report.label() for report in reports], rotation=20, ha="right", fontsize=7)
    axis.set_ylabel("time per op relative to the first report")
    axis.axhline(1.0, color="grey", linewidth=1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    save(figure, out_dir, "history")
    return table


def markdown(reports, out_dir, table):
    report = reports[-1]
    lines = ["# ksalloc benchmark report", "", "Report: `%s`" % report.path, ""]
    for stem, title in (("throughput", "Time per operation"), ("latency", "Latency percentiles"),
                        ("scaling", "Thread scaling"), ("memory", "Memory")):
        lines += ["## %s" % title, "", "![%s](%s.png) ([SVG](%s.svg))" % (title, stem, stem), ""]
    if table is not None:
        lines += ["## Across reports", "", "![history](history.png) ([SVG](history.svg))", "",
                  "| allocator | " + " | ".join(r.label() for r in reports) + " |",
                  "|---|" + "---|" * len(reports)]
        for allocator, values in table.items():
            lines.append("| %s | %s |" % (allocator, " | ".join("%.3fx" % v if v else "-" for v in values)))
        lines.append("")
    lines.append(summary.summary(report, markdown=True).replace("# ksalloc benchmark summary", "## Summary", 1))
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def newest(directory):
    candidates = [path for path in glob.glob(os.path.join(directory, "*.json"))]
    if not candidates:
        raise ksbench.ReportError("%s: no report (*.json) there; run make bench first" % directory)
    return max(candidates, key=os.path.getmtime)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="*", help="reports, oldest first; the last is described")
    parser.add_argument("--latest", metavar="DIR", help="use the newest report in DIR")
    parser.add_argument("--out", help="output directory")
    args = parser.parse_args()
    if plt is None:
        print("report: matplotlib is missing: install python3-matplotlib (make deps)", file=sys.stderr)
        return 2
    try:
        paths = list(args.reports) + ([newest(args.latest)] if args.latest else [])
        if not paths:
            raise ksbench.ReportError("no report given (REPORT.json ... or --latest DIR)")
        reports = [ksbench.load(path) for path in paths]
    except ksbench.ReportError as error:
        print("report: %s" % error, file=sys.stderr)
        return 2
    report = reports[-1]
    out_dir = args.out or os.path.join(os.path.dirname(report.path) or ".", "report-" + report.label())
    os.makedirs(out_dir, exist_ok=True)
    palette = colours(allocator_order(report))
    plot_throughput(report, out_dir, palette)
    plot_latency(report, out_dir, palette)
    plot_scaling(report, out_dir, palette)
    plot_memory(report, out_dir, palette)
    table = plot_history(reports, out_dir, palette) if len(reports) > 1 else None
    markdown(reports, out_dir, table)
    print("report: wrote %s/report.md and its plots" % out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
