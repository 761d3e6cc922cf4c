//! History kept in Redis (option `history` with `redis`): one sequence of
//! offsets per room across every instance and emitter sharing the Redis,
//! so a client can recover on any instance what it missed on another.
//!
//! Per room, Redis holds a meta hash (epoch, top offset) and a stream of
//! the last `size` positioned envelopes, both expiring `ttl` after the last
//! publication (keys in `broker::keys`). A publication is one script call
//! (`store::APPEND`): next offset, append, publish, atomically, so the
//! order of offsets is the order in which every subscriber receives them.
//!
//! Each instance keeps, per room it hosts, a [`Feed`]: the epoch and the
//! last offset it delivered. Positioned envelopes from the bus (its own
//! included: local members get a publication when Redis has positioned it)
//! go through the feed, which drops duplicates and, on a gap (the bus lost
//! messages while the subscriber reconnected), reads the missing entries
//! from the stream before going on. A client joining with `recover` is
//! added to the feed as a joiner: live publications are kept aside for it
//! while its replay is read, then merged by offset, so it sees each
//! publication once, in order.

use crate::core::broker::keys::{room_key, room_keys};
use crate::core::broker::store::{self, scripts, ScriptCall, Store};
use crate::core::broker::Broker;
use crate::core::client::Client;
use crate::core::envelope::{self, Kind};
use crate::core::history::protocol::{self as history, HistoryConfig, Recover};
use crate::core::hub::Hub;
use crate::core::log::Logger;
use crate::core::protocol::Frame;
use crate::core::stats::{bump, Stats};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a join waits for its room's subscription before reading the
/// history anyway (a publication in between may then reach the client
/// only with the next gap fill).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);
/// The longest a history join waits for Redis (subscription and read)
/// before it is answered anyway, `joined` with `recovered: false` and the
/// feed's position (docs/PROTOCOL.md §15).
pub const JOIN_DEADLINE: Duration = Duration::from_secs(5);
/// Out-of-order publications a feed holds while it fills a gap; past this
/// the gap is given up (counted in `historySkipped`).
const PENDING_MAX: usize = 10_000;
const FILL_TRIES: u32 = 3;

pub fn meta_key(room: &str) -> String {
    room_key("ws:history", room, "meta")
}

pub fn log_key(room: &str) -> String {
    room_key("ws:history", room, "log")
}

/// KEYS of both history scripts: meta, log.
fn keys(room: &str) -> Vec<String> {
    room_keys("ws:history", room, ["meta", "log"]).into()
}

/// Numbers a publisher's appends, for the script to recognise one sent
/// twice (`store::APPEND`).
pub struct Appender {
    /// Unique per process: the server's id, or one per emitter.
    id: String,
    /// The next number; held while a call is numbered *and* queued, so
    /// numbers reach Redis in order (a smaller one after a larger would be
    /// taken for a repeat).
    next: Mutex<u64>,
}

impl Appender {
    pub fn new(id: String) -> Appender {
        Appender {
            id,
            next: Mutex::new(1),
        }
    }

    /// Numbers the script call that appends `head` (an envelope without its
    /// closing brace, see `envelope::room_head`) to a room's history and
    /// publishes it, and hands it to `queue`.
    pub fn append<R>(
        &self,
        cfg: &HistoryConfig,
        room: &str,
        head: String,
        sharded: bool,
        queue: impl FnOnce(ScriptCall) -> R,
    ) -> R {
        let mut next = self.next.lock();
        let mut call = append_call(cfg, room, head, sharded);
        call.args.push(self.id.clone());
        call.args.push(next.to_string());
        *next += 1;
        queue(call)
    }
}

fn append_call(cfg: &HistoryConfig, room: &str, head: String, sharded: bool) -> ScriptCall {
    ScriptCall {
        script: &scripts().append,
        keys: keys(room),
        args: vec![
            history::new_epoch(),
            cfg.size.max(1).to_string(),
            ttl_ms(cfg).to_string(),
            head,
            if sharded { "SPUBLISH" } else { "PUBLISH" }.to_string(),
            envelope::channel(Kind::Room, Some(room)),
        ],
    }
}

fn ttl_ms(cfg: &HistoryConfig) -> u128 {
    cfg.ttl.as_millis().max(1)
}

