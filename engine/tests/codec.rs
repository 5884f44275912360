//! Property tests of the value codec and of values' grouping keys.

use engine::codec::{decode, encode};
use engine::Value;
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_filter("NaN is not equal to itself", |d| !d.is_nan()).prop_map(Value::Double),
        ".*".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(Value::Bytes),
        ".*".prop_map(Value::Error),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..8).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #[test]
    fn encode_then_decode_gives_the_same_value(v in value()) {
        let bytes = encode(&v).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), v);
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn equal_values_group_together_and_sort_equal(v in value()) {
        let copy = v.clone();
        prop_assert_eq!(v.group_key(), copy.group_key());
        prop_assert_eq!(v.compare(&copy), std::cmp::Ordering::Equal);
    }
}

#[test]
fn truncated_and_deep_inputs_are_errors() {
    let bytes = encode(&Value::Array(vec![Value::str("abc"), Value::Int(7)])).unwrap();
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes decoded");
    }
    let deep = vec![7u8, 1].repeat(1000);
    assert_eq!(decode(&deep), Err(engine::codec::CodecError::TooDeep));
    assert!(encode(&Value::Function(engine::FnRef(0))).is_err());
}

#[test]
fn numbers_group_by_value_not_type() {
    assert_eq!(Value::Int(1).group_key(), Value::Double(1.0).group_key());
    assert_eq!(Value::str("a").group_key(), Value::Bytes(b"a".to_vec()).group_key());
    assert_ne!(Value::str("1").group_key(), Value::Int(1).group_key());
}
