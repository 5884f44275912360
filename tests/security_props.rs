//! Property (docs/security.md): for random ACL rules and random RG commands, Gears lets a user
//! run an RG command exactly when Redis would let that user run the command itself and the
//! core commands it stands for (`ACL DRYRUN`) and, for a command on an execution or a
//! session, the user owns it or is an admin (may run `CONFIG SET`): never more (the security
//! property), and never less (the checks refuse nothing Redis would allow). Listings show
//! another user's executions and sessions to admins only.
//!
//! One server for all cases. Each case gives the users every right, sets up what the
//! command acts on (an execution `px`, a session `ps` with a command trigger), owned by `p`
//! or by another user `q`, then gives p the random rules and sends the command as p.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// An RG command with valid arguments (`words`), the core commands Redis must allow for
/// Gears to allow it (`ACL DRYRUN p <core...>`), from the table in docs/security.md, and
/// what it does with `px` and `ps`.
struct Case {
    words: &'static [&'static str],
    core: &'static [&'static [&'static str]],
    owned: Owned,
}

#[derive(Clone, Copy, PartialEq)]
enum Owned {
    /// Acts on no execution or session of a user (or on the caller's own only).
    No,
    /// Acts on px or ps: their owner or an admin only.
    Acts,
    /// Lists executions or sessions: another user's only to an admin.
    Lists,
}
use Owned::*;

const EVAL: &[&str] = &["EVAL", "return 0", "0"];
const FUNCTION_LOAD: &[&str] = &["FUNCTION", "LOAD", "x"];
const FUNCTION_LIST: &[&str] = &["FUNCTION", "LIST"];
const FUNCTION_DELETE: &[&str] = &["FUNCTION", "DELETE", "x"];
/// An admin is a user allowed CONFIG SET.
const ADMIN: &[&str] = &["CONFIG", "SET", "x", "y"];

const CASES: &[Case] = &[
    Case { words: &["RG.EXEC", "lua", "return 1"], core: &[EVAL], owned: No },
    Case { words: &["RG.EXEC", "js", "1", "UNBLOCKING"], core: &[EVAL], owned: No },
    Case { words: &["RG.EXEC", "lua", "GB('CommandReader'):register({trigger = 'pt2'})", "ID", "pk"], core: &[EVAL, FUNCTION_LOAD], owned: No },
    // Keyspace and stream triggers: also read permission on the prefix (as EXISTS checks it).
    Case { words: &["RG.EXEC", "js", "GB().register({prefix: 'k:', mode: 'sync'})", "ID", "pk"], core: &[EVAL, FUNCTION_LOAD, &["EXISTS", "k:"]], owned: No },
    Case { words: &["RG.EXEC", "lua", "GB('StreamReader'):register({prefix = 's:'})", "ID", "pk"], core: &[EVAL, FUNCTION_LOAD, &["EXISTS", "s:"]], owned: No },
    // Hooks: also admin.
    Case { words: &["RG.EXEC", "js", "GB('CommandReader').map(a => callNext()).register({hook: 'strlen'})", "ID", "pk"], core: &[EVAL, FUNCTION_LOAD, ADMIN], owned: No },
    Case { words: &["RG.EXEC", "lua", "GB('CommandReader'):map(function() return 'v2' end):register({trigger = 'pt'})", "ID", "ps", "UPGRADE"], core: &[EVAL, FUNCTION_LOAD], owned: Acts },
    Case { words: &["RG.GETEXECUTION", "px"], core: &[EVAL], owned: Acts },
    Case { words: &["RG.DUMPEXECUTIONS"], core: &[EVAL], owned: Lists },
    Case { words: &["RG.GETRESULTS", "px"], core: &[EVAL], owned: Acts },
    Case { words: &["RG.GETRESULTSBLOCKING", "px"], core: &[EVAL], owned: Acts },
    Case { words: &["RG.DROPEXECUTION", "px"], core: &[EVAL], owned: Acts },
    Case { words: &["RG.ABORTEXECUTION", "px"], core: &[EVAL], owned: Acts },
    Case { words: &["RG.DUMPSESSIONS"], core: &[FUNCTION_LIST], owned: Lists },
    Case { words: &["RG.DUMPSESSIONS", "VERBOSE"], core: &[FUNCTION_LIST], owned: Lists },
    Case { words: &["RG.DUMPREGISTRATIONS"], core: &[FUNCTION_LIST], owned: Lists },
    Case { words: &["RG.DROPSESSION", "ps"], core: &[FUNCTION_DELETE], owned: Acts },
    Case { words: &["RG.UNREGISTER", "ps/0"], core: &[FUNCTION_DELETE], owned: Acts },
    Case { words: &["RG.PAUSEREGISTRATIONS", "ps/0"], core: &[FUNCTION_DELETE], owned: Acts },
    Case { words: &["RG.UNPAUSEREGISTRATIONS", "ps/0"], core: &[FUNCTION_DELETE], owned: Acts },
    Case { words: &["RG.CLEARREGISTRATIONSSTATS"], core: &[FUNCTION_DELETE], owned: No },
    Case { words: &["RG.TRIGGER", "pt", "a"], core: &[&["FCALL", "f", "0"]], owned: No },
    // Its key is checked like FCALL's (both have full-access key specs).
    Case { words: &["RG.TRIGGERONKEY", "pt", "k:1"], core: &[&["FCALL", "f", "1", "k:1"]], owned: No },
    Case { words: &["RG.CONFIGGET", "script-timeout"], core: &[&["CONFIG", "GET", "script-timeout"]], owned: No },
    Case { words: &["RG.CONFIGSET", "script-timeout", "5000"], core: &[&["CONFIG", "SET", "script-timeout", "5000"]], owned: No },
    Case { words: &["RG.PACKAGE", "LIST"], core: &[FUNCTION_LIST], owned: No },
    Case { words: &["RG.PACKAGE", "LOAD", "lua", "props-pkg", "return {}", "REPLACE"], core: &[ADMIN], owned: No },
    Case { words: &["RG.PACKAGE", "DELETE", "props-pkg"], core: &[ADMIN], owned: No },
];

