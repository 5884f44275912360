// The shared table of script cases: each runs in Lua and in JavaScript and must give the
// same reply. Used against real Redis (tests/steps.rs) and against the in-memory host
// (stdlib/tests/cases.rs), so it is `include!`d rather than a module.

/// Data every case starts from.
pub const SETUP: &[&[&str]] = &[
    &["HSET", "user:1", "name", "alice", "age", "31", "city", "paris"],
    &["HSET", "user:2", "name", "bob", "age", "25", "city", "paris"],
    &["HSET", "user:3", "name", "carol", "age", "40", "city", "rome"],
    &["SET", "counter", "10"],
    &["RPUSH", "list:1", "a", "b", "c"],
    &["SADD", "set:1", "y", "x"],
    &["ZADD", "z:1", "2", "two", "1", "one"],
    &["XADD", "s:1", "1-1", "f", "v"],
    &["XADD", "s:1", "2-1", "f", "w"],
];

pub struct Case {
    pub name: &'static str,
    pub lua: &'static str,
    pub js: &'static str,
    /// Canonical RESP2 reply (see `matches`).
    pub expected: &'static str,
    /// Sort the results of `[results, errors]` before comparing.
    pub unordered: bool,
    /// Script arguments (`ARGS`).
    pub args: &'static [&'static str],
}

const fn case(name: &'static str, lua: &'static str, js: &'static str, expected: &'static str) -> Case {
    Case { name, lua, js, expected, unordered: false, args: &[] }
}
const fn unordered(name: &'static str, lua: &'static str, js: &'static str, expected: &'static str) -> Case {
    Case { name, lua, js, expected, unordered: true, args: &[] }
}

