//! Command hooks: a command filter sends calls of hooked commands to RG.HOOKRUN, which runs
//! the hook's steps in place (they may call the original with `callNext()`, replace its
//! reply, or refuse it with an error).

use crate::commands::guarded;
use crate::host::InPlaceHost;
use crate::{engine, redis_host, reply, ENGINE};
use engine::{HookCall, Value};
use redis_module::{raw, Context, ContextFlags, RedisResult, RedisString, RedisValue};
use std::os::raw::{c_void, c_char, c_int};
use std::sync::Arc;

/// What a hooked command becomes: the wrapper whose flags match the original's.
fn hook_run_for(command: &str) -> &'static str {
    match crate::commands_info::kind(command) {
        crate::commands_info::Kind::Plain => "rg.hookrun",
        crate::commands_info::Kind::Write => "rg.hookrun.write",
        crate::commands_info::Kind::MayReplicate => "rg.hookrun.mayreplicate",
    }
}

fn filter_arg(fctx: *mut raw::RedisModuleCommandFilterCtx, pos: c_int) -> Option<Vec<u8>> {
    // SAFETY: called inside the filter callback with its live context; the string is
    // owned by the command being filtered and only read here.
    unsafe {
        let s = raw::RedisModule_CommandFilterArgGet.unwrap()(fctx, pos);
        if s.is_null() {
            return None;
        }
        let mut len = 0usize;
        let p = raw::RedisModule_StringPtrLen.unwrap()(s, &mut len);
        Some(std::slice::from_raw_parts(p as *const u8, len).to_vec())
    }
}

extern "C" fn on_command(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    let _ = std::panic::catch_unwind(|| {
        let Some(engine) = ENGINE.get() else { return };
        // The module's own calls are never wrapped (they run as the session's or client's
        // user already, and their triggers run when the call returns).
        if crate::host::in_own_call() {
            return;
        }
        // Every command passes here: nothing is done unless some command is hooked, some
        // recipe runs or (7.0) some sync trigger waits.
        let recipes = crate::recipes::recipes().is_some_and(|r| {
            r.ensure(engine);
            !r.is_empty()
        });
        // On 7.0, commands on keys that sync triggers watch are wrapped too (see `defer`).
        let deferring = !crate::triggers::has_post_notification_jobs() && engine.sessions.registration_count() > 0;
        if !recipes {
            // What it knew of clients' MULTI states grows stale while it does not follow
            // their commands.
            crate::clients::forget_all();
        }
        if !engine.sessions.has_hooks() && !recipes && !deferring {
            return;
        }
        // SAFETY: the filter context is live for this callback.
        let n = unsafe { raw::RedisModule_CommandFilterArgsCount.unwrap()(fctx) };
        let Some(name) = filter_arg(fctx, 0) else { return };
        let name = String::from_utf8_lossy(&name).to_ascii_lowercase();
        if recipes {
            crate::clients::seen(fctx, &name);
        }
        if name.starts_with("rg.") {
            return;
        }
        // On a cluster, a command on another shard's keys is left alone: Redis redirects
        // it (MOVED, CROSSSLOT) before anything runs; a wrapper has no keys of its own and
        // would run it here, where the key is not.
        if keys_elsewhere(fctx, n) {
            return;
        }
        if recipes {
            let args = |i: usize| filter_arg(fctx, i as c_int);
            match crate::recipes::filter(&name, &args, n.max(0) as usize, &|| plain_client(fctx)) {
                recipes::admission::Admission::Refuse(msg) => {
                    insert_arg(fctx, 0, crate::recipes::REFUSE.as_bytes());
                    insert_arg(fctx, 1, msg.as_bytes());
                    return;
                }
                recipes::admission::Admission::Wrap => {
                    // RG.WTRUN runs the command's hook itself, if it has one.
                    insert_arg(fctx, 0, crate::recipes::WT_RUN.as_bytes());
                    return;
                }
                recipes::admission::Admission::Pass => {}
            }
        }
        let first = if n > 1 { filter_arg(fctx, 1) } else { None };
        let hooked = engine.sessions.has_hooks() && engine.sessions.hook_for(&name, first.as_deref()).is_some();
        if !hooked && !(deferring && crate::triggers::must_defer(fctx, &name, n)) {
            return;
        }
        insert_arg(fctx, 0, hook_run_for(&name).as_bytes());
    });
}

/// Is the filtered command a connected client's, outside MULTI? Known on servers that
/// give the filter its client (7.2+, Valkey); false elsewhere, for scripts' and modules'
/// calls (their clients are not connected ones) and for commands queued in MULTI.
fn plain_client(fctx: *mut raw::RedisModuleCommandFilterCtx) -> bool {
    crate::clients::plain(fctx)
}

