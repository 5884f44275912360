//! `engine::Value` <-> Lua values, binary safe, without running any Lua code (tables are
//! read and written raw, so no metamethod can run during a conversion).

use crate::ctx::Ctx;
use crate::objects::HostObj;
use engine::{FnRef, Value};
use mlua::{Function, Lua, MultiValue, Table, Value as LuaValue};

/// Deepest nesting of tables converted (self-referential tables end here).
pub(crate) const MAX_DEPTH: usize = 100;
/// Most values (nodes) one conversion may produce (guards against shared-subtable blowup).
const MAX_NODES: usize = 10_000_000;
/// Most functions one conversion may hold before numbering them (each holds one of mlua's
/// references, whose stack is bounded).
const MAX_FUNCTIONS: usize = 100_000;
/// Largest integer a double represents exactly: integral floats up to this become `Int`.
const MAX_SAFE_INT: f64 = 9_007_199_254_740_992.0;

fn too_deep() -> mlua::Error {
    mlua::Error::runtime("value nested too deeply")
}

// ----- Value -> Lua -----

pub(crate) fn to_lua(lua: &Lua, ctx: &Ctx, v: &Value) -> mlua::Result<LuaValue> {
    match v {
        Value::Nil => Ok(LuaValue::Nil),
        Value::Bool(b) => Ok(LuaValue::Boolean(*b)),
        Value::Int(i) => Ok(LuaValue::Integer(*i)),
        Value::Double(d) => Ok(LuaValue::Number(*d)),
        v if is_plain(v, 0) => plain_to_lua(lua, v),
        v => to_lua_at(lua, ctx, v, 0),
    }
}

/// Is `v` plain data (no functions or objects; no map key that Lua refuses), not nested too
/// deeply? Such a value is built with the raw C API in one protected call.
fn is_plain(v: &Value, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match v {
        Value::Nil | Value::Bool(_) | Value::Int(_) | Value::Double(_) | Value::String(_) | Value::Bytes(_) | Value::Error(_) => true,
        Value::Array(items) => items.iter().all(|i| is_plain(i, depth + 1)),
        Value::Map(entries) => entries.iter().all(|(k, v)| {
            let key_ok = match k {
                Value::Nil => false,
                Value::Double(d) => !d.is_nan(),
                _ => true,
            };
            key_ok && is_plain(k, depth + 1) && is_plain(v, depth + 1)
        }),
        Value::Function(_) | Value::Object(_) => false,
    }
}

/// Builds plain data (see `is_plain`) in one protected call of the raw C API, instead of a
/// protected call per string and per table store: a record (a table of a few strings) was
/// a dozen protected calls.
fn plain_to_lua(lua: &Lua, v: &Value) -> mlua::Result<LuaValue> {
    // SAFETY: `push_plain` only pushes values with the C API (one net slot), checking the
    // stack as it goes; a memory error raised by Lua unwinds out of it through frames that
    // own nothing (references and integers only), caught by exec_raw's protected call.
    unsafe { lua.exec_raw::<LuaValue>((), |state| push_plain(state, v)) }
}

/// # Safety
/// `state` is a running Lua state inside a protected call; `v` is plain (see `is_plain`).
unsafe fn push_plain(state: *mut mlua::ffi::lua_State, v: &Value) {
    use mlua::ffi;
    ffi::luaL_checkstack(state, 3, c"value nested too deeply".as_ptr());
    match v {
        Value::Nil => ffi::lua_pushnil(state),
        Value::Bool(b) => ffi::lua_pushboolean(state, *b as i32),
        Value::Int(i) => ffi::lua_pushinteger(state, *i),
        Value::Double(d) => ffi::lua_pushnumber(state, *d),
        Value::String(s) => {
            ffi::lua_pushlstring(state, s.as_ptr() as *const _, s.len());
        }
        Value::Bytes(b) => {
            ffi::lua_pushlstring(state, b.as_ptr() as *const _, b.len());
        }
        Value::Array(items) => {
            ffi::lua_createtable(state, items.len().min(i32::MAX as usize) as i32, 0);
            for (i, item) in items.iter().enumerate() {
                push_plain(state, item);
                ffi::lua_rawseti(state, -2, i as ffi::lua_Integer + 1);
            }
        }
        Value::Map(entries) => {
            ffi::lua_createtable(state, 0, entries.len().min(i32::MAX as usize) as i32);
            for (k, val) in entries {
                push_plain(state, k);
                push_plain(state, val);
                ffi::lua_rawset(state, -3);
            }
        }
        Value::Error(msg) => {
            ffi::lua_createtable(state, 0, 1);
            ffi::lua_pushlstring(state, msg.as_ptr() as *const _, msg.len());
            ffi::lua_setfield(state, -2, c"err".as_ptr());
        }
        // Not plain: never given (see is_plain).
        Value::Function(_) | Value::Object(_) => ffi::lua_pushnil(state),
    }
}

