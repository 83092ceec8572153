#!/usr/bin/env python3
"""report.py -- Markdown and plots (matplotlib, PNG and SVG) from ksalloc benchmark reports.

    report.py [--out DIR | --into PARENT] REPORT.json [REPORT.json ...]
    report.py [--out DIR | --into PARENT] --latest RESULTS_DIR    (the newest *.json there)

The last report given is the one described; with several, a history plot and table compare
every allocator across them (geometric mean of its time per operation relative to the first).
Writes into DIR (default: PARENT/report-<its name>/, PARENT being --into or the report's own
directory):
  report.md                  context, the figures below, the ranked summary tables
  throughput.png/.svg        time per operation, every allocator workload and frame size
  dma.png/.svg               the same for the DMA workloads (device round trips, copies)
  latency.png/.svg           per-operation latency percentiles (HdrHistogram-style percentile plot)
  scaling.png/.svg           throughput against thread count for the threaded workloads
  memory.png/.svg            blowup (reserved / live bytes) and peak RSS growth, every workload
  history.png/.svg           (several reports only) each allocator across the reports

Every plot draws an allocator the same way (allocator_style): references black, general-purpose
peers in grey tones with their own marker, each ksalloc design in its own hue. A dot is the median
of the repetitions and its bar spans their minimum to maximum; legends sit outside the panels.
"""

import argparse
import glob
import math
import os
import sys
import zlib
from collections import namedtuple

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ksbench  # noqa: E402
import summary  # noqa: E402

try:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, and smaller
    import matplotlib.pyplot as plt
    from matplotlib import ticker
    from matplotlib.lines import Line2D
except ImportError:  # pragma: no cover - reported to the user
    plt = None

SINGLE_WORKLOADS = ("lifo_pair", "fifo_batch", "random_churn", "stream_ring", "mixed_heap")
# The body: percentiles of batch means (64 operations between two timer reads); the tails: single
# operations (bench/latency.h).
BODY_PERCENTILES = (("lat_min_ns", 0.0), ("lat_p50_ns", 50.0), ("lat_p90_ns", 90.0), ("lat_p99_ns", 99.0))
TAIL_PERCENTILES = (("lat_op_p50_ns", 50.0), ("lat_op_p99_ns", 99.0), ("lat_op_p999_ns", 99.9),
                    ("lat_op_p9999_ns", 99.99), ("lat_op_max_ns", 100.0))
PERCENTILE_LABEL = {0.0: "min", 50.0: "50%", 90.0: "90%", 99.0: "99%", 99.9: "99.9%", 99.99: "99.99%", 100.0: "max"}
SPREAD = "min-max"  # what an error bar spans: the repetitions' minimum to maximum
RSS_LINEAR_KIB = 4.0  # RSS moves in pages: the memory plot's axis is linear below one page

# ---- One look per allocator, the same in every plot ---------------------------------------------

Style = namedtuple("Style", "kind colour marker line filled")
# kind: "reference" (the bound and the bench's own comparison points), "design" (ksalloc's
# allocators and plugins), "device" (the DMA engine's own copies), "peer" (general-purpose
# allocators).

REFERENCES = {
    ksbench.BASELINE: Style("reference", "#000000", "D", "--", True),  # the bound
    ksbench.DIRECT: Style("reference", "#000000", "o", ":", False),  # pool without its table
    "memcpy": Style("reference", "#000000", "s", "--", True),  # dma_copy's reference
}
# Grey tones far enough apart to tell, each with its own marker; a bare peer (the library called
# directly, no KS bookkeeping) keeps its family's grey and marker, hollow and dashed.
PEER_LOOKS = {"system": ("#3a3a3a", "s"), "jemalloc": ("#6e6e6e", "^"), "mimalloc": ("#9a9a9a", "v"),
              "tcmalloc": ("#525252", "P")}
# Distinct hues (no light/dark pairs), fixed per name so that a plot never repaints an allocator
# because another one joined the run.
DESIGN_COLOURS = {
    "pool": "#1f77b4", "lookaside": "#ff7f0e", "buddy": "#2ca02c", "tlsf": "#d62728", "ring": "#9467bd",
    "magazine": "#8c564b", "lockfree": "#e377c2", "dma_common": "#17becf", "dma_sg": "#bcbd22",
    "dma_pool": "#0a3d91",
}
# Plugins and allocators added later: a hue chosen by a hash of the name, so still fixed per name.
SPARE_COLOURS = ("#008080", "#800000", "#4b0082", "#556b2f", "#c71585", "#b8860b", "#2f4f4f", "#ff4500")


