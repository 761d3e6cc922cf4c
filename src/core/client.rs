//! One connected client as the rest of the server sees it: its identity and
//! state, and the bounded queue through which anyone may send it frames.
//!
//! The socket itself belongs to the connection task; everything here is
//! shared (behind `Arc`) and safe to touch from any thread.

use crate::core::deflate::Deflate;
use crate::core::frame_writer::{Chunk, COMPRESSED, TEXT};
use crate::core::protocol::Frame;
use crate::core::stats::Stats;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

pub type ClientId = Arc<str>;

/// `Client::serial`'s source. 64 bits: a million connections a second
/// would take half a million years to wrap it.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Unauthorized = 0,
    Authenticating = 1,
    Authenticated = 2,
    Disconnected = 3,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Unauthorized => "unauthorized",
            ClientState::Authenticating => "authenticating",
            ClientState::Authenticated => "authenticated",
            ClientState::Disconnected => "disconnected",
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            0 => ClientState::Unauthorized,
            1 => ClientState::Authenticating,
            2 => ClientState::Authenticated,
            _ => ClientState::Disconnected,
        }
    }
}

/// Mutable details, changed only while the hub's write lock is held so that
/// they always agree with the hub's indexes.
#[derive(Debug, Default)]
pub struct ClientDetails {
    pub user_id: Option<Arc<str>>,
    pub rooms: HashSet<Arc<str>>,
    /// The built-in encryption's server public key and salt. Boxed: most
    /// clients never have them, and every idle connection pays this record.
    pub keys: Option<Box<(String, String)>>,
    /// `metadata` from `authenticateFn`, as JSON, for fleet presence.
    pub metadata: Option<Arc<str>>,
}

/// A request to close the socket, honoured ahead of queued frames.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: String,
}

pub struct Client {
    pub id: ClientId,
    /// This connection's number, unique for the process's life (never
    /// reused, unlike an index): the events handed to the application carry
    /// it, so that the consumer keys on a number instead of the id's text.
    pub serial: u64,
    pub remote: String,
    pub connected_at: u64,
    pub last_activity: AtomicU64,
    state: AtomicU8,
    pub encrypted: AtomicBool,
    pub backpressured: AtomicBool,
    pub details: Mutex<ClientDetails>,
    /// Frames waiting for the socket. A plain deque (no allocation until the
    /// first frame) rather than a channel, whose first block is allocated
    /// up front and would be paid by every idle connection.
    queue: Mutex<Queue>,
    /// The connection task, woken for a queued frame or a close request.
    /// An `AtomicWaker` rather than `Notify`s: no waiter list to lock on
    /// every frame, and half the size in every idle connection.
    task: AtomicWaker,
    backpressure_limit: usize,
    close_on_backpressure_limit: bool,
    /// Boxed for the same reason as `keys`: a close request is rare.
    close_request: Mutex<Option<Box<CloseRequest>>>,
    close_requested: AtomicBool,
    /// Set when the socket's read side woke the connection task (see the
    /// `Wake` impl below).
    read_woken: AtomicBool,
    /// Whether the gate may be other than shut: the task looks here
    /// before it locks the queue to shut it.
    gate_set: AtomicBool,
    stats: Arc<Stats>,
    /// Set once the client is encrypted and an outbound transformer is
    /// bound: frames then go through the transformer before the socket.
    transformer: OnceLock<mpsc::UnboundedSender<Frame>>,
    /// Set by the built-in encryption handshake: the connection task seals
    /// every frame except those queued with `offer_plain`. Boxed: the key
    /// schedule is large (see the test below) and most clients never use it.
    pub cipher: OnceLock<Box<crate::core::crypto::ClientCipher>>,
    /// Set when the client negotiated permessage-deflate.
    deflate: OnceLock<Arc<Deflate>>,
}

/// The receiving end of a client's queue, owned by its connection task.
#[derive(Default)]
struct Queue {
    items: Entries,
    /// The connection task is gone: nothing will read these any more.
    closed: bool,
    /// Bytes queued here or waiting for the transformer, against
    /// `backpressure_limit`. Kept under the queue's lock (taken anyway)
    /// rather than in an atomic of its own: one cache line less to move
    /// between cores per frame of a fan-out.
    queued: usize,
    /// Who may write to the socket (see [`Gate`]).
    gate: Gate,
}

/// Direct writes: a frame offered to a client whose connection task has
/// nothing to write is written to the socket by whoever offers it (the
/// fan-out, a JS call), as uWebSockets does, instead of being queued for
/// the task and waking it (≈ 1 100 instructions of a fan-out's ≈ 2 400 per
/// delivery). Only the task opens the gate, when its queue is empty and
/// nothing of its own is pending, and every write of its own shuts it
/// first (`FrameWriter::shut`), so frames never interleave; the gate is
/// only ever changed under the queue's lock.
#[derive(Default)]
enum Gate {
    /// Only the connection task writes.
    #[default]
    Shut,
    /// Offers into the empty queue may write whole frames to this
    /// descriptor.
    Open(i32),
    /// A direct write the socket took part of: the rest, which the task
    /// writes before anything else.
    Spilled(Box<[u8]>),
}

