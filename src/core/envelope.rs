//! The cross-instance envelope and channel names (docs/PROTOCOL.md §10), byte for
//! byte what the original's `JSON.stringify` produces, so original servers,
//! original emitters and this project can share one Redis.
//!
//! `data` is carried as raw JSON text both ways: an instance that forwards an
//! envelope to its sockets never parses or re-serializes the payload.

use crate::core::protocol::{self, Frame};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

pub const BROADCAST_CHANNEL: &str = "ws:broadcast";
pub const ROOM_PREFIX: &str = "ws:room:";
pub const CLIENT_PREFIX: &str = "ws:client:";
pub const USER_PREFIX: &str = "ws:user:";
/// The `serverId` every `WebSocketEmitter` publishes with; never deduped.
pub const EMITTER_SERVER_ID: &str = "emitter";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Client,
    User,
    Room,
    Broadcast,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::User => "user",
            Kind::Room => "room",
            Kind::Broadcast => "broadcast",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "client" => Kind::Client,
            "user" => Kind::User,
            "room" => Kind::Room,
            "broadcast" => Kind::Broadcast,
            _ => return None,
        })
    }
}

/// The channel an envelope of this kind and target is published on.
pub fn channel(kind: Kind, target: Option<&str>) -> String {
    let t = target.unwrap_or("undefined");
    match kind {
        Kind::Broadcast => BROADCAST_CHANNEL.to_string(),
        Kind::Room => format!("{ROOM_PREFIX}{t}"),
        Kind::Client => format!("{CLIENT_PREFIX}{t}"),
        Kind::User => format!("{USER_PREFIX}{t}"),
    }
}

/// `JSON.stringify({serverId, type, target, event, data, exclude})`:
/// `undefined` members (`target`, `data`, `exclude`) are left out.
pub fn encode(
    server_id: &str,
    kind: Kind,
    target: Option<&str>,
    event: &str,
    data_json: Option<&str>,
    exclude: Option<&[String]>,
) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string always serializes");
    let mut out = String::with_capacity(96 + event.len() + data_json.map_or(0, str::len));
    out.push_str("{\"serverId\":");
    out.push_str(&q(server_id));
    out.push_str(",\"type\":\"");
    out.push_str(kind.as_str());
    out.push('"');
    if let Some(t) = target {
        out.push_str(",\"target\":");
        out.push_str(&q(t));
    }
    out.push_str(",\"event\":");
    out.push_str(&q(event));
    if let Some(d) = data_json {
        out.push_str(",\"data\":");
        out.push_str(d);
    }
    if let Some(ex) = exclude {
        out.push_str(",\"exclude\":");
        out.push_str(&serde_json::to_string(ex).expect("strings always serialize"));
    }
    out.push('}');
    out
}

/// An envelope read off the bus.
#[derive(Debug)]
pub struct Incoming<'a> {
    pub server_id: Cow<'a, str>,
    pub kind: Option<Kind>,
    /// Falsy targets (missing, `null`, `""`) read as `None`, as the
    /// original's `if (target)`.
    pub target: Option<Cow<'a, str>>,
    pub event: Cow<'a, str>,
    pub data: Option<&'a RawValue>,
    pub exclude: Vec<String>,
    /// A history room's position of this publication (envelopes from this
    /// package's servers and emitters with the `history` option); the
    /// original's envelopes have none.
    pub position: Option<(u64, Cow<'a, str>)>,
}

impl Incoming<'_> {
    /// The frame local sockets receive: `{"event":..,"data":..}`.
    pub fn frame(&self) -> Frame {
        protocol::encode_frame(&self.event, self.data.map(RawValue::get))
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "serverId", borrow)]
    server_id: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    target: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    exclude: Option<&'a RawValue>,
    offset: Option<u64>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
}

fn as_str(v: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let v = v?;
    serde_json::from_str::<Cow<str>>(v.get()).ok()
}