def peer_family(name):
    """The general-purpose library an allocator is an instance of (system, jemalloc, ...), or None."""
    for family in ksbench.PEERS:
        if name == family or name.startswith(family + "_") or name.startswith(family + "-") or \
                name.endswith("_" + family) or name.endswith("-" + family):
            return family
    return None


def allocator_style(name):
    if name in REFERENCES:
        return REFERENCES[name]
    family = peer_family(name)
    if family is not None:
        colour, marker = PEER_LOOKS[family]
        bare = "bare" in name
        return Style("peer", colour, marker, "--" if bare else "-", not bare)
    if name == "engine":
        return Style("device", "#d4a017", "*", "-", True)
    colour = DESIGN_COLOURS.get(name) or SPARE_COLOURS[zlib.crc32(name.encode()) % len(SPARE_COLOURS)]
    return Style("design", colour, "h" if name.startswith("dma_") else "o", "-", True)


KIND_ORDER = {"reference": 0, "design": 1, "device": 2, "peer": 3}
KIND_TITLE = {"reference": "references (black)", "design": "ksalloc designs", "device": "ksalloc's DMA engine",
              "peer": "general-purpose peers (grey)"}


def allocator_order(report):
    """References, then the ksalloc designs (pool, the O(1) reference, first; plugins last), then
    the peers by family (each conformant instance before its bare one)."""
    seen = []
    for bench in report.measured():
        if bench.allocator not in seen:
            seen.append(bench.allocator)

    known = list(REFERENCES) + list(DESIGN_COLOURS)

    def key(name):
        style = allocator_style(name)
        family = peer_family(name)
        return (KIND_ORDER[style.kind], ksbench.PEERS.index(family) if family else 0, "bare" in name,
                known.index(name) if name in known else len(known), seen.index(name))

    return sorted(seen, key=key)


def marker_kwargs(style, size=5.5):
    size += 3 if style.marker == "*" else 0  # a star's area is small for its size
    return dict(marker=style.marker, markersize=size, color=style.colour, markeredgecolor=style.colour,
                markerfacecolor=style.colour if style.filled else "white", markeredgewidth=1.1)


def figure_legend(figure, names):
    """One legend for the whole figure, right of every panel, in labelled sections (references,
    designs, peers), so that it covers no data."""
    handles, labels = [], []
    kind = None
    for name in names:
        style = allocator_style(name)
        if style.kind != kind:
            kind = style.kind
            handles.append(Line2D([], [], linestyle="none"))
            labels.append(KIND_TITLE[kind])
        handles.append(Line2D([], [], linestyle=style.line, linewidth=1.3, **marker_kwargs(style)))
        labels.append(name)
    legend = figure.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=8,
                           frameon=False, handlelength=2.6)
    for text, label in zip(legend.get_texts(), labels):
        if label in KIND_TITLE.values():
            text.set_fontweight("bold")
    return legend


# ---- Figures derived from the repetitions -------------------------------------------------------


def per_op_times_ns(bench):
    ops = bench.ops_per_iteration()
    return [time / ops for time in bench.times_ns()]


def median_and_spread(values):
    """(median, min, max) of a list of numbers, or None for an empty one."""
    values = sorted(value for value in values if value is not None)
    if not values:
        return None
    middle = len(values) // 2
    median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    return median, values[0], values[-1]


def run_counter(bench, fn):
    """fn(run) over the repetitions, for counters (memory) whose median alone hides the spread."""
    values = []
    for run in bench.runs:
        try:
            values.append(fn(run))
        except (KeyError, TypeError, ZeroDivisionError):
            continue
    return median_and_spread(values)


def size_key(size):
    return int(size) if size.isdigit() else 1 << 40


def size_text(size):
    return ksbench.human_bytes(int(size)) if size.isdigit() else "mixed sizes" if size == "mix" else size


def unit_label(workload):
    """What one op of a workload is, for the time axis (the figure's title says more)."""
    if workload in ("dma_capture", "dma_render"):
        return "ns per frame"
    if workload == "dma_copy":
        return "ns per copy"
    if workload == "dma_descriptor":
        return "ns per descriptor"
    return "ns per op"


