//! The Ignis wire protocol: event names, error strings, close codes and the
//! two frame shapes (`{event, data, id?}` in, `{event, data}` out).
//!
//! Inbound frames are parsed only as far as routing needs: the `event` is
//! decoded, `data` stays raw JSON text. The application handler receives the
//! original frame text and parses it once, in JavaScript, where it is used.

use super::json_skim;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

pub mod events {
    pub const AUTHENTICATE: &str = "authenticate";
    pub const CONNECTED: &str = "connected";
    pub const JOIN: &str = "join";
    pub const LEAVE: &str = "leave";
    pub const ERROR: &str = "error";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const ENCRYPTED: &str = "encrypted";
    /// The answer to a `join` for a history room (docs/PROTOCOL.md §15).
    pub const JOINED: &str = "joined";
    /// A presence room's join/leave notice (docs/PROTOCOL.md §16).
    pub const PRESENCE: &str = "presence";
}

pub mod errors {
    pub const INVALID_FORMAT: &str = "Invalid message format";
    pub const ALREADY_AUTHENTICATED: &str = "Already authenticated";
    pub const NOT_AUTHENTICATED: &str = "Not authenticated";
    pub const AUTH_FAILED: &str = "Authentication failed";
    pub const AUTH_ERROR: &str = "Authentication error";
    pub const HANDSHAKE_FAILED: &str = "Encryption handshake failed";
}

/// Close codes and their reason texts (docs/PROTOCOL.md §7).
pub mod close {
    pub const SHUTDOWN: (u16, &str) = (1001, "Server shutting down");
    pub const IDLE: (u16, &str) = (1001, "Idle timeout");
    pub const BACKPRESSURE: (u16, &str) = (1013, "Backpressure limit exceeded");
    pub const RATE_LIMIT: (u16, &str) = (1008, "Rate limit exceeded");
    pub const AUTH_BUSY: (u16, &str) = (1013, "Too many pending authentications");
    pub const AUTH_TIMEOUT: (u16, &str) = (4001, "Authentication timeout");
    pub const HEARTBEAT_TIMEOUT: (u16, &str) = (4002, "Heartbeat timeout");
    pub const AUTH_FAILED: (u16, &str) = (4003, "Authentication failed");
    pub const ENCRYPTION_REQUIRED: (u16, &str) = (4004, "Encryption required");
}

/// Room names a client may ask for: at most this many UTF-16 code units
/// (JavaScript's `String.length`, which is what the original counts).
pub const MAX_ROOM_NAME_LENGTH: usize = 256;
/// Prefix reserved for internal channels; clients can never join such a room.
pub const INTERNAL_PREFIX: &str = "ws:";

pub use crate::core::frame::{Frame, HEADROOM};

/// Builds `{"event":<event>,"data":<data>}` from an event name and the JSON
/// text of `data` (`None` leaves `data` out, as `JSON.stringify` does for
/// `undefined`).
pub fn encode_frame(event: &str, data_json: Option<&str>) -> Frame {
    // Exactly the frame's length when the name needs no escape (nearly
    // always): no capacity unused for as long as the frame is kept.
    let len = r#"{"event":""}"#.len()
        + event.len()
        + data_json.map_or(0, |d| r#","data":"#.len() + d.len());
    let mut out = String::with_capacity(HEADROOM.len() + len);
    out.push_str(HEADROOM);
    out.push_str("{\"event\":");
    push_json_str(&mut out, event);
    if let Some(data) = data_json {
        out.push_str(",\"data\":");
        out.push_str(data);
    }
    out.push('}');
    Frame::from_headroom(out)
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    // Ids and event names almost never need escaping: copy those as they are.
    if !needs_escape(s.as_bytes()) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a str always serializes"));
    }
}

/// Whether a JSON string literal of `s` would escape any byte: a control
/// character, `"` or `\\` (non-ASCII is written as it is): the bytes that end
/// a skimmed string's plain run. Eight bytes at a time, as this runs for
/// every id of every event handed to JavaScript.
fn needs_escape(s: &[u8]) -> bool {
    json_skim::plain_run(s, 0) < s.len()
}

