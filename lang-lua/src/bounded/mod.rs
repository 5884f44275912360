//! Bounded versions of the Lua library functions that can loop in C for as long as they
//! like, out of reach of the instruction hook that enforces the time limit and the abort
//! flag: `string.rep`, `find`, `match`, `gmatch`, `gsub` (here, in Rust) and `table.concat`,
//! `insert`, `remove`, `move`, `sort` (in `wrappers.lua`, as Lua code the hook sees).
//!
//! Scripts see the same functions as in Lua 5.4: same results, same error messages (with the
//! caller's position). The Rust functions are never called by scripts directly: each is
//! wrapped by a small Lua function (`wrappers.lua`) that turns an error *message* returned
//! by Rust into a Lua string error raised at the caller's level, as Lua's own library does.
//! Callbacks (`gsub` with a function or table) are called from that Lua wrapper, not from
//! Rust, so their errors pass through untouched and no Rust frame is held while they run.
//!
//! Every loop here counts its steps and checks the instance's clock, abort flag and memory
//! limit every few thousand of them (`stop`): the error then is the same fatal error the
//! instruction hook raises, which `pcall` cannot swallow.

mod pattern;

use crate::ctx::Ctx;
use engine::ScriptError;
use mlua::{AnyUserData, Function, Lua, MultiValue, LuaString, UserData, Value as LuaValue};
use pattern::{Capture, Fail, Matcher};

const WRAPPERS: &str = include_str!("wrappers.lua");

/// Largest string `string.rep` builds (Lua's MAXSIZE for 64-bit builds).
const MAX_STRING: u64 = i32::MAX as u64;
/// Bytes copied between two checks of the clock.
const COPY_CHUNK: usize = 1 << 16;

/// Replaces the unbounded library functions in the state's pristine globals. Runs before
/// the sandbox prelude, so the wrappers capture the original `error`, `pcall`, ...
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    let core = lua.create_table()?;
    core.raw_set("find", lua.create_function(|lua, a: MultiValue| respond(lua, str_find(lua, a, true)))?)?;
    core.raw_set("match", lua.create_function(|lua, a: MultiValue| respond(lua, str_find(lua, a, false)))?)?;
    core.raw_set("gmatch", lua.create_function(|lua, a: MultiValue| respond(lua, gmatch(lua, a)))?)?;
    core.raw_set("gmatch_next", lua.create_function(|lua, ud: AnyUserData| respond(lua, gmatch_next(lua, ud)))?)?;
    core.raw_set("gsub", lua.create_function(gsub)?)?;
    core.raw_set("gsub_next", lua.create_function(gsub_next)?)?;
    core.raw_set("gsub_put", lua.create_function(gsub_put)?)?;
    core.raw_set("rep", lua.create_function(|lua, a: MultiValue| respond(lua, rep(lua, a)))?)?;
    core.raw_set("checktab", lua.create_function(checktab)?)?;
    core.raw_set("out_of_memory", lua.create_function(out_of_memory)?)?;
    core.raw_set("tramp", lua.create_function(|lua, f: Function| c_frame(lua, f))?)?;
    lua.load(WRAPPERS).set_name("=sandbox").call::<()>((lua.globals(), core))
}

/// Why a bounded function did not return normally.
enum Raise {
    /// An error Lua's library raises with `luaL_error` (the message, without position).
    Msg(String),
    /// A fatal error (time, abort, memory) or an mlua failure: raised as is.
    Fatal(mlua::Error),
}

impl From<mlua::Error> for Raise {
    fn from(e: mlua::Error) -> Self {
        Raise::Fatal(e)
    }
}

impl From<Fail<mlua::Error>> for Raise {
    fn from(f: Fail<mlua::Error>) -> Self {
        match f {
            Fail::Pattern(m) => Raise::Msg(m),
            Fail::Stop(e) => Raise::Fatal(e),
        }
    }
}

type Res<T> = Result<T, Raise>;