def repetitions_text(report):
    count = report.repetitions()
    if count <= 1:
        return "one repetition: no spread to show"
    return "dot: median of %d repetitions, bar: their %s" % (count, SPREAD)


def save(figure, out_dir, stem):
    for extension in ("png", "svg"):
        figure.savefig(os.path.join(out_dir, "%s.%s" % (stem, extension)), dpi=110, bbox_inches="tight")
    plt.close(figure)


def empty_figure(out_dir, stem, message):
    figure, axis = plt.subplots(figsize=(6, 1.2))
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center")
    save(figure, out_dir, stem)


def tick_text(value, _position=None):
    """1, 2, 5, 10, ... 1k, 20k, 1M: tick labels short enough for small panels."""
    for suffix, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return ("%g" % (value / scale)) + suffix
    return "%g" % value


def log_ticks(target, low, high, suffix=""):
    """Labelled ticks on a log axis (target: an x or y Axis) at 1-2-5 steps, or at every integer
    step where the range [low, high] is too narrow to hold two of those."""
    steps = (1.0, 2.0, 5.0)
    ticks = [mantissa * 10 ** exponent for exponent in range(int(math.floor(math.log10(low))),
                                                             int(math.ceil(math.log10(high))) + 1)
             for mantissa in steps]
    if sum(low <= tick <= high for tick in ticks) < 2:
        steps = tuple(float(step) for step in range(1, 10))
    target.set_major_locator(ticker.LogLocator(base=10, subs=steps))
    target.set_major_formatter(ticker.FuncFormatter(lambda value, _: tick_text(value) + suffix))
    target.set_minor_locator(ticker.LogLocator(base=10, subs=tuple(float(s) for s in range(1, 10))))
    target.set_minor_formatter(ticker.NullFormatter())


# ---- Time per operation: one dot row per allocator, one panel per workload and frame size --------


def panel_reference(benches):
    """The allocator a panel's times are read against: the bound, else dma_copy's memcpy."""
    for name in (ksbench.BASELINE, "memcpy"):
        if name in benches:
            return name
    return None


def plot_dot_grid(report, out_dir, stem, workloads, title, align_sizes, none_message):
    """Rows of panels, one row per workload, one panel per frame size (in a column per size when
    align_sizes, else packed from the left); in each panel one line per allocator on a log time
    axis, the reference as a dashed line through the panel and a second axis on top giving the
    time as a multiple of it."""
    by_key = {}
    for bench in report.measured():
        if bench.workload in workloads and not bench.threaded:
            by_key.setdefault((bench.workload, bench.size), {})[bench.allocator] = bench
    workloads = [w for w in workloads if any(key[0] == w for key in by_key)]
    if not workloads:
        return empty_figure(out_dir, stem, none_message)
    order = allocator_order(report)
    present = {w: sorted((key[1] for key in by_key if key[0] == w), key=size_key) for w in workloads}
    sizes = sorted({size for sizes in present.values() for size in sizes if size.isdigit()}, key=size_key)
    if align_sizes:
        # A workload without numeric sizes (mixed_heap) takes the first column.
        slots = {w: {s: sizes.index(s) if s in sizes else i for i, s in enumerate(present[w])} for w in workloads}
    else:
        slots = {w: {s: i for i, s in enumerate(present[w])} for w in workloads}
    columns = max(column for w in workloads for column in slots[w].values()) + 1
    rows_of = {w: [name for name in order if any(name in by_key[(w, s)] for s in present[w])] for w in workloads}
    heights = [0.75 + 0.2 * len(rows_of[w]) for w in workloads]
    figure, axes = plt.subplots(len(workloads), columns, figsize=(max(7.0, 3.4 * columns + 1.0), sum(heights) + 0.6),
                                squeeze=False, layout="constrained", gridspec_kw=dict(height_ratios=heights))
    figure.get_layout_engine().set(h_pad=0.12, hspace=0.04, wspace=0.02)
    for row, workload in enumerate(workloads):
        first = min(slots[workload].values())
        for column in range(columns):
            axis = axes[row][column]
            size = next((s for s, c in slots[workload].items() if c == column), None)
            if size is None:
                axis.set_visible(False)
                continue
            draw_dot_panel(axis, by_key[(workload, size)], rows_of[workload], workload, size,
                           label_rows=column == first)
    figure.suptitle("%s\n%s" % (title, repetitions_text(report)), fontsize=10)
    figure_legend(figure, [name for name in order if any(name in names for names in rows_of.values())])
    save(figure, out_dir, stem)