pub struct QueueReader {
    client: Arc<Client>,
}

/// A queued frame; `plain` ones bypass the built-in encryption (`connected`).
pub struct QueuedFrame {
    pub frame: Frame,
    pub plain: bool,
}

/// Publications fanned out together to a room's members: their frames,
/// and the same frames framed for the wire, once for every member. In a
/// burst, cloning and dropping each frame's reference count for each
/// member (counts touched by the fanning-out core and by every writing
/// core) and joining the frames again for each member's write were the
/// largest user-space costs of the server. A member holds the whole run
/// until it has written the run's last frame, so the frames of a run it has
/// already written (at most a bus batch of 32 publications) stay in memory
/// beyond what its backpressure limit counts.
pub struct Run {
    frames: Vec<Frame>,
    wire: Wire,
    /// The frames framed for members that negotiated permessage-deflate,
    /// each compressed (or plain, below the threshold), made by the first
    /// such member to write the run.
    deflated: OnceLock<Wire>,
    /// The frames' text, in bytes (what the backpressure limit counts).
    bytes: usize,
}

/// Frames framed for the wire, one after the other.
struct Wire {
    bytes: Vec<u8>,
    /// Where each frame starts in `bytes`, and where the last one ends.
    at: Vec<usize>,
}

impl Wire {
    fn of(frames: &[Frame], capacity: usize, mut append: impl FnMut(&mut Vec<u8>, &Frame)) -> Wire {
        let mut bytes = Vec::with_capacity(capacity + 4 * frames.len());
        let mut at = Vec::with_capacity(frames.len() + 1);
        for f in frames {
            at.push(bytes.len());
            append(&mut bytes, f);
        }
        at.push(bytes.len());
        Wire { bytes, at }
    }

    fn chunk(&self, start: usize, end: usize) -> Chunk<'_> {
        Chunk::Framed {
            bytes: &self.bytes[self.at[start]..self.at[end]],
            frames: end - start,
        }
    }
}

impl Run {
    pub fn new(frames: Vec<Frame>) -> Arc<Run> {
        let bytes = frames.iter().map(|f| f.len()).sum();
        // Each frame is framed already: its bytes are copied as they are.
        let wire = Wire::of(&frames, bytes, |buf, f| buf.extend_from_slice(f.wire()));
        Arc::new(Run {
            frames,
            wire,
            deflated: OnceLock::new(),
            bytes,
        })
    }

    /// Bytes frames `start..end` take on the wire for a member (`deflate`:
    /// compressed), what its backpressure limit counts.
    fn cost(&self, start: usize, end: usize, deflate: Option<&Deflate>) -> usize {
        match deflate {
            None => self.text_bytes(start, end),
            Some(_) => {
                let w = self.wire(deflate);
                w.at[end] - w.at[start]
            }
        }
    }

    /// The run framed for a member, compressed when it negotiated the
    /// extension (`deflate`).
    fn wire(&self, deflate: Option<&Deflate>) -> &Wire {
        let Some(d) = deflate else {
            return &self.wire;
        };
        self.deflated.get_or_init(|| {
            Wire::of(&self.frames, self.bytes, |buf, f| {
                let (head, payload) = one_frame(f, Some(d));
                crate::core::frame_writer::append_frame(buf, head, payload);
            })
        })
    }

    fn len(&self) -> usize {
        self.frames.len()
    }

    fn text_bytes(&self, start: usize, end: usize) -> usize {
        if start == 0 && end == self.frames.len() {
            return self.bytes;
        }
        self.frames[start..end].iter().map(|f| f.len()).sum()
    }
}

/// What a queue holds: one frame, or frames `start..end` of a [`Run`]
/// shared by every member it was offered to (one reference count per
/// member per run, not one per frame).
enum Entry {
    One(QueuedFrame),
    Run {
        run: Arc<Run>,
        start: usize,
        end: usize,
    },
}

impl Entry {
    fn len(&self) -> usize {
        match self {
            Entry::One(_) => 1,
            Entry::Run { start, end, .. } => end - start,
        }
    }
}

/// Entries in order, the only one held inline. A queue mostly holds one
/// entry at a time (a reply, a publication's frame), and a deque allocates
/// storage for it that is freed once the frame is written: a `malloc` and a
/// `free` per delivery (≈ 380 instructions of ≈ 3 000 in a fan-out). A
/// second entry behind the first moves both into a deque.
#[derive(Default)]
enum Entries {
    #[default]
    Empty,
    One(Entry),
    Many(VecDeque<Entry>),
}

