//! The WebSocket protocol (tungstenite) over an async socket, polled by
//! the one task that owns the connection.
//!
//! tungstenite reads and writes through `std::io::Read`/`Write`; an async
//! socket needs a `Context` for each of those calls. tokio-tungstenite's
//! `WebSocketStream` supplies one through two waker proxies per socket (so
//! that a reader and a writer in different tasks are both woken): every
//! read registered the task's waker in them, and every readiness of the
//! socket went through them to the task. A connection here has one task,
//! so [`WsSocket`] hands the caller's own `Context` straight down for the
//! length of the call (as tokio-native-tls does for TLS): no proxies, no
//! second registration, and 128 bytes less per connection.

use futures_util::Stream;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::error::Error as WsError;
use tungstenite::protocol::{CloseFrame, Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

/// The socket as tungstenite sees it: `cx` is the polling task's context
/// during a call made through [`WsSocket::with_context`] (null: none given),
/// and is not read between calls.
struct Bridge<S> {
    inner: S,
    cx: *mut (),
}

// SAFETY: `cx` is read only inside a call made by `with_context`, which
// set it from that call's `&mut Context` (or to null) on the thread that
// polls; it is never read between calls. The socket itself decides the rest.
unsafe impl<S: Send> Send for Bridge<S> {}

impl<S: Unpin> Bridge<S> {
    /// Polls the socket with the current call's context, or with one that
    /// wakes nobody when none was given: `start_send`, which is why a send
    /// must be followed by `poll_flush` (or `poll_ready`) with the task's
    /// context before the task waits (tokio-tungstenite's proxies kept the
    /// last waker instead; every caller here flushes).
    fn poll<R>(
        &mut self,
        f: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> io::Result<R> {
        let poll = if self.cx.is_null() {
            f(
                Pin::new(&mut self.inner),
                &mut Context::from_waker(Waker::noop()),
            )
        } else {
            // SAFETY: set by `with_context` from a `&mut Context` that
            // outlives the call this runs in (see the type's comment).
            let cx = unsafe { &mut *(self.cx as *mut Context<'_>) };
            f(Pin::new(&mut self.inner), cx)
        };
        match poll {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncRead + Unpin> Read for Bridge<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        self.poll(|s, cx| s.poll_read(cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl<S: AsyncWrite + Unpin> Write for Bridge<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.poll(|s, cx| s.poll_write(cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.poll(|s, cx| s.poll_flush(cx))
    }
}

/// A server-side WebSocket over `S`: a `Stream` of messages, and sends in
/// the shape of a `Sink`'s (`poll_ready`, `start_send`, `poll_flush`), with
/// tokio-tungstenite's semantics: a stream that ended (closed, or failed)
/// yields `None` from then on; a `start_send` the socket could not take yet
/// is kept, and flushed by the next `poll_ready`/`poll_flush`.
pub struct WsSocket<S> {
    ws: WebSocket<Bridge<S>>,
    /// The stream returned its end or an error.
    ended: bool,
    /// The last write was taken whole (otherwise `poll_ready` flushes).
    ready: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsSocket<S> {
    /// The WebSocket over a socket whose handshake is done.
    pub fn from_raw_socket(inner: S, role: Role, config: Option<WebSocketConfig>) -> Self {
        WsSocket {
            ws: WebSocket::from_raw_socket(
                Bridge {
                    inner,
                    cx: std::ptr::null_mut(),
                },
                role,
                config,
            ),
            ended: false,
            ready: true,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.ws.get_ref().inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.ws.get_mut().inner
    }

    /// Runs `f` on the WebSocket with `cx` (if any) as the socket's
    /// context. Every call sets the bridge's context before `f` runs, so a
    /// call that unwound without clearing it leaves nothing a later call
    /// could read.
    fn with_context<R>(
        &mut self,
        cx: Option<&mut Context<'_>>,
        f: impl FnOnce(&mut WebSocket<Bridge<S>>) -> R,
    ) -> R {
        self.ws.get_mut().cx =
            cx.map_or(std::ptr::null_mut(), |cx| cx as *mut Context<'_> as *mut ());
        let r = f(&mut self.ws);
        self.ws.get_mut().cx = std::ptr::null_mut();
        r
    }

    /// Sends a close frame (or the answer to the peer's) and flushes it.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), WsError> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await?;
        self.start_send(Message::Close(frame))?;
        self.flush().await
    }

    /// Writes out what tungstenite holds (a pong, a close's answer).
    pub async fn flush(&mut self) -> Result<(), WsError> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Ready for `start_send` once what the last one left is flushed.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.ready {
            return Poll::Ready(Ok(()));
        }
        self.poll_write_out(cx)
    }

    /// Queues `item`; what the socket does not take now waits for
    /// `poll_flush`, which must follow before the task waits.
    pub fn start_send(&mut self, item: Message) -> Result<(), WsError> {
        match self.with_context(None, |ws| ws.write(item)) {
            Ok(()) => {
                self.ready = true;
                Ok(())
            }
            // Taken and kept: `poll_ready` flushes it.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.ready = false;
                Ok(())
            }
            Err(e) => {
                self.ready = true;
                Err(e)
            }
        }
    }

    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        // A flush that completed the close handshake is not an error.
        self.poll_write_out(cx).map(|r| match r {
            Err(WsError::ConnectionClosed) => Ok(()),
            r => r,
        })
    }

    /// Writes out what tungstenite holds, with the task's context.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let r = std::task::ready!(self.with_context(Some(cx), |ws| cvt(ws.flush())));
        self.ready = true;
        Poll::Ready(r)
    }
}

/// `Ok`, `Pending` for a socket that would block, or the error.
fn cvt<T>(r: Result<T, WsError>) -> Poll<Result<T, WsError>> {
    match r {
        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsSocket<S> {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.with_context(Some(cx), |ws| cvt(ws.read()))) {
            Ok(m) => Poll::Ready(Some(Ok(m))),
            Err(e) => {
                self.ended = true;
                if matches!(e, WsError::AlreadyClosed | WsError::ConnectionClosed) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(e)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A waker that records being woken.
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn flag() -> (Arc<Flag>, Waker) {
        let f = Arc::new(Flag(AtomicBool::new(false)));
        (f.clone(), Waker::from(f))
    }

    /// A client's text frame, masked with a zero key.
    fn client_text(s: &str) -> Vec<u8> {
        let mut f = vec![0x81, 0x80 | s.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(s.as_bytes());
        f
    }

    #[tokio::test]
    async fn a_read_that_would_block_wakes_the_polling_task_when_a_frame_comes() {
        let (server, mut peer) = tokio::io::duplex(64);
        let mut ws = WsSocket::from_raw_socket(server, Role::Server, None);
        let (woken, waker) = flag();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut ws).poll_next(&mut cx).is_pending());
        assert!(!woken.0.load(Ordering::SeqCst));
        peer.write_all(&client_text("hi")).await.unwrap();
        // The socket was polled with the task's waker.
        assert!(woken.0.load(Ordering::SeqCst));
        match Pin::new(&mut ws).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "hi"),
            other => panic!("expected the text, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_flush_the_peer_holds_up_wakes_the_task_once_it_reads() {
        let (server, mut peer) = tokio::io::duplex(64);
        let mut ws = WsSocket::from_raw_socket(server, Role::Server, None);
        let (woken, waker) = flag();
        let mut cx = Context::from_waker(&waker);
        let text = "x".repeat(1000);
        Pin::new(&mut ws)
            .start_send(Message::text(text.clone()))
            .unwrap();
        assert!(Pin::new(&mut ws).poll_flush(&mut cx).is_pending());
        let mut got = vec![0u8; 32];
        peer.read_exact(&mut got).await.unwrap();
        assert!(woken.0.load(Ordering::SeqCst));
        // The rest goes as the peer reads: header (4 bytes) and payload.
        let mut wire = got;
        loop {
            match Pin::new(&mut ws).poll_flush(&mut cx) {
                Poll::Ready(r) => {
                    r.unwrap();
                    break;
                }
                Poll::Pending => {
                    let mut chunk = vec![0u8; 64];
                    let n = peer.read(&mut chunk).await.unwrap();
                    wire.extend_from_slice(&chunk[..n]);
                }
            }
        }
        let mut rest = vec![0u8; 4 + text.len() - wire.len()];
        peer.read_exact(&mut rest).await.unwrap();
        wire.extend_from_slice(&rest);
        assert_eq!(&wire[..4], &[0x81, 126, 0x03, 0xe8]);
        assert_eq!(&wire[4..], text.as_bytes());
    }

    #[tokio::test]
    async fn a_send_the_socket_cannot_take_is_kept_and_flushed_by_poll_ready() {
        let (server, mut peer) = tokio::io::duplex(64);
        // No write buffer: tungstenite writes in `start_send` itself.
        let config = WebSocketConfig::default().write_buffer_size(0);
        let mut ws = WsSocket::from_raw_socket(server, Role::Server, Some(config));
        let (woken, waker) = flag();
        let mut cx = Context::from_waker(&waker);
        let text = "y".repeat(1000);
        ws.start_send(Message::text(text.clone())).unwrap();
        assert!(
            ws.poll_ready(&mut cx).is_pending(),
            "the rest waits for the peer"
        );
        let mut wire = Vec::new();
        loop {
            let mut chunk = vec![0u8; 64];
            let n = peer.read(&mut chunk).await.unwrap();
            wire.extend_from_slice(&chunk[..n]);
            assert!(
                woken.0.swap(false, Ordering::SeqCst),
                "the peer's read wakes the task"
            );
            if let Poll::Ready(r) = ws.poll_ready(&mut cx) {
                r.unwrap();
                break;
            }
        }
        let mut rest = vec![0u8; 4 + text.len() - wire.len()];
        peer.read_exact(&mut rest).await.unwrap();
        wire.extend_from_slice(&rest);
        assert_eq!(&wire[4..], text.as_bytes(), "the message went whole, once");
    }

    #[tokio::test]
    async fn close_sends_the_frame_and_the_peer_answer_ends_the_stream() {
        let (server, mut peer) = tokio::io::duplex(256);
        let mut ws = WsSocket::from_raw_socket(server, Role::Server, None);
        let frame = CloseFrame {
            code: 4000.into(),
            reason: "bye".into(),
        };
        ws.close(Some(frame)).await.unwrap();
        let mut sent = [0u8; 7];
        peer.read_exact(&mut sent).await.unwrap();
        assert_eq!(sent, [0x88, 0x05, 0x0f, 0xa0, b'b', b'y', b'e']);
        peer.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x0f, 0xa0])
            .await
            .unwrap();
        use futures_util::StreamExt;
        assert!(matches!(
            ws.next().await,
            Some(Ok(Message::Close(_))) | None
        ));
        assert!(ws.next().await.is_none());
    }

    #[tokio::test]
    async fn the_stream_ends_after_a_close_and_stays_ended() {
        let (server, mut peer) = tokio::io::duplex(256);
        let mut ws = WsSocket::from_raw_socket(server, Role::Server, None);
        // A masked close frame with code 1000.
        peer.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
            .await
            .unwrap();
        use futures_util::StreamExt;
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1000),
            other => panic!("expected the close, got {other:?}"),
        }
        // Flushing the answer ends the handshake: not an error.
        ws.flush().await.unwrap();
        // The stream then ends, for good.
        assert!(ws.next().await.is_none());
        assert!(ws.next().await.is_none());
        let mut reply = [0u8; 4];
        peer.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [0x88, 0x02, 0x03, 0xe8]);
    }

    #[tokio::test]
    async fn the_stream_ends_after_an_error_and_stays_ended() {
        let (server, mut peer) = tokio::io::duplex(256);
        let mut ws = WsSocket::from_raw_socket(server, Role::Server, None);
        // An unmasked frame from a client, then a good one.
        peer.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
        peer.write_all(&client_text("ok")).await.unwrap();
        use futures_util::StreamExt;
        assert!(matches!(ws.next().await, Some(Err(WsError::Protocol(_)))));
        assert!(ws.next().await.is_none());
        assert!(ws.next().await.is_none());
    }
}
