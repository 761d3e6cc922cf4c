//! The socket under tungstenite, with a write path of its own for the
//! frames the server sends.
//!
//! Through tungstenite, every outgoing frame goes through its framing code
//! and write buffer one by one: in a fan-out burst that bookkeeping was
//! about an eighth of the server's CPU. Here a batch of text frames goes to
//! the socket with one write: small frames joined in a buffer per thread
//! (none is kept per socket), large ones as a vectored write of their
//! headers and the shared payloads themselves. Only what the socket does
//! not take is kept, in `pending`, which is written before anything else
//! (tungstenite's own writes included), so frames never interleave.

use std::io::{self, IoSlice};
use std::pin::Pin;
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
}

/// The header of an unmasked, unfragmented server text frame of `len`
/// bytes (RFC 6455 §5.2), and how many of its bytes are used.
pub fn text_header(len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x81;
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

impl<S: AsyncWrite + Unpin> FrameWriter<S> {
    pub fn new(inner: S) -> Self {
        FrameWriter {
            inner,
            pending: Vec::new(),
            at: 0,
            progress_at: Instant::now(),
        }
    }

    /// Bytes taken from the caller that the socket has not accepted yet.
    pub fn pending_len(&self) -> usize {
        self.pending.len() - self.at
    }

    pub fn has_pending(&self) -> bool {
        self.at < self.pending.len()
    }

    pub fn progress_at(&self) -> Instant {
        self.progress_at
    }

    /// A new wait for the socket starts now (nothing was pending).
    pub fn mark_progress(&mut self) {
        if !self.has_pending() {
            self.progress_at = Instant::now();
        }
    }

    /// Writes to the socket, noting any progress.
    fn poll_inner(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if n > 0 {
            self.progress_at = Instant::now();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_inner_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, slices))?;
        if n > 0 {
            self.progress_at = Instant::now();
        }
        Poll::Ready(Ok(n))
    }

    /// Writes what is pending; ready once nothing is.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.at < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.at..]))?;
            if n > 0 {
                self.progress_at = Instant::now();
            }
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
        Poll::Ready(Ok(()))
    }

    /// Writes up to [`FRAMES_PER_WRITE`] text frames with one write, once
    /// nothing is pending; ready with how many were taken (their unwritten
    /// part, if any, is now pending).
    pub fn poll_write_frames<'a, I>(
        &mut self,
        cx: &mut Context<'_>,
        payloads: I,
    ) -> Poll<io::Result<usize>>
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        ready!(self.poll_drain(cx))?;
        let payloads = payloads.take(FRAMES_PER_WRITE);
        let (count, bytes) = payloads
            .clone()
            .fold((0, 0), |(n, b), p| (n + 1, b + p.len()));
        if bytes <= JOIN_MAX {
            self.write_joined(cx, payloads)
        } else if count <= 4 {
            // Slices on the stack, sized for a few large frames too.
            self.write_vectored::<4, 8>(cx, payloads)
        } else {
            self.write_vectored::<FRAMES_PER_WRITE, { 2 * FRAMES_PER_WRITE }>(cx, payloads)
        }
    }

    /// Small frames are copied into one buffer (per thread, not per
    /// socket) and written as one slice: the kernel's per-slice cost for a
    /// 2-byte header and a 100-byte payload is several times that copy.
    fn write_joined<'a>(
        &mut self,
        cx: &mut Context<'_>,
        payloads: impl Iterator<Item = &'a [u8]>,
    ) -> Poll<io::Result<usize>> {
        JOINED.with(|joined| {
            let mut buf = joined.borrow_mut();
            buf.clear();
            let mut n = 0;
            for p in payloads {
                let (h, used) = text_header(p.len());
                buf.extend_from_slice(&h[..used]);
                buf.extend_from_slice(p);
                n += 1;
            }
            let written = ready!(self.poll_inner(cx, &buf))?;
            self.pending.extend_from_slice(&buf[written..]);
            Poll::Ready(Ok(n))
        })
    }

    /// `payloads` holds at most `N` frames.
    fn write_vectored<'a, const N: usize, const SLICES: usize>(
        &mut self,
        cx: &mut Context<'_>,
        payloads: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> Poll<io::Result<usize>> {
        let mut headers = [([0u8; 10], 0usize); N];
        let mut n = 0;
        for (h, p) in headers.iter_mut().zip(payloads.clone()) {
            *h = text_header(p.len());
            n += 1;
        }
        let mut slices = [IoSlice::new(&[]); SLICES];
        let mut total = 0;
        for (i, (h, p)) in headers[..n].iter().zip(payloads).enumerate() {
            slices[2 * i] = IoSlice::new(&h.0[..h.1]);
            slices[2 * i + 1] = IoSlice::new(p);
            total += h.1 + p.len();
        }
        let slices = &slices[..2 * n];
        let written = ready!(self.poll_inner_vectored(cx, slices))?;
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
        Poll::Ready(Ok(n))
    }
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

/// tungstenite's own writes (the handshake response, pongs, pings, the
/// close frame) go behind what is pending, and are taken whole: what the
/// socket does not accept joins `pending`. tungstenite's buffer then never
/// holds part of a frame, so frames written here can never land inside one
/// of its frames (without flushing tungstenite before every batch).
impl<S: AsyncWrite + Unpin> AsyncWrite for FrameWriter<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
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
        let written = match this.poll_inner(cx, buf) {
            Poll::Ready(r) => r?,
            // The socket is full: the wait for it starts now.
            Poll::Pending => {
                this.progress_at = Instant::now();
                0
            }
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
    use crate::core::protocol::Frame;
    use tokio::io::AsyncReadExt;

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(&text_header(0).0[..2], &[0x81, 0]);
        assert_eq!(&text_header(125).0[..2], &[0x81, 125]);
        assert_eq!(&text_header(126).0[..4], &[0x81, 126, 0, 126]);
        assert_eq!(&text_header(65535).0[..4], &[0x81, 126, 0xff, 0xff]);
        let (h, n) = text_header(65536);
        assert_eq!(n, 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    /// A reader slower than the writer: frames split by a full socket still
    /// arrive whole and in order, with tungstenite-style writes behind them,
    /// whether joined (small) or written as slices (large).
    #[tokio::test]
    async fn partial_writes_keep_frames_whole_and_in_order() {
        for big_len in [300, JOIN_MAX + 1] {
            let (a, mut b) = tokio::io::duplex(64);
            let mut out = FrameWriter::new(a);
            let big = "x".repeat(big_len);
            let frames: Vec<Frame> = vec!["one".into(), big.as_str().into(), "three".into()];
            let reader = tokio::spawn(async move {
                let mut all = Vec::new();
                b.read_to_end(&mut all).await.unwrap();
                all
            });
            let mut done = 0;
            while done < frames.len() {
                done += std::future::poll_fn(|cx| {
                    out.poll_write_frames(cx, frames[done..].iter().map(|f| f.as_bytes()))
                })
                .await
                .unwrap();
            }
            tokio::io::AsyncWriteExt::write_all(&mut out, b"TAIL")
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::shutdown(&mut out).await.unwrap();
            drop(out);
            let all = reader.await.unwrap();
            let mut want = vec![0x81, 3];
            want.extend_from_slice(b"one");
            let (h, used) = text_header(big_len);
            want.extend_from_slice(&h[..used]);
            want.extend_from_slice(big.as_bytes());
            want.extend_from_slice(&[0x81, 5]);
            want.extend_from_slice(b"three");
            want.extend_from_slice(b"TAIL");
            assert_eq!(all, want, "big frame of {big_len} bytes");
        }
    }
}
