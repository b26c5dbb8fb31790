#!/usr/bin/env python3
"""Summarises the kernel traces that bench/kernel_trace.cc writes (kernels-<pid>.tsv, one per process):
per process and kernel, the count and median / p90 duration in microseconds, and the median / p90 gap
between the end of the kernel ahead of it on its stream and its start (negative: it started before that
one ended, as programmatic dependent launch allows); kernels run fewer than --min-count times are left out.
Then, on each process's busiest stream after its last prefill kernel (the decode steps), each kernel's
end minus the end of the kernel before it: what the kernel adds to a step, where launches overlap.

  scripts/kernel_trace.py DIR [--min-count N]
"""
import argparse
import collections
import glob
import os
import statistics


def short_name(demangled):
    """`void pinmoe::(anonymous namespace)::K<float, true>(Args)` -> `K<float, true>`."""
    name = demangled.removeprefix("void ")
    for junk in ("(anonymous namespace)::", "pinmoe::"):
        name = name.replace(junk, "")
    depth = 0
    for i, ch in enumerate(name):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            return name[:i]
    return name


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summarise(path, min_count):
    rows = []
    with open(path) as f:
        for line in f:
            start, end, stream, _node, name = line.rstrip("\n").split("\t", 4)
            rows.append((int(start), int(end), int(stream), short_name(name)))
    rows.sort()
    durations = collections.defaultdict(list)
    gaps = collections.defaultdict(list)
    last_end = {}
    for start, end, stream, name in rows:
        durations[name].append((end - start) / 1e3)
        if stream in last_end:
            gaps[name].append((start - last_end[stream]) / 1e3)
        last_end[stream] = max(end, last_end.get(stream, 0))
    print_rows(path, rows, durations, gaps, min_count)
    print_end_to_end(rows, min_count)


PREFILL_KERNELS = ("GroupedGateUpKernel", "GroupedDownKernel", "FlashAttentionKernel")


def print_end_to_end(rows, min_count):
    streams = collections.Counter(stream for _, _, stream, _ in rows)
    if not streams:
        return
    busiest = streams.most_common(1)[0][0]
    on = [r for r in rows if r[2] == busiest]
    last_prefill = max((i for i, r in enumerate(on) if r[3].startswith(PREFILL_KERNELS)), default=-1)
    on = on[last_prefill + 1:]
    adds = collections.defaultdict(list)
    for before, kernel in zip(on, on[1:]):
        adds[kernel[3]].append((kernel[1] - before[1]) / 1e3)
    print(f"  decode on stream {busiest}: {len(on)} kernels; end minus the previous kernel's end, us")
    for name, d in sorted(adds.items(), key=lambda x: -sum(x[1])):
        if len(d) >= min_count:
            print(f"    {name[:70]:70s} {len(d):7d} {statistics.median(d):8.2f} / {quantile(d, 0.9):8.2f}")


def print_rows(path, rows, durations, gaps, min_count):
    span = (rows[-1][1] - rows[0][0]) / 1e3 if rows else 0.0
    print(f"{os.path.basename(path)}: {len(rows)} kernels over {span / 1e3:.1f} ms")
    print(f"  {'kernel':72s} {'count':>7s} {'median':>8s} / {'p90':>8s} us  gap before it {'median':>8s} / {'p90':>8s} us")
    items = [(n, d) for n, d in durations.items() if len(d) >= min_count]
    for name, d in sorted(items, key=lambda x: -sum(x[1])):
        g = gaps.get(name, [])
        gap = f"{statistics.median(g):8.2f} / {quantile(g, 0.9):8.2f}" if g else f"{'-':>8s}"
        print(f"  {name[:72]:72s} {len(d):7d} {statistics.median(d):8.2f} / {quantile(d, 0.9):8.2f}      "
              f"{' ' * 13}{gap}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--min-count", type=int, default=32)
    args = p.parse_args()
    paths = sorted(glob.glob(os.path.join(args.dir, "kernels-*.tsv")))
    if not paths:
        raise SystemExit(f"{args.dir}: no kernels-*.tsv")
    for path in paths:
        summarise(path, args.min_count)


if __name__ == "__main__":
    main()
