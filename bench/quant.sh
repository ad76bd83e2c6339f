#!/usr/bin/env bash
# A run's quantized students (recipes with [quantize]) in llama.cpp: top-1 agreement with
# distill's fake-quant forward on held-out text, greedy continuations, size and tokens/s next to
# the teacher's GGUF (bench/quant_check.py).
#   ./bench/quant.sh RUN [--rows 16] [--seq 128] [--tokens 50] [--threads 2]
# Installs llama-cpp-python 0.3.36 first when missing (builds llama.cpp from source, ~30 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [[ $# -lt 1 ]]; then
  echo "error: usage: bench/quant.sh RUN [--rows N] [--seq N] [--tokens N] [--threads N]" >&2
  exit 2
fi
if ! python -c "import llama_cpp" 2>/dev/null; then
  echo "building llama-cpp-python 0.3.36 (llama.cpp from source)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-cache-dir llama-cpp-python==0.3.36 >&2
fi
exec python bench/quant_check.py "$@"
