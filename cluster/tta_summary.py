#!/usr/bin/env python3
"""Summarizes cluster/tta's runs: medians over seeds per (schedule, ranks, batch) into
DIR/frontier.dat (the plot's data) and a table on stdout, with the critical batch of the
empirical model of McCandlish et al. 2018 fitted to the fixed-batch medians of each rank
count: steps to target S(B) = S_min (1 + B_crit / B), a least-squares line of S against
1/B (S_min its intercept, B_crit its slope / intercept), next to the median B_simple
measured at the target. Only runs that reached the target enter the medians."""
import csv
import statistics
import sys
from collections import defaultdict


def main():
    tta, gns, out = sys.argv[1:4]
    rows = list(csv.DictReader(open(tta)))
    groups = defaultdict(list)
    for r in rows:
        groups[(r["schedule"], int(r["ranks"]), int(r["batch"]))].append(r)
    lines = ["# schedule ranks batch runs reached med_steps med_samples med_train_s med_b_simple "
             "med_final_batch"]
    table = []
    for (sched, n, b), rs in sorted(groups.items()):
        ok = [r for r in rs if r["reached"] == "1"]
        med = lambda k: statistics.median(float(r[k]) for r in ok) if ok else float("nan")
        bs = [float(r["b_simple"]) for r in ok if r["b_simple"]]
        mb = statistics.median(bs) if bs else float("nan")
        vals = (sched, n, b, len(rs), len(ok), med("steps"), med("samples"), med("train_s"), mb,
                med("final_batch"))
        table.append(vals)
        lines.append("%s %d %d %d %d %.6g %.6g %.6g %.6g %.6g" % vals)
    open(out + "/frontier.dat", "w").write("\n".join(lines) + "\n")
    print("schedule ranks batch  reached  steps  samples  train_s  B_simple  final_batch")
    for v in table:
        print("%-8s %5d %5d  %d/%d  %8.0f %9.0f %8.2f %9.1f %6.0f" % (v[0], v[1], v[2], v[4], v[3],
                                                                 v[5], v[6], v[7], v[8], v[9]))
    for n in sorted({v[1] for v in table}):
        pts = [(v[2], v[5], v[8]) for v in table if v[0] == "fixed" and v[1] == n and v[4] > 0]
        if len(pts) < 2:
            continue
        xs = [1.0 / b for b, _, _ in pts]
        ys = [s for _, s, _ in pts]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        s_min = my - slope * mx
        crit = slope / s_min if s_min > 0 else float("nan")
        print("ranks %d: fit S(B) = S_min (1 + B_crit / B): S_min %.0f steps, B_crit %.0f; "
              "B_simple at the target, median over the batches: %.0f" %
              (n, s_min, crit, statistics.median(p[2] for p in pts)))
        for (b0, s0, _), (b1, s1, _) in zip(pts, pts[1:]):
            print("  batch %5d -> %5d: steps x %.2f (perfect scaling %.2f)" % (b0, b1, s1 / s0, b0 / b1))


if __name__ == "__main__":
    main()
