//! Conversions between JS values and `engine::Value`, both directions, binary safe.

use crate::bridge::{native_function, Target};
use crate::error::{from_exception, from_js_error, Phase};
use crate::state::State;
use engine::{FnRef, ObjRef, ScriptError, Value};
use rquickjs::object::Property;
use rquickjs::{
    promise::PromiseState, qjs, Array, BigInt, Ctx, Exception, Function, Object, Persistent, Promise, Type, TypedArray,
    Value as JsValue,
};
use std::rc::Rc;

/// Deepest nesting converted (guards against cycles).
pub(crate) const MAX_DEPTH: usize = 100;
/// Most bytes one conversion to `Value` may produce (guards against shared subtrees that
/// are small in JS but huge once copied).
const MAX_BYTES: usize = 512 << 20;
/// Conversions check the clock every this many elements.
const POLL_EVERY: usize = 4096;
/// Hidden property of a function: its index in the run's function table.
const FN_KEY: &str = "__gears_fn__";
/// Hidden property of a host object: its index in the run's object table.
const OBJ_KEY: &str = "__gears_object__";
/// Integers whose magnitude is at most this are exact in a double.
const MAX_SAFE: i64 = 1 << 53;

fn too_deep() -> ScriptError {
    ScriptError::runtime("value nested too deeply")
}

/// A JS string as Rust text; lone surrogates become U+FFFD.
pub(crate) fn js_string(s: &rquickjs::String<'_>) -> String {
    if let Ok(text) = s.to_string() {
        return text;
    }
    let ctx = s.ctx().as_raw().as_ptr();
    let mut len = 0usize;
    // SAFETY: `s` is a live string of the live context `ctx`; the returned buffer holds
    // `len` bytes and is released with JS_FreeCString right after being copied.
    unsafe {
        let ptr = qjs::JS_ToCStringLen(ctx, &mut len, s.as_raw());
        if ptr.is_null() {
            return String::new();
        }
        let bytes = std::slice::from_raw_parts(ptr as *const u8, len);
        let text = String::from_utf8_lossy(bytes).into_owned();
        qjs::JS_FreeCString(ctx, ptr);
        text
    }
}

/// JS -> `Value`.
pub(crate) struct ToValue<'a, 'js> {
    ctx: &'a Ctx<'js>,
    state: &'a State,
    budget: usize,
}

impl<'a, 'js> ToValue<'a, 'js> {
    pub fn new(ctx: &'a Ctx<'js>, state: &'a State) -> Self {
        ToValue { ctx, state, budget: MAX_BYTES }
    }

    fn js_err(&self, e: rquickjs::Error) -> ScriptError {
        from_js_error(self.ctx, self.state, e, Phase::Run)
    }

    fn spend(&mut self, bytes: usize) -> Result<(), ScriptError> {
        let bytes = bytes.saturating_add(std::mem::size_of::<Value>());
        self.budget =
            self.budget.checked_sub(bytes).ok_or_else(|| ScriptError::runtime("value too large to convert"))?;
        Ok(())
    }

    pub fn convert(&mut self, v: &JsValue<'js>, depth: usize) -> Result<Value, ScriptError> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        self.spend(0)?;
        Ok(match v.type_of() {
            Type::Uninitialized | Type::Undefined | Type::Null => Value::Nil,
            Type::Bool => Value::Bool(v.as_bool().unwrap_or(false)),
            Type::Int => Value::Int(v.as_int().unwrap_or(0) as i64),
            Type::Float => number(v.as_float().unwrap_or(f64::NAN)),
            Type::String => {
                let s = v.as_string().map(js_string).unwrap_or_default();
                self.spend(s.len())?;
                Value::String(s)
            }
            Type::BigInt => {
                let text = v.get::<rquickjs::convert::Coerced<String>>().map_err(|e| self.js_err(e))?.0;
                match text.parse::<i64>() {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::String(text),
                }
            }
            Type::Function | Type::Constructor => match v.as_function() {
                Some(f) => Value::Function(function_ref(self.ctx, self.state, f)?),
                None => return Err(ScriptError::runtime("cannot convert a function")),
            },
            Type::Array => self.array(v, depth)?,
            Type::Exception => {
                let message = v.as_exception().and_then(Exception::message).unwrap_or_default();
                Value::Error(message)
            }
            Type::Promise => self.promise(v, depth)?,
            Type::Object | Type::Proxy => match v.as_object() {
                Some(o) => self.object(o, depth)?,
                None => Value::Nil,
            },
            t => return Err(ScriptError::runtime(format!("cannot convert a JS {} to a value", t.as_str()))),
        })
    }

