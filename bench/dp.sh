#!/usr/bin/env bash
# Data-parallel KD step on this machine, distill and its PyTorch twin (DDP) in one run:
# configuration b of bench/configs.json (SmolLM2-135M teacher, 6×256 student, batch 8 × 128
# tokens) as 1 process × 2 threads and as 2 ranks × 1 thread (gloo on 127.0.0.1, torchrun);
# prints tok/s of each and the ratios.
#   ./bench/dp.sh [--steps 10] [--config b]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
steps=10
config=b
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    *) echo "error: bench/dp.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
./scripts/setup.sh >&2
./target/release/distill fetch smollm2 jemalloc >&2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(--config "$config" --warmup 2 --steps "$steps")
run() { # name, command…
  local name=$1; shift
  echo "bench/dp.sh: $name" >&2
  "$@" > "$out/$name.json"
}
run distill-1x2 ./target/release/distill bench step "${common[@]}" --json --threads 2
run distill-2x1 torchrun --nproc-per-node 2 --master-port 29531 --no-python ./target/release/distill bench step "${common[@]}" --json --threads 1
run torch-1x2 python bench/twin.py step "${common[@]}" --threads 2
run torch-2x1 torchrun --nproc-per-node 2 --master-port 29532 bench/twin.py step "${common[@]}" --threads 1
python - "$out" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
r = {p.stem: json.loads(p.read_text().strip().splitlines()[-1])["result"] for p in d.glob("*.json")}
tok = {k: v["tokens_per_s"] for k, v in r.items()}
print(f"{'':<12} {'1 proc x 2 threads':>20} {'2 ranks x 1 thread':>20} {'2x1 / 1x2':>10}")
for who in ["distill", "torch"]:
    a, b = tok[f"{who}-1x2"], tok[f"{who}-2x1"]
    print(f"{who:<12} {a:>14.0f} tok/s {b:>14.0f} tok/s {b / a:>10.2f}")
print(f"distill / torch: 1x2 {tok['distill-1x2'] / tok['torch-1x2']:.2f}, 2x1 {tok['distill-2x1'] / tok['torch-2x1']:.2f}")
d = r["distill-2x1"]
p = d["student_params"]
print(f"distill 2x1: {d['ms_per_step']:.0f} ms/step, of which {d['comm_ms_per_step']:.0f} ms in collectives "
      f"(gradients: {p} params x 4 bytes = {p * 4 / 1e6:.1f} MB all-reduced per step); 1x2: {r['distill-1x2']['ms_per_step']:.0f} ms/step")
print(json.dumps({"tokens_per_s": tok}))
PY
