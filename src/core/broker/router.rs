//! The two links between the hub and the bus: envelopes received from
//! other instances are delivered to local sockets (docs/PROTOCOL.md §10),
//! and the hub's changes of local interest become subscriptions.

use super::{Broker, Subscriber};
use crate::core::envelope::{self, Kind};
use crate::core::history::redis::RedisHistory;
use crate::core::hub::{Hub, Interest, InterestListener};
use crate::core::log::Logger;
use crate::core::stats::{bump, Stats};
use std::sync::Arc;

/// How `deliver_all` groups neighbouring publications of one room.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batch {
    /// Sent to the room's members as they are.
    Plain,
    /// Through the room's history in Redis (positioned).
    History,
}

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

impl Router {
    fn decode<'a>(&self, channel: &str, payload: &'a str) -> Option<envelope::Incoming<'a>> {
        match envelope::decode(payload) {
            Ok(e) => Some(e),
            Err(why) => {
                bump(&self.stats.bus_invalid);
                self.log.error(
                    "Invalid Redis message",
                    &[("reason", &why), ("channel", &channel)],
                );
                None
            }
        }
    }

    /// How a publication can be delivered with its neighbours: to every
    /// local member of a room as it is (another instance's, no exclusions),
    /// or through the room's history in Redis.
    fn batchable<'e>(&self, env: &'e envelope::Incoming<'_>) -> Option<(Batch, &'e str)> {
        let (Some(Kind::Room), Some(room)) = (env.kind, env.target.as_deref()) else {
            return None;
        };
        match (&env.position, self.history.get()) {
            (Some(_), Some(h)) if h.applies(room) => Some((Batch::History, room)),
            (None, _) if env.exclude.is_empty() && env.server_id != self.server_id => {
                Some((Batch::Plain, room))
            }
            _ => None,
        }
    }

    /// Delivers the run gathered by `deliver_all` (publications of `run`'s
    /// kind to its room), and empties it.
    fn flush(&self, run: &Option<(Batch, String)>, envs: &mut Vec<envelope::Incoming<'_>>) {
        let Some((batch, room)) = run else {
            return;
        };
        if envs.is_empty() {
            return;
        }
        match (*batch, self.history.get()) {
            (Batch::History, Some(h)) => h.deliver_many(room, envs),
            _ => {
                let frames: Vec<_> = envs.iter().map(|e| e.frame()).collect();
                self.hub.send_to_room_many(room, frames);
            }
        }
        envs.clear();
    }

    /// One envelope that `batchable` left alone.
    fn route(&self, env: &envelope::Incoming<'_>) {
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
}

impl Subscriber for Router {
    /// Consecutive publications to the same room go to its members as one
    /// batch (`Hub::send_to_room_many`, directly or through the room's
    /// history): in a burst, each member's queue is locked and its task
    /// woken once per batch instead of once per publication. Anything else
    /// is delivered as it comes, after the batch before it, so every client
    /// still sees the bus's order.
    fn deliver_all(&self, messages: &[(&str, &str)]) {
        let mut run: Option<(Batch, String)> = None;
        let mut envs = Vec::new();
        for (channel, payload) in messages {
            let Some(env) = self.decode(channel, payload) else {
                continue;
            };
            match self.batchable(&env) {
                Some((kind, room)) => {
                    if !matches!(&run, Some((k, r)) if *k == kind && r == room) {
                        self.flush(&run, &mut envs);
                        run = Some((kind, room.to_string()));
                    }
                    envs.push(env);
                }
                None => {
                    self.flush(&run, &mut envs);
                    self.route(&env);
                }
            }
        }
        self.flush(&run, &mut envs);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::client::{Client, QueueReader};
    use crate::core::envelope::encode;
    use crate::core::hub::tests::client;
    use crate::core::log::NullLog;

    fn router(hub: Arc<Hub>) -> Router {
        Router {
            hub,
            server_id: "me".into(),
            stats: Arc::new(Stats::default()),
            log: Logger::new(Arc::new(NullLog)),
            history: std::sync::OnceLock::new(),
        }
    }

    fn texts(reader: &mut QueueReader) -> Vec<String> {
        reader.take(1000).texts()
    }

    fn member(hub: &Hub, id: &str, rooms: &[&str]) -> (Arc<Client>, QueueReader) {
        let (c, r) = client(hub, id);
        assert!(hub.join(id, rooms));
        (c, r)
    }

    fn room_msg(room: &str, n: u32, exclude: Option<&[String]>) -> String {
        encode(
            "other",
            Kind::Room,
            Some(room),
            "e",
            Some(&n.to_string()),
            exclude,
        )
    }

    #[test]
    fn a_batch_keeps_the_bus_order_for_every_client() {
        let hub = Arc::new(Hub::new());
        let (_a, mut ra) = member(&hub, "a", &["r", "s"]);
        let (_b, mut rb) = member(&hub, "b", &["r"]);
        let not_b = vec!["b".to_string()];
        let msgs = [
            room_msg("r", 1, None),
            room_msg("r", 2, None),
            encode("other", Kind::Client, Some("a"), "e", Some("3"), None),
            room_msg("s", 4, None),
            room_msg("r", 5, Some(&not_b)),
            room_msg("r", 6, None),
            // This instance's own publication was delivered when it was made.
            encode("me", Kind::Room, Some("r"), "e", Some("7"), None),
            "not an envelope".to_string(),
            room_msg("r", 8, None),
        ];
        let pairs: Vec<(&str, &str)> = msgs.iter().map(|m| ("ch", m.as_str())).collect();
        let r = router(hub);
        r.deliver_all(&pairs);
        let frame = |n: u32| format!(r#"{{"event":"e","data":{n}}}"#);
        assert_eq!(texts(&mut ra), [1, 2, 3, 4, 5, 6, 8].map(frame));
        assert_eq!(texts(&mut rb), [1, 2, 6, 8].map(frame));
        assert_eq!(
            r.stats
                .bus_invalid
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn a_batch_past_the_backpressure_limit_drops_and_counts_like_single_frames() {
        let hub = Arc::new(Hub::new());
        let stats = Arc::new(Stats::default());
        // Room for the first frame and one more (each is 24 bytes).
        let (c, mut reader) = Client::new(
            Arc::from("a"),
            "127.0.0.1:1".into(),
            0,
            50,
            false,
            stats.clone(),
        );
        hub.register(c.clone());
        assert!(hub.join("a", &["r"]));
        let msgs: Vec<String> = (1..=4).map(|n| room_msg("r", n, None)).collect();
        let pairs: Vec<(&str, &str)> = msgs.iter().map(|m| ("ch", m.as_str())).collect();
        router(hub).deliver_all(&pairs);
        // (Taking the frames off the queue clears the flag.)
        assert!(c.backpressured.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(texts(&mut reader).len(), 2);
        assert_eq!(
            stats
                .dropped_backpressure
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }
}
