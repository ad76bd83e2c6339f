"""llama.cpp on a GGUF that distill exported, against transformers on the HF directory of the
same model: max |Δlogit| over every position of a prompt, and the greedy continuation.

  python bench/llamacpp_check.py --gguf RUN/student.gguf --hf RUN/student [--prompt TEXT] [--tokens 30]
Needs llama-cpp-python (bench/run.sh --llamacpp installs it). Prints one JSON object.
"""
import argparse
import json

import llama_cpp
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--gguf", required=True)
ap.add_argument("--hf", required=True)
ap.add_argument("--prompt", default="The capital of France is")
ap.add_argument("--tokens", type=int, default=30)
a = ap.parse_args()

tok = AutoTokenizer.from_pretrained(a.hf)
ids = tok(a.prompt, add_special_tokens=False).input_ids
# F32 KV cache so that the comparison measures the weights, not llama.cpp's default F16 cache.
llm = llama_cpp.Llama(model_path=a.gguf, n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                      type_k=0, type_v=0)
gg_ids = llm.tokenize(a.prompt.encode(), add_bos=False, special=False)
llm.eval(ids)
ours = np.array([llm.scores[i] for i in range(len(ids))], dtype=np.float32)
hf = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32, attn_implementation="eager").eval()
with torch.no_grad():
    ref = hf(torch.tensor([ids])).logits[0].numpy()
llm.reset()
out = []
for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
    if len(out) == a.tokens or t == llm.token_eos():
        break
    out.append(t)
hf_out = hf.generate(torch.tensor([ids]), max_new_tokens=a.tokens, do_sample=False)[0, len(ids):].tolist()
print(json.dumps({
    "tokenizer_ids_equal": gg_ids == ids,
    "max_abs_logit_diff": float(np.abs(ours - ref).max()),
    "logit_scale": float(np.abs(ref).max()),
    "argmax_agree": float((ours.argmax(-1) == ref.argmax(-1)).mean()),
    "greedy_llamacpp": tok.decode(out),
    "greedy_transformers": tok.decode(hf_out),
    "greedy_equal": out == hf_out[:len(out)],
}, indent=1))
