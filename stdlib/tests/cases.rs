//! The shared case table (tests/common/cases.rs) run through the engine with the
//! in-memory host: the stdlib and both languages work, and agree, without Redis.

include!("../../tests/common/cases.rs");

use engine::{Config, Engine, ExecRequest, MemoryHost, Value};
use std::sync::Arc;
use std::time::Duration;

/// The canonical RESP2 text of a value (maps flat, doubles as strings), as Redis replies.
fn canon(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Bool(b) => if *b { "1".into() } else { "0".into() },
        Value::Int(i) => i.to_string(),
        Value::Double(d) => format!("\"{}\"", engine::format_double(*d)),
        Value::String(_) | Value::Bytes(_) => format!("{:?}", v.as_str_lossy().unwrap_or_default()),
        Value::Array(items) => format!("[{}]", items.iter().map(canon).collect::<Vec<_>>().join(", ")),
        Value::Map(entries) => format!("[{}]", entries.iter().flat_map(|(k, v)| [canon(k), canon(v)]).collect::<Vec<_>>().join(", ")),
        Value::Error(e) => format!("(error) {e}"),
        other => other.to_string(),
    }
}

fn sort_results(v: Value) -> Value {
    match v {
        Value::Array(mut parts) if parts.len() == 2 => {
            if let Value::Array(r) = &mut parts[0] {
                r.sort_by_key(canon);
            }
            Value::Array(parts)
        }
        other => other,
    }
}

fn engine_with_data() -> (Arc<Engine>, Arc<MemoryHost>) {
    let host = Arc::new(MemoryHost::new());
    let config = Arc::new(Config::default());
    let engine = Engine::new(host.clone(), config, vec![Arc::new(lang_lua::LuaLanguage), Arc::new(lang_js::Js)], Arc::new(stdlib::Stdlib::default()));
    (engine, host)
}

fn run(engine: &Arc<Engine>, lang: &str, code: &str, args: &[&str], unordered: bool) -> String {
    if let Err(e) = engine.check(lang, code) {
        return format!("(error) ERR {e}");
    }
    let exec = engine
        .submit(ExecRequest { language: lang.into(), source: code.into(), args: args.iter().map(|a| a.as_bytes().to_vec()).collect(), id: None, description: None, user: None, db: 0, upgrade: false, admin: false })
        .unwrap();
    assert!(exec.wait(Duration::from_secs(30)), "{code} did not finish");
    match engine::outcome_value(&exec.outcome().unwrap()) {
        Ok(Value::Nil) => "OK".into(),
        Ok(v) if unordered => canon(&sort_results(v)),
        Ok(v) => canon(&v),
        Err(e) => {
            let has_code = e.split(' ').next().is_some_and(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase()));
            if has_code { format!("(error) {e}") } else { format!("(error) ERR {e}") }
        }
    }
}

#[test]
fn every_case_in_both_languages_without_redis() {
    let (engine, host) = engine_with_data();
    let mut failures = Vec::new();
    for case in CASES {
        for (lang, code) in [("lua", case.lua), ("js", case.js)] {
            host.cmd(&["FLUSHALL"]).unwrap();
            for words in SETUP {
                host.cmd(words).unwrap();
            }
            let got = run(&engine, lang, code, case.args, case.unordered);
            if !matches(&got, case.expected) {
                failures.push(format!("{} [{lang}]\n  expected: {}\n  got:      {got}", case.name, case.expected));
            }
        }
    }
    engine.shutdown();
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn execute_is_checked_against_the_user() {
    let (engine, host) = engine_with_data();
    host.deny("app", "FLUSHALL");
    let exec = engine
        .submit(ExecRequest { language: "js".into(), source: "execute('FLUSHALL')".into(), args: vec![], id: None, description: None, user: Some("app".into()), db: 0, upgrade: false, admin: false })
        .unwrap();
    exec.wait(Duration::from_secs(10));
    let out = engine::outcome_value(&exec.outcome().unwrap()).unwrap_err();
    assert!(out.contains("NOPERM"), "{out}");
    engine.shutdown();
}
