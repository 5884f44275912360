#!/usr/bin/env bash
# Cost of a sync trigger: redis-benchmark HSET throughput and latency on one server, first
# with no registration, then with a trivial Lua and a trivial JavaScript sync trigger on the
# benchmark's keys. Figures are ratios against the plain run made in the same script.
# BENCH_REQUESTS and BENCH_CLIENTS tune the load.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release
requests=${BENCH_REQUESTS:-200000}
clients=${BENCH_CLIENTS:-50}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
${REDIS_SERVER:-redis-server} --port "$port" --bind 127.0.0.1 --save "" --dir "$dir" --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --loadmodule "$PWD/target/release/librg.so" >/dev/null
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
cli() { redis-cli -p "$port" "$@"; }

run() { # label -> "rps p50 p99"
  redis-benchmark -p "$port" -c "$clients" -n "$requests" -r 100000 -t hset --csv -q 2>/dev/null \
    | python3 -c 'import csv,sys; r=list(csv.DictReader(sys.stdin))[0]; print(r["rps"], r["p50_latency_ms"], r["p99_latency_ms"])'
}

cli FLUSHALL >/dev/null
read -r base_rps base_p50 base_p99 < <(run)
# A trigger on keys the benchmark does not write: what every other command pays (on Redis 7.0
# the command filter looks at each command's keys to see whether a sync trigger watches them).
cli RG.EXEC lua "GB('KeysOnlyReader'):foreach(function(r) end):register({prefix = 'elsewhere:', mode = 'sync'})" ID bench-other >/dev/null
read -r other_rps other_p50 other_p99 < <(run)
cli RG.DROPSESSION bench-other >/dev/null
cli RG.EXEC lua "GB('KeysOnlyReader'):foreach(function(r) end):register({prefix = 'myhash', mode = 'sync'})" ID bench-lua >/dev/null
read -r lua_rps lua_p50 lua_p99 < <(run)
cli RG.DROPSESSION bench-lua >/dev/null
cli RG.EXEC js "GB('KeysOnlyReader').foreach(r => {}).register({prefix: 'myhash', mode: 'sync'})" ID bench-js >/dev/null
read -r js_rps js_p50 js_p99 < <(run)
fired=$(cli RG.DUMPREGISTRATIONS | grep -A1 numTriggered | tail -1)
cli RG.DROPSESSION bench-js >/dev/null
python3 - "$base_rps" "$base_p50" "$base_p99" "$other_rps" "$other_p50" "$other_p99" "$lua_rps" "$lua_p50" "$lua_p99" "$js_rps" "$js_p50" "$js_p99" "$fired" "$requests" "$clients" <<'PY'
import sys
b_rps, b50, b99, o_rps, o50, o99, l_rps, l50, l99, j_rps, j50, j99 = map(float, sys.argv[1:13])
fired, n, c = sys.argv[13], sys.argv[14], sys.argv[15]
print(f"redis-benchmark HSET, {n} requests, {c} clients (JS trigger fired {fired} times)")
print(f"{'':22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}   ratios to plain HSET (rps, p99)")
print(f"{'plain HSET':22}{b_rps:>10.0f}{b50:>9.3f}{b99:>9.3f}   1.00, 1.00")
for name, rps, p50, p99 in [("trigger elsewhere", o_rps, o50, o99), ("Lua sync trigger", l_rps, l50, l99), ("JS sync trigger", j_rps, j50, j99)]:
    print(f"{name:22}{rps:>10.0f}{p50:>9.3f}{p99:>9.3f}   {rps/b_rps:.2f}, {p99/b99:.2f}")
PY
