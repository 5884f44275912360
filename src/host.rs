//! `RedisHost`: the engine's `Host` on top of the Redis Module API.

use crate::reply;
use engine::{Host, HostError, LockedHost, LogLevel, Value};
use redis_module::{raw, CallOptionResp, CallOptions, CallOptionsBuilder, Context, ContextGuard, DetachedFromClient, ThreadSafeContext};
use std::os::raw::c_char;

#[path = "host_keys.rs"]
mod keys;

pub struct RedisHost {
    shard_id: String,
    /// Calls the module makes for itself (captures, sessions): no user, and writes the
    /// server already accepted are not refused for memory.
    internal: CallOptions,
    /// Calls made for a user (scripts' `execute()`, hooks' `callNext()`): deny-oom applies
    /// as it would to the user's own command. Index: [ACL checked by the server][no writes].
    user: [[CallOptions; 2]; 2],
    /// When the last lock taken from a worker was released and how long it was held (ns
    /// since `epoch`): the next one waits as long again, so that the main thread serves
    /// clients between back-to-back `atomic()` blocks and batches.
    fairness: parking_lot::Mutex<(Option<std::time::Instant>, std::time::Duration)>,
}

/// The longest a worker waits for the main thread's turn before taking the lock again.
const MAX_FAIR_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

// SAFETY: CallOptions is an immutable C string built once.
unsafe impl Send for RedisHost {}
unsafe impl Sync for RedisHost {}

impl RedisHost {
    pub fn new(shard_id: String) -> RedisHost {
        // Replicated (writes reach replicas and the AOF), RESP3 replies, errors as replies,
        // and script mode: commands that must not run from scripts are refused.
        let base = || CallOptionsBuilder::new().replicate().errors_as_replies().script_mode().resp(CallOptionResp::Resp3);
        let user = |acl: bool, no_writes: bool| {
            let mut b = base().verify_oom();
            if acl {
                b = b.verify_acl();
            }
            if no_writes {
                b = b.no_writes();
            }
            b.build()
        };
        RedisHost {
            shard_id,
            internal: base().build(),
            user: [[user(false, false), user(false, true)], [user(true, false), user(true, true)]],
            fairness: parking_lot::Mutex::new((None, std::time::Duration::ZERO)),
        }
    }

    /// Waits, if the previous worker lock was released just now, for as long as it was
    /// held (at most MAX_FAIR_WAIT): Redis's lock is not fair, and a worker that locks
    /// again at once would starve the main thread.
    fn wait_turn(&self) {
        let (released, held) = *self.fairness.lock();
        if let Some(released) = released {
            // Short holds (a batch of reads) leave gaps of their own.
            let turn = if held < std::time::Duration::from_millis(2) { std::time::Duration::ZERO } else { held.min(MAX_FAIR_WAIT) };
            let since = released.elapsed();
            if since < turn {
                std::thread::sleep(turn - since);
            }
        }
    }
}

struct Locked<'a> {
    /// The ACL user attached to the context (SetContextUser), kept for the whole lock so
    /// a batch of reads looks the user up once.
    user: std::cell::RefCell<Option<(String, *mut raw::RedisModuleUser)>>,
    /// The context commands run in.
    ctx: Context,
    /// The lock taken for this guard (None when running in place, already locked).
    // Field order matters: the guard (lock) is released before its context is freed.
    guard: Option<(ContextGuard, ThreadSafeContext<DetachedFromClient>)>,
    host: &'a RedisHost,
    /// False inside a keyspace event on servers without post-notification jobs: a write
    /// there would corrupt the command that fired the event.
    writes: bool,
    /// When the lock was taken (for the fairness wait of the next one).
    since: std::time::Instant,
    /// Key reads: the ACL user object for their checks, looked up once per lock (see
    /// `keys`).
    acl: std::cell::RefCell<Option<(String, *mut raw::RedisModuleUser)>>,
}

/// The host of code that runs inside a command or a keyspace event (sync triggers): the
/// server is already locked by this thread, so commands run in place in that context.
pub struct InPlaceHost {
    ctx: *mut raw::RedisModuleCtx,
    host: std::sync::Arc<RedisHost>,
    writes: bool,
    /// The thread the host belongs to; checked on every use.
    thread: std::thread::ThreadId,
}