    fn array(&mut self, v: &JsValue<'js>, depth: usize) -> Result<Value, ScriptError> {
        let Some(arr) = v.as_array() else { return Ok(Value::Array(vec![])) };
        // An array's length is any u32, not only an int (rquickjs's `len` asserts one).
        let len: f64 = arr.as_object().get("length").map_err(|e| self.js_err(e))?;
        let len = len.max(0.0) as u64;
        if len > (self.budget / std::mem::size_of::<Value>()) as u64 {
            return Err(ScriptError::runtime(format!(
                "array of {len} elements too large to convert: at most {} bytes of values may be converted",
                MAX_BYTES
            )));
        }
        let len = len as usize;
        self.spend(len.saturating_mul(std::mem::size_of::<Value>()))?;
        let mut items = Vec::with_capacity(len);
        for i in 0..len {
            self.poll(i)?;
            let item: JsValue = arr.get(i).map_err(|e| self.js_err(e))?;
            items.push(self.convert(&item, depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    /// Long conversions stop at the time limit or on abort like script code does.
    fn poll(&self, i: usize) -> Result<(), ScriptError> {
        if i % POLL_EVERY == POLL_EVERY - 1 {
            self.state.clock.check()?;
        }
        Ok(())
    }

    fn promise(&mut self, v: &JsValue<'js>, depth: usize) -> Result<Value, ScriptError> {
        let Some(p) = v.as_promise() else { return Ok(Value::Nil) };
        match p.state() {
            PromiseState::Pending => Err(ScriptError::runtime("a promise did not settle")),
            PromiseState::Resolved => match p.result::<JsValue>() {
                Some(Ok(r)) => self.convert(&r, depth + 1),
                Some(Err(e)) => Err(self.js_err(e)),
                None => Ok(Value::Nil),
            },
            PromiseState::Rejected => {
                let reason = rejection(p);
                Err(from_exception(self.ctx, self.state, &reason, Phase::Run))
            }
        }
    }

    fn object(&mut self, o: &Object<'js>, depth: usize) -> Result<Value, ScriptError> {
        if let Some(r) = host_ref(self.ctx, self.state, o) {
            return Ok(Value::Object(r));
        }
        if let Some(bytes) = self.bytes(o) {
            self.spend(bytes.len())?;
            return Ok(Value::Bytes(bytes));
        }
        // SAFETY: JS_GetTypedArrayType only reads the class of a live value.
        if unsafe { qjs::JS_GetTypedArrayType(o.as_raw()) } >= 0 {
            return self.array_like(o, depth);
        }
        let mut entries = Vec::new();
        for (i, key) in o.keys::<rquickjs::Atom>().enumerate() {
            self.poll(i)?;
            let key = key.map_err(|e| self.js_err(e))?;
            let name = key.to_js_string().map(|s| js_string(&s)).map_err(|e| self.js_err(e))?;
            let value: JsValue = o.get(key).map_err(|e| self.js_err(e))?;
            self.spend(name.len() + std::mem::size_of::<Value>())?;
            entries.push((Value::String(name), self.convert(&value, depth + 1)?));
        }
        Ok(Value::Map(entries))
    }

    /// The content of a Uint8Array or an ArrayBuffer.
    fn bytes(&self, o: &Object<'js>) -> Option<Vec<u8>> {
        // SAFETY (both): the slices are copied at once, before any JS can run.
        if let Some(a) = o.as_typed_array::<u8>() {
            return Some(unsafe { a.as_bytes() }.map(<[u8]>::to_vec).unwrap_or_default());
        }
        if let Some(b) = o.as_array_buffer() {
            return Some(unsafe { b.as_bytes() }.map(<[u8]>::to_vec).unwrap_or_default());
        }
        None
    }

    /// Other typed arrays: arrays of numbers.
    fn array_like(&mut self, o: &Object<'js>, depth: usize) -> Result<Value, ScriptError> {
        let len: usize = o.get::<_, Option<usize>>("length").map_err(|e| self.js_err(e))?.unwrap_or(0);
        self.spend(len.saturating_mul(std::mem::size_of::<Value>()))?;
        let mut items = Vec::with_capacity(len);
        for i in 0..len {
            self.poll(i)?;
            let item: JsValue = o.get(i as u32).map_err(|e| self.js_err(e))?;
            items.push(self.convert(&item, depth + 1)?);
        }
        Ok(Value::Array(items))
    }
}

/// The reason of a rejected promise.
pub(crate) fn rejection<'js>(p: &Promise<'js>) -> JsValue<'js> {
    match p.result::<JsValue>() {
        Some(Err(rquickjs::Error::Exception)) => p.ctx().catch(),
        _ => JsValue::new_undefined(p.ctx().clone()),
    }
}

/// A JS number as a `Value`: integral numbers that are exact become `Int`.
fn number(d: f64) -> Value {
    if d.is_finite() && d.fract() == 0.0 && d.abs() <= MAX_SAFE as f64 {
        Value::Int(d as i64)
    } else {
        Value::Double(d)
    }
}

/// The `FnRef` of a function: the same function always gets the same number in a run.
fn function_ref<'js>(ctx: &Ctx<'js>, state: &State, f: &Function<'js>) -> Result<FnRef, ScriptError> {
    let same = |i: u32| {
        let saved = state.functions.borrow().get(i as usize).cloned();
        saved.and_then(|p| p.restore(ctx).ok()).is_some_and(|g| g == *f)
    };
    match f.get::<_, Option<u32>>(FN_KEY) {
        Ok(Some(i)) if same(i) => return Ok(FnRef(i)),
        Ok(_) => {}
        Err(_) => {
            let _ = ctx.catch();
        }
    }
    let untagged = state.untagged_functions.borrow().clone();
    if let Some(i) = untagged.into_iter().find(|&i| same(i)) {
        return Ok(FnRef(i));
    }
    let index =
        u32::try_from(state.functions.borrow().len()).map_err(|_| ScriptError::runtime("too many functions"))?;
    state.functions.borrow_mut().push(Persistent::save(ctx, f.clone()));
    if f.prop(FN_KEY, Property::from(index)).is_err() {
        let _ = ctx.catch();
        state.untagged_functions.borrow_mut().push(index);
    }
    Ok(FnRef(index))
}

/// The `ObjRef` of a host object made by `host_object`.
fn host_ref<'js>(ctx: &Ctx<'js>, state: &State, o: &Object<'js>) -> Option<ObjRef> {
    let index = match o.get::<_, Option<u32>>(OBJ_KEY) {
        Ok(i) => i?,
        Err(_) => {
            let _ = ctx.catch();
            return None;
        }
    };
    let (r, saved) = state.objects.borrow().get(index as usize).cloned()?;
    let saved = saved.restore(ctx).ok()?;
    (saved == *o).then_some(r)
}

