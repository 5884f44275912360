#!/usr/bin/env bash
# Soak: the write-behind crash tests (kill -9 of Redis under load, at-least-once and
# exactly-once) with more kills per run, ROUNDS times. WB_KILLS (default 10) kills per run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release
export WB_KILLS="${WB_KILLS:-10}"
for round in $(seq 1 "${ROUNDS:-3}"); do
  echo "== round $round: $WB_KILLS kills per test"
  cargo test --release --test write_behind -- --nocapture kill_9 exactly_once 2>&1 | grep -E "^test |at-least-once:|exactly-once:|panicked"
done
