//! Reading keys through the Module key API: the KeysReader's walk over the keyspace
//! (`RM_Scan`) and each key's value (`RM_OpenKey` and the type's own access: string DMA,
//! `RM_ScanKey` for hashes and sets, list, sorted set and stream iterators), with no
//! command dispatch or reply conversion per key. The records are the ones the commands
//! gave (`engine::read_key`), and a user reads what the same commands would let it read:
//! TYPE and the type's read command are checked for each key.

use super::{check_acl, module_user, Locked};
use engine::{glob_match, HostError, KeyRecord, KeyScan, ScanBudget, Value};
use redis_module::raw;
use std::os::raw::{c_char, c_int, c_void};

/// The module scan cursor kept in `KeyScan::native` between lock acquisitions.
struct Cursor(*mut raw::RedisModuleScanCursor);

// SAFETY: the cursor is plain memory owned by this value; it is used only under the lock
// and destroyed (a free, no server state) when the walk ends.
unsafe impl Send for Cursor {}

impl Drop for Cursor {
    fn drop(&mut self) {
        // SAFETY: created by ScanCursorCreate, destroyed once.
        unsafe { raw::RedisModule_ScanCursorDestroy.unwrap()(self.0) }
    }
}

/// What reading many keys under one lock reuses: the command names the ACL checks pass as
/// module strings (made once, not per key) and the cursor of RM_ScanKey.
struct Scratch {
    ctx: *mut raw::RedisModuleCtx,
    names: Vec<(&'static [u8], *mut raw::RedisModuleString)>,
    cursor: *mut raw::RedisModuleScanCursor,
}

impl Scratch {
    fn new(ctx: *mut raw::RedisModuleCtx) -> Scratch {
        Scratch { ctx, names: Vec::new(), cursor: std::ptr::null_mut() }
    }

    /// `b` as a module string, made the first time it is asked for.
    fn name(&mut self, b: &'static [u8]) -> *mut raw::RedisModuleString {
        if let Some((_, s)) = self.names.iter().find(|(n, _)| *n == b) {
            return *s;
        }
        // SAFETY: GIL held (the lock this scratch lives in); freed in Drop.
        let s = unsafe { raw::RedisModule_CreateString.unwrap()(self.ctx, b.as_ptr() as *const c_char, b.len()) };
        self.names.push((b, s));
        s
    }

    /// A key scan cursor at its start.
    fn key_cursor(&mut self) -> *mut raw::RedisModuleScanCursor {
        // SAFETY: plain allocation / reset of a cursor this scratch owns.
        unsafe {
            if self.cursor.is_null() {
                self.cursor = raw::RedisModule_ScanCursorCreate.unwrap()();
            } else {
                raw::RedisModule_ScanCursorRestart.unwrap()(self.cursor);
            }
        }
        self.cursor
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: dropped under the same lock it was made in; each string and the cursor are
        // freed once.
        unsafe {
            for (_, s) in self.names.drain(..) {
                raw::RedisModule_FreeString.unwrap()(self.ctx, s);
            }
            if !self.cursor.is_null() {
                raw::RedisModule_ScanCursorDestroy.unwrap()(self.cursor);
            }
        }
    }
}

/// The bytes of a module string (valid while the string is).
///
/// # Safety
/// `s` must be a live module string.
unsafe fn bytes<'a>(s: *const raw::RedisModuleString) -> &'a [u8] {
    let mut len = 0usize;
    let p = raw::RedisModule_StringPtrLen.unwrap()(s as *mut _, &mut len);
    if p.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(p as *const u8, len)
    }
}

