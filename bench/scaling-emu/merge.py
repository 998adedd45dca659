#!/usr/bin/env python3
"""Merges the repetitions under bench/scaling-emu/raw/ (written by run.sh) into:

  scaling-emu.csv      one row per link bandwidth x algorithm x mode x nodes;
  <bw>-<algo>.csv/png  one CSV per config in cluster/scaling's format, drawn with
                       cluster/scaling.gp;
  scaling-emu.png      all configs in one figure (series/ holds its data and script).

Inputs: every directory raw/<bw>-<algo>-rep<k>/ that holds a scaling.csv with all its
points; a run cut short (run.sh writes into <dir>.tmp and renames it when done) is
skipped with a warning. Configs may have different numbers of repetitions: all complete
ones are used and the count is in the `reps` column. For each point the repetition with
the median samples/s is taken (the lower middle one for an even count, so that the row's
times all come from one real run); efficiency = median sps(N) / (N x median sps(1)). The
`efficiency_runs` column gives each repetition's own efficiency (its N-node and 1-node
runs), to show the spread. The output depends only on raw/: running it twice gives the
same files.

  python3 bench/scaling-emu/merge.py
  RAW=raw-yielding OUT=yielding python3 bench/scaling-emu/merge.py

RAW (default raw) is the directory of repetitions and OUT (default .) where the files go,
both relative to bench/scaling-emu.
"""
import csv
import glob
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RAW = os.path.join(HERE, os.environ.get("RAW", "raw"))
OUT = os.path.normpath(os.path.join(HERE, os.environ.get("OUT", ".")))
os.makedirs(OUT, exist_ok=True)
BW_ORDER = {"1gbit": 0, "10gbit": 1, "unshaped": 2}
ALGO_ORDER = {"default": 0, "ring": 1, "rd": 2}
RUN_DIR = re.compile(r"(.+)-(default|ring|rd)-rep(\d+)$")

runs = {}  # (bw, algo) -> {(mode, ranks): [row, ...]}
for d in sorted(glob.glob(os.path.join(RAW, "*"))):
    name = os.path.basename(d)
    m = RUN_DIR.match(name)
    path = os.path.join(d, "scaling.csv")
    if not m or not os.path.isfile(path):
        print("merge: skipped %s (not a finished run: no <bw>-<algo>-rep<k>/scaling.csv)"
              % name, file=sys.stderr)
        continue
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    points = {(r["mode"], int(r["ranks"])) for r in rows}
    if len(points) < 6:
        print("merge: skipped %s (%d of 6 points)" % (name, len(points)), file=sys.stderr)
        continue
    cfg = (m.group(1), m.group(2))
    for r in rows:
        r["rep"] = int(m.group(3))
        runs.setdefault(cfg, {}).setdefault((r["mode"], int(r["ranks"])), []).append(r)
for cfg in sorted(runs):
    reps = sorted({r["rep"] for rs in runs[cfg].values() for r in rs})
    print("merge: %s-%s: repetitions %s" % (cfg + (" ".join(map(str, reps)),)),
          file=sys.stderr)

cols = ["link_bw", "algo", "mode", "nodes", "global_batch", "samples_per_s", "efficiency",
        "t_compute", "t_exposed_comm", "t_step", "t_forward", "t_backward", "t_optim",
        "t_allreduce", "reps", "samples_per_s_runs", "efficiency_runs"]
TIMES = ("t_compute", "t_exposed_comm", "t_step", "t_forward", "t_backward", "t_optim",
         "t_allreduce")
out_rows = []
for cfg in sorted(runs, key=lambda c: (ALGO_ORDER[c[1]], BW_ORDER.get(c[0], 9), c[0])):
    bw, algo = cfg
    base = {}
    cfg_rows = []
    for (mode, n) in sorted(runs[cfg], key=lambda k: (k[0] != "weak", k[1])):
        rs = sorted(runs[cfg][(mode, n)], key=lambda r: r["rep"])
        sps = [float(r["samples_per_s"]) for r in rs]
        med = statistics.median_low(sps)
        r = next(r for r in rs if float(r["samples_per_s"]) == med)
        if n == 1:
            base[mode] = med
        eff = med / (n * base[mode]) if mode in base else float("nan")
        row = {"link_bw": bw, "algo": algo, "mode": mode, "nodes": n,
               "global_batch": r["global_batch"], "samples_per_s": "%.1f" % med,
               "efficiency": "%.4f" % eff, "reps": len(rs),
               "samples_per_s_runs": " ".join("%.0f" % x for x in sps),
               "efficiency_runs": " ".join("%.2f" % float(x["efficiency"]) for x in rs)}
        for c in TIMES:
            row[c] = r[c]
        cfg_rows.append(row)
    out_rows += cfg_rows
    # cluster/scaling's own format, for cluster/scaling.gp
    f = os.path.join(OUT, "%s-%s.csv" % (bw, algo))
    own = ("mode", "nodes", "global_batch", "samples_per_s", "efficiency") + TIMES
    with open(f, "w") as fh:
        fh.write("mode,ranks," + ",".join(own[2:]) + "\n")
        for row in cfg_rows:
            fh.write(",".join(str(row[c]) for c in own) + "\n")
    subprocess.run(["gnuplot", "-e", "csv='%s'; png='%s'" % (f, f[:-4] + ".png"),
                    os.path.join(ROOT, "cluster", "scaling.gp")], check=True)

