#!/usr/bin/env python3
"""One table from several LM run directories: the models named by ROLE in each run's summary.json.

    python scripts/compare.py "KD on Brown=runs/a:student-kd" "CE on Brown=runs/a:student-scratch" \
        "teacher=runs/a:teacher" [--prompt 0] [--json]

Columns: validation and unseen-text (the run's first eval.extra source) perplexity, KL to the
teacher and top-1 agreement on validation, training steps and seconds, the mean distinct-2 of the
greedy continuations, and how many prompts pass distinct-2 >= 0.5 under greedy, greedy +
repetition penalty and sampled decoding (the last three columns). Below the
table, each model's greedy and sampled text for prompt --prompt.
"""
import argparse
import json
import sys
from pathlib import Path


def load(spec):
    label, _, where = spec.rpartition("=")
    run, _, role = where.partition(":")
    if not label or not run or not role:
        sys.exit(f"error: `{spec}`: expected LABEL=RUN_DIR:ROLE")
    path = Path(run) / "summary.json"
    try:
        s = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"error: {path}: {e}")
    if role == "teacher":
        m = s["teacher"]
    else:
        found = [x for x in s["students"] if x["role"] == role]
        if not found:
            roles = ", ".join(["teacher"] + [x["role"] for x in s["students"]])
            sys.exit(f"error: {path}: no model `{role}` (has {roles})")
        m = found[0]
    return label, role, s, m


def passes(s, role, kind):
    n = ok = 0
    for p in s["prompts"]:
        for r, g in p.get(kind, []):
            if r == role:
                n += 1
                ok += g["distinct_2"] >= 0.5
    return f"{ok}/{n}" if n else "–"


def mean_d2(s, role, kind):
    xs = [g["distinct_2"] for p in s["prompts"] for r, g in p.get(kind, []) if r == role]
    return sum(xs) / len(xs) if xs else None


def text(s, role, kind, i):
    ps = s["prompts"]
    if i >= len(ps):
        return None
    for r, g in ps[i].get(kind, []):
        if r == role:
            return ps[i]["prompt"] + g["text"]
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="LABEL=RUN_DIR:ROLE (ROLE: teacher, student-kd, …)")
    ap.add_argument("--prompt", type=int, default=0, help="which prompt's generations to print")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    for spec in a.models:
        label, role, s, m = load(spec)
        v = m["validation"]
        extra = (m.get("extra") or [{}])[0]
        tr = m.get("train") or {}
        rows.append({
            "label": label,
            "val_ppl": v["perplexity"],
            "unseen_ppl": extra.get("perplexity"),
            "kl": v.get("kl_to_teacher"),
            "top1": v.get("top1_agreement"),
            "steps": tr.get("steps"),
            "seconds": tr.get("seconds"),
            "greedy": passes(s, role, "greedy"),
            "greedy_d2": mean_d2(s, role, "greedy"),
            "greedy_rp": passes(s, role, "penalized"),
            "sampled": passes(s, role, "sampled"),
            "greedy_text": text(s, role, "greedy", a.prompt),
            "sampled_text": text(s, role, "sampled", a.prompt),
        })
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    f = lambda x, d=2: "–" if x is None else f"{x:.{d}f}"
    print("| model | val PPL | unseen PPL | KL(t‖s) | top-1 | steps | train s | greedy distinct-2 "
          "| greedy | greedy+rp | sampled |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        top1 = "–" if r["top1"] is None else f"{100 * r['top1']:.1f}%"
        print(f"| {r['label']} | {f(r['val_ppl'])} | {f(r['unseen_ppl'])} | {f(r['kl'], 3)} | {top1} | "
              f"{r['steps'] or '–'} | {f(r['seconds'], 0)} | {f(r['greedy_d2'])} | {r['greedy']} | {r['greedy_rp']} | {r['sampled']} |")
    print()
    for r in rows:
        for kind in ("greedy", "sampled"):
            t = r[f"{kind}_text"]
            if t is not None:
                print(f"{r['label']}, {kind}: {json.dumps(t, ensure_ascii=False)}")


if __name__ == "__main__":
    main()
