//! One task per connection: it owns the socket and runs the client's state
//! machine (docs/PROTOCOL.md §2–§5), its timers, and the writes of its queue.
//!
//! Everything that can take long (the application's handlers) runs as a
//! future polled by this same task, so a slow `authenticateFn` or
//! `validateRoomFn` never stops the socket from being read or written, and a
//! socket that cannot be written never holds up anyone else.

use crate::core::client::{Client, ClientState, CloseRequest, Out, Outbox};
use crate::core::handlers::{AppEvent, AuthOutcome, HandshakeOutcome};
use crate::core::outgoing::{Outgoing, FRAMES_PER_WRITE};
use crate::core::protocol::Frame;
use crate::core::protocol::{self, close, errors, events, EventName};
use crate::core::server::Shared;
use crate::core::stats::bump;
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

struct JoinDone {
    requested: Vec<String>,
    result: Result<Vec<String>, String>,
}

/// Runs a connection to its end, then removes the client everywhere and
/// tells the application. A panic inside the connection closes only it.
///
/// The setup runs here, before the returned future exists, and the loop is
/// boxed: that future, held for the connection's whole life, then keeps
/// only what the clean-up needs instead of a second copy of the socket.
pub fn run<S>(
    shared: Arc<Shared>,
    ws: WebSocketStream<Outgoing<S>>,
    remote: String,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let now = protocol::now_ms();
    let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let (client, outbox) = Client::new(
        id.clone(),
        remote,
        now,
        shared.config.backpressure_limit,
        shared.config.close_on_backpressure_limit,
        shared.stats.clone(),
    );
    shared.hub.register(client.clone());
    bump(&shared.stats.connections_total);
    shared.log.info(|| {
        format!(
            "New connection (unauthorized) | id: {id} | remote: {}",
            client.remote
        )
    });
    if shared.is_shutting_down() {
        let (code, reason) = close::SHUTDOWN;
        client.request_close(code, reason);
    }

    let conn = Connection {
        shared: shared.clone(),
        client,
        auth: None,
        auth_deadline: None,
        joins: FuturesUnordered::new(),
        window_start: Instant::now(),
        window_frames: 0,
    };
    let drive = Box::pin(conn.drive(ws, outbox));
    async move {
        if let Err(panic) = AssertUnwindSafe(drive).catch_unwind().await {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            shared.log.error(|| {
                format!("Connection task panicked; closing it | id: {id} | panic: {what}")
            });
        }

        gone(&shared, &id).await;
    }
}