def draw_dot_panel(axis, benches, names, workload, size, label_rows):
    positions = {name: index for index, name in enumerate(names)}
    reference = panel_reference(benches)
    reference_ns = benches[reference].ns_per_op() if reference else None
    lows, highs = {}, {}
    for name, bench in benches.items():
        figures = median_and_spread(per_op_times_ns(bench))
        if figures is None or name not in positions:
            continue
        median, lows[name], highs[name] = figures
        style = allocator_style(name)
        axis.errorbar([median], [positions[name]], xerr=[[median - lows[name]], [highs[name] - median]],
                      linestyle="none", elinewidth=1.0, capsize=2.0, ecolor=style.colour, **marker_kwargs(style))
    if reference_ns:
        axis.axvline(reference_ns, color="black", linestyle="--", linewidth=0.9, zorder=0)
    axis.set_xscale("log")
    low, high = min(lows.values()), max(highs.values())
    others = [value for name, value in lows.items() if name != reference]
    if reference_ns and others and reference_ns < min(others) / 8:
        # A reference decades below every allocator (the DMA bound is the CPU alone) would squeeze
        # the allocators into one spot: it stays off the axis, named at its row.
        low = min(others)
        axis.annotate("\u2190 %s at %s, off the axis" % (reference, ksbench.human_time(reference_ns)),
                      (0.01, positions[reference]),
                      xycoords=("axes fraction", "data"), va="center", fontsize=7)
    axis.set_xlim(low / 1.35, high * 1.35)
    log_ticks(axis.xaxis, low / 1.35, high * 1.35)
    axis.tick_params(axis="x", labelsize=7.5)
    axis.set_ylim(len(names) - 0.5, -0.5)
    axis.set_yticks(range(len(names)))
    axis.set_yticklabels(names if label_rows else [], fontsize=7.5)
    axis.tick_params(axis="y", length=0)
    axis.grid(axis="y", alpha=0.18)
    axis.grid(axis="x", which="major", alpha=0.3)
    # Lines between references, designs and peers.
    kinds = [allocator_style(name).kind for name in names]
    for index in range(1, len(names)):
        if kinds[index] != kinds[index - 1]:
            axis.axhline(index - 0.5, color="#bbbbbb", linewidth=0.6)
    axis.set_title("%s, %s" % (workload, size_text(size)), fontsize=9)
    axis.set_xlabel("%s, log -- lower is better" % unit_label(workload), fontsize=7.5, labelpad=1)
    if reference_ns:
        top = axis.secondary_xaxis("top", functions=(lambda x: x / reference_ns, lambda r: r * reference_ns))
        top.set_xscale("log")
        log_ticks(top.xaxis, low / 1.35 / reference_ns, high * 1.35 / reference_ns, suffix="x")
        top.tick_params(axis="x", labelsize=6.5, colors="#444444", pad=1)
        top.set_xlabel("x bound" if reference == ksbench.BASELINE else "x %s" % reference, fontsize=6.5,
                       color="#444444", labelpad=1)


# ---- Latency percentiles --------------------------------------------------------------------------


def percentile_x(percentile):
    """HdrHistogram's percentile axis: 1/(1-p), with max drawn one decade past 99.99% and min two
    octaves before the median (1/(1-0) would crowd it)."""
    if percentile >= 100.0:
        return 1e5
    if percentile <= 0.0:
        return 0.5
    return 1.0 / (1.0 - percentile / 100.0)


def subplot_grid(count, width=6.0, height=3.8):
    columns = min(count, 2) or 1
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    flat = [axis for row in axes for axis in row]
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat


def latency_panel(axis, benches, order, keys, title, timer_line=None):
    """One panel of the latency figure: every allocator's line over the percentiles in keys."""
    drawn = set()
    for name in order:
        bench = benches.get(name)
        if bench is None:
            continue
        points = [(percentile_x(p), bench.counter(key)) for key, p in keys if bench.counter(key)]
        if not points:
            continue
        style = allocator_style(name)
        axis.plot([x for x, _ in points], [y for _, y in points], linestyle=style.line, linewidth=1.2,
                  **marker_kwargs(style, 4))
        drawn.add(name)
    axis.set_xscale("log")
    axis.set_yscale("log")
    if timer_line:
        # Below the timer's step a single operation reads as 0 or one step: not the allocator.
        axis.axhline(float(timer_line), color="#888888", linestyle=":", linewidth=1)
        axis.annotate("timer resolution (%s ns)" % timer_line, (percentile_x(50.0), float(timer_line)), fontsize=7,
                      color="#666666", va="bottom", ha="left", xytext=(2, 2), textcoords="offset points")
    axis.set_xticks([percentile_x(p) for _, p in keys])
    axis.set_xticklabels([PERCENTILE_LABEL[p] for _, p in keys])
    axis.xaxis.set_minor_locator(ticker.NullLocator())
    log_ticks(axis.yaxis, *axis.get_ylim())
    axis.set_ylabel("ns per op (log) -- lower is better", fontsize=8)
    axis.set_title(title, fontsize=9)
    axis.grid(which="major", alpha=0.3)
    return drawn


