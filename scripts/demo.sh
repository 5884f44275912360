#!/usr/bin/env bash
# Builds the module, starts redis-server with it on a free port, loads sample data and
# runs the same map-reduce in Lua and in JavaScript, a trigger and a stream consumer, then
# write-behind to a private PostgreSQL: the users already there backfilled, a burst of HSETs,
# rows arriving, the backlog draining. KEEP=1 leaves the servers running.
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
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pgdir="$dir/pg"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop() {
  if [ -z "${KEEP:-}" ]; then
    kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    [ -f "$pgdir/data/postmaster.pid" ] && as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
  fi
}
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
echo "== Write-behind: hashes user:* mirrored to a PostgreSQL table (a private server on port $pgport)"
mkdir -p "$pgdir"; if [ "$(id -u)" = 0 ]; then chmod 755 "$dir"; chown postgres "$pgdir"; fi
as_pg "$pgbin/initdb" -D "$pgdir/data" -U postgres --auth=trust --no-sync >/dev/null
as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1" -w start >/dev/null
psql() { "$pgbin/psql" -X -q -A -t -d "postgresql://postgres@127.0.0.1:$pgport/postgres" -c "$1"; }
psql "CREATE TABLE users (id integer PRIMARY KEY, name text, age integer, city text)"
cli RG.CONFIGSET connection.pg "postgresql://postgres@127.0.0.1:$pgport/postgres" >/dev/null
code="import { writeBehind, postgres } from 'gears/recipes';
writeBehind({ name: 'users', prefix: 'user:', target: postgres({ connection: 'pg', table: 'users' }),
              batch: 500, flushMs: 100, delivery: 'exactly-once', backfill: true });"
echo "$code"
cli RG.EXEC js "$code" ID users-to-pg
echo "(backfill: true: the 1002 users already in Redis are mirrored at once by a background scan; changes are captured as they happen)"
for _ in $(seq 100); do
  backfill=$(cli INFO rg | tr -d '\r' | grep '^rg_recipe_users:' | grep -o 'backfill=[a-z]*,backfill_scanned=[0-9]*' || true)
  rows=$(psql "SELECT count(*) FROM users")
  [ "$rows" = 1002 ] && [ "${backfill%%,*}" = backfill=done ] && break
  sleep 0.1
done
echo "  $backfill -> PostgreSQL rows: $rows"
awk 'BEGIN { split("paris rome berlin lisbon", c, " "); for (i = 1; i <= 20000; i++) printf "HSET user:%d name user%d age %d city %s\n", i, i, 18 + i % 50, c[1 + i % 4] }' > "$dir/burst.txt"
sample() {
  rows=$(psql "SELECT count(*) FROM users")
  backlog=$(cli INFO rg | tr -d '\r' | grep '^rg_recipes_backlog:' | cut -d: -f2)
  echo "  $1 PostgreSQL rows: $rows, backlog in Redis: $backlog"
}
echo "a client writes 20000 users (one HSET per request) while the recipe applies them:"
start=$(date +%s.%N)
cli < "$dir/burst.txt" >/dev/null &
writer=$!
while kill -0 "$writer" 2>/dev/null; do sample "writing..."; sleep 1; done
wait "$writer"
echo "  the 20000 HSETs took $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s"
for _ in $(seq 100); do
  sample "draining:"
  [ "$rows" = 20000 ] && [ "$backlog" = 0 ] && break
  sleep 0.2
done
cli DEL user:7 >/dev/null
cli HSET user:8 city oslo >/dev/null
sleep 0.5
echo "DEL user:7 and HSET user:8 city oslo -> PostgreSQL: $(psql "SELECT count(*) FROM users WHERE id = 7") row for 7, user:8 lives in $(psql "SELECT city FROM users WHERE id = 8")"
echo "exactly-once checkpoint: $(psql "SELECT recipe || ' ' || stream || ' ' || last_id FROM rg_checkpoints")"
echo
cli INFO rg | grep -v '^#' | tr -d '\r' | sed '/^$/d'
if [ -n "${KEEP:-}" ]; then echo "PostgreSQL left running on port $pgport (data in $pgdir)"; fi
if [ -n "${KEEP:-}" ]; then echo "server left running on port $port (pid $(cat "$dir/redis.pid"))"; fi
