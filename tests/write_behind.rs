//! Write-behind to PostgreSQL: capture, apply, mapping and types, in both languages, and
//! what happens when processes die, the database goes away or data is bad.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::{Duration, Instant};
use testdb::Postgres;

fn server_with(pg: &Postgres, extra: &[&str]) -> Server {
    let url = pg.url();
    Server::start_with(&["connection.pg", &url], extra)
}

const USERS: &str = "CREATE TABLE users (id integer PRIMARY KEY, name text, age integer, score double precision, active boolean, joined timestamptz)";

fn lua_recipe(opts: &str) -> String {
    format!("local r = require('gears.recipes')\nr.writeBehind({{ name = 'users', prefix = 'user:', target = r.postgres({{ connection = 'pg', table = 'users' }}), flushMs = 10{opts} }})")
}

fn js_recipe(opts: &str) -> String {
    format!("import {{ writeBehind, postgres }} from 'gears/recipes';\nwriteBehind({{ name: 'users', prefix: 'user:', target: postgres({{ connection: 'pg', table: 'users' }}), flushMs: 10{opts} }});")
}

#[test]
fn inserts_updates_deletes_expiry_rename_and_types_in_both_languages() {
    let pg = Postgres::start();
    let s = server_with(&pg, &[]);
    let mut c = s.conn();
    for (lang, code) in [("lua", lua_recipe("")), ("js", js_recipe(""))] {
        pg.sql(&format!("DROP TABLE IF EXISTS users; {USERS}"));
        cmd(&mut c, &["FLUSHALL"]);
        assert_eq!(exec(&mut c, lang, &code, &["ID", "wb"]), "OK", "{lang}");
        // Insert, with every type.
        cmd(&mut c, &["HSET", "user:1", "name", "Ann", "age", "31", "score", "9.5", "active", "true", "joined", "2024-05-01T12:30:00Z", "ignored", "x"]);
        cmd(&mut c, &["HSET", "user:2", "name", "Bob", "age", "40"]);
        common::pg_eventually(&pg, "SELECT id, name, age, score, active, joined AT TIME ZONE 'UTC' FROM users ORDER BY id", "1|Ann|31|9.5|t|2024-05-01 12:30:00\n2|Bob|40|||", 20);
        // Partial update: the row is the whole hash after the change.
        cmd(&mut c, &["HSET", "user:2", "age", "41"]);
        cmd(&mut c, &["HINCRBY", "user:2", "age", "1"]);
        cmd(&mut c, &["HDEL", "user:1", "score"]);
        common::pg_eventually(&pg, "SELECT id, name, age, score FROM users ORDER BY id", "1|Ann|31|\n2|Bob|42|", 20);
        // Delete, expiry, and rename (into and out of the prefix).
        cmd(&mut c, &["HSET", "user:3", "name", "Cy"]);
        cmd(&mut c, &["HSET", "tmp:4", "name", "Dee"]);
        cmd(&mut c, &["RENAME", "tmp:4", "user:4"]);
        common::pg_eventually(&pg, "SELECT string_agg(id::text, ',' ORDER BY id) FROM users", "1,2,3,4", 20);
        cmd(&mut c, &["DEL", "user:1"]);
        cmd(&mut c, &["PEXPIRE", "user:2", "50"]);
        cmd(&mut c, &["RENAME", "user:3", "old:3"]);
        common::pg_eventually(&pg, "SELECT string_agg(id::text, ',' ORDER BY id) FROM users", "4", 20);
        // Bad values go to the dead-letter stream; the rest still arrives.
        cmd(&mut c, &["HSET", "user:5", "name", "Eve", "age", "old"]);
        cmd(&mut c, &["HSET", "user:6", "name", "Fay", "age", "6"]);
        common::pg_eventually(&pg, "SELECT string_agg(id::text, ',' ORDER BY id) FROM users", "4,6", 20);
        let dead = fmt(&cmd(&mut c, &["XRANGE", "rg:dead:users", "-", "+"]));
        assert!(dead.contains("key 'user:5': field 'age' 'old' is not an integer (column age)"), "{dead}");
        common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
        let dump = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        assert!(dump.contains(r#""reader", "Recipe""#) && dump.contains(r#""deadLettered", 1"#), "{dump}");
        let info = fmt(&cmd(&mut c, &["INFO", "rg"]));
        assert!(info.contains("rg_recipes:1") && info.contains("rg_recipe_users:backlog=0"), "{info}");
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "wb"])), "OK");
    }
}