/// The protocol with the Lua wrappers: `true, results...` or `false, message`.
fn respond(lua: &Lua, r: Res<Vec<LuaValue>>) -> mlua::Result<MultiValue> {
    match r {
        Ok(vals) => Ok(std::iter::once(LuaValue::Boolean(true)).chain(vals).collect()),
        Err(Raise::Msg(m)) => {
            Ok(MultiValue::from_iter([LuaValue::Boolean(false), LuaValue::String(lua.create_string(m)?)]))
        }
        Err(Raise::Fatal(e)) => Err(e),
    }
}

/// Err when the running code must stop: deadline passed, run aborted, or the instance's
/// memory (plus `extra` bytes held outside Lua) over its limit.
fn stop(lua: &Lua, ctx: &Ctx, extra: usize) -> mlua::Result<()> {
    let fatal = match ctx.watch.check() {
        Err(e) => e,
        Ok(()) => {
            let limit = ctx.memory_limit.get();
            if limit == 0 || lua.used_memory().saturating_add(extra) <= limit {
                return Ok(());
            }
            let e = ScriptError::memory(limit);
            ctx.watch.set_fatal(&e);
            e
        }
    };
    crate::instance::hook_every_instruction(lua);
    Err(mlua::Error::external(fatal))
}

// ----- the C frame -----

/// Calls its upvalue with all its arguments and returns all its results.
///
/// Every replaced library function is one of these around its Lua implementation: like the
/// C function it replaces, it keeps its caller's frame even when tail-called, so an error
/// raised at "the caller's level" (level 3 from the implementation) carries the caller's
/// position, and `bad argument` messages name the function as the caller called it.
unsafe extern "C-unwind" fn trampoline(state: *mut mlua::ffi::lua_State) -> std::ffi::c_int {
    use mlua::ffi;
    // No Rust value with a destructor lives in this frame: an error raised by the callee
    // unwinds (longjmp) through it as through any C function of Lua's library.
    let n = ffi::lua_gettop(state);
    ffi::luaL_checkstack(state, 1, std::ptr::null());
    ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
    ffi::lua_insert(state, 1);
    ffi::lua_call(state, n, ffi::LUA_MULTRET);
    ffi::lua_gettop(state)
}

/// `f` behind a C frame (see `trampoline`).
fn c_frame(lua: &Lua, f: Function) -> mlua::Result<Function> {
    // SAFETY: `exec_raw` runs the closure in protected mode with `f` alone above the stack
    // start; `lua_pushcclosure` pops it into the new closure's upvalue and pushes the
    // closure, the single result `exec_raw` reads.
    unsafe { lua.exec_raw(f, |state| mlua::ffi::lua_pushcclosure(state, trampoline, 1)) }
}

// ----- arguments, as luaL_check* reads them -----

/// The name `type()` gives a value (what Lua's argument errors say it got).
fn type_name(v: &LuaValue) -> &'static str {
    match v {
        LuaValue::Nil => "nil",
        LuaValue::Boolean(_) => "boolean",
        LuaValue::Integer(_) | LuaValue::Number(_) => "number",
        LuaValue::String(_) => "string",
        LuaValue::Table(_) => "table",
        LuaValue::Function(_) => "function",
        LuaValue::Thread(_) => "thread",
        LuaValue::LightUserData(_) => "light userdata",
        _ => "userdata",
    }
}

/// `bad argument #i to 'name' (msg)`, naming the function as the caller called it, like
/// luaL_argerror. Level 1 is the Lua implementation, level 2 its C frame (`trampoline`).
fn arg_error(lua: &Lua, fname: &str, mut i: usize, msg: &str) -> Raise {
    let (name, method) = lua
        .inspect_stack(2, |d| {
            let n = d.names();
            (n.name.map(|s| s.to_string()), n.name_what == Some("method"))
        })
        .unwrap_or((None, false));
    if method {
        i -= 1;
        if i == 0 {
            let name = name.unwrap_or_else(|| "?".into());
            return Raise::Msg(format!("calling '{name}' on bad self ({msg})"));
        }
    }
    let name = name.unwrap_or_else(|| format!("string.{fname}"));
    Raise::Msg(format!("bad argument #{i} to '{name}' ({msg})"))
}