/// A publication as a member receives it.
#[derive(Clone)]
struct Item {
    offset: u64,
    epoch: Arc<str>,
    frame: Frame,
    exclude: Arc<[String]>,
}

impl Item {
    /// From a positioned envelope's text (the bus, the stream).
    fn parse(room: &str, text: &str) -> Option<Item> {
        let env = envelope::decode(text).ok()?;
        let (offset, epoch) = env.position.clone()?;
        Some(Item::of(room, &env, offset, &epoch))
    }

    fn of(room: &str, env: &envelope::Incoming<'_>, offset: u64, epoch: &str) -> Item {
        Item {
            offset,
            epoch: Arc::from(epoch),
            frame: history::positioned(env.frame().as_str(), room, offset, epoch),
            exclude: env.exclude.clone().into(),
        }
    }

    fn excludes(&self, id: &str) -> bool {
        self.exclude.iter().any(|e| e == id)
    }
}

/// A client joining a room, between its join and the moment this
/// instance's feed has delivered everything the client was given.
struct Joiner {
    token: u64,
    client: Arc<Client>,
    /// Live publications kept aside while the replay is read.
    held: Vec<Item>,
    /// Once the replay is queued: the last position the client was given.
    /// The read may be ahead of this instance's feed (publications still on
    /// their way here), so until the feed passes this position the client
    /// is served here, past it, and not by the room's fan-out.
    given: Option<(Arc<str>, u64)>,
}

impl Joiner {
    /// Whether the room's fan-out can serve it from now on: the feed has
    /// delivered, in the same epoch, everything the client was given (an
    /// unknown epoch, when Redis could not be read, has nothing to wait for).
    fn caught_up(&self, feed_epoch: Option<&Arc<str>>, top: u64) -> bool {
        match &self.given {
            None => false,
            Some((epoch, _)) if epoch.is_empty() => true,
            Some((epoch, offset)) => feed_epoch == Some(epoch) && top >= *offset,
        }
    }
}

/// What this instance delivered of a room, in order.
#[derive(Default)]
struct Feed {
    /// `None` until a publication or a join's read says where the room is.
    epoch: Option<Arc<str>>,
    top: u64,
    /// Publications past a gap, waiting for the fill.
    pending: BTreeMap<u64, Item>,
    filling: bool,
    joiners: Vec<Joiner>,
    /// While a batch of bus messages is delivered (`deliver_many`): frames
    /// for the whole room, sent to its members together at the end.
    batch: Option<Vec<Frame>>,
    /// Publications replayed to this room's joiners, by position, while
    /// any joiner is here: joiners re-joining together (a restart's storm)
    /// share one frame per publication, and with it its one compression
    /// (permessage-deflate), rather than one each.
    /// At most a history's length of them, the oldest going first.
    replayed: BTreeMap<u64, Item>,
}

impl Feed {
    /// Positions a feed that has none from its joiners' reads, once no read
    /// is outstanding, at the lowest position any joiner was given.
    ///
    /// Not from the first read to come back: reads run in Redis in one
    /// order and come back to the feed in another, and a read that saw a
    /// publication this instance has not received yet would mark it
    /// delivered; the bus's copy would then be dropped as a duplicate
    /// before the joiners whose reads ran earlier were given it. At the
    /// lowest position, everything past it reaches each joiner through
    /// `emit`, which serves a joiner past its own position.
    /// Returns whether it positioned the feed now.
    fn position_from_reads(&mut self) -> bool {
        if self.epoch.is_some() {
            return false;
        }
        let mut lowest: Option<(Arc<str>, u64)> = None;
        for j in &self.joiners {
            match (&j.given, &lowest) {
                (None, _) => return false,                      // a read still outstanding
                (Some((epoch, _)), _) if epoch.is_empty() => {} // Redis could not say
                (Some((epoch, offset)), None) => lowest = Some((epoch.clone(), *offset)),
                (Some((epoch, offset)), Some((at, low))) if epoch == at => {
                    lowest = Some((epoch.clone(), (*offset).min(*low)));
                }
                // The history restarted between two reads: the bus says
                // where the room is.
                (Some(_), Some(_)) => return false,
            }
        }
        let Some((epoch, top)) = lowest else {
            return false;
        };
        self.epoch = Some(epoch);
        self.top = top;
        true
    }