/// The type name TYPE gives, and the command that reads such a value (and its arguments
/// after the key), for the ACL check.
fn kind(t: c_int) -> Option<(&'static str, &'static [u8], &'static [&'static [u8]])> {
    Some(match t as isize {
        raw::REDISMODULE_KEYTYPE_STRING => ("string", b"GET", &[]),
        raw::REDISMODULE_KEYTYPE_HASH => ("hash", b"HGETALL", &[]),
        raw::REDISMODULE_KEYTYPE_LIST => ("list", b"LRANGE", &[b"0", b"-1"]),
        raw::REDISMODULE_KEYTYPE_SET => ("set", b"SMEMBERS", &[]),
        raw::REDISMODULE_KEYTYPE_ZSET => ("zset", b"ZRANGE", &[b"0", b"-1", b"WITHSCORES"]),
        raw::REDISMODULE_KEYTYPE_STREAM => ("stream", b"XRANGE", &[b"-", b"+"]),
        _ => return None,
    })
}

struct ScanState<'a> {
    pattern: &'a [u8],
    names: Vec<Vec<u8>>,
}

extern "C" fn collect_name(_ctx: *mut raw::RedisModuleCtx, name: *mut raw::RedisModuleString, _key: *mut raw::RedisModuleKey, data: *mut c_void) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `data` is the ScanState passed to RM_Scan below, alive for the call; the
        // name is valid during the callback and copied.
        let st = unsafe { &mut *(data as *mut ScanState) };
        let n = unsafe { bytes(name) };
        if glob_match(st.pattern, n) {
            st.names.push(n.to_vec());
        }
    }));
}

extern "C" fn collect_pair(_key: *mut raw::RedisModuleKey, field: *mut raw::RedisModuleString, value: *mut raw::RedisModuleString, data: *mut c_void) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `data` is the Vec passed to RM_ScanKey below; the strings are valid during
        // the callback and copied (the server frees them).
        let out = unsafe { &mut *(data as *mut Vec<(Value, Value)>) };
        let f = Value::from_bytes(unsafe { bytes(field) }.to_vec());
        let v = if value.is_null() { Value::Nil } else { Value::from_bytes(unsafe { bytes(value) }.to_vec()) };
        out.push((f, v));
    }));
}

