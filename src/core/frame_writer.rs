//! The socket under tungstenite, with a write path of its own for the
//! frames the server sends.
//!
//! Through tungstenite, every outgoing frame goes through its framing code
//! and write buffer one by one: in a fan-out burst that bookkeeping was
//! about an eighth of the server's CPU. Here a batch of text frames goes to
//! the socket with one write: a frame alone from its own bytes (a `Frame`
//! is framed when it is made), several small ones joined in a buffer per
//! thread (none is kept per socket), large ones and runs as a vectored
//! write of the shared bytes themselves. Only what the socket does not take
//! is kept, in `pending`, which is written before anything else
//! (tungstenite's own writes included), so frames never interleave.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Frames per write (a vectored one takes two slices each; the system's
/// limit is 1024).
pub const FRAMES_PER_WRITE: usize = 128;

/// Up to this many bytes of frames are joined into one buffer before they
/// are written; larger batches go as slices of the payloads themselves.
const JOIN_MAX: usize = 64 * 1024;

thread_local! {
    static JOINED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bytes tungstenite's own writes may leave pending before they wait.
pub const CONTROL_PENDING_MAX: usize = 64 * 1024;

pub struct FrameWriter<S> {
    inner: S,
    /// Bytes of frames already taken that the socket has not accepted yet.
    pending: Vec<u8>,
    /// How much of `pending` it has accepted.
    at: usize,
    /// When the socket last accepted bytes, or when the current wait for
    /// it began: a write stalled longer than `sendTimeout` since then ends
    /// the connection.
    progress_at: Instant,
    /// Progress (or a new wait) not yet timed: the clock is read when a
    /// write to the socket is refused (`Pending`: the socket is full, or
    /// the task's budget is spent, which only moves the wait's start
    /// later), so while a write is
    /// stalled `progress_at` is exact to the poll. Most writes complete at
    /// once and never read it; reading it on each cost ≈ 1 % of a steady
    /// fan-out's CPU.
    progressed: bool,
    /// Set when others may write to the socket between this writer's
    /// writes (`share`).
    shared: Option<Arc<dyn SocketShare>>,
    /// `pending` holds what a direct write left, and the connection has
    /// not been told (`took_over`); cleared once `pending` is written.
    took_over: bool,
}

/// The first byte of a whole text frame.
pub const TEXT: u8 = 0x81;
/// The first byte of a whole binary frame.
pub const BINARY: u8 = 0x82;
/// RSV1 on a message's first frame: its payload is compressed (RFC 7692).
pub const COMPRESSED: u8 = 0x40;

/// The header of an unmasked, unfragmented server frame of `len` bytes
/// whose first byte is `head` (RFC 6455 §5.2), and how many of its bytes
/// are used.
pub fn frame_header(head: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = head;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A stream's write, tried at once where it can be: for a TCP socket,
/// tokio's `try_write`, which skips the readiness registration every
/// `poll_write` goes through (≈ 40 instructions net of the ≈ 1 700 a
/// fan-out's delivery costs). Only a write the socket refuses then goes through
/// `poll_write`, to wait. The default is `poll_write` itself (TLS,
/// in-memory streams).
pub trait TryWrite: AsyncWrite + Unpin {
    fn poll_write_now(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, buf)
    }

    fn poll_write_vectored_now(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write_vectored(cx, slices)
    }

    /// The descriptor a fan-out may write whole frames to while the
    /// connection task has nothing to write (see [`SocketShare`]): plain
    /// TCP on Linux only.
    fn direct_fd(&self) -> Option<i32> {
        None
    }
}

/// Whoever may write to the socket while the connection task lets it
/// (`Client`'s direct writes, `docs/PERFORMANCE.md`, "Direct writes").
/// Every write of this writer shuts that door first, and takes over what
/// such a write left half-done, so frames never interleave.
pub trait SocketShare: Send + Sync {
    /// Stops writes by anyone but the connection task; returns the end of a
    /// frame the socket took only part of, to be written before anything
    /// else.
    fn shut(&self) -> Option<Box<[u8]>>;
}

/// `write` tried at once, under the task's budget as tokio's own writes
/// are: a write that succeeds takes a unit of it, so a task whose writes
/// all succeed at once (replies to a client's pipelined frames, pongs)
/// still yields its thread when the budget is spent. `None`: the socket is
/// full, and nothing was taken from the budget.
fn try_first(
    cx: &mut Context<'_>,
    write: impl FnOnce() -> io::Result<usize>,
) -> Poll<Option<io::Result<usize>>> {
    let budget = ready!(tokio::task::coop::poll_proceed(cx));
    match write() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(None),
        done => {
            budget.made_progress();
            Poll::Ready(Some(done))
        }
    }
}

