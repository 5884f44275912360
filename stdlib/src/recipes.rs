//! The built-in package `gears/recipes` (Lua also `gears.recipes`): `writeBehind`,
//! `writeThrough` and the target constructors `postgres`, `mongodb`, `mysql`, `sqlite`.
//! One native does all of it; the recipe itself (capture, apply, connectors) is carried out
//! by the `recipes` crate through the engine's `RecipeHooks`, which also checks the options.

use engine::{Mode, Package, RegistrationSpec, ScriptError, Trigger, Value};

/// The native behind `gears/recipes` (a global, not meant to be called directly).
pub const RECIPE: &str = "__gears_recipe";

pub const KINDS: &[&str] = &["writeBehind", "writeThrough"];
pub const TARGETS: &[&str] = &["postgres", "mongodb", "mysql", "sqlite"];

pub fn packages() -> Vec<Package> {
    let p = |name: &str, language: &str, source: String| Package::builtin(language, name, source);
    let names: Vec<&str> = KINDS.iter().chain(TARGETS).copied().collect();
    let lua = format!("return {{ {} }}", names.iter().map(|n| format!("{n} = function(o) return {RECIPE}('{n}', o) end")).collect::<Vec<_>>().join(", "));
    let js = names.iter().map(|n| format!("export const {n} = o => {RECIPE}('{n}', o);\n")).collect::<String>()
        + &format!("export default {{ {} }};", names.join(", "));
    vec![p("gears/recipes", "lua", lua.clone()), p("gears.recipes", "lua", lua), p("gears/recipes", "js", js)]
}

/// `__gears_recipe(kind, options)`: a target constructor returns its options with `kind`
/// added; `writeBehind`/`writeThrough` return the registration to record.
pub fn call(a: &[Value]) -> Result<Recipe, ScriptError> {
    let kind = match a.first() {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ScriptError::usage("gears/recipes: unknown function")),
    };
    let opts = match a.get(1) {
        Some(Value::Map(m)) => m.clone(),
        Some(other) => return Err(ScriptError::usage(format!("{kind}: expected a table/object of options, got {}", other.type_name()))),
        None => return Err(ScriptError::usage(format!("{kind}: expected a table/object of options, got nothing"))),
    };
    if TARGETS.contains(&kind.as_str()) {
        let mut m: Vec<(Value, Value)> = opts.into_iter().filter(|(k, _)| k.as_str_lossy().as_deref() != Some("kind")).collect();
        m.push((Value::str("kind"), Value::String(kind)));
        return Ok(Recipe::Target(Value::Map(m)));
    }
    if !KINDS.contains(&kind.as_str()) {
        return Err(ScriptError::usage(format!("gears/recipes: unknown function '{kind}'")));
    }
    let get = |name: &str| opts.iter().find(|(k, _)| k.as_str_lossy().as_deref() == Some(name)).map(|(_, v)| v.clone());
    let name = match get("name") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => s,
        Some(Value::String(s)) => return Err(ScriptError::usage(format!("{kind}: name must be 1 or more letters, digits, '-' or '_', got '{s}'"))),
        Some(other) => return Err(ScriptError::usage(format!("{kind}: name must be a string, got {}", other.type_name()))),
        None => return Err(ScriptError::usage(format!("{kind}: name is required (it names the recipe and its stream)"))),
    };
    let prefix = match get("prefix") {
        Some(v @ (Value::String(_) | Value::Bytes(_))) => v.as_bytes().map(|b| b.into_owned()).unwrap_or_default(),
        Some(other) => return Err(ScriptError::usage(format!("{kind}: prefix must be a string, got {}", other.type_name()))),
        None => return Err(ScriptError::usage(format!("{kind}: prefix is required (the keys whose changes are written, e.g. 'user:')"))),
    };
    let description = match get("description") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Ok(Recipe::Registration(RegistrationSpec {
        trigger: Trigger::Recipe { kind, name, prefix, options: Value::Map(opts) },
        mode: Mode::Sync,
        steps: Vec::new(),
        description,
    }))
}

pub enum Recipe {
    Target(Value),
    Registration(RegistrationSpec),
}