impl Locked<'_> {
    /// One slice of a KeysReader walk (see `LockedHost::scan_keys`).
    pub(super) fn scan_native(&self, user: Option<&str>, scan: &mut KeyScan, pattern: &[u8], read_value: bool, budget: ScanBudget) -> Result<Vec<Result<KeyRecord, (Vec<u8>, HostError)>>, HostError> {
        if let Some(u) = user {
            check_acl(&self.ctx, u, &[b"SCAN", b"0"])?;
        }
        if !scan.native.as_ref().is_some_and(|n| n.is::<Cursor>()) {
            // SAFETY: plain allocation.
            scan.native = Some(Box::new(Cursor(unsafe { raw::RedisModule_ScanCursorCreate.unwrap()() })));
        }
        let cursor = scan.native.as_ref().and_then(|n| n.downcast_ref::<Cursor>()).map(|c| c.0).ok_or_else(|| HostError::Other("no scan cursor".into()))?;
        let mut state = ScanState { pattern, names: Vec::new() };
        let mut out = Vec::new();
        let mut read = 0usize;
        let mut scratch = Scratch::new(self.ctx.ctx);
        loop {
            // SAFETY: GIL held, database selected; the callback only copies names (the
            // keys are read after RM_Scan returns, never while it walks the table).
            let more = unsafe { raw::RedisModule_Scan.unwrap()(self.ctx.ctx, cursor, Some(collect_name), &mut state as *mut ScanState as *mut c_void) };
            for name in state.names.drain(..) {
                read += 1;
                match self.read_one(user, name, read_value, &mut scratch) {
                    Ok(Some(r)) => out.push(Ok(r)),
                    // Expired or deleted meanwhile.
                    Ok(None) => {}
                    Err(e) => out.push(Err(e)),
                }
            }
            if more == 0 {
                scan.done = true;
                break;
            }
            if read >= budget.keys || std::time::Instant::now() >= budget.until {
                break;
            }
        }
        Ok(out)
    }

    /// One key (see `LockedHost::read_key`): None when it does not exist (an expired key
    /// is deleted as a read would); with `user`, refused as the commands would refuse it.
    pub(super) fn read_native(&self, user: Option<&str>, key: &[u8], read_value: bool) -> Result<Option<KeyRecord>, HostError> {
        self.read_one(user, key.to_vec(), read_value, &mut Scratch::new(self.ctx.ctx)).map_err(|(_, e)| e)
    }

    /// `read_native` of a key whose name is moved into its record (or given back with the
    /// error), with what reading many keys reuses.
    fn read_one(&self, user: Option<&str>, key: Vec<u8>, read_value: bool, scratch: &mut Scratch) -> Result<Option<KeyRecord>, (Vec<u8>, HostError)> {
        let ctx = self.ctx.ctx;
        // SAFETY: GIL held for the whole function (this guard); every string and key
        // opened here is freed or closed before returning.
        unsafe {
            let name = raw::RedisModule_CreateString.unwrap()(ctx, key.as_ptr() as *const c_char, key.len());
            let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_OPEN_KEY_NOTOUCH) as c_int;
            let k = raw::RedisModule_OpenKey.unwrap()(ctx, name, mode) as *mut raw::RedisModuleKey;
            if k.is_null() {
                raw::RedisModule_FreeString.unwrap()(ctx, name);
                return Ok(None);
            }
            let t = raw::RedisModule_KeyType.unwrap()(k);
            let result = match kind(t) {
                None if t as isize == raw::REDISMODULE_KEYTYPE_EMPTY => Ok(None),
                // A module's type: as the commands give it, its LRU/LFU kept as it was.
                None => {
                    raw::RedisModule_CloseKey.unwrap()(k);
                    raw::RedisModule_FreeString.unwrap()(ctx, name);
                    let access = crate::triggers::save_access(ctx, &key);
                    let read = engine::read_key(self, user, &key, read_value);
                    crate::triggers::restore_access(ctx, &key, access);
                    return read.map_err(|e| (key, e));
                }
                Some((type_name, command, rest)) => match user.map(|u| self.may_read(u, name, command, rest, read_value, scratch)).unwrap_or(Ok(())) {
                    Err(e) => Err((key, e)),
                    Ok(()) => {
                        let value = read_value.then(|| value_of(ctx, k, t as isize, scratch));
                        Ok(Some(KeyRecord { key, key_type: type_name.to_string(), value }))
                    }
                },
            };
            raw::RedisModule_CloseKey.unwrap()(k);
            raw::RedisModule_FreeString.unwrap()(ctx, name);
            result
        }
    }

    /// Entries of a stream with the module stream iterator, as XRANGE gives them (see
    /// `LockedHost::read_stream`); a user must be allowed XRANGE on the stream.
    pub(super) fn read_stream_native(&self, user: Option<&str>, stream: &[u8], start: &str, exclusive: bool, count: usize) -> Result<Vec<(String, Value)>, HostError> {
        let from = match start {
            "-" => None,
            s => Some(engine::streams::parse_id(s).ok_or_else(|| HostError::Command("ERR Invalid stream ID specified as stream command argument".into()))?),
        };
        if let Some(u) = user {
            check_acl(&self.ctx, u, &[b"XRANGE", stream, b"-", b"+"])?;
        }
        let ctx = self.ctx.ctx;
        // SAFETY: GIL held for the whole function (this guard); the key is closed and the
        // name freed before returning.
        unsafe {
            let name = raw::RedisModule_CreateString.unwrap()(ctx, stream.as_ptr() as *const c_char, stream.len());
            let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_OPEN_KEY_NOTOUCH) as c_int;
            let k = raw::RedisModule_OpenKey.unwrap()(ctx, name, mode) as *mut raw::RedisModuleKey;
            raw::RedisModule_FreeString.unwrap()(ctx, name);
            if k.is_null() {
                return Ok(Vec::new());
            }
            let t = raw::RedisModule_KeyType.unwrap()(k) as isize;
            if t != raw::REDISMODULE_KEYTYPE_STREAM {
                raw::RedisModule_CloseKey.unwrap()(k);
                return if t == raw::REDISMODULE_KEYTYPE_EMPTY { Ok(Vec::new()) } else { Err(HostError::Command("WRONGTYPE Operation against a key holding the wrong kind of value".into())) };
            }
            let out = stream_entries(ctx, k, from, exclusive, count);
            raw::RedisModule_CloseKey.unwrap()(k);
            Ok(out)
        }
    }

    /// Appends an entry to a stream as `XADD stream * fields...` does (the key made if
    /// missing, WRONGTYPE for another type, the watchers of the key signalled and an
    /// `xadd` keyspace event sent), and replicates it as XADD with the id it got, so that
    /// replicas and the AOF hold the same entry, in the same MULTI as the command running.
    pub(super) fn stream_add_native(&self, stream: &[u8], fields: &[&[u8]]) -> Result<String, HostError> {
        if fields.is_empty() || fields.len() % 2 != 0 {
            return Err(HostError::Command("ERR wrong number of arguments for 'xadd' command".into()));
        }
        let ctx = self.ctx.ctx;
        // SAFETY: GIL held for the whole function (this guard); every string and key made
        // here is freed or closed before returning (the stream copies the fields).
        let id = unsafe {
            let create = |b: &[u8]| raw::RedisModule_CreateString.unwrap()(ctx, b.as_ptr() as *const c_char, b.len());
            let name = create(stream);
            let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int;
            let k = raw::RedisModule_OpenKey.unwrap()(ctx, name, mode) as *mut raw::RedisModuleKey;
            if k.is_null() {
                raw::RedisModule_FreeString.unwrap()(ctx, name);
                return Err(HostError::Other(format!("the stream '{}' cannot be opened for writing", String::from_utf8_lossy(stream))));
            }
            let t = raw::RedisModule_KeyType.unwrap()(k) as isize;
            if t != raw::REDISMODULE_KEYTYPE_EMPTY && t != raw::REDISMODULE_KEYTYPE_STREAM {
                raw::RedisModule_CloseKey.unwrap()(k);
                raw::RedisModule_FreeString.unwrap()(ctx, name);
                return Err(HostError::Command("WRONGTYPE Operation against a key holding the wrong kind of value".into()));
            }
            let mut argv: Vec<*mut raw::RedisModuleString> = fields.iter().map(|f| create(f)).collect();
            let mut id = raw::RedisModuleStreamID { ms: 0, seq: 0 };
            let rc = raw::RedisModule_StreamAdd.unwrap()(k, raw::REDISMODULE_STREAM_ADD_AUTOID as c_int, &mut id, argv.as_mut_ptr(), (fields.len() / 2) as i64);
            let errno = std::io::Error::last_os_error();
            raw::RedisModule_CloseKey.unwrap()(k);
            let free_all = |argv: Vec<*mut raw::RedisModuleString>| {
                for a in argv {
                    raw::RedisModule_FreeString.unwrap()(ctx, a);
                }
            };
            if rc != raw::REDISMODULE_OK as c_int {
                free_all(argv);
                raw::RedisModule_FreeString.unwrap()(ctx, name);
                return Err(HostError::Command(format!("ERR the entry could not be added to the stream '{}': {errno}", String::from_utf8_lossy(stream))));
            }
            raw::RedisModule_NotifyKeyspaceEvent.unwrap()(ctx, raw::REDISMODULE_NOTIFY_STREAM as c_int, c"xadd".as_ptr(), name);
            let id = format!("{}-{}", id.ms, id.seq);
            // Replicated as XADD with the id given, made of the strings already made for
            // the entry ("v" takes references to them, not copies).
            let mut repl = Vec::with_capacity(argv.len() + 2);
            repl.push(name);
            repl.push(create(id.as_bytes()));
            repl.extend_from_slice(&argv);
            raw::RedisModule_Replicate.unwrap()(ctx, c"XADD".as_ptr(), c"v".as_ptr(), repl.as_mut_ptr(), repl.len());
            raw::RedisModule_FreeString.unwrap()(ctx, repl[1]);
            free_all(argv);
            raw::RedisModule_FreeString.unwrap()(ctx, name);
            id
        };
        Ok(id)
    }

    /// May `user` read this key as TYPE and the type's read command would let it? Both
    /// commands are checked in full for this key (command rules, key patterns, selectors),
    /// with the user looked up once per lock.
    fn may_read(&self, user: &str, name: *mut raw::RedisModuleString, command: &'static [u8], rest: &'static [&'static [u8]], read_value: bool, scratch: &mut Scratch) -> Result<(), HostError> {
        let u = self.acl_user(user)?;
        let mut allows = |cmd: &'static [u8], extra: &'static [&'static [u8]]| -> bool {
            // At most four arguments: the command, the key, and XRANGE's or ZRANGE's rest.
            let mut argv = [std::ptr::null_mut(); 5];
            argv[0] = scratch.name(cmd);
            argv[1] = name;
            for (i, e) in extra.iter().enumerate().take(3) {
                argv[2 + i] = scratch.name(e);
            }
            let n = 2 + extra.len().min(3);
            // SAFETY: GIL held; the strings live in the scratch (or are the key's name) and
            // the user object outlives the call.
            unsafe { raw::RedisModule_ACLCheckCommandPermissions.unwrap()(u, argv.as_mut_ptr(), n as c_int) == raw::REDISMODULE_OK as c_int }
        };
        let refused = |cmd: &str| HostError::NoPermission(format!("User {user} has no permissions to run the '{cmd}' command or to access its keys"));
        if !allows(b"TYPE", &[]) {
            return Err(refused("type"));
        }
        if read_value && !allows(command, rest) {
            return Err(refused(&String::from_utf8_lossy(command).to_ascii_lowercase()));
        }
        Ok(())
    }

    /// The ACL user object for key checks, looked up once per lock.
    fn acl_user(&self, user: &str) -> Result<*mut raw::RedisModuleUser, HostError> {
        let mut cur = self.acl.borrow_mut();
        if let Some((n, u)) = cur.as_ref() {
            if n == user {
                return Ok(*u);
            }
        }
        let u = module_user(&self.ctx, user)?;
        if let Some((_, old)) = cur.replace((user.to_string(), u)) {
            // SAFETY: GIL held; no longer referenced.
            unsafe { raw::RedisModule_FreeModuleUser.unwrap()(old) };
        }
        Ok(u)
    }
}

