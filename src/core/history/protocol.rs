//! What both kinds of history share: the option, the `recover` a client
//! sends, the epoch, and the two frames a member receives (a positioned
//! publication and `joined`). docs/PROTOCOL.md §15.
//!
//! Each publication to a history room gets the room's next offset (exactly
//! +1 per publication) and the room's epoch, a string that changes only
//! when the room's history is lost (its time to live ran out), so a client
//! holding an offset of another epoch knows it cannot recover from it.
//! Members receive `{"event":E,"data":D,"room":R,"offset":N,"epoch":"S"}`.

use crate::core::protocol::{self, Frame};
use crate::core::room_selection::RoomSelection;
use std::collections::HashMap;
use std::time::Duration;

/// `history` as configured.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Publications kept per room.
    pub size: usize,
    /// How long a room's history lives after its last publication.
    pub ttl: Duration,
    pub rooms: RoomSelection,
}

/// What a client asked to recover a room from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recover {
    /// Recover from this position.
    From { offset: u64, epoch: String },
    /// Asked, but the entry was malformed: answered `recovered: false`.
    Malformed,
}

/// Longest epoch a client may send back.
pub const MAX_EPOCH_LENGTH: usize = 64;

pub fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_string()
}

/// `{"event":E,"data":D}` → `{"event":E,"data":D,"room":R,"offset":N,"epoch":"S"}`.
pub fn positioned(frame_json: &str, room: &str, offset: u64, epoch: &str) -> Frame {
    let body = frame_json.trim_end();
    let body = body.strip_suffix('}').unwrap_or(body);
    let mut out = String::with_capacity(
        protocol::HEADROOM.len() + body.len() + room.len() + epoch.len() + 48,
    );
    out.push_str(protocol::HEADROOM);
    out.push_str(body);
    out.push_str(",\"room\":");
    protocol::push_json_str(&mut out, room);
    out.push_str(",\"offset\":");
    out.push_str(&offset.to_string());
    out.push_str(",\"epoch\":");
    protocol::push_json_str(&mut out, epoch);
    out.push('}');
    Frame::from_headroom(out)
}

/// `{"event":"joined","data":{"room":R,"offset":M,"epoch":"S"[,"recovered":B]}}`
pub fn joined_frame(room: &str, offset: u64, epoch: &str, recovered: Option<bool>) -> Frame {
    let mut data = String::with_capacity(room.len() + epoch.len() + 64);
    data.push_str("{\"room\":");
    protocol::push_json_str(&mut data, room);
    data.push_str(",\"offset\":");
    data.push_str(&offset.to_string());
    data.push_str(",\"epoch\":");
    protocol::push_json_str(&mut data, epoch);
    if let Some(r) = recovered {
        data.push_str(if r {
            ",\"recovered\":true"
        } else {
            ",\"recovered\":false"
        });
    }
    data.push('}');
    protocol::encode_frame(protocol::events::JOINED, Some(&data))
}

/// The `recover` map of a `join` payload: for each named room, where to
/// recover from, or `Malformed` (a non-object, a negative or non-integer
/// offset, a missing or overlong epoch). More entries than `max` are
/// ignored. Anything else about the payload yields an empty map.
pub fn parse_recover(data: Option<&str>, max: usize) -> HashMap<String, Recover> {
    let mut out = HashMap::new();
    let Some(data) = data else { return out };
    let Ok(serde_json::Value::Object(payload)) = serde_json::from_str::<serde_json::Value>(data)
    else {
        return out;
    };
    let Some(serde_json::Value::Object(recover)) = payload.get("recover") else {
        return out;
    };
    for (room, entry) in recover.iter().take(max) {
        let parsed = entry.as_object().and_then(|e| {
            let offset = e.get("offset")?.as_u64()?;
            let epoch = e.get("epoch")?.as_str()?;
            (epoch.len() <= MAX_EPOCH_LENGTH).then(|| Recover::From {
                offset,
                epoch: epoch.to_string(),
            })
        });
        out.insert(room.clone(), parsed.unwrap_or(Recover::Malformed));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recover_entries_are_read_leniently() {
        let raw = r#"{"rooms":["a","b","c","d","e"],"recover":{"a":{"offset":3,"epoch":"x"},"b":"nope","c":{"offset":-1,"epoch":"x"},"d":{"offset":1.5,"epoch":"x"},"e":{"offset":1,"epoch":"#.to_string()
                + &format!("\"{}\"", "e".repeat(65))
                + "}}}";
        let r = parse_recover(Some(&raw), 16);
        assert_eq!(
            r["a"],
            Recover::From {
                offset: 3,
                epoch: "x".into()
            }
        );
        for room in ["b", "c", "d", "e"] {
            assert_eq!(r[room], Recover::Malformed, "{room}");
        }
        assert!(parse_recover(None, 16).is_empty());
    }
}