impl Entries {
    fn is_empty(&self) -> bool {
        match self {
            Entries::Empty => true,
            Entries::One(_) => false,
            Entries::Many(d) => d.is_empty(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Entries::Empty => 0,
            Entries::One(_) => 1,
            Entries::Many(d) => d.len(),
        }
    }

    fn push_back(&mut self, entry: Entry) {
        match self {
            Entries::Empty => *self = Entries::One(entry),
            Entries::Many(d) => d.push_back(entry),
            Entries::One(_) => {
                let Entries::One(first) = std::mem::take(self) else {
                    unreachable!("matched One")
                };
                *self = Entries::Many(VecDeque::from([first, entry]));
            }
        }
    }

    fn pop_front(&mut self) -> Option<Entry> {
        match self {
            Entries::Empty => None,
            Entries::Many(d) => d.pop_front(),
            Entries::One(_) => match std::mem::take(self) {
                Entries::One(first) => Some(first),
                _ => unreachable!("matched One"),
            },
        }
    }

    fn front_mut(&mut self) -> Option<&mut Entry> {
        match self {
            Entries::Empty => None,
            Entries::One(e) => Some(e),
            Entries::Many(d) => d.front_mut(),
        }
    }

    fn iter(&self) -> EntriesIter<'_> {
        match self {
            Entries::Empty => EntriesIter::One(None),
            Entries::One(e) => EntriesIter::One(Some(e)),
            Entries::Many(d) => EntriesIter::Many(d.iter()),
        }
    }

    /// Entries stored outside (tests: the queue keeps no storage).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        match self {
            Entries::Many(d) => d.capacity(),
            _ => 0,
        }
    }
}

/// [`Entries::iter`]: one branch per step, where chaining the inline entry
/// to the deque's took several (it runs a few times for every frame sent).
#[derive(Clone)]
enum EntriesIter<'a> {
    One(Option<&'a Entry>),
    Many(std::collections::vec_deque::Iter<'a, Entry>),
}

impl<'a> Iterator for EntriesIter<'a> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        match self {
            EntriesIter::One(e) => e.take(),
            EntriesIter::Many(d) => d.next(),
        }
    }
}

impl IntoIterator for Entries {
    type Item = Entry;
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<Entry>,
        std::collections::vec_deque::IntoIter<Entry>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        let (one, many) = match self {
            Entries::Empty => (None, VecDeque::new()),
            Entries::One(e) => (Some(e), VecDeque::new()),
            Entries::Many(d) => (None, d),
        };
        one.into_iter().chain(many)
    }
}

/// Frames taken off a client's queue for its socket, in order.
#[derive(Default)]
pub struct Batch {
    entries: Entries,
}

impl Batch {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.iter().map(Entry::len).sum()
    }

    /// Entries are never empty: `take` makes none and `consume` drops them.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The frames' texts, in order.
    #[cfg(test)]
    pub fn texts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.entries.iter() {
            match e {
                Entry::One(q) => out.push(q.frame.as_str().to_string()),
                Entry::Run { run, start, end } => out.extend(
                    run.frames[*start..*end]
                        .iter()
                        .map(|f| f.as_str().to_string()),
                ),
            }
        }
        out
    }

    /// The frames as the socket is to be sent them: runs framed already;
    /// compressed where they are worth it when the socket negotiated
    /// permessage-deflate (`deflate`).
    pub fn chunks<'a>(
        &'a self,
        deflate: Option<&'a Deflate>,
    ) -> impl Iterator<Item = Chunk<'a>> + Clone {
        self.entries.iter().map(move |e| match e {
            // A frame sent plain goes framed already, from its own bytes.
            Entry::One(q) => match deflate.and_then(|d| q.frame.deflated(d)) {
                Some(z) => Chunk::One {
                    head: TEXT | COMPRESSED,
                    payload: z,
                },
                None => Chunk::Framed {
                    bytes: q.frame.wire(),
                    frames: 1,
                },
            },
            Entry::Run { run, start, end } => run.wire(deflate).chunk(*start, *end),
        })
    }

    /// Drops the first `n` frames (the socket took them).
    pub fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.entries.front_mut() else {
                return;
            };
            match front {
                Entry::Run { start, end, .. } if *end - *start > n => {
                    *start += n;
                    return;
                }
                _ => {
                    n -= front.len();
                    self.entries.pop_front();
                }
            }
        }
    }

    /// Replaces every frame that is not `plain` by `f(frame)`, which is
    /// then plain (the built-in encryption seals each client's own copy).
    pub fn seal_with(&mut self, f: impl Fn(&Frame) -> Frame) {
        let entries = std::mem::take(&mut self.entries);
        for e in entries {
            match e {
                Entry::One(q) if q.plain => self.entries.push_back(Entry::One(q)),
                Entry::One(q) => self.entries.push_back(Entry::One(QueuedFrame {
                    frame: f(&q.frame),
                    plain: true,
                })),
                Entry::Run { run, start, end } => {
                    for frame in &run.frames[start..end] {
                        self.entries.push_back(Entry::One(QueuedFrame {
                            frame: f(frame),
                            plain: true,
                        }));
                    }
                }
            }
        }
    }
}

