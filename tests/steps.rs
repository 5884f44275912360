//! Every step, reader and global, in Lua and in JavaScript, from one table of cases,
//! against a real redis-server with the module.

mod common;
include!("common/cases.rs");

use common::{canon, cmd, exec, Server};

#[test]
fn every_case_in_both_languages() {
    let server = Server::start(&[]);
    let mut c = server.conn();
    let mut failures = Vec::new();
    for case in CASES {
        for (lang, code) in [("lua", case.lua), ("js", case.js)] {
            cmd(&mut c, &["FLUSHALL"]);
            for words in SETUP {
                cmd(&mut c, words);
            }
            let mut extra = Vec::new();
            if !case.args.is_empty() {
                extra.push("ARGS");
                extra.extend_from_slice(case.args);
            }
            let mut got = exec(&mut c, lang, code, &extra);
            if case.unordered {
                got = canon::sort_results(&got);
            }
            if !matches(&got, case.expected) {
                failures.push(format!("{} [{lang}]\n  script:   {code}\n  expected: {}\n  got:      {got}", case.name, case.expected));
            }
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn foreach_side_effects_happen_once_per_record() {
    let server = Server::start(&[]);
    let mut c = server.conn();
    for (lang, code) in [
        ("lua", "GB():foreach(function(r) execute('INCR', 'seen') end):run('user:*')"),
        ("js", "GB().foreach(r => { execute('INCR', 'seen') }).run('user:*')"),
    ] {
        cmd(&mut c, &["FLUSHALL"]);
        for words in SETUP {
            cmd(&mut c, words);
        }
        exec(&mut c, lang, code, &[]);
        assert_eq!(canon::fmt(&cmd(&mut c, &["GET", "seen"])), r#""3""#, "{lang}");
    }
}

#[test]
fn per_record_errors_are_listed_with_their_message() {
    let server = Server::start(&[]);
    let mut c = server.conn();
    for words in SETUP {
        cmd(&mut c, words);
    }
    for (lang, code) in [
        ("lua", "GB():map(function(r) if r.key == 'user:2' then error('bad record') end return r.key end):run('user:*')"),
        ("js", "GB().map(r => { if (r.key === 'user:2') throw new Error('bad record'); return r.key; }).run('user:*')"),
    ] {
        let got = exec(&mut c, lang, code, &[]);
        let parts = canon::split_top(&got).unwrap();
        let errors = canon::split_top(&parts[1]).unwrap();
        assert_eq!(errors.len(), 1, "{lang}: {got}");
        assert!(errors[0].contains("bad record"), "{lang}: {got}");
    }
}

#[test]
fn globals_do_not_leak_between_runs() {
    let server = Server::start(&[]);
    let mut c = server.conn();
    for (lang, set, get) in [("lua", "leaked = 42 return leaked", "return tostring(leaked)"), ("js", "var leaked = 42; leaked", "typeof leaked")] {
        assert_eq!(exec(&mut c, lang, set, &[]), "42", "{lang}");
        // Several runs so every worker has run the first script's instance at least once.
        for _ in 0..4 {
            let got = exec(&mut c, lang, get, &[]);
            assert!(got == r#""nil""# || got == r#""undefined""#, "{lang}: {got}");
        }
    }
}
