//! Plans are rebuilt from the script's source alone: running the source again in
//! plan-building mode, in a fresh instance, gives the same plan, and running that plan with
//! the fresh instance's functions gives the same records as the original run.

use engine::{execution::Execution, Config, Instance, Language, Limits, MemoryHost, Natives, Plan, RunEnv, ScriptCalls, ScriptError, Value};
use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const SOURCES: &[(&str, &str)] = &[
    ("lua", "local min = tonumber(ARGS[1]) GB():filter(function(r) return tonumber(r.value.age) >= min end):countBy(function(r) return r.value.city end):run('user:*')"),
    ("js", "const min = Number(ARGS[0]); GB().filter(r => Number(r.value.age) >= min).countBy(r => r.value.city).run('user:*')"),
    ("lua", "GB():map(function(r) return r.key end):aggregate({}, function(a, r) a[#a + 1] = r return a end, function(a, r) for _, x in ipairs(r) do a[#a + 1] = x end return a end):run('user:*')"),
    ("js", "GB().map(r => r.key).aggregate([], (a, r) => a.concat([r]), (a, r) => a.concat(r)).run('user:*')"),
];

fn host() -> Arc<MemoryHost> {
    let h = Arc::new(MemoryHost::new());
    for (i, (age, city)) in [(31, "paris"), (25, "paris"), (40, "rome"), (52, "oslo")].iter().enumerate() {
        h.cmd(&["HSET", &format!("user:{i}"), "age", &age.to_string(), "city", city]).unwrap();
    }
    h
}

fn language(name: &str) -> Box<dyn Language> {
    if name == "lua" { Box::new(lang_lua::LuaLanguage) } else { Box::new(lang_js::Js) }
}

fn env(host: &Arc<MemoryHost>) -> RunEnv {
    RunEnv { host: host.clone(), packages: Default::default(), config: Arc::new(Config::default()), execution: Arc::new(Execution::new("t".into(), "test", None)), user: None, db: 0, hook: None, caller: None, cluster: None }
}

/// Runs `source` in a fresh instance in plan-building mode and returns the instance
/// (still holding the run's functions), its natives and the recorded plan.
fn build(lang: &str, source: &str, host: &Arc<MemoryHost>) -> (Box<dyn Instance>, Box<dyn engine::RunApi>, Plan) {
    let mut inst = language(lang).new_instance(Limits::default()).unwrap();
    let natives = engine::Api::begin_run(&stdlib::Stdlib::plan_building(), env(host));
    inst.run(source, &[b"30".to_vec()], &*natives as &dyn Natives).unwrap();
    let plan = natives.take_plan().expect("run() recorded a plan");
    (inst, natives, plan)
}

struct Calls<'a> {
    inst: RefCell<&'a mut Box<dyn Instance>>,
    natives: &'a dyn Natives,
}

impl ScriptCalls for Calls<'_> {
    fn call(&self, f: engine::FnRef, args: &[Value]) -> Result<Value, ScriptError> {
        self.inst.borrow_mut().call(f, args, self.natives)
    }
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by(|a, b| a.compare(b));
    v
}

#[test]
fn a_plan_rebuilt_from_source_is_the_same_plan_and_gives_the_same_records() {
    for (lang, source) in SOURCES {
        let host = host();
        // The original run, executing for real.
        let mut inst = language(lang).new_instance(Limits::default()).unwrap();
        let natives = engine::Api::begin_run(&stdlib::Stdlib::default(), env(&host));
        inst.run(source, &[b"30".to_vec()], &*natives as &dyn Natives).unwrap();
        let original = natives.take_output().expect("run() ran").results;

        // Two fresh instances rebuild the plan from the source: the same plan.
        let (mut a, natives_a, plan_a) = build(lang, source, &host);
        let (_b, _nb, plan_b) = build(lang, source, &host);
        assert_eq!(plan_a, plan_b, "{lang}: plans differ between instances");
        assert!(plan_a.steps.iter().any(|s| matches!(s, engine::Step::Map(engine::Func::Script(_)) | engine::Step::Filter(engine::Func::Script(_)) | engine::Step::LocalGroupBy { .. })));

        // The rebuilt plan runs with the fresh instance's functions.
        let calls = Calls { inst: RefCell::new(&mut a), natives: &*natives_a as &dyn Natives };
        let abort = AtomicBool::new(false);
        let cx = engine::RunContext { host: &*host, calls: &calls, abort: &abort, batch_size: 2, db: 0, user: None };
        let rebuilt = engine::run_plan(&plan_a, &cx).unwrap();
        assert!(rebuilt.errors.is_empty(), "{lang}: {:?}", rebuilt.errors);
        let normalize = |v: Vec<Value>| sorted(v.into_iter().map(|r| match r { Value::Array(items) => Value::Array(sorted(items)), other => other }).collect());
        assert_eq!(normalize(rebuilt.results), normalize(original), "{lang}: {source}");
    }
}