def plot_latency(report, out_dir):
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
    # Two panels per workload: the body (batch means, which resolve allocators below the timer's
    # step) and the tails (single operations of unpreempted chunks), side by side.
    figure, axes = plt.subplots(len(workloads), 2, figsize=(12.0, 3.6 * len(workloads)), squeeze=False)
    resolution_ns = report.context.get("ks_timer_resolution_ns")
    order = allocator_order(report)
    drawn = set()
    for row, workload in zip(axes, workloads):
        benches = {b.allocator: b for b in report.measured()
                   if b.workload == workload and b.size == chosen[workload] and not b.threaded}
        where = "%s, %s" % (workload, size_text(chosen[workload]))
        drawn |= latency_panel(row[0], benches, order, BODY_PERCENTILES,
                               "%s: body, mean per op of 64-op batches" % where)
        drawn |= latency_panel(row[1], benches, order, TAIL_PERCENTILES,
                               "%s: tails, single ops (preempted chunks left out)" % where, resolution_ns)
    for axis in axes[-1]:
        axis.set_xlabel("percentile")
    figure.suptitle("Latency percentiles (median over the repetitions of each percentile; one timer read "
                    "subtracted from every sample)", fontsize=10)
    figure.tight_layout()
    figure_legend(figure, [name for name in order if name in drawn])
    save(figure, out_dir, "latency")


# ---- Thread scaling -------------------------------------------------------------------------------


def plot_scaling(report, out_dir):
    series = {}
    for bench in report.measured():
        if bench.threaded:
            series.setdefault((bench.workload, bench.size), {}).setdefault(bench.allocator, []).append(bench)
    if not series:
        return empty_figure(out_dir, "scaling", "no threaded benchmarks in this report")
    keys = sorted(series, key=lambda key: (key[0], size_key(key[1])))
    figure, axes = subplot_grid(len(keys))
    order = allocator_order(report)
    for axis, key in zip(axes, keys):
        threads = sorted({b.threads for benches in series[key].values() for b in benches})
        # Dodge, so that equal points do not hide each other: across a fifth of the gap between
        # thread counts, or most of the panel when there is one thread count.
        width = (0.2 * (threads[-1] - threads[0]) if len(threads) > 1 else 0.7) / max(1, len(series[key]))
        names = [name for name in order if name in series[key]]
        for slot, name in enumerate(names):
            benches = sorted(series[key][name], key=lambda bench: bench.threads)
            xs, ys, below, above = [], [], [], []
            for bench in benches:
                figures = median_and_spread([1e3 / t for t in per_op_times_ns(bench) if t > 0])
                if figures is None:
                    continue
                median, low, high = figures
                xs.append(bench.threads + (slot - (len(names) - 1) / 2) * width)
                ys.append(median)
                below.append(median - low)
                above.append(high - median)
            style = allocator_style(name)
            axis.errorbar(xs, ys, yerr=[below, above], linestyle=style.line, linewidth=1.2, elinewidth=0.9,
                          capsize=2, ecolor=style.colour, **marker_kwargs(style, 5))
        axis.set_xlabel("threads")
        axis.set_ylabel("million ops per second -- higher is better", fontsize=8)
        axis.set_ylim(0, axis.get_ylim()[1] * 1.08)  # from zero: the heights compare as ratios
        axis.set_title("%s, %s" % (key[0], size_text(key[1])), fontsize=9)
        axis.grid(alpha=0.3)
        axis.set_xticks(threads)
        if len(threads) == 1:
            axis.set_xlim(threads[0] - 0.5, threads[0] + 0.5)
    figure.suptitle("Thread scaling (wall time)\n%s" % repetitions_text(report), fontsize=10)
    figure.tight_layout()
    figure_legend(figure, [name for name in order if any(name in s for s in series.values())])
    save(figure, out_dir, "scaling")


