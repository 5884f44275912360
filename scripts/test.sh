#!/usr/bin/env bash
# Runs the whole test suite (see docs/testing.md): unit and property tests of every crate (once),
# the integration tests in tests/ (the docs' examples among them) against three servers —
# Debian's redis-server 7.0, valkey-server 8 and Redis 7.4.1 built by scripts/redis74.sh —,
# Redis's own tcl suite with and without the module (scripts/tcl_suite.sh), and short runs of
# the fuzz targets. The module is built once (release) and shared by all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
redis74=$(scripts/redis74.sh)

cargo build --release

echo "== unit and property tests of every crate"
cargo test --release --workspace --exclude rg

# integration <server binary>: tests/*.rs against that server.
integration() {
  echo "== integration tests on $("$1" --version | cut -d' ' -f1-3) ($1)"
  REDIS_SERVER=$1 cargo test --release -p rg --test '*'
}
integration redis-server
integration valkey-server
integration "$redis74"

scripts/tcl_suite.sh

echo "== fuzz targets: coverage-guided build on stable, 15 s each"
fuzz/run.sh all 15
