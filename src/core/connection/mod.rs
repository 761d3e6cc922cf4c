//! One task per connection: it owns the socket and runs the client's state
//! machine (docs/PROTOCOL.md §2–§5), its timers, and the writes of its queue.
//! This file is the task and its loop; what a client sends (`inbound`), the
//! authentication flow (`auth`) and joins (`rooms`) are beside it.
//!
//! Everything that can take long (the application's handlers) runs as a
//! future polled by this same task, so a slow `authenticateFn` or
//! `validateRoomFn` never stops the socket from being read or written, and a
//! socket that cannot be written never holds up anyone else.

mod auth;
mod inbound;
mod rooms;
mod state;

pub use state::Env;
use state::{Connection, Next};

use crate::core::client::{Batch, Client, ClientState, CloseRequest, QueueReader};
use crate::core::frame_writer::{FrameWriter, TryWrite, FRAMES_PER_WRITE};
use crate::core::handlers::AppEvent;
use crate::core::protocol::Frame;
use crate::core::protocol::{self, close};
use crate::core::stats::bump;
use crate::core::ws_socket::WsSocket;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

fn seal(cipher: &crate::core::crypto::ClientCipher, frame: &Frame) -> Frame {
    match cipher.seal(frame.as_bytes()) {
        Some(sealed) => sealed.into(),
        // Sealing only fails if the system RNG does; never send plaintext.
        None => protocol::error_frame("Encryption failed"),
    }
}

/// Runs a connection to its end, then removes the client everywhere and
/// tells the application. A panic inside the connection closes only it.
///
/// The setup runs here, before the returned future exists, and the loop is
/// boxed: that future, held for the connection's whole life, then keeps
/// only what the clean-up needs instead of a second copy of the socket.
pub fn run<S>(
    env: Arc<Env>,
    ws: WsSocket<FrameWriter<S>>,
    remote: String,
    deflate: bool,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + TryWrite + Unpin + Send + 'static,
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
    // With built-in encryption every frame is sealed: never compressed
    // (and so never counted compressed against the backpressure limit).
    if let (true, false, Some(d)) = (deflate, env.config.native_encryption, &env.deflate) {
        client.set_deflate(d.clone());
    }
    let mut ws = ws;
    if env.config.direct_writes {
        ws.get_mut().share(client.clone());
    }
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
        joins: None,
        window_end: Instant::now() + Duration::from_secs(1),
        window_frames: 0,
    };
    let serial = conn.client.serial;
    let drive = Box::pin(conn.drive(ws, queue));
    async move {
        if let Err(panic) = AssertUnwindSafe(drive).catch_unwind().await {
            let what = crate::core::log::panic_text(&*panic);
            env.log.error(
                "Connection task panicked; closing it",
                &[("id", &id), ("panic", &what)],
            );
        }

        // Boxed: the connection's task holds its future for the
        // connection's whole life, and this await's state (a room list, the
        // disconnect event's send) would double the task's size for every
        // idle connection.
        Box::pin(gone(&env, &id, serial)).await;
    }
}

/// Removes the client from every index and tells the application, once
/// (a closing connection does it before its close handshake).
async fn gone(env: &Env, id: &str, serial: u64) {
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
            client_id: Arc::from(id),
            user_id,
            serial,
        })
        .await;
}

/// How many turns of the loop that each wrote two batches whole (a queue
/// refilled as fast as the socket drains it) the task takes before it
/// yields (see the loop).
const BUSY_TURNS: u8 = 16;

/// What the socket side of the loop produced.
enum Io {
    /// `Ok`: two batches were written whole in one poll; the loop turns
    /// (the close request and the timer are looked at first). `Err`: the
    /// socket failed.
    Written(Result<(), WsError>),
    /// Frames were taken off the queue and the socket did not take them
    /// all (it is full, or the task's budget is spent): the loop turns to
    /// arm `sendTimeout` for them.
    Stalled,
    Read(Option<Result<Message, WsError>>),
}