fn type_error(lua: &Lua, fname: &str, args: &[LuaValue], i: usize, expected: &str) -> Raise {
    let got = args.get(i - 1).map(type_name).unwrap_or("no value");
    arg_error(lua, fname, i, &format!("{expected} expected, got {got}"))
}

fn check_str(lua: &Lua, fname: &str, args: &[LuaValue], i: usize) -> Res<LuaString> {
    match args.get(i - 1) {
        Some(LuaValue::String(s)) => Ok(s.clone()),
        Some(v @ (LuaValue::Integer(_) | LuaValue::Number(_))) => {
            Ok(lua.coerce_string(v.clone())?.ok_or_else(|| type_error(lua, fname, args, i, "string"))?)
        }
        _ => Err(type_error(lua, fname, args, i, "string")),
    }
}

fn opt_str(lua: &Lua, fname: &str, args: &[LuaValue], i: usize) -> Res<Option<LuaString>> {
    match args.get(i - 1) {
        None | Some(LuaValue::Nil) => Ok(None),
        _ => check_str(lua, fname, args, i).map(Some),
    }
}

fn check_int(lua: &Lua, fname: &str, args: &[LuaValue], i: usize) -> Res<i64> {
    let v = args.get(i - 1).cloned().unwrap_or(LuaValue::Nil);
    if let LuaValue::Integer(n) = v {
        return Ok(n);
    }
    if matches!(v, LuaValue::Number(_) | LuaValue::String(_)) {
        if let Some(n) = lua.coerce_integer(v.clone())? {
            return Ok(n);
        }
        if lua.coerce_number(v)?.is_some() {
            return Err(arg_error(lua, fname, i, "number has no integer representation"));
        }
    }
    Err(type_error(lua, fname, args, i, "number"))
}

fn opt_int(lua: &Lua, fname: &str, args: &[LuaValue], i: usize, default: i64) -> Res<i64> {
    match args.get(i - 1) {
        None | Some(LuaValue::Nil) => Ok(default),
        _ => check_int(lua, fname, args, i),
    }
}

/// A 1-based start position (negative counts from the end) as a 1-based index >= 1.
fn start_position(pos: i64, len: usize) -> u64 {
    if pos > 0 {
        pos as u64
    } else if pos == 0 || pos.unsigned_abs() > len as u64 {
        1
    } else {
        (len as i64 + pos + 1) as u64
    }
}

fn captures_to_lua(lua: &Lua, src: &[u8], caps: Vec<Capture>, out: &mut Vec<LuaValue>) -> mlua::Result<()> {
    for c in caps {
        out.push(match c {
            Capture::Text(a, b) => LuaValue::String(lua.create_string(&src[a..b])?),
            Capture::Position(p) => LuaValue::Integer(p as i64),
        });
    }
    Ok(())
}

fn split_anchor(p: &[u8]) -> (bool, &[u8]) {
    match p.first() {
        Some(b'^') => (true, &p[1..]),
        _ => (false, p),
    }
}

// ----- find, match -----