/// Writes `user:<i>` for i in `range` from a thread, through server restarts: every write
/// the server acknowledged is recorded as (i, value). A write that failed (the server was
/// being killed) is tried again with a new value, so each attempt is distinguishable.
fn writer(port: u16, range: std::ops::Range<usize>, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<Vec<(usize, String)>> {
    writer_counting(port, range, stop, Default::default())
}

/// `writer`, which also counts its acknowledged writes in `acks` as it goes.
fn writer_counting(port: u16, range: std::ops::Range<usize>, stop: std::sync::Arc<std::sync::atomic::AtomicBool>, acks: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> std::thread::JoinHandle<Vec<(usize, String)>> {
    std::thread::spawn(move || {
        let open = || redis::Client::open(format!("redis://127.0.0.1:{port}/")).and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)));
        let mut conn = None;
        let mut acked = Vec::new();
        let mut attempt = 0u64;
        for i in range {
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return acked;
                }
                attempt += 1;
                let value = format!("v{i}-{attempt}");
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match open() {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    },
                };
                let r: redis::RedisResult<i64> = redis::cmd("HSET").arg(format!("user:{i}")).arg("name").arg(&value).arg("age").arg(i).query(c);
                match r {
                    Ok(_) => {
                        acked.push((i, value));
                        acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                    // The server is being killed, restarted, or loading its AOF.
                    Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() || e.kind() == redis::ErrorKind::BusyLoadingError => {
                        conn = None;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("HSET user:{i} was refused: {e}"),
                }
            }
        }
        acked
    })
}

/// Every acknowledged write is in PostgreSQL: the last acknowledged value of each key.
fn assert_all_arrived(pg: &Postgres, acked: &[(usize, String)], secs: u64) {
    let mut last = std::collections::BTreeMap::new();
    for (i, v) in acked {
        last.insert(*i, v.clone());
    }
    let expected: String = last.iter().map(|(i, v)| format!("{i}|{v}")).collect::<Vec<_>>().join("\n");
    common::pg_eventually(pg, "SELECT id, name FROM users ORDER BY id", &expected, secs);
}

/// The recipe's backlog, from `INFO rg`.
fn backlog(c: &mut redis::Connection) -> Result<u64, String> {
    let info = fmt(&cmd(c, &["INFO", "rg"]));
    let n = info.split("rg_recipe_users:backlog=").nth(1).and_then(|t| t.split(|ch: char| !ch.is_ascii_digit()).next()).and_then(|n| n.parse().ok());
    n.ok_or(info)
}

/// `id|name` lines as pairs.
fn pairs(rows: &str) -> Vec<(usize, String)> {
    rows.lines().map(|l| l.split_once('|').map(|(i, n)| (i.parse().expect("id"), n.to_string())).expect("id|name")).collect()
}

/// What was in flight when one kill landed.
struct Kill {
    /// Changes captured and not yet applied, read just before the main thread was frozen
    /// (nothing can trim or capture while it is).
    backlog: u64,
    /// The (id, name) audit rows of the batch PostgreSQL committed while the main thread
    /// was frozen: committed, but still in the stream at the kill.
    committed_not_trimmed: Vec<(usize, String)>,
}

