//! History rooms (option `history`): the last publications of a room, kept
//! so that a client that was away can recover what it missed.
//!
//! Each publication to a history room gets the room's next offset (exactly
//! +1 per publication) and the room's epoch, a string that changes only
//! when the room's history is lost (its time to live ran out), so a client
//! holding an offset of another epoch knows it cannot recover from it.
//! Members receive `{"event":E,"data":D,"room":R,"offset":N,"epoch":"S"}`.
//!
//! This is the in-process history of a single instance. The room's lock is
//! held while a publication is appended *and* handed to the members'
//! queues, and while a client joins and is handed what it missed, so a
//! joining client sees every publication exactly once: either in its
//! replay or live, never both, never neither.

use crate::core::client::Client;
use crate::core::hub::Hub;
use crate::core::protocol::{self, Frame};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `history` as configured.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Publications kept per room.
    pub size: usize,
    /// How long a room's history lives after its last publication.
    pub ttl: Duration,
    pub rooms: RoomSelection,
}

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

pub fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_string()
}

/// Where a server keeps its history rooms: in process, or in Redis when
/// it has one (shared by the fleet).
#[derive(Clone)]
pub enum Backend {
    Local(Arc<History>),
    Redis(Arc<crate::core::history_redis::RedisHistory>),
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

/// `{"event":E,"data":D}` → `{"event":E,"data":D,"room":R,"offset":N,"epoch":"S"}`.
pub fn positioned(frame_json: &str, room: &str, offset: u64, epoch: &str) -> Frame {
    let body = frame_json.trim_end();
    let body = body.strip_suffix('}').unwrap_or(body);
    let mut out = String::with_capacity(body.len() + room.len() + epoch.len() + 48);
    out.push_str(body);
    out.push_str(",\"room\":");
    protocol::push_json_str(&mut out, room);
    out.push_str(",\"offset\":");
    out.push_str(&offset.to_string());
    out.push_str(",\"epoch\":");
    protocol::push_json_str(&mut out, epoch);
    out.push('}');
    Frame::from(out)
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
pub fn parse_recover(
    data: Option<&serde_json::value::RawValue>,
    max: usize,
) -> HashMap<String, Recover> {
    let mut out = HashMap::new();
    let Some(data) = data else { return out };
    let Ok(serde_json::Value::Object(payload)) =
        serde_json::from_str::<serde_json::Value>(data.get())
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
    use crate::core::client::QueueReader;

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
        for i in 1..=5 {
            h.publish(&hub, "r", &format!("{{\"event\":\"m\",\"data\":{i}}}"), &[]);
        }
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
        for i in 1..=6 {
            h.publish(&hub, "r", &format!("{{\"event\":\"m\",\"data\":{i}}}"), &[]);
        }
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

    #[test]
    fn recover_entries_are_read_leniently() {
        let raw = serde_json::value::RawValue::from_string(
            r#"{"rooms":["a","b","c","d","e"],"recover":{"a":{"offset":3,"epoch":"x"},"b":"nope","c":{"offset":-1,"epoch":"x"},"d":{"offset":1.5,"epoch":"x"},"e":{"offset":1,"epoch":"#.to_string()
                + &format!("\"{}\"", "e".repeat(65))
                + "}}}",
        )
        .unwrap();
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