/// On a cluster node: does the filtered command name a key of a slot this node does not
/// serve?
fn keys_elsewhere(fctx: *mut raw::RedisModuleCommandFilterCtx, argc: c_int) -> bool {
    let Some(topology) = crate::cluster::topology() else { return false };
    // SAFETY: reading a function pointer the server filled in at module load.
    let Some(get_keys) = (unsafe { raw::RedisModule_GetCommandKeys }) else { return false };
    // SAFETY: inside the filter callback: the argument strings belong to the command and
    // stay valid for this call; the key positions array is freed with RM_Free.
    unsafe {
        let mut argv: Vec<*mut raw::RedisModuleString> = (0..argc).map(|i| raw::RedisModule_CommandFilterArgGet.unwrap()(fctx, i)).collect();
        if argv.is_empty() || argv.iter().any(|a| a.is_null()) {
            return false;
        }
        let mut n: c_int = 0;
        let positions = get_keys(std::ptr::null_mut(), argv.as_mut_ptr(), argc, &mut n);
        if positions.is_null() {
            return false;
        }
        let elsewhere = std::slice::from_raw_parts(positions, n.max(0) as usize).iter().any(|&i| {
            let Some(&arg) = argv.get(i as usize) else { return false };
            let mut len = 0usize;
            let p = raw::RedisModule_StringPtrLen.unwrap()(arg, &mut len);
            !topology.owns_slot(engine::cluster::key_slot(std::slice::from_raw_parts(p as *const u8, len)))
        });
        raw::RedisModule_Free.unwrap()(positions as *mut c_void);
        elsewhere
    }
}

/// Inserts an argument into the filtered command.
fn insert_arg(fctx: *mut raw::RedisModuleCommandFilterCtx, pos: c_int, arg: &[u8]) {
    // SAFETY: the new string is handed over to the filtered command, which frees it.
    unsafe {
        let s = raw::RedisModule_CreateString.unwrap()(std::ptr::null_mut(), arg.as_ptr() as *const c_char, arg.len());
        raw::RedisModule_CommandFilterArgInsert.unwrap()(fctx, pos, s);
    }
}

pub fn register_filter(ctx: &Context) -> bool {
    // NOSELF: the module's own calls (callNext, execute) are not filtered again.
    // SAFETY: called once from the module's load function with its context.
    let f = unsafe { raw::RedisModule_RegisterCommandFilter.unwrap()(ctx.ctx, Some(on_command), raw::REDISMODULE_CMDFILTER_NOSELF as c_int) };
    !f.is_null() && crate::clients::subscribe(ctx.ctx)
}

/// The ACL user of the client that sent the command being handled, or why there is none
/// to trust. Commands from the primary or the AOF have none (`Ok(None)`): they replay what
/// was already decided. A call made by a module (a script's `execute()`, say) has no
/// client of its own: internal commands refuse it rather than guess a user.
pub(crate) fn caller(ctx: &Context, command: &str) -> Result<Option<String>, String> {
    let flags = ctx.get_flags();
    if flags.contains(ContextFlags::REPLICATED) || flags.contains(ContextFlags::LOADING) {
        return Ok(None);
    }
    if flags.contains(ContextFlags::LUA) {
        // EVAL's commands run with the script caller's user on the script's client.
        return Ok(Some(ctx.get_current_user().to_string_lossy()));
    }
    crate::acl::connection_user(ctx)
        .map(Some)
        .ok_or_else(|| format!("ERR {command} is what Gears turns hooked commands and recipe writes into; it cannot be called from scripts or modules"))
}

/// Checks the command an internal wrapper (RG.HOOKRUN, RG.WTRUN) is asked to run: it must
/// exist and must not be one of the module's own commands (wrappers never nest).
pub(crate) fn check_wrapped(ctx: &Context, wrapper: &str, argv: &[Vec<u8>]) -> Result<(), String> {
    let Some(name) = argv.first() else {
        return Err(format!("ERR wrong number of arguments for '{wrapper}' command"));
    };
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    if name.starts_with("rg.") {
        return Err(format!("ERR {wrapper} runs the command a hook or recipe intercepts; it cannot run '{name}'"));
    }
    if crate::commands_info::exists(&name) == Some(false) {
        // A module loaded after this one may have added it: read the table again once.
        crate::commands_info::refresh(ctx);
        if crate::commands_info::exists(&name) == Some(false) {
            let shown: String = argv[1..].iter().take(8).map(|a| format!("'{}' ", String::from_utf8_lossy(&a[..a.len().min(128)]))).collect();
            return Err(format!("ERR unknown command '{}', with args beginning with: {shown}", String::from_utf8_lossy(&argv[0])));
        }
    }
    Ok(())
}