/// Parses an envelope with the original's checks: a JSON object whose
/// `serverId` and `event` are strings. Anything else is an error (logged by
/// the caller and ignored).
pub fn decode(text: &str) -> Result<Incoming<'_>, &'static str> {
    let wire: Wire = serde_json::from_str(text).map_err(|_| "not a JSON object")?;
    let server_id = as_str(wire.server_id).ok_or("serverId is not a string")?;
    let event = as_str(wire.event).ok_or("event is not a string")?;
    let kind = as_str(wire.kind).and_then(|k| Kind::parse(&k));
    let target = as_str(wire.target).filter(|t| !t.is_empty());
    let exclude = wire
        .exclude
        .and_then(|e| serde_json::from_str::<Vec<&RawValue>>(e.get()).ok())
        .map(|items| {
            items
                .into_iter()
                .filter_map(|i| serde_json::from_str::<String>(i.get()).ok())
                .collect()
        })
        .unwrap_or_default();
    Ok(Incoming {
        server_id,
        kind,
        target,
        event,
        data: wire.data,
        exclude,
        position: wire.offset.zip(wire.epoch),
    })
}

/// The head of a room envelope (everything but the closing brace) built
/// from a frame `{"event":E[,"data":D]}`, as `encode` would write it: the
/// history script appends the offset and epoch it assigns.
pub fn room_head(server_id: &str, room: &str, frame_json: &str, exclude: &[String]) -> String {
    let body = frame_json.trim();
    let body = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or(body);
    let mut out = String::with_capacity(64 + room.len() + body.len());
    out.push_str("{\"serverId\":");
    protocol::push_json_str(&mut out, server_id);
    out.push_str(",\"type\":\"room\",\"target\":");
    protocol::push_json_str(&mut out, room);
    out.push(',');
    out.push_str(body);
    if !exclude.is_empty() {
        out.push_str(",\"exclude\":");
        out.push_str(&serde_json::to_string(exclude).expect("strings always serialize"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_json_stringify() {
        assert_eq!(
            encode(
                "s1",
                Kind::Room,
                Some("r"),
                "e",
                Some("{\"a\":1}"),
                Some(&["x".to_string()])
            ),
            r#"{"serverId":"s1","type":"room","target":"r","event":"e","data":{"a":1},"exclude":["x"]}"#
        );
        assert_eq!(
            encode("emitter", Kind::Broadcast, None, "e", Some("1"), None),
            r#"{"serverId":"emitter","type":"broadcast","event":"e","data":1}"#
        );
        assert_eq!(channel(Kind::User, Some("u")), "ws:user:u");
        let ex = ["x".to_string()];
        assert_eq!(
            room_head("s1", "r", r#"{"event":"e","data":{"a":1}}"#, &ex) + "}",
            encode(
                "s1",
                Kind::Room,
                Some("r"),
                "e",
                Some(r#"{"a":1}"#),
                Some(&ex)
            )
        );
        assert_eq!(
            room_head("s1", "r", r#"{"event":"e"}"#, &[]) + "}",
            encode("s1", Kind::Room, Some("r"), "e", None, None)
        );
        assert_eq!(channel(Kind::Broadcast, None), "ws:broadcast");
    }

    #[test]
    fn decodes_with_the_original_checks() {
        let e = decode(r#"{"serverId":"a","type":"room","target":"r","event":"x","data":{"k":[1]},"exclude":["c",2]}"#).unwrap();
        assert_eq!(e.kind, Some(Kind::Room));
        assert_eq!(e.target.as_deref(), Some("r"));
        assert_eq!(e.exclude, vec!["c"]);
        assert_eq!(e.frame().as_str(), r#"{"event":"x","data":{"k":[1]}}"#);
        assert!(decode("nope").is_err());
        assert!(decode("[]").is_err());
        assert!(decode(r#"{"serverId":1,"event":"x"}"#).is_err());
        assert!(decode(r#"{"serverId":"a"}"#).is_err());
        assert_eq!(e.position, None);
        let p = decode(
            r#"{"serverId":"a","type":"room","target":"r","event":"x","offset":7,"epoch":"e1"}"#,
        )
        .unwrap();
        assert_eq!(p.position, Some((7, Cow::Borrowed("e1"))));
        let odd = decode(r#"{"serverId":"a","type":"weird","target":"","event":"x"}"#).unwrap();
        assert_eq!(odd.kind, None);
        assert_eq!(odd.target, None);
    }
}
