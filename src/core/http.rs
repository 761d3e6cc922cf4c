//! The HTTP side of a new connection: read the request head ourselves, so
//! the server can answer what is not a WebSocket upgrade (404, 403 for a
//! foreign Origin, 426, 503 when full, the metrics page) before any
//! WebSocket machinery runs, then hand the already-read bytes back to the
//! upgrade through [`Prefixed`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest request head accepted (request line + headers).
pub const MAX_HEAD: usize = 16 * 1024;

/// The error of [`read_head`] for a head over [`MAX_HEAD`] or with more
/// headers than it reads: answered with HTTP 431.
#[derive(Debug)]
struct HeadTooLarge;

impl std::fmt::Display for HeadTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request head too large")
    }
}

impl std::error::Error for HeadTooLarge {}

/// The status and reason an error of [`read_head`] is answered with.
pub fn head_error_status(e: &io::Error) -> (u16, &'static str) {
    if e.get_ref().is_some_and(|inner| inner.is::<HeadTooLarge>()) {
        (431, "Request Header Fields Too Large")
    } else {
        (400, "Bad Request")
    }
}

/// What the server needs to know about an upgrade request.
#[derive(Debug, Default)]
pub struct Head {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub upgrade_websocket: bool,
    pub origin: Option<String>,
    /// HTTP/1.1 (not 1.0).
    pub http11: bool,
    /// `Connection` names `upgrade`.
    pub connection_upgrade: bool,
    pub websocket_key: Option<String>,
    pub websocket_version: Option<String>,
    /// Every `Sec-WebSocket-Extensions` header, in order.
    pub extensions: Vec<String>,
    /// Bytes of the head itself; what follows is the client's first frames.
    pub len: usize,
}

impl Head {
    /// Why the head is not a valid WebSocket upgrade (RFC 6455 §4.2.1).
    pub fn upgrade_error(&self) -> Option<&'static str> {
        if self.method != "GET" || !self.http11 {
            Some("the upgrade must be an HTTP/1.1 GET")
        } else if !self.connection_upgrade {
            Some("Connection does not name upgrade")
        } else if self.websocket_version.as_deref() != Some("13") {
            Some("Sec-WebSocket-Version is not 13")
        } else if self.websocket_key.as_deref().is_none_or(str::is_empty) {
            Some("Sec-WebSocket-Key is missing")
        } else {
            None
        }
    }

    /// The `101 Switching Protocols` answer, with `extensions` if any.
    pub fn switching_protocols(&self, extensions: Option<&str>) -> String {
        let key = self.websocket_key.as_deref().unwrap_or("");
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n"
        );
        if let Some(e) = extensions {
            out.push_str("Sec-WebSocket-Extensions: ");
            out.push_str(e);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out
    }
}

/// Reads until the end of the request head. Returns the parsed head and
/// every byte read so far (head and anything after it).
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let mut head = Head {
                    http11: req.version == Some(1),
                    len,
                    method: req.method.unwrap_or("").to_string(),
                    path: req
                        .path
                        .unwrap_or("/")
                        .split('?')
                        .next()
                        .unwrap_or("/")
                        .to_string(),
                    ..Head::default()
                };
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("upgrade") {
                        head.upgrade_websocket = String::from_utf8_lossy(h.value)
                            .split(',')
                            .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
                    } else if h.name.eq_ignore_ascii_case("origin") {
                        head.origin = Some(String::from_utf8_lossy(h.value).into_owned());
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        head.connection_upgrade |= String::from_utf8_lossy(h.value)
                            .split(',')
                            .any(|v| v.trim().eq_ignore_ascii_case("upgrade"));
                    } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
                        head.websocket_key =
                            Some(String::from_utf8_lossy(h.value).trim().to_string());
                    } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
                        head.websocket_version =
                            Some(String::from_utf8_lossy(h.value).trim().to_string());
                    } else if h.name.eq_ignore_ascii_case("sec-websocket-extensions") {
                        head.extensions
                            .push(String::from_utf8_lossy(h.value).into_owned());
                    }
                }
                return Ok((head, buf));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, HeadTooLarge))
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
}

/// Writes a small complete HTTP response and shuts the write side.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &str,
) {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A stream that first replays bytes already read from it, and reads
/// ahead when asked for little.
///
/// tungstenite asks for at most its read buffer's size per read
/// ([`READ_BUFFER`], kept small because it lives as long as the socket),
/// so a 2 KiB message would take several system calls. A small read is instead made into
/// a per-thread buffer of [`READ_AHEAD`] bytes; what the caller had no room
/// for is kept here and replayed, and that copy lives only until it is.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

/// tungstenite's read buffer per socket, allocated for the socket's whole
/// life: 256 bytes instead of tungstenite's 128 KiB (the measurements are
/// in docs/PERFORMANCE.md). Client frames (events, joins, acks) are mostly
/// smaller; for a larger one tungstenite reserves the frame's length once
/// its header is in, and reads it this many bytes at a time from what
/// [`Prefixed`] read ahead in one system call.
pub const READ_BUFFER: usize = 256;

/// How much one read from the socket may take (see [`Prefixed`]).
pub const READ_AHEAD: usize = 8 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_AHEAD]);
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            // Nothing to replay: no buffer kept for the connection's life
            // (it is freed once replayed, and an empty one never is).
            prefix: if prefix.is_empty() {
                Vec::new()
            } else {
                prefix
            },
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                // The replayed bytes are not needed any more.
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut ahead = ReadBuf::new(scratch);
            let read = Pin::new(&mut self.inner).poll_read(cx, &mut ahead);
            if let Poll::Ready(Ok(())) = read {
                let got = ahead.filled();
                let n = got.len().min(buf.remaining());
                buf.put_slice(&got[..n]);
                if n < got.len() {
                    self.prefix = got[n..].to_vec();
                }
            }
            read
        })
    }
}