/// kill -9 with a batch committed in PostgreSQL and not yet trimmed from the stream: the
/// window in which at-least-once replays and exactly-once must skip. A session holds the
/// users table locked until `release` has `round`, so the apply thread stops inside the
/// transaction of the batch it read. Then the main thread is frozen (DEBUG SLEEP), the lock
/// released: the batch commits, its trim waits for the main thread, and the kill lands.
fn kill_with_a_batch_in_flight(s: &mut Server, pg: &Postgres, round: usize) -> Kill {
    let mut c = s.conn();
    std::thread::scope(|scope| {
        let locker = scope.spawn(|| {
            pg.sql(&format!("DO $$ BEGIN LOCK TABLE users IN EXCLUSIVE MODE; WHILE NOT EXISTS (SELECT 1 FROM release WHERE round = {round}) LOOP PERFORM pg_sleep(0.005); END LOOP; END $$"))
        });
        common::wait_until(20, "the apply thread to wait on the locked table", || {
            let waiting = pg.sql(r#"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO "users"%'"#);
            if waiting == "1" { Ok(()) } else { Err(format!("{waiting} batches waiting on the lock")) }
        });
        // Nothing is trimmed while the apply thread waits: the backlog only grows from here.
        let backlog = backlog(&mut c).expect("INFO rg");
        let port = s.port;
        let sleeper = scope.spawn(move || {
            let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap();
            // Ends with the kill.
            let _ = redis::cmd("DEBUG").arg("SLEEP").arg(10).query::<redis::Value>(&mut c);
        });
        common::wait_until(5, "the main thread to freeze", || if common::main_thread_busy(port, Duration::from_millis(150)) { Ok(()) } else { Err("answering".into()) });
        // The blocked batch has written nothing yet: its audit rows are the ones above `seen`.
        let seen = pg.sql("SELECT coalesce(max(seq), 0) FROM audit");
        pg.sql(&format!("INSERT INTO release VALUES ({round})"));
        locker.join().expect("locker");
        let rows = common::wait_until(10, "the batch to commit", || {
            let rows = pg.sql(&format!("SELECT id, name FROM audit WHERE seq > {seen} ORDER BY seq"));
            if rows.is_empty() { Err("nothing committed".into()) } else { Ok(rows) }
        });
        assert!(common::main_thread_busy(port, Duration::from_millis(50)), "the main thread woke before the kill");
        s.restart();
        sleeper.join().expect("sleeper");
        Kill { backlog, committed_not_trimmed: pairs(&rows) }
    })
}

fn kill_three_times_under_load(delivery: &str) -> (Postgres, Vec<(usize, String)>, Vec<Kill>) {
    let pg = Postgres::start();
    // The audit trigger is slow (1 ms a row), so a backlog builds up. `seq` orders the audit
    // rows by when they were written; `release` lets a locked batch go on (see
    // kill_with_a_batch_in_flight).
    pg.sql(&format!("{USERS}; CREATE TABLE audit (seq bigserial, id integer, name text); CREATE TABLE release (round integer); \
        CREATE FUNCTION audit_users() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(0.001); INSERT INTO audit (id, name) VALUES (NEW.id, NEW.name); RETURN NEW; END $$ LANGUAGE plpgsql; \
        CREATE TRIGGER users_audit AFTER INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION audit_users();"));
    let mut s = server_with(&pg, &["--appendonly", "yes", "--appendfsync", "always"]);
    let mut c = s.conn();
    let code = lua_recipe(&format!(", batch = 50, delivery = '{delivery}'"));
    assert_eq!(exec(&mut c, "lua", &code, &["ID", "wb"]), "OK");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // WB_KILLS (default 3) kills; bench/soak.sh runs more.
    let kills: usize = std::env::var("WB_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // The writer runs until it is stopped after the last kill (a fixed number of writes
    // could all be done before the last kill once writes got faster).
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = writer_counting(s.port, 0..usize::MAX, stop.clone(), acks.clone());
    let mut landed = Vec::new();
    for k in 0..kills {
        // Each kill comes after the (restarted) server acknowledged 300 more writes.
        let from = acks.load(std::sync::atomic::Ordering::Relaxed);
        common::wait_until(30, "the writer to make progress", || {
            let n = acks.load(std::sync::atomic::Ordering::Relaxed);
            if n >= from + 300 { Ok(()) } else { Err(format!("{n} acknowledged, waiting for {}", from + 300)) }
        });
        let kill = kill_with_a_batch_in_flight(&mut s, &pg, k);
        eprintln!("{delivery} kill {k}: backlog {} before the freeze, {} rows committed and not trimmed", kill.backlog, kill.committed_not_trimmed.len());
        assert!(kill.backlog > 0 && !kill.committed_not_trimmed.is_empty(), "kill {k} landed with nothing in flight");
        landed.push(kill);
    }
    // Writes go on after the last restart; then the writer stops.
    let from = acks.load(std::sync::atomic::Ordering::Relaxed);
    common::wait_until(30, "the writer to make progress after the last kill", || {
        let n = acks.load(std::sync::atomic::Ordering::Relaxed);
        if n >= from + 300 { Ok(()) } else { Err(format!("{n} acknowledged, waiting for {}", from + 300)) }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = w.join().expect("writer");
    // Each key is written until acknowledged before the next: the keys acknowledged are
    // 0, 1, 2, ... in order, none skipped.
    assert!(acked.iter().enumerate().all(|(n, (i, _))| *i == n), "the writer skipped a key");
    assert_all_arrived(&pg, &acked, 60);
    let mut c = s.conn();
    common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
    // Every acknowledged (id, value) reached the target: the audit table saw it applied.
    let audited: std::collections::BTreeSet<(usize, String)> = pairs(&pg.sql("SELECT DISTINCT id, name FROM audit")).into_iter().collect();
    let missing: Vec<_> = acked.iter().filter(|p| !audited.contains(p)).collect();
    assert!(missing.is_empty(), "acknowledged writes never applied: {missing:?}");
    (pg, acked, landed)
}

/// How many times the target applied each (id, name).
fn applications(pg: &Postgres) -> std::collections::HashMap<(usize, String), usize> {
    pg.sql("SELECT id, name, count(*) FROM audit GROUP BY id, name")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            ((f[0].parse().unwrap(), f[1].to_string()), f[2].parse().unwrap())
        })
        .collect()
}

/// The rows of a kill's committed-but-not-trimmed batch that no later write replaced: the
/// writer's last acknowledged value of the key is the one in the batch.
fn unreplaced<'a>(kill: &'a Kill, acked: &[(usize, String)]) -> Vec<&'a (usize, String)> {
    let last: std::collections::HashMap<usize, &String> = acked.iter().map(|(i, v)| (*i, v)).collect();
    kill.committed_not_trimmed.iter().filter(|(i, v)| last.get(i) == Some(&v)).collect()
}