fn str_find(lua: &Lua, args: MultiValue, find: bool) -> Res<Vec<LuaValue>> {
    let fname = if find { "find" } else { "match" };
    let args: Vec<LuaValue> = args.into_iter().collect();
    let s = check_str(lua, fname, &args, 1)?;
    let p = check_str(lua, fname, &args, 2)?;
    let (src, pat) = (s.as_bytes(), p.as_bytes());
    let init = start_position(opt_int(lua, fname, &args, 3, 1)?, src.len()) - 1;
    if init > src.len() as u64 {
        return Ok(vec![LuaValue::Nil]);
    }
    let init = init as usize;
    let plain = args.get(3).is_some_and(|v| !matches!(v, LuaValue::Nil | LuaValue::Boolean(false)));
    if find && (plain || pattern::is_plain(&pat)) {
        // Linear time (two-way search), unlike a naive search: no need to count steps.
        return Ok(match memchr::memmem::find(&src[init..], &pat) {
            Some(i) => vec![LuaValue::Integer((init + i + 1) as i64), LuaValue::Integer((init + i + pat.len()) as i64)],
            None => vec![LuaValue::Nil],
        });
    }
    let ctx = Ctx::get(lua)?;
    let mut tick = || stop(lua, &ctx, 0);
    let (anchor, pat) = split_anchor(&pat);
    let mut m = Matcher::new(&src, pat, &mut tick);
    let mut start = init;
    loop {
        if let Some(e) = m.match_at(start)? {
            let mut out = Vec::new();
            if find {
                out.push(LuaValue::Integer(start as i64 + 1));
                out.push(LuaValue::Integer(e as i64));
                captures_to_lua(lua, &src, m.captures(None).map_err(Raise::Msg)?, &mut out)?;
            } else {
                captures_to_lua(lua, &src, m.captures(Some((start, e))).map_err(Raise::Msg)?, &mut out)?;
            }
            return Ok(out);
        }
        if anchor || start >= src.len() {
            return Ok(vec![LuaValue::Nil]);
        }
        start += 1;
    }
}

// ----- gmatch -----

struct GmatchState {
    s: LuaString,
    p: LuaString,
    /// Where the next search starts.
    pos: usize,
    last_match: Option<usize>,
}

impl UserData for GmatchState {}

fn gmatch(lua: &Lua, args: MultiValue) -> Res<Vec<LuaValue>> {
    let args: Vec<LuaValue> = args.into_iter().collect();
    let s = check_str(lua, "gmatch", &args, 1)?;
    let p = check_str(lua, "gmatch", &args, 2)?;
    let len = s.as_bytes().len();
    let init = start_position(opt_int(lua, "gmatch", &args, 3, 1)?, len) - 1;
    let pos = init.min(len as u64 + 1) as usize;
    let ud = lua.create_userdata(GmatchState { s, p, pos, last_match: None })?;
    Ok(vec![LuaValue::UserData(ud)])
}

fn gmatch_next(lua: &Lua, ud: AnyUserData) -> Res<Vec<LuaValue>> {
    let mut gm = ud.borrow_mut::<GmatchState>()?;
    let (s, p) = (gm.s.clone(), gm.p.clone());
    let (src, pat) = (s.as_bytes(), p.as_bytes());
    let ctx = Ctx::get(lua)?;
    let mut tick = || stop(lua, &ctx, 0);
    // In gmatch a leading '^' is an ordinary character (it would stop the iteration).
    let mut m = Matcher::new(&src, &pat, &mut tick);
    let mut start = gm.pos;
    while start <= src.len() {
        if let Some(e) = m.match_at(start)? {
            if Some(e) != gm.last_match {
                gm.pos = e;
                gm.last_match = Some(e);
                let mut out = Vec::new();
                captures_to_lua(lua, &src, m.captures(Some((start, e))).map_err(Raise::Msg)?, &mut out)?;
                return Ok(out);
            }
        }
        start += 1;
    }
    gm.pos = start;
    Ok(Vec::new())
}

// ----- gsub -----

/// A `gsub` whose replacement is a function or a table: the Lua wrapper asks for each
/// match (`gsub_next`), computes the replacement, and hands it back (`gsub_put`).
struct GsubState {
    s: LuaString,
    p: LuaString,
    anchor: bool,
    pos: usize,
    last_match: Option<usize>,
    count: i64,
    max: i64,
    done: bool,
    out: Vec<u8>,
    /// The match waiting for its replacement.
    pending: Option<(usize, usize)>,
    /// Bytes appended since the memory was last checked.
    unchecked: usize,
}

impl UserData for GsubState {}

