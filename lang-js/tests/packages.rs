//! Module scripts and packages: `import ... from 'name'` through `Natives::package`.
mod support;

use engine::{FnRef, Instance, Limits, ScriptError, ScriptErrorKind, Value};
use std::time::{Duration, Instant};
use support::{instance, instance_with, s, Fake};

/// Runs `source` with `fake` on a fresh instance; returns the result and what was recorded.
fn run_with(fake: &Fake, source: &str) -> (Result<Value, ScriptError>, Vec<Value>) {
    let mut i = instance();
    let r = i.run(source, &[], fake);
    i.end_run();
    let records = fake.records.borrow().clone();
    (r, records)
}

/// Runs `source` with these packages; returns what it recorded (the run must succeed).
fn records(packages: &[(&str, &str)], source: &str) -> Vec<Value> {
    let fake = Fake::with_packages(packages);
    let (r, records) = run_with(&fake, source);
    assert_eq!(r, Ok(Value::Nil), "{source}");
    records
}

/// The error of running `source` with these packages.
fn error(packages: &[(&str, &str)], source: &str) -> ScriptError {
    let fake = Fake::with_packages(packages);
    run_with(&fake, source).0.unwrap_err()
}

fn rec(items: &[Value]) -> Value {
    Value::Array(items.to_vec())
}

const MATH: &str = "export const one = 1;\nexport function add(a, b) { return a + b }\nexport default 'math 1.0';";

#[test]
fn named_namespace_and_default_imports() {
    let r = records(&[("math", MATH)], "import { one, add } from 'math';\nrecord(one, add(one, 41))");
    assert_eq!(r, vec![rec(&[Value::Int(1), Value::Int(42)])]);
    let r = records(&[("math", MATH)], "import * as m from 'math'\nrecord(m.one, m.add(2, 3), m.default)");
    assert_eq!(r, vec![rec(&[Value::Int(1), Value::Int(5), s("math 1.0")])]);
    let r = records(&[("math", MATH)], "import version, { add as plus } from 'math'\nrecord(version, plus(1, 1))");
    assert_eq!(r, vec![rec(&[s("math 1.0"), Value::Int(2)])]);
    // A module script may export too, and sees the run's globals (ARGS, natives).
    let r = records(&[], "export const x = 5;\nrecord(x, typeof ARGS, typeof echo)");
    assert_eq!(r, vec![rec(&[Value::Int(5), s("object"), s("function")])]);
}

#[test]
fn module_scripts_reply_nil_and_global_scripts_are_unchanged() {
    let fake = Fake::with_packages(&[("math", MATH)]);
    let mut i = instance();
    assert_eq!(i.run("import { one } from 'math'\none + 1", &[], &fake), Ok(Value::Nil));
    assert_eq!(i.run("1 + 1", &[], &fake), Ok(Value::Int(2)));
    // `import`/`export` in strings, comments, properties and dynamic imports: global scripts.
    assert_eq!(i.run("// import x from 'y'\n'import x from \\'y\\''", &[], &fake), Ok(s("import x from 'y'")));
    assert_eq!(i.run("const o = {import: 1, export: 2}; o.import + o.export", &[], &fake), Ok(Value::Int(3)));
    // Sloppy mode, as before.
    assert_eq!(i.run("undeclared = 3; undeclared", &[], &fake), Ok(Value::Int(3)));
    assert_eq!(fake.lookups("math"), 1);
}

