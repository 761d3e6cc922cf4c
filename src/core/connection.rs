//! One task per connection: it owns the socket and runs the client's state
//! machine (docs/PROTOCOL.md §2–§5), its timers, and the writes of its queue.
//!
//! Everything that can take long (the application's handlers) runs as a
//! future polled by this same task, so a slow `authenticateFn` or
//! `validateRoomFn` never stops the socket from being read or written, and a
//! socket that cannot be written never holds up anyone else.

use crate::core::client::{Batch, Client, ClientState, CloseRequest, QueueReader};
use crate::core::config::Config;
use crate::core::connections::Connections;
use crate::core::events::Events;
use crate::core::frame_writer::{FrameWriter, FRAMES_PER_WRITE};
use crate::core::handlers::Handlers;
use crate::core::handlers::{AppEvent, AuthOutcome, HandshakeOutcome};
use crate::core::history::protocol::{self as history, Recover};
use crate::core::history::Backend;
use crate::core::hub::Hub;
use crate::core::log::Logger;
use crate::core::presence::Presence;
use crate::core::protocol::Frame;
use crate::core::protocol::{self, close, errors, events, EventName};
use crate::core::stats::bump;
use crate::core::stats::Stats;
use crate::core::transform::Transformer;
use crate::core::violation::Violation;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Sink, StreamExt};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How the authentication flow (authenticate, then the optional handshake)
/// ended.
enum AuthFlow {
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

fn seal(cipher: &crate::core::crypto::ClientCipher, frame: &Frame) -> Frame {
    match cipher.seal(frame.as_bytes()) {
        Some(sealed) => sealed.into(),
        // Sealing only fails if the system RNG does; never send plaintext.
        None => protocol::error_frame("Encryption failed"),
    }
}

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
}

struct JoinDone {
    requested: Vec<String>,
    /// What the client asked to recover, per room (history rooms).
    recover: std::collections::HashMap<String, Recover>,
    result: Result<Vec<String>, String>,
}

/// Runs a connection to its end, then removes the client everywhere and
/// tells the application. A panic inside the connection closes only it.
///
/// The setup runs here, before the returned future exists, and the loop is
/// boxed: that future, held for the connection's whole life, then keeps
/// only what the clean-up needs instead of a second copy of the socket.
pub fn run<S>(
    env: Arc<Env>,
    ws: WebSocketStream<FrameWriter<S>>,
    remote: String,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let now = protocol::now_ms();
    let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let (client, queue) = Client::new(
        id.clone(),
        remote,
        now,
        env.config.backpressure_limit,
        env.config.close_on_backpressure_limit,
        env.stats.clone(),
    );
    env.hub.register(client.clone());
    bump(&env.stats.connections_total);
    env.log.info(
        "New connection (unauthorized)",
        &[("id", &id), ("remote", &client.remote)],
    );
    if env.connections.is_shutting_down() {
        let (code, reason) = close::SHUTDOWN;
        client.request_close(code, reason);
    }

    let conn = Connection {
        env: env.clone(),
        client,
        auth: None,
        auth_deadline: None,
        joins: FuturesUnordered::new(),
        window_start: Instant::now(),
        window_frames: 0,
    };
    let drive = Box::pin(conn.drive(ws, queue));
    async move {
        if let Err(panic) = AssertUnwindSafe(drive).catch_unwind().await {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            env.log.error(
                "Connection task panicked; closing it",
                &[("id", &id), ("panic", &what)],
            );
        }

        gone(&env, &id).await;
    }
}

/// Removes the client from every index and tells the application, once
/// (a closing connection does it before its close handshake).
async fn gone(env: &Env, id: &str) {
    let rooms: Vec<Arc<str>> = match (&env.presence, env.hub.get(id)) {
        (Some(_), Some(c)) => c.details.lock().rooms.iter().cloned().collect(),
        _ => Vec::new(),
    };
    let Some(user_id) = env.hub.remove(id) else {
        return;
    };
    if let Some(p) = &env.presence {
        for room in &rooms {
            p.announce(&env.hub, room, id, user_id.as_deref(), false);
        }
    }
    env.log.info(
        "Client disconnected",
        &[
            ("id", &id),
            ("userId", &user_id.as_deref().unwrap_or("anonymous")),
        ],
    );
    env.events
        .emit(AppEvent::Disconnected {
            client_id: id.to_string(),
            user_id: user_id.map(|u| u.to_string()),
        })
        .await;
}

