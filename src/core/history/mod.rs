//! History rooms (option `history`): the last publications of a room, kept
//! so that a client that was away can recover what it missed
//! (docs/PROTOCOL.md §15).
//!
//! - [`protocol`]: what both kinds share (the option, `recover`, the
//!   positioned and `joined` frames);
//! - [`local`]: kept in process, for a single instance;
//! - [`redis`]: kept in Redis, shared by the fleet.
//!
//! [`Backend`], the choice between the two, sits above both.

pub mod local;
pub mod protocol;
pub mod redis;

use crate::core::hub::Hub;
use local::History;
use redis::RedisHistory;
use std::sync::Arc;

/// Where a server keeps its history rooms: in process, or in Redis when
/// it has one (shared by the fleet).
#[derive(Clone)]
pub enum Backend {
    Local(Arc<History>),
    Redis(Arc<RedisHistory>),
}

impl Backend {
    pub fn applies(&self, room: &str) -> bool {
        match self {
            Backend::Local(h) => h.applies(room),
            Backend::Redis(h) => h.applies(room),
        }
    }

    /// A publication to a history room. In process it is delivered here and
    /// now (returns how many members got it); with Redis it is queued for
    /// Redis to position and publish to every instance (returns 0).
    pub fn publish(&self, hub: &Hub, room: &str, frame_json: &str, exclude: &[String]) -> usize {
        match self {
            Backend::Local(h) => h.publish(hub, room, frame_json, exclude),
            Backend::Redis(h) => {
                h.publish(room, frame_json, exclude);
                0
            }
        }
    }
}
