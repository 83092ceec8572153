#!/usr/bin/env python3
"""summary.py -- the ranked summary of a ksalloc benchmark report.

    summary.py REPORT.json [--markdown]

For every workload, frame size and thread count: the allocators ranked by time per operation
(Allocate or Free), each with its ratio to the inline free-list baseline of the same run (the
bound: 1.00x is as fast as a free list written into the loop), throughput, latency percentiles
(which include one timer read, whose cost is printed), memory blowup (the allocator's
reserved_bytes over the bytes live) and peak RSS growth. Then the headline figures: pool against
the bound, the dispatch table's own cost, and the best ksalloc allocator against the best of the
general-purpose allocators. Rows where Allocate returned NULL are flagged: a refusal is fast.
"""

import argparse
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ksbench  # noqa: E402

COLUMNS = ("rank", "allocator", "ns/op", "x bound", "Mops/s", "p50", "p99", "op p99.9", "op max", "blowup", "rss+",
           "note")


def row_for(rank, bench, baseline_ns):
    ns = bench.ns_per_op()
    failures = bench.counter("allocation_failures_per_op") or 0.0
    blowup = bench.blowup()
    note = "NULL %.1f%% of ops" % (100.0 * failures) if failures > 0 else ""
    return (
        str(rank),
        bench.allocator,
        ksbench.human_ns(ns),
        "%.2fx" % (ns / baseline_ns) if baseline_ns else "-",
        "%.1f" % (1e3 / ns) if ns else "-",
        ksbench.human_ns(bench.counter("lat_p50_ns")),
        ksbench.human_ns(bench.counter("lat_p99_ns")),
        ksbench.human_ns(bench.counter("lat_op_p999_ns")),
        ksbench.human_ns(bench.counter("lat_op_max_ns")),
        "%.2f" % blowup if blowup is not None else "-",
        ksbench.human_bytes(bench.counter("rss_growth_bytes")),
        note,
    )


def ranked_groups(report):
    """[(group, baseline_ns, [rows])] with rows ranked fastest first."""
    result = []
    for group, by_allocator in ksbench.groups(report).items():
        baseline = by_allocator.get(ksbench.BASELINE)
        baseline_ns = baseline.ns_per_op() if baseline else None
        ranked = sorted(by_allocator.values(), key=lambda bench: bench.ns_per_op())
        rows = [row_for(rank + 1, bench, baseline_ns) for rank, bench in enumerate(ranked)]
        result.append((group, baseline_ns, rows))
    return result


