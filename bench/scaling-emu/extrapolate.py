#!/usr/bin/env python3
"""Weak-scaling extrapolation with cluster/perfmodel predict: ddp's MLP 784-1024-1024-10
(1,863,690 parameters, fp32 gradients in 2 buckets) on 8 .. 1024 nodes, one rank per
node, 128 samples per rank, at 1, 10, 25 and 100 Gbit/s.

Inputs measured here: compute per sample and optimizer time are the medians over every
finished 1-node weak run under raw/ (the 1-node run does not touch the network, so all
configs measure the same thing); the host cost per byte is the value `perfmodel check
--calibrate host` fits to scaling-emu.csv. Inputs derived from the model's structure:
overlap 0.63 (the share of backward that runs after the first bucket is launched: layer
2's input gradient and layer 1's weight gradient, by multiply-adds) and last bucket 0.43
(layer 1's share of the parameters, reduced only after backward). Assumed: alpha 50 us
per hop. Variants:
  overlap     the model as above, nominal link, no host cost;
  no-overlap  all-reduce after backward (--overlap 0);
  host-cost   overlap, plus the host cost fitted here, paid by every node for its own bytes.
Writes extrapolation.csv and prints a Markdown table.

  python3 bench/scaling-emu/extrapolate.py
  RAW=raw-yielding OUT=yielding python3 bench/scaling-emu/extrapolate.py

RAW (default raw) is where the one-node runs are read, OUT (default .) where merge.py wrote
scaling-emu.csv for them and where extrapolation.csv goes, both relative to
bench/scaling-emu.
"""
import csv
import glob
import io
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PM = os.path.join(ROOT, "cluster", "perfmodel")
RAW = os.path.join(HERE, os.environ.get("RAW", "raw"))
OUT = os.path.normpath(os.path.join(HERE, os.environ.get("OUT", ".")))
NODES = "1,8,16,32,64,128,256,512,1024"
LINKS = ("1gbit", "10gbit", "25gbit", "100gbit")
PARAMS = 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10  # 1,863,690
BATCH = 128
MODEL = ["--params", str(PARAMS), "--buckets", "2", "--latency", "50us",
         "--last-bucket", "%.2f" % ((784 * 1024 + 1024) / PARAMS)]


def pm(*args):
    return subprocess.run([sys.executable, PM, *args], check=True, capture_output=True,
                          text=True).stdout


fb, opt = [], []
for path in sorted(glob.glob(os.path.join(RAW, "*", "scaling.csv"))):
    if not re.match(r".+-(default|ring|rd)-rep\d+$", os.path.basename(os.path.dirname(path))):
        continue  # a run cut short (.tmp)
    with open(path) as fh:
        for r in csv.DictReader(fh):
            if r["mode"] == "weak" and r["ranks"] == "1":
                fb.append((float(r["t_forward"]) + float(r["t_backward"])) / BATCH)
                opt.append(float(r["t_optim"]))
sample, optim = statistics.median(fb), statistics.median(opt)

check = pm("check", "--csv", os.path.join(OUT, "scaling-emu.csv"), *MODEL, "--overlap",
           "0.63", "--shared-host", "--calibrate", "host")
m = re.search(r"# calibrated .* host cost ([0-9.]+) ns/byte", check)
host_ns = float(m.group(1))
print("# MLP %d params; %d one-node weak runs: compute %.1f us/sample (median; range "
      "%.1f-%.1f), optimizer %.2f ms; host cost %.3f ns/byte (check --calibrate host)"
      % (PARAMS, len(fb), sample * 1e6, min(fb) * 1e6, max(fb) * 1e6, optim * 1e3, host_ns))

base = MODEL + ["--sample-time", "%.9f" % sample, "--batch", str(BATCH),
                "--optim-time", "%.6f" % optim, "--nodes", NODES]
variants = [("overlap", ["--overlap", "0.63"]),
            ("no-overlap", ["--overlap", "0"]),
            ("host-cost", ["--overlap", "0.63", "--host-cost", "%.3fns" % host_ns])]
rows = []
for name, extra in variants:
    for link in LINKS:
        out = pm("predict", *base, *extra, "--bw", link)
        for r in csv.DictReader(io.StringIO(out)):
            rows.append(dict(variant=name, link=link, **r))
with open(os.path.join(OUT, "extrapolation.csv"), "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)

nodes = NODES.split(",")[1:]
print("| variant | link | " + " | ".join("N=%s" % n for n in nodes) + " |")
print("|---|---|" + "---:|" * len(nodes))
for name, _ in variants:
    for link in LINKS:
        sel = {r["nodes"]: r for r in rows if r["variant"] == name and r["link"] == link}
        print("| %s | %s | " % (name, link) + " | ".join(
            "%.0f%% (%.0f)" % (float(sel[n]["efficiency"]) * 100, float(sel[n]["step_s"]) * 1e3)
            for n in nodes) + " |")
