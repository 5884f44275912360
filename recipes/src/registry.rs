//! The recipes of this shard: one pipeline (and apply thread) per recipe name, following
//! the sessions. An upgraded session keeps its recipe's pipeline, streams and backlog (only
//! the options change); a dropped one stops applying, and its stream stays in the keyspace
//! until a recipe of that name is registered again. A recipe with `backfill` also has a
//! backfill (see `backfill`), started here and stopped with the recipe.

use crate::backfill::Backfill;
use crate::capture::{capture, event_op, Captured};
use crate::change::STREAM_PREFIX;
use crate::pipeline::Pipeline;
use crate::spec::Spec;
use engine::{Config, Engine, LockedHost, LogLevel, RecipeHooks, Trigger, Value};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Recipes {
    pipelines: RwLock<HashMap<String, Arc<Pipeline>>>,
    /// How many pipelines run (zero lets keyspace events and the command filter return at once).
    count: AtomicUsize,
    /// The server is a cluster node (streams get a slot tag).
    pub cluster: AtomicBool,
    /// The sessions generation the pipelines were last made to match.
    synced: std::sync::atomic::AtomicU64,
    /// The backfills of the recipes with `backfill` (running or done), by recipe name.
    backfills: RwLock<HashMap<String, Arc<Backfill>>>,
    /// Removed backfills whose saved state may not be deleted yet: a new backfill of the
    /// same name waits for that.
    retired: parking_lot::Mutex<HashMap<String, Arc<Backfill>>>,
}

