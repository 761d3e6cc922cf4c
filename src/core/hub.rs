//! The hub: who is connected, which user each client belongs to, who is in
//! which room, and delivery of one pre-serialized frame to many of them.
//!
//! All three indexes live under one lock so they can never disagree. Fan-out
//! holds the read lock only while it hands a shared `Frame` (a refcounted
//! buffer) to each recipient's queue; no socket I/O happens under the lock.

use crate::core::client::{Client, ClientId, ClientState, Offer, Run};
use crate::core::protocol::Frame;
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A channel of local interest appeared or disappeared: a room got its first
/// member or lost its last, a user its first or last client, a client came
/// or went. The Redis broker subscribes and unsubscribes on these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interest {
    Room(Arc<str>),
    User(Arc<str>),
    Client(Arc<str>),
}

pub trait InterestListener: Send + Sync + 'static {
    fn changed(&self, interest: Interest, present: bool);
}

/// Tables keyed by client ids hash with foldhash rather than std's
/// SipHash: a lookup (one per `sendToClient`, by a 36-byte id) cost ≈ 250
/// instructions in SipHash. Client ids are made here (random UUIDs), so no
/// one can choose them to collide. Room names and user ids come from
/// outside (clients, the application): those tables keep SipHash, whose
/// keyed hashing resists that, where foldhash does not claim to.
type ById<V> = HashMap<ClientId, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct State {
    clients: ById<Arc<Client>>,
    users: HashMap<Arc<str>, Members>,
    rooms: HashMap<Arc<str>, Members>,
}

/// The clients of one room or of one user. Most hold a single client
/// (every client's own room, most users), kept inline: a hash table of one
/// is an allocation of 128 bytes, which every idle connection would pay
/// twice. The table of a larger set is boxed, so that this value is 16
/// bytes rather than 48 (a table is 40) and an entry of the rooms' and
/// users' indexes 32 rather than 64.
#[derive(Default)]
enum Members {
    #[default]
    Empty,
    One(Arc<Client>),
    // On purpose (the box keeps the indexes' entries small, see above).
    #[allow(clippy::box_collection)]
    Many(Box<ById<Arc<Client>>>),
}

impl Members {
    fn is_empty(&self) -> bool {
        matches!(self, Members::Empty)
    }

