#!/usr/bin/env bash
# Builds the module, starts redis-server with it on a free port, loads sample data and
# runs the same map-reduce in Lua and in JavaScript. KEEP=1 leaves the server running.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --dir "$dir" --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
  --loadmodule "$PWD/target/release/librg.so" >/dev/null
for _ in $(seq 50); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
stop() { if [ -z "${KEEP:-}" ]; then kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; rm -rf "$dir"; fi; }
trap stop EXIT
cli() { redis-cli -p "$port" "$@"; }

echo "redis-server $(cli INFO server | grep redis_version | cut -d: -f2 | tr -d '\r') on 127.0.0.1:$port with module: $(cli MODULE LIST | head -2 | tail -1)"
echo "loading 1000 users..."
for i in $(seq 1 1000); do
  echo "HSET user:$i name user$i age $((18 + i % 50)) city $(echo paris rome berlin lisbon | cut -d' ' -f$((1 + i % 4)))"
done | cli >/dev/null

echo
echo "== Lua: users per city"
echo "RG.EXEC lua \"GB('KeysReader'):countBy(function(r) return r.value.city end):run('user:*')\""
cli RG.EXEC lua "GB('KeysReader'):countBy(function(r) return r.value.city end):run('user:*')"
echo
echo "== JavaScript: the same flow"
echo "RG.EXEC js \"GB('KeysReader').countBy(r => r.value.city).run('user:*')\""
cli RG.EXEC js "GB('KeysReader').countBy(r => r.value.city).run('user:*')"
echo
echo "== Lua: average age of users over 40"
cli RG.EXEC lua "GB():filter(function(r) return tonumber(r.value.age) > 40 end):avg(function(r) return tonumber(r.value.age) end):run('user:*')"
echo
echo "== JavaScript: the three oldest ages, each pushed to a list by the flow"
cli RG.EXEC js "GB().map(r => Number(r.value.age)).distinct().sort(true).limit(3).foreach(a => execute('RPUSH', 'oldest', a)).run('user:*')"
echo "LRANGE oldest 0 -1 -> $(cli LRANGE oldest 0 -1 | tr '\n' ' ')"
echo
echo "== Triggers: a Lua sync trigger keeps a per-city counter as users are written"
cli RG.EXEC lua "GB():foreach(function(r) execute('HINCRBY', 'city-count', r.value.city, 1) end):register({prefix = 'user:', eventTypes = {'hset'}, mode = 'sync'})" ID city-counter
cli HSET user:1001 name ada age 36 city oslo >/dev/null
cli HSET user:1002 name alan age 41 city oslo >/dev/null
echo "HGET city-count oslo -> $(cli HGET city-count oslo)"
echo
echo "== Streams: a JS consumer sums order amounts in batches, at-least-once"
cli RG.EXEC js "GB('StreamReader').foreach(r => { execute('INCRBYFLOAT', 'revenue', r.value.amount) }).register({prefix: 'orders:', batch: 10})" ID revenue
for i in $(seq 1 25); do cli XADD orders:eu '*' amount 2.5 >/dev/null; done
for _ in $(seq 50); do [ "$(cli GET revenue)" = "62.5" ] && break; sleep 0.1; done
echo "GET revenue -> $(cli GET revenue); XLEN orders:eu -> $(cli XLEN orders:eu) (processed entries are trimmed)"
echo
cli INFO rg | grep -v '^#' | tr -d '\r' | sed '/^$/d'
if [ -n "${KEEP:-}" ]; then echo "server left running on port $port (pid $(cat "$dir/redis.pid"))"; fi
