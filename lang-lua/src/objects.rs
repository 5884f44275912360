//! Host objects (`Value::Object`) as Lua userdata whose methods are `Natives::methods(kind)`.

use crate::bridge;
use crate::ctx::Ctx;
use engine::ObjRef;
use mlua::{AnyUserData, Lua, MetaMethod, Table, UserData, UserDataMethods, Value as LuaValue};

/// The userdata behind a host object: unforgeable by scripts, and converted back to the
/// same `Value::Object`.
pub(crate) struct HostObj(pub(crate) ObjRef);

impl UserData for HostObj {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: LuaValue| {
            let LuaValue::String(name) = key else {
                return Ok(LuaValue::Nil);
            };
            let t = method_table(lua, this.0.kind)?;
            t.raw_get::<LuaValue>(name)
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("<{} {}>", this.0.kind, this.0.id))
        });
        methods.add_meta_function(MetaMethod::Eq, |_, (a, b): (AnyUserData, AnyUserData)| {
            match (a.borrow::<HostObj>(), b.borrow::<HostObj>()) {
                (Ok(a), Ok(b)) => Ok(a.0 == b.0),
                _ => Ok(false),
            }
        });
    }
}

/// The table of method functions of a kind (built once per run).
fn method_table(lua: &Lua, kind: &'static str) -> mlua::Result<Table> {
    let ctx = Ctx::get(lua)?;
    if let Some(t) = ctx.methods(lua, kind) {
        return Ok(t);
    }
    let names = ctx.natives()?.methods(kind);
    let t = lua.create_table_with_capacity(0, names.len())?;
    for &name in names {
        t.raw_set(name, method_function(lua, name)?)?;
    }
    ctx.cache_methods(lua, kind, &t)?;
    Ok(t)
}

/// `obj:name(...)`: calls `Natives::call_method` with the object and the other arguments.
fn method_function(lua: &Lua, name: &'static str) -> mlua::Result<mlua::Function> {
    lua.create_function(move |lua, args: mlua::MultiValue| {
        let mut args = args.into_iter();
        let obj = match args.next() {
            Some(LuaValue::UserData(ud)) => ud.borrow::<HostObj>().ok().map(|h| h.0),
            _ => None,
        };
        let Some(obj) = obj else {
            return Err(mlua::Error::runtime(format!(
                "method '{name}' must be called on its object (use obj:{name}(...))"
            )));
        };
        bridge::call_native(lua, args.collect(), |natives, vals, calls| {
            natives.call_method(obj, name, vals, calls)
        })
    })
}