    fn insert(&mut self, client: Arc<Client>) {
        match self {
            Members::Empty => *self = Members::One(client),
            Members::One(c) if c.id == client.id => *c = client,
            Members::One(c) => {
                let first = c.clone();
                *self = Members::Many(Box::new(ById::from_iter([
                    (first.id.clone(), first),
                    (client.id.clone(), client),
                ])));
            }
            Members::Many(m) => {
                m.insert(client.id.clone(), client);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        match self {
            Members::One(c) if &*c.id == id => *self = Members::Empty,
            Members::Many(m) => {
                m.remove(id);
                if m.len() <= 1 {
                    let last = m.drain().next();
                    *self = match last {
                        Some((_, last)) => Members::One(last),
                        None => Members::Empty,
                    };
                }
            }
            _ => {}
        }
    }

    fn values(&self) -> impl Iterator<Item = &Arc<Client>> {
        let (one, many) = match self {
            Members::Empty => (None, None),
            Members::One(c) => (Some(c), None),
            Members::Many(m) => (None, Some(m.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[derive(Default)]
pub struct Hub {
    state: RwLock<State>,
    listener: RwLock<Option<Arc<dyn InterestListener>>>,
}

/// A copy of one client's record for `getClients()` and friends.
#[derive(Debug, Clone)]
pub struct ClientSnapshot {
    pub id: String,
    pub user_id: Option<String>,
    pub state: ClientState,
    pub rooms: Vec<String>,
    pub backpressured: bool,
    pub encrypted: bool,
    pub connected_at: u64,
    pub last_activity: u64,
    pub server_public_key: Option<String>,
    pub salt: Option<String>,
    pub remote: String,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_interest_listener(&self, l: Arc<dyn InterestListener>) {
        *self.listener.write() = Some(l);
    }

    /// Called with the state lock held, so listeners see changes in the
    /// order they happened (a join and a leave racing on two threads cannot
    /// reach the broker as "unsubscribe" after "subscribe" the wrong way).
    /// Listeners must only queue, never block.
    fn notify(&self, changes: Vec<(Interest, bool)>) {
        if changes.is_empty() {
            return;
        }
        if let Some(l) = self.listener.read().as_ref() {
            for (i, present) in changes {
                l.changed(i, present);
            }
        }
    }

    pub fn register(&self, client: Arc<Client>) {
        let id = client.id.clone();
        let mut st = self.state.write();
        st.clients.insert(id.clone(), client);
        self.notify(vec![(Interest::Client(id), true)]);
    }

    /// Removes a client from every index. Returns its user id, or `None` as
    /// the outer option when it was not registered.
    pub fn remove(&self, id: &str) -> Option<Option<Arc<str>>> {
        let mut changes = Vec::new();
        let user = {
            let mut st = self.state.write();
            let client = st.clients.remove(id)?;
            changes.push((Interest::Client(client.id.clone()), false));
            let mut details = client.details.lock();
            if let Some(user) = details.user_id.clone() {
                if let Some(set) = st.users.get_mut(&user) {
                    set.remove(id);
                    if set.is_empty() {
                        st.users.remove(&user);
                        changes.push((Interest::User(user), false));
                    }
                }
            }
            for room in details.rooms.drain() {
                if let Some(set) = st.rooms.get_mut(&room) {
                    set.remove(id);
                    if set.is_empty() {
                        st.rooms.remove(&room);
                        changes.push((Interest::Room(room), false));
                    }
                }
            }
            client.set_state(ClientState::Disconnected);
            let user = details.user_id.clone();
            drop(details);
            self.notify(changes);
            user
        };
        Some(user)
    }

    /// Marks a client authenticated: records its user, indexes it, and joins
    /// its own room and the default rooms, all in one step so no fan-out can
    /// see it half-done. Returns false if the client is already gone.
    pub fn authenticate(
        &self,
        client: &Arc<Client>,
        user_id: Option<&str>,
        keys: Option<(String, String)>,
        default_rooms: &[String],
    ) -> bool {
        let mut changes = Vec::new();
        {
            let mut st = self.state.write();
            if !st.clients.contains_key(&client.id) {
                return false;
            }
            let user: Option<Arc<str>> = user_id.map(Arc::from);
            {
                let mut details = client.details.lock();
                details.user_id = user.clone();
                if let Some((pk, salt)) = keys {
                    details.keys = Some(Box::new((pk, salt)));
                    client
                        .encrypted
                        .store(true, std::sync::atomic::Ordering::Release);
                }
            }
            if let Some(user) = user {
                let set = st.users.entry(user.clone()).or_default();
                if set.is_empty() {
                    changes.push((Interest::User(user), true));
                }
                set.insert(client.clone());
            }
            let own: Arc<str> = client.id.clone();
            Self::join_locked(&mut st, client, own, &mut changes);
            for room in default_rooms {
                Self::join_locked(&mut st, client, Arc::from(room.as_str()), &mut changes);
            }
            client.set_state(ClientState::Authenticated);
            self.notify(changes);
        }
        true
    }

    /// Returns whether the client was not in the room yet.
    fn join_locked(
        st: &mut State,
        client: &Arc<Client>,
        room: Arc<str>,
        changes: &mut Vec<(Interest, bool)>,
    ) -> bool {
        // One allocation per room name kept, shared by every member's record,
        // rather than one per member (every client joins the default rooms).
        let room = match st.rooms.get_key_value(&*room) {
            Some((name, _)) => name.clone(),
            None => room,
        };
        let members = st.rooms.entry(room.clone()).or_default();
        if members.is_empty() {
            changes.push((Interest::Room(room.clone()), true));
        }
        members.insert(client.clone());
        client.details.lock().rooms.insert(room)
    }

    /// Joins rooms (no validation: callers validated). Returns false when the
    /// client is unknown.
    pub fn join<S: AsRef<str>>(&self, client_id: &str, rooms: &[S]) -> bool {
        self.join_new(client_id, rooms).is_some()
    }

    /// `join`, returning the rooms the client was not in yet (`None`: the
    /// client is unknown).
    pub fn join_new<S: AsRef<str>>(&self, client_id: &str, rooms: &[S]) -> Option<Vec<String>> {
        let mut changes = Vec::new();
        let mut new = Vec::new();
        let mut st = self.state.write();
        let client = st.clients.get(client_id).cloned()?;
        for room in rooms {
            if Self::join_locked(&mut st, &client, Arc::from(room.as_ref()), &mut changes) {
                new.push(room.as_ref().to_string());
            }
        }
        self.notify(changes);
        Some(new)
    }

    /// Leaves rooms the client has joined; names it has not joined are
    /// ignored. Returns the rooms actually left.
    pub fn leave<S: AsRef<str>>(&self, client_id: &str, rooms: &[S]) -> Vec<String> {
        let mut changes = Vec::new();
        let mut left = Vec::new();
        {
            let mut st = self.state.write();
            let Some(client) = st.clients.get(client_id).cloned() else {
                return left;
            };
            let mut details = client.details.lock();
            for room in rooms {
                let room = room.as_ref();
                let Some(name) = details.rooms.take(room) else {
                    continue;
                };
                if let Some(set) = st.rooms.get_mut(room) {
                    set.remove(client_id);
                    if set.is_empty() {
                        st.rooms.remove(room);
                        changes.push((Interest::Room(name.clone()), false));
                    }
                }
                left.push(name.to_string());
            }
            drop(details);
            self.notify(changes);
        }
        left
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<Client>> {
        self.state.read().clients.get(client_id).cloned()
    }

    pub fn has_client(&self, client_id: &str) -> bool {
        self.state.read().clients.contains_key(client_id)
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.state.read().rooms.contains_key(room)
    }

    pub fn client_count(&self) -> usize {
        self.state.read().clients.len()
    }

    pub fn room_count(&self) -> usize {
        self.state.read().rooms.len()
    }

    pub fn user_count(&self) -> usize {
        self.state.read().users.len()
    }

    /// Clients by state: `[unauthorized, authenticating, authenticated]`,
    /// counted under the read lock without copying the index.
    pub fn count_by_state(&self) -> [usize; 3] {
        let mut counts = [0usize; 3];
        for c in self.state.read().clients.values() {
            match c.state() {
                ClientState::Unauthorized => counts[0] += 1,
                ClientState::Authenticating => counts[1] += 1,
                ClientState::Authenticated => counts[2] += 1,
                ClientState::Disconnected => {}
            }
        }
        counts
    }

    /// The members of each room `keep` selects.
    pub fn room_members(&self, keep: impl Fn(&str) -> bool) -> Vec<(Arc<str>, Vec<Arc<Client>>)> {
        let st = self.state.read();
        st.rooms
            .iter()
            .filter(|(r, _)| keep(r))
            .map(|(r, m)| (r.clone(), m.values().cloned().collect()))
            .collect()
    }

    pub fn all_clients(&self) -> Vec<Arc<Client>> {
        self.state.read().clients.values().cloned().collect()
    }

    pub fn send_to_client(&self, client_id: &str, frame: &Frame) -> usize {
        match self.get(client_id) {
            Some(c) => usize::from(c.offer(frame) == Offer::Queued),
            None => 0,
        }
    }

    pub fn send_to_user(&self, user_id: &str, frame: &Frame) -> usize {
        let st = self.state.read();
        st.users
            .get(user_id)
            .map_or(0, |m| offer_all(m.values(), frame, &[]))
    }

    pub fn send_to_room(&self, room: &str, frame: &Frame, exclude: &[String]) -> usize {
        let st = self.state.read();
        st.rooms
            .get(room)
            .map_or(0, |m| offer_all(m.values(), frame, exclude))
    }

    /// `send_to_room` for several frames, in order (see
    /// `Client::offer_many`: every member shares one run of them); returns
    /// the number of deliveries.
    pub fn send_to_room_many(&self, room: &str, frames: Vec<Frame>) -> usize {
        match frames.as_slice() {
            [] => return 0,
            // Nothing to share: framing it once more would only cost a copy.
            [frame] => return self.send_to_room(room, frame, &[]),
            _ => {}
        }
        // Framed before the lock is taken: nothing but handing out
        // references happens under it.
        let run = Run::new(frames);
        let st = self.state.read();
        st.rooms
            .get(room)
            .map_or(0, |m| m.values().map(|c| c.offer_many(&run)).sum())
    }

    /// Every authenticated client, except `exclude`.
    pub fn broadcast(&self, frame: &Frame, exclude: &[String]) -> usize {
        let st = self.state.read();
        offer_all(
            st.clients
                .values()
                .filter(|c| c.state() == ClientState::Authenticated),
            frame,
            exclude,
        )
    }

    pub fn snapshot(&self, client: &Client) -> ClientSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let d = client.details.lock();
        ClientSnapshot {
            id: client.id.to_string(),
            user_id: d.user_id.as_deref().map(str::to_string),
            state: client.state(),
            rooms: d.rooms.iter().map(|r| r.to_string()).collect(),
            backpressured: client.backpressured.load(Relaxed),
            encrypted: client.encrypted.load(Relaxed),
            connected_at: client.connected_at,
            last_activity: client.last_activity.load(Relaxed),
            server_public_key: d.keys.as_ref().map(|k| k.0.clone()),
            salt: d.keys.as_ref().map(|k| k.1.clone()),
            remote: client.remote.clone(),
        }
    }

    pub fn clients_snapshot(&self) -> Vec<ClientSnapshot> {
        self.all_clients()
            .iter()
            .map(|c| self.snapshot(c))
            .collect()
    }

    pub fn user_snapshot(&self, user_id: &str) -> Vec<ClientSnapshot> {
        let members: Vec<Arc<Client>> = self
            .state
            .read()
            .users
            .get(user_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        members.iter().map(|c| self.snapshot(c)).collect()
    }

    pub fn room_snapshot(&self, room: &str) -> Vec<ClientSnapshot> {
        let members: Vec<Arc<Client>> = self
            .state
            .read()
            .rooms
            .get(room)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        members.iter().map(|c| self.snapshot(c)).collect()
    }
}

fn offer_all<'a>(
    clients: impl Iterator<Item = &'a Arc<Client>>,
    frame: &Frame,
    exclude: &[String],
) -> usize {
    // A short list is scanned; a long one is hashed once per fan-out.
    let set: Option<HashSet<&str>> =
        (exclude.len() > 8).then(|| exclude.iter().map(String::as_str).collect());
    let excluded = |id: &str| match &set {
        Some(s) => s.contains(id),
        None => exclude.iter().any(|e| e == id),
    };
    let mut n = 0;
    for c in clients {
        if !exclude.is_empty() && excluded(&c.id) {
            continue;
        }
        if c.offer(frame) == Offer::Queued {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::client::QueueReader;
    use crate::core::stats::Stats;
    use parking_lot::Mutex;

    /// Records every interest change, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Interest, bool)>>);

    impl InterestListener for Recorder {
        fn changed(&self, interest: Interest, present: bool) {
            self.0.lock().push((interest, present));
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<(Interest, bool)> {
            std::mem::take(&mut *self.0.lock())
        }
    }

    fn hub() -> (Hub, Arc<Recorder>) {
        let hub = Hub::new();
        let rec = Arc::new(Recorder::default());
        hub.set_interest_listener(rec.clone());
        (hub, rec)
    }

    /// A client registered with `hub` (1 MiB queue, not authenticated).
    pub(crate) fn client(hub: &Hub, id: &str) -> (Arc<Client>, QueueReader) {
        let (c, reader) = Client::new(
            Arc::from(id),
            "127.0.0.1:1".into(),
            0,
            1 << 20,
            false,
            Arc::new(Stats::default()),
        );
        hub.register(c.clone());
        (c, reader)
    }

    fn room(r: &str) -> Interest {
        Interest::Room(Arc::from(r))
    }

    fn ids(m: &Members) -> Vec<String> {
        let mut ids: Vec<String> = m.values().map(|c| c.id.to_string()).collect();
        ids.sort();
        ids
    }

    /// A set of one is kept inline, a larger one in a table, and a table
    /// left with one member goes back inline; each index entry stays small.
    #[test]
    fn members_grow_into_a_table_and_shrink_back() {
        let hub = Hub::new();
        let (a, _ra) = client(&hub, "a");
        let (b, _rb) = client(&hub, "b");
        let (c, _rc) = client(&hub, "c");
        let mut m = Members::default();
        assert!(m.is_empty());
        m.insert(a.clone());
        m.insert(a.clone());
        assert!(matches!(m, Members::One(_)));
        assert_eq!(ids(&m), ["a"]);
        m.insert(b.clone());
        m.insert(c.clone());
        assert!(matches!(m, Members::Many(_)));
        assert_eq!(ids(&m), ["a", "b", "c"]);
        m.remove("a");
        m.remove("nobody");
        assert_eq!(ids(&m), ["b", "c"]);
        m.remove("c");
        assert!(matches!(m, Members::One(_)));
        assert_eq!(ids(&m), ["b"]);
        m.remove("a");
        assert_eq!(ids(&m), ["b"]);
        m.remove("b");
        assert!(m.is_empty());
        assert_eq!(ids(&m), Vec::<String>::new());
        assert!(std::mem::size_of::<Members>() <= 16);
    }

    #[test]
    fn interest_appears_with_the_first_member_and_goes_with_the_last() {
        let (hub, rec) = hub();
        let (a, _ra) = client(&hub, "a");
        let (b, _rb) = client(&hub, "b");
        assert_eq!(
            rec.take(),
            vec![
                (Interest::Client(Arc::from("a")), true),
                (Interest::Client(Arc::from("b")), true)
            ]
        );
        assert!(hub.authenticate(&a, Some("u1"), None, &["lobby".into()]));
        assert_eq!(
            rec.take(),
            vec![
                (Interest::User(Arc::from("u1")), true),
                (room("a"), true),
                (room("lobby"), true)
            ]
        );
        // A second member of the same user and room changes no interest.
        assert!(hub.authenticate(&b, Some("u1"), None, &["lobby".into()]));
        assert_eq!(rec.take(), vec![(room("b"), true)]);
        hub.join("a", &["x", "y"]);
        hub.join("b", &["x"]);
        assert_eq!(rec.take(), vec![(room("x"), true), (room("y"), true)]);
        // Leaving a room one is not in changes nothing; the last member
        // leaving takes the interest away.
        assert_eq!(hub.leave("a", &["x", "nope"]), vec!["x".to_string()]);
        assert_eq!(rec.take(), vec![]);
        assert_eq!(hub.leave("b", &["x"]), vec!["x".to_string()]);
        assert_eq!(rec.take(), vec![(room("x"), false)]);
    }

    #[test]
    fn removal_clears_every_index_and_reports_what_went() {
        let (hub, rec) = hub();
        let (a, _ra) = client(&hub, "a");
        let (b, _rb) = client(&hub, "b");
        hub.authenticate(&a, Some("u1"), None, &["lobby".into()]);
        hub.authenticate(&b, Some("u2"), None, &["lobby".into()]);
        hub.join("a", &["solo"]);
        rec.take();
        assert_eq!(hub.remove("a"), Some(Some(Arc::from("u1"))));
        let mut went = rec.take();
        // The client's own channel first; the rest in any order.
        assert_eq!(went.remove(0), (Interest::Client(Arc::from("a")), false));
        went.sort_by_key(|(i, _)| format!("{i:?}"));
        assert_eq!(
            went,
            vec![
                (room("a"), false),
                (room("solo"), false),
                (Interest::User(Arc::from("u1")), false)
            ]
        );
        assert_eq!(a.state(), ClientState::Disconnected);
        assert!(!hub.has_client("a") && !hub.has_room("solo") && hub.has_room("lobby"));
        assert_eq!(hub.room_snapshot("lobby").len(), 1);
        assert_eq!((hub.client_count(), hub.user_count()), (1, 1));
        // Removing twice is a no-op: nothing reported, nothing returned.
        assert_eq!(hub.remove("a"), None);
        assert_eq!(rec.take(), vec![]);
    }

    #[test]
    fn fan_out_reaches_members_once_and_honours_exclude() {
        let (hub, _rec) = hub();
        let (a, mut ra) = client(&hub, "a");
        let (b, mut rb) = client(&hub, "b");
        let (_c, mut rc) = client(&hub, "c");
        hub.authenticate(&a, Some("u"), None, &[]);
        hub.authenticate(&b, Some("u"), None, &[]);
        hub.join("a", &["r"]);
        hub.join("b", &["r"]);
        let frame = Frame::from("f");
        assert_eq!(hub.send_to_room("r", &frame, &["b".to_string()]), 1);
        assert_eq!(hub.send_to_user("u", &frame), 2);
        // Broadcast reaches authenticated clients only (not "c").
        assert_eq!(hub.broadcast(&frame, &[]), 2);
        assert_eq!(ra.take(10).len(), 3);
        assert_eq!(rb.take(10).len(), 2);
        assert_eq!(rc.take(10).len(), 0);
        assert_eq!(hub.send_to_room("nobody", &frame, &[]), 0);
    }

    #[test]
    fn authenticating_a_removed_client_does_nothing() {
        let (hub, rec) = hub();
        let (a, _ra) = client(&hub, "a");
        hub.remove("a");
        rec.take();
        assert!(!hub.authenticate(&a, Some("u"), None, &["lobby".into()]));
        assert_eq!(rec.take(), vec![]);
        assert_eq!(hub.room_count(), 0);
    }
}