impl GsubState {
    /// The next match, copying the text it skips; None at the end.
    fn next_match(&mut self, m: &mut Matcher<'_, mlua::Error>, src: &[u8]) -> Res<Option<(usize, usize)>> {
        while !self.done && self.count < self.max {
            match m.match_at(self.pos)? {
                Some(e) if Some(e) != self.last_match => {
                    self.count += 1;
                    return Ok(Some((self.pos, e)));
                }
                _ if self.pos < src.len() => {
                    self.out.push(src[self.pos]);
                    self.pos += 1;
                }
                _ => break,
            }
            if self.anchor {
                break;
            }
        }
        self.done = true;
        Ok(None)
    }

    fn matched(&mut self, e: usize) {
        self.pos = e;
        self.last_match = Some(e);
        if self.anchor {
            self.done = true;
        }
    }

    /// Counts appended bytes; checks the memory limit now and then.
    fn grew(&mut self, lua: &Lua, ctx: &Ctx, n: usize) -> mlua::Result<()> {
        self.unchecked += n;
        if self.unchecked >= COPY_CHUNK {
            self.unchecked = 0;
            stop(lua, ctx, self.out.capacity())?;
        }
        Ok(())
    }

    fn finish(&mut self, lua: &Lua, src: &[u8]) -> mlua::Result<Vec<LuaValue>> {
        self.out.extend_from_slice(&src[self.pos.min(src.len())..]);
        let result = lua.create_string(&self.out)?;
        self.out = Vec::new();
        Ok(vec![LuaValue::String(result), LuaValue::Integer(self.count)])
    }
}

/// The replacement string's `%0`..`%9` and `%%`, appended to `out`.
fn add_string(out: &mut Vec<u8>, m: &Matcher<'_, mlua::Error>, src: &[u8], repl: &[u8], s: usize, e: usize) -> Result<(), String> {
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'%', &repl[i..]) {
        out.extend_from_slice(&repl[i..i + off]);
        let j = i + off + 1;
        match repl.get(j).copied().unwrap_or(0) {
            b'%' => out.push(b'%'),
            b'0' => out.extend_from_slice(&src[s..e]),
            d @ b'1'..=b'9' => match m.capture((d - b'1') as usize, s, e)? {
                Capture::Text(a, b) => out.extend_from_slice(&src[a..b]),
                Capture::Position(p) => out.extend_from_slice(p.to_string().as_bytes()),
            },
            _ => return Err("invalid use of '%' in replacement string".into()),
        }
        i = j + 1;
    }
    out.extend_from_slice(&repl[i..]);
    Ok(())
}

/// `gsub(s, p, repl [, n])`. Returns `0, result, count` when done (string replacement),
/// `1, state, repl` when the wrapper must call a function or index a table, `-1, message`.
fn gsub(lua: &Lua, args: MultiValue) -> mlua::Result<MultiValue> {
    let code = |c: i64, rest: Vec<LuaValue>| std::iter::once(LuaValue::Integer(c)).chain(rest).collect();
    match gsub_start(lua, args) {
        Ok((c, rest)) => Ok(code(c, rest)),
        Err(Raise::Msg(m)) => Ok(code(-1, vec![LuaValue::String(lua.create_string(m)?)])),
        Err(Raise::Fatal(e)) => Err(e),
    }
}