#[test]
fn a_package_may_import_packages_and_is_evaluated_once_per_run() {
    let packages = [
        ("gears/counter", "record('counter loaded');\nlet n = 0;\nexport const next = () => ++n;"),
        ("a", "import { next } from 'gears/counter';\nexport const a = () => next();"),
        ("b", "import { next } from 'gears/counter';\nimport { a } from 'a';\nexport const b = () => [a(), next()];"),
    ];
    let fake = Fake::with_packages(&packages);
    let mut i = instance();
    let source = "import { b } from 'b';\nimport { a } from 'a';\nimport { next } from 'gears/counter';\nrecord(b(), a(), next())";
    assert_eq!(i.run(source, &[], &fake), Ok(Value::Nil));
    let expected =
        vec![rec(&[s("counter loaded")]), rec(&[rec(&[Value::Int(1), Value::Int(2)]), Value::Int(3), Value::Int(4)])];
    assert_eq!(*fake.records.borrow(), expected);
    for name in ["gears/counter", "a", "b"] {
        assert_eq!(fake.lookups(name), 1, "{name}");
    }
    // A new run loads (and evaluates) them again: the state of the last run is gone.
    fake.records.borrow_mut().clear();
    assert_eq!(i.run("import { next } from 'gears/counter'\nrecord(next())", &[], &fake), Ok(Value::Nil));
    assert_eq!(*fake.records.borrow(), vec![rec(&[s("counter loaded")]), rec(&[Value::Int(1)])]);
    assert_eq!(fake.lookups("gears/counter"), 2);
}

#[test]
fn cyclic_imports_work() {
    let packages = [
        ("even", "import { odd } from 'odd';\nexport const even = n => n == 0 ? true : odd(n - 1);"),
        ("odd", "import { even } from 'even';\nexport const odd = n => n == 0 ? false : even(n - 1);"),
    ];
    let r = records(&packages, "import { even } from 'even'\nrecord(even(10), even(7))");
    assert_eq!(r, vec![rec(&[Value::Bool(true), Value::Bool(false)])]);
}

#[test]
fn unknown_packages_are_not_found() {
    let e = error(&[], "import { x } from 'nope'\nrecord(x)");
    assert_eq!(e.kind, ScriptErrorKind::Runtime, "{e:?}");
    assert!(e.message.contains("module 'nope' not found: load it with RG.PACKAGE LOAD js nope <code>"), "{e:?}");
    // Also when a package imports it.
    let e = error(&[("p", "export { y } from 'gears/missing'")], "import { y } from 'p'");
    assert!(
        e.message.contains("module 'gears/missing' not found: load it with RG.PACKAGE LOAD js gears/missing <code>"),
        "{e:?}"
    );
    // Names are used as given: no path resolution.
    let fake = Fake::default();
    let e = run_with(&fake, "import x from './lib/../x.js'").0.unwrap_err();
    assert!(e.message.contains("module './lib/../x.js' not found"), "{e:?}");
    assert_eq!(*fake.package_calls.borrow(), vec!["./lib/../x.js".to_string()]);
    // A missing export of a package that exists.
    let e = error(&[("math", MATH)], "import { nothing } from 'math'");
    assert_eq!(e.kind, ScriptErrorKind::Runtime, "{e:?}");
    assert!(e.message.contains("nothing"), "{e:?}");
}

#[test]
fn packages_the_natives_refuse_are_errors_with_their_message() {
    let e = error(&[], "import { x } from 'refused'\nrecord(x)");
    assert_eq!(e.kind, ScriptErrorKind::Runtime, "{e:?}");
    assert!(e.message.contains("package 'refused' may not be imported here"), "{e:?}");
    let e = error(&[("p", "export { y } from 'refused'")], "import { y } from 'p'");
    assert!(e.message.contains("package 'refused' may not be imported here"), "{e:?}");
}

#[test]
fn std_and_os_are_not_modules() {
    for name in ["os", "std", "qjs:os", "qjs:std"] {
        let e = error(&[], &format!("import * as m from '{name}'\nm.exec(['ls'])"));
        assert_eq!(e.kind, ScriptErrorKind::Runtime, "{e:?}");
        assert!(e.message.contains(&format!("module '{name}' not found")), "{e:?}");
    }
    // Unless a package has that name.
    let r = records(&[("os", "export const platform = 'gears'")], "import * as os from 'os'\nrecord(os.platform)");
    assert_eq!(r, vec![rec(&[s("gears")])]);
}

