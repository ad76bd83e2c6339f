"""Runs distill's benchmarks next to their PyTorch (and llama.cpp) twins in one invocation and
prints the ratios. Called by bench/run.sh, which sets up the environment first.

Each measurement is its own process, so peak RSS is that job's alone. The PyTorch twin runs
twice: with glibc malloc (what `pip install torch` gives) and with jemalloc keeping freed memory
(LD_PRELOAD), because on this VM fresh pages dominate PyTorch's step time (shared/PERF-NOTES.md).

Sections:
  step configs a, b, c, d  KD training step (c: teacher read from an offline cache, built on first
                         use from two Brown files into $DISTILL_HOME/bench/cache-c, or --cache DIR;
                         d: b with the teacher in bf16 on both sides)
  teacher forward        SmolLM2-135M Q4_1 full-sequence forward (and llama.cpp when installed)
  loss                   KD loss forward+backward from hidden states at V = 151,936 and 49,152:
                         distill chunked, distill naive, PyTorch naive; extra peak RSS and time ratios
  generate               greedy generation with the KV cache at batch 1 and 8 (SmolLM2-135M): distill,
                         transformers' generate, llama.cpp (batch 1, when installed); generated tok/s
  --cache-frontier       bytes/token vs KL of a top-k cache, k = 8..128 (distill bench cache-kl)
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DISTILL = ROOT / "target" / "release" / "distill"
TWIN = ROOT / "bench" / "twin.py"
HOME = pathlib.Path(os.environ.get("DISTILL_HOME", pathlib.Path.home() / ".cache" / "distill"))
JEMALLOC = HOME / "assets" / "jemalloc" / "usr/lib/x86_64-linux-gnu" / "libjemalloc.so.2"
TEACHER = "asset:smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BROWN = "asset:brown/c[a-r][0-9][0-9]"


def run_json(cmd, env=None):
    e = dict(os.environ)
    e.update(env or {})
    print("  $ " + " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    out = subprocess.run([str(c) for c in cmd], env=e, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(map(str, cmd))} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def jemalloc_env():
    if not JEMALLOC.is_file():
        return None
    return {"LD_PRELOAD": str(JEMALLOC), "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1,oversize_threshold:0"}


def spec_uses_cache(name):
    specs = json.loads((ROOT / "bench" / "configs.json").read_text())
    return bool(specs.get(name, {}).get("teacher_cache"))


def step_cache(a):
    """The teacher cache of configuration c: --cache, or built once (two Brown files, seq 128, top-64 + 64 tail samples)."""
    if a.cache:
        return a.cache
    d = HOME / "bench" / "cache-c"
    if not (d / "manifest.json").is_file() or not json.loads((d / "manifest.json").read_text()).get("complete"):
        print(f"building the teacher cache of configuration c in {d}", file=sys.stderr, flush=True)
        cmd = [DISTILL, "cache", "--teacher", TEACHER, "--data", "asset:brown/ca0[1-2]", "--seq-len", "128", "--top-k", "64",
               "--rows-per-shard", "8", "--batch", "8", "--threads", a.threads, "--out", d]
        out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"error: {' '.join(map(str, cmd))} failed: {out.stderr.strip().splitlines()[-1:]}")
    return str(d)


def step(name, a):
    common = ["--config", name, "--threads", a.threads, "--steps", a.steps, "--warmup", a.warmup]
    if spec_uses_cache(name):
        common += ["--cache", step_cache(a)]
    row = {"name": name}
    d = run_json([DISTILL, "bench", "step", "--json", *common])["result"]
    row.update(distill_ms=d["ms_per_step"], distill_tok_s=d["tokens_per_s"], distill_peak_rss_mib=d["peak_rss_mib"])
    p = run_json([sys.executable, TWIN, "step", *common])["result"]
    row.update(pytorch_ms=p["ms_per_step"], pytorch_tok_s=p["tokens_per_s"], pytorch_peak_rss_mib=p["peak_rss_mib"])
    row["ratio"] = row["distill_tok_s"] / row["pytorch_tok_s"]
    je = jemalloc_env()
    if je:
        j = run_json([sys.executable, TWIN, "step", *common], je)["result"]
        row.update(pytorch_jemalloc_tok_s=j["tokens_per_s"], pytorch_jemalloc_peak_rss_mib=j["peak_rss_mib"])
        row["ratio_vs_jemalloc"] = row["distill_tok_s"] / j["tokens_per_s"]
    row["tokens_per_step"] = d["batch"] * d["seq"]
    row["student_params"], row["teacher_params"] = d["student_params"], d["teacher_params"]
    return row


def forward(a):
    common = ["--rows", "1", "--seq", a.seq, "--threads", a.threads, "--reps", "3"]
    row = {"name": "teacher-forward", "model": TEACHER}
    d = run_json([DISTILL, "bench", "forward", "--model", TEACHER, "--json", *common])["result"]
    row.update(distill_tok_s=d["tokens_per_s"], distill_peak_rss_mib=d["peak_rss_mib"])
    p = run_json([sys.executable, TWIN, "forward", "--model", TEACHER, *common])["result"]
    row.update(pytorch_tok_s=p["tokens_per_s"], ratio_vs_pytorch=d["tokens_per_s"] / p["tokens_per_s"])
    try:
        import llama_cpp  # noqa: F401
        l = run_json([sys.executable, ROOT / "bench" / "llamacpp.py", "--model", TEACHER, "--seq", a.seq, "--threads", a.threads])["result"]
        row.update(llamacpp_tok_s=l["tokens_per_s"], llamacpp_version=l["version"], ratio_vs_llamacpp=d["tokens_per_s"] / l["tokens_per_s"])
    except ImportError:
        row["llamacpp_tok_s"] = None
    return row


def generate(a):
    common = ["--batch", "1,8", "--prompt-tokens", "16", "--new-tokens", "64", "--threads", a.threads, "--reps", "3"]
    d = run_json([DISTILL, "bench", "generate", "--model", TEACHER, "--json", *common])["results"]
    p = run_json([sys.executable, TWIN, "generate", "--model", TEACHER, *common])["results"]
    row = {"name": "generate", "model": TEACHER, "distill": d, "pytorch": p, "llamacpp": None}
    try:
        import llama_cpp  # noqa: F401
        row["llamacpp"] = run_json([sys.executable, ROOT / "bench" / "llamacpp.py", "--model", TEACHER, "--generate",
                                    "--prompt-tokens", "16", "--new-tokens", "64", "--threads", a.threads])["result"]
    except ImportError:
        pass
    return row


def embed(a):
    """Sentence-encoder embeddings/s, distill vs sentence-transformers, for the teacher and --encoders."""
    rows = []
    for model in ["asset:minilm", *[m for m in a.encoders.split(",") if m]]:
        common = ["--model", model, "--texts", "256", "--batch", "32", "--threads", a.threads]
        d = run_json([DISTILL, "bench", "embed", "--json", *common])["result"]
        p = run_json([sys.executable, TWIN, "embed", *common])["result"]
        rows.append({"model": model, "distill_emb_s": d["embeddings_per_s"], "pytorch_emb_s": p["embeddings_per_s"],
                     "ratio_vs_pytorch": d["embeddings_per_s"] / p["embeddings_per_s"],
                     "distill_peak_rss_mib": d["peak_rss_mib"], "pytorch_peak_rss_mib": p["peak_rss_mib"]})
    return rows


def print_embed(rows, a):
    print(f"\nSentence encoders (256 texts of 16-255 words, batch 32, {a.threads} threads, tokenization included; embeddings/s)")
    for r in rows:
        print(f"  {r['model']}: distill {r['distill_emb_s']:.1f} | sentence-transformers/model2vec {r['pytorch_emb_s']:.1f} | "
              f"ratio {r['ratio_vs_pytorch']:.2f}x | peak RSS {r['distill_peak_rss_mib']:.0f} vs {r['pytorch_peak_rss_mib']:.0f} MiB")


def print_generate(g, a):
    print(f"\nGreedy generation (SmolLM2-135M Q4_1 GGUF, 16 prompt + 64 new tokens per row, KV cache, {a.threads} threads; generated tok/s)")
    base = g["distill"][0]["tokens_per_s"]
    for d, p in zip(g["distill"], g["pytorch"]):
        print(f"  batch {d['batch']}: distill {d['tokens_per_s']:.1f} ({d['tokens_per_s'] / base:.2f}x its batch 1) | "
              f"transformers generate {p['tokens_per_s']:.1f}, ratio {d['tokens_per_s'] / p['tokens_per_s']:.2f}x")
    l = g.get("llamacpp")
    print(f"  llama.cpp, batch 1 (its Q4_1 weights): {l['tokens_per_s']:.1f}" if l else "  llama.cpp: not installed (bench/run.sh --llamacpp)")


def loss(a):
    rows = []
    for v in [x for x in a.loss_vocabs.split(",") if x]:
        common = ["--vocab", v, "--tokens", a.loss_tokens, "--hidden", a.loss_hidden, "--threads", a.threads]
        c = run_json([DISTILL, "bench", "loss", "--json", "--chunk-rows", a.chunk_rows, *common])["result"]
        n = run_json([DISTILL, "bench", "loss", "--json", "--naive", *common])["result"]
        p = run_json([sys.executable, TWIN, "loss", *common])["result"]
        # distill calls mallopt(M_MMAP_MAX, 0) at start (freed [N, V] buffers stay in the heap);
        # the chunked loss once more with glibc's defaults, as the twin runs, for reference.
        cs = run_json([DISTILL, "bench", "loss", "--json", "--chunk-rows", a.chunk_rows, *common], {"DISTILL_MALLOC": "system"})["result"]
        rows.append({
            "vocab": int(v), "chunked": c, "naive": n, "pytorch": p, "chunked_system_malloc": cs,
            "mem_ratio_chunked_system_malloc": cs["extra_peak_mib"] / p["extra_peak_mib"],
            "mem_ratio_chunked": c["extra_peak_mib"] / p["extra_peak_mib"],
            "mem_ratio_naive": n["extra_peak_mib"] / p["extra_peak_mib"],
            "time_ratio_chunked": c["ms_per_pass"] / p["ms_per_pass"],
            "time_ratio_naive": n["ms_per_pass"] / p["ms_per_pass"],
            "loss_rel_diff": abs(c["loss"] - p["loss"]) / abs(p["loss"]),
        })
    return rows


def frontier(a):
    return run_json([DISTILL, "bench", "cache-kl", "--teacher", TEACHER, "--data", BROWN, "--rows", "16", "--seq", "128",
                     "--k", "8,16,32,64,128", "--threads", a.threads, "--json"])["result"]


def print_loss(rows, a):
    print(f"\nKD loss forward+backward from hidden states: N {a.loss_tokens} tokens, H {a.loss_hidden}, forward KL at T = 2, "
          f"alpha 0.5, CE; {a.threads} threads; median of 3 after a warm-up")
    print("extra peak RSS = VmHWM over the passes - VmRSS before them (peak reset via /proc/self/clear_refs); "
          "ratios < 1 favour distill")
    print(f"{'vocab':>8}{'chunked MiB':>13}{'naive MiB':>11}{'PyTorch MiB':>13}{'chunk/PT':>10}{'naive/PT':>10}"
          f"{'chunked s':>11}{'naive s':>9}{'PyTorch s':>11}{'chunk/PT':>10}{'naive/PT':>10}")
    for r in rows:
        c, n, p = r["chunked"], r["naive"], r["pytorch"]
        print(f"{r['vocab']:>8}{c['extra_peak_mib']:>13.0f}{n['extra_peak_mib']:>11.0f}{p['extra_peak_mib']:>13.0f}"
              f"{r['mem_ratio_chunked']:>10.3f}{r['mem_ratio_naive']:>10.3f}"
              f"{c['ms_per_pass'] / 1e3:>11.2f}{n['ms_per_pass'] / 1e3:>9.2f}{p['ms_per_pass'] / 1e3:>11.2f}"
              f"{r['time_ratio_chunked']:>10.2f}{r['time_ratio_naive']:>10.2f}")
    print("timed passes only (peak reset after the warm-up; allocators that keep freed memory show ~0): "
          + "; ".join(f"V {r['vocab']}: chunked {r['chunked']['extra_peak_timed_mib']:.0f}, naive {r['naive']['extra_peak_timed_mib']:.0f}, "
                      f"PyTorch {r['pytorch']['extra_peak_timed_mib']:.0f} MiB" for r in rows))
    print("distill chunked with glibc's default malloc (DISTILL_MALLOC=system, no mallopt): "
          + "; ".join(f"V {r['vocab']}: {r['chunked_system_malloc']['extra_peak_mib']:.0f} MiB, "
                      f"{r['mem_ratio_chunked_system_malloc']:.3f} of PyTorch, {r['chunked_system_malloc']['ms_per_pass'] / 1e3:.2f} s" for r in rows))
    print("loss chunked vs PyTorch (same inputs): " + ", ".join(f"V {r['vocab']}: rel. diff {r['loss_rel_diff']:.1e}" for r in rows))


def print_frontier(f):
    print(f"\nTop-k cache frontier: SmolLM2-135M Q4_1 teacher on {f['tokens']} Brown tokens ({f['rows']} x {f['seq']}), "
          f"V {f['vocab']}, u8 step {f['step']} nats; KL in nats/token")
    print("KL u8/f16/trunc = KL(p || p_hat), p_hat rebuilt from the top-k (uniform tail) after a u8 / f16 round trip / exact;")
    print("bins = KL on the K+1 bins, exact vs decoded (quantization only); T2 = KL(softmax(z/2) on the bins || cache bins at T=2)")
    print(f"{'k':>5}{'B/tok u8':>9}{'f16':>6}{'KL u8':>11}{'KL f16':>11}{'KL trunc':>11}{'bins u8':>11}{'bins f16':>11}"
          f"{'tail':>9}{'T2 u8':>11}{'T2 exact':>11}")
    for k in f["ks"]:
        print(f"{k['k']:>5}{k['bytes_u8']:>9}{k['bytes_f16']:>6}{k['kl_u8']:>11.3e}{k['kl_f16']:>11.3e}{k['kl_trunc']:>11.3e}"
              f"{k['coarse_kl_u8']:>11.3e}{k['coarse_kl_f16']:>11.3e}{k['tail_mass']:>9.4f}{k['kl_t2_u8']:>11.3e}{k['kl_t2_exact']:>11.3e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="a,b,c,d", help='step configurations; "" skips the step benchmark')
    ap.add_argument("--cache", help="teacher cache of configuration c (default: built once under $DISTILL_HOME/bench)")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--steps", default="5")
    ap.add_argument("--warmup", default="2")
    ap.add_argument("--seq", default="512", help="tokens of the teacher-forward benchmark")
    ap.add_argument("--no-forward", action="store_true")
    ap.add_argument("--no-generate", action="store_true")
    ap.add_argument("--no-embed", action="store_true", help="skip the sentence-encoder benchmark")
    ap.add_argument("--encoders", default="", help="more encoder directories for the embed benchmark (comma-separated)")
    ap.add_argument("--no-loss", action="store_true", help="skip the loss benchmark (the naive runs need ~12 GiB at V 151,936)")
    ap.add_argument("--loss-vocabs", default="151936,49152")
    ap.add_argument("--loss-tokens", default="2048")
    ap.add_argument("--loss-hidden", default="896")
    ap.add_argument("--chunk-rows", default="256")
    ap.add_argument("--cache-frontier", action="store_true", help="also the top-k cache frontier (distill bench cache-kl)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    configs = [step(c, a) for c in a.configs.split(",") if c]
    out = {"threads": int(a.threads), "configs": configs}
    if not a.no_forward:
        out["teacher_forward"] = forward(a)
    if not a.no_generate:
        out["generate"] = generate(a)
    if not a.no_embed:
        out["embed"] = embed(a)
    if not a.no_loss:
        out["loss"] = loss(a)
    if a.cache_frontier:
        out["cache_frontier"] = frontier(a)
    if a.json:
        print(json.dumps(out, indent=1))
        return
    if configs:
        print_steps(configs, a)
    if "teacher_forward" in out:
        print_forward(out["teacher_forward"], a)
    if "generate" in out:
        print_generate(out["generate"], a)
    if "embed" in out:
        print_embed(out["embed"], a)
    if "loss" in out:
        print_loss(out["loss"], a)
    if "cache_frontier" in out:
        print_frontier(out["cache_frontier"])


def print_steps(configs, a):
    print(f"\nKD training step, {a.threads} threads, median of {a.steps} steps (tokens/s = batch x seq / step time)")
    print(f"{'config':<8}{'distill tok/s':>15}{'PyTorch tok/s':>15}{'ratio':>8}{'PyTorch+jemalloc':>18}{'ratio':>8}{'RSS distill/PyTorch MiB':>26}")
    for r in configs:
        je = r.get("pytorch_jemalloc_tok_s")
        je_tok = f"{je:.0f}" if je else "-"
        je_ratio = f"{r['ratio_vs_jemalloc']:.2f}x" if je else "-"
        print(f"{r['name']:<8}{r['distill_tok_s']:>15.0f}{r['pytorch_tok_s']:>15.0f}{r['ratio']:>7.2f}x"
              f"{je_tok:>18}{je_ratio:>8}"
              f"{r['distill_peak_rss_mib']:>14.0f} / {r['pytorch_peak_rss_mib']:<9.0f}")
    if any(spec_uses_cache(r["name"]) for r in configs):
        print("(c: teacher distributions read from a top-64 + 64 tail-sample cache, no teacher forward)")


def print_forward(f, a):
    print(f"\nTeacher forward (SmolLM2-135M Q4_1 GGUF, 1 x {a.seq} tokens, logits at every position, {a.threads} threads)")
    print(f"  distill {f['distill_tok_s']:.0f} tok/s | PyTorch (transformers) {f['pytorch_tok_s']:.0f} tok/s, ratio {f['ratio_vs_pytorch']:.2f}x"
          + (f" | llama.cpp {f['llamacpp_tok_s']:.0f} tok/s, ratio {f['ratio_vs_llamacpp']:.2f}x" if f.get("llamacpp_tok_s") else " | llama.cpp: not installed (bench/run.sh --llamacpp)"))


if __name__ == "__main__":
    main()