fn gsub_start(lua: &Lua, args: MultiValue) -> Res<(i64, Vec<LuaValue>)> {
    let args: Vec<LuaValue> = args.into_iter().collect();
    let s = check_str(lua, "gsub", &args, 1)?;
    let p = check_str(lua, "gsub", &args, 2)?;
    let len = s.as_bytes().len();
    let repl = args.get(2).cloned().unwrap_or(LuaValue::Nil);
    let max = opt_int(lua, "gsub", &args, 4, len as i64 + 1)?;
    let anchor = p.as_bytes().first() == Some(&b'^');
    let mut st = GsubState {
        s: s.clone(),
        p: p.clone(),
        anchor,
        pos: 0,
        last_match: None,
        count: 0,
        max,
        done: false,
        out: Vec::new(),
        pending: None,
        unchecked: 0,
    };
    let repl_text = match &repl {
        LuaValue::String(_) | LuaValue::Integer(_) | LuaValue::Number(_) => lua.coerce_string(repl.clone())?,
        LuaValue::Function(_) | LuaValue::Table(_) => {
            let ud = lua.create_userdata(st)?;
            return Ok((1, vec![LuaValue::UserData(ud), repl]));
        }
        _ => return Err(type_error(lua, "gsub", &args, 3, "string/function/table")),
    };
    let Some(repl_text) = repl_text else {
        return Err(type_error(lua, "gsub", &args, 3, "string/function/table"));
    };
    let (src, pat, repl) = (s.as_bytes(), p.as_bytes(), repl_text.as_bytes());
    let ctx = Ctx::get(lua)?;
    let mut tick = || stop(lua, &ctx, 0);
    let mut m = Matcher::new(&src, split_anchor(&pat).1, &mut tick);
    while let Some((ms, me)) = st.next_match(&mut m, &src)? {
        let before = st.out.len();
        add_string(&mut st.out, &m, &src, &repl, ms, me).map_err(Raise::Msg)?;
        m.spend((repl.len() / 64) as u32)?;
        st.grew(lua, &ctx, st.out.len() - before)?;
        st.matched(me);
    }
    Ok((0, st.finish(lua, &src)?))
}

/// The next match of a callback `gsub`: `1, captures...`, or `0, result, count` at the end,
/// or `-1, message`.
fn gsub_next(lua: &Lua, ud: AnyUserData) -> mlua::Result<MultiValue> {
    let mut st = ud.borrow_mut::<GsubState>()?;
    let (s, p) = (st.s.clone(), st.p.clone());
    let (src, pat) = (s.as_bytes(), p.as_bytes());
    let ctx = Ctx::get(lua)?;
    let mut tick = || stop(lua, &ctx, 0);
    let mut m = Matcher::new(&src, split_anchor(&pat).1, &mut tick);
    let r: Res<(i64, Vec<LuaValue>)> = (|| match st.next_match(&mut m, &src)? {
        Some((ms, me)) => {
            st.pending = Some((ms, me));
            let mut out = Vec::new();
            captures_to_lua(lua, &src, m.captures(Some((ms, me))).map_err(Raise::Msg)?, &mut out)?;
            Ok((1, out))
        }
        None => Ok((0, st.finish(lua, &src)?)),
    })();
    match r {
        Ok((c, rest)) => Ok(std::iter::once(LuaValue::Integer(c)).chain(rest).collect()),
        Err(Raise::Msg(msg)) => Ok(MultiValue::from_iter([LuaValue::Integer(-1), LuaValue::String(lua.create_string(msg)?)])),
        Err(Raise::Fatal(e)) => Err(e),
    }
}

/// The replacement of the pending match: nil/false keeps the match, a string or number
/// replaces it; anything else is an error (the message is returned).
fn gsub_put(lua: &Lua, (ud, v): (AnyUserData, LuaValue)) -> mlua::Result<Option<String>> {
    let mut st = ud.borrow_mut::<GsubState>()?;
    let Some((ms, me)) = st.pending.take() else {
        return Err(mlua::Error::runtime("internal error: gsub_put without a match"));
    };
    let s = st.s.clone();
    let src = s.as_bytes();
    let before = st.out.len();
    match v {
        LuaValue::Nil | LuaValue::Boolean(false) => st.out.extend_from_slice(&src[ms..me]),
        LuaValue::String(_) | LuaValue::Integer(_) | LuaValue::Number(_) => {
            if let Some(text) = lua.coerce_string(v)? {
                st.out.extend_from_slice(&text.as_bytes());
            }
        }
        other => return Ok(Some(format!("invalid replacement value (a {})", lua_typename(&other)))),
    }
    let ctx = Ctx::get(lua)?;
    let grown = st.out.len() - before;
    st.grew(lua, &ctx, grown)?;
    st.matched(me);
    Ok(None)
}

/// luaL_typename: the basic type name (light userdata is "userdata" here).
fn lua_typename(v: &LuaValue) -> &'static str {
    match type_name(v) {
        "light userdata" => "userdata",
        n => n,
    }
}

