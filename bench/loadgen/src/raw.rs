//! The receivers' read path: WebSocket frames parsed straight from the
//! socket, without tungstenite's per-message machinery.
//!
//! In a fan-out burst the load generator reads 2 000 000 frames in under a
//! second on the same two cores as the server it measures. Through
//! tokio-tungstenite each frame cost a stream poll with its waker proxies,
//! an owned message and a UTF-8 check: the load generator used more CPU than
//! the servers, so the burst measured it rather than them. Here a socket's
//! frames are parsed in place from one buffer per socket (server frames are
//! never masked), and the only replies a receiver owes (a pong for a ping,
//! Engine.IO's "3" for its "2") are written as masked client frames.

use flate2::{Decompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed frame: its opcode and where its payload is in the buffer.
struct Frame {
    fin: bool,
    /// RSV1: the message is compressed (permessage-deflate).
    compressed: bool,
    opcode: u8,
    start: usize,
    end: usize,
}

/// A socket and what has been read from it but not yet parsed.
pub struct Reader {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Parsed up to here.
    at: usize,
    /// Read up to here.
    len: usize,
    /// The text of a fragmented message, while its fragments arrive.
    partial: Option<Vec<u8>>,
    /// Whether the fragmented message in `partial` is compressed.
    partial_compressed: bool,
    /// Set when permessage-deflate was negotiated (no context takeover:
    /// reset for every message), with the buffer messages inflate into.
    inflate: Option<(Decompress, Vec<u8>)>,
    /// Bytes read off the socket: what the server put on the wire.
    pub wire_bytes: u64,
}

/// The tail the compressor's sync flush ends with, cut off on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// `data` (a compressed message without its tail) inflated into `out`.
fn inflate_into(z: &mut Decompress, data: &[u8], out: &mut Vec<u8>) {
    z.reset(false);
    out.clear();
    for part in [data, &TAIL[..]] {
        let mut at = 0;
        loop {
            if out.capacity() - out.len() < 4096 {
                out.reserve(out.capacity().max(16 * 1024));
            }
            let before = z.total_in();
            z.decompress_vec(&part[at..], out, FlushDecompress::Sync)
                .expect("the server's compressed data inflates");
            at += (z.total_in() - before) as usize;
            if at == part.len() && out.len() < out.capacity() {
                break;
            }
        }
    }
}

/// Whether a receiver reads on after a text message.
pub enum Next {
    More,
    Stop,
}

impl Reader {
    pub fn new(tcp: TcpStream, deflate: bool) -> Reader {
        Reader {
            tcp,
            buf: vec![0; 64 * 1024],
            at: 0,
            len: 0,
            partial: None,
            partial_compressed: false,
            inflate: deflate.then(|| (Decompress::new(false), Vec::new())),
            wire_bytes: 0,
        }
    }

    /// Reads and parses until `on_text` says stop or the socket closes.
    /// With `engine_io`, Engine.IO's ping text ("2")
    /// is answered with "3" instead of being handed on.
    pub async fn run(&mut self, engine_io: bool, mut on_text: impl FnMut(&[u8]) -> Next) {
        loop {
            while let Some(f) = self.parse() {
                match f.opcode {
                    // Text, or the continuation of a fragmented text.
                    0x1 | 0x0 => {
                        let done = if f.opcode == 0x1 && f.fin && f.compressed {
                            let (z, out) =
                                self.inflate.as_mut().expect("RSV1 without the extension");
                            inflate_into(z, &self.buf[f.start..f.end], out);
                            on_text(out)
                        } else if f.opcode == 0x1 && f.fin {
                            let text = &self.buf[f.start..f.end];
                            if engine_io && text == b"2" {
                                self.send(0x1, b"3").await;
                                Next::More
                            } else {
                                on_text(text)
                            }
                        } else {
                            if f.opcode == 0x1 {
                                self.partial_compressed = f.compressed;
                            }
                            let part = self.partial.get_or_insert_with(Vec::new);
                            part.extend_from_slice(&self.buf[f.start..f.end]);
                            if f.fin {
                                let text = self.partial.take().unwrap_or_default();
                                if self.partial_compressed {
                                    let (z, out) =
                                        self.inflate.as_mut().expect("RSV1 without the extension");
                                    inflate_into(z, &text, out);
                                    on_text(out)
                                } else {
                                    on_text(&text)
                                }
                            } else {
                                Next::More
                            }
                        };
                        if let Next::Stop = done {
                            return;
                        }
                    }
                    0x9 => {
                        let payload = self.buf[f.start..f.end].to_vec();
                        self.send(0xA, &payload).await;
                    }
                    0x8 => return,
                    // Pong, binary: nothing to do.
                    _ => {}
                }
            }
            if !self.fill().await {
                return;
            }
        }
    }

    /// The next whole frame in the buffer, if any.
    fn parse(&mut self) -> Option<Frame> {
        let b = &self.buf[self.at..self.len];
        if b.len() < 2 {
            return None;
        }
        assert!(
            b[1] & 0x80 == 0,
            "a masked frame from the server: the stream is not at a frame boundary"
        );
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < head + len {
            if head + len > self.buf.len() {
                // A frame larger than the buffer: make room for it whole.
                self.buf.resize(head + len, 0);
            }
            return None;
        }
        let f = Frame {
            fin: b[0] & 0x80 != 0,
            compressed: b[0] & 0x40 != 0,
            opcode: b[0] & 0x0f,
            start: self.at + head,
            end: self.at + head + len,
        };
        self.at += head + len;
        Some(f)
    }

    /// Reads more; false once the socket is closed.
    async fn fill(&mut self) -> bool {
        if self.at == self.len {
            self.at = 0;
            self.len = 0;
        } else if self.at > 0 {
            self.buf.copy_within(self.at..self.len, 0);
            self.len -= self.at;
            self.at = 0;
        }
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        matches!(self.tcp.read(&mut self.buf[self.len..]).await, Ok(n) if n > 0 && {
            self.len += n;
            self.wire_bytes += n as u64;
            true
        })
    }

    /// Writes one masked client frame, uncompressed (a pong, Engine.IO's
    /// "3", an authentication or a join).
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![0x80 | opcode];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else {
            assert!(
                payload.len() <= u16::MAX as usize,
                "client frames are small"
            );
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let _ = self.tcp.write_all(&out).await;
    }

    /// Opens a WebSocket to `url` by hand, offering permessage-deflate,
    /// and asserts the server took it.
    pub async fn connect_deflate(url: &str) -> Reader {
        let rest = url.strip_prefix("ws://").expect("a ws:// url");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut tcp = TcpStream::connect(host).await.expect("connect");
        let _ = tcp.set_nodelay(true);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
            if path.is_empty() { "/" } else { path }
        );
        tcp.write_all(request.as_bytes()).await.expect("upgrade");
        let mut reader = Reader::new(tcp, true);
        // The answer's head, then frames in the same buffer.
        loop {
            assert!(reader.fill().await, "closed during the upgrade");
            if let Some(end) = reader.buf[..reader.len]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                let head = String::from_utf8_lossy(&reader.buf[..end]).to_lowercase();
                assert!(head.starts_with("http/1.1 101"), "upgrade refused: {head}");
                assert!(
                    head.contains("sec-websocket-extensions: permessage-deflate"),
                    "permessage-deflate was not negotiated: {head}"
                );
                reader.at = end + 4;
                return reader;
            }
        }
    }
}