/// `{"event":"error","data":{"message":<message>}}`
pub fn error_frame(message: &str) -> Frame {
    let data = format!(
        "{{\"message\":{}}}",
        serde_json::to_string(message).expect("a string always serializes")
    );
    encode_frame(events::ERROR, Some(&data))
}

/// Walks `clientId\nevent\ndata\nclientId\nevent\ndata…` (the
/// `sendToClient` calls a batch of JavaScript handlers made, handed over in
/// one crossing) and hands each client its frame, `{"event":…,"data":…}`,
/// as the original's `JSON.stringify({ event, data })` writes it. `data` is
/// `JSON.stringify(data)`'s text, empty when that was `undefined` (the frame
/// then has no `data`, as with the original). No part holds a raw newline:
/// JSON text escapes them, and ids and event names with one are never
/// queued (nor are names with a lone surrogate, or data with a `toJSON`,
/// which would see another key: those frames are built in JavaScript).
/// JavaScript hands over `data` alone because V8 serialises the
/// `{ event, data }` wrapper at about twice the cost of `data` (Node: 410
/// against 200 ns for a small object). A trailing part short of a whole
/// call is ignored.
pub fn each_queued_send(batch: &str, mut send: impl FnMut(&str, &Frame)) {
    // memchr rather than `str::split`, whose searcher costs twice as much
    // on parts this short.
    let mut rest = Some(batch);
    let mut parts = std::iter::from_fn(|| {
        let part = rest?;
        match memchr::memchr(b'\n', part.as_bytes()) {
            Some(i) => {
                // Cut at an ASCII byte: both sides stay UTF-8.
                rest = Some(&part[i + 1..]);
                Some(&part[..i])
            }
            None => {
                rest = None;
                Some(part)
            }
        }
    });
    while let (Some(id), Some(event), Some(data)) = (parts.next(), parts.next(), parts.next()) {
        send(id, &encode_frame(event, (!data.is_empty()).then_some(data)));
    }
}

/// What the `event` field of an inbound frame says, judged the way the
/// original judges it with `!message.event` and `===`.
#[derive(Debug, PartialEq, Eq)]
pub enum EventName<'a> {
    /// Missing, `null`, `false`, `0` or `""`: the frame is dropped.
    Falsy,
    /// A non-empty string: borrowed from the frame unless it had escapes
    /// to decode (no allocation for the usual frame).
    Str(Cow<'a, str>),
    /// A truthy non-string (number, `true`, object, array): never a system
    /// event, but still handed to the message handler as the original does.
    Other,
}

/// An inbound frame parsed just far enough to route it.
#[derive(Debug)]
pub struct Inbound<'a> {
    pub event: EventName<'a>,
    /// Raw JSON text of `data`, if present (checked: it is JSON).
    pub data: Option<&'a str>,
    /// Where the two values of a frame of exactly `{"event":…,"data":…}`
    /// lie in its text; `None` for any other frame.
    pub spans: Option<EventDataSpans>,
}

/// The byte ranges of `event`'s and `data`'s values in a frame that has
/// those two keys, in that order, and no other: the frame every client
/// library writes. Handed on with a message, they let JavaScript build the
/// message object from the two values, without parsing the envelope
/// (`handlers::AppEvent::Message`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventDataSpans {
    event: (u32, u32),
    data: (u32, u32),
}

impl EventDataSpans {
    /// `event` and `data` are slices of `frame`; `None` past 4 GiB.
    fn of(frame: &str, event: &str, data: &str) -> Option<Self> {
        let span = |value: &str| {
            let start = value.as_ptr() as usize - frame.as_ptr() as usize;
            Some((
                u32::try_from(start).ok()?,
                u32::try_from(start + value.len()).ok()?,
            ))
        };
        Some(EventDataSpans {
            event: span(event)?,
            data: span(data)?,
        })
    }

    /// `event`'s value in `frame`, the text these spans were taken from.
    pub fn event<'a>(&self, frame: &'a str) -> &'a str {
        &frame[self.event.0 as usize..self.event.1 as usize]
    }

    /// `data`'s value in `frame`, the text these spans were taken from.
    pub fn data<'a>(&self, frame: &'a str) -> &'a str {
        &frame[self.data.0 as usize..self.data.1 as usize]
    }
}

/// Why a frame could not be routed.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON at all (or nested beyond the parser's depth limit): the
    /// client gets `Invalid message format`.
    InvalidJson,
}

