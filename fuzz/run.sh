#!/usr/bin/env bash
# Builds the fuzz targets with coverage instrumentation on stable Rust (the same
# SanitizerCoverage flags cargo-fuzz passes, without ASan, which needs nightly) and runs
# them. Usage:
#   fuzz/run.sh build                 build every target, run none
#   fuzz/run.sh <target> [seconds]    run one target (default 60 s)
#   fuzz/run.sh all [seconds]         run every target in turn, that long each (built once);
#                                     fails at the end if any target failed
# Each target reads and grows corpus/<target>/, replays regressions/<target>/ (inputs that
# once failed), and writes failing inputs to artifacts/<target>/.
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

# The targets: the name of every [[bin]] in Cargo.toml.
targets=$(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name *=/ { gsub(/^name *= *"|"$/, ""); print; bin = 0 }' Cargo.toml)

run_one() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  local dirs=("corpus/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  echo "== fuzz $t for ${secs}s"
  "../target/fuzz/$triple/release/$t" "${dirs[@]}" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/"
}

if [ "$target" = all ]; then
  failed=()
  for t in $targets; do
    run_one "$t" || failed+=("$t")
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets that failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
  fi
  exit 0
fi
if ! grep -qx "$target" <<<"$targets"; then
  echo "unknown target '$target'; targets: build, all," $targets >&2
  exit 2
fi
run_one "$target"
