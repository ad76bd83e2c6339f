#!/usr/bin/env bash
# Idempotent setup on a fresh machine: Python venv with torch==2.11.0 (the libtorch that tch links)
# and the reference tools the tests use, then the release build of `distill`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

# Pinned so that fixtures and reference numbers stay reproducible.
PY_PACKAGES=(torch==2.11.0 numpy==2.4.6 transformers==5.23.0 tokenizers==0.23.3 safetensors==0.8.0 gguf==0.19.0 accelerate==1.15.0 sentence-transformers==6.2.0 model2vec==0.10.0 pyarrow==26.0.1 tensorboard==2.21.0 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85)
# pyarrow: writes the Parquet fixtures of crates/distill-text/tests/parquet.rs. tensorboard: its own
# reader checks the event files of `log.tensorboard` (crates/distill-cli/tests/interrupt.rs).
# nvidia-cuda-crt/-cccl: the CUDA headers the runtime wheels lack, so that build.rs compiles the
# NCCL backend of the data-parallel shim against torch's CUDA 13.0 (headers only, ~20 MB).
STAMP="$DISTILL_VENV/.distill-setup-v5"

# Each stage prints one line; what the tools print goes to $LOG (its tail is shown on failure).
mkdir -p "$DISTILL_HOME"
LOG="$DISTILL_HOME/setup.log"
: > "$LOG"
stage() {
  local what="$1"; shift
  echo "setup: $what (log: $LOG)" >&2
  if ! "$@" >> "$LOG" 2>&1; then
    echo "setup: $what failed; the end of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}
apt_install() {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

if [ ! -f "$STAMP" ]; then
  [ -x "$DISTILL_VENV/bin/python" ] || stage "creating $DISTILL_VENV" python3 -m venv "$DISTILL_VENV"
  stage "installing torch 2.11.0 and the reference tools (~4.5 GB of wheels on the first run)" \
    "$DISTILL_VENV/bin/pip" install --quiet "${PY_PACKAGES[@]}"
  touch "$STAMP"
fi

# llama-cpp-python's OpenAI server: the real llama.cpp teacher server of
# crates/distill-cli/tests/server.rs (`cache --server`, `generate-data --server`). It compiles
# llama.cpp from source (~12 min on 2 cores), so the wheel is built once into
# $DISTILL_HOME/wheels and a new venv installs it from there.
LLAMA_CPP_PY=0.3.36
LLAMA_SERVER_PACKAGES=(fastapi==0.165.0 uvicorn==0.55.0 sse-starlette==3.7.1 starlette-context==0.3.6 pydantic-settings==2.16.3 diskcache==5.6.3 PyYAML==6.0.4 Jinja2==3.1.6)
if ! "$DISTILL_VENV/bin/python" -c "import llama_cpp.server, uvicorn" 2>/dev/null; then
  if ! ls "$DISTILL_HOME/wheels/llama_cpp_python-$LLAMA_CPP_PY-"*.whl >/dev/null 2>&1; then
    stage "building llama-cpp-python $LLAMA_CPP_PY (llama.cpp from source, ~12 min on 2 cores, once)" \
      env CMAKE_ARGS="-DLLAVA_BUILD=OFF" "$DISTILL_VENV/bin/pip" wheel --no-deps -w "$DISTILL_HOME/wheels" "llama-cpp-python==$LLAMA_CPP_PY"
  fi
  stage "installing llama-cpp-python's server" "$DISTILL_VENV/bin/pip" install --quiet \
    --find-links "$DISTILL_HOME/wheels" "llama-cpp-python==$LLAMA_CPP_PY" "${LLAMA_SERVER_PACKAGES[@]}"
fi

# gloo's headers, for the data-parallel backend (libtorch carries gloo's code, not its headers).
[ -f /usr/include/gloo/context.h ] || stage "installing gloo's headers (apt)" apt_install --no-install-recommends libgloo-dev

# Headless Chromium renders report.html in the report tests (crates/distill-cli/tests/report.rs).
command -v chromium >/dev/null || stage "installing chromium (apt)" apt_install chromium

echo "setup: building distill (release)" >&2
cargo build --release --quiet -p distill-cli
echo "setup: ready: ./target/release/distill" >&2
