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

/// Objects written by hand from a few keys (repeated, escaped) and values,
/// with JSON's whitespace between the parts.
fn object_frame() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "\"event\"",
        "\"data\"",
        "\"id\"",
        "\"ev\\u0065nt\"",
        "\"eventx\"",
        "\"\"",
    ]);
    let value = prop::sample::select(vec![
        "\"join\"",
        "\"chat\"",
        "\"a\\\"b\\u00e9\\ud800\"",
        "\"\"",
        "0",
        "-0.0e+0",
        "12.5E-3",
        "1e999",
        "true",
        "false",
        "null",
        "[]",
        "{}",
        "[1,[2,{\"a\":[]}],\"x\"]",
        "{\"rooms\":[\"a\",\"b\"],\"k\":{\"n\":null}}",
        "\"a long string value, more than eight bytes at a time\"",
    ]);
    let ws = prop::sample::select(vec!["", "", " ", "\t", "\n ", "\r\n"]);
    prop::collection::vec((ws.clone(), key, ws.clone(), value, ws), 0..6).prop_map(|pairs| {
        let parts: Vec<String> = pairs
            .into_iter()
            .map(|(a, k, b, v, c)| format!("{a}{k}{b}:{c}{v}{b}"))
            .collect();
        format!("{{{}}}", parts.join(","))
    })
}

/// A valid frame with one byte inserted, replaced or removed: text next to
/// valid JSON, where a skim that accepts too much or too little shows.
fn near_frame() -> impl Strategy<Value = String> {
    let bytes = prop::sample::select(
        b"{}[],:\"\\ 0123456789eE+-.tfnrua\t\n\r\x00\x01\x0b\x0c\x1f\x7f/".to_vec(),
    );
    let base = prop_oneof![frame(), object_frame()];
    (base, any::<prop::sample::Index>(), bytes, 0..3u8).prop_map(|(s, at, byte, op)| {
        let mut b = s.into_bytes();
        // Only at ASCII bytes, so that the text stays UTF-8.
        let ascii: Vec<usize> = (0..=b.len())
            .filter(|&i| i == b.len() || b[i].is_ascii())
            .collect();
        let i = *at.get(&ascii);
        match op {
            0 => b.insert(i, byte),
            1 if i < b.len() => b[i] = byte,
            _ if i < b.len() => {
                b.remove(i);
            }
            _ => b.push(byte),
        }
        String::from_utf8(b).expect("ASCII edits keep UTF-8")
    })
}

/// Where the skim answers, serde_json's deserializer gives the same answer;
/// where serde_json accepts an object with no escapes at all, the skim
/// answers (the fast path is not skipped).
fn skim_agrees(text: &str) -> Result<(), TestCaseError> {
    let deserialized = protocol::deserialize_inbound(text);
    match (protocol::skim_inbound(text), &deserialized) {
        (Some(skim), Ok(de)) => {
            prop_assert_eq!(&skim.event, &de.event, "event of {:?}", text);
            prop_assert_eq!(skim.data, de.data, "data of {:?}", text);
            // Spans exactly when the keys are `event` then `data`, and
            // each covers its value.
            let keys = object_keys(text);
            let exactly = keys.as_deref() == Some(&["event", "data"].map(String::from)[..]);
            prop_assert_eq!(
                skim.spans.is_some(),
                exactly,
                "spans of {:?} ({:?})",
                text,
                keys
            );
            if let Some(spans) = &skim.spans {
                // Two distinct keys: serde_json's map holds each value's text.
                let raw: std::collections::HashMap<String, &serde_json::value::RawValue> =
                    serde_json::from_str(text).expect("an object");
                prop_assert_eq!(
                    spans.event(text),
                    raw["event"].get(),
                    "event span of {:?}",
                    text
                );
                prop_assert_eq!(
                    spans.data(text),
                    raw["data"].get(),
                    "data span of {:?}",
                    text
                );
            }
        }
        (Some(skim), Err(_)) => {
            return Err(TestCaseError::fail(format!(
                "skimmed {skim:?} out of what serde_json refuses: {text:?}"
            )));
        }
        (None, Ok(_)) => prop_assert!(
            !text.trim_start().starts_with('{') || text.contains('\\'),
            "a plain object left to serde_json: {:?}",
            text
        ),
        (None, Err(_)) => {}
    }
    Ok(())
}

/// The keys of a JSON object text in order, decoded; `None` for anything else.
fn object_keys(text: &str) -> Option<Vec<String>> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                keys.push(key);
            }
            Ok(Some(keys))
        }
    }
    serde_json::Deserializer::from_str(text)
        .deserialize_map(Keys)
        .ok()
        .flatten()
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
    fn the_skim_agrees_with_serde_json_on_arbitrary_text(s in jsonish()) {
        skim_agrees(&s)?;
    }

    #[test]
    fn the_skim_agrees_with_serde_json_on_valid_frames(s in frame()) {
        prop_assert!(protocol::skim_inbound(&s).is_some() || s.contains('\\'), "{:?}", s);
        skim_agrees(&s)?;
    }

    #[test]
    fn the_skim_agrees_with_serde_json_on_written_objects(s in object_frame()) {
        skim_agrees(&s)?;
    }

    #[test]
    fn the_skim_agrees_with_serde_json_next_to_valid_frames(s in near_frame()) {
        skim_agrees(&s)?;
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
