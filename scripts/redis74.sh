#!/usr/bin/env bash
# Builds Redis 7.4.1 from ../shared/servers/redis-7.4.1.tar.gz (or $REDIS74_TARBALL) once into a
# cache outside the checkout ($GEARS_CACHE, default ~/.cache/gears) and prints the path of its
# redis-server. The tree is kept: Redis's own tcl suite (tests/tcl_suite.sh) runs from it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${GEARS_CACHE:-$HOME/.cache/gears}
tarball=${REDIS74_TARBALL:-$here/../shared/servers/redis-7.4.1.tar.gz}
dir=$cache/redis-7.4.1
if [ ! -x "$dir/src/redis-server" ]; then
  [ -f "$tarball" ] || { echo "redis74.sh: $tarball not found" >&2; exit 1; }
  mkdir -p "$cache"
  rm -rf "$dir"
  tar xzf "$tarball" -C "$cache"
  make -C "$dir" -j2 BUILD_TLS=no >"$cache/redis-7.4.1.build.log" 2>&1 \
    || { tail -n 30 "$cache/redis-7.4.1.build.log" >&2; exit 1; }
fi
echo "$dir/src/redis-server"
