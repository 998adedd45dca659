#!/usr/bin/python3
"""Where a training step's CPU time goes, from two `perf record -g` runs of one program
that differ only in the number of steps: the difference of the two runs' samples, per
category, divided by the difference of steps, is the CPU time per step with everything
outside the steps (start-up, loading, importing torch) cancelled out.

  perf_breakdown.py --freq HZ [--ranks N] SHORT.perf STEPS_SHORT LONG.perf STEPS_LONG [--top N]

Categories: "GEMM" is every sample with an OpenBLAS frame on its stack (the kernel, its
packing copies, and the memset it calls for beta = 0); every other sample counts under its
innermost symbol, with ddp's per-ISA suffixes (.arch_x86_64_v4) dropped, or under its
library where the library has no symbols (PyTorch's libtorch_cpu). Measure with one
thread: with more, OpenBLAS's idle threads spin inside OpenBLAS and would count as GEMM.
Prints ms per step by category, largest first, and GEMM's share; with --ranks N (perf
recorded the launcher and its N ranks), the CPU time of one rank, the mean of the N.
"""
import argparse
import collections
import os
import re
import subprocess


def categories(path):
    """{category: samples} of one perf.data file."""
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "ip,sym,dso"],
        check=True, capture_output=True, text=True,
    ).stdout
    counts = collections.Counter()
    for sample in out.split("\n\n"):
        frames = [l.strip() for l in sample.strip().split("\n") if l.strip()]
        if not frames:
            continue
        parsed = []
        for f in frames:
            m = re.match(r"\S+\s+(.*?)\s+\((.*)\)$", f)
            if m:
                parsed.append((m.group(1), os.path.basename(m.group(2))))
        if not parsed:
            continue
        if any("openblas" in dso for _, dso in parsed):
            counts["GEMM (OpenBLAS)"] += 1
            continue
        sym, dso = parsed[0]
        if sym.startswith("[unknown]") or re.match(r"^0x[0-9a-f]+$", sym) or dso.startswith("libtorch"):
            key = "[%s]" % dso
        else:
            key = re.sub(r"\.arch_[\w]+$", "", sym.split("+")[0])
            if dso == "[kernel.kallsyms]":
                key = "[kernel]"
            elif dso.startswith("python3"):
                key = "[python]"
        counts[key] += 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--freq", type=float, required=True, help="perf record -F")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("short")
    ap.add_argument("short_steps", type=int)
    ap.add_argument("long")
    ap.add_argument("long_steps", type=int)
    a = ap.parse_args()
    s, l = categories(a.short), categories(a.long)
    steps = (a.long_steps - a.short_steps) * a.ranks
    ms = {k: (l[k] - s[k]) / a.freq / steps * 1e3 for k in set(s) | set(l)}
    total = sum(ms.values())
    gemm = ms.get("GEMM (OpenBLAS)", 0.0)
    print("CPU time per step and rank %.1f ms: GEMM %.1f ms (%.1f%%), everything else %.1f ms" % (
        total, gemm, 100 * gemm / total, total - gemm))
    rest = sorted(((v, k) for k, v in ms.items() if k != "GEMM (OpenBLAS)"), reverse=True)
    for v, k in rest[: a.top]:
        print("  %7.1f ms  %5.1f%%  %s" % (v, 100 * v / total, k))
    left = sum(v for v, _ in rest[a.top :])
    print("  %7.1f ms  %5.1f%%  (the rest)" % (left, 100 * left / total))


if __name__ == "__main__":
    main()