// ----- rep -----

fn rep(lua: &Lua, args: MultiValue) -> Res<Vec<LuaValue>> {
    let args: Vec<LuaValue> = args.into_iter().collect();
    let s = check_str(lua, "rep", &args, 1)?;
    let n = check_int(lua, "rep", &args, 2)?;
    let sep = opt_str(lua, "rep", &args, 3)?;
    let s = s.as_bytes();
    let sep_bytes = sep.as_ref().map(|x| x.as_bytes());
    let sep: &[u8] = sep_bytes.as_deref().unwrap_or(b"");
    if n <= 0 || (s.is_empty() && sep.is_empty()) {
        return Ok(vec![LuaValue::String(lua.create_string("")?)]);
    }
    let n = n as u64;
    let total = n as u128 * s.len() as u128 + (n - 1) as u128 * sep.len() as u128;
    let ctx = Ctx::get(lua)?;
    let limit = ctx.memory_limit.get();
    if limit > 0 && total > limit.saturating_sub(lua.used_memory()) as u128 {
        // Fails before allocating anything: the result could never fit.
        let e = ScriptError::memory(limit);
        ctx.watch.set_fatal(&e);
        crate::instance::hook_every_instruction(lua);
        return Err(Raise::Fatal(mlua::Error::external(e)));
    }
    if (s.len() + sep.len()) as u64 > MAX_STRING / n {
        return Err(Raise::Msg("resulting string too large".into()));
    }
    let total = total as usize;
    // One copy of `s` and `sep`, then the result doubles by copying its own prefix (it is
    // periodic), a bounded chunk at a time so the clock is checked in between.
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&s);
    out.extend_from_slice(sep);
    out.truncate(total);
    while out.len() < total {
        let k = out.len().min(total - out.len()).min(COPY_CHUNK * 16);
        out.extend_from_within(..k);
        stop(lua, &ctx, out.capacity())?;
    }
    Ok(vec![LuaValue::String(lua.create_string(&out)?)])
}

// ----- tables -----

/// `checktab(v, what)` of ltablib: true if `v` is a table or has a metatable with the
/// metamethods `what` asks for (1 = `__index`, 2 = `__newindex`, 4 = `__len`). The Lua side
/// cannot tell: `getmetatable` honours `__metatable`.
fn checktab(lua: &Lua, (v, what): (LuaValue, i64)) -> mlua::Result<bool> {
    if let LuaValue::Table(_) = v {
        return Ok(true);
    }
    // SAFETY: `exec_raw` runs the closure in protected mode with `v` alone on top of the
    // stack (index -1). `lua_getmetatable` pushes a metatable only when it returns non-zero;
    // each `lua_rawget` replaces the pushed key with its value, popped at once. We leave
    // exactly one boolean above the stack start, which `exec_raw` reads as the result.
    unsafe {
        lua.exec_raw(v, |state| {
            use mlua::ffi;
            let mut ok = false;
            if ffi::lua_getmetatable(state, -1) != 0 {
                ok = true;
                for (bit, name) in [(1, c"__index"), (2, c"__newindex"), (4, c"__len")] {
                    if what & bit != 0 {
                        ffi::lua_pushstring(state, name.as_ptr());
                        let t = ffi::lua_rawget(state, -2);
                        ffi::lua_pop(state, 1);
                        ok &= t != ffi::LUA_TNIL;
                    }
                }
                ffi::lua_pop(state, 1);
            }
            ffi::lua_pop(state, 1);
            ffi::lua_pushboolean(state, ok as i32);
        })
    }
}

/// Raises the memory-limit error (for a "not enough memory" the wrappers caught).
fn out_of_memory(lua: &Lua, _: ()) -> mlua::Result<()> {
    let ctx = Ctx::get(lua)?;
    let e = ScriptError::memory(ctx.memory_limit.get());
    ctx.watch.set_fatal(&e);
    crate::instance::hook_every_instruction(lua);
    Err(mlua::Error::external(e))
}
