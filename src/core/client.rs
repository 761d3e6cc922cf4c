//! One connected client as the rest of the server sees it: its identity and
//! state, and the bounded queue through which anyone may send it frames.
//!
//! The socket itself belongs to the connection task; everything here is
//! shared (behind `Arc`) and safe to touch from any thread.

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
    pub server_public_key: Option<String>,
    pub salt: Option<String>,
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
    close_request: Mutex<Option<CloseRequest>>,
    close_requested: AtomicBool,
    stats: Arc<Stats>,
    /// Set once the client is encrypted and an outbound transformer is
    /// bound: frames then go through the transformer before the socket.
    transformer: OnceLock<mpsc::UnboundedSender<Frame>>,
    /// Set by the built-in encryption handshake: the connection task seals
    /// every frame except those queued with `offer_plain`. Boxed: the key
    /// schedule is large (see the test below) and most clients never use it.
    pub cipher: OnceLock<Box<crate::core::crypto::ClientCipher>>,
}

/// The receiving end of a client's queue, owned by its connection task.
#[derive(Default)]
struct Queue {
    items: VecDeque<QueuedFrame>,
    /// The connection task is gone: nothing will read these any more.
    closed: bool,
    /// Bytes queued here or waiting for the transformer, against
    /// `backpressure_limit`. Kept under the queue's lock (taken anyway)
    /// rather than in an atomic of its own: one cache line less to move
    /// between cores per frame of a fan-out.
    queued: usize,
}

pub struct QueueReader {
    client: Arc<Client>,
}

/// A queued frame; `plain` ones bypass the built-in encryption (`connected`).
pub struct QueuedFrame {
    pub frame: Frame,
    pub plain: bool,
}

impl crate::core::frame_writer::Payload for QueuedFrame {
    fn bytes(&self) -> &[u8] {
        self.frame.as_bytes()
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
            stats,
            transformer: OnceLock::new(),
            cipher: OnceLock::new(),
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
    /// member one hand-over instead of one per frame. Returns how many
    /// were queued; each frame over the backpressure limit is dropped and
    /// counted as `offer` would.
    pub fn offer_many(&self, frames: &[Frame]) -> usize {
        self.enqueue(frames, false, self.transformer.get(), true)
            .queued
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
        {
            let mut q = self.queue.lock();
            if q.closed {
                out.closed = true;
                return out;
            }
            for frame in frames {
                let len = frame.len();
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
                    None => q.items.push_back(QueuedFrame {
                        frame: frame.clone(),
                        plain,
                    }),
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
            self.task.wake();
        }
        out
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
            *slot = Some(CloseRequest {
                code,
                reason: reason.to_string(),
            });
            drop(slot);
            self.close_requested.store(true, Ordering::Release);
            self.task.wake();
        }
    }

    /// Ready with the close request once there is one (for the connection
    /// task only: it registers the task's waker).
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<CloseRequest> {
        self.task.register(cx.waker());
        if self.close_requested.load(Ordering::Acquire) {
            if let Some(req) = self.close_request.lock().take() {
                return Poll::Ready(req);
            }
        }
        Poll::Pending
    }
}

impl QueueReader {
    /// Ready with up to `max` queued frames. The waker is registered
    /// before the queue is looked at, so a frame pushed in between still
    /// wakes us.
    pub fn poll_batch(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Vec<QueuedFrame>> {
        self.client.task.register(cx.waker());
        let batch = self.take(max);
        if batch.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(batch)
        }
    }

    /// Takes up to `max` queued frames off the queue and its byte count,
    /// under one lock.
    pub fn take(&mut self, max: usize) -> Vec<QueuedFrame> {
        let mut q = self.client.queue.lock();
        let n = q.items.len().min(max);
        if n == 0 {
            return Vec::new();
        }
        let batch: Vec<QueuedFrame> = q.items.drain(..n).collect();
        let bytes: usize = batch.iter().map(|out| out.frame.len()).sum();
        q.queued = q.queued.saturating_sub(bytes);
        self.client.release(q.queued);
        batch
    }
}

impl Drop for QueueReader {
    fn drop(&mut self) {
        let mut q = self.client.queue.lock();
        q.closed = true;
        q.items = VecDeque::new();
        q.queued = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
