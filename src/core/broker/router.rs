//! The two links between the hub and the bus: envelopes received from
//! other instances are delivered to local sockets (docs/PROTOCOL.md §10),
//! and the hub's changes of local interest become subscriptions.

use super::{Broker, Subscriber};
use crate::core::envelope::{self, Kind};
use crate::core::history_redis::RedisHistory;
use crate::core::hub::{Hub, Interest, InterestListener};
use crate::core::log::Logger;
use crate::core::stats::{bump, Stats};
use std::sync::Arc;

/// Delivers envelopes from the bus to local sockets.
pub struct Router {
    pub hub: Arc<Hub>,
    /// This instance's id: envelopes carrying it were delivered locally
    /// already.
    pub server_id: String,
    pub stats: Arc<Stats>,
    pub log: Logger,
    /// Set when history rooms live in Redis: positioned envelopes go
    /// through it (this instance's own included).
    pub history: std::sync::OnceLock<Arc<RedisHistory>>,
}

impl Subscriber for Router {
    fn deliver(&self, channel: &str, payload: &str) {
        let env = match envelope::decode(payload) {
            Ok(e) => e,
            Err(why) => {
                bump(&self.stats.bus_invalid);
                self.log.error(
                    "Invalid Redis message",
                    &[("reason", &why), ("channel", &channel)],
                );
                return;
            }
        };
        if let (Some(Kind::Room), Some(room), Some((offset, epoch)), Some(h)) = (
            env.kind,
            env.target.as_deref(),
            env.position.as_ref(),
            self.history.get(),
        ) {
            if h.applies(room) {
                h.deliver(room, &env, *offset, epoch);
                return;
            }
        }
        if env.server_id == self.server_id {
            return;
        }
        let hub = &self.hub;
        match (env.kind, env.target.as_deref()) {
            (Some(Kind::Broadcast), _) => {
                hub.broadcast(&env.frame(), &env.exclude);
            }
            (Some(Kind::Room), Some(room)) => {
                hub.send_to_room(room, &env.frame(), &env.exclude);
            }
            (Some(Kind::Client), Some(id)) => {
                hub.send_to_client(id, &env.frame());
            }
            (Some(Kind::User), Some(user)) => {
                hub.send_to_user(user, &env.frame());
            }
            _ => {}
        }
    }

    fn resubscribed(&self) {
        if let Some(h) = self.history.get() {
            h.catch_up();
        }
    }
}

/// Subscribes the broker to the channel of each interest the hub reports.
pub struct Subscriptions(pub Arc<dyn Broker>);

impl InterestListener for Subscriptions {
    fn changed(&self, interest: Interest, present: bool) {
        let channel = match interest {
            Interest::Room(r) => envelope::channel(Kind::Room, Some(&r)),
            Interest::User(u) => envelope::channel(Kind::User, Some(&u)),
            Interest::Client(c) => envelope::channel(Kind::Client, Some(&c)),
        };
        self.0.interest(channel, present);
    }
}
