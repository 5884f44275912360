//! The value codec: decoding arbitrary bytes never panics, and whatever decodes
//! re-encodes to bytes that decode to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = engine::codec::decode(data) {
        let again = engine::codec::encode(&v).expect("decoded values are encodable");
        // NaN is not equal to itself; everything else round-trips.
        if !format!("{v:?}").contains("NaN") {
            assert_eq!(engine::codec::decode(&again).expect("re-decodes"), v);
        }
        let _ = v.group_key();
        let _ = v.to_string();
    }
});
