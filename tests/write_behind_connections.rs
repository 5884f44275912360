//! Connections that outlive restarts, replicas and failover (docs/write-behind.md,
//! "Connections"): a connection set with `RG.CONFIGSET` (never a module argument here) is
//! saved in the AOF and RDB and replicated, so after `kill -9` and a restart, or after a
//! failover, the recipe drains its backlog with no command from the test but reads (the
//! writer's HSETs are the load). `env:` and `file:` keep the password out of those files;
//! setting a connection again makes its recipes connect again.
//!
//! Against a private PostgreSQL whose role `app` logs in with a password, so that a
//! connection that reads a stale or missing secret really fails, and an `audit` table that
//! records every row applied: every acknowledged (id, value) must be in it.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testdb::Postgres;

const PASSWORD: &str = "Pw1-first-secret";

/// PostgreSQL with `users`, `audit` (every row applied, in order), `release` (see
/// `lock_and_kill`), and a role `app` that must give its password over TCP.
fn postgres() -> Postgres {
    let pg = Postgres::start();
    pg.sql(&format!(
        "CREATE TABLE users (id integer PRIMARY KEY, name text, age integer); \
         CREATE TABLE audit (seq bigserial, id integer, name text); CREATE TABLE release (round integer); \
         CREATE FUNCTION audit_users() RETURNS trigger AS $$ BEGIN INSERT INTO audit (id, name) VALUES (NEW.id, NEW.name); RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER users_audit AFTER INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION audit_users(); \
         CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'; GRANT ALL ON ALL TABLES IN SCHEMA public TO app; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app"
    ));
    let hba = pg.dir.join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    // The first matching line wins: `app` needs its password, `postgres` (psql) stays trusted.
    std::fs::write(&hba, format!("host all app 127.0.0.1/32 scram-sha-256\n{rules}")).expect("pg_hba.conf");
    pg.sql("SELECT pg_reload_conf()");
    pg
}

fn url(pg: &Postgres, password: &str) -> String {
    format!("postgresql://app:{password}@127.0.0.1:{}/postgres", pg.port)
}

/// What `RG.CONFIGGET connection.pg` shows of `url(pg, _)`.
fn masked(pg: &Postgres) -> String {
    format!(r#"["postgresql://app:***@127.0.0.1:{}/postgres"]"#, pg.port)
}

const AOF: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

fn recipe(lang: &str) -> &'static str {
    match lang {
        "lua" => "local r = require('gears.recipes')\nr.writeBehind({ name = 'users', prefix = 'user:', target = r.postgres({ connection = 'pg', table = 'users' }), flushMs = 10, batch = 50 })",
        _ => "import { writeBehind, postgres } from 'gears/recipes';\nwriteBehind({ name: 'users', prefix: 'user:', target: postgres({ connection: 'pg', table: 'users' }), flushMs: 10, batch: 50 });",
    }
}

/// `id|name` lines as pairs.
fn pairs(rows: &str) -> BTreeSet<(usize, String)> {
    rows.lines().filter(|l| !l.is_empty()).map(|l| l.split_once('|').map(|(i, n)| (i.parse().expect("id"), n.to_string())).expect("id|name")).collect()
}

/// Every (id, name) PostgreSQL applied.
fn audited(pg: &Postgres) -> BTreeSet<(usize, String)> {
    pairs(&pg.sql("SELECT DISTINCT id, name FROM audit"))
}

type Acked = Arc<Mutex<Vec<(usize, String)>>>;

/// A writer thread: HSET `user:<i>` for i in `0..total` on the server at `port` (which the
/// test may change, for a failover). A write is acknowledged when the server replied, and,
/// while `wait_replica` is set, when `WAIT 1` says a replica has it too. A write that was not
/// acknowledged is tried again with a new value.
struct Load {
    port: Arc<AtomicU16>,
    wait_replica: Arc<AtomicBool>,
    acked: Acked,
    handle: std::thread::JoinHandle<()>,
}