// SAFETY: an InPlaceHost is only usable on the thread that made it (`lock` checks it, and
// stdlib refuses `run()` with an in-place host, the one thing that would hand it on); the
// Send/Sync bounds only let it sit in the engine's `Arc<dyn Host>`.
unsafe impl Send for InPlaceHost {}
unsafe impl Sync for InPlaceHost {}

impl InPlaceHost {
    /// A host for code running inside a command (writes allowed).
    pub fn new(ctx: *mut raw::RedisModuleCtx, host: std::sync::Arc<RedisHost>) -> InPlaceHost {
        InPlaceHost { ctx, host, writes: true, thread: std::thread::current().id() }
    }

    /// A host for code running inside a keyspace event, where Redis is in the middle of a
    /// command: scripts' writes are refused with a clear error.
    pub fn read_only(ctx: *mut raw::RedisModuleCtx, host: std::sync::Arc<RedisHost>) -> InPlaceHost {
        InPlaceHost { writes: false, ..InPlaceHost::new(ctx, host) }
    }
}

impl Host for InPlaceHost {
    /// Already locked: commands run in the event's context (and its database).
    fn lock(&self, _db: u32) -> Box<dyn LockedHost + '_> {
        // The context is only valid on its own thread, inside its callback.
        assert_eq!(std::thread::current().id(), self.thread, "an in-place host was used on another thread");
        Box::new(Locked::new(Context::new(self.ctx), None, &self.host, self.writes))
    }
    fn in_place(&self) -> bool {
        true
    }
    fn shard_id(&self) -> String {
        self.host.shard_id()
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.host.log(level, message)
    }
    fn topology(&self) -> Option<std::sync::Arc<engine::cluster::Topology>> {
        crate::cluster::topology()
    }
}

impl Host for RedisHost {
    fn lock(&self, db: u32) -> Box<dyn LockedHost + '_> {
        self.wait_turn();
        let tsc = ThreadSafeContext::new();
        let guard = tsc.lock();
        // SAFETY: the GIL is held; SelectDb only changes this context's database.
        unsafe { raw::RedisModule_SelectDb.unwrap()(guard.ctx, db as i32) };
        let ctx = Context::new(guard.ctx);
        Box::new(Locked::new(ctx, Some((guard, tsc)), self, true))
    }

    fn shard_id(&self) -> String {
        self.shard_id.clone()
    }

    fn topology(&self) -> Option<std::sync::Arc<engine::cluster::Topology>> {
        crate::cluster::topology()
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => redis_module::logging::RedisLogLevel::Debug,
            LogLevel::Verbose => redis_module::logging::RedisLogLevel::Verbose,
            LogLevel::Notice => redis_module::logging::RedisLogLevel::Notice,
            LogLevel::Warning => redis_module::logging::RedisLogLevel::Warning,
        };
        redis_module::logging::log(level, message);
    }
}

thread_local! {
    /// Set while this thread is inside one of the module's own command calls. The command
    /// filter leaves those alone: Redis 7.0 filters a module's calls made outside its
    /// commands (from a worker's lock) despite REDISMODULE_CMDFILTER_NOSELF.
    static OWN_CALL: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Is this thread inside one of the module's own command calls?
pub(crate) fn in_own_call() -> bool {
    OWN_CALL.with(|c| c.get() > 0)
}

/// Marks the module's own call for the command filter while it runs.
fn own_call<R>(f: impl FnOnce() -> R) -> R {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            OWN_CALL.with(|c| c.set(c.get() - 1));
        }
    }
    OWN_CALL.with(|c| c.set(c.get() + 1));
    let _leave = Leave;
    f()
}

