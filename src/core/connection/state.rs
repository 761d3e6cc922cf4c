//! A connection's state, shared by the loop (`mod.rs`) and the three
//! parts of its state machine beside it (`inbound`, `auth`, `rooms`): the
//! one place each of them reads it from.

use crate::core::client::Client;
use crate::core::config::Config;
use crate::core::connections::Connections;
use crate::core::events::Events;
use crate::core::handlers::Handlers;
use crate::core::history::protocol::Recover;
use crate::core::history::Backend;
use crate::core::hub::Hub;
use crate::core::log::Logger;
use crate::core::presence::Presence;
use crate::core::stats::Stats;
use crate::core::transform::Transformer;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use std::sync::Arc;
use tokio::time::Instant;

/// What every connection task uses: one of these per server, shared.
pub struct Env {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub handlers: Arc<dyn Handlers>,
    pub log: Logger,
    pub stats: Arc<Stats>,
    pub events: Arc<Events>,
    pub connections: Arc<Connections>,
    /// Set when the application has an outbound transformer.
    pub transformer: Option<Arc<Transformer>>,
    /// Set with the `history` option.
    pub history: Option<Backend>,
    /// Set with the `presence` option.
    pub presence: Option<Arc<Presence>>,
    /// `authenticateFn` calls in flight, against `maxPendingAuthentications`.
    pub pending_auth: std::sync::atomic::AtomicUsize,
    /// Set with the `perMessageDeflate` option.
    pub deflate: Option<Arc<crate::core::deflate::Deflate>>,
}

pub(super) struct Connection {
    pub(super) env: Arc<Env>,
    pub(super) client: Arc<Client>,
    pub(super) auth: Option<BoxFuture<'static, AuthFlow>>,
    /// Set when `authenticate` arrives: the in-progress deadline.
    pub(super) auth_deadline: Option<Instant>,
    /// Joins awaiting `validateRoomFn`. Made on the first join and dropped
    /// once none is left: an empty `FuturesUnordered` still allocates its
    /// queue (144 bytes), which every idle connection would pay.
    pub(super) joins: Option<FuturesUnordered<BoxFuture<'static, JoinDone>>>,
    /// End of the current one-second rate window, and frames seen in it.
    pub(super) window_end: Instant,
    pub(super) window_frames: u32,
}

/// What the read side asks the loop to do next.
pub(super) enum Next {
    Continue,
    /// The event queue is full: wait for room (this pauses the reads).
    Wait(BoxFuture<'static, ()>),
    Close(u16, &'static str),
    Stop,
}

/// How the authentication flow (authenticate, then the optional handshake)
/// ended.
pub(super) enum AuthFlow {
    Ok {
        user_id: Option<String>,
        keys: Option<(String, String)>,
        cipher: Option<Box<crate::core::crypto::ClientCipher>>,
    },
    Rejected,
    Error(String),
    NoHandshakeHandler,
    HandshakeRejected,
}

/// Counts an `authenticateFn` call in flight for as long as it lives.
pub(super) struct PendingAuth(pub(super) Arc<Env>);

impl Drop for PendingAuth {
    fn drop(&mut self) {
        self.0
            .pending_auth
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub(super) struct JoinDone {
    pub(super) requested: Vec<String>,
    /// What the client asked to recover, per room (history rooms).
    pub(super) recover: std::collections::HashMap<String, Recover>,
    pub(super) result: Result<Vec<String>, String>,
}
