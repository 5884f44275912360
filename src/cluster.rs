//! This node in a Redis Cluster: its view of the primaries and their slots (read from
//! `CLUSTER NODES` on the main thread, every second and on RG.REFRESHCLUSTER), the cluster
//! bus carrying the coordinators' messages between shards, and the explanation of a script
//! command refused because its key lives on another shard.

use crate::reply;
use engine::cluster::{key_slot, Topology};
use engine::{HostError, Value};
use parking_lot::{Mutex, RwLock};
use redis_module::{raw, CallOptionResp, CallOptionsBuilder, Context, ContextFlags};
use std::os::raw::{c_char, c_int, c_uchar};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cluster-bus message type of every Gears message.
pub const GEARS_MSG_TYPE: u8 = 71;

/// Node ids are 40 hex characters; the Module API gives them without a NUL.
const NODE_ID_LEN: usize = raw::REDISMODULE_NODE_ID_LEN as usize;

/// How often the main thread reads the topology again.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// At most one warning about messages from unknown senders per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The topology as last read; None on a server that is not a cluster node.
static TOPOLOGY: RwLock<Option<Arc<Topology>>> = RwLock::new(None);

/// A context of this module for sending: `RedisModule_SendClusterMessage` reads the module
/// from its context, which the thread-safe contexts of worker locks lack.
static SEND_CTX: AtomicPtr<raw::RedisModuleCtx> = AtomicPtr::new(std::ptr::null_mut());

/// Does the server run in cluster mode?
pub fn enabled(ctx: &Context) -> bool {
    ctx.get_flags().contains(ContextFlags::CLUSTER)
}

/// This node's cluster id; None when the server is not a cluster node.
pub fn my_id() -> Option<String> {
    // SAFETY: GetMyClusterID returns NULL outside cluster mode, else the node's name: 40
    // bytes, not NUL-terminated, owned by the server; they are copied at once.
    unsafe {
        let p = raw::RedisModule_GetMyClusterID?();
        if p.is_null() {
            return None;
        }
        let id = std::slice::from_raw_parts(p as *const u8, NODE_ID_LEN);
        Some(String::from_utf8_lossy(id).into_owned())
    }
}

/// The cluster as last read; None on a server that is not a cluster node.
pub fn topology() -> Option<Arc<Topology>> {
    TOPOLOGY.read().clone()
}

/// At load, on a cluster node: reads the topology, starts the bus receiver and the periodic
/// refresh. Nothing to do elsewhere. False if the bus cannot be used.
pub fn init(ctx: &Context) -> bool {
    if !enabled(ctx) {
        return true;
    }
    // SAFETY: called from the module's load function with its context; the detached
    // context lives as long as the server (the module cannot be unloaded).
    unsafe {
        let Some(detached) = raw::RedisModule_GetDetachedThreadSafeContext else { return false };
        SEND_CTX.store(detached(ctx.ctx), Ordering::Release);
        let Some(register) = raw::RedisModule_RegisterClusterMessageReceiver else { return false };
        register(ctx.ctx, GEARS_MSG_TYPE, Some(on_message));
    }
    if let Err(e) = refresh(ctx) {
        ctx.log_warning(&format!("rg: could not read the cluster topology at load: {e}"));
    }
    arm_refresh(ctx);
    true
}

/// Reads `CLUSTER NODES` again and publishes the result if it changed. Main thread only.
pub fn refresh(ctx: &Context) -> Result<Arc<Topology>, String> {
    let fresh = read(ctx)?;
    let mut slot = TOPOLOGY.write();
    if let Some(old) = slot.as_ref().filter(|old| ***old == fresh) {
        return Ok(old.clone());
    }
    let first = slot.is_none();
    let fresh = Arc::new(fresh);
    *slot = Some(fresh.clone());
    drop(slot);
    if !first {
        ctx.log_notice(&format!("rg: cluster topology changed: {}", summary(&fresh)));
    }
    Ok(fresh)
}

