#!/usr/bin/env bash
# Installs what building and testing Gears needs on Debian 12 (bookworm), if missing:
# a C toolchain, libclang (bindgen of redis-module), redis-server 7.0 from Debian, and
# valkey-server 8 (a 7.2-compatible server) from bookworm-backports (on the mirror the machine's
# apt sources already use), tcl (Redis's own test suite), and the databases the
# recipes write to: PostgreSQL and MariaDB from Debian (the tests start private instances;
# the services apt may start are stopped again), SQLite (bundled in the build) and
# SecantusDB (a MongoDB-wire-compatible server, from PyPI: Debian has no mongod).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v cc >/dev/null || need+=(build-essential)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v python3 >/dev/null || need+=(python3)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql postgresql-client)
command -v mariadbd >/dev/null || need+=(mariadb-server mariadb-client)

if ! command -v valkey-server >/dev/null; then
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # Use the mirror this machine already takes bookworm from; never a hard-coded address.
    uri=$(scripts/apt-mirror.sh bookworm)
    [ -n "$uri" ] || { echo "deps.sh: no apt source for bookworm found to derive bookworm-backports from" >&2; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
      | $SUDO tee /etc/apt/sources.list.d/backports.sources >/dev/null
  fi
  need_valkey=1
fi
command -v tclsh >/dev/null || need+=(tcl)
command -v sqlite3 >/dev/null || need+=(sqlite3)

if [ ${#need[@]} -gt 0 ] || [ -n "${need_valkey:-}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then $SUDO apt-get install -y -qq "${need[@]}"; fi
  if [ -n "${need_valkey:-}" ]; then $SUDO apt-get install -y -qq -t bookworm-backports valkey-server; fi
fi

if ! command -v secantusd-py >/dev/null; then
  command -v pip3 >/dev/null || { $SUDO apt-get install -y -qq python3-pip; }
  pip3 install -q secantusdb 2>/dev/null || pip3 install -q --break-system-packages secantusdb
fi

command -v cargo >/dev/null || { echo "cargo (Rust stable) is required: https://rustup.rs" >&2; exit 1; }

# Redis 7.4.1 (hash-field expiry, newer Module APIs) has no package here: built once into a cache.
scripts/redis74.sh >/dev/null