/// What the socket side of the loop produced.
enum Io {
    Written(Result<(), WsError>),
    Read(Option<Result<Message, WsError>>),
}

/// Seals the frames of a batch for a client with built-in encryption
/// (here, on the connection's own task, so a fan-out's encryption spreads
/// over the runtime's threads).
fn seal_batch(client: &Client, batch: &mut Batch) {
    if let Some(cipher) = client.cipher.get() {
        batch.seal_with(|frame| seal(cipher, frame));
    }
}

/// Queues a transport ping without waiting: a socket that cannot take it
/// now (its peer is not reading) is left to `sendTimeout` and the idle
/// check rather than blocking the loop. What tungstenite does not write at
/// once waits in `Outgoing`, which the loop drains like any frame.
fn try_ping<S>(
    ws: &mut WebSocketStream<FrameWriter<S>>,
    cx: &mut Context<'_>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if ws.get_ref().pending_len() >= crate::core::frame_writer::CONTROL_PENDING_MAX {
        return Ok(());
    }
    match Pin::new(&mut *ws).poll_ready(cx) {
        Poll::Ready(r) => r?,
        Poll::Pending => return Ok(()),
    }
    Pin::new(&mut *ws).start_send(Message::Ping(Default::default()))?;
    match Pin::new(&mut *ws).poll_flush(cx) {
        Poll::Ready(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

struct Connection {
    env: Arc<Env>,
    client: Arc<Client>,
    auth: Option<BoxFuture<'static, AuthFlow>>,
    /// Set when `authenticate` arrives: the in-progress deadline.
    auth_deadline: Option<Instant>,
    joins: FuturesUnordered<BoxFuture<'static, JoinDone>>,
    /// Start of the current one-second rate window, and frames seen in it.
    window_start: Instant,
    window_frames: u32,
}

/// Counts an `authenticateFn` call in flight for as long as it lives.
struct PendingAuth(Arc<Env>);

impl Drop for PendingAuth {
    fn drop(&mut self) {
        self.0
            .pending_auth
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What the read side asks the loop to do next.
enum Next {
    Continue,
    /// The event queue is full: wait for room (this pauses the reads).
    Wait(BoxFuture<'static, ()>),
    Close(u16, &'static str),
    Stop,
}

impl Connection {
    /// The connection's loop. A plain function returning an `async` block
    /// rather than an `async fn`: an `async fn` keeps its arguments (the
    /// socket, this struct) in its future a second time besides the locals
    /// they move into, and every idle connection pays for that future's
    /// size (docs/PERFORMANCE.md has the figures).
    fn drive<S>(
        self,
        ws: WebSocketStream<FrameWriter<S>>,
        queue: QueueReader,
    ) -> impl std::future::Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut this = self;
        let mut ws = ws;
        let mut queue = queue;
        async move {
            let cfg = this.env.config.clone();
            // One timer for every deadline (authentication, the idle
            // check's next tick, a stalled write's `sendTimeout`), re-armed
            // only when the earliest changes: a timer per deadline would
            // cost every idle connection its size each and more entries in
            // the timer wheel.
            let idle_period = if cfg.idle_timeout.is_zero() {
                // Effectively never; keeps the deadline arithmetic uniform.
                Duration::from_secs(365 * 24 * 3600)
            } else {
                cfg.idle_timeout / 2
            };
            let mut auth_until = Instant::now() + cfg.auth_timeout;
            let mut next_tick = Instant::now() + idle_period;
            let mut armed = auth_until.min(next_tick);
            let timer = tokio::time::sleep_until(armed);
            tokio::pin!(timer);
            let mut heard_since_tick = false;
            let mut quiet_ticks = 0u8;
            // Frames taken off the queue that the socket has not taken yet.
            let mut batch = Batch::default();
            // Set while the event queue is full: reads pause until it has room.
            let mut paused: Option<BoxFuture<'static, ()>> = None;

            let close_with: Option<CloseRequest> = loop {
                // Writing is one branch among the others, never awaited
                // inside one: a peer that stops reading must not keep
                // close requests, timers or shutdown from being seen.
                let writing = !batch.is_empty() || ws.get_ref().has_pending();
                let reading = paused.is_none();
                tokio::select! {
                    biased;
                    req = std::future::poll_fn(|cx| this.client.poll_close(cx)) => break Some(req),
                    // Second: however busy the socket, deadlines are seen.
                    () = &mut timer => {
                        let now = Instant::now();
                        if paused.is_some() {
                            // Reads wait for the application, not the peer.
                            heard_since_tick = true;
                        }
                        if now >= auth_until && this.awaiting_auth() {
                            this.env.log.warn("Auth timeout", &[("id", &this.client.id)]);
                            let (code, reason) = close::AUTH_TIMEOUT;
                            break Some(CloseRequest { code, reason: reason.into() });
                        }
                        if writing && !cfg.send_timeout.is_zero() && now >= ws.get_ref().progress_at() + cfg.send_timeout {
                            bump(&this.env.stats.send_timeouts);
                            this.env.log.warn(
                                "Send timeout: no write progress; dropping the connection",
                                &[("id", &this.client.id), ("sendTimeoutMs", &cfg.send_timeout.as_millis())],
                            );
                            break None;
                        }
                        if now >= next_tick {
                            next_tick = now + idle_period;
                            if heard_since_tick {
                                heard_since_tick = false;
                                quiet_ticks = 0;
                            } else {
                                quiet_ticks += 1;
                                if quiet_ticks >= 2 {
                                    let (code, reason) = close::IDLE;
                                    break Some(CloseRequest { code, reason: reason.into() });
                                }
                                if cfg.send_pings
                                    && std::future::poll_fn(|cx| Poll::Ready(try_ping(&mut ws, cx))).await.is_err()
                                {
                                    break None;
                                }
                            }
                        }
                    }
                    io = std::future::poll_fn(|cx| Self::poll_socket(&this.env.stats, &mut ws, &mut batch, writing, reading, cx)) => match io {
                        // Written: the batch's storage goes too, rather than
                        // stay allocated in every idle connection.
                        Io::Written(Ok(())) => batch = Batch::default(),
                        Io::Written(Err(_)) => break None,
                        Io::Read(msg) => {
                            heard_since_tick = true;
                            match this.on_read(msg) {
                                Next::Continue => {}
                                Next::Wait(wait) => paused = Some(wait),
                                Next::Close(code, reason) => break Some(CloseRequest { code, reason: reason.into() }),
                                Next::Stop => break None,
                            }
                        }
                    },
                    taken = std::future::poll_fn(|cx| queue.poll_batch(cx, FRAMES_PER_WRITE)), if !writing => {
                        batch = taken;
                        seal_batch(&this.client, &mut batch);
                        // The wait for the socket, if any, starts now.
                        ws.get_mut().mark_progress();
                    }
                    () = async { paused.as_mut().expect("guarded").await }, if !reading => {
                        paused = None;
                    }
                    flow = async { this.auth.as_mut().expect("guarded").await }, if this.auth.is_some() => {
                        this.auth = None;
                        // Boxed, like every once-per-connection await here: the
                        // loop's future lives as long as the connection, so its
                        // size is paid by every idle socket.
                        if let Some((code, reason)) = Box::pin(this.finish_auth(flow)).await {
                            break Some(CloseRequest { code, reason: reason.into() });
                        }
                    }
                    Some(done) = this.joins.next(), if !this.joins.is_empty() => {
                        this.finish_join(done);
                    }
                }
                // The authenticate frame swaps the auth deadline for the
                // longer one.
                if let Some(deadline) = this.auth_deadline.take() {
                    auth_until = deadline;
                }
                let mut deadline = next_tick;
                if this.awaiting_auth() {
                    deadline = deadline.min(auth_until);
                }
                if !cfg.send_timeout.is_zero() && (!batch.is_empty() || ws.get_ref().has_pending())
                {
                    deadline = deadline.min(ws.get_ref().progress_at() + cfg.send_timeout);
                }
                if deadline != armed {
                    armed = deadline;
                    timer.as_mut().reset(deadline);
                }
            };

            // A message read before the end waits for room in the event
            // queue: hand it over rather than lose it.
            if let Some(wait) = paused.take() {
                wait.await;
            }
            if let Some(req) = close_with {
                // Gone for the rest of the server (indexes, callbacks) now,
                // as the original's close does; the close handshake below
                // is the socket's own business, bounded in time.
                gone(&this.env, &this.client.id).await;
                Box::pin(Self::close(
                    &this.client,
                    &this.env.stats,
                    cfg.shutdown_grace,
                    &mut ws,
                    &mut queue,
                    batch,
                    req,
                ))
                .await;
            }
            this.client.set_state(ClientState::Disconnected);
        }
    }

    /// The socket's side of the loop: writes what was taken off the queue
    /// (when `writing`), and reads the next message (when `reading`).
    fn poll_socket<S>(
        stats: &crate::core::stats::Stats,
        ws: &mut WebSocketStream<FrameWriter<S>>,
        batch: &mut Batch,
        writing: bool,
        reading: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Io>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if writing {
            if let Poll::Ready(r) = Self::poll_write(stats, ws, batch, cx) {
                return Poll::Ready(Io::Written(r));
            }
        }
        if reading {
            if let Poll::Ready(msg) = ws.poll_next_unpin(cx) {
                return Poll::Ready(Io::Read(msg));
            }
        }
        Poll::Pending
    }

    /// Hands `batch` to the socket (up to [`FRAMES_PER_WRITE`] frames per
    /// system call) and then what the socket left pending; ready once the
    /// socket has taken all of it.
    fn poll_write<S>(
        stats: &crate::core::stats::Stats,
        ws: &mut WebSocketStream<FrameWriter<S>>,
        batch: &mut Batch,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WsError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let out = ws.get_mut();
        while !batch.is_empty() {
            let taken = ready!(out.poll_write_frames(cx, batch.chunks()))?;
            stats
                .frames_out
                .fetch_add(taken as u64, std::sync::atomic::Ordering::Relaxed);
            batch.consume(taken);
        }
        ready!(out.poll_drain(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Sends what is still queued, then the close frame, then waits a little
    /// for the peer's reply. Bounded in time: a peer that does not read
    /// cannot keep the task alive; its TCP connection is dropped.
    async fn close<S>(
        client: &Client,
        stats: &crate::core::stats::Stats,
        grace: Duration,
        ws: &mut WebSocketStream<FrameWriter<S>>,
        queue: &mut QueueReader,
        batch: Batch,
        req: CloseRequest,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let frame = CloseFrame {
            code: CloseCode::from(req.code),
            reason: req.reason.into(),
        };
        let _ = tokio::time::timeout(grace, async {
            let mut batch = batch;
            loop {
                if std::future::poll_fn(|cx| Self::poll_write(stats, ws, &mut batch, cx))
                    .await
                    .is_err()
                {
                    return;
                }
                batch = queue.take(FRAMES_PER_WRITE);
                if batch.is_empty() {
                    break;
                }
                seal_batch(client, &mut batch);
            }
            if ws.close(Some(frame)).await.is_err() {
                return;
            }
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }

    fn send_error(&self, message: &str) {
        self.client.offer(&protocol::error_frame(message));
    }

    /// One more inbound frame in the rate window; false when over the limit.
    fn within_rate(&mut self) -> bool {
        let max = self.env.config.max_frames_per_second;
        if max == 0 {
            return true;
        }
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_frames = 0;
        }
        self.window_frames += 1;
        self.window_frames <= max
    }

    fn awaiting_auth(&self) -> bool {
        matches!(
            self.client.state(),
            ClientState::Unauthorized | ClientState::Authenticating
        )
    }

    /// Handles what the socket produced. Takes the message by value so it
    /// is not kept in the loop's future across a wait for the event queue.
    fn on_read(&mut self, msg: Option<Result<Message, WsError>>) -> Next {
        match msg {
            None => Next::Stop,
            Some(Ok(Message::Text(t))) => self.on_text(t.as_str()),
            Some(Ok(Message::Binary(b))) => self.on_text(&String::from_utf8_lossy(&b)),
            Some(Ok(Message::Close(_))) => Next::Continue, // the reply goes out on the next poll
            Some(Ok(_)) => Next::Continue,                 // ping, pong
            Some(Err(e)) => self.on_read_error(e),
        }
    }

    fn on_text(&mut self, text: &str) -> Next {
        let env = self.env.clone();
        self.client.touch(protocol::now_ms());
        bump(&env.stats.messages_in);
        if !self.within_rate() {
            bump(&env.stats.rate_limited);
            env.log.warn(
                "Rate limit exceeded; closing",
                &[
                    ("id", &self.client.id),
                    ("maxFramesPerSecond", &env.config.max_frames_per_second),
                ],
            );
            let (code, reason) = close::RATE_LIMIT;
            return Next::Close(code, reason);
        }
        let frame = match protocol::parse_inbound(text) {
            Ok(f) => f,
            Err(_) => {
                bump(&env.stats.invalid_frames);
                self.send_error(errors::INVALID_FORMAT);
                return Next::Continue;
            }
        };
        let event = match frame.event {
            EventName::Falsy => {
                bump(&env.stats.invalid_frames);
                env.log.debug(
                    "Invalid message payload: missing event",
                    &[("id", &self.client.id)],
                );
                return Next::Continue;
            }
            EventName::Str(s) => Some(s),
            EventName::Other => None,
        };
        match event.as_deref() {
            Some(events::HEARTBEAT) => return Next::Continue,
            Some(events::AUTHENTICATE) => {
                if self.client.state() != ClientState::Unauthorized {
                    self.send_error(errors::ALREADY_AUTHENTICATED);
                    return Next::Continue;
                }
                let max = env.config.max_pending_auth;
                let pending = env
                    .pending_auth
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let guard = PendingAuth(env.clone());
                if max > 0 && pending >= max {
                    drop(guard);
                    bump(&env.stats.auth_busy);
                    env.log.warn(
                        "Too many pending authentications; closing",
                        &[("id", &self.client.id), ("maxPendingAuthentications", &max)],
                    );
                    let (code, reason) = close::AUTH_BUSY;
                    return Next::Close(code, reason);
                }
                self.start_auth(protocol::auth_payload(frame.data).to_string(), guard);
                return Next::Continue;
            }
            _ => {}
        }
        if self.client.state() != ClientState::Authenticated {
            self.send_error(errors::NOT_AUTHENTICATED);
            return Next::Continue;
        }
        match event.as_deref() {
            Some(events::JOIN) => {
                let rooms = protocol::parse_rooms(frame.data, env.config.max_rooms_per_request);
                let recover = match &env.history {
                    Some(_) => history::parse_recover(frame.data, rooms.len()),
                    None => Default::default(),
                };
                self.start_join(rooms, recover);
                Next::Continue
            }
            Some(events::LEAVE) => {
                let rooms = protocol::parse_rooms(frame.data, env.config.max_rooms_per_request);
                if !rooms.is_empty() {
                    let left = env.hub.leave(&self.client.id, &rooms);
                    if let Some(p) = &env.presence {
                        let user = self.client.user_id();
                        for room in &left {
                            p.announce(&env.hub, room, &self.client.id, user.as_deref(), false);
                        }
                    }
                    if !left.is_empty() {
                        env.log.debug(
                            "Left rooms",
                            &[
                                ("id", &self.client.id),
                                ("rooms", &format_args!("{:?}", left)),
                            ],
                        );
                    }
                }
                Next::Continue
            }
            _ => {
                if !env.handlers.wants_messages() {
                    bump(&env.stats.dropped_no_handler);
                    return Next::Continue;
                }
                match env.events.try_emit(AppEvent::Message {
                    client_id: self.client.id.to_string(),
                    user_id: self.client.user_id().map(|u| u.to_string()),
                    frame: text.to_string(),
                }) {
                    None => Next::Continue,
                    Some(wait) => Next::Wait(wait),
                }
            }
        }
    }

    /// A violation of RFC 6455 is answered with the close code the RFC
    /// gives it (`core::violation`), counted by kind; the socket's own end
    /// (reset, EOF) stops quietly.
    fn on_read_error(&self, e: WsError) -> Next {
        let Some(violation) = Violation::of(&e) else {
            self.env
                .log
                .debug("Peer gone", &[("id", &self.client.id), ("error", &e)]);
            return Next::Stop;
        };
        self.env.stats.violations.bump(violation);
        if let WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) = e {
            bump(&self.env.stats.oversized_frames);
            self.env.log.warn(
                "Frame too large",
                &[("id", &self.client.id), ("size", &size), ("max", &max_size)],
            );
        } else {
            self.env.log.debug(
                "Protocol violation",
                &[
                    ("id", &self.client.id),
                    ("reason", &violation.label()),
                    ("error", &e),
                ],
            );
        }
        Next::Close(violation.code(), violation.reason())
    }

    fn start_auth(&mut self, data_json: String, pending: PendingAuth) {
        self.client.set_state(ClientState::Authenticating);
        self.auth_deadline = Some(Instant::now() + self.env.config.auth_timeout * 3);
        let handlers = self.env.handlers.clone();
        let require_encryption = self.env.config.require_encryption;
        let native_encryption = self.env.config.native_encryption;
        let id = self.client.id.clone();
        let fut = async move {
            let authenticated = handlers.authenticate(&id, &data_json).await;
            drop(pending);
            let user_id = match authenticated {
                AuthOutcome::Accepted { user_id } => user_id,
                AuthOutcome::Rejected => return AuthFlow::Rejected,
                AuthOutcome::Failed(e) => return AuthFlow::Error(e),
            };
            if native_encryption {
                let key = serde_json::from_str::<serde_json::Value>(&data_json)
                    .ok()
                    .and_then(|v| {
                        v.get("publicKey")
                            .and_then(|k| k.as_str())
                            .map(str::to_string)
                    });
                return match key.as_deref().map(crate::core::crypto::handshake) {
                    Some(Ok(hs)) => AuthFlow::Ok {
                        user_id,
                        keys: Some((hs.server_public_key, hs.salt)),
                        cipher: Some(Box::new(hs.cipher)),
                    },
                    _ => AuthFlow::HandshakeRejected,
                };
            }
            if !require_encryption {
                return AuthFlow::Ok {
                    user_id,
                    keys: None,
                    cipher: None,
                };
            }
            let Some(handshake) = handlers.handshake(&id, user_id.as_deref(), &data_json) else {
                return AuthFlow::NoHandshakeHandler;
            };
            match handshake.await {
                HandshakeOutcome::Accepted {
                    server_public_key,
                    salt,
                } => AuthFlow::Ok {
                    user_id,
                    keys: Some((server_public_key, salt)),
                    cipher: None,
                },
                HandshakeOutcome::Rejected => AuthFlow::HandshakeRejected,
                HandshakeOutcome::Failed(e) => AuthFlow::Error(e),
            }
        };
        self.auth = Some(fut.boxed());
    }

    /// Applies the outcome of the authentication flow; returns the close to
    /// perform when it failed.
    async fn finish_auth(&mut self, flow: AuthFlow) -> Option<(u16, &'static str)> {
        let env = self.env.clone();
        let id = self.client.id.clone();
        match flow {
            AuthFlow::Ok {
                user_id,
                keys,
                cipher,
            } => {
                let frame_keys = keys.clone();
                let native = cipher.is_some();
                if let Some(c) = cipher {
                    // Before the client is visible as encrypted to any fan-out.
                    let _ = self.client.cipher.set(c);
                }
                if let (Some(_), false, Some(t)) = (&keys, native, &env.transformer) {
                    t.attach(&self.client);
                }
                if !env.hub.authenticate(
                    &self.client,
                    user_id.as_deref(),
                    keys,
                    &env.config.default_rooms,
                ) {
                    return None;
                }
                let frame = protocol::connected_frame(
                    &id,
                    user_id.as_deref(),
                    protocol::now_ms(),
                    frame_keys.as_ref().map(|(k, s)| (k.as_str(), s.as_str())),
                );
                // `connected` is never transformed: it carries the keys the
                // client needs to read what the transformer produces.
                self.client.offer_plain(&frame);
                env.log.info(
                    "Authenticated",
                    &[
                        ("id", &id),
                        ("userId", &user_id.as_deref().unwrap_or("anonymous")),
                        ("encrypted", &frame_keys.is_some()),
                    ],
                );
                env.events
                    .emit(AppEvent::Connected {
                        client_id: id.to_string(),
                        user_id,
                    })
                    .await;
                None
            }
            AuthFlow::Rejected => {
                env.log.info("Authentication rejected", &[("id", &id)]);
                self.send_error(errors::AUTH_FAILED);
                Some(close::AUTH_FAILED)
            }
            AuthFlow::Error(e) => {
                bump(&env.stats.handler_errors);
                env.log
                    .error("Authentication error", &[("id", &id), ("error", &e)]);
                self.send_error(errors::AUTH_ERROR);
                Some(close::AUTH_FAILED)
            }
            AuthFlow::NoHandshakeHandler => {
                env.log.error(
                    "requireEncryption is true but no handshakeFn configured",
                    &[("id", &id)],
                );
                Some(close::ENCRYPTION_REQUIRED)
            }
            AuthFlow::HandshakeRejected => {
                env.log.info("Handshake rejected", &[("id", &id)]);
                self.send_error(errors::HANDSHAKE_FAILED);
                Some(close::ENCRYPTION_REQUIRED)
            }
        }
    }

    fn start_join(
        &mut self,
        rooms: Vec<String>,
        recover: std::collections::HashMap<String, Recover>,
    ) {
        let env = &self.env;
        let id = &self.client.id;
        let requested: Vec<String> = rooms
            .into_iter()
            .filter(|r| protocol::is_joinable_room(r))
            .collect();
        if requested.is_empty() {
            env.log
                .debug("Join rejected: all rooms filtered out", &[("id", &id)]);
            return;
        }
        if self.joins.len() >= env.config.max_pending_joins {
            bump(&env.stats.joins_refused);
            env.log.warn(
                "Join rejected: too many joins awaiting validateRoomFn",
                &[("id", &id)],
            );
            return;
        }
        let user = self.client.user_id();
        match env
            .handlers
            .validate_rooms(id, user.as_deref(), requested.clone())
        {
            None => {
                bump(&env.stats.joins_refused);
                env.log.warn(
                    "Join rejected: no validateRoomFn configured",
                    &[("id", &id), ("rooms", &format_args!("{requested:?}"))],
                );
            }
            Some(fut) => self.joins.push(
                async move {
                    JoinDone {
                        requested,
                        recover,
                        result: fut.await,
                    }
                }
                .boxed(),
            ),
        }
    }

    fn finish_join(&mut self, done: JoinDone) {
        let env = &self.env;
        let id = &self.client.id;
        match done.result {
            Ok(allowed) if allowed.is_empty() => {
                bump(&env.stats.joins_refused);
                env.log.debug(
                    "Join rejected: no rooms allowed",
                    &[
                        ("id", &id),
                        ("rooms", &format_args!("{:?}", done.requested)),
                    ],
                );
            }
            Ok(mut allowed) => {
                if self.client.state() == ClientState::Authenticated {
                    // Own and default rooms do not count against the limit.
                    let fixed = 1 + env.config.default_rooms.len();
                    let current = self.client.details.lock().rooms.len().saturating_sub(fixed);
                    let room_left = env.config.max_rooms_per_client.saturating_sub(current);
                    if allowed.len() > room_left {
                        bump(&env.stats.rooms_limited);
                        env.log.warn(
                            "Room limit reached; rooms not joined",
                            &[
                                ("id", &id),
                                ("maxRoomsPerClient", &env.config.max_rooms_per_client),
                                ("notJoined", &(allowed.len() - room_left)),
                            ],
                        );
                        allowed.truncate(room_left);
                    }
                    // Presence announces only rooms the client was not in.
                    let before = match &env.presence {
                        Some(_) => self.client.details.lock().rooms.clone(),
                        None => Default::default(),
                    };
                    match &env.history {
                        None => {
                            env.hub.join(id, &allowed);
                        }
                        Some(history) => {
                            // History rooms one by one (each answers
                            // `joined`, after any replay); the rest at once.
                            let (kept, plain): (Vec<String>, Vec<String>) =
                                allowed.iter().cloned().partition(|r| history.applies(r));
                            env.hub.join(id, &plain);
                            for room in kept {
                                let recover = done.recover.get(&room).cloned();
                                match history {
                                    Backend::Local(h) => {
                                        h.join(&env.hub, &self.client, &room, recover.as_ref());
                                    }
                                    // Reading Redis is awaited apart, so the
                                    // connection goes on meanwhile.
                                    Backend::Redis(h) => {
                                        tokio::spawn(h.clone().join(
                                            self.client.clone(),
                                            room,
                                            recover,
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    if let Some(p) = &env.presence {
                        let user = self.client.user_id();
                        for room in allowed.iter().filter(|r| !before.contains(r.as_str())) {
                            p.announce(&env.hub, room, id, user.as_deref(), true);
                        }
                    }
                    env.log.debug(
                        "Joined rooms",
                        &[("id", &id), ("rooms", &format_args!("{:?}", allowed))],
                    );
                }
            }
            Err(e) => {
                bump(&env.stats.handler_errors);
                env.log.error(
                    "Failed to join rooms",
                    &[
                        ("id", &id),
                        ("rooms", &format_args!("{:?}", done.requested)),
                        ("error", &e),
                    ],
                );
            }
        }
    }
}
