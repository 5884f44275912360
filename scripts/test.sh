#!/usr/bin/env bash
# Runs the whole test suite: unit and property tests of every crate, the same scripts
# in Lua and JavaScript on the in-memory host, integration tests against real
# redis-server 7.0 and valkey-server 8 processes, the docs' examples, and
# short runs of the fuzz targets. The module is built once (release) and shared by all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

cargo build --release
cargo test --release --workspace

if command -v valkey-server >/dev/null; then
  echo "== integration tests again on $(valkey-server --version | cut -d' ' -f1-3)"
  REDIS_SERVER=valkey-server cargo test --release -p rg --test '*'
fi

echo "== fuzz targets: coverage-guided build on stable, 15 s each"
fuzz/run.sh exec_args 15
fuzz/run.sh value_codec 15
