//! Names of the keys this package keeps in Redis for a room (history and
//! presence), placed in the hash slot of the room's channel.
//!
//! The history script publishes on the room's channel in the same call
//! that appends to the room's stream. On Redis Cluster with sharded
//! Pub/Sub (SPUBLISH), a script may only publish on a channel of the slot
//! its keys live in, so every key of a room carries a hash tag chosen to
//! land in the channel's slot (`ws:history:{2431}:chat-1:meta`). A tag
//! derived from the room name alone would not do: room names may contain
//! braces, which change how Redis hashes the channel.
//!
//! The slot function is Redis's (CRC16/XMODEM of the hash tag or the whole
//! name, modulo 16384). It is written out here because redis-rs keeps its
//! own private.

use std::sync::OnceLock;

const SLOTS: usize = 16384;

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of a key or channel name, hash tags included.
pub fn slot(name: &str) -> u16 {
    let b = name.as_bytes();
    let hashed = match b.iter().position(|&c| c == b'{') {
        Some(open) => match b[open + 1..].iter().position(|&c| c == b'}') {
            Some(len) if len > 0 => &b[open + 1..open + 1 + len],
            _ => b,
        },
        None => b,
    };
    crc16(hashed) % SLOTS as u16
}

/// For each slot, a short tag that hashes to it (the first decimal number
/// that does): built once, in a few milliseconds.
fn tags() -> &'static [Box<str>] {
    static TAGS: OnceLock<Vec<Box<str>>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags: Vec<Option<Box<str>>> = vec![None; SLOTS];
        let mut left = SLOTS;
        let mut n: u64 = 0;
        while left > 0 {
            let s = n.to_string();
            let t = &mut tags[usize::from(crc16(s.as_bytes()) % SLOTS as u16)];
            if t.is_none() {
                *t = Some(s.into());
                left -= 1;
            }
            n += 1;
        }
        tags.into_iter().map(|t| t.expect("every slot")).collect()
    })
}

/// `<prefix>:{<tag>}:<room>:<suffix>`, in the slot of `ws:room:<room>`.
pub fn room_key(prefix: &str, room: &str, suffix: &str) -> String {
    let [key] = room_keys(prefix, room, [suffix]);
    key
}

/// Several keys of one room (the slot is computed once).
pub fn room_keys<const N: usize>(prefix: &str, room: &str, suffixes: [&str; N]) -> [String; N] {
    let channel = crate::core::envelope::channel(crate::core::envelope::Kind::Room, Some(room));
    let tag = &tags()[usize::from(slot(&channel))];
    suffixes.map(|suffix| format!("{prefix}:{{{tag}}}:{room}:{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_slots() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(
            slot("foo{}{bar}"),
            slot("bar"),
            "an empty tag hashes the whole name"
        );
    }

    #[test]
    fn room_keys_share_the_channel_slot_whatever_the_name() {
        for room in ["chat-1", "a{b}c", "}{", "x}y", "{}", "ünï", ""] {
            let ch = format!("ws:room:{room}");
            for suffix in ["meta", "log"] {
                let key = room_key("ws:history", room, suffix);
                assert_eq!(slot(&key), slot(&ch), "{key}");
            }
        }
    }
}