fn load(port: u16, total: usize, wait_replica: bool) -> Load {
    let (port, wait, acked) = (Arc::new(AtomicU16::new(port)), Arc::new(AtomicBool::new(wait_replica)), Acked::default());
    let (p, w, a) = (port.clone(), wait.clone(), acked.clone());
    let handle = std::thread::spawn(move || {
        let open = |port: u16| redis::Client::open(format!("redis://127.0.0.1:{port}/")).and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)));
        let mut conn: Option<(u16, redis::Connection)> = None;
        let mut attempt = 0u64;
        for i in 0..total {
            loop {
                attempt += 1;
                let value = format!("v{i}-{attempt}");
                let port = p.load(Ordering::Relaxed);
                if conn.as_ref().is_some_and(|(cp, _)| *cp != port) {
                    conn = None;
                }
                let c = match conn.as_mut() {
                    Some((_, c)) => c,
                    None => match open(port) {
                        Ok(c) => &mut conn.insert((port, c)).1,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    },
                };
                let r: redis::RedisResult<i64> = redis::cmd("HSET").arg(format!("user:{i}")).arg("name").arg(&value).arg("age").arg(i).query(c);
                let r = r.and_then(|_| if w.load(Ordering::Relaxed) { redis::cmd("WAIT").arg(1).arg(2000).query::<i64>(c) } else { Ok(1) });
                match r {
                    Ok(replicas) if replicas >= 1 => {
                        a.lock().unwrap().push((i, value));
                        break;
                    }
                    // Not on a replica yet: not acknowledged; tried again.
                    Ok(_) => {}
                    // The server is being killed, restarted, or loading its AOF.
                    Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() || e.kind() == redis::ErrorKind::BusyLoadingError => {
                        conn = None;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("HSET user:{i} was refused: {e}"),
                }
            }
        }
    });
    Load { port, wait_replica: wait, acked, handle }
}

impl Load {
    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn snapshot(&self) -> Vec<(usize, String)> {
        self.acked.lock().unwrap().clone()
    }

    /// Waits until `n` more writes than now are acknowledged.
    fn progress(&self, n: usize) {
        let from = self.count();
        common::wait_until(60, "the writer to make progress", || {
            let now = self.count();
            if now >= from + n { Ok(()) } else { Err(format!("{now} acknowledged, waiting for {}", from + n)) }
        });
    }

