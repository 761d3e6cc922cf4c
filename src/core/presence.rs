//! Presence (option `presence`): who is in a room, and optionally `presence`
//! events to a room's members when someone joins or leaves it.
//!
//! Without Redis the members are this instance's (the hub's). With Redis
//! every instance also keeps its members in Redis ([`RedisPresence`]), so
//! `getPresence` answers for the whole fleet, and join/leave events reach
//! the room's members on every instance.

use crate::core::envelope::{self, Kind};
use crate::core::hub::Hub;
use crate::core::presence_redis::RedisPresence;
use crate::core::protocol;
use crate::core::room_selection::RoomSelection;
use std::sync::Arc;

pub struct Presence {
    pub rooms: RoomSelection,
    /// Send `presence` join/leave events to the room's members.
    pub events: bool,
    /// Set with Redis: the fleet's members and events.
    pub fleet: Option<Arc<RedisPresence>>,
}

impl Presence {
    pub fn applies(&self, room: &str) -> bool {
        self.rooms.applies(room)
    }

    /// `client_id` joined or left a room: records it (with Redis) and tells
    /// the room's other members (when events are on).
    pub fn announce(
        &self,
        hub: &Hub,
        room: &str,
        client_id: &str,
        user_id: Option<&str>,
        joined: bool,
    ) {
        if !self.applies(room) {
            return;
        }
        if let Some(fleet) = &self.fleet {
            if joined {
                if let Some(c) = hub.get(client_id) {
                    fleet.add(room, &c);
                }
            } else {
                fleet.remove(room, client_id);
            }
        }
        if self.events {
            let data = data(room, client_id, user_id, joined);
            let exclude = [client_id.to_string()];
            hub.send_to_room(
                room,
                &protocol::encode_frame(protocol::events::PRESENCE, Some(&data)),
                &exclude,
            );
            if let Some(fleet) = &self.fleet {
                fleet.publish(
                    room,
                    envelope::encode(
                        fleet.server_id(),
                        Kind::Room,
                        Some(room),
                        protocol::events::PRESENCE,
                        Some(&data),
                        Some(&exclude),
                    ),
                );
            }
        }
    }
}

/// `{"room":R,"clientId":C,"userId":U,"state":"join"|"leave"}`
fn data(room: &str, client_id: &str, user_id: Option<&str>, joined: bool) -> String {
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
    data
}
