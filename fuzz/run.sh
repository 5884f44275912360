#!/usr/bin/env bash
# Builds the fuzz targets with coverage instrumentation on stable Rust (the same
# SanitizerCoverage flags cargo-fuzz passes, without ASan, which needs nightly) and runs
# one target for a while. Usage: fuzz/run.sh <exec_args|value_codec|build> [seconds]
set -euo pipefail
cd "$(dirname "$0")"
target=${1:-build}
secs=${2:-60}
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
triple=$(rustc -vV | sed -n "s/^host: //p")
# With an explicit --target the flags reach the targets only, not build scripts.
cargo build --release --target-dir ../target/fuzz --target "$triple" --bins
[ "$target" = build ] && exit 0
mkdir -p "corpus/$target"
exec "../target/fuzz/$triple/release/$target" "corpus/$target" -max_total_time="$secs" -print_final_stats=1