#[test]
fn kill_9_three_times_loses_nothing_acknowledged() {
    let (pg, acked, kills) = kill_three_times_under_load("at-least-once");
    // At-least-once may apply a change twice after a crash, never zero times.
    let applied: usize = pg.sql("SELECT count(DISTINCT (id, name)) FROM audit").parse().unwrap();
    assert!(applied >= acked.len(), "{applied}");
    // The batch committed but not trimmed at each kill was applied again after the restart.
    let times = applications(&pg);
    for (k, kill) in kills.iter().enumerate() {
        let rows = unreplaced(kill, &acked);
        assert!(!rows.is_empty(), "kill {k}: every row of the in-flight batch was written again later: {:?}", kill.committed_not_trimmed);
        let once: Vec<_> = rows.iter().filter(|p| times.get(p).copied().unwrap_or(0) < 2).collect();
        assert!(once.is_empty(), "kill {k}: committed before the kill, not trimmed, and not replayed: {once:?}");
    }
    let replayed: usize = pg.sql("SELECT count(*) FROM (SELECT id, name FROM audit GROUP BY id, name HAVING count(*) > 1) d").parse().unwrap();
    assert!(replayed > 0, "no change was applied twice");
    eprintln!("at-least-once: {} acknowledged writes, {replayed} changes applied more than once after the kills", acked.len());
}

#[test]
fn exactly_once_applies_nothing_twice_across_kill_9() {
    let (pg, acked, kills) = kill_three_times_under_load("exactly-once");
    eprintln!("exactly-once: {} acknowledged writes, {} audit rows", acked.len(), pg.sql("SELECT count(*) FROM audit"));
    assert_eq!(pg.sql("SELECT count(*) FROM (SELECT id, name FROM audit GROUP BY id, name HAVING count(*) > 1) d"), "0", "duplicates in the audit table");
    // Each kill left a committed batch in the stream (at-least-once replays it, see above);
    // the checkpoint made the replay skip it.
    let times = applications(&pg);
    for (k, kill) in kills.iter().enumerate() {
        let rows = unreplaced(kill, &acked);
        assert!(!rows.is_empty(), "kill {k}: every row of the in-flight batch was written again later: {:?}", kill.committed_not_trimmed);
        let twice: Vec<_> = rows.iter().filter(|p| times.get(p).copied().unwrap_or(0) != 1).collect();
        assert!(twice.is_empty(), "kill {k}: applied other than once: {twice:?}");
    }
    let ckpt = pg.sql("SELECT recipe, stream FROM rg_checkpoints");
    assert_eq!(ckpt, "users|rg:wb:users");
}

#[test]
fn a_database_outage_loses_nothing_and_max_backlog_refuses_writes_clearly() {
    let mut pg = Postgres::start();
    pg.sql(USERS);
    let s = server_with(&pg, &[]);
    let mut c = s.conn();
    assert_eq!(exec(&mut c, "js", &js_recipe(", batch: 20, maxBacklog: 500"), &["ID", "wb"]), "OK");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut acked = writer(s.port, 0..100, stop.clone()).join().expect("writer");
    assert_all_arrived(&pg, &acked, 20);
    pg.stop();
    // Under maxBacklog no client sees an error (the writer panics on any refusal).
    acked.extend(writer(s.port, 100..400, stop.clone()).join().expect("writer"));
    assert_eq!(acked.len(), 400);
    common::wait_until(20, "the recipe to see the database gone with 300 changes waiting", || {
        let dump = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        if dump.contains(r#""connected", 0"#) && dump.contains(r#""backlog", 300"#) { Ok(()) } else { Err(dump) }
    });
    // Beyond it, writes to the recipe's keys are refused before they are applied.
    let mut refused = None;
    for i in 400..1000 {
        let r = fmt(&cmd(&mut c, &["HSET", &format!("user:{i}"), "name", "late", "age", "1"]));
        if r.starts_with("(error)") {
            refused = Some((i, r));
            break;
        }
    }
    let (first_refused, err) = refused.expect("writes beyond maxBacklog are refused");
    assert!(err.contains("write-behind 'users' has 500 changes not yet applied to its target (maxBacklog 500): writes to keys under 'user:' are refused until it drains"), "{err}");
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", &format!("user:{first_refused}")])), "0", "a refused write is not applied");
    assert_eq!(fmt(&cmd(&mut c, &["SET", "other:1", "x"])), "OK", "other keys are not affected");
    // A script's write is refused the same way (the command filter does not see it).
    for (lang, code) in [("lua", "return execute('HSET', 'user:9001', 'name', 'script')"), ("js", "execute('HSET', 'user:9002', 'name', 'script')")] {
        let r = exec(&mut c, lang, code, &[]);
        assert!(r.contains("write-behind 'users' has 500 changes not yet applied to its target (maxBacklog 500)"), "{lang}: {r}");
    }
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "user:9001", "user:9002"])), "0", "a refused script write is not applied");
    let info = fmt(&cmd(&mut c, &["INFO", "rg"]));
    assert!(info.contains("rg_recipes_backlog:500") && info.contains("connected=0"), "{info}");
    // The database comes back: everything acknowledged arrives, the backlog drains, writes
    // are accepted again.
    pg.start_again();
    let mut all = acked.clone();
    all.extend((400..first_refused).map(|i| (i, "late".to_string())));
    assert_all_arrived(&pg, &all, 60);
    common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
    assert_eq!(fmt(&cmd(&mut c, &["HSET", "user:5000", "name", "again", "age", "1"])), "2");
    common::pg_eventually(&pg, "SELECT name FROM users WHERE id = 5000", "again", 20);
}