pub(crate) fn to_lua_multi(lua: &Lua, ctx: &Ctx, args: &[Value]) -> mlua::Result<MultiValue> {
    args.iter().map(|v| to_lua(lua, ctx, v)).collect()
}

fn to_lua_at(lua: &Lua, ctx: &Ctx, v: &Value, depth: usize) -> mlua::Result<LuaValue> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    Ok(match v {
        Value::Nil => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Int(i) => LuaValue::Integer(*i),
        Value::Double(d) => LuaValue::Number(*d),
        Value::String(s) => LuaValue::String(lua.create_string(s)?),
        Value::Bytes(b) => LuaValue::String(lua.create_string(b)?),
        Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i as i64 + 1, to_lua_at(lua, ctx, item, depth + 1)?)?;
            }
            LuaValue::Table(t)
        }
        Value::Map(entries) => {
            let t = lua.create_table_with_capacity(0, entries.len())?;
            for (k, val) in entries {
                let key = to_lua_at(lua, ctx, k, depth + 1)?;
                match key {
                    LuaValue::Nil => return Err(mlua::Error::runtime("map key is nil")),
                    LuaValue::Number(n) if n.is_nan() => {
                        return Err(mlua::Error::runtime("map key is NaN"))
                    }
                    _ => {}
                }
                t.raw_set(key, to_lua_at(lua, ctx, val, depth + 1)?)?;
            }
            LuaValue::Table(t)
        }
        Value::Error(msg) => {
            let t = lua.create_table_with_capacity(0, 1)?;
            t.raw_set("err", lua.create_string(msg)?)?;
            LuaValue::Table(t)
        }
        Value::Function(f) => LuaValue::Function(ctx.function(lua, *f)?),
        Value::Object(o) => LuaValue::UserData(lua.create_userdata(HostObj(*o))?),
    })
}

// ----- Lua -> Value -----

/// Converts one Lua value. Functions get `FnRef`s in the order they appear in the converted
/// value (arrays in index order, maps in key order), so numbering does not depend on Lua's
/// hash order.
pub(crate) fn to_value(lua: &Lua, ctx: &Ctx, v: LuaValue) -> mlua::Result<Value> {
    let mut conv = FromLua { pending: Vec::new(), nodes: 0 };
    let mut out = conv.value(v, 0)?;
    if !conv.pending.is_empty() {
        let mut pending: Vec<Option<Function>> = conv.pending.into_iter().map(Some).collect();
        resolve(lua, ctx, &mut out, &mut pending)?;
    }
    Ok(out)
}

/// Converts the arguments of a call from Lua.
pub(crate) fn to_values(lua: &Lua, ctx: &Ctx, args: MultiValue) -> mlua::Result<Vec<Value>> {
    args.into_iter().map(|v| to_value(lua, ctx, v)).collect()
}

pub(crate) fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INT {
        Value::Int(n as i64)
    } else {
        Value::Double(n)
    }
}

struct FromLua {
    /// Functions met so far; `Value::Function(FnRef(i))` in the tree is `pending[i]` until
    /// `resolve` gives the real numbers.
    pending: Vec<Function>,
    nodes: usize,
}

