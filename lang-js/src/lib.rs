//! lang-js: JavaScript for Gears, on QuickJS (rquickjs).
//!
//! `Js` is the `engine::Language`; each `JsInstance` owns one QuickJS runtime reused for
//! many runs, with a fresh context (fresh globals) per run. Scripts are global (non-module,
//! sloppy mode) scripts named "script", or ES modules when they use `import`/`export`
//! (see modules.rs); the only modules that can be imported are packages, loaded through
//! `Natives::package`. There is no std/os module, so a script can reach its environment
//! only through `Natives`.

mod bridge;
mod convert;
mod error;
mod instance;
mod memory;
mod modules;
mod sandbox;
mod stack;
mod state;

pub use instance::JsInstance;

use engine::{Instance, Language, Limits, ScriptError};

/// The JavaScript language.
#[derive(Clone, Copy, Debug, Default)]
pub struct Js;

impl Language for Js {
    fn name(&self) -> &'static str {
        "js"
    }

    fn new_instance(&self, limits: Limits) -> Result<Box<dyn Instance>, ScriptError> {
        Ok(Box::new(JsInstance::new(limits)?))
    }
}