impl LockedHost for Locked<'_> {
    /// Runs a command; the sync triggers its events fire run once it returns (see `defer`).
    fn call(&self, user: Option<&str>, args: &[&[u8]]) -> Result<Value, HostError> {
        // A script's write (made for a user) to a recipe's keys is refused like a client's
        // beyond maxBacklog or when its changes cannot be captured; the command filter does
        // not see the module's own calls.
        if user.is_some() {
            refused_by_recipes(args)?;
        }
        // Redis 7.0: a recipe hash this call may replace with another type (see recipes.rs).
        crate::recipes::note_hashes_in_call(self.ctx.ctx, args);
        crate::defer::around(self.ctx.ctx, || own_call(|| self.call_now(user, args))).map_err(|e| crate::cluster::explain_refusal(&self.ctx, args, e))
    }

    fn permitted(&self, user: &str, args: &[&[u8]]) -> Result<(), HostError> {
        check_acl(&self.ctx, user, args)
    }

    fn replicate(&self, args: &[&[u8]]) {
        self.replicate_args(args)
    }

    fn is_primary(&self) -> bool {
        let flags = self.ctx.get_flags();
        flags.contains(redis_module::ContextFlags::MASTER) && !flags.contains(redis_module::ContextFlags::LOADING)
    }

    /// Over the cluster bus; the lock this guard holds is what makes it safe off the main
    /// thread.
    fn send(&self, to: &str, payload: &[u8]) -> Result<(), HostError> {
        crate::cluster::send(to, payload)
    }

    /// Through the key API (see `keys`).
    fn read_key(&self, user: Option<&str>, key: &[u8], read_value: bool) -> Result<Option<engine::KeyRecord>, HostError> {
        self.read_native(user, key, read_value)
    }

    /// The stream iterator (see `keys`).
    fn read_stream(&self, user: Option<&str>, stream: &[u8], start: &str, exclusive: bool, count: usize) -> Result<Vec<(String, Value)>, HostError> {
        self.read_stream_native(user, stream, start, exclusive, count)
    }

    /// RM_StreamAdd, replicated as XADD with the id given (see `keys`).
    fn stream_add(&self, stream: &[u8], fields: &[&[u8]]) -> Result<String, HostError> {
        self.stream_add_native(stream, fields)
    }

    fn scan_keys(&self, user: Option<&str>, scan: &mut engine::KeyScan, pattern: &[u8], read_value: bool, budget: engine::ScanBudget) -> Result<Vec<Result<engine::KeyRecord, (Vec<u8>, HostError)>>, HostError> {
        self.scan_native(user, scan, pattern, read_value, budget)
    }
}

impl<'a> Locked<'a> {
    fn new(ctx: Context, guard: Option<(ContextGuard, ThreadSafeContext<DetachedFromClient>)>, host: &'a RedisHost, writes: bool) -> Locked<'a> {
        Locked {
            user: std::cell::RefCell::new(None),
            ctx,
            guard,
            host,
            writes,
            since: std::time::Instant::now(),
            acl: std::cell::RefCell::new(None),
        }
    }
}

impl Locked<'_> {
    fn call_now(&self, user: Option<&str>, args: &[&[u8]]) -> Result<Value, HostError> {
        let ctx: &Context = &self.ctx;
        let Some((cmd, rest)) = args.split_first() else {
            return Err(HostError::Command("ERR empty command".into()));
        };
        let cmd = std::str::from_utf8(cmd).map_err(|_| HostError::Command("ERR command name is not valid UTF-8".into()))?;
        let no_writes = !self.writes as usize;
        let Some(user) = user else {
            let options = if self.writes { &self.host.internal } else { &self.host.user[0][no_writes] };
            let r: redis_module::CallResult = ctx.call_ext(cmd, options, rest);
            return reply::from_call(&r).map_err(|e| self.refused_write(cmd, e));
        };
        // Where the server has SetContextUser (checked at run time) the call runs as the
        // user itself; older servers get the permissions checked first with
        // ACLCheckCommandPermissions. In place (inside a command or keyspace event) the
        // permissions are always checked first: Redis 7.0 crashes when an ACL-checked
        // RM_Call is refused from a keyspace-event context.
        // SAFETY: reading a function pointer the server filled in at module load.
        let has_context_user = unsafe { raw::RedisModule_SetContextUser }.is_some();
        if !has_context_user || self.guard.is_none() {
            check_acl(ctx, user, args)?;
            let r: redis_module::CallResult = ctx.call_ext(cmd, &self.host.user[0][no_writes], rest);
            return reply::from_call(&r).map_err(|e| self.refused_write(cmd, e));
        }
        self.attach_user(ctx, user)?;
        let r: redis_module::CallResult = ctx.call_ext(cmd, &self.host.user[1][no_writes], rest);
        reply::from_call(&r).map_err(|e| permission_error(user, e))
    }

