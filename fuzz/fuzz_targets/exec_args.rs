//! RG.EXEC argument parsing: any argument vector gives Ok or a clear error, never a panic,
//! and whatever parses keeps the script and arguments intact.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|argv: Vec<Vec<u8>>| {
    let args: Vec<&[u8]> = argv.iter().map(|a| a.as_slice()).collect();
    match engine::parse_exec(&args) {
        Ok(p) => {
            assert!(p.language == "lua" || p.language == "js");
            assert_eq!(p.code.as_bytes(), args[1]);
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