    /// The lowest position a joiner was given in `epoch`: the first
    /// publication seen in an epoch positions the feed no later, so a
    /// publication the bus missed (sent before this instance subscribed) is
    /// a gap to fill rather than a silent loss.
    fn lowest_given(&self, epoch: &str) -> Option<u64> {
        self.joiners
            .iter()
            .filter_map(|j| j.given.as_ref())
            .filter(|(e, _)| &**e == epoch)
            .map(|(_, offset)| *offset)
            .min()
    }

    /// Hands the joiners that are caught up to the room's fan-out.
    fn release_caught_up(&mut self) {
        let (epoch, top) = (self.epoch.clone(), self.top);
        self.joiners.retain(|j| !j.caught_up(epoch.as_ref(), top));
        self.joiners_left();
    }

    /// The shared replay goes with the last joiner.
    fn joiners_left(&mut self) {
        if self.joiners.is_empty() && !self.replayed.is_empty() {
            self.replayed = BTreeMap::new();
        }
    }

    /// `item`, or the same publication as already replayed to another
    /// joiner (then its frame is shared). Keeps at most `keep`.
    fn shared_replay(&mut self, item: Item, keep: usize) -> Item {
        match self.replayed.get(&item.offset) {
            Some(seen) if seen.epoch == item.epoch => seen.clone(),
            _ => {
                self.replayed.insert(item.offset, item.clone());
                while self.replayed.len() > keep.max(1) {
                    self.replayed.pop_first();
                }
                item
            }
        }
    }
}

pub struct RedisHistory {
    pub cfg: HistoryConfig,
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    store: Store,
    stats: Arc<Stats>,
    log: Logger,
    server_id: String,
    feeds: Mutex<HashMap<Arc<str>, Arc<Mutex<Feed>>>>,
    next_token: std::sync::atomic::AtomicU64,
    appender: Appender,
}

/// A join's read of a room's history.
struct Read {
    epoch: String,
    top: u64,
    recovered: bool,
    entries: Vec<String>,
}

fn parse_read(v: redis::Value) -> Option<Read> {
    let redis::Value::Array(parts) = v else {
        return None;
    };
    let mut it = parts.into_iter();
    let epoch = store::text(it.next()?)?;
    let top = u64::try_from(store::integer(&it.next()?)?).ok()?;
    let recovered = store::integer(&it.next()?)? == 1;
    Some(Read {
        epoch,
        top,
        recovered,
        entries: it.filter_map(store::text).collect(),
    })
}

impl RedisHistory {
    pub fn new(
        cfg: HistoryConfig,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        store: Store,
        stats: Arc<Stats>,
        log: Logger,
        server_id: String,
    ) -> RedisHistory {
        RedisHistory {
            appender: Appender::new(server_id.clone()),
            cfg,
            hub,
            broker,
            store,
            stats,
            log,
            server_id,
            feeds: Mutex::new(HashMap::new()),
            next_token: Default::default(),
        }
    }

    pub fn applies(&self, room: &str) -> bool {
        self.cfg.rooms.applies(room)
    }

    /// Queues a publication to a history room: Redis positions it and
    /// publishes it to every instance, this one included.
    pub fn publish(&self, room: &str, frame_json: &str, exclude: &[String]) {
        let head = envelope::room_head(&self.server_id, room, frame_json, exclude);
        self.appender
            .append(&self.cfg, room, head, self.broker.sharded(), |call| {
                self.broker.eval(call)
            });
    }

    fn feed(&self, room: &str) -> Arc<Mutex<Feed>> {
        self.feeds
            .lock()
            .entry(Arc::from(room))
            .or_default()
            .clone()
    }

