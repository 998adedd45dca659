#!/usr/bin/env python3
"""The median of repeated sweeps of bench/perfmodel-grid/run.sh, per run or per size.

    median.py grid OUT.csv SWEEP.csv...         the runs (model, zero, scheme, nodes, link)
    median.py collectives OUT.csv SWEEP.csv...  the micro-benchmarks (collective,
                                                hierarchical, nodes, link, bytes)

Every timing column (t_*, samples_per_s; seconds) becomes the median of the sweeps that
measured that run or size (a run measured once keeps its figures); the other columns are
the first sweep's. A column `sweeps` says how many measured it."""
import csv
import statistics
import sys

KEYS = {"grid": ("model", "zero", "scheme", "nodes", "link"),
        "collectives": ("collective", "hierarchical", "nodes", "link", "bytes")}


def timing(col):
    return col.startswith("t_") or col in ("samples_per_s", "seconds")


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in KEYS:
        sys.exit(__doc__)
    key, out, paths = KEYS[sys.argv[1]], sys.argv[2], sys.argv[3:]
    groups, cols = {}, []
    for p in paths:
        with open(p) as fh:
            reader = csv.DictReader(fh)
            cols += [c for c in reader.fieldnames if c not in cols]
            for r in reader:
                groups.setdefault(tuple(r[k] for k in key), []).append(r)
    rows = []
    for k in sorted(groups):
        runs = groups[k]
        row = dict(runs[0])
        for c in cols:
            if timing(c):
                vals = [float(r[c]) for r in runs if r.get(c) not in (None, "")]
                if vals:
                    row[c] = "%.9g" % statistics.median(vals)
        row["sweeps"] = len(runs)
        rows.append(row)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols + ["sweeps"])
        w.writeheader()
        w.writerows(rows)
    print("wrote %s: %d rows from %d sweeps" % (out, len(rows), len(paths)))


if __name__ == "__main__":
    main()