/// `Value` -> JS.
pub(crate) struct ToJs<'a, 'js> {
    ctx: &'a Ctx<'js>,
    state: &'a Rc<State>,
}

impl<'a, 'js> ToJs<'a, 'js> {
    pub fn new(ctx: &'a Ctx<'js>, state: &'a Rc<State>) -> Self {
        ToJs { ctx, state }
    }

    fn js_err(&self, e: rquickjs::Error) -> ScriptError {
        from_js_error(self.ctx, self.state, e, Phase::Run)
    }

    pub fn convert(&self, v: &Value, depth: usize) -> Result<JsValue<'js>, ScriptError> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        let ctx = self.ctx.clone();
        let r = match v {
            Value::Nil => Ok(JsValue::new_null(ctx)),
            Value::Bool(b) => Ok(JsValue::new_bool(ctx, *b)),
            Value::Int(i) => int(ctx, *i),
            Value::Double(d) => Ok(JsValue::new_float(ctx, *d)),
            Value::String(s) => rquickjs::String::from_str(ctx, s).map(|s| s.into_value()),
            Value::Bytes(b) => TypedArray::<u8>::new_copy(ctx, b).map(|a| a.into_value()),
            Value::Array(items) => {
                let arr = Array::new(ctx).map_err(|e| self.js_err(e))?;
                for (i, item) in items.iter().enumerate() {
                    let item = self.convert(item, depth + 1)?;
                    arr.set(i, item).map_err(|e| self.js_err(e))?;
                }
                Ok(arr.into_value())
            }
            Value::Map(entries) => {
                let obj = Object::new(ctx).map_err(|e| self.js_err(e))?;
                for (k, item) in entries {
                    let key = key_string(k);
                    let item = self.convert(item, depth + 1)?;
                    // Defined, not assigned: a key such as `__proto__` (a hash field may be
                    // named so) must stay an own property, not reach Object.prototype's setter.
                    obj.prop(key, rquickjs::object::Property::from(item).writable().enumerable().configurable()).map_err(|e| self.js_err(e))?;
                }
                Ok(obj.into_value())
            }
            Value::Error(msg) => Exception::from_message(ctx, msg).map(|e| e.into_value()),
            Value::Function(f) => return self.function(*f),
            Value::Object(o) => return self.host_object(*o),
        };
        r.map_err(|e| self.js_err(e))
    }

    fn function(&self, f: FnRef) -> Result<JsValue<'js>, ScriptError> {
        let saved = self.state.functions.borrow().get(f.0 as usize).cloned();
        let saved = saved.ok_or_else(|| ScriptError::runtime(format!("unknown function reference {}", f.0)))?;
        saved.restore(self.ctx).map(|f| f.into_value()).map_err(|e| self.js_err(e))
    }

    /// The JS object of a host object: one per `ObjRef` in a run, with the kind's methods.
    fn host_object(&self, r: ObjRef) -> Result<JsValue<'js>, ScriptError> {
        let known = self.state.object_index.borrow().get(&r).copied();
        if let Some(i) = known {
            let saved = self.state.objects.borrow().get(i).map(|(_, p)| p.clone());
            if let Some(obj) = saved.and_then(|p| p.restore(self.ctx).ok()) {
                return Ok(obj.into_value());
            }
        }
        let natives =
            self.state.natives().ok_or_else(|| ScriptError::runtime("host objects are only available during a run"))?;
        let methods = natives.methods(r.kind);
        let obj = Object::new(self.ctx.clone()).map_err(|e| self.js_err(e))?;
        for &name in methods {
            let f = native_function(self.ctx, self.state, Target::Method(r, name)).map_err(|e| self.js_err(e))?;
            obj.prop(name, Property::from(f).writable().configurable()).map_err(|e| self.js_err(e))?;
        }
        let index =
            u32::try_from(self.state.objects.borrow().len()).map_err(|_| ScriptError::runtime("too many objects"))?;
        obj.prop(OBJ_KEY, Property::from(index)).map_err(|e| self.js_err(e))?;
        self.state.objects.borrow_mut().push((r, Persistent::save(self.ctx, obj.clone())));
        self.state.object_index.borrow_mut().insert(r, index as usize);
        Ok(obj.into_value())
    }
}

/// An integer as a JS number, or a BigInt when a number would not be exact.
fn int<'js>(ctx: Ctx<'js>, i: i64) -> Result<JsValue<'js>, rquickjs::Error> {
    if let Ok(small) = i32::try_from(i) {
        Ok(JsValue::new_int(ctx, small))
    } else if (-MAX_SAFE..=MAX_SAFE).contains(&i) {
        Ok(JsValue::new_float(ctx, i as f64))
    } else {
        BigInt::from_i64(ctx, i).map(|b| b.into_value())
    }
}

/// A map key as an object property name.
fn key_string(k: &Value) -> String {
    match k.as_str_lossy() {
        Some(s) => s,
        None => k.to_string(),
    }
}
