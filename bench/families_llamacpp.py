"""llama.cpp on the family fixtures: llama.cpp's converter's GGUF and distill's own GGUF export of it.

    source scripts/env.sh && python bench/families_llamacpp.py [--distill target/release/distill]

Needs llama-cpp-python 0.3.36 (`bench/run.sh --llamacpp` installs it; it vendors the llama.cpp
tree whose `convert_hf_to_gguf.py` made `tests/fixtures/families/*/model.gguf`). For each family:
`distill convert FIXTURE/model.gguf --out TMP/FAMILY.gguf --gguf-type f32` (distill reads llama.cpp's
file and writes its own), then both files through llama.cpp: row 0 of the fixture's input_ids (12
tokens, no padding) → max |Δ| of the logits against transformers' (`expected.safetensors`), and
greedy decoding with llama.cpp's KV cache from `gen_prompt` → equal to transformers' `gen_ids`?
F32 KV cache, no flash attention, one thread. Prints one line per file.

Known differences that are llama.cpp's, not the files': Gemma's GELU is an f16 lookup table on
ggml's CPU (~1e-3 on these logits); Phi-3's LongRoPE factors are picked by context size, padded to
≥ 256 > the fixture's original 8, so always the long ones (the fixture's long-factor logits are the
reference); `qwen3_tied` has an o_proj bias, which llama.cpp's qwen3 graph lacks (it does not load
the converter's file, and distill refuses to write one).
"""

import argparse
import os
import subprocess
import tempfile

import llama_cpp
import numpy as np
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures", "families")

ap = argparse.ArgumentParser()
ap.add_argument("--distill", default=os.path.join(ROOT, "target", "release", "distill"))
a = ap.parse_args()


def check(label, path, exp):
    try:
        llm = llama_cpp.Llama(path, n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                              type_k=0, type_v=0, flash_attn=False, n_threads=1)
    except Exception as e:  # noqa: BLE001
        print(f"{label}: does not load in llama.cpp ({e})")
        return
    ids = exp["input_ids"][0].tolist()
    llm.reset()
    llm.eval(ids)
    d = np.abs(np.array(llm.scores[: len(ids)]) - exp["logits"][0].numpy()).max()
    prompt = exp["gen_prompt"].tolist()
    llm.reset()
    llm.eval(prompt)
    toks = list(prompt)
    for _ in range(len(exp["gen_ids"]) - len(prompt)):
        toks.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([toks[-1]])
    print(f"{label}: row-0 logits max|Δ| {d:.2e}; greedy == transformers: {toks == exp['gen_ids'].tolist()}")


with tempfile.TemporaryDirectory() as tmp:
    for name in ["qwen3", "qwen3_tied", "gemma2", "gemma3", "olmo2", "phi3"]:
        exp = load_file(os.path.join(FIX, name, "expected.safetensors"))
        src = os.path.join(FIX, name, "model.gguf")
        check(f"{name:<10} llama.cpp's converter", src, exp)
        out = os.path.join(tmp, f"{name}.gguf")
        r = subprocess.run([a.distill, "convert", src, "--out", out, "--gguf-type", "f32"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name:<10} distill's export: refused: {r.stderr.strip().splitlines()[-1]}")
            continue
        check(f"{name:<10} distill's export     ", out, exp)
