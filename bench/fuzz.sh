#!/usr/bin/env bash
# Fuzzes every parser distill runs on outside input (crates/distill-fuzz): each target's seed
# corpus mutated EXECS times (default 1,000,000), panics / allocations past the cap / > 2 s
# executions saved under fuzz/crashes/<target>/ (exit 1). Not part of the test suite; the suite
# replays the corpus and fuzz/regressions/ (crates/distill-fuzz/tests/replay.rs).
#   bench/fuzz.sh [TARGET…] [--execs N] [--seed S]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release -p distill-fuzz --quiet
exec ./target/release/distill-fuzz "$@"
