#!/usr/bin/env bash
# The kill -9 soak: an image run, an LM run, a teacher-cache capture and a 2-rank LM run, each SIGKILLed at
# KILLS random points (default 20; each kill hits the job resumed from the previous one), then
# finished; the weights / shards must equal an uninterrupted job's bit for bit. The test suite
# runs the same tests with 2 kill points each.
#   bench/soak.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
DISTILL_SOAK_KILLS="${1:-20}" cargo test --release -p distill-cli --test cli --test lm --test dist soak -- --test-threads 1 --nocapture