def format_table(rows, markdown):
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(COLUMNS[i]), *(len(row[i]) for row in rows)) for i in range(len(COLUMNS))]
    left = {1, len(COLUMNS) - 1}

    def line(cells):
        return "  ".join(cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    return "\n".join([line(COLUMNS)] + [line(row) for row in rows])


def ratio_lines(report, numerator, denominator, what, accept=lambda group: True):
    """Per group where both ran (and accept(group)): numerator's ns/op over denominator's; and
    their geometric mean."""
    lines, ratios = [], []
    for group, by_allocator in ksbench.groups(report).items():
        if accept(group) and numerator in by_allocator and denominator in by_allocator:
            ratio = by_allocator[numerator].ns_per_op() / by_allocator[denominator].ns_per_op()
            ratios.append(ratio)
            lines.append("  %-40s %6.2fx" % (ksbench.group_title(group), ratio))
    mean = ksbench.geomean(ratios)
    head = "%s: geometric mean %.2fx over %d workloads" % (what, mean, len(ratios)) if mean else \
        "%s: not measured (%s or %s did not run)" % (what, numerator, denominator)
    return [head] + lines


def best_of(by_allocator, accept):
    candidates = [bench for name, bench in by_allocator.items() if accept(name)]
    return min(candidates, key=lambda bench: bench.ns_per_op()) if candidates else None


def versus_peers(report):
    """Per workload, the best ksalloc design against the best peer library called bare (as its
    users call it) and against the best KS-conformant peer instance; then the geometric mean of
    best design / best bare peer over the workloads where both ran."""
    lines = ["best ksalloc allocator vs the best general-purpose library called bare (%s), and vs the "
             "best KS-conformant peer instance, per workload:" % ", ".join(ksbench.BARE_PEERS)]
    ratios = []
    for group, by_allocator in ksbench.groups(report).items():
        ours = best_of(by_allocator, ksbench.is_ksalloc_allocator)
        bare = best_of(by_allocator, ksbench.is_bare_peer)
        conformant = best_of(by_allocator, lambda name: name in ksbench.PEERS)
        if ours is None or (bare is None and conformant is None):
            continue
        parts = []
        for theirs in (bare, conformant):
            if theirs is None:
                parts.append("%-14s %12s" % ("-", "-"))
                continue
            speedup = theirs.ns_per_op() / ours.ns_per_op()
            parts.append("%-14s %9s/op %5.2fx %s" % (theirs.allocator, ksbench.human_time(theirs.ns_per_op()),
                         speedup if speedup >= 1 else 1 / speedup, "faster" if speedup >= 1 else "slower"))
        if bare is not None:
            ratios.append(ours.ns_per_op() / bare.ns_per_op())
        lines.append("  %-40s %-12s %9s/op | vs bare: %s | vs conformant: %s"
                     % (ksbench.group_title(group), ours.allocator, ksbench.human_time(ours.ns_per_op()),
                        parts[0], parts[1]))
    mean = ksbench.geomean(ratios)
    if mean:
        lines.append("  best ksalloc design / best bare peer: geometric mean %.2fx over %d workloads "
                     "(below 1 = the design is faster)" % (mean, len(ratios)))
    return lines


def contract_cost(report):
    """Per peer: its KS-conformant instance over the same library called bare, same run."""
    lines = ["cost of the KS contract per peer (KS-conformant instance / the same library called bare; "
             "1.00x = free): the record an instance keeps per live frame so that DeleteAllocator can "
             "release frames still live and a Free of a frame not live is refused"]
    for peer in ksbench.PEERS:
        lines += ratio_lines(report, peer, peer + ksbench.BARE_SUFFIX, "  " + peer,
                             accept=lambda group: not group[0].startswith("dma_"))[:1]
    return lines


def headlines(report):
    lines = []
    # The DMA groups' bound is the CPU doing the device's work, not a free list: not in this mean.
    lines += ratio_lines(report, "pool", ksbench.BASELINE, "pool through the dispatch table / inline free list",
                         accept=lambda group: not group[0].startswith("dma_"))
    lines.append("")
    lines += ratio_lines(report, ksbench.TABLE, ksbench.DIRECT,
                         "dispatch table's cost: pool via its table / pool's Allocate/Free called directly")
    lines.append("")
    lines += versus_peers(report)
    lines.append("")
    lines += contract_cost(report)
    lines.append("")
    lines += ratio_lines(report, "memcpy", "engine",
                         "DMA engine's copy throughput / memcpy's (ring fed; above 1 = faster than memcpy)")
    for group, by_allocator in ksbench.groups(report).items():
        if group[0] == "dma_descriptor" and "engine" in by_allocator:
            lines.append("DMA engine's per-descriptor overhead (%s B copies, ring fed): %s"
                         % (group[1], ksbench.human_time(by_allocator["engine"].ns_per_op())))
    return lines


def context_lines(report):
    context = report.context
    keys = ("host_name", "date", "git_revision", "git_dirty", "compiler", "ks_build_cflags", "ks_cpu", "ks_kernel",
            "num_cpus", "load_avg", "library_build_type", "ks_timer", "ks_timer_cost_ns", "ks_perf_hardware",
            "ks_perf_software", "ks_suite")
    lines = ["%-18s %s" % (key, context[key]) for key in keys if key in context]
    if "ks_timer_resolution_ns" in context:
        lines.append("%-18s %s ns" % ("timer resolution", context["ks_timer_resolution_ns"]))
    lines.append("%-18s %d per benchmark" % ("repetitions", report.repetitions()))
    return lines


def summary(report, markdown=False):
    out = []
    heading = "## " if markdown else "== "
    out.append(("# " if markdown else "") + "ksalloc benchmark summary: " + report.path)
    out.append("")
    out += [("    " if markdown else "") + line for line in context_lines(report)]
    out.append("")
    out.append("Ranked by time per Allocate or Free (CPU time; wall time for threaded and DMA workloads). "
               "'x bound' is the ratio to the inline free list of the same run. p50 and p99 (ns) are "
               "percentiles of the mean per op over batches of 64 operations between two timer reads; "
               "op p99.9 and op max are single operations, from chunks in which the thread was not "
               "preempted; one timer read (%s ns) is subtracted from every sample. "
               "blowup = reserved_bytes / live_bytes."
               % report.context.get("ks_timer_cost_ns", "?"))
    for group, baseline_ns, rows in ranked_groups(report):
        out.append("")
        out.append(heading + ksbench.group_title(group))
        out.append(format_table(rows, markdown))
    out.append("")
    out.append(heading + "headline figures")
    block = headlines(report)
    out += (["```"] + block + ["```"]) if markdown else block
    failed, skipped = report.failed(), report.skipped()
    if failed or skipped:
        out.append("")
        out.append(heading + "not measured")
        out += ["  failed  %s: %s" % (bench.name, bench.error) for bench in failed]
        out += ["  skipped %s: %s" % (name, reason) for name, reason in skipped]
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="a report written by make bench (Google Benchmark JSON)")
    parser.add_argument("--markdown", action="store_true", help="GitHub Markdown tables")
    args = parser.parse_args()
    try:
        report = ksbench.load(args.report)
    except ksbench.ReportError as error:
        print("summary: %s" % error, file=sys.stderr)
        return 2
    print(summary(report, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