/// The value of an open key, shaped as `engine::read_key` shapes the commands' replies.
///
/// # Safety
/// GIL held; `k` open for reading, of type `t`.
unsafe fn value_of(ctx: *mut raw::RedisModuleCtx, k: *mut raw::RedisModuleKey, t: isize, scratch: &mut Scratch) -> Value {
    let owned = |s: *mut raw::RedisModuleString| {
        let v = Value::from_bytes(bytes(s).to_vec());
        raw::RedisModule_FreeString.unwrap()(ctx, s);
        v
    };
    match t {
        raw::REDISMODULE_KEYTYPE_STRING => {
            let mut len = 0usize;
            let p = raw::RedisModule_StringDMA.unwrap()(k, &mut len, raw::REDISMODULE_READ as c_int);
            if p.is_null() {
                Value::String(String::new())
            } else {
                Value::from_bytes(std::slice::from_raw_parts(p as *const u8, len).to_vec())
            }
        }
        raw::REDISMODULE_KEYTYPE_HASH | raw::REDISMODULE_KEYTYPE_SET => {
            let mut pairs: Vec<(Value, Value)> = Vec::with_capacity(raw::RedisModule_ValueLength.unwrap()(k));
            let cursor = scratch.key_cursor();
            while raw::RedisModule_ScanKey.unwrap()(k, cursor, Some(collect_pair), &mut pairs as *mut Vec<(Value, Value)> as *mut c_void) != 0 {}
            if t == raw::REDISMODULE_KEYTYPE_HASH {
                Value::Map(pairs)
            } else {
                let mut members: Vec<Value> = pairs.into_iter().map(|(m, _)| m).collect();
                members.sort_by(|a, b| a.compare(b));
                Value::Array(members)
            }
        }
        raw::REDISMODULE_KEYTYPE_LIST => {
            let n = raw::RedisModule_ValueLength.unwrap()(k);
            let mut items = Vec::with_capacity(n);
            for i in 0..n {
                let s = raw::RedisModule_ListGet.unwrap()(k, i as i64);
                if s.is_null() {
                    break;
                }
                items.push(owned(s));
            }
            Value::Array(items)
        }
        raw::REDISMODULE_KEYTYPE_ZSET => {
            let mut items = Vec::with_capacity(raw::RedisModule_ValueLength.unwrap()(k));
            if raw::RedisModule_ZsetFirstInScoreRange.unwrap()(k, f64::NEG_INFINITY, f64::INFINITY, 0, 0) == raw::REDISMODULE_OK as c_int {
                while raw::RedisModule_ZsetRangeEndReached.unwrap()(k) == 0 {
                    let mut score = 0.0f64;
                    let m = raw::RedisModule_ZsetRangeCurrentElement.unwrap()(k, &mut score);
                    if m.is_null() {
                        break;
                    }
                    items.push(Value::Array(vec![owned(m), Value::Double(score)]));
                    if raw::RedisModule_ZsetRangeNext.unwrap()(k) == 0 {
                        break;
                    }
                }
                raw::RedisModule_ZsetRangeStop.unwrap()(k);
            }
            Value::Array(items)
        }
        raw::REDISMODULE_KEYTYPE_STREAM => Value::Array(stream_entries(ctx, k, None, false, usize::MAX).into_iter().map(|(id, fields)| Value::Array(vec![Value::String(id), fields])).collect()),
        _ => Value::Nil,
    }
}