/// RG.HOOKRUN <command> [arg ...]: what a hooked command becomes (not for clients to send,
/// though sending it is the same as sending the command itself).
pub fn hook_run(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let argv: Vec<Vec<u8>> = args.iter().skip(1).map(|a| a.as_slice().to_vec()).collect();
        let wrapper = args.first().map(|a| a.to_string_lossy().to_ascii_lowercase()).unwrap_or_else(|| "rg.hookrun".into());
        if let Err(e) = check_wrapped(ctx, &wrapper, &argv) {
            reply::error(ctx, &e);
            return Ok(RedisValue::NoReply);
        }
        let user = match caller(ctx, &wrapper) {
            Ok(u) => u,
            Err(e) => {
                reply::error(ctx, &e);
                return Ok(RedisValue::NoReply);
            }
        };
        let flags = ctx.get_flags();
        // The primary's stream and the AOF carry what hooks already decided (no user then);
        // commands from EVAL scripts are not hooked, but still run as the script's caller.
        let bypass = flags.contains(ContextFlags::REPLICATED) || flags.contains(ContextFlags::LOADING) || flags.contains(ContextFlags::LUA);
        let engine = engine();
        let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
        let hook = if bypass { None } else { engine.sessions.hook_for(&name, argv.get(1).map(|a| a.as_slice())) };
        // Sync triggers its events fire run after it (Redis 7.0; see `defer`).
        crate::defer::around(ctx.ctx, || {
            let Some(hook) = hook else {
                // Not hooked (or not here): the command's own reply, as the client would get it.
                let refs: Vec<&[u8]> = argv.iter().map(|a| a.as_slice()).collect();
                if let Err(e) = crate::host::forward(ctx, user.as_deref(), &refs) {
                    reply::error(ctx, &e.to_string());
                }
                return;
            };
            match run_hooked(ctx, &argv, user, Some(hook)) {
                Ok(v) => reply::reply(ctx, &v),
                Err(e) => reply::error(ctx, &e),
            }
        });
        Ok(RedisValue::NoReply)
    })
}

/// Runs a command through its hook, if it has one (else runs it as is), in place, as
/// `user`; returns its reply or the error to send.
pub fn run(ctx: &Context, argv: &[Vec<u8>], user: Option<String>, bypass: bool) -> Result<Value, String> {
    let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
    let hooked = if bypass { None } else { engine().sessions.hook_for(&name, argv.get(1).map(|a| a.as_slice())) };
    run_hooked(ctx, argv, user, hooked)
}

/// Runs a command through `hooked` (the hook found for it, if any), in place, as `user`.
fn run_hooked(ctx: &Context, argv: &[Vec<u8>], user: Option<String>, hooked: Option<(Arc<engine::Session>, Arc<engine::Registration>)>) -> Result<Value, String> {
    let engine = engine();
    let host: Arc<dyn engine::Host> = Arc::new(InPlaceHost::new(ctx.ctx, redis_host().clone()));
    let refs: Vec<&[u8]> = argv.iter().map(|a| a.as_slice()).collect();
    let pass_through = || host.lock(0).call(user.as_deref(), &refs).map_err(|e| e.to_string());
    let Some((session, reg)) = hooked else {
        return pass_through();
    };
    // Redis checked the client's permissions for RG.HOOKRUN, not for the command it stands
    // for: a client may not get a hook's answer for a command it may not run.
    if let Some(u) = user.as_deref() {
        crate::host::check_acl(ctx, u, &refs).map_err(|e| e.to_string())?;
    }
    let record = Value::Array(argv.iter().map(|a| Value::from_bytes(a.clone())).collect());
    let call = HookCall { args: argv.to_vec() };
    // The hook's commands run with its owner's rights intersected with the client's.
    match engine.fire_for(host.clone(), &session, &reg, vec![record], Some(call), user.clone()) {
        Ok(out) if !out.errors.is_empty() => Err(out.errors.join("; ")),
        // Steps that let nothing through leave the command as it was.
        Ok(out) if out.results.is_empty() => pass_through(),
        Ok(mut out) if out.results.len() == 1 => Ok(out.results.remove(0)),
        Ok(out) => Ok(Value::Array(out.results)),
        Err(e) => Err(e.message),
    }
}
