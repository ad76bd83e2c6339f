"""A run's quantized students (`[quantize]`) in llama.cpp, against distill's fake-quant forward.

  ./bench/quant.sh RUN [--rows 16] [--seq 128] [--tokens 50] [--threads 2]

For RUN/student-kd-qad.gguf and RUN/student-kd-ptq.gguf (whichever exist): llama.cpp
(llama-cpp-python, F32 KV cache) evaluates `rows` windows of `seq` tokens of held-out text (the
run's first `eval.extra` source, text no phase trained on) and so does the HF export of the same
quantized weights (transformers, f32 — distill's forward equals transformers' on the same weights
within 1e-4, crates/distill/tests/llama.rs); the table gives their top-1 agreement over every
position and max |Δlogit|. Then the greedy continuation (`tokens` tokens, no repetition penalty)
of each of the run's prompts in both, equal or not; the file sizes and llama.cpp's speed (prompt
processing of `seq` tokens, then generation) next to the teacher's GGUF. The teacher's GGUF gets
the same check against its own weights dequantized (`distill convert`, f32): the share of
top-1 flips that llama.cpp's activation rounding (Q8 blocks) causes on a model nobody trained
for it. The "q8 away=even" column: the same weights in transformers with every linear layer's
input rounded to Q8_0 blocks two equally valid ways (half away from zero, half to even) — how
often their top-1 tokens agree, i.e. how much the model itself amplifies activation rounding.
Prints a table, then one JSON object.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

import llama_cpp
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("--rows", type=int, default=16)
ap.add_argument("--seq", type=int, default=128)
ap.add_argument("--tokens", type=int, default=50)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
# A position is "clear" when the reference's top-1 logit leads the runner-up by at least this much,
# well above the logit noise that llama.cpp's Q8 activation rounding adds at most positions: a flip
# there would be a difference in the weights, not in the rounding of activations.
MARGIN = 0.5

run = pathlib.Path(a.run)
summary = json.loads((run / "summary.json").read_text())
teacher_gguf = pathlib.Path(summary["teacher"]["path"])
prompts = [p["prompt"] for p in summary["prompts"]]
if not summary["extra_sources"]:
    raise SystemExit("error: the run has no eval.extra source to hold out")
held_out = pathlib.Path(summary["extra_sources"][0]).read_text(errors="replace")


def llama(path, logits_all):
    return llama_cpp.Llama(model_path=str(path), n_ctx=max(a.seq, 256), n_batch=a.seq, n_ubatch=a.seq,
                           n_threads=a.threads, n_threads_batch=a.threads, logits_all=logits_all,
                           type_k=0, type_v=0, verbose=False)


def greedy(llm, ids):
    llm.reset()
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        if len(out) == a.tokens or t == llm.token_eos():
            break
        out.append(t)
    return out


def speed(path, ids):
    """llama.cpp tokens/s: prompt processing of `seq` tokens, and greedy generation (median of 3)."""
    llm = llama(path, False)
    pp, tg = [], []
    for i in range(4):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids[: a.seq])
        t1 = time.perf_counter()
        n = 0
        for _ in llm.generate(ids[:8], temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            n += 1
            if n == 64:
                break
        t2 = time.perf_counter()
        if i > 0:
            pp.append(a.seq / (t1 - t0))
            tg.append(n / (t2 - t1))
    return statistics.median(pp), statistics.median(tg)


def check(gguf, hf_dir):
    """Top-1 agreement and max |Δlogit| of llama.cpp on `gguf` against transformers on `hf_dir`
    (the same weights) over held-out windows, the prompts' greedy continuations in both, size
    and speed."""
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = tok(held_out, add_special_tokens=False).input_ids
    windows = [ids[i * a.seq:(i + 1) * a.seq] for i in range(min(a.rows, len(ids) // a.seq))]
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    llm = llama(gguf, True)
    agree, total, max_diff = 0, 0, 0.0
    clear_agree, clear_total = 0, 0  # positions whose reference top-1 leads by >= MARGIN logits
    for w in windows:
        llm.reset()
        llm.eval(w)
        ours = np.array([llm.scores[i] for i in range(len(w))], dtype=np.float32)
        with torch.no_grad():
            ref = hf(torch.tensor([w])).logits[0].numpy()
        same = ours.argmax(-1) == ref.argmax(-1)
        agree += int(same.sum())
        total += len(w)
        top2 = np.sort(ref, -1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] >= MARGIN
        clear_agree += int(same[clear].sum())
        clear_total += int(clear.sum())
        max_diff = max(max_diff, float(np.abs(ours - ref).max()))
    # How much the model amplifies rounding: the same weights with every linear layer's input
    # rounded to Q8_0 blocks (llama.cpp's activation format) two equally valid ways, half away
    # from zero and half to even; their top-1 agreement with each other.
    def q8(mode):
        def hook(_, inp):
            x = inp[0]
            b = x.reshape(-1, 32)
            d = b.abs().amax(-1, keepdim=True) / 127
            y = b * torch.where(d == 0, torch.zeros_like(d), 1 / d)
            q = torch.round(y) if mode == "even" else torch.sign(y) * torch.floor(y.abs() + 0.5)
            return ((q * d.half().float()).reshape(x.shape),)
        return hook
    tops = {}
    for mode in ("away", "even"):
        hooks = [m.register_forward_pre_hook(q8(mode)) for m in hf.modules() if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            tops[mode] = torch.cat([hf(torch.tensor([w])).logits[0].argmax(-1) for w in windows])
        for h in hooks:
            h.remove()
    rounding_agreement = float((tops["away"] == tops["even"]).double().mean())
    gens = []
    for p in prompts:
        pid = tok(p, add_special_tokens=False).input_ids
        cpp = greedy(llm, pid)
        with torch.no_grad():
            ref = hf.generate(torch.tensor([pid]), max_new_tokens=len(cpp) or 1, do_sample=False,
                              repetition_penalty=1.0)[0, len(pid):].tolist()[: len(cpp)]
        same = next((i for i, (x, y) in enumerate(zip(cpp, ref)) if x != y), len(cpp))
        gens.append({"prompt": p, "equal": cpp == ref, "common_prefix": same, "tokens": len(cpp),
                     "llama_cpp": tok.decode(cpp), "distill": tok.decode(ref)})
    del llm
    pp, tg = speed(gguf, ids)
    return {"positions": total, "top1_agreement": agree / max(total, 1), "max_abs_logit_diff": max_diff,
            "clear_positions": clear_total, "clear_top1_agreement": clear_agree / max(clear_total, 1),
            "q8_rounding_top1_agreement": rounding_agreement,
            "greedy": gens, "size_bytes": gguf.stat().st_size, "prompt_tok_s": pp, "gen_tok_s": tg}


results = {}
for name in ("student-kd-qad", "student-kd-ptq"):
    gguf = run / f"{name}.gguf"
    if gguf.is_file():
        results[name] = check(gguf, run / name)
if not results:
    raise SystemExit(f"error: {run} has no student-kd-qad.gguf or student-kd-ptq.gguf (the recipe needs [quantize])")
with tempfile.TemporaryDirectory() as tmp:
    distill = pathlib.Path(__file__).resolve().parent.parent / "target" / "release" / "distill"
    subprocess.run([str(distill), "convert", str(teacher_gguf), "--out", f"{tmp}/teacher"], check=True,
                   capture_output=True)
    results["teacher"] = check(teacher_gguf, f"{tmp}/teacher")
    results["teacher"]["path"] = str(teacher_gguf)

print(f"llama.cpp {llama_cpp.__version__}, {a.threads} threads; held-out text {summary['extra_sources'][0]}")
print(f"{'model':<12} {'size MB':>8} {'pp tok/s':>9} {'gen tok/s':>10} {'top-1 =':>8} {'clear =':>16} {'max|dlogit|':>12} {'q8 away=even':>13} greedy equal")
for name, r in results.items():
    eq = f"{sum(g['equal'] for g in r['greedy'])}/{len(r['greedy'])}" if "greedy" in r else "-"
    top1 = f"{100 * r['top1_agreement']:.2f}%" if "top1_agreement" in r else "-"
    diff = f"{r['max_abs_logit_diff']:.3f}" if "max_abs_logit_diff" in r else "-"
    rnd = f"{100 * r['q8_rounding_top1_agreement']:.2f}%"
    clear = f"{100 * r['clear_top1_agreement']:.2f}% of {100 * r['clear_positions'] / r['positions']:.0f}%"
    print(f"{name:<12} {r['size_bytes'] / 1e6:>8.1f} {r['prompt_tok_s']:>9.0f} {r['gen_tok_s']:>10.1f} {top1:>8} {clear:>16} {diff:>12} {rnd:>13} {eq}")
for name, r in results.items():
    for g in r.get("greedy", []):
        mark = "=" if g["equal"] else f"differs after {g['common_prefix']} tokens"
        print(f"{name:<12} {g['prompt']!r}: {mark}\n  llama.cpp {g['llama_cpp']!r}\n  distill   {g['distill']!r}")
print(json.dumps(results))
