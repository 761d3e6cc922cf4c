//! Property-based fuzzing of the inbound path: every frame a client (or the
//! bus) can send goes through these parsers before anything else happens.
//! They must never panic, and must classify exactly as JavaScript would.
//!
//! CI runs the default number of cases; the long run is
//! `PROPTEST_CASES=1000000 cargo test --release --test fuzz_protocol`.

use ignis_ws_native::core::envelope;
use ignis_ws_native::core::protocol::{self, EventName};
use proptest::prelude::*;

/// JSON-ish text: fragments that parsers find interesting, glued at random.
fn jsonish() -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"event\"".to_string()),
        Just("\"data\"".to_string()),
        Just("\"rooms\"".to_string()),
        Just("\"join\"".to_string()),
        Just("\"authenticate\"".to_string()),
        Just("\"serverId\"".to_string()),
        Just("\"type\"".to_string()),
        Just("\"room\"".to_string()),
        Just("\"\\u0000\\ud800\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("-0.0e-7".to_string()),
        Just("1e999".to_string()),
        "[ -~]{0,8}".prop_map(|s| s),
        any::<String>(),
    ];
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

/// Structurally valid frames with random shapes.
fn frame() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::hash_map("[a-z]{0,6}", inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    (
        prop_oneof![
            Just("join"),
            Just("leave"),
            Just("authenticate"),
            Just("heartbeat"),
            Just("chat"),
            Just("")
        ],
        value.clone(),
        value,
    )
        .prop_map(|(event, data, rooms)| {
            serde_json::json!({"event": event, "data": {"rooms": rooms, "x": data}}).to_string()
        })
}

fn exercise(text: &str) {
    if let Ok(f) = protocol::parse_inbound(text) {
        let _ = protocol::auth_payload(f.data);
        for r in protocol::parse_rooms(f.data, 1024) {
            let _ = protocol::is_joinable_room(&r);
        }
        if let EventName::Str(e) = &f.event {
            assert!(!e.is_empty());
        }
    }
    if let Ok(e) = envelope::decode(text) {
        let _ = e.frame();
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(s in jsonish()) {
        exercise(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..256)) {
        exercise(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn valid_frames_parse_and_keep_their_rooms(s in frame()) {
        let f = protocol::parse_inbound(&s).expect("valid JSON parses");
        let rooms = protocol::parse_rooms(f.data, 1024);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let expected: Vec<String> = match &v["data"]["rooms"] {
            serde_json::Value::Array(items) => {
                let mut out: Vec<String> = Vec::new();
                for i in items {
                    if let Some(s) = i.as_str() {
                        if !out.iter().any(|o| o == s) {
                            out.push(s.to_string());
                        }
                    }
                }
                out
            }
            _ => vec![],
        };
        prop_assert_eq!(rooms, expected);
    }
}
