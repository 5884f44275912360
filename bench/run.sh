#!/usr/bin/env bash
# Benchmarks (release build, shared with the tests). Builds the module once, then runs
# bench/report.rs: every pair (B1-B5, M1), each Gears job next to its baseline in the same run,
# written to docs/performance.md and docs/performance.svg. Sizes: BENCH_REQUESTS, BENCH_CLIENTS
# (redis-benchmark), BENCH_SECS (write-behind loads), BENCH_DRAIN, BENCH_KEYS, BENCH_ROUNDS.
# BENCH_ALL=1 then also runs the other benches, each printing its own figures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release
# B1 and B5 also run on a 7.2+ server (Redis 7.4.1, built into the cache by deps.sh);
# BENCH_SERVER2=none skips that.
export BENCH_SERVER2=${BENCH_SERVER2:-$(scripts/redis74.sh)}
cargo bench --bench report
if [ "${BENCH_ALL:-0}" = 1 ]; then
  cargo bench --bench countby
  # The seed's write-behind comparison: 48 clients upserting into PostgreSQL vs HSET + write-behind.
  cargo bench --bench write_behind
  # Backfill of a million existing hashes: keys/s to PostgreSQL, and another client's PING
  # meanwhile (BENCH_KEYS, BENCH_BATCH).
  cargo bench --bench backfill
  # Issue 12: countBy on a 3-primary cluster vs standalone (300k keys), PING per shard in a repartition.
  cargo bench --bench cluster
fi
