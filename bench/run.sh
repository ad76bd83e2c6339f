#!/usr/bin/env bash
# distill's benchmarks next to their PyTorch and llama.cpp twins, in one run; prints the ratios.
#   ./bench/run.sh [--llamacpp] [--json] [--configs a,b] [--threads 2] [--steps 5]
# --llamacpp installs llama-cpp-python (builds llama.cpp from source, ~10 min on 2 cores) first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
args=()
want_llamacpp=0
for a in "$@"; do
  if [[ "$a" == "--llamacpp" ]]; then want_llamacpp=1; else args+=("$a"); fi
done
./scripts/setup.sh >&2
./target/release/distill fetch smollm2 jemalloc >&2
if [[ $want_llamacpp == 1 ]] && ! python -c "import llama_cpp" 2>/dev/null; then
  echo "building llama-cpp-python 0.3.36 (llama.cpp from source)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-cache-dir llama-cpp-python==0.3.36 >&2
fi
exec python bench/run.py "${args[@]}"
