//! Sessions pin the packages they import: after `RG.PACKAGE LOAD ... REPLACE` a session's
//! instances (on any thread, after its definition is saved and loaded again) keep importing
//! the version the session imported when it was registered, until it is upgraded. Run
//! through the engine with the in-memory host, in both languages.

use engine::packages::source_hash;
use engine::{Config, Engine, ExecRequest, MemoryHost, Package, SessionDef, Value};
use std::sync::Arc;
use std::time::Duration;

struct Lang {
    name: &'static str,
    /// A package returning `<version>:<x>` from `f(x)`.
    lib: fn(&str) -> String,
    /// A session whose trigger `trigger` maps its argument through the package `lib`.
    session: &'static str,
    trigger: &'static str,
}

const LANGS: &[Lang] = &[
    Lang {
        name: "lua",
        lib: |v| format!("return {{ f = function(x) return '{v}:' .. x end }}"),
        session: "local lib = require('lib') GB('CommandReader'):map(function(a) return lib.f(a[2]) end):register({trigger = 't-lua'})",
        trigger: "t-lua",
    },
    Lang {
        name: "js",
        lib: |v| format!("export const f = x => '{v}:' + x;"),
        session: "import { f } from 'lib';\nGB('CommandReader').map(a => f(a[1])).register({trigger: 't-js'});",
        trigger: "t-js",
    },
];

fn engine() -> (Arc<Engine>, Arc<MemoryHost>) {
    let host = Arc::new(MemoryHost::new());
    let engine = Engine::new(host.clone(), Arc::new(Config::default()), vec![Arc::new(lang_lua::LuaLanguage), Arc::new(lang_js::Js)], Arc::new(stdlib::Stdlib::default()));
    (engine, host)
}

fn exec(engine: &Arc<Engine>, lang: &str, source: &str, id: Option<&str>, upgrade: bool) -> Result<Value, String> {
    let req = ExecRequest { language: lang.into(), source: source.into(), args: vec![], id: id.map(Into::into), description: None, user: None, db: 0, upgrade, admin: true };
    let exec = engine.submit(req).map_err(|e| e.to_string())?;
    assert!(exec.wait(Duration::from_secs(30)), "{source} did not finish");
    engine::outcome_value(&exec.outcome().unwrap())
}

fn load(engine: &Engine, lang: &str, name: &str, source: &str) {
    engine.packages.load(Package::new(lang, name, source.into(), Some("admin".into())), true).unwrap();
}

/// Fires the session's trigger with `x`, on this thread or on a thread of its own (which
/// builds its own instance of the session).
fn fire(engine: &Arc<Engine>, host: &Arc<MemoryHost>, trigger: &str, x: &str, fresh_thread: bool) -> Result<Vec<Value>, String> {
    let (session, reg) = engine.sessions.command_trigger(trigger).expect("the trigger is registered");
    let record = Value::Array(vec![Value::str(trigger), Value::str(x)]);
    let go = {
        let (engine, host) = (engine.clone(), host.clone());
        move || {
            let out = engine.fire(host, &session, &reg, vec![record]).map_err(|e| e.message)?;
            if out.errors.is_empty() { Ok(out.results) } else { Err(out.errors.join("; ")) }
        }
    };
    if fresh_thread { std::thread::spawn(go).join().unwrap() } else { go() }
}

fn hashes(engine: &Engine, id: &str) -> Vec<String> {
    engine.sessions.get(id).unwrap().imports.iter().filter(|p| !p.builtin).map(|p| p.hash().to_string()).collect()
}

