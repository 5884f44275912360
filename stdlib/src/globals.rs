//! The global functions: `execute`, `atomic`, `log`, `configGet`, `hashtag`.

use crate::args;
use crate::ScriptRun;
use engine::{LockedHost, LogLevel, RunEnv, ScriptCalls, ScriptError, Value};

/// `execute(command, ...)`: runs a Redis command as the ACL user of the run.
pub fn execute(run: &ScriptRun, a: &[Value]) -> Result<Value, ScriptError> {
    if a.is_empty() {
        return Err(ScriptError::usage("execute: expected a command and its arguments, e.g. execute('HGET', key, field)"));
    }
    let argv = command_args("execute", a)?;
    run_command(run, run.env.user.as_deref(), run.env.caller.as_deref(), argv)
}

/// Script values as command arguments: strings and numbers only.
fn command_args(what: &str, a: &[Value]) -> Result<Vec<Vec<u8>>, ScriptError> {
    a.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(_) | Value::Bytes(_) | Value::Int(_) | Value::Double(_) => Ok(v.as_bytes().expect("string-like").into_owned()),
            other => Err(args::wrong(what, i, "a string or a number", Some(other))),
        })
        .collect()
}

/// Runs a command as `user`, inside `atomic()`'s lock if one is held, else taking the lock.
/// With `also`, that user must be allowed the command too (a hook or RG.TRIGGER runs with
/// its owner's rights intersected with its client's).
fn run_command(run: &ScriptRun, user: Option<&str>, also: Option<&str>, argv: Vec<Vec<u8>>) -> Result<Value, ScriptError> {
    let refs: Vec<&[u8]> = argv.iter().map(|x| x.as_slice()).collect();
    let call = |l: &dyn LockedHost| {
        if let Some(other) = also.filter(|o| Some(*o) != user) {
            l.permitted(other, &refs)?;
        }
        l.call(user, &refs)
    };
    let reply = match run.locked.get() {
        // SAFETY: the pointer is set by `atomic` for the duration of its callback only, and
        // the guard it points into outlives that callback (see `atomic`).
        Some(l) => call(unsafe { &*l }),
        None => call(&*run.env.host.lock(run.env.db)),
    };
    reply.map_err(ScriptError::from)
}

/// `callNext([arg, ...])`: in a command hook, runs the hooked command (with the client's
/// permissions) with its own arguments, or with the ones given, and returns its reply.
pub fn call_next(run: &ScriptRun, a: &[Value]) -> Result<Value, ScriptError> {
    let hook = run.env.hook.as_ref().ok_or_else(|| ScriptError::usage("callNext: only a command hook can call the command it hooks"))?;
    let mut argv: Vec<Vec<u8>> = vec![hook.args.first().cloned().unwrap_or_default()];
    if a.is_empty() {
        argv.extend(hook.args.iter().skip(1).cloned());
    } else {
        argv.extend(command_args("callNext", a)?);
    }
    run_command(run, run.env.caller.as_deref(), run.env.user.as_deref(), argv)
}

/// `atomic(fn)`: runs `fn` while holding the data lock, so its `execute()` calls form one
/// atomic block (replicated as MULTI/EXEC).
pub fn atomic(run: &ScriptRun, a: &[Value], script: &dyn ScriptCalls) -> Result<Value, ScriptError> {
    args::at_most(a, 1, "atomic", "atomic(fn)")?;
    let engine::Func::Script(f) = args::func(a, 0, "atomic")? else { unreachable!("args::func gives script functions") };
    if run.locked.get().is_some() {
        // Already atomic: nesting is a no-op.
        return script.call(f, &[]);
    }
    let guard = run.env.host.lock(run.env.db);
    let ptr: *const (dyn LockedHost + '_) = &*guard;
    // SAFETY: erases the guard's lifetime; `Published` clears the pointer when it drops,
    // which is before `guard` drops (declared after it), on every path, unwinding included.
    let ptr: *const dyn LockedHost = unsafe { std::mem::transmute(ptr) };
    run.locked.set(Some(ptr));
    let _published = Published(&run.locked);
    script.call(f, &[])
}

/// Clears `atomic()`'s lock pointer when dropped.
struct Published<'a>(&'a std::cell::Cell<Option<*const dyn LockedHost>>);

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

/// `log(message, [level])`: writes to the Redis log (levels debug, verbose, notice, warning).
pub fn log(env: &RunEnv, a: &[Value]) -> Result<Value, ScriptError> {
    args::at_most(a, 2, "log", "log(message, [level])")?;
    let msg = match a.first() {
        Some(v @ (Value::String(_) | Value::Bytes(_) | Value::Int(_) | Value::Double(_) | Value::Bool(_))) => v.to_string(),
        other => return Err(args::wrong("log", 0, "a string", other)),
    };
    let level = match args::opt_string(a, 1, "log")? {
        None => LogLevel::Notice,
        Some(l) => LogLevel::parse(&l).ok_or_else(|| ScriptError::usage(format!("log: unknown level '{l}'; expected debug, verbose, notice or warning")))?,
    };
    env.host.log(level, &msg);
    Ok(Value::Nil)
}

/// `configGet(name)`: a setting's value, or nil.
pub fn config_get(env: &RunEnv, a: &[Value]) -> Result<Value, ScriptError> {
    args::at_most(a, 1, "configGet", "configGet(name)")?;
    let name = args::opt_string(a, 0, "configGet")?.ok_or_else(|| args::wrong("configGet", 0, "a string", a.first()))?;
    if engine::normalize_setting(&name).starts_with("connection.") {
        // Connection strings carry secrets: scripts refer to them by name only.
        return Err(ScriptError::usage(format!("configGet: '{name}' is a secret and cannot be read by scripts")));
    }
    Ok(env.config.get(&name).map(Value::String).unwrap_or(Value::Nil))
}

/// `hashtag()`: a hashtag that maps to a slot this shard serves. On a single Redis every
/// slot is local and `{06S}` is the tag of slot 0; on a cluster it is the tag of the
/// shard's first slot, and a replica or a primary without slots has none.
pub fn hashtag(env: &RunEnv) -> Result<Value, ScriptError> {
    match env.host.topology() {
        None => Ok(Value::str("06S")),
        Some(t) => t.local_hashtag().map(Value::str).ok_or_else(|| ScriptError::usage("hashtag: this shard serves no slots")),
    }
}
