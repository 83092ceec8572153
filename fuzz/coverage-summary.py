#!/usr/bin/env python3
"""coverage-summary.py -- what `make fuzz-coverage` found, read from fuzz/oss-fuzz/coverage's output.

    fuzz/coverage-summary.py REPORT_ROOT [--repo DIR]

Reads REPORT_ROOT/fuzzer_stats/<target>.json (each target's `llvm-cov export -summary-only`),
REPORT_ROOT/report/linux/summary.json (the same for the merged profile of all targets) and
REPORT_ROOT/report/linux/coverage.json (the full export, for per-function counts), and prints four
tables, which it also writes to REPORT_ROOT/report/summary.txt beside index.html:

  (a) per target, line and branch coverage over the files it exercises: a file counts when the
      target runs at least one of its lines, so a target is not charged for the allocators it
      never selects (every target links them all, through the catalogue);
  (b) per source directory (allocators/, harness/, harness/dma/, harness/cli/, fuzz/, then any
      other), the merged profile's lines and branches covered of all;
  (c) per allocator, allocators/<name>.c in the merged profile and in its own fuzz_alloc_<name>;
  (d) the functions of allocators/ and harness/ that no target ran, by file.

Paths are made relative to the repository by resolving them (the build compiles the tree through
the $SRC/ksalloc link to it); files outside it -- system headers, libFuzzer -- are left out.
A branch is one outcome of a condition (llvm-cov counts the true and the false side apart).
Standard library only.
"""
import argparse
import collections
import json
import os
import sys
import textwrap

DIRECTORY_ORDER = ["allocators", "harness", "harness/dma", "harness/cli", "fuzz"]
UNREACHED_SCOPE = ("allocators/", "harness/")


def load_export(path):
    """The first data set of an llvm-cov export, or None when the file is missing."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)["data"][0]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, IndexError) as error:
        sys.exit(f"coverage-summary: {path} is not an llvm-cov export ({error})")


class RepoPaths:
    """Maps the absolute file names llvm-cov reports to repository-relative ones (None: outside)."""

    def __init__(self, repo):
        self.repo = os.path.realpath(repo)
        self.cache = {}

    def relative(self, filename):
        if filename not in self.cache:
            rel = os.path.relpath(os.path.realpath(filename), self.repo)
            self.cache[filename] = None if rel.startswith("..") else rel
        return self.cache[filename]


class Tally:
    """Covered and total counts of lines, branches and functions, summed over files."""

    KINDS = ("lines", "branches", "functions")

    def __init__(self):
        self.covered = dict.fromkeys(self.KINDS, 0)
        self.total = dict.fromkeys(self.KINDS, 0)

    def add(self, summary):
        for kind in self.KINDS:
            self.covered[kind] += summary[kind]["covered"]
            self.total[kind] += summary[kind]["count"]

    def percent(self, kind):
        if self.total[kind] == 0:
            return "-"
        return f"{100.0 * self.covered[kind] / self.total[kind]:.1f}%"

    def fraction(self, kind):
        return f"{self.covered[kind]}/{self.total[kind]}"


def repo_files(export, paths):
    """{relative path: summary} of the export's files inside the repository."""
    files = {}
    for entry in export["files"]:
        rel = paths.relative(entry["filename"])
        if rel is not None:
            files[rel] = entry["summary"]
    return files


