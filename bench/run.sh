#!/usr/bin/env bash
# Benchmarks (release build, shared with the tests). BENCH_KEYS and BENCH_ROUNDS tune size;
# BENCH_SECS and BENCH_CLIENTS the write-behind load. bench/soak.sh repeats the crash tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release
cargo bench --bench countby
# The seed's write-behind comparison: 48 clients upserting into PostgreSQL vs HSET + write-behind.
cargo bench --bench write_behind
# Backfill of a million existing hashes: keys/s to PostgreSQL, and another client's PING
# meanwhile (BENCH_KEYS, BENCH_BATCH).
cargo bench --bench backfill
# Issue 12: countBy on a 3-primary cluster vs standalone (300k keys), PING per shard in a repartition.
cargo bench --bench cluster