    /// The error of a call; a write refused inside a keyspace event says why and what to do.
    fn refused_write(&self, cmd: &str, e: String) -> HostError {
        if !self.writes && e.contains("was called while write is not allowed") {
            let (major, minor, patch) = crate::server_version();
            return HostError::Command(format!(
                "ERR '{}' cannot run in a sync trigger on this server ({major}.{minor}.{patch}): a write inside a keyspace event would corrupt the command that fired it; Redis 7.2+ and Valkey run such writes right after the command. Register the trigger with mode 'async', or upgrade the server",
                cmd.to_ascii_lowercase()
            ));
        }
        HostError::Command(e)
    }

    fn replicate_args(&self, args: &[&[u8]]) {
        if let Some((cmd, rest)) = args.split_first() {
            if let Ok(cmd) = std::str::from_utf8(cmd) {
                self.ctx.replicate(cmd, rest);
            }
        }
    }

    /// Makes `user` the context's user (a no-op if it already is).
    fn attach_user(&self, ctx: &Context, user: &str) -> Result<(), HostError> {
        let mut current = self.user.borrow_mut();
        if current.as_ref().is_some_and(|(name, _)| name == user) {
            return Ok(());
        }
        let u = module_user(ctx, user)?;
        // SAFETY: GIL held; the previous user object (if any) is no longer attached once
        // the new one is, and is freed here; the last one is freed in Drop.
        unsafe {
            raw::RedisModule_SetContextUser.unwrap()(ctx.ctx, u);
            if let Some((_, old)) = current.take() {
                raw::RedisModule_FreeModuleUser.unwrap()(old);
            }
        }
        *current = Some((user.to_string(), u));
        Ok(())
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some((_, u)) = self.acl.borrow_mut().take() {
            // SAFETY: runs before the guard field drops, so the GIL is still held.
            unsafe { raw::RedisModule_FreeModuleUser.unwrap()(u) };
        }
        if let Some((_, u)) = self.user.borrow_mut().take() {
            // SAFETY: runs before the guard field drops, so the GIL is still held.
            unsafe {
                raw::RedisModule_SetContextUser.unwrap()(self.ctx.ctx, std::ptr::null_mut());
                raw::RedisModule_FreeModuleUser.unwrap()(u);
            }
        }
        if self.guard.is_some() {
            // The guard field releases the lock right after this.
            *self.host.fairness.lock() = (Some(std::time::Instant::now()), self.since.elapsed());
        }
    }
}

/// The refusal the recipes give a write (maxBacklog, changes that cannot be captured).
fn refused_by_recipes(args: &[&[u8]]) -> Result<(), HostError> {
    let Some(cmd) = args.first() else { return Ok(()) };
    let name = String::from_utf8_lossy(cmd).to_ascii_lowercase();
    match crate::recipes::filter(&name, &|i| args.get(i).map(|a| a.to_vec()), args.len(), &|| false) {
        recipes::admission::Admission::Refuse(msg) => Err(HostError::Command(msg)),
        _ => Ok(()),
    }
}

/// ACL refusals read `NOPERM ...` (7.2+) or `ERR acl verification failed, ...` (7.0):
/// both become `HostError::NoPermission`, naming the user.
fn permission_error(user: &str, e: String) -> HostError {
    if let Some(rest) = e.strip_prefix("NOPERM ") {
        HostError::NoPermission(format!("{rest} (user {user})"))
    } else if let Some(rest) = e.strip_prefix("ERR acl verification failed, ") {
        HostError::NoPermission(format!("User {user} {rest}"))
    } else {
        HostError::Command(e)
    }
}