# ---- Memory ---------------------------------------------------------------------------------------


def memory_configs(report):
    """{workload: (size, threads)}: every workload once, at 4 KiB frames where it ran them (the
    mixed sizes for mixed_heap, else its smallest frame), with the fewest threads."""
    configs = {}
    for bench in report.measured():
        configs.setdefault(bench.workload, set()).add((bench.size, bench.threads))
    chosen = {}
    for workload, pairs in configs.items():
        sizes = {size for size, _ in pairs}
        size = "4096" if "4096" in sizes else "mix" if "mix" in sizes else min(sizes, key=size_key)
        chosen[workload] = (size, min(threads for s, threads in pairs if s == size))
    return chosen


def workload_order(report):
    """The single-thread workloads in their fixed order, the threaded ones, then the DMA ones, each
    group in report order."""
    names = []
    for bench in report.measured():
        if bench.workload not in names:
            names.append(bench.workload)
    return [w for w in SINGLE_WORKLOADS if w in names] + \
        sorted((w for w in names if w not in SINGLE_WORKLOADS), key=lambda w: w.startswith("dma_"))


def blowup_of(run):
    return run["reserved_bytes"] / run["live_bytes"]


def rss_kib_of(run):
    return run["rss_growth_bytes"] / 1024.0


def plot_memory(report, out_dir):
    configs = memory_configs(report)
    if not configs:
        return empty_figure(out_dir, "memory", "no benchmarks in this report")
    workloads = workload_order(report)
    order = allocator_order(report)
    rows = {w: {b.allocator: b for b in report.measured()
                if b.workload == w and (b.size, b.threads) == configs[w]} for w in workloads}
    figure, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(13, 0.62 * len(workloads) + 1.2),
                                         layout="constrained")
    drawn = set()
    for axis, fn, what in ((left, blowup_of, "blowup"), (right, rss_kib_of, "rss")):
        for row, workload in enumerate(workloads):
            names = [name for name in order if name in rows[workload]]
            points = 0
            for slot, name in enumerate(names):
                figures = run_counter(rows[workload][name], fn)
                if figures is None:
                    continue
                median, low, high = figures
                style = allocator_style(name)
                y = row + (slot - (len(names) - 1) / 2) * (0.8 / max(1, len(names)))
                axis.errorbar([median], [y], xerr=[[median - low], [high - median]], linestyle="none",
                              elinewidth=0.9, capsize=1.5, ecolor=style.colour, **marker_kwargs(style, 4.5))
                drawn.add(name)
                points += 1
            if points == 0:
                axis.text(0.5, row, "no %s figure in this workload" % ("blowup" if what == "blowup" else "RSS"),
                          transform=axis.get_yaxis_transform(),
                          ha="center", va="center", fontsize=7.5, color="#777777", style="italic")
            if row:
                axis.axhline(row - 0.5, color="#dddddd", linewidth=0.6)
        axis.grid(axis="x", which="major", alpha=0.3)
    left.set_xscale("log")
    left.axvline(1.0, color="black", linestyle="--", linewidth=0.9, zorder=0)
    log_ticks(left.xaxis, *left.get_xlim())
    left.set_xlabel("blowup: reserved / live bytes, log (1 = no overhead) -- lower is better", fontsize=8)
    right.set_xscale("symlog", linthresh=RSS_LINEAR_KIB, linscale=0.5)
    high = max(right.get_xlim()[1] * 1.6, RSS_LINEAR_KIB * 4)
    right.set_xlim(-0.6, high)
    # Ticks at 0 and at powers of 4 KiB pages: RSS grows a page at a time.
    right.xaxis.set_major_locator(ticker.FixedLocator(
        [0.0] + [RSS_LINEAR_KIB * 4 ** k for k in range(0, 12) if RSS_LINEAR_KIB * 4 ** k <= high]))
    right.xaxis.set_major_formatter(ticker.FuncFormatter(
        lambda value, _: "0" if value == 0 else ksbench.human_bytes(int(value * 1024))))
    right.xaxis.set_minor_locator(ticker.NullLocator())
    right.set_xlabel("peak RSS growth (linear below one 4 KiB page, log above) -- lower is better", fontsize=8)

    def row_label(workload):
        size, threads = configs[workload]
        if not workload.startswith("mt_"):
            return "%s, %s" % (workload, size_text(size))
        return "%s, %s, %d thread%s" % (workload, size_text(size), threads, "" if threads == 1 else "s")

    left.set_yticks(range(len(workloads)))
    left.set_yticklabels([row_label(w) for w in workloads], fontsize=8)
    left.set_ylim(len(workloads) - 0.5, -0.5)
    left.tick_params(axis="y", length=0)
    figure.suptitle("Memory, every workload at one frame size\n%s" % repetitions_text(report), fontsize=10)
    figure_legend(figure, [name for name in order if name in drawn])
    save(figure, out_dir, "memory")


