//! Presence (option `presence`): who is in a room, and optionally `presence`
//! events to a room's members when someone joins or leaves it. Per instance
//! in this version: the members are the hub's.

use crate::core::history::RoomSelection;
use crate::core::hub::Hub;
use crate::core::protocol::{self, Frame};

pub struct Presence {
    pub rooms: RoomSelection,
    /// Send `presence` join/leave events to the room's members.
    pub events: bool,
}

impl Presence {
    pub fn applies(&self, room: &str) -> bool {
        self.rooms.applies(room)
    }

    /// Tells a presence room's other members that `client_id` joined or
    /// left it (when events are on).
    pub fn announce(
        &self,
        hub: &Hub,
        room: &str,
        client_id: &str,
        user_id: Option<&str>,
        joined: bool,
    ) {
        if self.events && self.applies(room) {
            hub.send_to_room(
                room,
                &frame(room, client_id, user_id, joined),
                &[client_id.to_string()],
            );
        }
    }
}

/// `{"event":"presence","data":{"room":R,"clientId":C,"userId":U,"state":"join"|"leave"}}`
pub fn frame(room: &str, client_id: &str, user_id: Option<&str>, joined: bool) -> Frame {
    let mut data = String::with_capacity(room.len() + client_id.len() + 80);
    data.push_str("{\"room\":");
    protocol::push_json_str(&mut data, room);
    data.push_str(",\"clientId\":");
    protocol::push_json_str(&mut data, client_id);
    data.push_str(",\"userId\":");
    match user_id {
        Some(u) => protocol::push_json_str(&mut data, u),
        None => data.push_str("null"),
    }
    data.push_str(if joined {
        ",\"state\":\"join\"}"
    } else {
        ",\"state\":\"leave\"}"
    });
    protocol::encode_frame(protocol::events::PRESENCE, Some(&data))
}
