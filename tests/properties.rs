//! Property: for random keyspaces, `KeysReader + countBy` in Lua and in JavaScript
//! equals the count a client makes with SCAN + HGET.

mod common;

use common::{cmd, Server};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn client_count(c: &mut redis::Connection, pattern: &str) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(100).query(c).unwrap();
        for k in keys {
            let group: Option<String> = redis::cmd("HGET").arg(&k).arg("g").query(c).unwrap();
            *counts.entry(group.unwrap_or_else(|| "none".into())).or_insert(0) += 1;
        }
        cursor = next;
        if cursor == 0 {
            return counts;
        }
    }
}

fn gears_count(c: &mut redis::Connection, lang: &str, pattern: &str) -> BTreeMap<String, i64> {
    let code = match lang {
        "lua" => format!("GB('KeysReader'):countBy(function(r) return r.value.g or 'none' end):run('{pattern}')"),
        _ => format!("GB('KeysReader').countBy(r => r.value.g ?? 'none').run('{pattern}')"),
    };
    let (results, errors): (Vec<Vec<redis::Value>>, Vec<String>) = redis::cmd("RG.EXEC").arg(lang).arg(code).query(c).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    results.into_iter().map(|r| (redis::from_redis_value(&r[1]).unwrap(), redis::from_redis_value(&r[3]).unwrap())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn count_by_equals_a_client_side_count(
        keys in proptest::collection::btree_map("[a-c]{1,2}:[0-9]{1,4}", proptest::option::of("[xyz]{1,2}"), 0..400),
        batch in 1usize..50,
        prefix in "[a-c]",
    ) {
        thread_local!(static SERVER: Server = Server::start(&[]));
        SERVER.with(|s| {
            let mut c = s.conn();
            cmd(&mut c, &["FLUSHALL"]);
            cmd(&mut c, &["RG.CONFIGSET", "keys-batch-size", &batch.to_string()]);
            for (k, g) in &keys {
                match g {
                    Some(g) => { cmd(&mut c, &["HSET", k, "g", g, "other", "1"]); }
                    None => { cmd(&mut c, &["HSET", k, "other", "1"]); }
                }
            }
            let pattern = format!("{prefix}*");
            let expected = client_count(&mut c, &pattern);
            prop_assert_eq!(gears_count(&mut c, "lua", &pattern), expected.clone());
            prop_assert_eq!(gears_count(&mut c, "js", &pattern), expected);
            Ok(())
        })?;
    }
}
