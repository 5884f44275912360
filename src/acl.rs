//! Who is calling an RG command and what that user may do (docs/security.md).
//!
//! Every RG command checks, inside the command, the caller's permission for the core
//! command it is equivalent to (`EVAL` for RG.EXEC, `CONFIG SET` for RG.CONFIGSET, ...):
//! Redis 7.0 has no ACL categories for module commands, so this is what keeps a limited
//! user from doing through Gears what Redis would not let it do directly. On 7.2+ the
//! commands also carry categories, so `-@dangerous` and the like apply before the command.

use engine::Registrant;
use redis_module::{raw, Context, ContextFlags, RedisError};

/// The caller of an RG command: its ACL user (None: the primary, the AOF or another
/// module's call, which no ACL applies to) and whether that user is an admin.
pub struct Caller {
    pub user: Option<String>,
    pub admin: bool,
}

impl Caller {
    pub fn registrant(&self) -> Registrant<'_> {
        Registrant { user: self.user.as_deref(), admin: self.admin }
    }

    /// May the caller see or act on what `owner` owns?
    pub fn owns(&self, owner: Option<&str>) -> bool {
        self.registrant().owns(owner)
    }
}

/// The ACL user of the client that sent the command (None when there is no client user to
/// check: replicated or loaded commands, calls made by modules).
pub fn client_user(ctx: &Context) -> Option<String> {
    let flags = ctx.get_flags();
    if flags.contains(ContextFlags::REPLICATED) || flags.contains(ContextFlags::LOADING) {
        return None;
    }
    connection_user(ctx)
}

/// The user name of the command's client connection, read by client id: None for a call
/// made by a module, which has no client (RM_GetCurrentUserName would dereference its
/// missing user).
pub fn connection_user(ctx: &Context) -> Option<String> {
    // SAFETY: main thread inside a command; the returned string is freed right after use.
    unsafe {
        let id = raw::RedisModule_GetClientId.unwrap()(ctx.ctx);
        if id == 0 {
            return None;
        }
        let name = raw::RedisModule_GetClientUserNameById.unwrap()(ctx.ctx, id);
        if name.is_null() {
            return None;
        }
        let mut len = 0usize;
        let p = raw::RedisModule_StringPtrLen.unwrap()(name, &mut len);
        let user = String::from_utf8_lossy(std::slice::from_raw_parts(p as *const u8, len)).into_owned();
        raw::RedisModule_FreeString.unwrap()(ctx.ctx, name);
        Some(user)
    }
}

/// May `user` run this core command (command, subcommand, keys)?
pub fn allowed(ctx: &Context, user: &str, core: &[&[u8]]) -> bool {
    crate::host::check_acl(ctx, user, core).is_ok()
}

/// Is `user` an admin of Gears (allowed `CONFIG SET`)?
pub fn is_admin(ctx: &Context, user: &str) -> bool {
    allowed(ctx, user, engine::ADMIN_COMMAND)
}

/// The caller, with its admin status.
pub fn caller(ctx: &Context) -> Caller {
    with_admin(ctx, client_user(ctx))
}

/// `user` as a caller: an admin if allowed `CONFIG SET` (or if no ACL applies).
fn with_admin(ctx: &Context, user: Option<String>) -> Caller {
    let admin = user.as_deref().is_none_or(|u| is_admin(ctx, u));
    Caller { user, admin }
}

/// The core command a check stands for, as users read it (`CONFIG SET`).
fn shown(core: &[&[u8]], words: usize) -> String {
    core.iter().take(words).map(|w| String::from_utf8_lossy(w).to_ascii_uppercase()).collect::<Vec<_>>().join(" ")
}

/// Refuses the command unless the caller may run the core command it is equivalent to
/// (`words`: how many of `core`'s words name it: 1 for `EVAL`, 2 for `CONFIG SET`).
/// Returns the caller's user (None: no ACL applies).
pub fn require_user(ctx: &Context, command: &str, core: &[&[u8]], words: usize) -> Result<Option<String>, RedisError> {
    let user = client_user(ctx);
    if let Some(u) = user.as_deref() {
        if !allowed(ctx, u, core) {
            return Err(RedisError::String(format!("NOPERM user '{u}' may not run {command}: it needs the permission to run {}", shown(core, words))));
        }
    }
    Ok(user)
}

/// `require_user`, for a command that also needs to know whether the caller is an admin
/// (to act on what other users own).
pub fn require(ctx: &Context, command: &str, core: &[&[u8]], words: usize) -> Result<Caller, RedisError> {
    Ok(with_admin(ctx, require_user(ctx, command, core, words)?))
}

/// Refuses unless the caller is an admin: `what` is what it tried ("load or delete
/// packages"), `why` names the resource ("packages").
pub fn require_admin(ctx: &Context, what: &str, why: &str) -> Result<Caller, RedisError> {
    let c = caller(ctx);
    match c.user.as_deref() {
        Some(u) if !c.admin => Err(RedisError::String(format!("NOPERM user '{u}' may not {what}: {why} need admin rights (the permission to run CONFIG SET)"))),
        _ => Ok(c),
    }
}

/// Refuses acting on something `owner` owns unless the caller is that user or an admin.
pub fn require_owner(c: &Caller, what: &str, id: &str, owner: Option<&str>) -> Result<(), RedisError> {
    if c.owns(owner) {
        Ok(())
    } else {
        Err(RedisError::String(engine::not_owner(what, id, owner)))
    }
}

/// Core commands RG commands are checked against.
pub const EVAL: &[&[u8]] = &[b"EVAL", b"return 0", b"0"];
pub const FCALL: &[&[u8]] = &[b"FCALL", b"f", b"0"];
pub const FUNCTION_LIST: &[&[u8]] = &[b"FUNCTION", b"LIST"];
pub const FUNCTION_DELETE: &[&[u8]] = &[b"FUNCTION", b"DELETE", b"x"];
pub const CONFIG_GET: &[&[u8]] = &[b"CONFIG", b"GET", b"x"];
pub const CONFIG_SET: &[&[u8]] = engine::ADMIN_COMMAND;