/// Parses one inbound frame. Any JSON value is accepted; only objects can
/// carry an event (the original reads `message.event` off whatever
/// `JSON.parse` returned).
///
/// A frame that is an object whose keys hold no escapes (every frame a
/// client library writes) is skimmed (`core::json_skim`); anything else
/// (invalid JSON, another kind of value, an escaped key, which has to be
/// decoded to be compared) goes through serde_json's deserializer.
pub fn parse_inbound(text: &str) -> Result<Inbound<'_>, ParseError> {
    match skim_inbound(text) {
        Some(frame) => Ok(frame),
        None => deserialize_inbound(text),
    }
}

/// The skim of `parse_inbound`: `None` when it leaves the frame to serde_json.
/// Where it answers, it answers as serde_json would (tests/fuzz_protocol.rs).
pub fn skim_inbound(text: &str) -> Option<Inbound<'_>> {
    use json_skim::{skip_key, skip_value, skip_ws};
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    // Duplicate keys keep the last value, as JSON.parse does.
    let (mut event, mut data) = (None, None);
    // For `spans`: how many keys, and whether `event` was the first.
    let (mut keys, mut event_first) = (0u32, false);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let (end, escaped, colon) = skip_key(b, i)?;
            if escaped {
                return None;
            }
            let key = &b[i + 1..end - 1];
            let start = skip_ws(b, colon);
            let value_end = skip_value(b, start)?;
            // Cut at ASCII bytes: the slices stay UTF-8.
            match key {
                b"event" => {
                    event = Some(&text[start..value_end]);
                    event_first = keys == 0;
                }
                b"data" => data = Some(&text[start..value_end]),
                _ => {}
            }
            keys += 1;
            i = skip_ws(b, value_end);
            match b.get(i)? {
                b',' => i = skip_ws(b, i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if skip_ws(b, i) != b.len() {
        return None;
    }
    // Two keys, `event` first, and `data` among them: `event` then `data`.
    let spans = match (event, data) {
        (Some(e), Some(d)) if keys == 2 && event_first => EventDataSpans::of(text, e, d),
        _ => None,
    };
    let event = match event {
        None => EventName::Falsy,
        Some(raw) => classify_event(raw).ok()?,
    };
    Some(Inbound { event, data, spans })
}

/// serde_json's way to the same answer: what `parse_inbound` falls back on,
/// and what tests/fuzz_protocol.rs holds the skim to.
pub fn deserialize_inbound(text: &str) -> Result<Inbound<'_>, ParseError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = InboundVisitorResult::deserialize(&mut de).map_err(|_| ParseError::InvalidJson)?;
    de.end().map_err(|_| ParseError::InvalidJson)?;
    Ok(Inbound {
        event: parsed.event,
        data: parsed.data.map(RawValue::get),
        spans: None,
    })
}

struct InboundVisitorResult<'a> {
    event: EventName<'a>,
    data: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for InboundVisitorResult<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FrameVisitor)
    }
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = InboundVisitorResult<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Duplicate keys keep the last value, as JSON.parse does.
        let mut event: Option<&'de RawValue> = None;
        let mut data: Option<&'de RawValue> = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Event => event = Some(map.next_value()?),
                Key::Data => data = Some(map.next_value()?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let event = match event {
            None => EventName::Falsy,
            Some(raw) => classify_event(raw.get()).map_err(de::Error::custom)?,
        };
        Ok(InboundVisitorResult { event, data })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_an_object())
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(not_an_object())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(not_an_object())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(not_an_object())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(not_an_object())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(not_an_object())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(not_an_object())
    }
}