/// `3 primaries: <id> (<addr>) 0-5460, ...; this node <id>`.
fn summary(t: &Topology) -> String {
    let shards: Vec<String> = t
        .shards
        .iter()
        .map(|s| {
            let slots: Vec<String> = s.slots.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
            format!("{} ({}) {}", s.id, s.addr, slots.join(","))
        })
        .collect();
    format!("{} primaries: {}; this node {}", t.shards.len(), shards.join(", "), t.me)
}

/// The topology from `CLUSTER NODES`: the primaries that own slots. Not `CLUSTER SLOTS`:
/// Valkey 8.0 crashes when a module calls it outside a client's command (from this timer),
/// as its cached reply is built by a client without a connection.
fn read(ctx: &Context) -> Result<Topology, String> {
    let me = my_id().ok_or("the server is not a cluster node")?;
    if let Some(loaded) = crate::REDIS_HOST.get().map(|h| engine::Host::shard_id(&**h)) {
        if loaded != me {
            warn_id_changed(ctx, &loaded, &me);
        }
    }
    let options = CallOptionsBuilder::new().errors_as_replies().resp(CallOptionResp::Resp3).build();
    let r: redis_module::CallResult = ctx.call_ext("CLUSTER", &options, &["NODES"]);
    let nodes = reply::from_call(&r)?.as_str_lossy().ok_or("CLUSTER NODES did not reply with text")?;
    Ok(Topology::from_cluster_nodes(me, &nodes))
}

/// CLUSTER RESET HARD gives a node a new id; executions keep the id the module loaded with.
fn warn_id_changed(ctx: &Context, loaded: &str, now: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        ctx.log_warning(&format!("rg: this node's cluster id changed from {loaded} to {now} (CLUSTER RESET HARD?); Gears keeps using the old one as its shard id until the server restarts"));
    });
}

/// Refreshes the topology every REFRESH_EVERY, from a timer that arms itself again.
fn arm_refresh(ctx: &Context) {
    ctx.create_timer(
        REFRESH_EVERY,
        |ctx: &Context, ()| {
            let refreshed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| refresh(ctx)));
            if let Ok(Err(e)) = refreshed {
                warn_limited(&format!("rg: could not refresh the cluster topology: {e}"));
            }
            arm_refresh(ctx);
        },
        (),
    );
}

/// Sends a coordinator message to node `to` over the cluster bus. The caller holds the
/// server's lock (a `LockedHost`).
pub fn send(to: &str, payload: &[u8]) -> Result<(), HostError> {
    let ctx = SEND_CTX.load(Ordering::Acquire);
    if ctx.is_null() {
        return Err(HostError::Other(format!("cannot send to shard {to}: this server is not a cluster node")));
    }
    let len = u32::try_from(payload.len()).map_err(|_| HostError::Other(format!("cannot send to shard {to}: a message of {} bytes is too long for the cluster bus", payload.len())))?;
    let target = std::ffi::CString::new(to).map_err(|_| HostError::Other(format!("cannot send to shard {to:?}: not a node id")))?;
    // SAFETY: the server's lock is held by the caller; the context is this module's own
    // detached context (only its module is read); id and payload outlive the call, which
    // copies them into the link's buffer.
    let status = unsafe { raw::RedisModule_SendClusterMessage.unwrap()(ctx, target.as_ptr(), GEARS_MSG_TYPE, payload.as_ptr() as *const c_char, len) };
    if status != raw::REDISMODULE_OK as c_int {
        return Err(HostError::Other(format!("cannot send to shard {to}: the cluster bus knows no such node or has no link to it")));
    }
    Ok(())
}

/// Is `id` a node this one knows (not in handshake)?
fn known_node(ctx: *mut raw::RedisModuleCtx, id: &str) -> bool {
    let Ok(id) = std::ffi::CString::new(id) else { return false };
    // SAFETY: main thread in a bus callback; a NUL-terminated id and no output buffers.
    unsafe {
        raw::RedisModule_GetClusterNodeInfo.unwrap()(ctx, id.as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut())
            == raw::REDISMODULE_OK as c_int
    }
}