#[test]
fn a_row_the_database_rejects_goes_to_the_dead_letter_stream_after_retries() {
    let pg = Postgres::start();
    pg.sql(&format!("{USERS}; ALTER TABLE users ADD CONSTRAINT adult CHECK (age >= 18)"));
    let s = server_with(&pg, &[]);
    let mut c = s.conn();
    assert_eq!(exec(&mut c, "lua", &lua_recipe(", batch = 10, maxRetries = 2"), &["ID", "wb"]), "OK");
    for i in 1..=20 {
        let age = if i == 7 { "3" } else { "30" };
        cmd(&mut c, &["HSET", &format!("user:{i}"), "name", &format!("n{i}"), "age", age]);
    }
    common::pg_eventually(&pg, "SELECT count(*) FROM users", "19", 30);
    assert_eq!(pg.sql("SELECT count(*) FROM users WHERE id = 7"), "0");
    common::eventually(&mut c, &["XLEN", "rg:dead:users"], "1");
    let dead = fmt(&cmd(&mut c, &["XRANGE", "rg:dead:users", "-", "+"]));
    assert!(dead.contains("adult") && dead.contains("user:7"), "{dead}");
    let dump = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
    assert!(dump.contains(r#""deadLettered", 1"#) && dump.contains(r#""retries", 2"#), "{dump}");
    common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
}

#[test]
fn an_upgrade_under_load_keeps_the_stream_and_loses_nothing() {
    let pg = Postgres::start();
    pg.sql(USERS);
    let s = server_with(&pg, &[]);
    let mut c = s.conn();
    assert_eq!(exec(&mut c, "lua", &lua_recipe(", batch = 25"), &["ID", "wb"]), "OK");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The writer runs until it is stopped, after the last upgrade: a fixed number of
    // writes could all be done before a slow upgrade returns (CI: 4000 were).
    let total = 1_000_000;
    let w = writer_counting(s.port, 0..total, stop.clone(), acks.clone());
    let written = || acks.load(std::sync::atomic::Ordering::Relaxed);
    for (i, (lang, code)) in [("js", js_recipe(", batch: 7")), ("lua", lua_recipe(", batch = 100, flushMs = 50")), ("js", js_recipe(""))].into_iter().enumerate() {
        // Upgrade i comes once the writer is 300 * (i + 1) writes in. The writer is fast
        // (thousands of writes a second): its progress is watched closely.
        let deadline = Instant::now() + Duration::from_secs(20);
        while written() < 300 * (i + 1) {
            assert!(Instant::now() < deadline, "the writer is stuck at {} writes", written());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(exec(&mut c, lang, &code, &["ID", "wb", "UPGRADE"]), "OK");
        let after = written();
        assert!(after < total, "upgrade {i} ended after the load ({after} writes)");
    }
    // Writes keep coming after the last upgrade, then the writer stops.
    let last = written();
    let deadline = Instant::now() + Duration::from_secs(20);
    while written() < last + 300 {
        assert!(Instant::now() < deadline, "the writer is stuck at {} writes", written());
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = w.join().expect("writer");
    assert_all_arrived(&pg, &acked, 60);
    // No entry is left behind in an orphaned stream.
    common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
    assert_eq!(fmt(&cmd(&mut c, &["KEYS", "rg:*"])), r#"["rg:wb:users"]"#);
}

/// PostgreSQL with the users table, and a server with a Lua write-through recipe on
/// `user:` (`opts` added to its options).
fn write_through(opts: &str) -> (Postgres, Server, redis::Connection) {
    let pg = Postgres::start();
    pg.sql(USERS);
    let s = server_with(&pg, &[]);
    let mut c = s.conn();
    let code = format!("local r = require('gears.recipes')\nr.writeThrough({{ name = 'users', prefix = 'user:', target = r.postgres({{ connection = 'pg', table = 'users' }}){opts} }})");
    assert_eq!(exec(&mut c, "lua", &code, &["ID", "wt"]), "OK");
    (pg, s, c)
}

#[test]
fn write_through_replies_once_the_row_is_committed_or_times_out() {
    let (mut pg, _server, mut c) = write_through(", timeoutMs = 1500");
    for i in 1..=20 {
        assert_eq!(fmt(&cmd(&mut c, &["HSET", &format!("user:{i}"), "name", "Ann", "age", &i.to_string()])), "2");
        // The reply came after the commit: the row is there already.
        assert_eq!(pg.sql(&format!("SELECT age FROM users WHERE id = {i}")), i.to_string());
    }
    assert_eq!(fmt(&cmd(&mut c, &["DEL", "user:1"])), "1");
    assert_eq!(pg.sql("SELECT count(*) FROM users WHERE id = 1"), "0");
    // A change the target can never take: an error, and the change is in the dead letters.
    let r = fmt(&cmd(&mut c, &["HSET", "user:40", "name", "Bad", "age", "forty"]));
    assert!(r.contains("write-through 'users': the change cannot be applied; it was moved to the dead-letter stream: key 'user:40': field 'age' 'forty' is not an integer"), "{r}");
    common::eventually(&mut c, &["XLEN", "rg:dead:users"], "1");
    // Inside MULTI the client cannot wait: the write is applied later.
    cmd(&mut c, &["MULTI"]);
    cmd(&mut c, &["HSET", "user:30", "name", "Multi", "age", "30"]);
    assert_eq!(fmt(&cmd(&mut c, &["EXEC"])), "[2]");
    common::pg_eventually(&pg, "SELECT name FROM users WHERE id = 30", "Multi", 20);
    // Nor inside a script.
    assert_eq!(fmt(&cmd(&mut c, &["EVAL", "return redis.call('HSET', KEYS[1], 'name', 'Lua', 'age', '31')", "1", "user:31"])), "2");
    common::pg_eventually(&pg, "SELECT name FROM users WHERE id = 31", "Lua", 20);
    // The database is down: an error after timeoutMs, and the change still arrives later.
    pg.stop();
    let started = Instant::now();
    let r = fmt(&cmd(&mut c, &["HSET", "user:2", "name", "Late", "age", "2"]));
    let waited = started.elapsed();
    assert!(r.contains("write-through 'users': the target did not commit the change within 1500 ms; it is kept and will be applied later"), "{r}");
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    assert_eq!(fmt(&cmd(&mut c, &["HGET", "user:2", "name"])), r#""Late""#);
    pg.start_again();
    common::pg_eventually(&pg, "SELECT name FROM users WHERE id = 2", "Late", 30);
}

#[test]
fn bad_recipes_are_refused_with_clear_errors() {
    let pg = Postgres::start();
    let s = server_with(&pg, &[]);
    let mut c = s.conn();
    let cases = [
        ("r.writeBehind({ prefix = 'u:', target = r.postgres({ connection = 'pg', table = 't' }) })", "writeBehind: name is required"),
        ("r.writeBehind({ name = 'a', target = r.postgres({ connection = 'pg', table = 't' }) })", "writeBehind: prefix is required"),
        ("r.writeBehind({ name = 'a', prefix = 'u:' })", "writeBehind: target is required"),
        ("r.writeBehind({ name = 'a', prefix = 'u:', target = r.postgres({ connection = 'nope', table = 't' }) })", "writeBehind: no connection 'nope': set it first with RG.CONFIGSET connection.nope <url>"),
        ("r.writeBehind({ name = 'a', prefix = 'u:', batch = 0, target = r.postgres({ connection = 'pg', table = 't' }) })", "writeBehind: batch must be between 1 and 100000, got 0"),
        ("r.writeBehind({ name = 'a', prefix = 'u:', delivery = 'twice', target = r.postgres({ connection = 'pg', table = 't' }) })", "writeBehind: delivery must be 'at-least-once' or 'exactly-once', got 'twice'"),
        ("r.writeBehind({ name = 'a', prefix = 'u:', keyPattern = 'u:*:*', target = r.postgres({ connection = 'pg', table = 't' }) })", "writeBehind: keyPattern must hold exactly one '*'"),
        ("r.writeBehind({ name = 'a', prefix = 'u:', colour = 1, target = r.postgres({ connection = 'pg', table = 't' }) })", "writeBehind: unknown option 'colour'"),
        ("r.writeBehind({ name = 'a', prefix = 'u:', target = r.postgres({ connection = 'pg', table = 't; drop table x' }) })", "writeBehind: target: table must be letters, digits"),
        ("r.writeBehind({ name = 'a', prefix = 'u:', columns = { ['a b'] = 'x' }, target = r.postgres({ connection = 'pg', table = 't' }) })", "writeBehind: column 'a b' must be 1 to 63 letters"),
        ("r.writeBehind({ name = 'a', prefix = 'rg:wb:', target = r.postgres({ connection = 'pg', table = 't' }) })", "would capture the recipes' own streams"),
        ("r.writeBehind(5)", "writeBehind: expected a table/object of options, got int"),
        ("r.writeBehind({ name = 'a', prefix = 'u:', timeoutMs = 5, target = r.postgres({ connection = 'pg', table = 't' }) })", "writeBehind: timeoutMs applies to writeThrough"),
        ("r.writeBehind({ name = 'a', prefix = 'u:', columns = {'a'}, target = r.postgres({ connection = 'pg', table = 't', columns = {'b'} }) })", "writeBehind: columns is given twice"),
    ];
    for (code, expected) in cases {
        let r = exec(&mut c, "lua", &format!("local r = require('gears.recipes')\n{code}"), &["ID", "bad"]);
        assert!(r.contains(expected), "{code}\n  got: {r}\n  expected: {expected}");
    }
    // Two recipes of one name in different sessions.
    let ok = "local r = require('gears.recipes')\nr.writeBehind({ name = 'a', prefix = 'u:', target = r.postgres({ connection = 'pg', table = 't' }) })";
    assert_eq!(exec(&mut c, "lua", ok, &["ID", "one"]), "OK");
    assert!(exec(&mut c, "lua", ok, &["ID", "two"]).contains("a recipe named 'a' already exists (session 'one')"));
    // The connection URL is a secret: shown redacted, never in full.
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.secret", "postgresql://app:hunter2@127.0.0.1:1/db?password=hunter2"])), "OK");
    let shown = fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.secret"]));
    assert_eq!(shown, r#"["postgresql://app:***@127.0.0.1:1/db?***"]"#);
    assert!(!fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"])).contains("hunter2"));
    assert!(!s.log().contains("hunter2"));
    assert!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.a b", "x"])).contains("bad connection setting"));
}

#[test]
fn writes_are_refused_while_changes_cannot_be_captured() {
    let pg = Postgres::start();
    pg.sql(USERS);
    let s = server_with(&pg, &[]);
    let mut c = s.conn();
    assert_eq!(exec(&mut c, "lua", &lua_recipe(""), &["ID", "wb"]), "OK");
    cmd(&mut c, &["HSET", "user:1", "name", "Ann"]);
    common::pg_eventually(&pg, "SELECT name FROM users", "Ann", 20);
    // Someone replaces the recipe's stream with a string: the very next write is refused
    // before it is applied.
    cmd(&mut c, &["DEL", "rg:wb:users"]);
    cmd(&mut c, &["SET", "rg:wb:users", "oops"]);
    let refused = fmt(&cmd(&mut c, &["HSET", "user:2", "name", "Bob"]));
    assert!(refused.contains("write-behind 'users' cannot capture changes: 'rg:wb:users' is not a stream") && refused.contains("writes to keys under 'user:' are refused so that none is acknowledged without being captured"), "{refused}");
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "user:2"])), "0", "the refused write was not applied");
    // In MULTI and in scripts too.
    cmd(&mut c, &["MULTI"]);
    cmd(&mut c, &["HSET", "user:2", "name", "Bob"]);
    assert!(fmt(&cmd(&mut c, &["EXEC"])).contains("cannot capture changes"));
    assert!(fmt(&cmd(&mut c, &["EVAL", "return redis.call('HSET', 'user:2', 'name', 'Bob')", "0"])).contains("cannot capture changes"));
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "user:2"])), "0");
    // Once the key is a stream (or gone) again, writes are accepted and captured.
    cmd(&mut c, &["DEL", "rg:wb:users"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fmt(&cmd(&mut c, &["HSET", "user:3", "name", "Cy"])).starts_with("(error)") {
        assert!(Instant::now() < deadline, "writes stayed refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    common::pg_eventually(&pg, "SELECT name FROM users WHERE id = 3", "Cy", 20);
}

#[test]
fn a_replica_applies_nothing_until_promoted_then_drains_what_the_primary_left() {
    let mut pg = Postgres::start();
    pg.sql(USERS);
    let url = pg.url();
    let primary = server_with(&pg, &[]);
    let replica = Server::start_with(&["connection.pg", &url], &["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    common::wait_for_link(&mut r);
    assert_eq!(exec(&mut p, "js", &js_recipe(""), &["ID", "wb"]), "OK");
    for i in 1..=50 {
        cmd(&mut p, &["HSET", &format!("user:{i}"), "name", "p", "age", &i.to_string()]);
    }
    common::pg_eventually(&pg, "SELECT count(*) FROM users", "50", 20);
    // The database goes away; the primary keeps capturing, and its backlog reaches the
    // replica with the data.
    pg.stop();
    for i in 51..=80 {
        cmd(&mut p, &["HSET", &format!("user:{i}"), "name", "p", "age", &i.to_string()]);
    }
    cmd(&mut p, &["WAIT", "1", "5000"]);
    common::eventually(&mut r, &["XLEN", "rg:wb:users"], "30");
    drop(p);
    drop(primary);
    pg.start_again();
    // Nothing is applied from a replica. (A fixed wait: time for a wrong apply to show.)
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(pg.sql("SELECT count(*) FROM users"), "50");
    // Promoted, it applies the backlog the primary left, and captures its own writes.
    assert_eq!(fmt(&cmd(&mut r, &["REPLICAOF", "NO", "ONE"])), "OK");
    cmd(&mut r, &["HSET", "user:81", "name", "r", "age", "81"]);
    common::pg_eventually(&pg, "SELECT count(*), sum(age) FROM users", &format!("81|{}", (1..=81).sum::<i32>()), 30);
    common::eventually(&mut r, &["XLEN", "rg:wb:users"], "0");
}

#[test]
fn stream_consumers_leave_recipe_streams_alone_and_upgrades_reconnect() {
    let mut pg = Postgres::start();
    pg.sql(&format!("{USERS}; CREATE TABLE users2 (id integer PRIMARY KEY, name text)"));
    let s = server_with(&pg, &[]);
    let mut c = s.conn();
    assert_eq!(exec(&mut c, "lua", &lua_recipe(""), &["ID", "wb"]), "OK");
    pg.stop();
    for i in 1..=5 {
        cmd(&mut c, &["HSET", &format!("user:{i}"), "name", "a"]);
    }
    // A StreamReader on every stream, trimming: it must not eat the recipe's backlog.
    assert_eq!(exec(&mut c, "lua", "GB('StreamReader'):foreach(function(r) execute('INCR', 'seen') end):register({prefix = '', trimStream = true})", &["ID", "all"]), "OK");
    cmd(&mut c, &["XADD", "other", "*", "a", "1"]);
    common::eventually(&mut c, &["GET", "seen"], r#""1""#);
    assert_eq!(fmt(&cmd(&mut c, &["XLEN", "rg:wb:users"])), "5");
    pg.start_again();
    common::pg_eventually(&pg, "SELECT count(*) FROM users", "5", 30);
    assert_eq!(fmt(&cmd(&mut c, &["GET", "seen"])), r#""1""#);
    // An upgrade to another table (and mapping) writes there from the next batch.
    let v2 = "local r = require('gears.recipes')\nr.writeBehind({ name = 'users', prefix = 'user:', target = r.postgres({ connection = 'pg', table = 'users2', columns = { name = 'name' } }), flushMs = 10 })";
    assert_eq!(exec(&mut c, "lua", v2, &["ID", "wb", "UPGRADE"]), "OK");
    cmd(&mut c, &["HSET", "user:6", "name", "b", "age", "3"]);
    common::pg_eventually(&pg, "SELECT id, name FROM users2", "6|b", 20);
    assert_eq!(pg.sql("SELECT count(*) FROM users"), "5");
}

#[test]
fn a_hooked_write_to_a_write_through_recipe_runs_its_hook_and_waits() {
    let (pg, s, mut c) = write_through("");
    // The hook writes names in capitals, and refuses a name 'nobody'.
    let hook = "GB('CommandReader'):map(function(a) if a[4] == 'nobody' then error('no nobody') end return callNext(a[2], a[3], string.upper(a[4])) end):register({hook = 'HSET', prefix = 'user:'})";
    assert_eq!(exec(&mut c, "lua", hook, &["ID", "caps"]), "OK");
    let r = fmt(&cmd(&mut c, &["HSET", "user:1", "name", "ann"]));
    assert_eq!(r, "1", "{}", s.log());
    assert_eq!(pg.sql("SELECT name FROM users WHERE id = 1"), "ANN");
    assert!(fmt(&cmd(&mut c, &["HSET", "user:2", "name", "nobody"])).contains("no nobody"));
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "user:2"])), "0");
    assert_eq!(pg.sql("SELECT count(*) FROM users WHERE id = 2"), "0");
}

#[test]
fn users_allowed_to_write_may_write_to_write_through_keys_where_the_server_has_acl_categories() {
    let (pg, s, mut c) = write_through("");
    assert_eq!(fmt(&cmd(&mut c, &["ACL", "SETUSER", "app", "on", "nopass", "~user:*", "+@write", "+@read", "+@connection"])), "OK");
    let mut app = s.conn();
    assert_eq!(fmt(&cmd(&mut app, &["AUTH", "app", "x"])), "OK");
    let r = fmt(&cmd(&mut app, &["HSET", "user:1", "name", "Ann"]));
    let version = fmt(&cmd(&mut c, &["INFO", "server"]));
    if version.contains("redis_version:7.0.") {
        // Redis 7.0 cannot put module commands in ACL categories: the user needs +rg.wtrun.
        assert!(r.contains("NOPERM") && r.contains("rg.wtrun"), "{r}");
        assert_eq!(fmt(&cmd(&mut c, &["ACL", "SETUSER", "app", "+rg.wtrun"])), "OK");
        assert_eq!(fmt(&cmd(&mut app, &["HSET", "user:1", "name", "Ann"])), "1");
    } else {
        assert_eq!(r, "1");
    }
    assert_eq!(pg.sql("SELECT name FROM users WHERE id = 1"), "Ann");
    // The key permission of the command itself still holds.
    assert!(fmt(&cmd(&mut app, &["HSET", "other:1", "name", "x"])).contains("NOPERM"));
}