#[test]
fn a_session_keeps_the_packages_it_imported_until_it_is_upgraded() {
    for l in LANGS {
        let (engine, host) = engine();
        let (v1, v2) = ((l.lib)("v1"), (l.lib)("v2"));
        let id = format!("s-{}", l.name);
        load(&engine, l.name, "lib", &v1);
        exec(&engine, l.name, l.session, Some(&id), false).unwrap();
        assert_eq!(hashes(&engine, &id), vec![source_hash(&v1)], "{}", l.name);
        let def = SessionDef::of(&engine.sessions.get(&id).unwrap());
        assert_eq!(def.packages.as_ref().map(|p| p.iter().map(|p| p.source.clone()).collect::<Vec<_>>()), Some(vec![v1.clone()]));

        load(&engine, l.name, "lib", &v2);
        let v1x = Ok(vec![Value::str("v1:x")]);
        assert_eq!(fire(&engine, &host, l.trigger, "x", false), v1x, "{}: first instance on this thread", l.name);
        assert_eq!(fire(&engine, &host, l.trigger, "x", true), v1x, "{}: an instance on a new thread", l.name);
        // New runs import the current version.
        let now = if l.name == "lua" { "return require('lib').f('y')" } else { "import { f } from 'lib';\nGB('ShardsIDReader').map(() => f('y')).run();" };
        let got = exec(&engine, l.name, now, None, false).unwrap();
        assert!(format!("{got:?}").contains("v2:y"), "{}: {got:?}", l.name);

        // Saved and loaded again (RDB, AOF, a replica): still the pinned version.
        let saved = SessionDef::decode(&def.encode()).unwrap();
        engine.load_session(&saved);
        assert!(engine.sessions.get(&id).unwrap().unbuilt.is_none());
        assert_eq!(hashes(&engine, &id), vec![source_hash(&v1)]);
        assert_eq!(fire(&engine, &host, l.trigger, "x", true), v1x, "{}: after a load", l.name);
        // DELETE stays refused while it is pinned.
        assert!(engine.packages.delete(None, "lib", &engine.sessions.importers(None, "lib")).is_err());

        // UPGRADE imports the current version.
        exec(&engine, l.name, l.session, Some(&id), true).unwrap();
        assert_eq!(hashes(&engine, &id), vec![source_hash(&v2)]);
        assert_eq!(fire(&engine, &host, l.trigger, "x", false), Ok(vec![Value::str("v2:x")]), "{}: after UPGRADE", l.name);
        engine.shutdown();
    }
}

/// A definition saved before sessions pinned packages (no `packages`) imports the packages
/// loaded when it is loaded, and pins them from then on.
#[test]
fn a_definition_without_pinned_packages_pins_what_is_loaded_now() {
    for l in LANGS {
        let (engine, host) = engine();
        let id = format!("old-{}", l.name);
        load(&engine, l.name, "lib", &(l.lib)("v1"));
        exec(&engine, l.name, l.session, Some(&id), false).unwrap();
        let old = SessionDef { packages: None, ..SessionDef::of(&engine.sessions.get(&id).unwrap()) };
        load(&engine, l.name, "lib", &(l.lib)("v2"));
        engine.load_session(&SessionDef::decode(&old.encode()).unwrap());
        assert_eq!(hashes(&engine, &id), vec![source_hash(&(l.lib)("v2"))]);
        load(&engine, l.name, "lib", &(l.lib)("v3"));
        assert_eq!(fire(&engine, &host, l.trigger, "x", true), Ok(vec![Value::str("v2:x")]), "{}", l.name);
        assert_eq!(SessionDef::of(&engine.sessions.get(&id).unwrap()).packages.unwrap()[0].source, (l.lib)("v2"));
        engine.shutdown();
    }
}

/// A package first imported by a callback (after registration) is not pinned: the instance
/// refuses it and says how to fix that; built-in packages are always there.
#[test]
fn an_import_the_session_did_not_pin_is_refused() {
    let (engine, host) = engine();
    load(&engine, "lua", "late", "return { f = function(x) return 'late:' .. x end }");
    let source = "GB('CommandReader'):map(function(a) return require(a[2]).encode ~= nil or require(a[2]).f(a[2]) end):register({trigger = 'lazy'})";
    exec(&engine, "lua", source, Some("lazy"), false).unwrap();
    assert_eq!(fire(&engine, &host, "lazy", "gears/json", false), Ok(vec![Value::Bool(true)]));
    assert_eq!(
        fire(&engine, &host, "lazy", "late", false).unwrap_err(),
        "script:1: package 'late' is not among the packages session 'lazy' imported when it was registered: upgrade the session (RG.EXEC ... ID lazy UPGRADE) to import it"
    );
    engine.shutdown();
}