impl Recipes {
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }

    pub fn all(&self) -> Vec<Arc<Pipeline>> {
        let mut v: Vec<Arc<Pipeline>> = self.pipelines.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn get(&self, name: &str) -> Option<Arc<Pipeline>> {
        self.pipelines.read().get(name).cloned()
    }

    /// The backfill of recipe `name`, if it has `backfill`.
    pub fn backfill(&self, name: &str) -> Option<Arc<Backfill>> {
        self.backfills.read().get(name).cloned()
    }

    /// The pipelines whose keys include `key`: in database `db`, or in any database when
    /// it is not known (the command filter does not know the client's database).
    pub fn matching(&self, db: Option<u32>, key: &[u8]) -> Vec<Arc<Pipeline>> {
        if self.is_empty() || key.starts_with(STREAM_PREFIX.as_bytes()) {
            return Vec::new();
        }
        self.pipelines.read().values().filter(|p| db.is_none_or(|d| p.db() == d) && key.starts_with(&p.spec().prefix)).cloned().collect()
    }

    /// A keyspace event: captures the change for every recipe of the key. Returns what
    /// was recorded, with its pipeline; a capture that failed is counted on its pipeline
    /// and returned as an error.
    pub fn on_event(&self, locked: &dyn LockedHost, db: u32, event: &str, key: &[u8]) -> Vec<(Arc<Pipeline>, Result<Captured, String>)> {
        let Some(op) = event_op(event) else { return Vec::new() };
        let mut out = Vec::new();
        for p in self.matching(Some(db), key) {
            let spec = p.spec();
            match capture(locked, &spec, op, key, self.cluster.load(Ordering::Relaxed)) {
                Ok(Some(c)) => {
                    p.captured(&c.stream);
                    // A key written while its recipe backfills is not queued again by it.
                    if let Some(b) = self.backfills.read().get(&p.name) {
                        b.touch(locked, key);
                    }
                    out.push((p, Ok(c)));
                }
                Ok(None) => {}
                Err(e) => {
                    // Watch that stream: the refusal lifts once it is a stream again.
                    p.add_stream(crate::change::stream_key(&spec.name, key, self.cluster.load(Ordering::Relaxed)));
                    p.capture_failed(e.clone());
                    out.push((p, Err(e)));
                }
            }
        }
        out
    }

    /// Makes the pipelines match the sessions if they changed since last time. Cheap when
    /// they did not; takes no data lock (safe on the main thread, inside a command), so the
    /// capture never misses a recipe that was just installed, loaded or promoted.
    pub fn ensure(&self, engine: &Arc<Engine>) {
        if self.synced.load(Ordering::Acquire) != engine.sessions.generation() {
            self.reconcile(engine);
        }
    }

    /// Makes the pipelines match the sessions, then looks for streams left by a previous
    /// run (restart, promotion, upgrade). Takes the data lock: not from the main thread.
    pub fn sync(&self, engine: &Arc<Engine>) {
        self.reconcile(engine);
        for p in self.all() {
            p.discover(&*engine.host);
        }
    }

    /// Makes the running pipelines match the recipe registrations of `engine`'s sessions.
    fn reconcile(&self, engine: &Arc<Engine>) {
        let generation = engine.sessions.generation();
        let mut wanted: HashMap<String, (Arc<Spec>, Arc<engine::Registration>, u32)> = HashMap::new();
        for (session, reg) in engine.sessions.recipes() {
            if let Trigger::Recipe { kind, name, options, .. } = &reg.spec.trigger {
                match Spec::parse(kind, options) {
                    Ok(spec) => {
                        wanted.insert(name.clone(), (Arc::new(spec), reg.clone(), session.db));
                    }
                    Err(e) => engine.host.log(LogLevel::Warning, &format!("rg: recipe '{name}' of session '{}' is not valid: {e}", session.id)),
                }
            }
        }
        let mut started = Vec::new();
        let mut removed = Vec::new();
        {
            let mut map = self.pipelines.write();
            map.retain(|name, p| {
                let keep = wanted.contains_key(name);
                if !keep {
                    p.stop();
                    removed.push(p.clone());
                }
                keep
            });
            for (name, (spec, reg, db)) in wanted {
                match map.get(&name) {
                    Some(p) => p.update(spec, reg, db),
                    None => {
                        let p = Pipeline::new(name.clone(), spec, reg, db);
                        map.insert(name.clone(), p.clone());
                        started.push(p);
                    }
                }
            }
            self.count.store(map.len(), Ordering::Relaxed);
            self.sync_backfills(&map, &removed, &engine.host);
            self.synced.store(generation, Ordering::Release);
        }
        for p in started {
            let (host, config, p2) = (engine.host.clone(), engine.config.clone(), p.clone());
            let spawned = std::thread::Builder::new().name(format!("rg-wb-{}", p.name)).spawn(move || {
                // A panic (a driver's, say) must not end the recipe: it is logged and the
                // loop starts again; what was not trimmed is applied again.
                while !p2.stopped() {
                    let (p3, host2, config2) = (p2.clone(), host.clone(), config.clone());
                    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || p3.run(host2, config2))) {
                        let what = e.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| e.downcast_ref::<String>().cloned()).unwrap_or_default();
                        host.log(LogLevel::Warning, &format!("rg: recipe '{}': its apply thread failed ({what}); starting it again in 1 s", p2.name));
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
            });
            if let Err(e) = spawned {
                engine.host.log(LogLevel::Warning, &format!("rg: recipe '{}': could not start its thread: {e}", p.name));
            }
        }
    }

    /// Makes the backfills follow the pipelines (which have their new specs): a recipe with
    /// `backfill` gets one, started unless it ended for the recipe's current target; a
    /// recipe removed or without `backfill` any more loses its own, with its saved state.
    /// Takes no data lock.
    fn sync_backfills(&self, pipelines: &HashMap<String, Arc<Pipeline>>, removed: &[Arc<Pipeline>], host: &Arc<dyn engine::Host>) {
        let cluster = self.cluster.load(Ordering::Relaxed);
        let mut backfills = self.backfills.write();
        let mut retired = self.retired.lock();
        retired.retain(|_, b| !b.cleaned());
        for p in removed {
            if let Some(b) = backfills.remove(&p.name) {
                b.remove(host, p.db());
                retired.insert(b.name.clone(), b);
            }
        }
        for (name, p) in pipelines {
            if p.spec().backfill {
                let b = match backfills.get(name) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Backfill::new(name.clone(), cluster, retired.remove(name));
                        backfills.insert(name.clone(), b.clone());
                        b
                    }
                };
                b.ensure_running(p, host);
            } else if let Some(b) = backfills.remove(name) {
                b.remove(host, p.db());
                retired.insert(b.name.clone(), b);
            }
        }
    }

    /// Stops every pipeline (shutdown).
    pub fn stop_all(&self) {
        for b in self.backfills.write().drain().map(|(_, b)| b) {
            b.stop();
        }
        for p in self.pipelines.write().drain().map(|(_, p)| p) {
            p.stop();
        }
        self.count.store(0, Ordering::Relaxed);
    }
}

