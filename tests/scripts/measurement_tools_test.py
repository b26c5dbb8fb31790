#!/usr/bin/env python3
"""Tests of the scripts that turn device output into the numbers we report: scripts/ab_summary.py (the
A/B rounds' means and the workers' cost) and scripts/kernel_trace.py (the kernel trace's per-kernel and
end-to-end medians), on inputs whose answers are worked out by hand."""
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts")


def run(script, *args, stdin=""):
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], input=stdin, text=True,
                          capture_output=True, check=False)


def bench_line(rnd, value, workers, rate):
    return (f"r{rnd} KNOB={value} workers {workers}: decode 128 tokens: {rate} tokens/s (3.1 ms/token; "
            f"6.08 GB of weights = 1900 GB/s, 39.5% of peak; roofline 790 tokens/s)\n")


class AbSummaryTest(unittest.TestCase):
    def test_means_and_costs(self):
        rounds = (bench_line(1, "a", 0, 300.0) + bench_line(1, "a", 2, 270.0) + bench_line(1, "b", 0, 320.0) +
                  bench_line(1, "b", 2, 300.0) + bench_line(2, "a", 0, 310.0) + bench_line(2, "a", 2, 280.0) +
                  bench_line(2, "b", 0, 320.0) + bench_line(2, "b", 2, 280.0) + "hand-over timeline: ignored\n")
        r = run("ab_summary.py", stdin=rounds)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()[1:]
        self.assertEqual(lines[0], "KNOB=a, 0: 305.0 (300.0-310.0, 2)")
        # 275 against 305: -9.8% of the rate, +10.9% of the time.
        self.assertEqual(lines[1], "KNOB=a, 2: 275.0 (270.0-280.0, 2); -9.8% rate, +10.9% time")
        self.assertEqual(lines[2], "KNOB=b, 0: 320.0 (320.0-320.0, 2)")
        self.assertEqual(lines[3], "KNOB=b, 2: 290.0 (280.0-300.0, 2); -9.4% rate, +10.3% time")

    def test_no_rounds_is_an_error(self):
        r = run("ab_summary.py", stdin="nothing here\n")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no `rR", r.stderr)


class KernelTraceTest(unittest.TestCase):
    def test_durations_gaps_and_end_to_end(self):
        with tempfile.TemporaryDirectory() as d:
            rows = []
            t = 0
            # One prefill kernel, then 40 "layers" of A (4 us) and B (6 us, started 1 us before A ends).
            rows.append((t, t + 50_000, 7, "void pinmoe::FlashAttentionKernel<128>(pinmoe::Args)"))
            t += 51_000
            for _ in range(40):
                rows.append((t, t + 4_000, 7, "void pinmoe::(anonymous namespace)::A<float, true>(pinmoe::Args)"))
                rows.append((t + 3_000, t + 9_000, 7, "void B(int)"))
                t += 10_000  # B ends at +9 us; the next A starts 1 us later
            with open(os.path.join(d, "kernels-42.tsv"), "w") as f:
                for start, end, stream, name in rows:
                    f.write(f"{start}\t{end}\t{stream}\t0\t{name}\n")
            r = run("kernel_trace.py", d)
            self.assertEqual(r.returncode, 0, r.stderr)
            out = r.stdout
            self.assertIn("kernels-42.tsv: 81 kernels", out)
            a = next(l for l in out.splitlines() if l.strip().startswith("A<float, true>") and "/" in l)
            b = next(l for l in out.splitlines() if l.strip().startswith("B ") or l.strip().startswith("B\t"))
            # A: 40 runs of 4 us, 1 us after the kernel before it (the first after the prefill kernel).
            self.assertEqual(a.split()[2:7], ["40", "4.00", "/", "4.00", "1.00"])
            # B: 6 us, starting 1 us before A ends.
            self.assertEqual(b.split()[1:6], ["40", "6.00", "/", "6.00", "-1.00"])
            # End to end on the decode part (after the prefill kernel): A adds 10 - 6 = 5 us after B's end,
            # B adds 5 us after A's end.
            tail = out[out.index("decode on stream 7"):]
            self.assertIn("80 kernels", tail)
            ends = {l.split()[0]: l.split() for l in tail.splitlines()[1:]}
            self.assertEqual(ends["A<float,"][3], "5.00")
            self.assertEqual(ends["B"][2], "5.00")


if __name__ == "__main__":
    unittest.main()
