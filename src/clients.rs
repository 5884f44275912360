//! What the command filter knows of the clients whose commands it sees: whether a client is
//! a connected one (not a script's or a module's) and whether it is inside MULTI. Asking the
//! server (`RM_GetClientInfoById`) costs a system call per command (it formats the peer's
//! address), so each client is asked once and its MULTI state is then followed from the
//! commands it sends.
//!
//! Why following is safe: a client enters MULTI only by a MULTI command and leaves it only by
//! EXEC, DISCARD or RESET (or by going away). A MULTI that was refused leaves this table
//! thinking "in MULTI", which only costs a wrapper. An EXEC, DISCARD or RESET that was
//! refused (ACL, cluster redirection, ...) leaves the client in MULTI while this table thinks
//! it left, but a refused command inside MULTI dooms the transaction (Redis answers its EXEC
//! with EXECABORT): nothing queued after it ever runs. Ids are never reused, so whether an id
//! is a connected client never changes; a client's entry goes when it disconnects.

use redis_module::raw;
use std::collections::HashMap;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

struct Known {
    connected: bool,
    multi: bool,
}

static CLIENTS: parking_lot::Mutex<Option<HashMap<u64, Known>>> = parking_lot::Mutex::new(None);
/// Set while CLIENTS holds entries (so that forgetting them costs nothing when it is empty).
static HELD: AtomicBool = AtomicBool::new(false);

/// The filtered command's client id, on servers that give it (7.2+, Valkey).
fn client_id(fctx: *mut raw::RedisModuleCommandFilterCtx) -> Option<u64> {
    // SAFETY: reading a function pointer the server filled in at module load; the filter
    // context is live for this callback.
    unsafe { raw::RedisModule_CommandFilterGetClientId.map(|f| f(fctx)) }
}

/// Asks the server: (is `id` a connected client, is it inside MULTI).
fn ask(id: u64) -> Option<(bool, bool)> {
    // SAFETY: reading a function pointer the server filled in at module load; `ci` is a
    // version-1 client info the server fills.
    unsafe {
        let info = raw::RedisModule_GetClientInfoById?;
        let mut ci: raw::RedisModuleClientInfo = std::mem::zeroed();
        ci.version = raw::REDISMODULE_CLIENTINFO_VERSION as u64;
        if info(&mut ci as *mut raw::RedisModuleClientInfo as *mut std::os::raw::c_void, id) != raw::REDISMODULE_OK as c_int {
            // Not a connected client: a script's or a module's.
            return Some((false, false));
        }
        Some((true, ci.flags & raw::REDISMODULE_CLIENTINFO_FLAG_MULTI as u64 != 0))
    }
}

/// Is the filtered command a connected client's, outside MULTI? False on servers that do
/// not say which client sent it (7.0).
pub(crate) fn plain(fctx: *mut raw::RedisModuleCommandFilterCtx) -> bool {
    let Some(id) = client_id(fctx) else { return false };
    let mut clients = CLIENTS.lock();
    let map = clients.get_or_insert_with(HashMap::new);
    if let Some(k) = map.get(&id) {
        return k.connected && !k.multi;
    }
    let Some((connected, multi)) = ask(id) else { return false };
    map.insert(id, Known { connected, multi });
    HELD.store(true, Ordering::Relaxed);
    connected && !multi
}

/// Follows the MULTI state of a known client from the command it sends (`name` in lower
/// case). Called for every filtered command while recipes exist.
pub(crate) fn seen(fctx: *mut raw::RedisModuleCommandFilterCtx, name: &str) {
    let entering = match name {
        "multi" => true,
        "exec" | "discard" | "reset" => false,
        _ => return,
    };
    if !HELD.load(Ordering::Relaxed) {
        return;
    }
    let Some(id) = client_id(fctx) else { return };
    if let Some(k) = CLIENTS.lock().as_mut().and_then(|m| m.get_mut(&id)) {
        k.multi = entering;
    }
}

/// Forgets every client: called when the filter stops following commands (no recipe
/// left), since what it knew of MULTI states would grow stale.
pub(crate) fn forget_all() {
    if HELD.swap(false, Ordering::Relaxed) {
        *CLIENTS.lock() = None;
    }
}

extern "C" fn on_client_change(_ctx: *mut raw::RedisModuleCtx, _event: raw::RedisModuleEvent, subevent: u64, data: *mut std::os::raw::c_void) {
    let _ = std::panic::catch_unwind(|| {
        if subevent != raw::REDISMODULE_SUBEVENT_CLIENT_CHANGE_DISCONNECTED || data.is_null() || !HELD.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: for this event Redis passes the client's RedisModuleClientInfo, valid
        // for the callback.
        let id = unsafe { (*(data as *const raw::RedisModuleClientInfo)).id };
        if let Some(m) = CLIENTS.lock().as_mut() {
            m.remove(&id);
        }
    });
}

/// Subscribes to client disconnections (entries of clients gone are dropped).
pub(crate) fn subscribe(ctx: *mut raw::RedisModuleCtx) -> bool {
    let event = raw::RedisModuleEvent { id: raw::REDISMODULE_EVENT_CLIENT_CHANGE, dataver: 1 };
    // SAFETY: called once from the module's load function with its context.
    unsafe { raw::RedisModule_SubscribeToServerEvent.unwrap()(ctx, event, Some(on_client_change)) == raw::REDISMODULE_OK as c_int }
}