with open(os.path.join(OUT, "scaling-emu.csv"), "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=cols)
    w.writeheader()
    w.writerows(out_rows)

# Series for the combined plot: one data file per (bw, algo, mode).
ser_dir = os.path.join(OUT, "series")
os.makedirs(ser_dir, exist_ok=True)
series = []
for row in out_rows:
    key = (row["link_bw"], row["algo"], row["mode"])
    if key not in series:
        series.append(key)
for key in series:
    with open(os.path.join(ser_dir, "%s-%s-%s.dat" % key), "w") as fh:
        fh.write("# nodes samples_per_s efficiency ideal_sps fwd_bwd_ms optim_ms exposed_ms step_ms allreduce_ms\n")
        for row in out_rows:
            if (row["link_bw"], row["algo"], row["mode"]) != key:
                continue
            eff = float(row["efficiency"])
            sps = float(row["samples_per_s"])
            fb = float(row["t_forward"]) + float(row["t_backward"])
            fh.write("%d %s %s %.1f %.2f %.2f %.2f %.2f %.2f\n" % (
                row["nodes"], row["samples_per_s"], row["efficiency"], sps / eff if eff else 0,
                fb * 1e3, float(row["t_optim"]) * 1e3, float(row["t_exposed_comm"]) * 1e3,
                float(row["t_step"]) * 1e3, float(row["t_allreduce"]) * 1e3))
with open(os.path.join(ser_dir, "bars.dat"), "w") as fh:
    fh.write("# label fwd_bwd_ms optim_ms exposed_ms\n")
    for row in out_rows:
        fb = float(row["t_forward"]) + float(row["t_backward"])
        lab = "%s%s %s N%d" % (row["link_bw"].replace("unshaped", "unsh"),
                               "" if row["algo"] == "default" else "/" + row["algo"],
                               row["mode"][0], row["nodes"])
        fh.write('"%s" %.2f %.2f %.2f\n' % (lab, fb * 1e3, float(row["t_optim"]) * 1e3,
                                           float(row["t_exposed_comm"]) * 1e3))

colors = {"1gbit": "#cc3311", "10gbit": "#0077bb", "unshaped": "#009988"}
dash = {"default": 1, "ring": 4, "rd": 5}


def plots(mode, what):
    parts = []
    for key in series:
        bw, algo, m = key
        if m != mode:
            continue
        f = "series/%s-%s-%s.dat" % key  # relative: plot.gp runs in OUT
        title = "%s%s" % (bw, "" if algo == "default" else " " + algo)
        pt = {"default": 7, "ring": 5, "rd": 9}[algo]
        if what == "sps":
            parts.append("'%s' using 1:2 with linespoints lw 2 pt %d lc rgb '%s' dt %d title '%s'"
                         % (f, pt, colors.get(bw, "black"), dash[algo], title))
            if algo == "default":
                parts.append("'%s' using 1:4 with lines dt 2 lc rgb '%s' title '%s ideal'"
                             % (f, colors.get(bw, "black"), bw))
        else:
            parts.append("'%s' using 1:3 with linespoints lw 2 pt %d lc rgb '%s' dt %d title '%s'"
                         % (f, pt, colors.get(bw, "black"), dash[algo], title))
    if what == "eff":
        parts.append("1 with lines dt 2 lc rgb 'gray' title 'ideal'")
    return "plot " + ", \\\n     ".join(parts)


gp = """set terminal pngcairo size 1600,1000 font "sans,10"
set output '%(png)s'
set grid
set key top left Left reverse
set multiplot layout 2,3 title "ddp-bench train, MLP 784-1024-1024-10 fp32, emulated nodes (one rank each, all on one 2-core machine)"
set logscale x 2
set xtics (1, 2, 4)
set xlabel "nodes"
set title "weak scaling (128 samples/rank): throughput"
set ylabel "samples/s"
set yrange [0:*]
%(wsps)s
set title "weak scaling: efficiency = sps(N)/(N sps(1))"
set ylabel "efficiency"
set yrange [0:1.1]
%(weff)s
set title "strong scaling (global batch 512): throughput"
set ylabel "samples/s"
set yrange [0:*]
%(ssps)s
set title "strong scaling: efficiency"
set ylabel "efficiency"
set yrange [0:1.1]
%(seff)s
unset logscale x
set multiplot next
set origin 0.333,0
set size 0.667,0.5
set title "per-step time (median run): compute (fwd+bwd), optimizer, exposed communication"
set xlabel ""
set ylabel "ms per step"
set yrange [0:*]
set xtics auto rotate by -45 font ",8"
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.7
plot '%(bars)s' using 2:xtic(1) title "fwd+bwd" lc rgb "#4477aa", \\
     '' using 3 title "optimizer" lc rgb "#ccbb44", \\
     '' using 4 title "exposed comm" lc rgb "#ee6677"
unset multiplot
""" % {"png": "scaling-emu.png", "wsps": plots("weak", "sps"),
       "weff": plots("weak", "eff"), "ssps": plots("strong", "sps"), "seff": plots("strong", "eff"),
       "bars": "series/bars.dat"}
gpf = os.path.join(ser_dir, "plot.gp")
with open(gpf, "w") as fh:
    fh.write(gp)
subprocess.run(["gnuplot", os.path.join("series", "plot.gp")], cwd=OUT, check=True)
with open(os.path.join(OUT, "scaling-emu.csv")) as fh:
    print(fh.read(), end="")