    /// Positioned envelopes of `room` received together from the bus, in
    /// order. What they release for the whole room goes to its members as
    /// one batch (`Hub::send_to_room_many`), after anything sent before it.
    pub fn deliver_many(self: &Arc<Self>, room: &str, envs: &[envelope::Incoming<'_>]) {
        let feed = self.feed(room);
        let mut f = feed.lock();
        f.batch = Some(Vec::new());
        for env in envs {
            if let Some((offset, epoch)) = &env.position {
                let item = Item::of(room, env, *offset, epoch);
                self.accept(room, &feed, &mut f, item);
            }
        }
        if let Some(frames) = f.batch.take() {
            self.hub.send_to_room_many(room, frames);
        }
    }

    fn accept(self: &Arc<Self>, room: &str, feed: &Arc<Mutex<Feed>>, f: &mut Feed, item: Item) {
        if f.epoch.as_deref() != Some(&*item.epoch) {
            // First publication seen here, or the room's history was lost
            // (expired, flushed) and offsets restarted.
            let before = item.offset.saturating_sub(1);
            f.top = f
                .lowest_given(&item.epoch)
                .map_or(before, |low| low.min(before));
            f.epoch = Some(item.epoch.clone());
            f.pending.clear();
        }
        if item.offset <= f.top {
            return;
        }
        if item.offset == f.top + 1 {
            self.emit(room, f, item);
            self.drain(room, f);
            return;
        }
        f.pending.insert(item.offset, item);
        if f.pending.len() > PENDING_MAX {
            self.skip_gap(room, f, "too many publications past a gap");
        }
        if !f.filling {
            f.filling = true;
            let (this, room, feed) = (self.clone(), Arc::<str>::from(room), feed.clone());
            crate::core::task::spawn(async move { this.fill(room, feed).await });
        }
    }

    /// Delivers the publications that became next in order.
    fn drain(&self, room: &str, f: &mut Feed) {
        while let Some(entry) = f.pending.first_entry() {
            if *entry.key() > f.top + 1 {
                break;
            }
            let item = entry.remove();
            if item.offset == f.top + 1 {
                self.emit(room, f, item);
            }
        }
    }

    fn emit(&self, room: &str, f: &mut Feed, item: Item) {
        f.top = item.offset;
        if f.joiners.is_empty() && item.exclude.is_empty() {
            if let Some(batch) = f.batch.as_mut() {
                batch.push(item.frame);
                return;
            }
        }
        // Anything batched goes first.
        if let Some(batch) = f.batch.as_mut().filter(|b| !b.is_empty()) {
            let frames = std::mem::take(batch);
            self.hub.send_to_room_many(room, frames);
        }
        if f.joiners.is_empty() {
            self.hub.send_to_room(room, &item.frame, &item.exclude);
            return;
        }
        let mut exclude: Vec<String> = item.exclude.to_vec();
        exclude.extend(f.joiners.iter().map(|j| j.client.id.to_string()));
        self.hub.send_to_room(room, &item.frame, &exclude);
        for j in f
            .joiners
            .iter_mut()
            .filter(|j| !item.excludes(&j.client.id))
        {
            match &j.given {
                None => j.held.push(item.clone()),
                Some((epoch, offset)) if *epoch != item.epoch || item.offset > *offset => {
                    if j.client.details.lock().rooms.contains(room) {
                        j.client.offer(&item.frame);
                    }
                }
                Some(_) => {} // in its replay already
            }
        }
        // Served by the fan-out from now on, or no longer in the room.
        let (epoch, top) = (f.epoch.as_ref(), f.top);
        f.joiners.retain(|j| {
            !(j.caught_up(epoch, top)
                || (j.given.is_some() && !j.client.details.lock().rooms.contains(room)))
        });
        f.joiners_left();
    }

    /// Gives up the publications missing before the first pending one.
    fn skip_gap(&self, room: &str, f: &mut Feed, why: &str) {
        let Some(&first) = f.pending.keys().next() else {
            return;
        };
        if first > f.top + 1 {
            let lost = first - f.top - 1;
            self.stats
                .history_skipped
                .fetch_add(lost, Ordering::Relaxed);
            self.log.error(
                "History publications could not be delivered here",
                &[
                    ("room", &room),
                    ("from", &(f.top + 1)),
                    ("missing", &lost),
                    ("reason", &why),
                ],
            );
            f.top = first - 1;
        }
        self.drain(room, f);
    }

    /// Reads from the room's stream everything after what this instance
    /// delivered, and delivers it (a gap, or a catch-up after the bus was
    /// lost).
    async fn fill(self: Arc<Self>, room: Arc<str>, feed: Arc<Mutex<Feed>>) {
        let key = log_key(&room);
        let mut tries = 0;
        loop {
            let from = feed.lock().top + 1;
            match self.store.xrange(&key, from, None).await {
                Ok(v) => {
                    let mut f = feed.lock();
                    for text in store::stream_values(v) {
                        match Item::parse(&room, &text) {
                            Some(item) if f.epoch.as_deref() == Some(&*item.epoch) => {
                                self.accept(&room, &feed, &mut f, item)
                            }
                            _ => {}
                        }
                    }
                    self.skip_gap(&room, &mut f, "no longer in the history");
                    f.filling = false;
                    return;
                }
                Err(e) => {
                    bump(&self.stats.store_errors);
                    tries += 1;
                    if tries >= FILL_TRIES {
                        let mut f = feed.lock();
                        self.skip_gap(&room, &mut f, &format!("Redis: {e}"));
                        f.filling = false;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200) * tries).await;
                }
            }
        }
    }

