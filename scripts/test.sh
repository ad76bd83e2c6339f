#!/usr/bin/env bash
# The whole test suite, from a fresh machine: setup (venv, torch, release build), the assets the
# tests read, then format, lints and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
./target/release/distill fetch fashion-mnist smollm2 brown minilm spam-assassin > /dev/null
cargo fmt --all --check
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
cargo test --release --workspace --no-fail-fast