#[test]
fn dynamic_imports_go_through_the_same_loader() {
    let packages = [("math", MATH)];
    let r = records(&packages, "import('math').then(m => record(m.add(1, 2), m.default))");
    assert_eq!(r, vec![rec(&[Value::Int(3), s("math 1.0")])]);
    // In a global script, whose last value is then the promise's.
    let fake = Fake::with_packages(&packages);
    assert_eq!(run_with(&fake, "import('math').then(m => m.one)").0, Ok(Value::Int(1)));
    let e = run_with(&fake, "import('os')").0.unwrap_err();
    assert!(e.message.contains("module 'os' not found"), "{e:?}");
    let v = run_with(&fake, "let r; import('std').then(() => { r = 'loaded' }, e => { r = e.message }); Promise.resolve().then(() => 0).then(() => r)");
    assert!(v.0.clone().unwrap().as_str_lossy().unwrap().contains("module 'std' not found"), "{v:?}");
    // Import attributes are refused.
    let e = run_with(&fake, "import m from 'math' with { type: 'json' }").0.unwrap_err();
    assert!(e.message.contains("import attributes are not supported"), "{e:?}");
}

#[test]
fn syntax_errors_in_packages_name_the_package_and_line() {
    let e = error(&[("bad", "export const a = 1;\n\nexport const b = ;\n")], "import { a } from 'bad'\nrecord(a)");
    assert_eq!(e.kind, ScriptErrorKind::Syntax, "{e:?}");
    assert!(e.message.starts_with("SyntaxError: "), "{e:?}");
    assert!(e.message.ends_with("at bad:3"), "{e:?}");
    // Nested, and with a name with a slash.
    let packages = [("gears/bad", "export default function (\n"), ("p", "import d from 'gears/bad'\nexport { d }")];
    let e = error(&packages, "import { d } from 'p'");
    assert_eq!(e.kind, ScriptErrorKind::Syntax, "{e:?}");
    assert!(e.message.contains("at gears/bad:"), "{e:?}");
    // Packages are modules: strict mode.
    let e = error(&[("octal", "export const n = 010;")], "import { n } from 'octal'");
    assert!(e.message.contains("at octal:1"), "{e:?}");
}

#[test]
fn syntax_errors_in_module_scripts() {
    // After the imports: the error of the module, at its line.
    let e = error(&[("math", MATH)], "import { one } from 'math'\nlet x = ;\n");
    assert_eq!(e.kind, ScriptErrorKind::Syntax, "{e:?}");
    assert!(e.message.ends_with("at script:2"), "{e:?}");
    let e = error(&[("math", MATH)], "import { one } from 'math'; one(;");
    assert!(e.message.contains("script:1") && !e.message.contains("'{'"), "{e:?}");
    // Not a module at all: the error of the global script.
    let e = error(&[], "let a = 1;\nlet b = ;\n// import x from 'y'");
    assert_eq!(e.kind, ScriptErrorKind::Syntax);
    assert!(e.message.ends_with("at script:2"), "{e:?}");
}

#[test]
fn runtime_errors_in_packages_have_their_location() {
    let e = error(&[("p", "const a = 1;\nnull.x;\nexport const b = 2;")], "import { b } from 'p'");
    assert_eq!(e.kind, ScriptErrorKind::Runtime, "{e:?}");
    assert!(e.message.starts_with("TypeError: ") && e.message.ends_with("at p:2"), "{e:?}");
    let package = "export function f(x) {\n  if (x) {\n    throw new RangeError('too far')\n  }\n}";
    let e = error(&[("gears/x", package)], "import { f } from 'gears/x'\nf(false)\nf(true)");
    assert_eq!(e.message, "RangeError: too far at gears/x:3");
    // In the module script itself.
    let e = error(&[("gears/x", package)], "import { f } from 'gears/x'\n\nthrow new Error('top')");
    assert_eq!(e.message, "Error: top at script:3");
    // A native's error keeps its kind.
    let e = error(&[("p", "fail('bad input')")], "import 'p'");
    assert_eq!((e.kind, e.message.as_str()), (ScriptErrorKind::Usage, "bad input"));
    let e = error(&[], "import 'p'; ").message;
    assert!(e.contains("module 'p' not found"), "{e}");
}