    /// The bus was lost and is back: every hosted room may have missed
    /// publications; read them from the streams.
    pub fn catch_up(self: &Arc<Self>) {
        let feeds: Vec<(Arc<str>, Arc<Mutex<Feed>>)> = self
            .feeds
            .lock()
            .iter()
            .map(|(r, f)| (r.clone(), f.clone()))
            .collect();
        for (room, feed) in feeds {
            let mut f = feed.lock();
            if f.epoch.is_none() || f.filling {
                continue;
            }
            f.filling = true;
            drop(f);
            crate::core::task::spawn(self.clone().fill(room, feed));
        }
    }

    /// Joins `client` to a history room and queues, in order, what it
    /// missed since `recover` (when Redis still holds it), the publications
    /// made meanwhile, then `joined`.
    pub async fn join(
        self: Arc<Self>,
        client: Arc<Client>,
        room: String,
        recover: Option<Recover>,
    ) {
        let feed = self.feed(&room);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        {
            let mut f = feed.lock();
            if f.joiners.is_empty() && !self.hub.has_room(&room) {
                // Nobody here followed the room: where it stands is read
                // below, not assumed from an earlier stay.
                f.epoch = None;
                f.top = 0;
                f.pending.clear();
            }
            if !self.hub.join(&client.id, &[room.as_str()]) {
                return;
            }
            f.joiners.push(Joiner {
                token,
                client: client.clone(),
                held: Vec::new(),
                given: None,
            });
        }
        let deadline = tokio::time::Instant::now() + JOIN_DEADLINE;
        let channel = envelope::channel(Kind::Room, Some(&room));
        if !self.broker.subscribed(&channel, SUBSCRIBE_WAIT).await {
            self.log.warn(
                "History join: room subscription not confirmed in time; reading the history anyway",
                &[("room", &room), ("id", &client.id)],
            );
        }
        let (want_epoch, from) = match &recover {
            Some(Recover::From { offset, epoch }) => (epoch.clone(), *offset),
            _ => (String::new(), 0),
        };
        let call = ScriptCall {
            script: &scripts().read,
            keys: keys(&room),
            args: vec![
                history::new_epoch(),
                ttl_ms(&self.cfg).to_string(),
                want_epoch,
                from.to_string(),
            ],
        };
        // Bounded as a whole: a store slowed down by a storm of joins
        // answers this one `joined` (recovered: false) rather than never.
        let read = match tokio::time::timeout_at(deadline, self.store.run(&call)).await {
            Ok(read) => read,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "history read timed out",
            ))),
        };
        bump(&self.stats.history_reads);
        let mut f = feed.lock();
        let Some(at) = f.joiners.iter().position(|j| j.token == token) else {
            return;
        };
        let held = std::mem::take(&mut f.joiners[at].held);
        if !client.details.lock().rooms.contains(room.as_str()) {
            f.joiners.swap_remove(at);
            f.joiners_left();
            return; // left (or gone) meanwhile
        }
        let asked = recover.is_some();
        let read = match read {
            Ok(v) => parse_read(v).ok_or_else(|| "unexpected answer".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let id = &*client.id;
        let (mut top, mut epoch, recovered) = match read {
            Ok(r) => {
                let recovered = r.recovered && matches!(recover, Some(Recover::From { .. }));
                if recovered {
                    for item in r.entries.iter().filter_map(|t| Item::parse(&room, t)) {
                        let item = f.shared_replay(item, self.cfg.size);
                        if !item.excludes(id) {
                            client.offer_replay(&item.frame);
                        }
                    }
                }
                (r.top, Arc::<str>::from(r.epoch), recovered)
            }
            Err(e) => {
                bump(&self.stats.store_errors);
                self.log.error(
                    "History join: cannot read the room's history from Redis",
                    &[("room", &room), ("id", &id), ("error", &e)],
                );
                (
                    f.top,
                    f.epoch.clone().unwrap_or_else(|| Arc::from("")),
                    false,
                )
            }
        };
        for item in held {
            if item.epoch == epoch && item.offset <= top {
                continue; // in the replay, or before the position given
            }
            top = item.offset;
            epoch = item.epoch.clone();
            client.offer_replay(&item.frame);
        }
        client.offer_replay(&history::joined_frame(
            &room,
            top,
            &epoch,
            asked.then_some(recovered),
        ));
        let at = f
            .joiners
            .iter()
            .position(|j| j.token == token)
            .expect("held under this lock");
        f.joiners[at].given = Some((epoch, top));
        // Only a feed positioned now can have caught up every joiner; else
        // this one alone is checked (a storm of joins is not quadratic).
        if f.position_from_reads() {
            f.release_caught_up();
        } else if f.joiners[at].caught_up(f.epoch.as_ref(), f.top) {
            f.joiners.swap_remove(at);
            f.joiners_left();
        }
    }

    /// Forgets the feeds of rooms nobody here follows any more.
    pub fn sweep(&self) {
        self.feeds.lock().retain(|room, feed| {
            Arc::strong_count(feed) > 1 || self.hub.has_room(room) || {
                let f = feed.lock();
                f.filling || !f.joiners.is_empty()
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joiner(token: u64, given: Option<(&str, u64)>) -> Joiner {
        let (client, _queue) = Client::new(
            Arc::from(format!("c{token}")),
            "127.0.0.1:1".into(),
            0,
            1 << 20,
            false,
            Arc::new(Stats::default()),
        );
        Joiner {
            token,
            client,
            held: Vec::new(),
            given: given.map(|(e, o)| (Arc::from(e), o)),
        }
    }

    fn feed(joiners: Vec<Joiner>) -> Feed {
        Feed {
            joiners,
            ..Feed::default()
        }
    }

    /// Reads that ran in Redis before and after a publication come back in
    /// the other order: the feed is not positioned past what the earlier
    /// one was given while it is still out, then at the lower position.
    #[test]
    fn reads_back_out_of_order_position_the_feed_at_the_lowest() {
        let mut f = feed(vec![joiner(1, None), joiner(2, Some(("e", 223)))]);
        f.position_from_reads();
        assert_eq!(f.epoch, None, "a read is outstanding");
        f.release_caught_up();
        assert_eq!(
            f.joiners.len(),
            2,
            "nobody is caught up with an unpositioned feed"
        );
        f.joiners[0].given = Some((Arc::from("e"), 222));
        f.position_from_reads();
        assert_eq!((f.epoch.as_deref(), f.top), (Some("e"), 222));
        f.release_caught_up();
        // The one given 222 is served by the fan-out from 223 on; the one
        // given 223 waits until the feed delivered 223.
        assert_eq!(
            f.joiners.iter().map(|j| j.token).collect::<Vec<_>>(),
            vec![2]
        );
    }

    #[test]
    fn reads_in_two_epochs_leave_the_position_to_the_bus() {
        let mut f = feed(vec![
            joiner(1, Some(("old", 9))),
            joiner(2, Some(("new", 1))),
        ]);
        f.position_from_reads();
        assert_eq!(f.epoch, None);
        // A read Redis could not answer has no position to offer.
        let mut g = feed(vec![joiner(1, Some(("", 0))), joiner(2, Some(("e", 5)))]);
        g.position_from_reads();
        assert_eq!((g.epoch.as_deref(), g.top), (Some("e"), 5));
    }

    #[test]
    fn the_lowest_position_given_in_an_epoch() {
        let f = feed(vec![
            joiner(1, Some(("e", 7))),
            joiner(2, Some(("e", 4))),
            joiner(3, Some(("x", 1))),
            joiner(4, None),
        ]);
        assert_eq!(f.lowest_given("e"), Some(4));
        assert_eq!(f.lowest_given("y"), None);
    }
}