/// A key of an inbound frame, told apart without allocating (a key with
/// escapes is decoded into the parser's scratch space, as `JSON.parse`
/// would decode it).
enum Key {
    Event,
    Data,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "event" => Key::Event,
                    "data" => Key::Data,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

fn not_an_object<'a>() -> InboundVisitorResult<'a> {
    InboundVisitorResult {
        event: EventName::Falsy,
        data: None,
    }
}

/// `text` is the `event` value's JSON text, already checked.
fn classify_event(text: &str) -> Result<EventName<'_>, serde_json::Error> {
    match text.as_bytes().first() {
        Some(b'"') => {
            // `text` is a checked JSON string: without a backslash, what
            // lies between its quotes is its value.
            let s: Cow<'_, str> = if text.contains('\\') {
                Cow::Owned(serde_json::from_str::<String>(text)?)
            } else {
                Cow::Borrowed(&text[1..text.len() - 1])
            };
            Ok(if s.is_empty() {
                EventName::Falsy
            } else {
                EventName::Str(s)
            })
        }
        Some(b'n') | Some(b'f') => Ok(EventName::Falsy),
        Some(b'-') | Some(b'0'..=b'9') => {
            let n: f64 = serde_json::from_str(text)?;
            Ok(if n == 0.0 {
                EventName::Falsy
            } else {
                EventName::Other
            })
        }
        _ => Ok(EventName::Other),
    }
}

/// The JSON text to hand to `authenticateFn`: the original passes
/// `message.data ?? {}`.
pub fn auth_payload(data: Option<&str>) -> &str {
    match data {
        None | Some("null") => "{}",
        Some(d) => d,
    }
}