#[test]
fn limits_apply_to_module_evaluation() {
    let limits = Limits { memory_bytes: 0, timeout: Duration::from_millis(100) };
    let mut i = instance_with(limits);
    let fake = Fake::with_packages(&[
        ("spin", "export const x = 1;\nwhile (true) {}"),
        ("catchy", "while (true) { try { while (true) {} } catch (e) {} }"),
        ("math", MATH),
    ]);
    let start = Instant::now();
    let e = i.run("import { x } from 'spin'\nrecord(x)", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    let e = i.run("import 'catchy'", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    let e = i.run("import { one } from 'math'\nwhile (one) {}", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    let e = i.run("await null;\nwhile (true) {}", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(fake.records.borrow().is_empty());
    // A fatal error of a native cannot be caught by a package either.
    let fake2 = Fake::with_packages(&[("f", "try { fatal() } catch (e) {}\nrecord('survived')")]);
    let e = i.run("import 'f'", &[], &fake2).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    assert!(fake2.records.borrow().is_empty());
    i.end_run();
    assert_eq!(i.run("import { one } from 'math'\nrecord(one)", &[], &fake), Ok(Value::Nil));
    assert_eq!(i.run("'ok'", &[], &fake), Ok(s("ok")));

    let limit = 16 << 20;
    let mut i = instance_with(Limits { memory_bytes: limit, timeout: Duration::from_secs(10) });
    let fake = Fake::with_packages(&[("bomb", "const a = [];\nwhile (true) a.push('x'.repeat(1000));")]);
    let e = i.run("import 'bomb'", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Memory, "{e:?}");
    i.end_run();
    assert_eq!(i.run("[1, 2].length", &[], &fake), Ok(Value::Int(2)));
    assert!(i.memory_used() < limit);
}

#[test]
fn package_functions_are_callable_after_the_run() {
    let packages = [("steps", "let calls = 0;\nexport function step(x) { calls++; if (x === null) throw new TypeError('no step'); return x * 2 }\nexport const count = () => calls;")];
    let fake = Fake::with_packages(&packages);
    let mut i = instance();
    // A package function handed to a native, called back through ScriptCalls during the run.
    let source = "import { step, count } from 'steps';\nrecord(step, count, apply(step, 21))";
    assert_eq!(i.run(source, &[], &fake), Ok(Value::Nil));
    let (step, count) = (Value::Function(FnRef(0)), Value::Function(FnRef(1)));
    assert_eq!(*fake.records.borrow(), vec![rec(&[step, count, Value::Int(42)])]);
    // ... and through Instance::call after run() returned, until end_run.
    assert_eq!(i.call(FnRef(0), &[Value::Int(5)], &fake), Ok(Value::Int(10)));
    assert_eq!(i.call(FnRef(0), &[Value::Int(6)], &fake), Ok(Value::Int(12)));
    assert_eq!(i.call(FnRef(1), &[], &fake), Ok(Value::Int(3)));
    // Functions of the module script too.
    fake.records.borrow_mut().clear();
    let source = "import { step } from 'steps';\nconst twice = x => step(step(x));\nrecord(twice)";
    assert_eq!(i.run(source, &[], &fake), Ok(Value::Nil));
    assert_eq!(i.call(FnRef(0), &[Value::Int(3)], &fake), Ok(Value::Int(12)));
    // Errors in a callback have the package's location.
    i.run("import { step } from 'steps'\nrecord(step)", &[], &fake).unwrap();
    let e = i.call(FnRef(0), &[Value::Nil], &fake).unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (ScriptErrorKind::Runtime, "TypeError: no step at steps:2"));
    i.end_run();
    assert!(i.call(FnRef(0), &[Value::Int(1)], &fake).is_err());
}

#[test]
fn natives_work_at_module_top_level() {
    let packages = [(
        "p",
        "const c = obj();\nc.add(1).add(2);\nexport const items = c.get();\nexport const e = echo('x', bytes());",
    )];
    let r = records(
        &packages,
        "import { items, e } from 'p';\nconst c = obj().add('top');\nrecord(items, e, c.get(), ARGS.length)",
    );
    let bytes = Value::Bytes(vec![0, 255, 1]);
    assert_eq!(
        r,
        vec![rec(&[rec(&[Value::Int(1), Value::Int(2)]), rec(&[s("x"), bytes]), rec(&[s("top")]), Value::Int(0)])]
    );
    // Promise jobs and top-level await run before run() returns.
    let r = records(&[], "record(1);\nawait Promise.resolve();\nrecord(2);\nPromise.resolve().then(() => record(3))");
    assert_eq!(r, vec![rec(&[Value::Int(1)]), rec(&[Value::Int(2)]), rec(&[Value::Int(3)])]);
    let e = error(&[], "await new Promise(() => {})");
    assert!(e.message.contains("never settled"), "{e:?}");
    let e = error(&[], "await Promise.reject(new TypeError('no'))");
    assert!(e.message.starts_with("TypeError: no"), "{e:?}");
}

#[test]
fn check_accepts_module_scripts_without_loading_packages() {
    let mut i = instance();
    i.check("import { x } from 'not-loaded'\nimport * as os from 'os'\nx(os)").unwrap();
    i.check("import d from 'gears/a'\nexport const y = d + 1").unwrap();
    i.check("await 1").unwrap();
    let e = i.check("import { x } from 'nope'\nlet = ;").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Syntax);
    assert!(e.message.ends_with("at script:2"), "{e:?}");
    let e = i.check("import m from 'p' with { type: 'json' }").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Syntax);
    // The stubs of a check are not a run's packages.
    let fake = Fake::default();
    let e = i.run("import { x } from 'not-loaded'", &[], &fake).unwrap_err();
    assert!(e.message.contains("module 'not-loaded' not found"), "{e:?}");
    assert_eq!(fake.lookups("not-loaded"), 1);
    i.check("import { x } from 'not-loaded'").unwrap();
}

#[test]
fn instances_are_reusable_after_import_failures() {
    let fake = Fake::with_packages(&[("math", MATH), ("bad", "export let = ;")]);
    let mut i: Box<dyn Instance> = instance();
    for source in ["import 'nope'", "import 'bad'", "import { nothing } from 'math'", "import 'math'\nnull.x"] {
        assert!(i.run(source, &[], &fake).is_err(), "{source}");
        assert_eq!(i.run("import { add } from 'math'\nrecord(add(1, 1))", &[], &fake), Ok(Value::Nil), "{source}");
    }
    assert_eq!(fake.records.borrow().len(), 4);
}

#[test]
fn memory_does_not_grow_across_module_runs() {
    let packages = [
        ("data", "export const big = [];\nfor (let k = 0; k < 2000; k++) big.push({k, s: 'x' + k});"),
        ("fns", "import { big } from 'data';\nexport const f = () => big.length;"),
        ("bad", "export let = ;"),
    ];
    let fake = Fake::with_packages(&packages);
    let mut i = instance();
    let scripts = [
        "import { f } from 'fns';\nrecord(f);\nPromise.resolve().then(f)",
        "import('fns').then(m => record(m.f))",
        "import 'bad'",
        "import 'nope'",
        "import { f } from 'fns';\nthrow new Error('x')",
    ];
    let round = |i: &mut Box<dyn Instance>| {
        for script in scripts {
            let _ = i.run(script, &[], &fake);
            i.end_run();
        }
        fake.records.borrow_mut().clear();
    };
    for _ in 0..30 {
        round(&mut i);
    }
    let base = i.memory_used();
    for _ in 0..30 {
        round(&mut i);
    }
    let after = i.memory_used();
    assert!(after <= base + 64 * 1024, "memory grew from {base} to {after}");
}

#[test]
fn package_nesting_is_bounded() {
    let chain = |n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|k| {
                let body = if k + 1 < n {
                    format!("export {{ v }} from 'p{}'", k + 1)
                } else {
                    "export const v = 'end'".into()
                };
                (format!("p{k}"), body)
            })
            .collect()
    };
    let deep = chain(60);
    let deep: Vec<(&str, &str)> = deep.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect();
    assert_eq!(records(&deep, "import { v } from 'p0'\nrecord(v)"), vec![rec(&[s("end")])]);
    let too_deep = chain(100);
    let too_deep: Vec<(&str, &str)> = too_deep.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect();
    let e = error(&too_deep, "import { v } from 'p0'");
    assert_eq!(e.kind, ScriptErrorKind::Runtime, "{e:?}");
    assert!(e.message.contains("nest too deeply"), "{e:?}");
}