/// Rules drawn from: categories, the core commands above and their neighbours, and the RG
/// commands themselves (on Redis 7.0 module commands are in no category: `+@all` or their
/// name lets them through).
const RULES: &[&str] = &[
    "+@all", "-@all", "+@scripting", "-@scripting", "+@write", "-@write", "+@read", "-@read", "+@admin", "-@admin", "+@dangerous", "-@dangerous", "+@slow",
    "-@slow", "+eval", "-eval", "+fcall", "-fcall", "+function", "-function", "+function|load", "-function|load", "+function|list", "-function|list",
    "+function|delete", "-function|delete", "+config", "-config", "+config|get", "-config|get", "+config|set", "-config|set", "+exists", "-exists",
];

/// Key patterns: the triggers' prefixes and RG.TRIGGERONKEY's key are under `k:` and `s:`.
const KEYS: &[&[&str]] = &[&["~*"], &["~k:*"], &["~s:*"], &["~k:*", "~s:*"], &["%R~*"], &["%W~*"], &["%R~k:*"], &[]];

fn dry_run(admin: &mut redis::Connection, words: &[&str]) -> bool {
    let mut q = vec!["ACL", "DRYRUN", "p"];
    q.extend_from_slice(words);
    fmt(&cmd(admin, &q)) == "OK"
}

/// Replies that refuse for lack of permission (Redis's or Gears'; the exact texts are
/// tests/security.rs's business).
fn refused(reply: &str) -> bool {
    reply.starts_with("(error)") && (reply.contains("NOPERM") || reply.contains("may not read keys starting with"))
}

/// Errors that are not refusals but the command's own answer to valid arguments.
fn expected_error(reply: &str) -> bool {
    reply.contains("has already finished") || reply.contains("is in use") || reply.contains("no package")
}