/// The ACL user object for a name (to be freed with FreeModuleUser).
fn module_user(ctx: &Context, user: &str) -> Result<*mut raw::RedisModuleUser, HostError> {
    // SAFETY: GIL held; the name string is freed right after the lookup.
    unsafe {
        let name = raw::RedisModule_CreateString.unwrap()(ctx.ctx, user.as_ptr() as *const c_char, user.len());
        let u = raw::RedisModule_GetModuleUserFromUserName.unwrap()(name);
        raw::RedisModule_FreeString.unwrap()(ctx.ctx, name);
        if u.is_null() {
            return Err(HostError::NoPermission(format!("user '{user}' does not exist or is disabled")));
        }
        Ok(u)
    }
}

/// Checks that `user` may run the command with these keys (ACL command, key and channel
/// rules), using the Module API available since Redis 7.0.
pub(crate) fn check_acl(ctx: &Context, user: &str, args: &[&[u8]]) -> Result<(), HostError> {
    let u = module_user(ctx, user)?;
    // SAFETY: called with the GIL held (we are inside a locked context); every string
    // and the user object used here are freed before returning.
    unsafe {
        let mut argv: Vec<*mut raw::RedisModuleString> =
            args.iter().map(|a| raw::RedisModule_CreateString.unwrap()(ctx.ctx, a.as_ptr() as *const c_char, a.len())).collect();
        let status = raw::RedisModule_ACLCheckCommandPermissions.unwrap()(u, argv.as_mut_ptr(), argv.len() as i32);
        for s in argv {
            raw::RedisModule_FreeString.unwrap()(ctx.ctx, s);
        }
        raw::RedisModule_FreeModuleUser.unwrap()(u);
        if status != raw::REDISMODULE_OK as i32 {
            let cmd = String::from_utf8_lossy(args.first().copied().unwrap_or_default()).to_ascii_lowercase();
            return Err(HostError::NoPermission(format!(
                "User {user} has no permissions to run the '{cmd}' command or to access its keys"
            )));
        }
    }
    Ok(())
}

/// Runs a command in place for the client being served (a wrapper such as RG.HOOKRUN
/// letting a command through) and replies with the command's own reply, byte for byte:
/// status or bulk, RESP2 or RESP3 as the client speaks, errors as they are. With `user`,
/// the client's permissions are checked first; deny-oom applies as to the command itself.
pub(crate) fn forward(ctx: &Context, user: Option<&str>, args: &[&[u8]]) -> Result<(), HostError> {
    let Some((cmd, _)) = args.split_first() else {
        return Err(HostError::Command("ERR empty command".into()));
    };
    if let Some(user) = user {
        check_acl(ctx, user, args)?;
    }
    let name = std::ffi::CString::new(*cmd).map_err(|_| HostError::Command("ERR the command name contains a NUL byte".into()))?;
    // Replicated, script mode, errors as replies, deny-oom respected, the client's protocol.
    let fmt = if user.is_some() { c"!SEM0v" } else { c"!SE0v" };
    // SAFETY: main thread inside the wrapper command; the argument strings and the reply
    // are freed before returning; `v` takes an array of RedisModuleString and its length.
    unsafe {
        let mut argv: Vec<*mut raw::RedisModuleString> = args[1..].iter().map(|a| raw::RedisModule_CreateString.unwrap()(ctx.ctx, a.as_ptr() as *const c_char, a.len())).collect();
        let reply = own_call(|| raw::RedisModule_Call.unwrap()(ctx.ctx, name.as_ptr(), fmt.as_ptr(), argv.as_mut_ptr(), argv.len()));
        for s in argv {
            raw::RedisModule_FreeString.unwrap()(ctx.ctx, s);
        }
        if reply.is_null() {
            return Err(HostError::Command(format!("ERR '{}' could not run", String::from_utf8_lossy(cmd))));
        }
        raw::RedisModule_ReplyWithCallReply.unwrap()(ctx.ctx, reply);
        raw::RedisModule_FreeCallReply.unwrap()(reply);
    }
    Ok(())
}