/// The frames on their way to the socket.
struct Outbound {
    queue: QueueReader,
    /// Frames taken off the queue that the socket has not taken yet.
    batch: Batch,
    /// Set by each write: the socket is read before the queue is taken
    /// again (see [`Outbound::poll_socket`]).
    read_first: bool,
    /// The socket may have something to read: its last read returned a
    /// message (more may be buffered), or it has not been read yet. Once a
    /// read finds nothing, the socket is read again only when its read side
    /// wakes the task (`Client::take_read_woken`).
    readable: bool,
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
fn try_ping<S>(ws: &mut WsSocket<FrameWriter<S>>, cx: &mut Context<'_>) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + TryWrite + Unpin,
{
    if ws.get_ref().pending_len() >= crate::core::frame_writer::CONTROL_PENDING_MAX {
        return Ok(());
    }
    match ws.poll_ready(cx) {
        Poll::Ready(r) => r?,
        Poll::Pending => return Ok(()),
    }
    ws.start_send(Message::Ping(Default::default()))?;
    match ws.poll_flush(cx) {
        Poll::Ready(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

impl Outbound {
    /// Frames taken off the queue, or bytes framed, that the socket has not
    /// taken yet.
    fn writing<S>(&self, ws: &WsSocket<FrameWriter<S>>) -> bool
    where
        S: AsyncRead + AsyncWrite + TryWrite + Unpin,
    {
        !self.batch.is_empty() || ws.get_ref().has_pending()
    }

    /// The socket's side of the loop: takes the queued frames when nothing
    /// is being written, writes them, and reads the next message (when
    /// `reading`). Taking and writing in one poll writes a reply in the turn
    /// that found it queued, rather than one turn of the loop later. The
    /// caller registered the task's waker earlier in the same poll
    /// (`Client::poll_close`), so a frame queued after `take` wakes it.
    fn poll_socket<S>(
        &mut self,
        stats: &crate::core::stats::Stats,
        client: &Arc<Client>,
        ws: &mut WsSocket<FrameWriter<S>>,
        reading: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Io>
    where
        S: AsyncRead + AsyncWrite + TryWrite + Unpin,
    {
        let deflate = client.deflate_out();
        // The socket back from direct writes, with what one left unwritten.
        ws.get_mut().shut();
        // Looked at on every poll, not once per turn of the loop: a batch
        // taken here and left half-written must be written on the next.
        if self.writing(ws) {
            // A write under way: finish it, reading meanwhile.
            match Connection::poll_write(stats, deflate, ws, &mut self.batch, cx) {
                Poll::Ready(Ok(())) => {
                    // Its storage goes, rather than stay in an idle
                    // connection.
                    self.batch = Batch::default();
                    // The socket took a write it had refused: read it once.
                    // A reply tungstenite makes itself (a pong, the close
                    // handshake's answer) is refused while this much is
                    // pending, stays in tungstenite's buffer, and is
                    // flushed only by a later read; the socket's read side
                    // may have nothing new to wake the task with.
                    self.readable = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Io::Written(Err(e))),
                // The end of a direct write, taken over: a wait the loop
                // has not seen, whose `sendTimeout` it must arm.
                Poll::Pending if ws.get_mut().took_over() => return Poll::Ready(Io::Stalled),
                Poll::Pending => return self.poll_read(reading, client, ws).map(Io::Read),
            }
        }
        // Nothing being written. Two rounds at most: a write that empties
        // the queue (the usual case) ends in the same poll, without a turn
        // of the loop to find nothing more; a queue refilled as fast as the
        // socket drains it lets the loop turn and look at its close request
        // and its timer.
        for _ in 0..2 {
            // After a write the socket is read before the queue is taken
            // again: a queue refilled as fast as the socket drains it must
            // not keep the peer's frames (its messages, pongs, close)
            // unread. Otherwise the queue goes first, so that a reply is not
            // held up by a read that finds nothing. Either way the socket is
            // read once per round.
            let read_first = reading && std::mem::take(&mut self.read_first);
            if let Poll::Ready(msg) = self.poll_read(read_first, client, ws) {
                return Poll::Ready(Io::Read(msg));
            }
            // Nothing of ours is pending: an empty queue opens the socket to
            // direct writes until our next write or this task's next poll.
            let taken = self
                .queue
                .take_or_open(FRAMES_PER_WRITE, ws.get_ref().shared_fd());
            if taken.is_empty() {
                return self
                    .poll_read(reading && !read_first, client, ws)
                    .map(Io::Read);
            }
            self.batch = taken;
            seal_batch(client, &mut self.batch);
            // The wait for the socket, if any, starts now.
            ws.get_mut().mark_progress();
            self.read_first = true;
            match Connection::poll_write(stats, deflate, ws, &mut self.batch, cx) {
                Poll::Ready(Ok(())) => self.batch = Batch::default(),
                Poll::Ready(Err(e)) => return Poll::Ready(Io::Written(Err(e))),
                Poll::Pending => return Poll::Ready(Io::Stalled),
            }
        }
        Poll::Ready(Io::Written(Ok(())))
    }

    /// Reads the next message if asked (`read`) and the socket may have one
    /// (`readable`, or its read side woke the task). The read registers the
    /// client's own waker (`impl Wake for Client`), which marks it before
    /// waking the task; the mark is cleared before the read, so readiness
    /// that comes during it is not lost.
    fn poll_read<S>(
        &mut self,
        read: bool,
        client: &Arc<Client>,
        ws: &mut WsSocket<FrameWriter<S>>,
    ) -> Poll<Option<Result<Message, WsError>>>
    where
        S: AsyncRead + AsyncWrite + TryWrite + Unpin,
    {
        if !read || (!client.take_read_woken() && !self.readable) {
            return Poll::Pending;
        }
        let waker = std::task::Waker::from(client.clone());
        let r = ws.poll_next_unpin(&mut Context::from_waker(&waker));
        self.readable = r.is_ready();
        r
    }
}

impl Connection {
    /// The connection's loop. A plain function returning an `async` block
    /// rather than an `async fn`: an `async fn` keeps its arguments (the
    /// socket, this struct) in its future a second time besides the locals
    /// they move into, and every idle connection pays for that future's
    /// size (docs/PERFORMANCE.md has the figures).
    fn drive<S>(
        self,
        ws: WsSocket<FrameWriter<S>>,
        queue: QueueReader,
    ) -> impl std::future::Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + TryWrite + Unpin + Send + 'static,
    {
        let mut this = self;
        let mut ws = ws;
        let mut out = Outbound {
            queue,
            batch: Batch::default(),
            read_first: false,
            readable: true,
        };
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
            // Whether the timer holds this task's waker (it was polled, and
            // returned pending, since its last reset). Until it elapses it
            // need not be polled again: the loop turns several times per
            // message, and each poll of a `Sleep` is a registration. This
            // holds because the loop is always polled with its own task's
            // waker (it runs as the task's whole future, not inside a
            // combinator that would poll it with wakers of its own).
            let mut timer_waits = false;
            let mut heard_since_tick = false;
            let mut busy_turns = 0u8;
            let mut quiet_ticks = 0u8;
            // Set while the event queue is full: reads pause until it has room.
            let mut paused: Option<BoxFuture<'static, ()>> = None;

            let close_with: Option<CloseRequest> = loop {
                // Writing is one branch among the others, never awaited
                // inside one: a peer that stops reading must not keep
                // close requests, timers or shutdown from being seen.
                let reading = paused.is_none();
                // What a branch leaves to await after the `select!`: awaited
                // inside a branch, the select's output (100 bytes) would be
                // held across that await, and every idle connection's loop
                // would be that much larger.
                let mut ping = false;
                let mut busy = false;
                let mut finishing = None;
                tokio::select! {
                    biased;
                    req = std::future::poll_fn(|cx| this.client.poll_close(cx)) => break Some(req),
                    // Second: however busy the socket, deadlines are seen.
                    // Polled outside the task's budget: a poll refused for
                    // budget would register nothing, and `timer_waits`
                    // would then wait forever.
                    // Judged on every poll (a `select!` guard is judged once,
                    // when the loop turns: a timer that elapses while the
                    // select waits would go unseen).
                    () = std::future::poll_fn(|cx| {
                        if timer_waits && !timer.is_elapsed() {
                            return Poll::Pending;
                        }
                        let r = std::future::Future::poll(Pin::new(&mut tokio::task::unconstrained(timer.as_mut())), cx);
                        timer_waits = r.is_pending();
                        r
                    }) => {
                        timer_waits = false;
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
                        // Judged now, not when the loop turned: a stalled
                        // write can finish inside a poll that then waits.
                        if out.writing(&ws) && !cfg.send_timeout.is_zero() && now >= ws.get_ref().progress_at() + cfg.send_timeout {
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
                                ping = cfg.send_pings;
                            }
                        }
                    }
                    // Third: the socket, and the queue when nothing is being
                    // written (`poll_close`, polled first, registered the
                    // task for a frame queued meanwhile).
                    io = std::future::poll_fn(|cx| out.poll_socket(&this.env.stats, &this.client, &mut ws, reading, cx)) => match io {
                        Io::Written(Ok(())) => busy = true,
                        Io::Written(Err(_)) => break None,
                        Io::Stalled => {}
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
                    () = async { paused.as_mut().expect("guarded").await }, if !reading => {
                        paused = None;
                    }
                    flow = async { this.auth.as_mut().expect("guarded").await }, if this.auth.is_some() => {
                        this.auth = None;
                        // Boxed, like every once-per-connection await here: the
                        // loop's future lives as long as the connection, so its
                        // size is paid by every idle socket.
                        finishing = Some(Box::pin(this.finish_auth(flow)));
                    }
                    Some(done) = std::future::poll_fn(|cx| this.joins.as_mut().expect("guarded").poll_next_unpin(cx)), if this.joins.is_some() => {
                        if this.joins.as_ref().is_some_and(|j| j.is_empty()) {
                            this.joins = None;
                        }
                        this.finish_join(done);
                    }
                }
                // Moved out whole (`{ .. }`), so its borrow of the connection
                // ends here.
                if let Some(finishing) = { finishing } {
                    if let Some((code, reason)) = finishing.await {
                        break Some(CloseRequest {
                            code,
                            reason: reason.into(),
                        });
                    }
                }
                // A queue refilled as fast as the socket drains it: the task
                // yields after `BUSY_TURNS` such turns (counted over its
                // life, not in a row), sooner than its budget would make it
                // (64 turns of two writes), so the other sockets and timers
                // of its thread wait less behind it.
                if busy {
                    busy_turns += 1;
                    if busy_turns == BUSY_TURNS {
                        busy_turns = 0;
                        tokio::task::yield_now().await;
                    }
                }
                if ping
                    && std::future::poll_fn(|cx| Poll::Ready(try_ping(&mut ws, cx)))
                        .await
                        .is_err()
                {
                    break None;
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
                if !cfg.send_timeout.is_zero() && out.writing(&ws) {
                    deadline = deadline.min(ws.get_ref().progress_at() + cfg.send_timeout);
                }
                if deadline != armed {
                    armed = deadline;
                    timer.as_mut().reset(deadline);
                    timer_waits = false;
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
                // is the socket's own business, bounded in time. Boxed, as
                // in `run`: the loop's future is held by every idle socket.
                Box::pin(gone(&this.env, &this.client.id, this.client.serial)).await;
                Box::pin(Self::close(
                    &this.client,
                    &this.env.stats,
                    this.client.deflate_out(),
                    cfg.shutdown_grace,
                    &mut ws,
                    &mut out.queue,
                    out.batch,
                    req,
                ))
                .await;
            }
            this.client.set_state(ClientState::Disconnected);
        }
    }

    /// Hands `batch` to the socket (up to [`FRAMES_PER_WRITE`] frames per
    /// system call) and then what the socket left pending; ready once the
    /// socket has taken all of it.
    fn poll_write<S>(
        stats: &crate::core::stats::Stats,
        deflate: Option<&crate::core::deflate::Deflate>,
        ws: &mut WsSocket<FrameWriter<S>>,
        batch: &mut Batch,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WsError>>
    where
        S: AsyncRead + AsyncWrite + TryWrite + Unpin,
    {
        let out = ws.get_mut();
        while !batch.is_empty() {
            let taken = ready!(out.poll_write_frames(cx, batch.chunks(deflate)))?;
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
    #[allow(clippy::too_many_arguments)]
    async fn close<S>(
        client: &Client,
        stats: &crate::core::stats::Stats,
        deflate: Option<&crate::core::deflate::Deflate>,
        grace: Duration,
        ws: &mut WsSocket<FrameWriter<S>>,
        queue: &mut QueueReader,
        batch: Batch,
        req: CloseRequest,
    ) where
        S: AsyncRead + AsyncWrite + TryWrite + Unpin,
    {
        let frame = CloseFrame {
            code: CloseCode::from(req.code),
            reason: req.reason.into(),
        };
        let _ = tokio::time::timeout(grace, async {
            let mut batch = batch;
            loop {
                if std::future::poll_fn(|cx| Self::poll_write(stats, deflate, ws, &mut batch, cx))
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

    fn awaiting_auth(&self) -> bool {
        matches!(
            self.client.state(),
            ClientState::Unauthorized | ClientState::Authenticating
        )
    }
}