impl FromLua {
    fn value(&mut self, v: LuaValue, depth: usize) -> mlua::Result<Value> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(mlua::Error::runtime("value too large to convert"));
        }
        Ok(match v {
            LuaValue::Nil => Value::Nil,
            LuaValue::Boolean(b) => Value::Bool(b),
            LuaValue::Integer(i) => Value::Int(i),
            LuaValue::Number(n) => number(n),
            LuaValue::String(s) => Value::from_bytes(s.as_bytes().to_vec()),
            LuaValue::Table(t) => self.table(t, depth)?,
            LuaValue::Function(f) => {
                if self.pending.len() >= MAX_FUNCTIONS {
                    return Err(mlua::Error::runtime("too many functions in one value"));
                }
                let i = self.pending.len() as u32;
                self.pending.push(f);
                Value::Function(FnRef(i))
            }
            LuaValue::UserData(ud) => match ud.borrow::<HostObj>() {
                Ok(h) => Value::Object(h.0),
                Err(_) => return Err(mlua::Error::runtime("cannot convert a userdata to a value")),
            },
            LuaValue::Error(e) => Value::Error(crate::errors::message(&e)),
            other => {
                return Err(mlua::Error::runtime(format!(
                    "cannot convert a Lua {} to a value",
                    other.type_name()
                )))
            }
        })
    }

    fn table(&mut self, t: Table, depth: usize) -> mlua::Result<Value> {
        if depth >= MAX_DEPTH {
            return Err(too_deep());
        }
        let n = t.raw_len();
        let mut entries: Vec<(Value, Value)> = Vec::new();
        let mut is_array = true;
        t.for_each::<LuaValue, LuaValue>(|k, v| {
            if is_array {
                is_array = matches!(k, LuaValue::Integer(i) if i >= 1 && (i as u64) <= n as u64);
            }
            let key = self.value(k, depth + 1)?;
            let val = self.value(v, depth + 1)?;
            entries.push((key, val));
            Ok(())
        })?;
        if is_array && entries.len() == n {
            entries.sort_by_key(|(k, _)| if let Value::Int(i) = k { *i } else { 0 });
            return Ok(Value::Array(entries.into_iter().map(|(_, v)| v).collect()));
        }
        entries.sort_by(|a, b| a.0.compare(&b.0));
        Ok(Value::Map(entries))
    }
}

/// Replaces placeholder function numbers with the run's `FnRef`s, in tree order.
fn resolve(
    lua: &Lua,
    ctx: &Ctx,
    v: &mut Value,
    pending: &mut [Option<Function>],
) -> mlua::Result<()> {
    match v {
        Value::Function(r) => {
            let slot = pending
                .get_mut(r.0 as usize)
                .ok_or_else(|| mlua::Error::runtime("internal error: bad function placeholder"))?;
            let f = slot
                .take()
                .ok_or_else(|| mlua::Error::runtime("internal error: function placeholder reused"))?;
            *r = ctx.fn_ref(lua, f)?;
        }
        Value::Array(items) => {
            for item in items {
                resolve(lua, ctx, item, pending)?;
            }
        }
        Value::Map(entries) => {
            for (k, val) in entries {
                resolve(lua, ctx, k, pending)?;
                resolve(lua, ctx, val, pending)?;
            }
        }
        _ => {}
    }
    Ok(())
}

// ----- error objects -----

/// A readable rendering of a Lua error object (used for `error({...})` tables).
pub(crate) fn render(v: &LuaValue, depth: usize) -> String {
    match v {
        LuaValue::Nil => "nil".into(),
        LuaValue::Boolean(b) => b.to_string(),
        LuaValue::Integer(i) => i.to_string(),
        LuaValue::Number(n) => engine::format_double(*n),
        LuaValue::String(s) => s.to_string_lossy(),
        LuaValue::Table(t) => {
            if depth == 0 {
                for field in ["err", "message", "msg"] {
                    if let Ok(LuaValue::String(s)) = t.raw_get::<LuaValue>(field) {
                        return s.to_string_lossy();
                    }
                }
            }
            if depth >= 3 {
                return "{...}".into();
            }
            let mut parts = Vec::new();
            let _ = t.for_each::<LuaValue, LuaValue>(|k, val| {
                if parts.len() < 20 {
                    parts.push(format!("{}: {}", render(&k, depth + 1), render(&val, depth + 1)));
                } else if parts.len() == 20 {
                    parts.push("...".into());
                }
                Ok(())
            });
            parts.sort();
            format!("{{{}}}", parts.join(", "))
        }
        LuaValue::UserData(ud) => match ud.borrow::<HostObj>() {
            Ok(h) => format!("<{} {}>", h.0.kind, h.0.id),
            Err(_) => "<userdata>".into(),
        },
        LuaValue::Error(e) => crate::errors::message(e),
        other => format!("<{}>", other.type_name()),
    }
}
