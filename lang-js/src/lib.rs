//! lang-js: JavaScript for Gears, on QuickJS (rquickjs).
//!
//! `Js` is the `engine::Language`; each `JsInstance` owns one QuickJS runtime reused for
//! many runs, with a fresh context (fresh globals) per run. Scripts are global
//! (non-module, sloppy mode) scripts named "script"; there is no module loader and no
//! std/os module, so a script can reach its environment only through `Natives`.

mod bridge;
mod convert;
mod error;
mod instance;
mod memory;
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