/// `rooms` out of a `join`/`leave` payload. Anything that is not an object
/// with an array `rooms` yields nothing; non-string entries are dropped here,
/// duplicates are removed, and at most `max` distinct names are kept.
pub fn parse_rooms(data: Option<&str>, max: usize) -> Vec<String> {
    #[derive(Deserialize)]
    struct Payload<'a> {
        #[serde(borrow)]
        rooms: Option<&'a RawValue>,
    }
    let Some(data) = data else { return Vec::new() };
    let Ok(payload) = serde_json::from_str::<Payload>(data) else {
        return Vec::new();
    };
    let Some(rooms) = payload.rooms else {
        return Vec::new();
    };
    let Ok(entries) = serde_json::from_str::<Vec<&RawValue>>(rooms.get()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for entry in entries {
        if out.len() >= max {
            break;
        }
        if let Ok(name) = serde_json::from_str::<String>(entry.get()) {
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// The original's join filter: 1..=256 UTF-16 code units, not `ws:`-prefixed.
pub fn is_joinable_room(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(INTERNAL_PREFIX)
        && name.encode_utf16().take(MAX_ROOM_NAME_LENGTH + 1).count() <= MAX_ROOM_NAME_LENGTH
}

/// `new Date(ms).toISOString()` for a Unix time in milliseconds.
pub fn iso_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant), valid for the whole u64 ms range we use.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        y,
        m,
        d,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// The `connected` frame (docs/PROTOCOL.md §4.6). `userId` is left out when the
/// authenticator returned none, as `JSON.stringify` drops `undefined`.
pub fn connected_frame(
    client_id: &str,
    user_id: Option<&str>,
    now_ms: u64,
    keys: Option<(&str, &str)>,
) -> Frame {
    let q = |s: &str| serde_json::to_string(s).expect("a string always serializes");
    let mut data = format!("{{\"id\":{}", q(client_id));
    if let Some(u) = user_id {
        data.push_str(",\"userId\":");
        data.push_str(&q(u));
    }
    data.push_str(",\"time\":");
    data.push_str(&q(&iso_time(now_ms)));
    if let Some((public_key, salt)) = keys {
        data.push_str(",\"serverPublicKey\":");
        data.push_str(&q(public_key));
        data.push_str(",\"salt\":");
        data.push_str(&q(salt));
    }
    data.push('}');
    encode_frame(events::CONNECTED, Some(&data))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_only_for_a_frame_of_event_then_data() {
        let spans = |text: &str| {
            let f = parse_inbound(text).unwrap();
            f.spans
                .map(|s| (s.event(text).to_string(), s.data(text).to_string()))
        };
        let pair = |e: &str, d: &str| Some((e.to_string(), d.to_string()));
        assert_eq!(
            spans(r#"{"event":"a","data":{"k":[1]}}"#),
            pair(r#""a""#, r#"{"k":[1]}"#)
        );
        assert_eq!(
            spans(" {\n \"event\" : 7 ,\t\"data\":null } "),
            pair("7", "null")
        );
        assert_eq!(
            spans(r#"{"event":"é\"","data":"\u00e9"}"#),
            pair(r#""é\"""#, r#""\u00e9""#)
        );
        for other in [
            r#"{"data":1,"event":"a"}"#,
            r#"{"event":"a"}"#,
            r#"{"data":1}"#,
            r#"{}"#,
            r#"{"event":"a","data":1,"id":"x"}"#,
            r#"{"id":"x","event":"a","data":1}"#,
            r#"{"event":"a","event":"b","data":1}"#,
            r#"{"event":"a","data":1,"data":2}"#,
            r#"{"ev\u0065nt":"a","data":1}"#,
            r#"{"event":"a","d\u0061ta":1}"#,
            r#"[{"event":"a","data":1}]"#,
        ] {
            assert_eq!(spans(other), None, "{other}");
        }
    }

    #[test]
    fn needs_escape_agrees_with_serde_json_byte_by_byte() {
        // Every byte value at every position of an 8-byte chunk and of the
        // remainder, among plain bytes.
        for len in [1, 7, 8, 9, 16, 17, 36] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    let plain = b >= 0x20 && b != b'"' && b != b'\\';
                    assert_eq!(needs_escape(&v), !plain, "byte {b:#x} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("é€😀 \u{7f}~".as_bytes()));
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\u{1}é");
        assert_eq!(out, serde_json::to_string("a\"b\u{1}é").unwrap());
    }

    #[test]
    fn send_batches_split_into_calls_each_framed() {
        let mut got: Vec<(String, String)> = Vec::new();
        each_queued_send(
            "a\nx\n{\"k\":1}\nb\u{e9}\ne\"\u{e9}\n\"\\n\"\nc\nbare\n\ndangling\nevent",
            |id, frame| got.push((id.to_string(), frame.as_str().to_string())),
        );
        let got: Vec<(&str, &str)> = got.iter().map(|(i, f)| (i.as_str(), f.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("a", r#"{"event":"x","data":{"k":1}}"#),
                ("b\u{e9}", "{\"event\":\"e\\\"\u{e9}\",\"data\":\"\\n\"}"),
                // `data` undefined: no `data` key, as JSON.stringify leaves it out.
                ("c", r#"{"event":"bare"}"#),
            ]
        );
        // Each frame is what JSON.stringify({ event, data }) gives.
        let v: serde_json::Value = serde_json::from_str(got[1].1).unwrap();
        assert_eq!(v, serde_json::json!({"event": "e\"\u{e9}", "data": "\n"}));
        let mut none = 0;
        each_queued_send("", |_, _| none += 1);
        assert_eq!(none, 0);
    }

    fn event(text: &str) -> EventName<'_> {
        parse_inbound(text).unwrap().event
    }

    #[test]
    fn events_are_judged_like_javascript_truthiness() {
        assert_eq!(event(r#"{"event":"join"}"#), EventName::Str("join".into()));
        assert_eq!(
            event(r#"{"event":"heart\u0062eat"}"#),
            EventName::Str("heartbeat".into())
        );
        assert_eq!(event(r#"{"event":""}"#), EventName::Falsy);
        assert_eq!(event(r#"{"event":null}"#), EventName::Falsy);
        assert_eq!(event(r#"{"event":0}"#), EventName::Falsy);
        assert_eq!(event(r#"{"event":-0.0}"#), EventName::Falsy);
        assert_eq!(event(r#"{"event":false}"#), EventName::Falsy);
        assert_eq!(event(r#"{"event":7}"#), EventName::Other);
        assert_eq!(event(r#"{"event":{"a":1}}"#), EventName::Other);
        assert_eq!(event(r#"{"data":1}"#), EventName::Falsy);
        assert_eq!(event(r#"[1,2]"#), EventName::Falsy);
        assert_eq!(event(r#"null"#), EventName::Falsy);
        assert_eq!(event(r#""event""#), EventName::Falsy);
        assert_eq!(
            event(r#"{"event":"a","event":"b"}"#),
            EventName::Str("b".into())
        );
        // Keys are compared decoded, as JSON.parse makes them.
        assert_eq!(
            event(r#"{"ev\u0065nt":"x","d\u0061ta":1}"#),
            EventName::Str("x".into())
        );
        assert_eq!(
            parse_inbound(r#"{"d\u0061ta":[1]}"#).unwrap().data,
            Some("[1]")
        );
        // A plain name is borrowed from the frame; one with escapes is decoded.
        assert!(matches!(
            event(r#"{"event":"join"}"#),
            EventName::Str(Cow::Borrowed("join"))
        ));
        assert!(
            matches!(event(r#"{"event":"a\"b"}"#), EventName::Str(Cow::Owned(s)) if s == "a\"b")
        );
    }

    #[test]
    fn invalid_json_is_reported() {
        assert_eq!(parse_inbound("{").unwrap_err(), ParseError::InvalidJson);
        assert_eq!(parse_inbound("").unwrap_err(), ParseError::InvalidJson);
        assert_eq!(parse_inbound("{} x").unwrap_err(), ParseError::InvalidJson);
        // Very deep nesting is skipped without recursion or refused: never
        // a stack overflow, never routed.
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(!matches!(
            parse_inbound(&deep),
            Ok(Inbound {
                event: EventName::Str(_),
                ..
            })
        ));
        let deep_obj = r#"{"event":"x","data":"#.to_string()
            + &"{\"a\":".repeat(50_000)
            + "1"
            + &"}".repeat(50_001);
        let _ = parse_inbound(&deep_obj);
    }

    #[test]
    fn data_is_kept_raw() {
        let f = parse_inbound(r#"{"event":"x","data":{"a":[1, 2]},"id":"9"}"#).unwrap();
        assert_eq!(f.data, Some(r#"{"a":[1, 2]}"#));
        assert_eq!(auth_payload(f.data), r#"{"a":[1, 2]}"#);
        assert_eq!(auth_payload(None), "{}");
        let n = parse_inbound(r#"{"event":"x","data":null}"#).unwrap();
        assert_eq!(auth_payload(n.data), "{}");
    }

    #[test]
    fn rooms_are_extracted_defensively() {
        let rooms = |t: &str| parse_rooms(parse_inbound(t).unwrap().data, 100);
        assert_eq!(
            rooms(r#"{"event":"join","data":{"rooms":["a",1,"b","a",null]}}"#),
            vec!["a", "b"]
        );
        assert!(rooms(r#"{"event":"join","data":{"rooms":"abc"}}"#).is_empty());
        assert!(rooms(r#"{"event":"join","data":5}"#).is_empty());
        assert!(rooms(r#"{"event":"join"}"#).is_empty());
        let many = format!(
            r#"{{"event":"join","data":{{"rooms":[{}]}}}}"#,
            (0..10_000)
                .map(|i| format!("\"r{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(rooms(&many).len(), 100);
    }

    #[test]
    fn room_names_follow_the_original_filter() {
        assert!(is_joinable_room("lobby"));
        assert!(!is_joinable_room(""));
        assert!(!is_joinable_room("ws:broadcast"));
        assert!(is_joinable_room(&"a".repeat(256)));
        assert!(!is_joinable_room(&"a".repeat(257)));
        // 128 astral characters are 256 UTF-16 units; 129 are too many.
        assert!(is_joinable_room(&"😀".repeat(128)));
        assert!(!is_joinable_room(&"😀".repeat(129)));
    }

    #[test]
    fn frames_match_json_stringify() {
        assert_eq!(
            encode_frame("chat", Some(r#"{"a":1}"#)).as_str(),
            r#"{"event":"chat","data":{"a":1}}"#
        );
        assert_eq!(encode_frame("x", None).as_str(), r#"{"event":"x"}"#);
        assert_eq!(
            error_frame("Not authenticated").as_str(),
            r#"{"event":"error","data":{"message":"Not authenticated"}}"#
        );
    }

    #[test]
    fn iso_time_matches_date_to_iso_string() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(1_795_545_288_123), "2026-11-24T18:34:48.123Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn connected_frame_omits_missing_user() {
        let f = connected_frame("c1", None, 0, None);
        assert_eq!(
            f.as_str(),
            r#"{"event":"connected","data":{"id":"c1","time":"1970-01-01T00:00:00.000Z"}}"#
        );
        let f = connected_frame("c1", Some("u"), 0, Some(("pk", "s")));
        assert!(f.as_str().contains(r#""userId":"u","time""#));
        assert!(f
            .as_str()
            .ends_with(r#""serverPublicKey":"pk","salt":"s"}}"#));
    }
}