#[test]
fn gears_allows_an_rg_command_exactly_when_redis_allows_its_equivalent() {
    let s = Server::start(&[]);
    let mut admin = s.conn();
    let mut p = s.conn();
    let mut q = s.conn();
    for (name, c) in [("p", &mut p), ("q", &mut q)] {
        assert_eq!(fmt(&cmd(&mut admin, &["ACL", "SETUSER", name, "on", ">pw", "~*", "&*", "+@all"])), "OK");
        assert_eq!(fmt(&cmd(c, &["AUTH", name, "pw"])), "OK");
    }
    let strategy = (
        0..CASES.len(),
        prop_oneof![3 => Just(true), 1 => Just(false)],
        proptest::collection::vec(proptest::sample::select(RULES), 0..6),
        proptest::sample::select(KEYS),
        any::<bool>(),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
    // `run` takes a `Fn`: the connections and counters are borrowed inside.
    let conns = std::cell::RefCell::new((admin, p, q));
    let counts = std::cell::Cell::new((0, 0));
    let result = runner.run(&strategy, |(i, all, rules, keys, name_it, mine)| {
        let (admin, p, q) = &mut *conns.borrow_mut();
        let case = &CASES[i];
        // What the command acts on, owned by p or q: set up with every right.
        let full = fmt(&cmd(admin, &["ACL", "SETUSER", "p", "reset", "on", ">pw", "~*", "&*", "+@all"]));
        prop_assert_eq!(full, "OK");
        let owner = if mine { &mut *p } else { &mut *q };
        prop_assert_eq!(exec(owner, "lua", "return 1", &["ID", "px"]), "1");
        let trigger = "GB('CommandReader'):map(function(a) return #a end):register({trigger = 'pt'})";
        cmd(admin, &["RG.DROPSESSION", "ps"]);
        prop_assert_eq!(exec(owner, "lua", trigger, &["ID", "ps"]), "OK");
        // The random rules.
        let mut words: Vec<&str> = vec!["ACL", "SETUSER", "p", "reset", "on", ">pw"];
        words.extend_from_slice(keys);
        if all {
            words.push("+@all");
        }
        words.extend(rules.iter().copied());
        // Often name the RG command itself, so that the check inside it is what answers.
        let named = format!("+{}", case.words[0].to_ascii_lowercase());
        if name_it {
            words.push(&named);
        }
        prop_assert_eq!(fmt(&cmd(admin, &words)), "OK", "{:?}", words);
        let redis_allows = dry_run(admin, case.words) && case.core.iter().all(|c| dry_run(admin, c));
        let sees_all = mine || dry_run(admin, ADMIN);
        let gears_allows = redis_allows && (case.owned != Acts || sees_all);
        let reply = fmt(&cmd(p, case.words));
        // Clean up what the command may have made (as the admin, who may).
        cmd(admin, &["RG.DROPSESSION", "pk"]);
        cmd(admin, &["RG.PACKAGE", "DELETE", "props-pkg"]);
        if reply.starts_with("(error)") && !refused(&reply) && !expected_error(&reply) {
            return Err(TestCaseError::fail(format!("{:?} with rules {:?}: unexpected error {reply}", case.words, &words[6..])));
        }
        let (allowed, total) = counts.get();
        counts.set((allowed + usize::from(gears_allows), total + 1));
        let owner = if mine { "p" } else { "q" };
        prop_assert_eq!(
            !refused(&reply),
            gears_allows,
            "{:?} with rules {:?} on {}'s px/ps: Redis {} it and its equivalents {:?}; Gears replied {}",
            case.words,
            &words[6..],
            owner,
            if redis_allows { "allows" } else { "refuses" },
            case.core,
            reply
        );
        if case.owned == Lists && gears_allows {
            let id = if case.words[0] == "RG.DUMPEXECUTIONS" { "px" } else { "ps" };
            let shown = reply.contains(&format!("\"{id}\"")) || reply.contains(&format!("\"{id}/0\""));
            prop_assert_eq!(shown, sees_all, "{:?} with rules {:?} shows {}'s {}: {}", case.words, &words[6..], owner, id, reply);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (allowed, total) = counts.get();
    // The rules must not all refuse (or all allow): both sides of the property were tried.
    assert!(allowed > 0 && allowed < total, "{allowed} of {total} cases allowed");
}
