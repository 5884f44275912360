#!/usr/bin/env bash
# Benchmarks (release build, shared with the tests). BENCH_KEYS and BENCH_ROUNDS tune size.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release
cargo bench --bench countby
