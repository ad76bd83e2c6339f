#!/usr/bin/env python3
"""Table of verified self-distillation over seeds: `python scripts/vsd_table.py RUN_DIR...`
(each the --out of one `distill self-distill`). Per family and round: held-out greedy pass@1,
mean over the runs ± sample standard deviation, and the per-seed values; then the gain of the
last round over round 0 against the spread (max − min over seeds) of each."""
import json
import statistics
import sys
from pathlib import Path


def main(dirs):
    runs = []
    for d in map(Path, dirs):
        evals = []
        r = 0
        while (d / f"eval-{r}.json").exists():
            evals.append({e["family"]: e for e in json.loads((d / f"eval-{r}.json").read_text())})
            r += 1
        if not evals:
            sys.exit(f"error: {d}: no eval-0.json (not a self-distill directory)")
        runs.append(evals)
    rounds = min(len(e) for e in runs)
    families = list(runs[0][0])
    pct = lambda x: f"{100 * x:.0f}"
    print(f"held-out greedy pass@1, mean ± std over {len(runs)} seeds (per seed)\n")
    print("| family | " + " | ".join(f"round {r}" for r in range(rounds)) + " | gain (spread r0 / r_last) |")
    print("|---|" + "---|" * rounds + "---|")
    for f in families:
        cells = []
        for r in range(rounds):
            v = [run[r][f]["pass1"] for run in runs]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{pct(statistics.mean(v))} ± {pct(sd)} ({'/'.join(pct(x) for x in v)})")
        first = [run[0][f]["pass1"] for run in runs]
        last = [run[rounds - 1][f]["pass1"] for run in runs]
        gain = statistics.mean(last) - statistics.mean(first)
        spread = max(max(first) - min(first), max(last) - min(last))
        mark = "**" if gain > spread else ""
        cells.append(f"{mark}{gain * 100:+.0f}{mark} ({pct(max(first) - min(first))} / {pct(max(last) - min(last))})")
        print(f"| {f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: vsd_table.py RUN_DIR...")
    main(sys.argv[1:])