impl RecipeHooks for Recipes {
    fn check(&self, kind: &str, options: &Value, config: &Config, who: &engine::Registrant) -> Result<(), String> {
        let spec = Spec::parse(kind, options)?;
        // Checked before the connection's existence, which is not told to whoever may not
        // use it (an unset `.users` refuses every non-admin alike).
        let conn = &spec.target.connection;
        if let (Some(user), false) = (who.user, who.admin) {
            if !config.connection_users(conn).allows(user) {
                return Err(format!("user '{user}' may not use connection '{conn}': only admins and the users in connection.{}.users may", conn.to_ascii_lowercase()));
            }
        }
        if config.connection(&spec.target.connection).is_none() {
            return Err(format!(
                "no connection '{}': set it first with RG.CONFIGSET connection.{} <url> (or the module argument connection.{} <url>)",
                spec.target.connection, spec.target.connection, spec.target.connection
            ));
        }
        Ok(())
    }

    fn sessions_changed(&self, engine: &Arc<Engine>) {
        self.sync(engine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::Registrant;

    fn options(connection: &str) -> Value {
        let target = Value::Map(vec![(Value::from("kind"), Value::from("postgres")), (Value::from("connection"), Value::from(connection)), (Value::from("table"), Value::from("t"))]);
        Value::Map(vec![(Value::from("name"), Value::from("a")), (Value::from("prefix"), Value::from("a:")), (Value::from("target"), target)])
    }

    #[test]
    fn a_connection_is_used_by_admins_and_the_users_listed() {
        let config = Config::default();
        config.set("connection.pg", "postgres://app:hunter2@127.0.0.1/db", false).unwrap();
        let recipes = Recipes::default();
        let check = |user: Option<&str>, admin: bool, conn: &str| recipes.check("writeBehind", &options(conn), &config, &Registrant { user, admin });
        let refused = "user 'lim' may not use connection 'pg': only admins and the users in connection.pg.users may";
        assert_eq!(check(Some("lim"), false, "pg"), Err(refused.to_string()));
        assert_eq!(check(Some("app"), false, "pg").unwrap_err(), refused.replace("'lim'", "'app'"));
        assert_eq!(check(Some("admin"), true, "pg"), Ok(()));
        assert_eq!(check(None, false, "pg"), Ok(()));
        // Whether a connection exists is not told to who may not use it.
        assert_eq!(check(Some("lim"), false, "nope").unwrap_err(), "user 'lim' may not use connection 'nope': only admins and the users in connection.nope.users may");
        assert!(check(Some("admin"), true, "nope").unwrap_err().starts_with("no connection 'nope'"));
        config.set("connection.pg.users", "app", false).unwrap();
        assert_eq!(check(Some("app"), false, "pg"), Ok(()));
        assert_eq!(check(Some("app"), false, "PG"), Ok(()));
        assert_eq!(check(Some("lim"), false, "pg"), Err(refused.to_string()));
        config.set("connection.pg.users", "*", false).unwrap();
        assert_eq!(check(Some("lim"), false, "pg"), Ok(()));
        config.set("connection.pg.users", "", false).unwrap();
        assert_eq!(check(Some("app"), false, "pg").unwrap_err(), refused.replace("'lim'", "'app'"));
    }

    fn postgres_password(url: &str) -> Option<Vec<u8>> {
        url.parse::<postgres::Config>().ok().and_then(|c| c.get_password().map(<[u8]>::to_vec))
    }
    fn mysql_password(url: &str) -> Option<String> {
        mysql::Opts::from_url(url).ok().and_then(|o| o.get_pass().map(str::to_string))
    }
    fn mongodb_password(url: &str) -> Option<String> {
        mongodb::options::ClientOptions::parse(url).run().ok().and_then(|o| o.credential?.password)
    }

    /// What `Config::validate` accepts, every driver reads with the same password; a raw
    /// character it refuses is one some driver misreads.
    #[test]
    fn the_drivers_read_the_passwords_that_config_accepts() {
        for (raw, encoded) in [("hun/ter2", "hun%2Fter2"), ("hun@ter2", "hun%40ter2"), ("hun:ter2", "hun%3Ater2"), ("hun%ter2", "hun%25ter2"), ("hun?ter2", "hun%3Fter2"), ("hun#ter2", "hun%23ter2"), ("a/b@c:d%e?f#g", "a%2Fb%40c%3Ad%25e%3Ff%23g")] {
            for scheme in ["postgres", "mysql", "mongodb"] {
                let url = format!("{scheme}://app:{encoded}@127.0.0.1:1234/db");
                assert!(Config::validate("connection.x", &url, false).is_ok(), "{url}");
            }
            assert_eq!(postgres_password(&format!("postgres://app:{encoded}@127.0.0.1:1234/db")).as_deref(), Some(raw.as_bytes()), "{encoded}");
            assert_eq!(mysql_password(&format!("mysql://app:{encoded}@127.0.0.1:1234/db")).as_deref(), Some(raw), "{encoded}");
            assert_eq!(mongodb_password(&format!("mongodb://app:{encoded}@127.0.0.1:1234/db")).as_deref(), Some(raw), "{encoded}");
        }
        // Refused raw: each is misread (or refused) by at least one driver.
        let raw = |p: &str, scheme: &str| format!("{scheme}://app:{p}@127.0.0.1:1234/db");
        for p in ["hun/ter2", "hun?ter2", "hun#ter2"] {
            assert!(Config::validate("connection.x", &raw(p, "postgres"), false).is_err(), "{p}");
            assert_ne!(mysql_password(&raw(p, "mysql")).as_deref(), Some(p), "{p}");
            assert_ne!(mongodb_password(&raw(p, "mongodb")).as_deref(), Some(p), "{p}");
        }
        assert!(Config::validate("connection.x", &raw("hun@ter2", "mysql"), false).is_err());
        assert_ne!(postgres_password(&raw("hun@ter2", "postgres")).as_deref(), Some(&b"hun@ter2"[..]));
        assert!(Config::validate("connection.x", &raw("hun%ter2", "postgres"), false).is_err());
        assert_eq!(mongodb_password(&raw("hun%ter2", "mongodb")), None);
        assert!(Config::validate("connection.x", &raw("hun:ter2", "mongodb"), false).is_err());
        assert_eq!(mongodb_password(&raw("hun:ter2", "mongodb")), None);
        // Accepted raw: a ':' is read alike by the PostgreSQL and MySQL drivers.
        assert!(Config::validate("connection.x", &raw("hun:ter2", "postgres"), false).is_ok());
        assert_eq!(postgres_password(&raw("hun:ter2", "postgres")).as_deref(), Some(&b"hun:ter2"[..]));
        assert_eq!(mysql_password(&raw("hun:ter2", "mysql")).as_deref(), Some("hun:ter2"));
    }
}
