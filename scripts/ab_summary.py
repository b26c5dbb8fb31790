#!/usr/bin/env python3
"""Summarises the rounds that scripts/device-ab prints (lines `rR VAR=VALUE workers W: decode ... X tokens/s`):
per value and worker count the mean decode rate over the rounds with its spread, and, where the value
also ran in-process (workers 0), the multi-process cost as a fraction of the in-process rate and time.

  scripts/ab_summary.py < device-ab output
"""
import collections
import re
import sys

LINE = re.compile(r"^r\d+ (?P<value>\S+) workers (?P<workers>\d+): decode .*?(?P<rate>[\d.]+) tokens/s")


def main():
    rates = collections.defaultdict(list)
    order = []
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        key = (m["value"], int(m["workers"]))
        if key not in rates:
            order.append(key)
        rates[key].append(float(m["rate"]))
    if not rates:
        raise SystemExit("ab_summary: no `rR VAR=VALUE workers W: decode ... tokens/s` lines")
    print("value, workers: mean decode tok/s (min-max, rounds); against in-process: rate, time")
    values = list(dict.fromkeys(value for value, _ in order))  # in the order they first ran
    for value, workers in sorted(order, key=lambda k: (values.index(k[0]), k[1])):
        r = rates[(value, workers)]
        mean = sum(r) / len(r)
        line = f"{value}, {workers}: {mean:.1f} ({min(r):.1f}-{max(r):.1f}, {len(r)})"
        base = rates.get((value, 0))
        if workers != 0 and base:
            b = sum(base) / len(base)
            line += f"; {100 * (mean / b - 1):+.1f}% rate, {100 * (b / mean - 1):+.1f}% time"
        print(line)


if __name__ == "__main__":
    main()