    fn finish(self) -> Vec<(usize, String)> {
        self.handle.join().expect("writer");
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

fn xlen(c: &mut redis::Connection) -> u64 {
    match cmd(c, &["XLEN", "rg:wb:users"]) {
        redis::Value::Int(n) => n as u64,
        other => panic!("XLEN: {}", fmt(&other)),
    }
}

/// What was in flight when a kill landed.
struct Kill {
    /// Entries in the recipe's stream (captured, not applied) just before the kill.
    backlog: u64,
    /// The writes acknowledged before the kill.
    before: Vec<(usize, String)>,
}

/// Kills `victim` (SIGKILL) while the recipe has a backlog: a session holds the users table
/// locked, so the apply thread waits inside a batch and the writer's changes pile up in the
/// stream. `backlog_port` is the server the backlog is read on (the victim, or for a
/// failover its replica, which must have it too). The lock is released once the victim is
/// dead.
fn lock_and_kill(victim: &mut Server, backlog_port: u16, pg: &Postgres, round: usize, load: &Load) -> Kill {
    std::thread::scope(|scope| {
        let locker = scope.spawn(|| {
            pg.sql(&format!("DO $$ BEGIN LOCK TABLE users IN EXCLUSIVE MODE; WHILE NOT EXISTS (SELECT 1 FROM release WHERE round = {round}) LOOP PERFORM pg_sleep(0.005); END LOOP; END $$"))
        });
        common::wait_until(30, "the apply thread to wait on the locked table", || {
            let waiting = pg.sql(r#"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO "users"%'"#);
            if waiting == "1" { Ok(()) } else { Err(format!("{waiting} batches waiting on the lock")) }
        });
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{backlog_port}/")).unwrap().get_connection().unwrap();
        // Nothing is trimmed while the apply thread waits: the backlog only grows from here.
        common::wait_until(30, "a backlog", || {
            let n = xlen(&mut c);
            if n >= 100 { Ok(()) } else { Err(format!("backlog {n}")) }
        });
        let before = load.snapshot();
        let backlog = xlen(&mut c);
        victim.stop();
        pg.sql(&format!("INSERT INTO release VALUES ({round})"));
        locker.join().expect("locker");
        Kill { backlog, before }
    })
}

/// After a kill: the writes acknowledged before it reach PostgreSQL with no command sent to
/// Redis but reads, and the recipe reports a working connection. Returns how long it took.
fn drains(pg: &Postgres, s: &Server, kill: &Kill, shown: &str) -> Duration {
    let started = Instant::now();
    let mut c = s.conn();
    // Read only: the connection came back with the data.
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.pg"])), shown);
    common::wait_until(60, "the backlog left by the kill to reach PostgreSQL", || {
        let applied = audited(pg);
        let missing = kill.before.iter().filter(|p| !applied.contains(p)).count();
        if missing == 0 { Ok(()) } else { Err(format!("{missing} acknowledged writes not applied yet; {}", fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"])))) }
    });
    let dump = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
    assert!(dump.contains(r#""connected", 1"#), "{dump}");
    started.elapsed()
}

/// The end of a test under load: every acknowledged write applied (compared as sets), the
/// table holds each key's last acknowledged value, and the stream is empty.
fn all_arrived(pg: &Postgres, c: &mut redis::Connection, acked: &[(usize, String)]) {
    let mut last = std::collections::BTreeMap::new();
    for (i, v) in acked {
        last.insert(*i, v.clone());
    }
    let expected: String = last.iter().map(|(i, v)| format!("{i}|{v}")).collect::<Vec<_>>().join("\n");
    common::pg_eventually(pg, "SELECT id, name FROM users ORDER BY id", &expected, 60);
    common::eventually(c, &["XLEN", "rg:wb:users"], "0");
    let applied = audited(pg);
    let missing: Vec<_> = acked.iter().filter(|p| !applied.contains(p)).collect();
    assert!(missing.is_empty(), "acknowledged writes never applied: {missing:?}");
}

/// Every file the server wrote (AOF, RDB), as one byte string.
fn data_files(s: &Server) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dirs = vec![s.dir.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.file_name().is_some_and(|n| n != "server.log") {
                out.extend(std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// BGREWRITEAOF, waited for: from then on the AOF's base (an RDB) holds the connection in
/// the module's aux data, not as a replayed RG.CONFIGSET.
fn rewrite_aof(c: &mut redis::Connection) {
    let r = fmt(&cmd(c, &["BGREWRITEAOF"]));
    assert!(r.contains("rewriting"), "{r}");
    common::wait_until(30, "the AOF rewrite to finish", || {
        let info = fmt(&cmd(c, &["INFO", "persistence"]));
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") && info.contains("aof_last_bgrewrite_status:ok") { Ok(()) } else { Err("rewriting".into()) }
    });
}

/// kill -9 three times under load, the connection given by `value` with RG.CONFIGSET and
/// shown as `shown`: nothing acknowledged is lost and the backlog drains after each restart
/// by itself. Before the second kill the AOF is rewritten, so the connection comes back from
/// the AOF's command (kill 1) and from the RDB aux data (kills 2 and 3).
fn three_kills(pg: &Postgres, s: &mut Server, value: &str, shown: &str, lang: &str) -> Vec<(usize, String)> {
    // The log line names a reference, or says the URL is inline (it holds the password).
    let label = if value.contains("://") { "inline URL" } else { value };
    let mut c = s.conn();
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.pg", value])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.pg"])), shown);
    assert_eq!(exec(&mut c, lang, recipe(lang), &["ID", "wb"]), "OK");
    let w = load(s.port, 3000, false);
    for k in 0..3 {
        w.progress(300);
        if k == 1 {
            rewrite_aof(&mut s.conn());
        }
        let port = s.port;
        let kill = lock_and_kill(s, port, pg, k, &w);
        s.restart();
        let took = drains(pg, s, &kill, shown);
        eprintln!("{label}: kill {k} landed with a backlog of {} entries; {} acknowledged writes before it, all applied {} ms after the restart", kill.backlog, kill.before.len(), took.as_millis());
        assert!(kill.backlog > 0, "kill {k} landed with nothing in flight");
    }
    let acked = w.finish();
    assert_eq!(acked.len(), 3000, "the writer finished every key");
    all_arrived(pg, &mut s.conn(), &acked);
    acked
}

#[test]
fn kill_9_three_times_with_a_connection_set_at_run_time_loses_nothing_and_drains_by_itself() {
    let pg = postgres();
    let mut s = Server::start_with(&[], AOF);
    let acked = three_kills(&pg, &mut s, &url(&pg, PASSWORD), &masked(&pg), "lua");
    eprintln!("inline URL: {} acknowledged writes, all applied", acked.len());
    // An inline URL is saved as is: the password is in the AOF (see docs/write-behind.md).
    assert!(contains(&data_files(&s), PASSWORD), "the AOF/RDB should hold the inline URL");
    assert!(!s.log().contains(PASSWORD), "the log shows the password");
}

#[test]
fn env_connections_survive_kill_9_and_keep_the_password_out_of_the_aof_and_rdb() {
    let pg = postgres();
    let pg_url = url(&pg, PASSWORD);
    let mut s = Server::start_with_env(&[], AOF, &[("RG_TEST_PG_URL", &pg_url)]);
    let acked = three_kills(&pg, &mut s, "env:RG_TEST_PG_URL", r#"["env:RG_TEST_PG_URL"]"#, "js");
    eprintln!("env: {} acknowledged writes, all applied", acked.len());
    let files = data_files(&s);
    assert!(contains(&files, "env:RG_TEST_PG_URL"), "the reference is saved");
    assert!(!contains(&files, PASSWORD) && !s.log().contains(PASSWORD), "the password was written to a file");
    // A variable that is not set: the recipe says so, and the changes wait.
    let mut c = s.conn();
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.ghost", "env:RG_TEST_NOT_SET"])), "OK");
    let ghost = "local r = require('gears.recipes')\nr.writeBehind({ name = 'ghost', prefix = 'ghost:', target = r.postgres({ connection = 'ghost', table = 'users' }), flushMs = 10 })";
    assert_eq!(exec(&mut c, "lua", ghost, &["ID", "ghost"]), "OK");
    cmd(&mut c, &["HSET", "ghost:1", "name", "g"]);
    let dump = common::wait_until(20, "the ghost recipe's lastError", || {
        let d = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        if d.contains("connection 'ghost': env:RG_TEST_NOT_SET: the variable is not set in redis-server's environment") { Ok(d) } else { Err(d) }
    });
    assert!(!dump.contains(PASSWORD));
    assert_eq!(fmt(&cmd(&mut c, &["XLEN", "rg:wb:ghost"])), "1");
    // A reference of the wrong form is refused without being quoted.
    assert_eq!(
        fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.ghost", "env:postgres://app:pw@h/db"])),
        "(error) ERR 'connection.ghost': env: must be followed by the name of an environment variable (letters, digits and '_', not starting with a digit), e.g. env:PG_URL"
    );
    assert_eq!(
        fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.ghost", "file:secrets/pg"])),
        "(error) ERR 'connection.ghost': file: must be followed by an absolute path (starting with '/'), e.g. file:/run/secrets/pg-url"
    );
}

/// The `app` backends connected to PostgreSQL (the recipe's connection).
fn app_backends(pg: &Postgres) -> String {
    pg.sql("SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE usename = 'app'")
}

#[test]
fn file_connections_survive_kill_9_and_pick_up_a_new_password_when_they_connect_again() {
    let pg = postgres();
    let secrets = tempdir("file-conn");
    let file = secrets.join("pg-url");
    std::fs::write(&file, format!("{}\n", url(&pg, PASSWORD))).unwrap();
    let reference = format!("file:{}", file.display());
    let shown = format!(r#"["{reference}"]"#);
    let mut s = Server::start_with(&[], AOF);
    let acked = three_kills(&pg, &mut s, &reference, &shown, "lua");
    eprintln!("file: {} acknowledged writes, all applied", acked.len());
    assert!(!contains(&data_files(&s), PASSWORD) && !s.log().contains(PASSWORD), "the password was written to a file");

    let mut c = s.conn();
    let mut n = 10_000;
    let mut write_and_see = |c: &mut redis::Connection, pg: &Postgres| {
        n += 1;
        assert_eq!(fmt(&cmd(c, &["HSET", &format!("user:{n}"), "name", "x", "age", "1"])), "2");
        common::pg_eventually(pg, &format!("SELECT count(*) FROM users WHERE id = {n}"), "1", 30);
    };
    write_and_see(&mut c, &pg);
    // 1. A new password in the file and in PostgreSQL. The connection made with the old one
    // goes on working; RG.CONFIGSET of the same value makes the recipe connect again, which
    // reads the file.
    let before = app_backends(&pg);
    std::fs::write(&file, url(&pg, "Pw2-second-secret")).unwrap();
    pg.sql("ALTER ROLE app PASSWORD 'Pw2-second-secret'");
    write_and_see(&mut c, &pg);
    assert_eq!(app_backends(&pg), before, "the recipe connected again before being told");
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.pg", &reference])), "OK");
    write_and_see(&mut c, &pg);
    let after = app_backends(&pg);
    assert!(!after.is_empty() && after != before, "the recipe did not connect again: {before} then {after}");
    // 2. Another password, and PostgreSQL drops the connection: the recipe connects again by
    // itself, reading the file.
    std::fs::write(&file, url(&pg, "Pw3-third-secret")).unwrap();
    pg.sql("ALTER ROLE app PASSWORD 'Pw3-third-secret'");
    pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'");
    write_and_see(&mut c, &pg);
    // 3. The file is gone: a clear lastError, the changes wait; back, they arrive.
    let moved = secrets.join("moved");
    std::fs::rename(&file, &moved).unwrap();
    pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'");
    assert_eq!(fmt(&cmd(&mut c, &["HSET", "user:20000", "name", "late", "age", "1"])), "2");
    common::wait_until(20, "lastError about the missing file", || {
        let d = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        if d.contains(&format!("connection 'pg': {reference}: no such file (as seen by redis-server)")) { Ok(()) } else { Err(d) }
    });
    // 4. A stale password in the file: PostgreSQL's refusal, without the password.
    std::fs::write(&file, url(&pg, "Pw2-second-secret")).unwrap();
    let dump = common::wait_until(20, "lastError about the password", || {
        let d = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        if d.contains("password authentication failed") { Ok(d) } else { Err(d) }
    });
    assert!(!dump.contains("Pw2-second-secret") && !s.log().contains("Pw2-second-secret") && !s.log().contains("Pw3-third-secret"), "{dump}");
    assert_eq!(pg.sql("SELECT count(*) FROM users WHERE id = 20000"), "0");
    std::fs::rename(&moved, &file).unwrap();
    common::pg_eventually(&pg, "SELECT name FROM users WHERE id = 20000", "late", 30);
    common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
    let _ = std::fs::remove_dir_all(&secrets);
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rg-{what}-{}-{}", std::process::id(), common::free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn after_a_failover_the_promoted_replica_drains_with_the_replicated_connection() {
    let pg = postgres();
    let mut primary = Server::start_with(&[], AOF);
    // Made a replica by command, so that a restart after its promotion keeps it a primary.
    let mut replica = Server::start_with(&[], AOF);
    let mut p = primary.conn();
    let mut r = replica.conn();
    assert_eq!(fmt(&cmd(&mut r, &["REPLICAOF", "127.0.0.1", &primary.port.to_string()])), "OK");
    common::wait_for_link(&mut r);
    assert_eq!(fmt(&cmd(&mut p, &["RG.CONFIGSET", "connection.pg", &url(&pg, PASSWORD), "script-timeout", "4000"])), "OK");
    // The connection reaches the replica (the other settings are the server's own).
    common::eventually(&mut r, &["RG.CONFIGGET", "connection.pg"], &masked(&pg));
    assert_eq!(fmt(&cmd(&mut r, &["RG.CONFIGGET", "script-timeout"])), r#"["5000"]"#);
    // A replica takes its connections from its primary only.
    assert_eq!(
        fmt(&cmd(&mut r, &["RG.CONFIGSET", "connection.pg", "postgres://x@127.0.0.1/db"])),
        "(error) ERR this server is a replica: connection settings come from its primary (set 'connection.pg' there; it is replicated and saved)"
    );
    assert_eq!(exec(&mut p, "lua", recipe("lua"), &["ID", "wb"]), "OK");
    // Acknowledged: written on the primary and on the replica (WAIT 1).
    let w = load(primary.port, 3000, true);
    w.progress(300);
    let kill = lock_and_kill(&mut primary, replica.port, &pg, 0, &w);
    drop(p);
    assert_eq!(fmt(&cmd(&mut r, &["REPLICAOF", "NO", "ONE"])), "OK");
    // The load moves to the new primary, which has no replica: acknowledged is its reply
    // (appendfsync always).
    w.wait_replica.store(false, Ordering::Relaxed);
    w.port.store(replica.port, Ordering::Relaxed);
    let took = drains(&pg, &replica, &kill, &masked(&pg));
    eprintln!("failover: the primary was killed with a backlog of {} entries on the replica; {} acknowledged writes before it, all applied {} ms after the promotion", kill.backlog, kill.before.len(), took.as_millis());
    assert!(kill.backlog > 0);
    // The promoted server saved the connection it was sent: kill -9 and restart it too.
    w.progress(300);
    let port = replica.port;
    let kill = lock_and_kill(&mut replica, port, &pg, 1, &w);
    replica.restart();
    let took = drains(&pg, &replica, &kill, &masked(&pg));
    eprintln!("failover: the promoted server was killed with a backlog of {}; all applied {} ms after its restart", kill.backlog, took.as_millis());
    assert!(kill.backlog > 0);
    let acked = w.finish();
    assert_eq!(acked.len(), 3000);
    all_arrived(&pg, &mut replica.conn(), &acked);
    primary.stop();
}

#[test]
fn setting_a_connection_again_moves_its_recipes_to_the_new_value_and_wins_over_the_module_argument() {
    let pg1 = postgres();
    let pg2 = postgres();
    // The module argument names pg1; RG.CONFIGSET moves the connection to pg2.
    let mut s = Server::start_with(&["connection.pg", &url(&pg1, PASSWORD)], AOF);
    let mut c = s.conn();
    assert_eq!(exec(&mut c, "js", recipe("js"), &["ID", "wb"]), "OK");
    cmd(&mut c, &["HSET", "user:1", "name", "one", "age", "1"]);
    common::pg_eventually(&pg1, "SELECT name FROM users", "one", 20);
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.pg", &url(&pg2, PASSWORD)])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.pg"])), masked(&pg2));
    cmd(&mut c, &["HSET", "user:2", "name", "two", "age", "2"]);
    common::pg_eventually(&pg2, "SELECT name FROM users", "two", 20);
    assert_eq!(pg1.sql("SELECT count(*) FROM users"), "1");
    // A URL that does not work: the error, then the right one again, at once (not after the
    // backoff of the failures).
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.pg", &url(&pg2, "wrong-password")])), "OK");
    cmd(&mut c, &["HSET", "user:3", "name", "three", "age", "3"]);
    common::wait_until(20, "lastError about the password", || {
        let d = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        if d.contains("password authentication failed") { Ok(()) } else { Err(d) }
    });
    // Six failed tries: the next is 5 s away (100 ms doubling, at most 5 s).
    common::wait_until(30, "six failed tries", || {
        let d = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        let retries: u64 = d.split(r#""retries", "#).nth(1).and_then(|t| t.split(|ch: char| !ch.is_ascii_digit()).next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        if retries >= 6 { Ok(()) } else { Err(d) }
    });
    let set = Instant::now();
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.pg", &url(&pg2, PASSWORD)])), "OK");
    common::pg_eventually(&pg2, "SELECT name FROM users WHERE id = 3", "three", 20);
    eprintln!("applied {} ms after the connection was set right", set.elapsed().as_millis());
    assert!(set.elapsed() < Duration::from_secs(3), "the new value waited for the backoff: {:?}", set.elapsed());
    // After kill -9, the value set at run time (pg2) wins over the module argument (pg1).
    s.restart();
    let mut c = s.conn();
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.pg"])), masked(&pg2));
    cmd(&mut c, &["HSET", "user:4", "name", "four", "age", "4"]);
    common::pg_eventually(&pg2, "SELECT name FROM users WHERE id = 4", "four", 30);
    assert_eq!(pg1.sql("SELECT count(*) FROM users"), "1");
    // Unset at run time: back to the module argument, after a restart too.
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.pg", ""])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.pg"])), masked(&pg1));
    cmd(&mut c, &["HSET", "user:5", "name", "five", "age", "5"]);
    common::pg_eventually(&pg1, "SELECT name FROM users WHERE id = 5", "five", 30);
    s.restart();
    let mut c = s.conn();
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.pg"])), masked(&pg1));
    cmd(&mut c, &["HSET", "user:6", "name", "six", "age", "6"]);
    common::pg_eventually(&pg1, "SELECT name FROM users WHERE id = 6", "six", 30);
    assert_eq!(pg2.sql("SELECT count(*) FROM users WHERE id >= 5"), "0");
}