/// Up to `count` entries of an open stream from `from` (the first if None; after it if
/// `exclusive`), each as (id, map of fields), as XRANGE gives them.
///
/// # Safety
/// GIL held; `k` open for reading and a stream.
unsafe fn stream_entries(ctx: *mut raw::RedisModuleCtx, k: *mut raw::RedisModuleKey, from: Option<(u64, u64)>, exclusive: bool, count: usize) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut first = from.map(|(ms, seq)| raw::RedisModuleStreamID { ms, seq });
    let first_ptr = first.as_mut().map_or(std::ptr::null_mut(), |f| f as *mut raw::RedisModuleStreamID);
    let flags = if exclusive && from.is_some() { raw::REDISMODULE_STREAM_ITERATOR_EXCLUSIVE as c_int } else { 0 };
    if count == 0 || raw::RedisModule_StreamIteratorStart.unwrap()(k, flags, first_ptr, std::ptr::null_mut()) != raw::REDISMODULE_OK as c_int {
        return out;
    }
    let owned = |s: *mut raw::RedisModuleString| {
        let v = Value::from_bytes(bytes(s).to_vec());
        raw::RedisModule_FreeString.unwrap()(ctx, s);
        v
    };
    let mut id = raw::RedisModuleStreamID { ms: 0, seq: 0 };
    let mut n: std::os::raw::c_long = 0;
    while out.len() < count && raw::RedisModule_StreamIteratorNextID.unwrap()(k, &mut id, &mut n) == raw::REDISMODULE_OK as c_int {
        let mut fields = Vec::with_capacity(n.max(0) as usize);
        let (mut f, mut v) = (std::ptr::null_mut(), std::ptr::null_mut());
        while raw::RedisModule_StreamIteratorNextField.unwrap()(k, &mut f, &mut v) == raw::REDISMODULE_OK as c_int {
            fields.push((owned(f), owned(v)));
        }
        out.push((format!("{}-{}", id.ms, id.seq), Value::Map(fields)));
    }
    raw::RedisModule_StreamIteratorStop.unwrap()(k);
    out
}
