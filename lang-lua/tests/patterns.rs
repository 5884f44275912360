//! The bounded string and table functions against Lua 5.4's own (an unsandboxed mlua
//! state is the oracle): same results, same error messages, same positions.
mod common;

use common::*;
use engine::Value;

/// Serializes each case's `pcall` results into one line, in both states.
const HARNESS: &str = r#"
local function ser(...)
  local out = {}
  for i = 1, select('#', ...) do
    local v = select(i, ...)
    local tv = type(v)
    if tv == 'string' then out[#out + 1] = string.format('%q', v)
    elseif tv == 'table' then
      local parts = {}
      for k = 1, #v do parts[#parts + 1] = string.format('%q', tostring(v[k])) end
      out[#out + 1] = '{' .. table.concat(parts, ',') .. '}'
    else out[#out + 1] = tostring(v) end
  end
  return table.concat(out, ' ')
end
local function gm(s, p, init)
  local r = {}
  for a, b in string.gmatch(s, p, init) do r[#r + 1] = tostring(a) .. '|' .. tostring(b) end
  return r
end
local results = {}
local function case(f) results[#results + 1] = ser(pcall(f)) end
"#;

/// Expressions evaluated in both states.
const CASES: &[&str] = &[
    // find: plain and patterns, init
    "string.find('hello world', 'o w')",
    "string.find('hello world', 'o', 6)",
    "string.find('hello', 'l', -2)",
    "string.find('hello', 'l', -100)",
    "string.find('hello', '', 10)",
    "string.find('hello', '', 6)",
    "string.find('a.b', '.', 1, true)",
    "string.find('a+b', '+', 1, true)",
    "string.find('abc', '[b-c]+')",
    "string.find('abc', '(b)(c)')",
    "string.find('abc', '()b()')",
    "string.find('abc', '^b')",
    "string.find('abc', '^a')",
    "string.find('abc', 'c$')",
    "string.find('abc$', 'c$', 1)",
    "string.find('a$c', '$c')",
    "string.find('', '')",
    "string.find('', 'a*')",
    "string.find(12345, 34)",
    "string.find('x', 'x', 1.0)",
    "string.find('x', 'x', '1')",
    // match: classes, sets, quantifiers, captures
    "string.match('  key = value  ', '^%s*(%w+)%s*=%s*(%w+)%s*$')",
    "string.match('2024-01-15', '(%d+)-(%d+)-(%d+)')",
    "string.match('hello', '.-l')",
    "string.match('hello', '.*l')",
    "string.match('hello', 'l+')",
    "string.match('hello', 'x?h')",
    "string.match('aaa', 'a-$')",
    "string.match('Hello World', '%u%l+')",
    "string.match('x=1, y=2', '(%a)=(%d)')",
    "string.match('[[nested]]', '%b[]')",
    "string.match('f(a(b)c)d', '%b()')",
    "string.match('THE (quick) fox', '%f[%a]%a+', 5)",
    "string.match('hello world', '%f[%w]%w+$')",
    "string.match('abcabc', '(abc)%1')",
    "string.match('abab', '(a)(b)%1%2')",
    "string.match('a]b', '[]]')",
    "string.match('a^b', '[%^]')",
    "string.match('a-b', '[a%-]+')",
    "string.match('a-b', '[-a]+')",
    "string.match('xyz', '[^x]+')",
    "string.match('\\0a\\0', '%z')",
    "string.match('a\\0b', '[\\0]')",
    "string.match('tab\\there', '%c')",
    "string.match('#$%', '%p+')",
    "string.match('0x1F', '%x+', 3)",
    "string.match('ABC', '%U')",
    "string.match('abc', '%S+')",
    "string.match('a.b', '%.')",
    "string.match('hello', '()ll()')",
    "string.match('hello', '(h)(e)(l)(l)(o)')",
    "string.match('abc', '((a)(b))')",
    "string.match('\\200\\201', '[\\200-\\210]+')",
    "string.match('é', '%a')",
    "string.match('key', '^(k)')",
    "string.match('abc', 'b', -1)",
    // errors
    "string.match('abc', '[a')",
    "string.match('abc', '[a%')",
    "string.match('abc', '%')",
    "string.match('abc', '(')",
    "string.match('abc', ')')",
    "string.match('abc', '%1')",
    "string.match('abc', '(a)%2')",
    "string.match('abc', '%b')",
    "string.match('abc', '%f')",
    "string.match('abc', '%fa')",
    "string.match('abc', string.rep('(', 33))",
    "string.match('abc', string.rep('a?', 300))",
    "string.find()",
    "string.find('x')",
    "string.find('x', {})",
    "string.find('x', 'x', 'y')",
    "string.find('x', 'x', 1.5)",
    "('x'):find({})",
    "('x'):rep()",
    "string.rep()",
    "string.gsub('x', 'x')",
    "string.gsub('x', 'x', true)",
    // gmatch
    "gm('hello world from lua', '%a+')",
    "gm('k1=v1, k2=v2', '(%w+)=(%w+)')",
    "gm('abc', '')",
    "gm('abc', '()')",
    "gm('aaa', 'a*')",
    "gm('hello', 'l', 4)",
    "gm('hello', 'l', -1)",
    "gm('hello', 'l', 100)",
    "gm('^a^a', '^a')",
    "gm('abc', '%')",
    // gsub
    "string.gsub('hello world', 'o', '0')",
    "string.gsub('hello world', 'o', '0', 1)",
    "string.gsub('hello world', '(%w+)', '<%1>')",
    "string.gsub('hello world', '%w+', '%0 %0')",
    "string.gsub('hello', '', '-')",
    "string.gsub('abc', '%w', '%%')",
    "string.gsub('abc', '()', '%1')",
    "string.gsub('abc', 'b', '%2')",
    "string.gsub('abc', 'b', '%')",
    "string.gsub('abc', 'b', '%x')",
    "string.gsub('abc', '^a', 'X')",
    "string.gsub('aaa', '^a', 'X')",
    "string.gsub('abc', 'c$', 'X')",
    "string.gsub('abc', '.', {a = 1, b = true})",
    "string.gsub('abc', '.', {a = {}})",
    "string.gsub('abc', '%w', function(c) return c:upper() .. '.' end)",
    "string.gsub('abc', '%w', function(c) if c == 'b' then return false end return 7 end)",
    "string.gsub('abc', '(%w)', function() return {} end)",
    "string.gsub('a,b,,c', ',', ';', 2)",
    "string.gsub('abc', 'x*', '-')",
    "string.gsub('hello world', '(o)', '[%1]', 0)",
    "string.gsub('hello', 'l', 'L', -1)",
    "string.gsub(123, 2, 9)",
    "string.gsub('abc', '.', function(c) error('boom ' .. c) end)",
    "string.gsub('abc', '.', function(c) error({c}) end)",
    // rep
    "string.rep('ab', 3)",
    "string.rep('ab', 3, ',')",
    "string.rep('ab', 0)",
    "string.rep('ab', -1)",
    "string.rep('', 5, '')",
    "string.rep('x', 1, 'sep')",
    "string.rep('', 3, 'x')",
    "string.rep('x', 2.0)",
    "string.rep('x', 2.5)",
    "string.rep('x', 2^40)",
    // tables
    "table.concat({1, 2, 3}, ', ')",
    "table.concat({1, 2, 3}, ', ', 2)",
    "table.concat({1, 2, 3}, ', ', 2, 3)",
    "table.concat({1, 2, 3}, ', ', 3, 2)",
    "table.concat({1, {}, 3})",
    "table.concat({1, 2}, 1)",
    "table.concat({1, 2}, {})",
    "table.concat({}, ',', 1, 2^40)",
    "table.concat()",
    "table.concat('x')",
    "table.concat(setmetatable({}, {__index = function(_, i) return 'v' .. i end, __len = function() return 3 end}), '-')",
    "table.concat(setmetatable({}, {__index = function(_, i) return i < 3 and i or nil end}), '-', 1, 5)",
    "(function() local t = {1, 2, 3} table.insert(t, 4) table.insert(t, 1, 0) return t end)()",
    "(function() local t = {1, 2, 3} table.insert(t, 5, 0) return t end)()",
    "(function() local t = {1, 2, 3} table.insert(t, 1, 2, 3) return t end)()",
    "(function() local t = {1, 2, 3} table.insert(t, 'x', 2) return t end)()",
    "(function() local t = {1, 2, 3} return table.remove(t), t end)()",
    "(function() local t = {1, 2, 3} return table.remove(t, 1), t end)()",
    "(function() local t = {1, 2, 3} return table.remove(t, 7), t end)()",
    "(function() local t = {} return table.remove(t), table.remove(t, 0), t end)()",
    "(function() local t = setmetatable({1, 2, 3}, {}) table.insert(t, 2, 'x') return table.remove(t, 1), t end)()",
    "table.move({1, 2, 3}, 1, 3, 2)",
    "table.move({1, 2, 3}, 2, 3, 1)",
    "table.move({1, 2, 3}, 1, 3, 1, {})",
    "table.move({1, 2, 3}, 1, 0, 1)",
    "table.move({1, 2, 3}, 1, 3, math.maxinteger)",
    "table.move({1, 2, 3}, -1, math.maxinteger, 1)",
    "table.move({1, 2, 3}, 1, 3)",
    "table.move(1, 1, 3, 1)",
    "(function() local t = {} for i = 1, 3000 do t[i] = i end table.move(t, 1, 2999, 2) return {t[1], t[2], t[1500], t[3000]} end)()",
    "(function() local t = {} for i = 1, 3000 do t[i] = i end table.move(t, 2, 3000, 1) return {t[1], t[2], t[2999], t[3000]} end)()",
    "(function() local t = {5, 2, 8, 1} table.sort(t) return t end)()",
    "(function() local t = {5, 2, 8, 1} table.sort(t, function(a, b) return a > b end) return t end)()",
    "(function() local t = {5, {}, 8} table.sort(t) return t end)()",
    "(function() local t = {5, 2, 8} table.sort(t, 3) return t end)()",
    "(function() local t = {} for i = 1, 60000 do t[i] = (i * 7919) % 60000 end table.sort(t) return {t[1], t[2], t[60000]} end)()",
    "(function() local t = {} for i = 1, 60000 do t[i] = i end t[30000] = {} table.sort(t) return t end)()",
    "(function() local t = {} for i = 1, 200 do t[i] = i % 3 end table.sort(t, function(a, b) return true end) return t end)()",
];

fn script() -> String {
    let mut src = HARNESS.to_string();
    for (i, c) in CASES.iter().enumerate() {
        // one case per line: error positions name the line
        let _ = i;
        src.push_str(&format!("case(function() return {c} end)\n"));
    }
    src.push_str("return results\n");
    src
}

fn oracle(src: &str) -> Vec<String> {
    let lua = mlua::Lua::new();
    let results: mlua::Table = lua.load(src).set_name("=script").eval().expect("oracle runs");
    results.sequence_values::<mlua::LuaString>().map(|v| v.unwrap().to_string_lossy()).collect()
}

fn ours(src: &str) -> Vec<String> {
    let mut inst = instance();
    match run(&mut inst, src).expect("sandbox runs") {
        Value::Array(items) => items.into_iter().map(|v| v.as_str_lossy().unwrap()).collect(),
        other => panic!("{other:?}"),
    }
}

fn compare(src: &str, labels: &[String]) {
    let (want, got) = (oracle(src), ours(src));
    assert_eq!(want.len(), got.len());
    let mut bad = Vec::new();
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        if w != g {
            bad.push(format!("{}\n   lua:  {w:?}\n   ours: {g:?}", labels[i]));
        }
    }
    assert!(bad.is_empty(), "{} of {} cases differ:\n{}", bad.len(), want.len(), bad.join("\n"));
}

#[test]
fn same_results_as_lua() {
    let labels: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    compare(&script(), &labels);
}

/// Random subjects and patterns from a small alphabet of pattern pieces.
#[test]
fn random_patterns_match_like_lua() {
    const PIECES: &[&str] = &[
        "a", "b", ".", "%a", "%d", "%s", "%W", "[ab]", "[^a]", "[a-c]", "*", "+", "-", "?", "(", ")",
        "()", "%1", "%b()", "%f[%a]", "^", "$", "%", "[", "]", "%%", "x", "1", " ",
    ];
    const SUBJECT: &[u8] = b"ab1 (x)a";
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let lit = |b: &[u8]| b.iter().map(|c| format!("\\{c:03}")).collect::<String>();
    let mut src = HARNESS.to_string();
    let mut labels = Vec::new();
    for _ in 0..1500 {
        let mut pat = Vec::new();
        for _ in 0..(next() % 6 + 1) {
            pat.extend_from_slice(PIECES[(next() % PIECES.len() as u64) as usize].as_bytes());
        }
        let mut subj = Vec::new();
        for _ in 0..(next() % 12) {
            subj.push(SUBJECT[(next() % SUBJECT.len() as u64) as usize]);
        }
        let (s, p) = (lit(&subj), lit(&pat));
        let f = match next() % 4 {
            0 => format!("string.find('{s}', '{p}')"),
            1 => format!("string.match('{s}', '{p}')"),
            2 => format!("gm('{s}', '{p}')"),
            _ => format!("string.gsub('{s}', '{p}', '<%0>')"),
        };
        src.push_str(&format!("case(function() return {f} end)\n"));
        labels.push(format!("{f}   -- pattern {:?} subject {:?}", String::from_utf8_lossy(&pat), String::from_utf8_lossy(&subj)));
    }
    src.push_str("return results\n");
    compare(&src, &labels);
}
