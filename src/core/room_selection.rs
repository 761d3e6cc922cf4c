//! Which rooms an option (`history`, `presence`) applies to.

/// Which rooms an option (`history`, `presence`) applies to.
#[derive(Debug, Clone)]
pub struct RoomSelection {
    /// Names, or prefixes ending in `*`; `None`: every room but the default
    /// rooms and client-id rooms.
    pub rooms: Option<Vec<String>>,
    pub default_rooms: Vec<String>,
}

impl RoomSelection {
    pub fn applies(&self, room: &str) -> bool {
        match &self.rooms {
            Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => p == room,
            }),
            None => !self.default_rooms.iter().any(|d| d == room) && !looks_like_client_id(room),
        }
    }
}

/// Client ids are UUIDs; every client is alone in the room named by its id.
fn looks_like_client_id(room: &str) -> bool {
    room.len() == 36 && uuid::Uuid::try_parse(room).is_ok()
}
