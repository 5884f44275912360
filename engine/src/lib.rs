//! The language-agnostic core of Gears: values, the `Language` and `Host` traits, plans
//! (a reader and its steps) and their executor, executions and their registry, and the
//! worker pool. No Redis FFI here: `MemoryHost` lets everything run without Redis.

mod error;
mod host;
mod language;
mod value;

pub use error::{HostError, ScriptError, ScriptErrorKind};
pub use host::{read_key, scan, Host, KeyRecord, LockedHost, LogLevel};
pub use language::{CallClock, ClockGuard, Instance, Language, Limits, Natives, ScriptCalls};
pub use value::{format_double, FnRef, ObjRef, Value};
