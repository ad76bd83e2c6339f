#!/usr/bin/env bash
# On-policy distillation (GKD) at equal wall-clock: the pruned SmolLM2 student of
# recipes/smollm2-prune.toml healed by generalized JSD (β = 0.5) with λ = 0 (supervised KD on
# Brown rows), 0.5 and 1 (every step on the student's own continuations of 32-token prompts).
# An on-policy step costs about twice a supervised one here (the student writes 96 tokens for
# each of 8 rows first), so λ = 0.5 gets 80 steps and λ = 1 60 against λ = 0's 120.
#   scripts/gkd.sh [OUT_DIR]        (default runs/gkd; each run resumes if interrupted)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
out=${1:-runs/gkd}
bin=./target/release/distill
mkdir -p "$out"
for spec in "0 120" "0.5 80" "1 60"; do
  set -- $spec
  dir="$out/lambda-$1"
  resume=()
  [ -d "$dir" ] && resume=(--resume)
  "$bin" run recipes/smollm2-prune.toml --out "$dir" "${resume[@]}" \
    --set distill.divergence=jsd --set distill.beta=0.5 \
    --set "distill.on_policy={ lambda = $1, prompt_tokens = 32 }" \
    --set distill.scratch_twin=false --set student.twin_init= --set quantize= \
    --set train.steps="$2" --set checkpoint.every_steps=20
done
"$DISTILL_PYTHON" scripts/compare.py \
  "teacher=$out/lambda-0:teacher" "pruned=$out/lambda-0:student-pruned" \
  "λ = 0 (supervised)=$out/lambda-0:student-kd" "λ = 0.5=$out/lambda-0.5:student-kd" \
  "λ = 1 (on-policy)=$out/lambda-1:student-kd"
