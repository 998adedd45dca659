#!/usr/bin/python3
"""The rows and the summary of vs-torch.sh.

  summarize_rounds.py --row RUN.json ROUND VARIANT FRAMEWORK RANKS THREADS ALLREDUCE OTHERS
      one CSV row of a run (ddp-bench's or torch_ddp_MODEL.py's JSON): tokens/s where the
      JSON has them (a language model), else samples/s
  summarize_rounds.py [--unit UNIT] ROWS.csv
      per variant the median rate (in UNIT, default tokens/s), the median of the per-round ratios ddp/PyTorch and
      the speed-ups over 1 rank: over all rounds, and over the clean rounds (every run of
      the round with other processes below 0.1 core); then the median of each variant
      over its clean runs, in any round, and the ratios of those medians

Paired per-round ratios divide runs taken minutes apart at most, so slow spells of a
shared machine cancel; the median discards the rounds where they did not.
"""
import csv
import json
import statistics as st
import sys


def row(args):
    path, fields = args[0], args[1:]
    d = json.load(open(path))
    ms = ["%.1f" % (d[k] * 1e3) for k in ("t_forward", "t_backward", "t_optim", "t_step")]
    exposed = "%.1f" % (d["t_exposed"] * 1e3) if "t_exposed" in d else ""
    rate = d["tokens_per_s"] if "tokens_per_s" in d else d["samples_per_s"]
    print(",".join(fields + ["%.1f" % rate] + ms + [exposed]))


UNIT = "tokens/s"


def report(by, variants, rounds, title):
    print("\n== %s: %d round(s)" % (title, len(rounds)))
    if not rounds:
        return

    def ratio(a, b):
        xs = [by[(r, a)] / by[(r, b)] for r in rounds]
        return st.median(xs), " ".join("%.2f" % x for x in xs)

    print("variant        median %s   (rounds %s)" % (UNIT, " ".join(rounds)))
    for v in variants:
        print("%-13s %10.0f   (%s)" % (v, st.median(by[(r, v)] for r in rounds),
                                        " ".join("%.0f" % by[(r, v)] for r in rounds)))
    print("ddp / PyTorch, median of per-round ratios")
    for v in variants:
        if v.startswith("ddp-") and "torch" + v[3:] in variants:
            print("  %-11s %6.3f   (%s)" % ((v[4:],) + ratio(v, "torch" + v[3:])))
    if any(v.startswith("ddpbase-") for v in variants):
        print("ddp / ddp baseline (vs-torch.sh -b), median of per-round ratios")
        for v in variants:
            if v.startswith("ddp-") and "ddpbase" + v[3:] in variants:
                print("  %-11s %6.3f   (%s)" % ((v[4:],) + ratio(v, "ddpbase" + v[3:])))
    print("speed-up over 1 rank, median of per-round ratios")
    for v in variants:
        fw = v.split("-")[0]
        if v != fw + "-1" and fw + "-1" in variants:
            print("  %-11s %6.3f   (%s)" % ((v,) + ratio(v, fw + "-1")))


def summary(path):
    rows = list(csv.DictReader(open(path)))
    by = {(r["round"], r["variant"]): float(r["rate"]) for r in rows}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    every = sorted({r["round"] for r in rows}, key=int)
    clean = [x for x in every
             if all(float(r["others_cores"]) < 0.1 for r in rows if r["round"] == x)]
    report(by, variants, every, "all rounds")
    if clean != every:
        report(by, variants, clean, "clean rounds (others below 0.1 core in every run)")
    # A whole clean round is rare on a busy machine; clean runs are not.
    ok = {}
    for r in rows:
        if float(r["others_cores"]) < 0.1:
            ok.setdefault(r["variant"], []).append(float(r["rate"]))
    print("\n== clean runs (others below 0.1 core), any round")
    print("variant        median %s   (runs)" % UNIT)
    for v in variants:
        xs = ok.get(v, [])
        print("%-13s %10s   (%s)" % (v, "%.0f" % st.median(xs) if xs else "-",
                                     " ".join("%.0f" % x for x in xs)))
    print("ratios of those medians")
    med = {v: st.median(xs) for v, xs in ok.items()}
    for v in variants:
        fw, rest = v.split("-", 1)
        if fw == "ddp" and v in med and "torch-" + rest in med:
            print("  ddp / PyTorch %-8s %6.3f" % (rest, med[v] / med["torch-" + rest]))
        if fw == "ddp" and v in med and "ddpbase-" + rest in med:
            print("  ddp / baseline %-7s %6.3f" % (rest, med[v] / med["ddpbase-" + rest]))
    for v in variants:
        fw = v.split("-")[0]
        if v != fw + "-1" and v in med and fw + "-1" in med:
            print("  %-13s / %s-1 %6.3f" % (v, fw, med[v] / med[fw + "-1"]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--row":
        row(sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "--unit":
        UNIT = sys.argv[2]
        summary(sys.argv[3])
    elif len(sys.argv) == 2:
        summary(sys.argv[1])
    else:
        sys.exit(__doc__)