impl TryWrite for tokio::net::TcpStream {
    fn poll_write_now(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match ready!(try_first(cx, || self.try_write(buf))) {
            Some(done) => Poll::Ready(done),
            None => Pin::new(self).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored_now(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match ready!(try_first(cx, || self.try_write_vectored(slices))) {
            Some(done) => Poll::Ready(done),
            None => Pin::new(self).poll_write_vectored(cx, slices),
        }
    }

    #[cfg(target_os = "linux")]
    fn direct_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        Some(self.as_raw_fd())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TryWrite for tokio_rustls::server::TlsStream<S> {}

impl TryWrite for tokio::io::DuplexStream {}

impl<S: AsyncWrite + Unpin + TryWrite> FrameWriter<S> {
    pub fn new(inner: S) -> Self {
        FrameWriter {
            inner,
            pending: Vec::new(),
            at: 0,
            progress_at: Instant::now(),
            progressed: false,
            shared: None,
            took_over: false,
        }
    }

    /// Lets `with` write whole frames to the socket while this writer has
    /// nothing pending and has not written since it handed out
    /// [`Self::shared_fd`]; a no-op for a stream without a descriptor.
    pub fn share(&mut self, with: Arc<dyn SocketShare>) {
        if self.inner.direct_fd().is_some() {
            self.shared = Some(with);
        }
    }

    /// The descriptor others may write to now: shared, and nothing of this
    /// writer's pending.
    pub fn shared_fd(&self) -> Option<i32> {
        match &self.shared {
            Some(_) if !self.has_pending() => self.inner.direct_fd(),
            _ => None,
        }
    }

    /// Takes the socket back before this writer writes: from then on only
    /// it writes, behind whatever a direct write left unwritten.
    pub fn shut(&mut self) {
        let Some(rest) = self.shared.as_ref().and_then(|s| s.shut()) else {
            return;
        };
        // Nothing of ours was pending when the socket was shared, and we
        // have not written since.
        debug_assert!(!self.has_pending());
        self.pending.clear();
        self.at = 0;
        self.pending.extend_from_slice(&rest);
        // A new wait for the socket, timed once it refuses (`note_progress`).
        self.progressed = true;
        self.took_over = true;
    }

    /// Whether pending bytes were taken over from a direct write since this
    /// was last asked: a write the connection did not start, whose
    /// `sendTimeout` it has yet to arm.
    pub fn took_over(&mut self) -> bool {
        std::mem::take(&mut self.took_over)
    }

    /// Bytes taken from the caller that the socket has not accepted yet.
    pub fn pending_len(&self) -> usize {
        self.pending.len() - self.at
    }

    pub fn has_pending(&self) -> bool {
        self.at < self.pending.len()
    }

    /// While a write is stalled: when the socket last took bytes, or when
    /// the wait began (timed by the poll that found the socket full).
    pub fn progress_at(&self) -> Instant {
        self.progress_at
    }

    /// The outcome of one write to the socket. Any byte it took is
    /// progress: `sendTimeout` counts from the last (the one place that
    /// rule is written), timed once the socket refuses more.
    fn note_progress(&mut self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &written {
            Poll::Ready(Ok(n)) if *n > 0 => self.progressed = true,
            Poll::Pending if std::mem::take(&mut self.progressed) => {
                self.progress_at = Instant::now();
            }
            _ => {}
        }
        written
    }

    /// A new wait for the socket starts now (nothing was pending).
    pub fn mark_progress(&mut self) {
        if !self.has_pending() {
            self.progressed = true;
        }
    }

    /// Writes to the socket, noting any progress: tried at once, and
    /// polled (to wait for the socket) only if that found it full
    /// ([`TryWrite`]).
    fn poll_inner(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = self.inner.poll_write_now(cx, buf);
        self.note_progress(written)
    }

    fn poll_inner_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = self.inner.poll_write_vectored_now(cx, slices);
        self.note_progress(written)
    }

    /// Writes what is pending; ready once nothing is.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut();
        while self.at < self.pending.len() {
            let written = Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.at..]);
            let n = ready!(self.note_progress(written))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.at += n;
        }
        // A burst to a slow reader should not stay allocated for the
        // socket's whole life.
        if self.pending.capacity() > 16 * 1024 {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
        self.at = 0;
        // Whatever was taken over is written: nothing left to tell.
        self.took_over = false;
        Poll::Ready(Ok(()))
    }

