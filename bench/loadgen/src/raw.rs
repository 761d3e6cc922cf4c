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

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed frame: its opcode and where its payload is in the buffer.
struct Frame {
    fin: bool,
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
}

/// Whether a receiver reads on after a text message.
pub enum Next {
    More,
    Stop,
}

impl Reader {
    pub fn new(tcp: TcpStream) -> Reader {
        Reader {
            tcp,
            buf: vec![0; 64 * 1024],
            at: 0,
            len: 0,
            partial: None,
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
                        let done = if f.opcode == 0x1 && f.fin {
                            let text = &self.buf[f.start..f.end];
                            if engine_io && text == b"2" {
                                self.send(0x1, b"3").await;
                                Next::More
                            } else {
                                on_text(text)
                            }
                        } else {
                            let part = self.partial.get_or_insert_with(Vec::new);
                            part.extend_from_slice(&self.buf[f.start..f.end]);
                            if f.fin {
                                let text = self.partial.take().unwrap_or_default();
                                on_text(&text)
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
            true
        })
    }

    /// Writes one small masked client frame (a pong, Engine.IO's "3").
    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        assert!(payload.len() < 126, "control replies are small");
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let _ = self.tcp.write_all(&out).await;
    }
}
