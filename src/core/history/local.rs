//! History rooms kept in process (option `history` without `redis`): the
//! history of a single instance. The room's lock is
//! held while a publication is appended *and* handed to the members'
//! queues, and while a client joins and is handed what it missed, so a
//! joining client sees every publication exactly once: either in its
//! replay or live, never both, never neither.

use crate::core::client::Client;
use crate::core::history::protocol::{joined_frame, new_epoch, positioned, HistoryConfig, Recover};
use crate::core::hub::Hub;
use crate::core::protocol::Frame;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

struct Ring {
    epoch: String,
    /// The last offset given out (0: none yet).
    top: u64,
    /// Each publication with the clients it excluded (by connection).
    items: VecDeque<(u64, Frame, Box<[String]>)>,
    last: Instant,
}

impl Ring {
    fn new(now: Instant) -> Ring {
        Ring {
            epoch: new_epoch(),
            top: 0,
            items: VecDeque::new(),
            last: now,
        }
    }
}

pub struct History {
    cfg: HistoryConfig,
    rooms: Mutex<HashMap<Arc<str>, Arc<Mutex<Ring>>>>,
}

impl History {
    pub fn new(cfg: HistoryConfig) -> History {
        History {
            cfg,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    pub fn applies(&self, room: &str) -> bool {
        self.cfg.rooms.applies(room)
    }

    /// The room's ring, created (with a new epoch) when missing or expired.
    fn ring(&self, room: &str, now: Instant) -> Arc<Mutex<Ring>> {
        let mut rooms = self.rooms.lock();
        let ring = rooms
            .entry(Arc::from(room))
            .or_insert_with(|| Arc::new(Mutex::new(Ring::new(now))))
            .clone();
        drop(rooms);
        {
            let mut r = ring.lock();
            if now.duration_since(r.last) > self.cfg.ttl {
                // Lost: offsets restart under a new epoch.
                *r = Ring::new(now);
            }
        }
        ring
    }

    /// Appends a publication (`{"event":…,"data":…}` JSON text) to `room`
    /// and hands it, positioned, to the room's members; returns how many.
    pub fn publish(&self, hub: &Hub, room: &str, frame_json: &str, exclude: &[String]) -> usize {
        let now = Instant::now();
        let ring = self.ring(room, now);
        let mut r = ring.lock();
        r.top += 1;
        r.last = now;
        let frame = positioned(frame_json, room, r.top, &r.epoch);
        let top = r.top;
        r.items.push_back((top, frame.clone(), exclude.into()));
        while r.items.len() > self.cfg.size {
            r.items.pop_front();
        }
        hub.send_to_room(room, &frame, exclude)
    }

    /// Joins `client` to a history room and queues, in order, what it
    /// missed since `recover` (when it can be recovered), then `joined`.
    /// Returns false when the client is gone.
    pub fn join(
        &self,
        hub: &Hub,
        client: &Arc<Client>,
        room: &str,
        recover: Option<&Recover>,
    ) -> bool {
        let now = Instant::now();
        let ring = self.ring(room, now);
        let r = ring.lock();
        if !hub.join(&client.id, &[room]) {
            return false;
        }
        let first = r.items.front().map_or(r.top + 1, |(o, _, _)| *o);
        let recovered = match recover {
            None => None,
            Some(Recover::Malformed) => Some(false),
            Some(Recover::From { offset, epoch }) => {
                let ok = *epoch == r.epoch && *offset <= r.top && offset + 1 >= first;
                if ok {
                    let id = &*client.id;
                    for (_, frame, _) in r
                        .items
                        .iter()
                        .filter(|(o, _, ex)| o > offset && !ex.iter().any(|e| e == id))
                    {
                        client.offer_replay(frame);
                    }
                }
                Some(ok)
            }
        };
        client.offer_replay(&joined_frame(room, r.top, &r.epoch, recovered));
        true
    }

    /// Forgets the history of rooms whose time to live ran out. A ring in
    /// use (its handle held by a publication or a join, which took it under
    /// this same map lock) is left for the next sweep, so nobody appends
    /// to a ring no longer in the map, and the sweep never waits on a
    /// fan-out.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.rooms.lock().retain(|_, ring| {
            if Arc::strong_count(ring) > 1 {
                return true;
            }
            match ring.try_lock() {
                Some(r) => now.duration_since(r.last) <= self.cfg.ttl,
                None => true,
            }
        });
    }

    /// Rooms with history kept.
    pub fn room_count(&self) -> usize {
        self.rooms.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::client::QueueReader;
    use crate::core::room_selection::RoomSelection;
    use std::time::Duration;

    fn history(size: usize, ttl: Duration) -> History {
        History::new(HistoryConfig {
            size,
            ttl,
            rooms: RoomSelection {
                rooms: None,
                default_rooms: vec!["ws-default".into()],
            },
        })
    }

    fn member(hub: &Hub, id: &str) -> (Arc<Client>, QueueReader) {
        let (c, r) = crate::core::hub::tests::client(hub, id);
        hub.authenticate(&c, Some("u"), None, &[]);
        (c, r)
    }

    /// Publishes `{"event":"m","data":i}` to room "r" for each `i`.
    fn publish_numbered(h: &History, hub: &Hub, numbers: std::ops::RangeInclusive<u32>) {
        for i in numbers {
            h.publish(hub, "r", &format!("{{\"event\":\"m\",\"data\":{i}}}"), &[]);
        }
    }

    fn texts(r: &mut QueueReader) -> Vec<String> {
        r.take(1000).texts()
    }

    fn epoch_of(joined: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(joined).unwrap();
        v["data"]["epoch"].as_str().unwrap().to_string()
    }

    #[test]
    fn which_rooms_keep_history() {
        let h = history(10, Duration::from_secs(60));
        assert!(h.applies("chat"));
        assert!(!h.applies("ws-default"));
        assert!(!h.applies("0b0f6a3e-3a8e-4a57-9f0c-2d3c7a0c1f11"));
        let only = RoomSelection {
            rooms: Some(vec!["chat-*".into(), "news".into()]),
            default_rooms: vec![],
        };
        assert!(only.applies("chat-1") && only.applies("news"));
        assert!(!only.applies("news-2") && !only.applies("other"));
    }

    #[test]
    fn publications_are_positioned_and_a_returning_client_gets_exactly_what_it_missed() {
        let hub = Hub::new();
        let h = history(100, Duration::from_secs(60));
        let (a, mut ra) = member(&hub, "a");
        assert!(h.join(&hub, &a, "r", None));
        let joined = texts(&mut ra).pop().unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&joined).unwrap()["data"],
            serde_json::json!({"room": "r", "offset": 0, "epoch": epoch_of(&joined)})
        );
        let epoch = epoch_of(&joined);
        publish_numbered(&h, &hub, 1..=5);
        let live = texts(&mut ra);
        assert_eq!(
            live[0],
            format!(
                "{{\"event\":\"m\",\"data\":1,\"room\":\"r\",\"offset\":1,\"epoch\":\"{epoch}\"}}"
            )
        );
        assert_eq!(live.len(), 5);
        // b was away after offset 2.
        let (b, mut rb) = member(&hub, "b");
        let rec = Recover::From {
            offset: 2,
            epoch: epoch.clone(),
        };
        assert!(h.join(&hub, &b, "r", Some(&rec)));
        let got = texts(&mut rb);
        assert_eq!(got.len(), 4, "{got:?}");
        for (frame, offset) in got.iter().zip(3..=5) {
            assert!(frame.contains(&format!("\"offset\":{offset},")), "{frame}");
        }
        assert!(
            got[3].contains("\"event\":\"joined\"")
                && got[3].contains("\"recovered\":true")
                && got[3].contains("\"offset\":5")
        );
    }

    #[test]
    fn what_cannot_be_recovered_is_said_and_not_replayed() {
        let hub = Hub::new();
        let h = history(3, Duration::from_secs(60));
        let (a, mut ra) = member(&hub, "a");
        h.join(&hub, &a, "r", None);
        let epoch = epoch_of(&texts(&mut ra).pop().unwrap());
        publish_numbered(&h, &hub, 1..=6);
        for (rec, why) in [
            (
                Recover::From {
                    offset: 1,
                    epoch: epoch.clone(),
                },
                "fell out of the last 3",
            ),
            (
                Recover::From {
                    offset: 5,
                    epoch: "other".into(),
                },
                "another epoch",
            ),
            (
                Recover::From {
                    offset: 99,
                    epoch: epoch.clone(),
                },
                "beyond the top",
            ),
            (Recover::Malformed, "malformed"),
        ] {
            let (c, mut rc) = member(&hub, why);
            h.join(&hub, &c, "r", Some(&rec));
            let got = texts(&mut rc);
            assert_eq!(got.len(), 1, "{why}: {got:?}");
            assert!(got[0].contains("\"recovered\":false"), "{why}");
        }
        // From the oldest kept position it works.
        let (d, mut rd) = member(&hub, "d");
        h.join(&hub, &d, "r", Some(&Recover::From { offset: 3, epoch }));
        assert_eq!(texts(&mut rd).len(), 4);
    }

    #[test]
    fn history_lost_after_its_ttl_restarts_offsets_under_a_new_epoch() {
        let hub = Hub::new();
        let h = history(10, Duration::from_millis(30));
        h.publish(&hub, "r", "{\"event\":\"m\"}", &[]);
        let (a, mut ra) = member(&hub, "a");
        h.join(&hub, &a, "r", None);
        let before = epoch_of(&texts(&mut ra).pop().unwrap());
        std::thread::sleep(Duration::from_millis(60));
        let (b, mut rb) = member(&hub, "b");
        h.join(
            &hub,
            &b,
            "r",
            Some(&Recover::From {
                offset: 1,
                epoch: before.clone(),
            }),
        );
        let joined = texts(&mut rb).pop().unwrap();
        assert!(joined.contains("\"offset\":0") && joined.contains("\"recovered\":false"));
        assert_ne!(epoch_of(&joined), before);
        std::thread::sleep(Duration::from_millis(60));
        h.sweep();
        assert_eq!(h.room_count(), 0);
    }

    #[test]
    fn a_replay_is_queued_whole_and_skips_what_excluded_this_connection() {
        let hub = Hub::new();
        let h = history(100, Duration::from_secs(60));
        let (a, mut ra) = member(&hub, "a");
        h.join(&hub, &a, "r", None);
        let epoch = epoch_of(&texts(&mut ra).pop().unwrap());
        let big = "x".repeat(200);
        for i in 1..=10 {
            let exclude = if i == 5 {
                vec!["b".to_string()]
            } else {
                vec![]
            };
            h.publish(
                &hub,
                "r",
                &format!("{{\"event\":\"m\",\"data\":\"{big}{i}\"}}"),
                &exclude,
            );
        }
        // b's queue holds 300 bytes before dropping: the replay of 9
        // frames of 250 bytes goes in whole all the same.
        let (b, mut rb) = Client::new(
            Arc::from("b"),
            "127.0.0.1:1".into(),
            0,
            300,
            false,
            Arc::new(crate::core::stats::Stats::default()),
        );
        hub.register(b.clone());
        hub.authenticate(&b, Some("u"), None, &[]);
        h.join(&hub, &b, "r", Some(&Recover::From { offset: 0, epoch }));
        let got = texts(&mut rb);
        assert_eq!(got.len(), 10, "9 publications and joined");
        assert!(
            !got.iter().any(|f| f.contains("\"offset\":5,")),
            "5 excluded b"
        );
        assert!(got[9].contains("\"recovered\":true"));
    }
}
