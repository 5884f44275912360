//! The language-agnostic core of Gears: values, the `Language` and `Host` traits, plans
//! (a reader and its steps) and their executor, executions and their registry, settings,
//! and the worker pool. No Redis FFI here: `MemoryHost` lets everything run without Redis.

pub mod cluster;
pub mod codec;
pub mod config;
mod error;
mod exec_args;
pub mod execution;
pub mod glob;
pub mod executor;
mod host;
pub mod instances;
mod language;
mod loading;
mod memory_host;
pub mod packages;
pub mod plan;
pub mod session;
mod session_def;
mod trigger;
pub mod streams;
mod runtime;
mod value;
pub mod workers;

pub use config::{normalize as normalize_setting, Config, ConfigError, Setting, SETTINGS};
pub use exec_args::{parse_exec, ExecArgs, EXEC_USAGE};
pub use error::{HostError, ScriptError, ScriptErrorKind};
pub use execution::{Execution, Outcome, Registry, Status};
pub use executor::{run_plan, run_steps, RunContext, RunOutput, StepStat};
pub use host::{prefix_pattern, read_key, scan, Host, KeyRecord, KeyScan, LockedHost, LogLevel, NoDataHost, ScanBudget};
pub use language::{CallClock, ClockGuard, Instance, Language, Limits, Natives, ScriptCalls};
pub use glob::glob_match;
pub use memory_host::MemoryHost;
pub use plan::{Func, GroupMode, NativeOp, Plan, Reader, Step};
pub use packages::{Package, PackageError, Packages};
pub use session::{FailPolicy, StreamOptions, Mode, Registration, RegistrationSpec, Replace, Session, SessionDef, SessionError, Sessions, Stats, Trigger, Unbuilt};
pub use streams::STREAM_POSITION;
pub use runtime::{is_admin, not_owner, session_busy, RecipeHooks, Registrant, ADMIN_COMMAND, outcome_value, HookCall, SESSION_LOAD, Api, Engine, EngineError, ExecRequest, RunApi, RunEnv};
pub use value::{format_double, FnRef, ObjRef, Value};