    /// Writes up to [`FRAMES_PER_WRITE`] chunks of frames with one write,
    /// once nothing is pending; ready with how many frames were taken
    /// (their unwritten part, if any, is now pending).
    pub fn poll_write_frames<'a, I>(
        &mut self,
        cx: &mut Context<'_>,
        chunks: I,
    ) -> Poll<io::Result<usize>>
    where
        I: Iterator<Item = Chunk<'a>> + Clone,
    {
        ready!(self.poll_drain(cx))?;
        let chunks = chunks.take(FRAMES_PER_WRITE);
        // The usual batch, a reply or a publication alone, framed already:
        // one plain write of its bytes.
        let mut rest = chunks.clone();
        if let (Some(Chunk::Framed { bytes, frames }), None) = (rest.next(), rest.next()) {
            let written = ready!(self.poll_inner(cx, bytes))?;
            self.pending.extend_from_slice(&bytes[written..]);
            return Poll::Ready(Ok(frames));
        }
        let (mut count, mut singles, mut bytes, mut frames) = (0, 0, 0, 0);
        for c in chunks.clone() {
            count += 1;
            frames += c.frames();
            bytes += c.len();
            singles += (c.frames() == 1) as usize;
        }
        // Single frames among others are joined (runs with them, if the
        // whole is small); otherwise frames framed already go as they are,
        // without a copy.
        let written = if singles > 0 && bytes <= JOIN_MAX {
            self.write_joined(cx, chunks)
        } else if count <= 4 {
            // Slices on the stack, sized for a few large frames too.
            self.write_vectored::<4, 8>(cx, chunks)
        } else {
            self.write_vectored::<FRAMES_PER_WRITE, { 2 * FRAMES_PER_WRITE }>(cx, chunks)
        };
        ready!(written)?;
        Poll::Ready(Ok(frames))
    }

    /// Small frames are copied into one buffer (per thread, not per
    /// socket) and written as one slice: the kernel's per-slice cost for a
    /// 2-byte header and a 100-byte payload is several times that copy.
    fn write_joined<'a>(
        &mut self,
        cx: &mut Context<'_>,
        chunks: impl Iterator<Item = Chunk<'a>>,
    ) -> Poll<io::Result<()>> {
        JOINED.with(|joined| {
            let mut buf = joined.borrow_mut();
            buf.clear();
            for c in chunks {
                c.append_to(&mut buf);
            }
            let written = ready!(self.poll_inner(cx, &buf))?;
            self.pending.extend_from_slice(&buf[written..]);
            Poll::Ready(Ok(()))
        })
    }

    /// `chunks` holds at most `N` chunks.
    fn write_vectored<'a, const N: usize, const SLICES: usize>(
        &mut self,
        cx: &mut Context<'_>,
        chunks: impl Iterator<Item = Chunk<'a>> + Clone,
    ) -> Poll<io::Result<()>> {
        let mut headers = [([0u8; 10], 0usize); N];
        for (h, c) in headers.iter_mut().zip(chunks.clone()) {
            if let Chunk::One { head, payload } = c {
                *h = frame_header(head, payload.len());
            }
        }
        let mut slices = [IoSlice::new(&[]); SLICES];
        let (mut used, mut total) = (0, 0);
        for (h, c) in headers.iter().zip(chunks) {
            match c {
                Chunk::One { payload, .. } => {
                    slices[used] = IoSlice::new(&h.0[..h.1]);
                    slices[used + 1] = IoSlice::new(payload);
                    used += 2;
                }
                Chunk::Framed { bytes, .. } => {
                    slices[used] = IoSlice::new(bytes);
                    used += 1;
                }
            }
            total += c.len();
        }
        let slices = &slices[..used];
        // One slice (a run of frames framed once for a room) goes as a
        // plain write: on a TCP socket that is `send`, which skips the
        // file layer `writev` goes through (its position lock and checks
        // were ~7 % of a steady fan-out's CPU).
        let written = if let [one] = slices {
            ready!(self.poll_inner(cx, one))?
        } else {
            ready!(self.poll_inner_vectored(cx, slices))?
        };
        if written < total {
            let mut skip = written;
            for s in slices {
                if skip >= s.len() {
                    skip -= s.len();
                } else {
                    self.pending.extend_from_slice(&s[skip..]);
                    skip = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Part of what a socket is sent: one frame's payload, framed on its way
/// out (a compressed frame, or an echoed one), or frames framed already (a
/// `Frame` sent plain, framed when it was made; a run of publications
/// shared by a room's members, framed once for all of them).
#[derive(Clone, Copy)]
pub enum Chunk<'a> {
    /// `head`: the frame's first byte ([`TEXT`], [`BINARY`], with
    /// [`COMPRESSED`] when `payload` is deflated).
    One {
        head: u8,
        payload: &'a [u8],
    },
    Framed {
        bytes: &'a [u8],
        frames: usize,
    },
}

impl<'a> Chunk<'a> {
    /// A text frame.
    pub fn text(payload: &'a [u8]) -> Self {
        Chunk::One {
            head: TEXT,
            payload,
        }
    }

    fn frames(&self) -> usize {
        match self {
            Chunk::One { .. } => 1,
            Chunk::Framed { frames, .. } => *frames,
        }
    }

    /// Bytes on the wire.
    fn len(&self) -> usize {
        match self {
            Chunk::One { head, payload } => frame_header(*head, payload.len()).1 + payload.len(),
            Chunk::Framed { bytes, .. } => bytes.len(),
        }
    }

    fn append_to(&self, buf: &mut Vec<u8>) {
        match self {
            Chunk::One { head, payload } => append_frame(buf, *head, payload),
            Chunk::Framed { bytes, .. } => buf.extend_from_slice(bytes),
        }
    }
}

/// Appends `payload` as one unmasked frame whose first byte is `head`.
pub fn append_frame(buf: &mut Vec<u8>, head: u8, payload: &[u8]) {
    let (h, used) = frame_header(head, payload.len());
    buf.extend_from_slice(&h[..used]);
    buf.extend_from_slice(payload);
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameWriter<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The socket closes after this: nobody else may write to its descriptor
/// (whose number the system may give to the next socket) from now on.
impl<S> Drop for FrameWriter<S> {
    fn drop(&mut self) {
        if let Some(s) = &self.shared {
            s.shut();
        }
    }
}

/// tungstenite's own writes (the handshake response, pongs, pings, the
/// close frame) go behind what is pending, and are taken whole: what the
/// socket does not accept joins `pending`. tungstenite's buffer then never
/// holds part of a frame, so frames written here can never land inside one
/// of its frames (without flushing tungstenite before every batch).
impl<S: AsyncWrite + Unpin + TryWrite> AsyncWrite for FrameWriter<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.shut();
        if this.at < this.pending.len() {
            if let Poll::Ready(r) = this.poll_drain(cx) {
                r?;
            }
        }
        if this.at < this.pending.len() {
            if this.pending.len() - this.at >= CONTROL_PENDING_MAX {
                // A peer that pings without reading: wait for it.
                return Poll::Pending;
            }
            this.pending.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // Nothing pending: if the socket is full, the wait for it starts
        // now (timed by `note_progress`, like every other write's).
        this.mark_progress();
        let written = match this.poll_inner(cx, buf) {
            Poll::Ready(r) => r?,
            Poll::Pending => 0,
        };
        this.pending.extend_from_slice(&buf[written..]);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(&frame_header(TEXT, 0).0[..2], &[0x81, 0]);
        assert_eq!(&frame_header(TEXT, 125).0[..2], &[0x81, 125]);
        assert_eq!(&frame_header(TEXT | COMPRESSED, 125).0[..2], &[0xc1, 125]);
        assert_eq!(&frame_header(TEXT, 126).0[..4], &[0x81, 126, 0, 126]);
        assert_eq!(&frame_header(TEXT, 65535).0[..4], &[0x81, 126, 0xff, 0xff]);
        let (h, n) = frame_header(TEXT, 65536);
        assert_eq!(n, 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    /// Writes `chunks` through a 64-byte pipe (a reader slower than the
    /// writer), then a tungstenite-style write; returns what arrived.
    async fn through_a_slow_reader(chunks: &[Chunk<'_>]) -> Vec<u8> {
        let (a, mut b) = tokio::io::duplex(64);
        let mut out = FrameWriter::new(a);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut i = 0;
        while i < chunks.len() {
            let mut taken =
                std::future::poll_fn(|cx| out.poll_write_frames(cx, chunks[i..].iter().copied()))
                    .await
                    .unwrap();
            // Whole chunks are taken, never part of one.
            while taken > 0 {
                taken -= chunks[i].frames();
                i += 1;
            }
        }
        tokio::io::AsyncWriteExt::write_all(&mut out, b"TAIL")
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut out).await.unwrap();
        drop(out);
        reader.await.unwrap()
    }

    fn wire(texts: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for t in texts {
            append_frame(&mut buf, TEXT, t);
        }
        buf
    }

    /// What a direct write left: the end of a frame, handed over once.
    struct Spilled(parking_lot::Mutex<Option<Box<[u8]>>>);

    impl SocketShare for Spilled {
        fn shut(&self) -> Option<Box<[u8]>> {
            self.0.lock().take()
        }
    }

    /// Whatever writes (tungstenite's pong, a batch of frames, a flush),
    /// the socket is taken back first, and the end of the frame a direct
    /// write left goes out before anything else, once.
    #[tokio::test]
    async fn every_write_takes_the_socket_back_behind_what_a_direct_write_left() {
        for how in ["tungstenite", "frames", "flush"] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let mut out = FrameWriter::new(server);
            let rest: Box<[u8]> = b"END-OF-A-FRAME|".as_slice().into();
            out.share(Arc::new(Spilled(parking_lot::Mutex::new(Some(rest)))));
            let expected: Vec<u8> = match how {
                "tungstenite" => {
                    tokio::io::AsyncWriteExt::write_all(&mut out, b"PONG")
                        .await
                        .unwrap();
                    b"END-OF-A-FRAME|PONG".to_vec()
                }
                "frames" => {
                    let chunks = [Chunk::text(b"x")];
                    std::future::poll_fn(|cx| out.poll_write_frames(cx, chunks.iter().copied()))
                        .await
                        .unwrap();
                    [b"END-OF-A-FRAME|".as_slice(), &wire(&[b"x"])].concat()
                }
                _ => {
                    tokio::io::AsyncWriteExt::flush(&mut out).await.unwrap();
                    b"END-OF-A-FRAME|".to_vec()
                }
            };
            // Written in full: no wait for the connection to time.
            assert!(!out.took_over(), "{how}");
            tokio::io::AsyncWriteExt::shutdown(&mut out).await.unwrap();
            drop(out);
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, expected, "{how}");
        }
    }

    /// A write tried at once takes a unit of the task's budget, as tokio's
    /// own `poll_write` does: a task whose writes all succeed at once
    /// (replies to pipelined frames, pongs) is refused once the budget is
    /// spent, and so yields its thread, instead of writing on.
    #[tokio::test]
    async fn writes_tried_at_once_spend_the_tasks_budget() {
        // A lost wake-up would leave the last write waiting: fail instead.
        tokio::time::timeout(std::time::Duration::from_secs(30), spending_the_budget())
            .await
            .expect("the task was never woken after its budget was spent");
    }

    async fn spending_the_budget() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut out = FrameWriter::new(server);
        // Once writable (the first write may wait for the socket's first
        // readiness), 1 000 one-byte writes within one poll.
        std::future::poll_fn(|cx| out.poll_inner(cx, b"x"))
            .await
            .unwrap();
        let (done, refused) = std::future::poll_fn(|cx| {
            let mut done = 0;
            while done < 1000 {
                match out.poll_inner(cx, b"x") {
                    Poll::Ready(Ok(1)) => done += 1,
                    Poll::Ready(other) => panic!("{other:?}"),
                    Poll::Pending => return Poll::Ready((done, true)),
                }
            }
            Poll::Ready((done, false))
        })
        .await;
        assert!(
            refused,
            "{done} writes in one poll: the budget was never spent"
        );
        assert!(
            (100..=128).contains(&done),
            "{done} writes before the budget ran out"
        );
        // The refusal woke the task: the next poll writes again.
        std::future::poll_fn(|cx| out.poll_inner(cx, b"x"))
            .await
            .unwrap();
    }

    /// Over loopback TCP, where writes are tried at once (`TryWrite`): a
    /// peer that reads nothing for a while fills the socket, the writer
    /// waits for room (its task woken by the socket, not by a retry), and
    /// every frame arrives whole and in order, whether written alone from
    /// its own framed bytes (one plain write) or twenty at a time past
    /// `JOIN_MAX` (a vectored write).
    #[tokio::test]
    async fn a_full_tcp_socket_is_waited_for_and_frames_stay_in_order() {
        // A lost wake-up would leave the writer waiting: fail instead.
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            through_a_full_tcp_socket(),
        )
        .await
        .expect("the writer was never woken");
    }

    async fn through_a_full_tcp_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let frames: Vec<crate::core::frame::Frame> = (0..4000)
            .map(|i| format!("{i:06}{}", "y".repeat(4000)).as_str().into())
            .collect();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut out = FrameWriter::new(server);
        let mut waited = 0;
        for (n, group) in frames.chunks(20).enumerate() {
            let chunks: Vec<Vec<Chunk<'_>>> = if n % 2 == 0 {
                group
                    .iter()
                    .map(|f| {
                        vec![Chunk::Framed {
                            bytes: f.wire(),
                            frames: 1,
                        }]
                    })
                    .collect()
            } else {
                vec![group.iter().map(|f| Chunk::text(f.as_bytes())).collect()]
            };
            for batch in chunks {
                let mut at = 0;
                while at < batch.len() {
                    let taken = std::future::poll_fn(|cx| {
                        let r = out.poll_write_frames(cx, batch[at..].iter().copied());
                        // A wait for the socket, not for the task's budget.
                        waited += (r.is_pending() && out.has_pending()) as usize;
                        r
                    })
                    .await
                    .unwrap();
                    at += taken;
                }
            }
        }
        std::future::poll_fn(|cx| out.poll_drain(cx)).await.unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut out).await.unwrap();
        drop(out);
        let all = reader.await.unwrap();
        assert!(waited > 0, "16 MB never filled the socket");
        let want: Vec<u8> = frames.iter().flat_map(|f| f.wire().to_vec()).collect();
        assert!(all == want, "frames arrived out of order or cut");
    }

    /// Frames split by a full socket still arrive whole and in order, with
    /// tungstenite-style writes behind them, whether joined (small), written
    /// as slices (large) or framed already (runs), alone or mixed.
    #[tokio::test]
    async fn partial_writes_keep_frames_whole_and_in_order() {
        for big_len in [300, JOIN_MAX + 1] {
            let big = "x".repeat(big_len);
            let run = wire(&[b"a", b"bb"]);
            let big_run = wire(&[big.as_bytes(), b"c"]);
            let (run, big_run) = (
                Chunk::Framed {
                    bytes: &run,
                    frames: 2,
                },
                Chunk::Framed {
                    bytes: &big_run,
                    frames: 2,
                },
            );
            let cases: Vec<(Vec<Chunk<'_>>, Vec<&[u8]>)> = vec![
                (
                    vec![
                        Chunk::text(b"one"),
                        Chunk::text(big.as_bytes()),
                        Chunk::text(b"three"),
                    ],
                    vec![b"one", big.as_bytes(), b"three"],
                ),
                (
                    vec![Chunk::text(b"one"), run, Chunk::text(big.as_bytes())],
                    vec![b"one", b"a", b"bb", big.as_bytes()],
                ),
                (vec![big_run], vec![big.as_bytes(), b"c"]),
                (
                    vec![run, big_run, run],
                    vec![b"a", b"bb", big.as_bytes(), b"c", b"a", b"bb"],
                ),
            ];
            for (n, (chunks, texts)) in cases.iter().enumerate() {
                let mut want = wire(texts);
                want.extend_from_slice(b"TAIL");
                let all = through_a_slow_reader(chunks).await;
                assert_eq!(all, want, "case {n}, big frame of {big_len} bytes");
            }
        }
    }
}