/// A frame's first byte and payload: compressed (once, for every recipient)
/// when `deflate` is given and it pays, its text otherwise.
fn one_frame<'a>(frame: &'a Frame, deflate: Option<&Deflate>) -> (u8, &'a [u8]) {
    match deflate.and_then(|d| frame.deflated(d)) {
        Some(z) => (TEXT | COMPRESSED, z),
        None => (TEXT, frame.as_bytes()),
    }
}

/// What happened to a frame offered to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Over the backpressure limit: dropped (and counted).
    Dropped,
    /// The client is gone.
    Closed,
}

/// What became of frames offered together.
#[derive(Default)]
struct Enqueued {
    queued: usize,
    /// Over the backpressure limit (counted).
    dropped: u64,
    /// The client is gone (or its transformer is).
    closed: bool,
}

impl Enqueued {
    /// The outcome of a single frame.
    fn offer(&self) -> Offer {
        if self.queued > 0 {
            Offer::Queued
        } else if self.closed {
            Offer::Closed
        } else {
            Offer::Dropped
        }
    }
}

impl Client {
    pub fn new(
        id: ClientId,
        remote: String,
        now: u64,
        backpressure_limit: usize,
        close_on_backpressure_limit: bool,
        stats: Arc<Stats>,
    ) -> (Arc<Client>, QueueReader) {
        let client = Arc::new(Client {
            id,
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            remote,
            connected_at: now,
            last_activity: AtomicU64::new(now),
            state: AtomicU8::new(ClientState::Unauthorized as u8),
            encrypted: AtomicBool::new(false),
            backpressured: AtomicBool::new(false),
            details: Mutex::new(ClientDetails::default()),
            queue: Mutex::new(Queue::default()),
            task: AtomicWaker::new(),
            backpressure_limit,
            close_on_backpressure_limit,
            close_request: Mutex::new(None),
            close_requested: AtomicBool::new(false),
            read_woken: AtomicBool::new(false),
            gate_set: AtomicBool::new(false),
            stats,
            transformer: OnceLock::new(),
            cipher: OnceLock::new(),
            deflate: OnceLock::new(),
        });
        let reader = QueueReader {
            client: client.clone(),
        };
        (client, reader)
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// The client negotiated permessage-deflate.
    pub fn set_deflate(&self, deflate: Arc<Deflate>) {
        let _ = self.deflate.set(deflate);
    }

    /// How frames to this client are compressed, if they are. Never with
    /// built-in encryption (sealed frames do not compress, and compressing
    /// secrets beside attacker-chosen text would leak them through
    /// lengths): the connection does not set `deflate` on a server with
    /// it, so this answer, and the bytes counted against the backpressure
    /// limit, never change while frames are queued.
    pub fn deflate_out(&self) -> Option<&Deflate> {
        self.deflate.get().map(|d| &**d)
    }

    /// Bytes `frame` takes on the wire to this client, what its
    /// backpressure limit counts: compressed, for a client that gets it
    /// compressed (then compressed here, once for all recipients, as it is
    /// fanned out), like uWebSockets' buffered amount.
    fn cost(&self, frame: &Frame) -> usize {
        one_frame(frame, self.deflate_out()).1.len()
    }

    pub fn user_id(&self) -> Option<Arc<str>> {
        self.details.lock().user_id.clone()
    }

    pub fn touch(&self, now: u64) {
        self.last_activity.store(now, Ordering::Relaxed);
    }

    /// Routes this client's frames through `tx` (the transformer task).
    pub fn set_transformer(&self, tx: mpsc::UnboundedSender<Frame>) {
        let _ = self.transformer.set(tx);
    }

    /// Queues a frame without waiting, through the outbound transformer when
    /// the client has one. A frame is always accepted into an empty queue
    /// (however large); beyond that the queue (frames waiting for the
    /// transformer included) holds at most `backpressure_limit` bytes.
    pub fn offer(&self, frame: &Frame) -> Offer {
        self.enqueue_one(frame, false, self.transformer.get(), true)
    }

    /// `offer` beyond the backpressure limit: for a history replay, whose
    /// size the history bounds, and which must arrive whole or its
    /// `joined` answer would lie.
    pub fn offer_replay(&self, frame: &Frame) -> Offer {
        self.enqueue_one(frame, false, self.transformer.get(), false)
    }

    /// Queues a frame for the socket as it is, bypassing any transformer
    /// (`connected`, and frames the transformer already produced).
    pub fn offer_plain(&self, frame: &Frame) -> Offer {
        self.enqueue_one(frame, true, None, true)
    }

    /// `offer` for several frames in order, under one lock and with one
    /// wake-up: a batch of publications fanned out to a room costs each
    /// member one hand-over instead of one per frame, and the frames are
    /// queued as one shared run when they all fit. Returns how many were
    /// queued; each frame over the backpressure limit is dropped and
    /// counted as `offer` would.
    pub fn offer_many(&self, run: &Arc<Run>) -> usize {
        if run.frames.is_empty() {
            // A queue never holds an empty entry: a batch of none would
            // be written, and never be done, forever.
            return 0;
        }
        let transformer = self.transformer.get();
        if transformer.is_none() {
            // Compressed (once for the room) before the lock, if at all.
            let cost = run.cost(0, run.len(), self.deflate_out());
            let mut q = self.queue.lock();
            if q.closed {
                return 0;
            }
            let plain = self.cipher.get().is_none() && self.deflate_out().is_none();
            if plain && self.try_direct(&mut q, &run.wire(None).bytes, run.len()) {
                return run.len();
            }
            if q.queued + cost <= self.backpressure_limit {
                q.items.push_back(Entry::Run {
                    run: run.clone(),
                    start: 0,
                    end: run.len(),
                });
                q.queued += cost;
                drop(q);
                self.wake_task();
                return run.len();
            }
        }
        // Some would be over the limit (or they go to the transformer):
        // frame by frame.
        self.enqueue(&run.frames, false, transformer, true).queued
    }

    fn enqueue_one(
        &self,
        frame: &Frame,
        plain: bool,
        transformer: Option<&mpsc::UnboundedSender<Frame>>,
        limited: bool,
    ) -> Offer {
        self.enqueue(std::slice::from_ref(frame), plain, transformer, limited)
            .offer()
    }

    fn enqueue(
        &self,
        frames: &[Frame],
        plain: bool,
        transformer: Option<&mpsc::UnboundedSender<Frame>>,
        limited: bool,
    ) -> Enqueued {
        let mut out = Enqueued::default();
        if transformer.is_none() && self.deflate_out().is_some() {
            // Compressed (once for every recipient) before the lock: under
            // it, `cost` only reads the result.
            for frame in frames {
                self.cost(frame);
            }
        }
        {
            let mut q = self.queue.lock();
            if q.closed {
                out.closed = true;
                return out;
            }
            if let [frame] = frames {
                let direct = transformer.is_none()
                    && self.deflate_out().is_none()
                    && (plain || self.cipher.get().is_none());
                if direct && self.try_direct(&mut q, frame.wire(), 1) {
                    out.queued = 1;
                    return out;
                }
            }
            for frame in frames {
                // What goes to the transformer is counted as text until
                // `sent` takes it off.
                let len = match transformer {
                    Some(_) => frame.len(),
                    None => self.cost(frame),
                };
                if limited && q.queued > 0 && q.queued + len > self.backpressure_limit {
                    out.dropped += 1;
                    continue;
                }
                match transformer {
                    Some(tx) => {
                        if tx.send(frame.clone()).is_err() {
                            out.closed = true;
                            break;
                        }
                    }
                    None => q.items.push_back(Entry::One(QueuedFrame {
                        frame: frame.clone(),
                        plain,
                    })),
                }
                q.queued += len;
                out.queued += 1;
            }
        }
        if out.dropped > 0 {
            self.backpressured.store(true, Ordering::Relaxed);
            self.stats
                .dropped_backpressure
                .fetch_add(out.dropped, Ordering::Relaxed);
            if self.close_on_backpressure_limit {
                let (code, reason) = crate::core::protocol::close::BACKPRESSURE;
                self.request_close(code, reason);
            }
        }
        // Every offer that queued something wakes (a no-op until the task
        // registers again); waking only for the first frame into an empty
        // queue measured slower in a burst fan-out. The transformer's task
        // hands its output back through `offer_plain`, which wakes then.
        if out.queued > 0 && transformer.is_none() {
            self.wake_task();
        }
        out
    }

    /// Writes `bytes` (`frames` whole frames, as the client gets them) to
    /// the socket at once if the gate is open and nothing is queued ahead
    /// of them. A server behind still joins frames into fewer writes: a
    /// bus batch comes as one run (one write per member), and a member
    /// with frames queued gets the rest queued, for its task to write
    /// together. True when they are written, or their end left to the
    /// task; false when they must be queued (the socket was full, or
    /// failing: the task takes over).
    fn try_direct(&self, q: &mut Queue, bytes: &[u8], frames: usize) -> bool {
        let Gate::Open(fd) = q.gate else {
            return false;
        };
        if !q.items.is_empty() {
            return false;
        }
        match send_now(fd, bytes) {
            Ok(n) if n > 0 => {
                if n < bytes.len() {
                    q.gate = Gate::Spilled(bytes[n..].into());
                    self.wake_task();
                }
                self.stats
                    .frames_out
                    .fetch_add(frames as u64, Ordering::Relaxed);
                true
            }
            _ => {
                // Full, or failing: the task writes from now on, and meets
                // the error itself if there is one.
                q.gate = Gate::Shut;
                self.gate_set.store(false, Ordering::Relaxed);
                false
            }
        }
    }

    /// Wakes the connection task to write what was queued (or to close),
    /// through `deferred_wakes`: a fan-out on another thread hands the
    /// wake-ups over together.
    fn wake_task(&self) {
        crate::core::deferred_wakes::wake(&self.task);
    }

    /// Called once a frame has left the transformer's queue.
    pub fn sent(&self, len: usize) {
        let mut q = self.queue.lock();
        q.queued = q.queued.saturating_sub(len);
        self.release(q.queued);
    }

    fn release(&self, queued: usize) {
        if queued <= self.backpressure_limit / 2 {
            self.backpressured.store(false, Ordering::Relaxed);
        }
    }

    /// Asks the connection task to close the socket. The first request wins.
    pub fn request_close(&self, code: u16, reason: &str) {
        let mut slot = self.close_request.lock();
        if slot.is_none() {
            *slot = Some(Box::new(CloseRequest {
                code,
                reason: reason.to_string(),
            }));
            drop(slot);
            self.close_requested.store(true, Ordering::Release);
            self.wake_task();
        }
    }

    /// Ready with the close request once there is one (for the connection
    /// task only: it registers the task's waker, which a queued frame wakes
    /// too, so the loop registers once per poll and then looks at both).
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<CloseRequest> {
        self.task.register(cx.waker());
        if self.close_requested.load(Ordering::Acquire) {
            if let Some(req) = self.close_request.lock().take() {
                return Poll::Ready(*req);
            }
        }
        Poll::Pending
    }
}

impl crate::core::frame_writer::SocketShare for Client {
    fn shut(&self) -> Option<Box<[u8]>> {
        if !self.gate_set.load(Ordering::Relaxed) {
            return None;
        }
        let mut q = self.queue.lock();
        self.gate_set.store(false, Ordering::Relaxed);
        match std::mem::take(&mut q.gate) {
            Gate::Spilled(rest) => Some(rest),
            _ => None,
        }
    }
}

/// One non-blocking `send` of `bytes` to the socket `fd`.
#[cfg(target_os = "linux")]
fn send_now(fd: i32, bytes: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `fd` is the connection's socket, open while the gate is: the
    // task shuts the gate (under the queue's lock, which the caller holds)
    // before the socket is dropped (`FrameWriter`'s `Drop`), and the buffer
    // is valid for `bytes.len()` bytes. `MSG_NOSIGNAL`: a peer gone is an
    // error here, not a SIGPIPE for the process.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// No gate opens elsewhere (`TryWrite::direct_fd`).
#[cfg(not(target_os = "linux"))]
fn send_now(_fd: i32, _bytes: &[u8]) -> std::io::Result<usize> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The waker the connection task reads its socket with: when the socket
/// becomes readable, it marks the client (`read_woken`) and wakes the task.
/// Most of the task's wake-ups are frames queued for it (a fan-out wakes
/// every member), and a read that finds nothing costs, through the
/// WebSocket layers, about as much as the write: with the mark the task
/// reads only when the socket said it may have something.
impl std::task::Wake for Client {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.read_woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Client {
    /// Whether the socket's read side woke the task since this was last
    /// asked; clears the mark.
    pub fn take_read_woken(&self) -> bool {
        self.read_woken.load(Ordering::Relaxed) && self.read_woken.swap(false, Ordering::AcqRel)
    }
}

impl QueueReader {
    /// Takes up to `max` queued frames off the queue and its byte count,
    /// under one lock. Frames taken no longer count against the
    /// backpressure limit, so at most `max` are ever out of its view.
    pub fn take(&mut self, max: usize) -> Batch {
        self.take_or_open(max, None)
    }

    /// `take`, which opens the gate to direct writes to `fd` when it finds
    /// the queue empty (the caller has nothing pending and writes nothing
    /// before it shuts the gate again), and shuts it when it takes frames:
    /// those must reach the socket before any offered after them.
    pub fn take_or_open(&mut self, max: usize, fd: Option<i32>) -> Batch {
        let mut batch = Batch::default();
        let mut q = self.client.queue.lock();
        if q.items.is_empty() {
            if let (Some(fd), Gate::Shut, false) = (fd, &q.gate, q.closed) {
                q.gate = Gate::Open(fd);
                self.client.gate_set.store(true, Ordering::Relaxed);
            }
            return batch;
        }
        if matches!(q.gate, Gate::Open(_)) {
            q.gate = Gate::Shut;
            self.client.gate_set.store(false, Ordering::Relaxed);
        }
        let deflate = self.client.deflate_out();
        let cost = |entry: &Entry| match entry {
            Entry::One(f) => one_frame(&f.frame, deflate).1.len(),
            Entry::Run { run, start, end } => run.cost(*start, *end, deflate),
        };
        // Most often one frame, or one run, waits.
        if let Entries::One(e) = &q.items {
            if e.len() <= max {
                let bytes = cost(e);
                batch.entries = std::mem::take(&mut q.items);
                q.queued = q.queued.saturating_sub(bytes);
                self.client.release(q.queued);
                return batch;
            }
        }
        let (mut frames, mut bytes) = (0, 0);
        // The usual case, everything queued fits: the queue's storage moves
        // into the batch, which is freed once written, so an idle
        // connection keeps no queue buffer from its last frames. (Every
        // entry holds a frame at least, so a longer queue cannot fit, and
        // is not walked whole under the lock the producers wait on.)
        if q.items.len() <= max {
            let queued: usize = q.items.iter().map(Entry::len).sum();
            if queued <= max {
                frames = queued;
                bytes = q.items.iter().map(cost).sum();
                batch.entries = std::mem::take(&mut q.items);
            }
        }
        while frames < max {
            let room = max - frames;
            let Some(front) = q.items.front_mut() else {
                break;
            };
            let entry = match front {
                Entry::Run { run, start, end } if *end - *start > room => {
                    let part = Entry::Run {
                        run: run.clone(),
                        start: *start,
                        end: *start + room,
                    };
                    *start += room;
                    part
                }
                _ => q.items.pop_front().expect("front"),
            };
            bytes += cost(&entry);
            frames += entry.len();
            batch.entries.push_back(entry);
        }
        if frames > 0 {
            q.queued = q.queued.saturating_sub(bytes);
            self.client.release(q.queued);
        }
        batch
    }
}

impl Drop for QueueReader {
    fn drop(&mut self) {
        let mut q = self.client.queue.lock();
        q.closed = true;
        q.items = Entries::Empty;
        q.queued = 0;
        q.gate = Gate::Shut;
        self.client.gate_set.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(limit: usize) -> (Arc<Client>, QueueReader) {
        Client::new(
            "c".into(),
            "127.0.0.1".into(),
            0,
            limit,
            false,
            Arc::new(Stats::default()),
        )
    }

    fn frames(texts: &[&str]) -> Arc<Run> {
        Run::new(texts.iter().map(|t| Frame::from(*t)).collect())
    }

    fn texts(b: &Batch) -> Vec<String> {
        b.texts()
    }

    /// Offers made while a fan-out gathers its wake-ups (on the Redis
    /// thread) queue their frames at once and in order; the task is woken
    /// by whoever the wake-up is handed to, once.
    #[test]
    fn offers_gathering_their_wake_ups_queue_at_once_and_wake_once() {
        use crate::core::deferred_wakes::tests::Count;
        let (c, mut reader) = client(1 << 20);
        let count = Arc::new(Count::default());
        let waker = std::task::Waker::from(count.clone());
        assert!(c.poll_close(&mut Context::from_waker(&waker)).is_pending());
        let wakers = crate::core::deferred_wakes::gather(|| {
            c.offer(&Frame::from("a"));
            c.offer_many(&frames(&["b", "c"]));
        });
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert_eq!(texts(&reader.take(10)), ["a", "b", "c"]);
        assert_eq!(wakers.len(), 1);
        wakers.into_iter().for_each(std::task::Waker::wake);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    /// For a client that gets frames compressed, the backpressure limit
    /// counts the compressed bytes (what goes on the wire), for single
    /// frames and runs alike, and what is taken off gives the same back.
    #[test]
    fn backpressure_counts_compressed_bytes_for_a_compressed_client() {
        let text = format!("{{\"event\":\"e\",\"data\":\"{}\"}}", "abc".repeat(600));
        let deflate = Arc::new(Deflate {
            threshold: 0,
            level: 6,
            stats: Arc::new(Stats::default()),
        });
        let (plain, _p) = client(4000);
        let (zipped, mut z) = client(4000);
        zipped.set_deflate(deflate.clone());
        for _ in 0..5 {
            plain.offer(&Frame::from(text.as_str()));
            zipped.offer(&Frame::from(text.as_str()));
        }
        let run = frames(&[text.as_str(), text.as_str()]);
        assert_eq!(plain.offer_many(&run), 0, "over the limit as text");
        assert_eq!(zipped.offer_many(&run), 2);
        // Two 1.8 KB frames fit as text; three more and the run do not.
        assert_eq!(
            plain.stats.dropped_backpressure.load(Ordering::Relaxed),
            3 + 2
        );
        assert_eq!(zipped.stats.dropped_backpressure.load(Ordering::Relaxed), 0);
        // 7 compressions of 7 distinct frames, none repeated by the take.
        assert_eq!(deflate.stats.deflate_compressed.load(Ordering::Relaxed), 7);
        assert_eq!(z.take(100).len(), 7);
        assert_eq!(zipped.queue.lock().queued, 0);
    }

    /// A batch that takes everything queued takes the queue's storage
    /// too (an idle connection keeps none), and the byte count with it;
    /// one that cannot leaves the rest queued, in order.
    #[test]
    fn taking_everything_leaves_the_queue_without_storage() {
        let (c, mut r) = client(1 << 20);
        for t in ["a", "b", "c"] {
            c.offer(&Frame::from(t));
        }
        assert!(c.queue.lock().items.capacity() > 0);
        let b = r.take(10);
        assert_eq!(texts(&b), ["a", "b", "c"]);
        assert_eq!(c.queue.lock().items.capacity(), 0);
        assert_eq!(c.queue.lock().queued, 0);

        c.offer(&Frame::from("d"));
        assert_eq!(c.offer_many(&frames(&["e", "f", "g"])), 3);
        assert_eq!(texts(&r.take(2)), ["d", "e"]);
        assert_eq!(texts(&r.take(10)), ["f", "g"]);
        assert_eq!(c.queue.lock().items.capacity(), 0);
        assert_eq!(c.queue.lock().queued, 0);
    }

    /// A run is shared, not copied frame by frame, and it keeps its place
    /// between single frames; `take` splits it at `max` and `consume`
    /// walks across entries.
    #[test]
    fn runs_are_shared_and_taken_in_order() {
        let (c, mut r) = client(1 << 20);
        let run = frames(&["b", "c", "d", "e"]);
        c.offer(&Frame::from("a"));
        assert_eq!(c.offer_many(&run), 4);
        c.offer(&Frame::from("f"));
        // One reference per member, whatever the number of frames.
        assert_eq!(Arc::strong_count(&run), 2);

        let mut first = r.take(3);
        assert_eq!(texts(&first), ["a", "b", "c"]);
        assert_eq!(first.len(), 3);
        // On the wire: "a" from its own framed bytes, "b" and "c" cut from
        // the run's framing.
        let mut wire = Vec::new();
        let mut counts = Vec::new();
        for c in first.chunks(None) {
            match c {
                Chunk::One { .. } => panic!("a plain frame goes framed already"),
                Chunk::Framed { bytes, frames } => {
                    counts.push(frames);
                    wire.extend_from_slice(bytes);
                }
            }
        }
        assert_eq!(counts, [1, 2]);
        assert_eq!(wire, [0x81, 1, b'a', 0x81, 1, b'b', 0x81, 1, b'c']);
        let rest = r.take(10);
        assert_eq!(texts(&rest), ["d", "e", "f"]);
        assert!(r.take(10).is_empty());

        first.consume(2);
        assert_eq!(texts(&first), ["c"]);
        first.consume(1);
        assert!(first.is_empty());
        drop((first, rest));
        assert_eq!(Arc::strong_count(&run), 1);
    }

    /// A run that would pass the backpressure limit is queued frame by
    /// frame under the single-frame rule: the frames that fit are queued,
    /// the others dropped and counted.
    #[test]
    fn a_run_over_the_limit_is_offered_frame_by_frame() {
        let (c, mut r) = client(10);
        let run = frames(&["1234", "5678", "9abc"]);
        assert_eq!(c.offer_many(&run), 2);
        assert_eq!(c.stats.dropped_backpressure.load(Ordering::Relaxed), 1);
        assert_eq!(texts(&r.take(10)), ["1234", "5678"]);
        // Taken frames no longer count: the next run fits whole.
        assert_eq!(c.offer_many(&frames(&["x", "y"])), 2);
        assert_eq!(texts(&r.take(10)), ["x", "y"]);
    }

    /// A run of no frames (a history feed's batch can end up empty) queues
    /// nothing: an empty entry would leave a batch that is never written.
    #[test]
    fn an_empty_run_queues_nothing() {
        let (c, mut r) = client(1 << 20);
        assert_eq!(c.offer_many(&frames(&[])), 0);
        assert!(r.take(10).is_empty());
        c.offer(&Frame::from("a"));
        assert_eq!(texts(&r.take(10)), ["a"]);
    }

    /// Sealing (built-in encryption) gives each client its own frames:
    /// the shared run is left as it was.
    #[test]
    fn sealing_a_batch_leaves_the_shared_run_alone() {
        let (c, mut r) = client(1 << 20);
        let run = frames(&["p", "q"]);
        c.offer_plain(&Frame::from("plain"));
        c.offer_many(&run);
        let mut b = r.take(10);
        b.seal_with(|f| Frame::from(format!("<{}>", f.as_str())));
        assert_eq!(texts(&b), ["plain", "<p>", "<q>"]);
        assert_eq!(run.frames[0].as_str(), "p");
    }

    /// Every idle connection pays for this struct; the cipher, larger than
    /// the rest of the record, is boxed out of it for the clients that
    /// never use it.
    #[test]
    fn client_record_stays_small() {
        let client = std::mem::size_of::<Client>();
        let cipher = std::mem::size_of::<crate::core::crypto::ClientCipher>();
        assert!(client <= 512, "Client is {client} bytes");
        assert!(
            cipher >= 256,
            "ClientCipher is {cipher} bytes: boxing it may no longer pay"
        );
    }
}