/// Removes the client from every index and tells the application, once
/// (a closing connection does it before its close handshake).
async fn gone(shared: &Shared, id: &str) {
    let Some(user_id) = shared.hub.remove(id) else {
        return;
    };
    shared.log.info(|| {
        format!(
            "Client disconnected | id: {id} | userId: {}",
            user_id.as_deref().unwrap_or("anonymous")
        )
    });
    shared
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
fn seal_batch(client: &Client, batch: &mut [Out]) {
    if let Some(cipher) = client.cipher.get() {
        for out in batch.iter_mut().filter(|o| !o.plain) {
            out.frame = seal(cipher, &out.frame);
            out.plain = true;
        }
    }
}

/// Queues a transport ping without waiting: a socket that cannot take it
/// now (its peer is not reading) is left to `sendTimeout` and the idle
/// check rather than blocking the loop. What tungstenite does not write at
/// once waits in `Outgoing`, which the loop drains like any frame.
fn try_ping<S>(ws: &mut WebSocketStream<Outgoing<S>>, cx: &mut Context<'_>) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if ws.get_ref().pending_len() >= crate::core::outgoing::CONTROL_PENDING_MAX {
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
    shared: Arc<Shared>,
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
struct PendingAuth(Arc<Shared>);

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
    /// they move into, ≈450 bytes per connection. The future is 856 bytes
    /// for a plain TCP socket, 384 of them tungstenite's stream (the write
    /// path's pending buffer included).
    fn drive<S>(
        self,
        ws: WebSocketStream<Outgoing<S>>,
        outbox: Outbox,
    ) -> impl std::future::Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut this = self;
        let mut ws = ws;
        let mut outbox = outbox;
        async move {
            let cfg = this.shared.config.clone();
            // One timer for every deadline (authentication, the idle
            // check's next tick, a stalled write's `sendTimeout`), re-armed
            // only when the earliest changes: a timer per deadline would
            // cost every idle connection about 150 bytes each and more
            // entries in the timer wheel.
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
            let mut batch: Vec<Out> = Vec::new();
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
                    io = std::future::poll_fn(|cx| Self::poll_socket(&this.shared.stats, &mut ws, &mut batch, writing, reading, cx)) => match io {
                        Io::Written(Ok(())) => {}
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
                    taken = std::future::poll_fn(|cx| outbox.poll_batch(cx, FRAMES_PER_WRITE)), if !writing => {
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
                    () = &mut timer => {
                        let now = Instant::now();
                        if now >= auth_until && this.awaiting_auth() {
                            this.shared.log.warn(|| format!("Auth timeout | id: {}", this.client.id));
                            let (code, reason) = close::AUTH_TIMEOUT;
                            break Some(CloseRequest { code, reason: reason.into() });
                        }
                        if writing && !cfg.send_timeout.is_zero() && now >= ws.get_ref().progress_at() + cfg.send_timeout {
                            bump(&this.shared.stats.send_timeouts);
                            this.shared.log.warn(|| format!(
                                "Send timeout: no write progress for {} ms; dropping the connection | id: {}",
                                cfg.send_timeout.as_millis(), this.client.id
                            ));
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

            if let Some(req) = close_with {
                // Gone for the rest of the server (indexes, callbacks) now,
                // as the original's close does; the close handshake below
                // is the socket's own business, bounded in time.
                gone(&this.shared, &this.client.id).await;
                Box::pin(Self::close(
                    &this.client,
                    &this.shared.stats,
                    cfg.shutdown_grace,
                    &mut ws,
                    &mut outbox,
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
        ws: &mut WebSocketStream<Outgoing<S>>,
        batch: &mut Vec<Out>,
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
        ws: &mut WebSocketStream<Outgoing<S>>,
        batch: &mut Vec<Out>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WsError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let out = ws.get_mut();
        while !batch.is_empty() {
            let taken = ready!(out.poll_write_frames(cx, batch))?;
            stats
                .frames_out
                .fetch_add(taken as u64, std::sync::atomic::Ordering::Relaxed);
            batch.drain(..taken);
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
        ws: &mut WebSocketStream<Outgoing<S>>,
        outbox: &mut Outbox,
        batch: Vec<Out>,
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
                batch = outbox.take(FRAMES_PER_WRITE);
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
        let max = self.shared.config.max_frames_per_second;
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
        let shared = self.shared.clone();
        self.client.touch(protocol::now_ms());
        bump(&shared.stats.messages_in);
        if !self.within_rate() {
            bump(&shared.stats.rate_limited);
            shared.log.warn(|| {
                format!(
                    "Rate limit exceeded ({} frames/s); closing | id: {}",
                    shared.config.max_frames_per_second, self.client.id
                )
            });
            let (code, reason) = close::RATE_LIMIT;
            return Next::Close(code, reason);
        }
        let frame = match protocol::parse_inbound(text) {
            Ok(f) => f,
            Err(_) => {
                bump(&shared.stats.invalid_frames);
                self.send_error(errors::INVALID_FORMAT);
                return Next::Continue;
            }
        };
        let event = match frame.event {
            EventName::Falsy => {
                bump(&shared.stats.invalid_frames);
                shared.log.debug(|| {
                    format!(
                        "Invalid message payload | Missing event | id: {}",
                        self.client.id
                    )
                });
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
                let max = shared.config.max_pending_auth;
                let pending = shared
                    .pending_auth
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let guard = PendingAuth(shared.clone());
                if max > 0 && pending >= max {
                    drop(guard);
                    bump(&shared.stats.auth_busy);
                    shared.log.warn(|| {
                        format!(
                            "Too many pending authentications ({max}); closing | id: {}",
                            self.client.id
                        )
                    });
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
                let rooms = protocol::parse_rooms(frame.data, shared.config.max_rooms_per_request);
                self.start_join(rooms);
                Next::Continue
            }
            Some(events::LEAVE) => {
                let rooms = protocol::parse_rooms(frame.data, shared.config.max_rooms_per_request);
                if !rooms.is_empty() {
                    let left = shared.hub.leave(&self.client.id, &rooms);
                    if !left.is_empty() {
                        shared.log.debug(|| {
                            format!("Left rooms | id: {} | rooms: {left:?}", self.client.id)
                        });
                    }
                }
                Next::Continue
            }
            _ => {
                if !shared.handlers.wants_messages() {
                    bump(&shared.stats.dropped_no_handler);
                    return Next::Continue;
                }
                match shared.try_emit(AppEvent::Message {
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

    fn on_read_error(&self, e: WsError) -> Next {
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                bump(&self.shared.stats.oversized_frames);
                self.shared.log.warn(|| {
                    format!(
                        "Frame too large | id: {} | size: {size} | max: {max_size}",
                        self.client.id
                    )
                });
                let (code, reason) = close::TOO_BIG;
                Next::Close(code, reason)
            }
            WsError::ConnectionClosed | WsError::AlreadyClosed => Next::Stop,
            // A peer that vanished (reset, process gone) sent nothing invalid.
            WsError::Io(_)
            | WsError::Protocol(
                tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ) => {
                self.shared
                    .log
                    .debug(|| format!("Peer gone | id: {}", self.client.id));
                Next::Stop
            }
            other => {
                bump(&self.shared.stats.invalid_frames);
                self.shared
                    .log
                    .debug(|| format!("Socket error | id: {} | error: {other}", self.client.id));
                Next::Stop
            }
        }
    }

    fn start_auth(&mut self, data_json: String, pending: PendingAuth) {
        self.client.set_state(ClientState::Authenticating);
        self.auth_deadline = Some(Instant::now() + self.shared.config.auth_timeout * 3);
        let handlers = self.shared.handlers.clone();
        let require_encryption = self.shared.config.require_encryption;
        let native_encryption = self.shared.config.native_encryption;
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
        let shared = self.shared.clone();
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
                if keys.is_some() && !native && shared.handlers.has_transformer() {
                    crate::core::transform::attach(&shared, &self.client);
                }
                if !shared.hub.authenticate(
                    &self.client,
                    user_id.as_deref(),
                    keys,
                    &shared.config.default_rooms,
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
                shared.log.info(|| {
                    format!(
                        "Authenticated | id: {id} | userId: {} | encrypted: {}",
                        user_id.as_deref().unwrap_or("anonymous"),
                        frame_keys.is_some()
                    )
                });
                shared
                    .emit(AppEvent::Connected {
                        client_id: id.to_string(),
                        user_id,
                    })
                    .await;
                None
            }
            AuthFlow::Rejected => {
                shared
                    .log
                    .info(|| format!("Authentication rejected | id: {id}"));
                self.send_error(errors::AUTH_FAILED);
                Some(close::AUTH_FAILED)
            }
            AuthFlow::Error(e) => {
                bump(&shared.stats.handler_errors);
                shared
                    .log
                    .error(|| format!("Authentication error | id: {id} | error: {e}"));
                self.send_error(errors::AUTH_ERROR);
                Some(close::AUTH_FAILED)
            }
            AuthFlow::NoHandshakeHandler => {
                shared.log.error(|| {
                    format!("requireEncryption is true but no handshakeFn configured | id: {id}")
                });
                Some(close::ENCRYPTION_REQUIRED)
            }
            AuthFlow::HandshakeRejected => {
                shared.log.info(|| format!("Handshake rejected | id: {id}"));
                self.send_error(errors::HANDSHAKE_FAILED);
                Some(close::ENCRYPTION_REQUIRED)
            }
        }
    }

    fn start_join(&mut self, rooms: Vec<String>) {
        let shared = &self.shared;
        let id = &self.client.id;
        let requested: Vec<String> = rooms
            .into_iter()
            .filter(|r| protocol::is_joinable_room(r))
            .collect();
        if requested.is_empty() {
            shared
                .log
                .debug(|| format!("Join rejected | id: {id} | reason: all rooms filtered out"));
            return;
        }
        if self.joins.len() >= shared.config.max_pending_joins {
            bump(&shared.stats.joins_refused);
            shared.log.warn(|| {
                format!("Join rejected | id: {id} | reason: too many joins awaiting validateRoomFn")
            });
            return;
        }
        let user = self.client.user_id();
        match shared
            .handlers
            .validate_rooms(id, user.as_deref(), requested.clone())
        {
            None => {
                bump(&shared.stats.joins_refused);
                shared.log.warn(|| {
                    format!("Join rejected | id: {id} | rooms: {requested:?} | reason: no validateRoomFn configured")
                });
            }
            Some(fut) => self.joins.push(
                async move {
                    JoinDone {
                        requested,
                        result: fut.await,
                    }
                }
                .boxed(),
            ),
        }
    }

    fn finish_join(&mut self, done: JoinDone) {
        let shared = &self.shared;
        let id = &self.client.id;
        match done.result {
            Ok(allowed) if allowed.is_empty() => {
                bump(&shared.stats.joins_refused);
                shared.log.debug(|| {
                    format!(
                        "Join rejected | id: {id} | rooms: {:?} | reason: no rooms allowed",
                        done.requested
                    )
                });
            }
            Ok(mut allowed) => {
                if self.client.state() == ClientState::Authenticated {
                    // Own and default rooms do not count against the limit.
                    let fixed = 1 + shared.config.default_rooms.len();
                    let current = self.client.details.lock().rooms.len().saturating_sub(fixed);
                    let room_left = shared.config.max_rooms_per_client.saturating_sub(current);
                    if allowed.len() > room_left {
                        bump(&shared.stats.rooms_limited);
                        shared.log.warn(|| {
                            format!(
                                "Room limit ({}) reached; {} room(s) not joined | id: {id}",
                                shared.config.max_rooms_per_client,
                                allowed.len() - room_left
                            )
                        });
                        allowed.truncate(room_left);
                    }
                    shared.hub.join(id, &allowed);
                    shared
                        .log
                        .debug(|| format!("Joined rooms | id: {id} | rooms: {allowed:?}"));
                }
            }
            Err(e) => {
                bump(&shared.stats.handler_errors);
                shared.log.error(|| {
                    format!(
                        "Failed to join rooms | id: {id} | rooms: {:?} | error: {e}",
                        done.requested
                    )
                });
            }
        }
    }
}