/// `impl AsyncWrite` (and [`TryWrite`](crate::core::frame_writer::TryWrite))
/// for a reader wrapper `$t<S>` whose writes go straight to its `inner`
/// stream.
#[macro_export]
macro_rules! write_through {
    ($t:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $t<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }

        impl<S: $crate::core::frame_writer::TryWrite> $crate::core::frame_writer::TryWrite
            for $t<S>
        {
            fn poll_write_now(
                &mut self,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.inner.poll_write_now(cx, buf)
            }

            fn poll_write_vectored_now(
                &mut self,
                cx: &mut std::task::Context<'_>,
                slices: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.inner.poll_write_vectored_now(cx, slices)
            }

            fn direct_fd(&self) -> Option<i32> {
                self.inner.direct_fd()
            }
        }
    };
}
crate::write_through!(Prefixed);

/// Whether `origin` may open a socket. `allowed` empty: any origin (and
/// requests without one, such as non-browser clients). `"*"` allows all.
/// Entries match the whole origin (`https://app.example.com`) or, written
/// `*.example.com`, any subdomain of it on any scheme.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    if allowed.is_empty() || allowed.iter().any(|a| a == "*") {
        return true;
    }
    let Some(origin) = origin else {
        // Browsers always send Origin on WebSocket upgrades; a request
        // without one is not a cross-site browser request.
        return true;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    allowed.iter().any(|a| {
        let a = a.trim_end_matches('/').to_ascii_lowercase();
        if let Some(suffix) = a.strip_prefix("*.") {
            let host = origin.split("://").nth(1).unwrap_or(&origin);
            let host = host.split(':').next().unwrap_or(host);
            host.ends_with(&format!(".{suffix}"))
        } else {
            a == origin
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let list = vec![
            "https://app.example.com".to_string(),
            "*.trusted.io".to_string(),
        ];
        assert!(origin_allowed(&[], Some("https://evil.com")));
        assert!(origin_allowed(&list, Some("https://app.example.com")));
        assert!(origin_allowed(&list, Some("HTTPS://APP.EXAMPLE.COM/")));
        assert!(origin_allowed(&list, Some("https://a.b.trusted.io:8443")));
        assert!(!origin_allowed(&list, Some("https://trusted.io.evil.com")));
        assert!(!origin_allowed(&list, Some("https://evil.com")));
        assert!(!origin_allowed(&list, Some("null")));
        assert!(origin_allowed(&list, None));
    }

    /// An upgrade whose head was all there was keeps no buffer for the
    /// connection's life (it was 1 KiB per idle connection).
    #[test]
    fn nothing_to_replay_keeps_nothing() {
        let mut read = Vec::with_capacity(1024);
        read.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        read.drain(..);
        assert_eq!(Prefixed::new(read, ()).prefix.capacity(), 0);
    }

    #[tokio::test]
    async fn head_is_read_and_replayed() {
        let raw = b"GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nOrigin: https://o\r\n\r\nEXTRA";
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(raw).await.unwrap();
        let (head, bytes) = read_head(&mut server).await.unwrap();
        assert_eq!(head.path, "/ws");
        assert!(head.upgrade_websocket);
        assert_eq!(head.origin.as_deref(), Some("https://o"));
        let mut replay = Prefixed::new(bytes, server);
        let mut out = vec![0u8; raw.len()];
        replay.read_exact(&mut out).await.unwrap();
        assert_eq!(&out[..], &raw[..]);
    }

    /// Counts the reads that reach the stream under it.
    struct Counted<S> {
        inner: S,
        reads: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    /// A 3 000-byte message asked for 512 bytes at a time comes off the
    /// socket in one read, in order, and nothing is kept once replayed.
    #[tokio::test]
    async fn small_reads_are_served_from_one_read_ahead() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        client.write_all(&data).await.unwrap();
        let mut r = Prefixed::new(
            Vec::new(),
            Counted {
                inner: server,
                reads: 0,
            },
        );
        let mut out = Vec::new();
        let mut chunk = [0u8; 512];
        while out.len() < data.len() {
            let n = r.read(&mut chunk).await.unwrap();
            out.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(out, data);
        assert_eq!(r.inner.reads, 1);
        assert_eq!(r.prefix.capacity(), 0);
    }
}

#[cfg(test)]
mod head_limits {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn status_of(raw: Vec<u8>) -> u16 {
        let (mut client, mut server) = tokio::io::duplex(256 * 1024);
        client.write_all(&raw).await.unwrap();
        drop(client);
        match read_head(&mut server).await {
            Ok(_) => 200,
            Err(e) => head_error_status(&e).0,
        }
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_431_and_garbage_400() {
        let mut big = b"GET /ws HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 64 * 1024));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(big).await, 431);
        let mut many = b"GET /ws HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status_of(many).await, 431);
        assert_eq!(status_of(b"\x00\x01 nonsense\r\n\r\n".to_vec()).await, 400);
        assert_eq!(status_of(b"GET /ws HTTP/1.1\r\n\r\n".to_vec()).await, 200);
    }
}