/// A message of type GEARS_MSG_TYPE from another node (main thread).
extern "C" fn on_message(ctx: *mut raw::RedisModuleCtx, sender: *const c_char, _kind: u8, payload: *const c_uchar, len: u32) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the server passes the sender's 40-byte name (no NUL) and `len` payload
        // bytes, both valid for the duration of this callback; they are not kept.
        let (from, payload) = unsafe {
            let id = std::slice::from_raw_parts(sender as *const u8, NODE_ID_LEN);
            let payload = if len == 0 || payload.is_null() { &[][..] } else { std::slice::from_raw_parts(payload, len as usize) };
            (String::from_utf8_lossy(id).into_owned(), payload)
        };
        if !known_node(ctx, &from) {
            warn_limited(&format!("rg: dropped a cluster message of {len} bytes from {from}, which is not a known node"));
            return;
        }
        crate::engine().cluster_deliver(&from, payload);
    });
}

/// Logs a warning, at most once per WARN_EVERY (how many were left out is said next time).
fn warn_limited(msg: &str) {
    static LAST: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));
    let mut last = LAST.lock();
    if last.0.is_some_and(|t| t.elapsed() < WARN_EVERY) {
        last.1 += 1;
        return;
    }
    let skipped = std::mem::take(&mut last.1);
    last.0 = Some(Instant::now());
    drop(last);
    let more = if skipped > 0 { format!(" ({skipped} more such warnings in the last {} s)", WARN_EVERY.as_secs()) } else { String::new() };
    redis_module::logging::log(redis_module::logging::RedisLogLevel::Warning, &format!("{msg}{more}"));
}

/// A command refused because a key is not served here ("non local key") becomes an
/// error naming the key, its slot and the shard that serves it. Other errors are kept. Runs
/// only on the error path, with the server's lock held.
pub fn explain_refusal(ctx: &Context, args: &[&[u8]], e: HostError) -> HostError {
    let HostError::Command(text) = &e else { return e };
    if !text.contains("non local key") {
        return e;
    }
    let Some(t) = topology() else { return e };
    let keys = command_keys(ctx, args);
    for key in &keys {
        let slot = key_slot(key);
        if t.owns_slot(slot) {
            continue;
        }
        let key = String::from_utf8_lossy(key);
        return HostError::Command(match t.owner_of_slot(slot) {
            Some(owner) => format!("execute: key '{key}' is in slot {slot}, served by shard {} ({}), not by this one", owner.id, owner.addr),
            None => format!("execute: key '{key}' is in slot {slot}, which no shard serves now"),
        });
    }
    // Every key is served here: they are in different slots.
    let mut slots = keys.iter().map(|k| (k, key_slot(k)));
    if let Some((k1, s1)) = slots.next() {
        if let Some((k2, s2)) = slots.find(|(_, s)| *s != s1) {
            return HostError::Command(format!(
                "execute: keys '{}' (slot {s1}) and '{}' (slot {s2}) are in different slots; on a cluster one command's keys must share a slot (use a hashtag)",
                String::from_utf8_lossy(k1),
                String::from_utf8_lossy(k2)
            ));
        }
    }
    e
}

/// The keys of a command, by `COMMAND GETKEYS` (none if the server cannot tell).
fn command_keys(ctx: &Context, args: &[&[u8]]) -> Vec<Vec<u8>> {
    let options = CallOptionsBuilder::new().errors_as_replies().resp(CallOptionResp::Resp3).build();
    let mut argv: Vec<&[u8]> = vec![b"GETKEYS"];
    argv.extend_from_slice(args);
    let r: redis_module::CallResult = ctx.call_ext("COMMAND", &options, argv.as_slice());
    match reply::from_call(&r) {
        Ok(Value::Array(keys)) => keys.iter().filter_map(|k| k.as_bytes().map(|b| b.into_owned())).collect(),
        _ => Vec::new(),
    }
}