# ---- Across reports -------------------------------------------------------------------------------


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


def plot_history(reports, out_dir):
    table = history_table(reports)
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(reports)), max(4.5, 0.2 * len(table) + 1.5)))
    order = [name for name in allocator_order(reports[-1]) if name in table] + \
        [name for name in table if name not in allocator_order(reports[-1])]
    for allocator in order:
        values = table[allocator]
        xs = [i for i, v in enumerate(values) if v is not None]
        style = allocator_style(allocator)
        axis.plot(xs, [values[i] for i in xs], linestyle=style.line, linewidth=1.2, **marker_kwargs(style, 5))
    axis.set_xticks(range(len(reports)))
    axis.set_xticklabels([report.label() for report in reports], rotation=20, ha="right", fontsize=7)
    axis.set_ylabel("time per op relative to the first report\n(geometric mean) -- lower is better", fontsize=8)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure_legend(figure, order)
    save(figure, out_dir, "history")
    return table


# ---- Markdown and the command line ----------------------------------------------------------------

FIGURES = (("throughput", "Time per operation"), ("dma", "DMA workloads"), ("latency", "Latency percentiles"),
           ("scaling", "Thread scaling"), ("memory", "Memory"))


def markdown(reports, out_dir, table):
    report = reports[-1]
    lines = ["# ksalloc benchmark report", "", "Report: `%s`" % report.path, "",
             "Every plot draws an allocator the same way: the references black (the inline free-list "
             "bound a dashed line), the general-purpose peers in grey with a marker each (a bare peer "
             "hollow and dashed), each ksalloc design in its own colour. %s. Time panels carry the time "
             "as a multiple of the bound on their top axis." % repetitions_text(report).capitalize(), ""]
    for stem, title in FIGURES:
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
    """The newest report in directory (make report: results/local/, this machine's runs)."""
    candidates = glob.glob(os.path.join(directory, "*.json"))
    if not candidates:
        raise ksbench.ReportError(
            "%s: no report of this machine here: run `make bench` first (a part is enough: make bench "
            "BENCH_ARGS=--benchmark_filter=lifo_pair), or name reports, e.g. make report "
            "REPORTS=results/baselines/<name>.json for a committed one from another machine" % directory)
    return max(candidates, key=lambda path: (os.path.getmtime(path), path))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="*", help="reports, oldest first; the last is described")
    parser.add_argument("--latest", metavar="DIR", help="use the newest report in DIR")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--out", help="output directory")
    target.add_argument("--into", metavar="PARENT", help="write into PARENT/report-<name of the report>/")
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
    parent = args.into or os.path.dirname(report.path) or "."
    out_dir = args.out or os.path.join(parent, "report-" + report.label())
    os.makedirs(out_dir, exist_ok=True)
    print("report: describing %s" % report.path)
    allocator_workloads = [w for w in workload_order(report) if not w.startswith("dma_")]
    dma_workloads = [w for w in workload_order(report) if w.startswith("dma_")]
    plot_dot_grid(report, out_dir, "throughput", allocator_workloads,
                  "Time per operation (one Allocate or one Free), single thread", align_sizes=True,
                  none_message="no single-thread allocator benchmarks in this report")
    plot_dot_grid(report, out_dir, "dma", dma_workloads,
                  "DMA workloads: time per frame (Allocate, device op, Free), per copy, per descriptor",
                  align_sizes=False, none_message="no DMA benchmarks in this report")
    plot_latency(report, out_dir)
    plot_scaling(report, out_dir)
    plot_memory(report, out_dir)
    table = plot_history(reports, out_dir) if len(reports) > 1 else None
    markdown(reports, out_dir, table)
    print("report: wrote %s/report.md and its plots" % out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