def table(headers, rows):
    """Rows as aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [headers] + rows) for i in range(len(headers))]

    def line(row):
        cells = [str(row[0]).ljust(widths[0])] + [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    return [line(headers), line(["-" * width for width in widths])] + [line(row) for row in rows]


def per_target(targets, stats, paths):
    rows = []
    for target in targets:
        export = stats.get(target)
        if export is None:
            rows.append([target, "-", "no profile", "", "no profile", ""])
            continue
        tally = Tally()
        reached = [summary for summary in repo_files(export, paths).values() if summary["lines"]["covered"] > 0]
        for summary in reached:
            tally.add(summary)
        rows.append([target, len(reached), tally.fraction("lines"), tally.percent("lines"),
                     tally.fraction("branches"), tally.percent("branches")])
    return ["(a) per target, over the files it exercises (a file counts when one of its lines runs)", ""] + \
        table(["target", "files", "lines", "%", "branches", "%"], rows)


def per_directory(merged_files):
    tallies = collections.defaultdict(Tally)
    everything = Tally()
    for rel, summary in merged_files.items():
        tallies[os.path.dirname(rel)].add(summary)
        everything.add(summary)
    order = [d for d in DIRECTORY_ORDER if d in tallies] + sorted(d for d in tallies if d not in DIRECTORY_ORDER)
    rows = [[f"{d}/", t.fraction("lines"), t.percent("lines"), t.fraction("branches"), t.percent("branches"),
             t.fraction("functions"), t.percent("functions")] for d, t in ((d, tallies[d]) for d in order)]
    rows.append(["all", everything.fraction("lines"), everything.percent("lines"), everything.fraction("branches"),
                 everything.percent("branches"), everything.fraction("functions"), everything.percent("functions")])
    return ["(b) per source directory, all targets merged", ""] + \
        table(["directory", "lines", "%", "branches", "%", "functions", "%"], rows)


def per_allocator(targets, stats, merged_files, paths):
    def cell(summary, kind):
        if summary is None:
            return "-"
        tally = Tally()
        tally.add(summary)
        return f"{tally.percent(kind)} ({tally.fraction(kind)})"

    rows = []
    for target in targets:
        if not target.startswith("fuzz_alloc_"):
            continue
        source = f"allocators/{target[len('fuzz_alloc_'):]}.c"
        own_export = stats.get(target)
        own = repo_files(own_export, paths).get(source) if own_export is not None else None
        merged = merged_files.get(source)
        rows.append([source, cell(merged, "lines"), cell(own, "lines"), cell(merged, "branches"), cell(own, "branches")])
    return ["(c) per allocator: its source in the merged profile and in its own fuzz_alloc_<name>", ""] + \
        table(["allocator", "lines, merged", "lines, own target", "branches, merged", "branches, own target"], rows)


def unreached_functions(coverage, paths):
    """{file: [(line, name)]} of the functions in scope whose every instance ran 0 times."""
    counts = collections.defaultdict(int)
    first_line = {}
    for function in coverage["functions"]:
        rel = paths.relative(function["filenames"][0])
        if rel is None or not rel.startswith(UNREACHED_SCOPE):
            continue
        # A static function's profile name is "<file>:<name>"; a static inline one from a header
        # has one instance per file that uses it, all of which must be unreached.
        name = function["name"].rsplit(":", 1)[-1]
        key = (rel, name)
        counts[key] = max(counts[key], function["count"])
        lines = [region[0] for region in function["regions"] if region[5] == 0]
        first_line[key] = min(lines) if lines else 0
    by_file = collections.defaultdict(list)
    for (rel, name), count in counts.items():
        if count == 0:
            by_file[rel].append((first_line[(rel, name)], name))
    return {rel: sorted(functions) for rel, functions in by_file.items()}, counts


def unreached_section(coverage, paths):
    by_file, counts = unreached_functions(coverage, paths)
    in_file = collections.Counter(rel for rel, _ in counts)
    total = sum(len(functions) for functions in by_file.values())
    out = [f"(d) functions no target reaches in allocators/ and harness/: {total} of {len(counts)}", ""]
    for rel in sorted(by_file):
        names = ", ".join(f"{name}:{line}" for line, name in by_file[rel])
        out += textwrap.wrap(f"{rel} ({len(by_file[rel])} of {in_file[rel]}): {names}", width=100,
                             subsequent_indent="    ", break_on_hyphens=False)
    if not by_file:
        out.append("(none)")
    return out


def main():
    parser = argparse.ArgumentParser(description="Summarise fuzz/oss-fuzz/coverage's output.")
    parser.add_argument("report_root", help="the REPORT_ROOT given to fuzz/oss-fuzz/coverage")
    parser.add_argument("--repo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                        help="the repository the paths are made relative to (default: this file's)")
    args = parser.parse_args()

    root = args.report_root
    merged = load_export(os.path.join(root, "report", "linux", "summary.json"))
    coverage = load_export(os.path.join(root, "report", "linux", "coverage.json"))
    if merged is None or coverage is None:
        sys.exit(f"coverage-summary: no merged report under {root}/report/linux (run fuzz/oss-fuzz/coverage first)")
    try:
        with open(os.path.join(root, "fuzzer_stats", "coverage_targets.txt"), encoding="utf-8") as handle:
            targets = handle.read().split()
    except FileNotFoundError:
        sys.exit(f"coverage-summary: no {root}/fuzzer_stats/coverage_targets.txt (run fuzz/oss-fuzz/coverage first)")
    stats = {target: load_export(os.path.join(root, "fuzzer_stats", f"{target}.json")) for target in targets}

    paths = RepoPaths(args.repo)
    merged_files = repo_files(merged, paths)
    sections = [per_target(targets, stats, paths), per_directory(merged_files),
                per_allocator(targets, stats, merged_files, paths), unreached_section(coverage, paths)]
    text = "\n\n".join("\n".join(section) for section in sections) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(root, "report", "summary.txt"), "w", encoding="utf-8") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
