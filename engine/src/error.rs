//! Typed errors of the engine. `src/` turns them into `-ERR` replies in one place.

use thiserror::Error;

/// Why a script (or one call into it) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptErrorKind {
    /// The source does not compile; the message carries the line.
    Syntax,
    /// An error raised while running; the message carries the line where the language knows it.
    Runtime,
    /// The call ran longer than `rg.script-timeout`.
    Timeout,
    /// The instance went over its memory limit.
    Memory,
    /// The execution was aborted (`RG.ABORTEXECUTION`).
    Aborted,
    /// Bad use of the stdlib (unknown reader, wrong argument type, ...).
    Usage,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct ScriptError {
    pub kind: ScriptErrorKind,
    pub message: String,
}

impl ScriptError {
    pub fn new(kind: ScriptErrorKind, message: impl Into<String>) -> Self {
        ScriptError { kind, message: message.into() }
    }
    pub fn runtime(message: impl Into<String>) -> Self {
        Self::new(ScriptErrorKind::Runtime, message)
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ScriptErrorKind::Usage, message)
    }
    pub fn timeout(limit_ms: u64) -> Self {
        Self::new(
            ScriptErrorKind::Timeout,
            format!("script timed out: the call ran longer than rg.script-timeout ({limit_ms} ms)"),
        )
    }
    pub fn aborted() -> Self {
        Self::new(ScriptErrorKind::Aborted, "execution aborted")
    }
    pub fn memory(limit: usize) -> Self {
        Self::new(
            ScriptErrorKind::Memory,
            format!("script ran out of memory: the runtime is limited to {limit} bytes"),
        )
    }
    /// Errors that end a whole run rather than one record: a runaway script (time or
    /// memory) is stopped, not retried on every remaining record.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self.kind,
            ScriptErrorKind::Aborted | ScriptErrorKind::Timeout | ScriptErrorKind::Memory
        )
    }
}

/// Errors from the host (Redis or the in-memory host).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum HostError {
    /// The command itself replied with an error.
    #[error("{0}")]
    Command(String),
    /// The ACL user may not run this command or touch these keys.
    #[error("NOPERM {0}")]
    NoPermission(String),
    #[error("{0}")]
    Other(String),
}

impl From<HostError> for ScriptError {
    fn from(e: HostError) -> Self {
        ScriptError::runtime(e.to_string())
    }
}
