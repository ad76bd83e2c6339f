"""Runs distill's benchmarks next to their PyTorch (and llama.cpp) twins in one invocation and
prints the ratios. Called by bench/run.sh, which sets up the environment first.

Each measurement is its own process, so peak RSS is that job's alone. The PyTorch twin runs
twice: with glibc malloc (what `pip install torch` gives) and with jemalloc keeping freed memory
(LD_PRELOAD), because on this VM fresh pages dominate PyTorch's step time (shared/PERF-NOTES.md).
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


def step(name, a):
    common = ["--config", name, "--threads", a.threads, "--steps", a.steps, "--warmup", a.warmup]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="a,b")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--steps", default="5")
    ap.add_argument("--warmup", default="2")
    ap.add_argument("--seq", default="512", help="tokens of the teacher-forward benchmark")
    ap.add_argument("--no-forward", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    configs = [step(c, a) for c in a.configs.split(",") if c]
    out = {"threads": int(a.threads), "configs": configs}
    if not a.no_forward:
        out["teacher_forward"] = forward(a)
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"\nKD training step, {a.threads} threads, median of {a.steps} steps (tokens/s = batch x seq / step time)")
    print(f"{'config':<8}{'distill tok/s':>15}{'PyTorch tok/s':>15}{'ratio':>8}{'PyTorch+jemalloc':>18}{'ratio':>8}{'RSS distill/PyTorch MiB':>26}")
    for r in configs:
        je = r.get("pytorch_jemalloc_tok_s")
        print(f"{r['name']:<8}{r['distill_tok_s']:>15.0f}{r['pytorch_tok_s']:>15.0f}{r['ratio']:>7.2f}x"
              f"{(f'{je:.0f}' if je else '-'):>18}{(f'{r['ratio_vs_jemalloc']:.2f}x' if je else '-'):>8}"
              f"{r['distill_peak_rss_mib']:>14.0f} / {r['pytorch_peak_rss_mib']:<9.0f}")
    if "teacher_forward" in out:
        f = out["teacher_forward"]
        print(f"\nTeacher forward (SmolLM2-135M Q4_1 GGUF, 1 x {a.seq} tokens, logits at every position, {a.threads} threads)")
        print(f"  distill {f['distill_tok_s']:.0f} tok/s | PyTorch (transformers) {f['pytorch_tok_s']:.0f} tok/s, ratio {f['ratio_vs_pytorch']:.2f}x"
              + (f" | llama.cpp {f['llamacpp_tok_s']:.0f} tok/s, ratio {f['ratio_vs_llamacpp']:.2f}x" if f.get("llamacpp_tok_s") else " | llama.cpp: not installed (bench/run.sh --llamacpp)"))


if __name__ == "__main__":
    main()