pub const CASES: &[Case] = &[
    // readers
    unordered("keys_reader_map", "GB('KeysReader'):map(function(r) return r.key end):run('user:*')",
        "GB('KeysReader').map(r => r.key).run('user:*')",
        r#"[["user:1", "user:2", "user:3"], []]"#),
    case("keys_reader_default_is_keys_reader", "GB():map(function(r) return r.value.name end):run('user:1')",
        "GB().map(r => r.value.name).run('user:1')",
        r#"[["alice"], []]"#),
    case("keys_only_reader", "GB('KeysOnlyReader'):map(function(r) return {r.key, r.type, r.value == nil} end):run('user:1')",
        "GB('KeysOnlyReader').map(r => [r.key, r.type, r.value === undefined]).run('user:1')",
        r#"[[["user:1", "hash", 1]], []]"#),
    case("string_value", "GB():map(function(r) return {r.type, r.value} end):run('counter')",
        "GB().map(r => [r.type, r.value]).run('counter')",
        r#"[[["string", "10"]], []]"#),
    case("list_value", "GB():map(function(r) return r.value end):run('list:1')",
        "GB().map(r => r.value).run('list:1')",
        r#"[[["a", "b", "c"]], []]"#),
    case("set_value", "GB():map(function(r) return r.value end):run('set:1')",
        "GB().map(r => r.value).run('set:1')",
        r#"[[["x", "y"]], []]"#),
    case("zset_value", "GB():map(function(r) return r.value end):run('z:1')",
        "GB().map(r => r.value).run('z:1')",
        r#"[[[["one", 1], ["two", 2]]], []]"#),
    case("stream_value", "GB():map(function(r) return r.value end):run('s:1')",
        "GB().map(r => r.value).run('s:1')",
        r#"[[[["1-1", ["f", "v"]], ["2-1", ["f", "w"]]]], []]"#),
    case("stream_reader", "GB('StreamReader'):map(function(r) return r.id .. '=' .. r.value.f end):run('s:1')",
        "GB('StreamReader').map(r => r.id + '=' + r.value.f).run('s:1')",
        r#"[["1-1=v", "2-1=w"], []]"#),
    case("stream_reader_from_id", "GB('StreamReader'):map(function(r) return r.id end):run('s:1', '2-0')",
        "GB('StreamReader').map(r => r.id).run('s:1', '2-0')",
        r#"[["2-1"], []]"#),
    case("shards_id_reader", "GB('ShardsIDReader'):map(function(id) return #id end):run()",
        "GB('ShardsIDReader').map(id => id.length).run()",
        r#"[[40], []]"#),
    case("no_match_gives_nothing", "GB():map(function(r) return r.key end):run('nothing:*')",
        "GB().map(r => r.key).run('nothing:*')",
        r#"[[], []]"#),
    // primitive steps
    unordered("filter", "GB():filter(function(r) return tonumber(r.value.age) > 30 end):map(function(r) return r.key end):run('user:*')",
        "GB().filter(r => Number(r.value.age) > 30).map(r => r.key).run('user:*')",
        r#"[["user:1", "user:3"], []]"#),
    unordered("flatmap", "GB():flatmap(function(r) return {r.value.name, r.value.city} end):run('user:*')",
        "GB().flatmap(r => [r.value.name, r.value.city]).run('user:*')",
        r#"[["alice", "bob", "carol", "paris", "paris", "rome"], []]"#),
    unordered("foreach", "GB():foreach(function(r) execute('INCR', 'seen') end):map(function(r) return r.key end):run('user:*')",
        "GB().foreach(r => { execute('INCR', 'seen') }).map(r => r.key).run('user:*')",
        r#"[["user:1", "user:2", "user:3"], []]"#),
    case("accumulate", "GB():accumulate(function(a, r) return (a or 0) + tonumber(r.value.age) end):run('user:*')",
        "GB().accumulate((a, r) => (a || 0) + Number(r.value.age)).run('user:*')",
        r#"[[96], []]"#),
    unordered("local_group_by", "GB():localGroupBy(function(r) return r.value.city end, function(k, a, r) return (a or 0) + 1 end):run('user:*')",
        "GB().localGroupBy(r => r.value.city, (k, a, r) => (a || 0) + 1).run('user:*')",
        r#"[[["key", "paris", "value", 2], ["key", "rome", "value", 1]], []]"#),
    case("limit", "GB():map(function(r) return r.key end):sort():limit(2):run('user:*')",
        "GB().map(r => r.key).sort().limit(2).run('user:*')",
        r#"[["user:1", "user:2"], []]"#),
    case("limit_offset", "GB():map(function(r) return r.key end):sort():limit(1, 1):run('user:*')",
        "GB().map(r => r.key).sort().limit(1, 1).run('user:*')",
        r#"[["user:2"], []]"#),
    case("limit_stops_reading_early", "GB():limit(2):count():run('*')", "GB().limit(2).count().run('*')", r#"[[2], []]"#),
    unordered("collect", "GB():map(function(r) return r.key end):collect():run('user:*')",
        "GB().map(r => r.key).collect().run('user:*')",
        r#"[["user:1", "user:2", "user:3"], []]"#),
    unordered("repartition", "GB():repartition(function(r) return r.key end):map(function(r) return r.key end):run('user:*')",
        "GB().repartition(r => r.key).map(r => r.key).run('user:*')",
        r#"[["user:1", "user:2", "user:3"], []]"#),
    // composite steps
    case("aggregate", "GB():aggregate(0, function(a, r) return a + tonumber(r.value.age) end, function(a, r) return a + r end):run('user:*')",
        "GB().aggregate(0, (a, r) => a + Number(r.value.age), (a, r) => a + r).run('user:*')",
        r#"[[96], []]"#),
    unordered("aggregate_by", "GB():aggregateBy(function(r) return r.value.city end, 0, function(k, a, r) return a + tonumber(r.value.age) end, function(k, a, r) return a + r end):run('user:*')",
        "GB().aggregateBy(r => r.value.city, 0, (k, a, r) => a + Number(r.value.age), (k, a, r) => a + r).run('user:*')",
        r#"[[["key", "paris", "value", 56], ["key", "rome", "value", 40]], []]"#),
    unordered("group_by", "GB():groupBy(function(r) return r.value.city end, function(k, a, r) return (a or 0) + 1 end):run('user:*')",
        "GB().groupBy(r => r.value.city, (k, a, r) => (a || 0) + 1).run('user:*')",
        r#"[[["key", "paris", "value", 2], ["key", "rome", "value", 1]], []]"#),
    unordered("batch_group_by", "GB():batchGroupBy(function(r) return r.value.city end, function(k, rs) return #rs end):run('user:*')",
        "GB().batchGroupBy(r => r.value.city, (k, rs) => rs.length).run('user:*')",
        r#"[[["key", "paris", "value", 2], ["key", "rome", "value", 1]], []]"#),
    case("count", "GB():count():run('user:*')", "GB().count().run('user:*')", r#"[[3], []]"#),
    case("count_empty", "GB():count():run('nothing:*')", "GB().count().run('nothing:*')", r#"[[0], []]"#),
    unordered("count_by", "GB():countBy(function(r) return r.value.city end):run('user:*')",
        "GB().countBy(r => r.value.city).run('user:*')",
        r#"[[["key", "paris", "value", 2], ["key", "rome", "value", 1]], []]"#),
    unordered("distinct", "GB():map(function(r) return r.value.city end):distinct():run('user:*')",
        "GB().map(r => r.value.city).distinct().run('user:*')",
        r#"[["paris", "rome"], []]"#),
    case("avg", "GB():avg(function(r) return tonumber(r.value.age) end):run('user:*')",
        "GB().avg(r => Number(r.value.age)).run('user:*')",
        r#"[["32"], []]"#),
    case("sort", "GB():map(function(r) return tonumber(r.value.age) end):sort():run('user:*')",
        "GB().map(r => Number(r.value.age)).sort().run('user:*')",
        r#"[[25, 31, 40], []]"#),
    case("sort_reverse", "GB():map(function(r) return tonumber(r.value.age) end):sort(true):run('user:*')",
        "GB().map(r => Number(r.value.age)).sort(true).run('user:*')",
        r#"[[40, 31, 25], []]"#),
    // globals
    case("execute", "return execute('HGET', 'user:1', 'name')", "execute('HGET', 'user:1', 'name')", r#""alice""#),
    case("execute_error_is_script_error", "return execute('INCR', 'user:1')", "execute('INCR', 'user:1')", "~WRONGTYPE Operation against a key holding the wrong kind of value"),
    case("atomic", "atomic(function() execute('SET', 'a1', '1'); execute('INCR', 'a1') end) return execute('GET', 'a1')",
        "atomic(() => { execute('SET', 'a1', '1'); execute('INCR', 'a1'); }); execute('GET', 'a1')",
        r#""2""#),
    case("log", "log('hello from a test', 'warning')", "log('hello from a test', 'warning')", "OK"),
    case("config_get", "return configGet('keys-batch-size')", "configGet('keys-batch-size')", r#""500""#),
    case("hashtag", "return hashtag()", "hashtag()", r#""06S""#),
    case("shard_id", "return #shardId()", "shardId().length", "40"),
    Case { name: "args", lua: "return ARGS[1] .. ARGS[2]", js: "ARGS[0] + ARGS[1]", expected: r#""xy""#, unordered: false, args: &["x", "y"] },
    // per-record errors: the record is dropped, the run goes on
    unordered("record_error", "GB():map(function(r) if r.key == 'user:2' then error('bad record') end return r.key end):run('user:*')",
        "GB().map(r => { if (r.key === 'user:2') throw new Error('bad record'); return r.key; }).run('user:*')",
        r#"[["user:1", "user:3"], [..."#),
    // a reducer that fails on a record: the record's error is reported and the accumulator
    // stays what it was before that record (the steps pass records by reference, so the
    // failed call must not have consumed it)
    unordered("reducer_error_keeps_accumulator", "GB():aggregate(0, function(a, r) if r.key == 'user:2' then error('bad age') end return a + tonumber(r.value.age) end, function(a, r) return a + r end):run('user:*')",
        "GB().aggregate(0, (a, r) => { if (r.key === 'user:2') throw new Error('bad age'); return a + Number(r.value.age); }, (a, r) => a + r).run('user:*')",
        r#"[[71], [..."#),
    unordered("group_reducer_error_keeps_accumulator", "GB():aggregateBy(function(r) return r.value.city end, 0, function(k, a, r) if r.key == 'user:1' then error('bad') end return a + tonumber(r.value.age) end, function(k, a, r) return a + r end):run('user:*')",
        "GB().aggregateBy(r => r.value.city, 0, (k, a, r) => { if (r.key === 'user:1') throw new Error('bad'); return a + Number(r.value.age); }, (k, a, r) => a + r).run('user:*')",
        r#"[[["key", "paris", "value", 25], ["key", "rome", "value", 40]], [..."#),
    // steps see the whole record, and the group's key comes first to a group reducer
    unordered("filter_and_foreach_see_the_record", "GB():foreach(function(r) assert(r.value.name) end):filter(function(r) return r.value.city == 'paris' end):groupBy(function(r) return r.value.city end, function(k, a, r) return (a or 0) + #r.value.name + (k == 'paris' and 100 or 0) end):run('user:*')",
        "GB().foreach(r => { if (!r.value.name) throw new Error('no name'); }).filter(r => r.value.city === 'paris').groupBy(r => r.value.city, (k, a, r) => (a || 0) + r.value.name.length + (k === 'paris' ? 100 : 0)).run('user:*')",
        r#"[[["key", "paris", "value", 208]], []]"#),
    // bad input
    case("unknown_reader", "GB('Foo')", "GB('Foo')", "(error) ERR GB: unknown reader 'Foo'; expected one of KeysReader, KeysOnlyReader, StreamReader, ShardsIDReader..."),
    case("step_needs_function", "GB():map(1)", "GB().map(1)", "(error) ERR map: argument 1 must be a function, got integer..."),
    case("bad_run_mode", "GB():run('*', {mode = 'bad'})", "GB().run('*', {mode: 'bad'})", "(error) ERR run: mode must be 'async' or 'async_local', got 'bad'..."),
    case("bad_limit", "GB():limit(-1)", "GB().limit(-1)", "(error) ERR limit: argument 1 must be a non-negative integer, got integer..."),
    case("unknown_run_option", "GB():run('*', {bogus = 1})", "GB().run('*', {bogus: 1})", "(error) ERR run: unknown option 'bogus'; known options: mode..."),
    case("second_run", "GB():count():run('user:*') GB():count():run('user:*')", "GB().count().run('user:*'); GB().count().run('user:*')", "(error) ERR run: this script already called run()..."),
    case("execute_needs_command", "execute()", "execute()", "(error) ERR execute: expected a command..."),
    case("execute_bad_arg", "execute('GET', {})", "execute('GET', [])", "(error) ERR execute: argument 2 must be a string or a number, got array..."),
    case("log_bad_level", "log('x', 'loud')", "log('x', 'loud')", "(error) ERR log: unknown level 'loud'..."),
];

/// Does a canonical reply match an expectation? `...` at the end: starts with;
/// `~` at the start: contains; otherwise equal.
pub fn matches(got: &str, expected: &str) -> bool {
    if let Some(part) = expected.strip_prefix('~') {
        return got.contains(part);
    }
    match expected.strip_suffix("...") {
        Some(prefix) => got.starts_with(prefix),
        None => got == expected,
    }
}
