//! Inbound permessage-deflate, in front of the WebSocket reader.
//!
//! tungstenite refuses frames with RSV1 set and has no extension hook, so
//! on a connection that negotiated the extension the bytes it reads pass
//! through [`Inflating`] first. It walks the frames: a compressed message
//! (RSV1 on its first frame) is unmasked and inflated, and handed on as a
//! fragmented plain message of the same type (frames of at most
//! [`CHUNK`] bytes, masked with a zero key); every other frame passes as it
//! came, so tungstenite still judges it (RSV1 on a continuation or a
//! control frame, an unmasked frame, a bad fragment sequence all reach it
//! as they are and get their close code there).
//!
//! Bounds: the inflated size of a message is checked while inflating, and
//! inflating stops at `maxPayloadLength` (`Violation::message_too_big`,
//! close 1009); the compressed size is bounded too, since deflate can spend
//! input without producing output. Output waiting for the reader is
//! capped, and long inflations yield to the runtime's other tasks
//! (tokio's cooperative budget), so a bomb costs one message's limit of
//! CPU, spread over polls, and a few buffers of memory.

use flate2::{Decompress, FlushDecompress, Status};
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

use super::compress::TAIL;
use crate::core::stats::Stats;
use crate::core::violation::Violation;
use std::sync::Arc;

/// Largest frame made of inflated data.
const CHUNK: usize = 16 * 1024;
/// Compressed bytes inflated per step (and per unit of the task's budget).
const STEP: usize = 4 * 1024;
/// Output waiting for the reader beyond which no more is inflated.
const OUT_HIGH: usize = 64 * 1024;
/// Bytes read from the socket at a time.
const READ: usize = 16 * 1024;
/// Inflaters kept per thread for the next message.
const POOL: usize = 8;

thread_local! {
    /// Inflaters between messages. A connection holds one only while a
    /// compressed message is arriving (its state and 32 KiB window).
    static INFLATERS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ].into_boxed_slice());
}

/// The socket as the WebSocket reader sees it: inflating when the
/// extension was negotiated, a plain pass-through otherwise. Writes go
/// straight to the socket.
pub struct Inflating<S> {
    inner: S,
    state: Option<Box<State>>,
}

impl<S> Inflating<S> {
    /// `max`: the largest message, inflated; `None`: not negotiated.
    /// Messages inflated are counted in `stats`.
    pub fn new(inner: S, max: Option<usize>, stats: Arc<Stats>) -> Self {
        Inflating {
            inner,
            state: max.map(|max| Box::new(State::new(max, stats))),
        }
    }
}

/// Where the walk through the frames is.
enum At {
    /// Reading a frame header.
    Header,
    /// Passing this many more payload bytes on as they are.
    Pass(u64),
    /// Inflating this many more payload bytes of a compressed message.
    Inflate {
        remaining: u64,
        mask: [u8; 4],
        mask_at: usize,
        fin: bool,
    },
}

/// A compressed message being inflated.
struct Message {
    /// Its opcode (text or binary), sent on its first inflated frame.
    opcode: u8,
    started: bool,
    inflated: usize,
    compressed: usize,
    /// The compressor's final block came: anything after it is ignored.
    ended: bool,
    z: Decompress,
}

struct State {
    max: usize,
    stats: Arc<Stats>,
    /// Read from the socket, not walked yet.
    input: Vec<u8>,
    /// Ready for the reader, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    at: At,
    message: Option<Message>,
    eof: bool,
    failed: Option<Violation>,
}

fn take_inflater() -> Decompress {
    INFLATERS
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Decompress::new(false))
}

fn give_back(mut z: Decompress) {
    z.reset(false);
    INFLATERS.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL {
            p.push(z);
        }
    });
}

/// A masked frame header for `len` bytes with a zero key.
fn push_header(out: &mut Vec<u8>, first: u8, len: usize) {
    out.push(first);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
}

/// A parsed frame header.
struct Header {
    len: usize,
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: u64,
    mask: [u8; 4],
}

fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < 2 {
        return None;
    }
    let masked = b[1] & 0x80 != 0;
    let (ext, payload_at) = match b[1] & 0x7f {
        126 => (2, 4),
        127 => (8, 10),
        n => return finish_header(b, 2, n as u64, masked),
    };
    if b.len() < payload_at {
        return None;
    }
    let mut n = 0u64;
    for &x in &b[2..2 + ext] {
        n = n << 8 | x as u64;
    }
    finish_header(b, payload_at, n, masked)
}

fn finish_header(b: &[u8], at: usize, payload: u64, masked: bool) -> Option<Header> {
    let len = at + if masked { 4 } else { 0 };
    if b.len() < len {
        return None;
    }
    let mut mask = [0u8; 4];
    if masked {
        mask.copy_from_slice(&b[at..at + 4]);
    }
    Some(Header {
        len,
        fin: b[0] & 0x80 != 0,
        rsv: b[0] & 0x70,
        opcode: b[0] & 0x0f,
        masked,
        payload,
        mask,
    })
}

impl State {
    fn new(max: usize, stats: Arc<Stats>) -> Self {
        State {
            max,
            stats,
            input: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            at: At::Header,
            message: None,
            eof: false,
            failed: None,
        }
    }

    /// The most compressed bytes a message may take: deflate's worst
    /// expansion is far below a quarter, so past this it is not a message
    /// the limit allows.
    fn compressed_max(&self) -> usize {
        self.max.saturating_add(self.max / 4).saturating_add(1024)
    }

    fn out_len(&self) -> usize {
        self.out.len() - self.out_at
    }

    /// Walks what was read as far as it goes, until output piles up or
    /// the task's budget is spent (then true: the budget's waker brings
    /// the task back); what is left waits in `input`.
    fn walk(&mut self, cx: &mut Context<'_>) -> Result<bool, Violation> {
        let mut pos = 0;
        let result = loop {
            if self.out_len() >= OUT_HIGH {
                break Ok(false);
            }
            let avail = &self.input[pos..];
            match &mut self.at {
                At::Header => {
                    let Some(h) = parse_header(avail) else {
                        break Ok(false);
                    };
                    let data = h.opcode == 1 || h.opcode == 2;
                    let starts = h.masked && h.rsv == 0x40 && data && self.message.is_none();
                    let continues =
                        h.masked && h.rsv == 0 && h.opcode == 0 && self.message.is_some();
                    if starts {
                        // Announced at once with an empty first fragment:
                        // until then the reader would take a plain data
                        // frame for a new message instead of refusing it
                        // (1002) inside this one.
                        push_header(&mut self.out, h.opcode, 0);
                        self.message = Some(Message {
                            opcode: h.opcode,
                            started: true,
                            inflated: 0,
                            compressed: 0,
                            ended: false,
                            z: take_inflater(),
                        });
                    }
                    if starts || continues {
                        self.at = At::Inflate {
                            remaining: h.payload,
                            mask: h.mask,
                            mask_at: 0,
                            fin: h.fin,
                        };
                    } else {
                        self.out.extend_from_slice(&avail[..h.len]);
                        self.at = At::Pass(h.payload);
                    }
                    pos += h.len;
                    if matches!(self.at, At::Inflate { remaining: 0, .. }) {
                        // An empty frame: the payload step finishes it.
                        if let Err(e) = self.inflate_step(&[]) {
                            break Err(e);
                        }
                    }
                }
                At::Pass(remaining) => {
                    let n = (*remaining).min(avail.len() as u64) as usize;
                    if n == 0 && *remaining > 0 {
                        break Ok(false);
                    }
                    self.out.extend_from_slice(&avail[..n]);
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.at = At::Header;
                    }
                    pos += n;
                }
                At::Inflate { remaining, .. } => {
                    let n = (*remaining).min(avail.len().min(STEP) as u64) as usize;
                    if n == 0 {
                        break Ok(false);
                    }
                    let Poll::Ready(coop) = tokio::task::coop::poll_proceed(cx) else {
                        break Ok(true);
                    };
                    coop.made_progress();
                    let mut chunk = [0u8; STEP];
                    chunk[..n].copy_from_slice(&avail[..n]);
                    match self.inflate_step(&chunk[..n]) {
                        Err(e) => break Err(e),
                        Ok(used) => {
                            pos += used;
                            if used < n {
                                // The output is full: the rest waits.
                                break Ok(false);
                            }
                        }
                    }
                }
            }
        };
        // Keep only what was not walked; a drained buffer is freed, so an
        // idle connection holds none.
        if pos >= self.input.len() {
            self.input = Vec::new();
        } else {
            self.input.drain(..pos);
        }
        result
    }

    /// Inflates what it can of `masked`, the next payload bytes of the
    /// current compressed frame, until the output waiting for the reader
    /// is full, and, at the end of the message's last frame, the message's
    /// tail and its closing frame. Returns how many bytes it took.
    fn inflate_step(&mut self, masked: &[u8]) -> Result<usize, Violation> {
        let room = OUT_HIGH.saturating_sub(self.out_len());
        let compressed_max = self.compressed_max();
        let At::Inflate {
            remaining,
            mask,
            mask_at,
            fin,
        } = &mut self.at
        else {
            return Ok(0);
        };
        let mut data = [0u8; STEP];
        let data = &mut data[..masked.len()];
        for (i, (d, m)) in data.iter_mut().zip(masked).enumerate() {
            *d = m ^ mask[(*mask_at + i) & 3];
        }
        let message = self.message.as_mut().expect("inflating a message");
        let used = inflate_into(message, data, self.max, room, &mut self.out)?;
        *mask_at += used;
        *remaining -= used as u64;
        let (done, last) = (*remaining == 0, *fin);
        message.compressed += used;
        if message.compressed > compressed_max {
            return Err(Violation::message_too_big);
        }
        if done {
            self.at = At::Header;
            if last {
                let mut message = self.message.take().expect("inflating a message");
                // The tail only flushes what the inflater holds (a match
                // at most): no room to respect.
                inflate_into(&mut message, &TAIL, self.max, usize::MAX, &mut self.out)?;
                let first = 0x80 | if message.started { 0 } else { message.opcode };
                push_header(&mut self.out, first, 0);
                give_back(message.z);
                crate::core::stats::bump(&self.stats.inflated_messages);
            }
        }
        Ok(used)
    }
}

/// Inflates `data` into frames of the message appended to `out`, until
/// `room` bytes were appended (zlib then stops taking input: what it
/// holds back is at most one match). Returns how much of `data` it took.
fn inflate_into(
    m: &mut Message,
    data: &[u8],
    max: usize,
    room: usize,
    out: &mut Vec<u8>,
) -> Result<usize, Violation> {
    let mut buf = [0u8; CHUNK];
    let mut taken = 0;
    let start = out.len();
    while !m.ended && out.len() - start < room {
        let (in0, out0) = (m.z.total_in(), m.z.total_out());
        let status =
            m.z.decompress(&data[taken..], &mut buf, FlushDecompress::Sync)
                .map_err(|_| Violation::invalid_deflate)?;
        let used = (m.z.total_in() - in0) as usize;
        let made = (m.z.total_out() - out0) as usize;
        taken += used;
        if made > 0 {
            m.inflated += made;
            if m.inflated > max {
                return Err(Violation::message_too_big);
            }
            push_header(out, if m.started { 0 } else { m.opcode }, made);
            m.started = true;
            out.extend_from_slice(&buf[..made]);
        }
        if status == Status::StreamEnd {
            m.ended = true;
        }
        if (taken == data.len() && made < buf.len()) || (used == 0 && made == 0) {
            break;
        }
    }
    if m.ended {
        // Past the compressor's final block nothing more is inflated.
        taken = data.len();
    }
    Ok(taken)
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(st) = this.state.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if st.out_len() > 0 {
                let n = st.out_len().min(buf.remaining());
                buf.put_slice(&st.out[st.out_at..st.out_at + n]);
                st.out_at += n;
                if st.out_at == st.out.len() {
                    st.out = Vec::new();
                    st.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = st.failed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            if !st.input.is_empty() {
                let before = st.input.len();
                match st.walk(cx) {
                    Err(e) => {
                        st.failed = Some(e);
                        if let Some(m) = st.message.take() {
                            give_back(m.z);
                        }
                        continue;
                    }
                    Ok(true) if st.out_len() == 0 => return Poll::Pending,
                    Ok(_) => {}
                }
                if st.out_len() > 0 || (st.input.len() != before && !st.input.is_empty()) {
                    continue;
                }
                // What is left is part of a header or of a payload: read on.
            }
            if st.eof {
                return Poll::Ready(Ok(()));
            }
            let read = READ_BUF.with(|rb| {
                let mut rb = rb.borrow_mut();
                let mut rbuf = ReadBuf::new(&mut rb[..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rbuf))?;
                let got = rbuf.filled();
                if got.is_empty() {
                    st.eof = true;
                } else {
                    st.input.extend_from_slice(got);
                }
                Poll::Ready(Ok::<(), io::Error>(()))
            });
            ready!(read)?;
        }
    }
}

crate::write_through!(Inflating);

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tungstenite::error::{Error as WsError, ProtocolError};
    use tungstenite::protocol::Role;
    use tungstenite::Message;

    /// `data` deflated as a client does it (sync flush, tail cut).
    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    /// What the WebSocket reader makes of `wire` (written `step` bytes at
    /// a time) through an inflating socket with limit `max`.
    async fn read_all(wire: Vec<u8>, step: usize, max: usize) -> Vec<Result<Message, String>> {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            for part in wire.chunks(step) {
                client.write_all(part).await.unwrap();
            }
            client
        });
        let mut ws = crate::core::ws_socket::WsSocket::from_raw_socket(
            Inflating::new(server, Some(max), Default::default()),
            Role::Server,
            Some(crate::core::listener::ws_config(max)),
        );
        let _client = writer.await.unwrap();
        let mut got = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), ws.next()).await
        {
            let failed = m.is_err();
            got.push(m.map_err(|e| match e {
                WsError::Io(io) => format!("{:?}", Violation::of_io(&io)),
                WsError::Protocol(ProtocolError::NonZeroReservedBits) => "rsv".into(),
                other => other.to_string(),
            }));
            if failed {
                break;
            }
        }
        got
    }

    fn text(s: &[u8]) -> Result<Message, String> {
        Ok(Message::Text(String::from_utf8(s.to_vec()).unwrap().into()))
    }

    #[tokio::test]
    async fn compressed_messages_whole_fragmented_or_split_arrive_inflated() {
        let a = br#"{"event":"chat","data":{"text":"hello hello hello"}}"#.repeat(50);
        let b = b"second message, plain".to_vec();
        let c = "ünïcödé ".repeat(3000).into_bytes();
        let zc = deflate(&c);
        let third = zc.len() / 3;
        let mut wire = frame(0xc1, &deflate(&a));
        wire.extend(frame(0x81, &b));
        // Fragmented, RSV1 on the first frame only, a ping in between.
        wire.extend(frame(0x41, &zc[..third]));
        wire.extend(frame(0x89, b"p"));
        wire.extend(frame(0x00, &zc[third..2 * third]));
        wire.extend(frame(0x80, &zc[2 * third..]));
        // An empty compressed message.
        wire.extend(frame(0xc1, &deflate(b"")));
        wire.extend(frame(0xc2, &deflate(&[7u8; 300])));
        for step in [1, 7, 1 << 20] {
            let got = read_all(wire.clone(), step, 1 << 20).await;
            assert_eq!(
                got,
                vec![
                    text(&a),
                    text(&b),
                    Ok(Message::Ping(b"p".to_vec().into())),
                    text(&c),
                    text(b""),
                    Ok(Message::Binary(vec![7u8; 300].into())),
                ],
                "written {step} bytes at a time"
            );
        }
    }

    #[tokio::test]
    async fn a_bomb_stops_at_the_limit_and_bad_data_is_refused() {
        // 64 MiB of zeros is about 64 KiB compressed.
        let bomb = deflate(&vec![0u8; 64 << 20]);
        let got = read_all(frame(0xc1, &bomb), 1 << 20, 128 * 1024).await;
        assert_eq!(got, vec![Err("Some(message_too_big)".to_string())]);
        // The same bomb, fragmented.
        let mut wire = frame(0x41, &bomb[..100]);
        wire.extend(frame(0x80, &bomb[100..]));
        let got = read_all(wire, 1 << 20, 128 * 1024).await;
        assert_eq!(got, vec![Err("Some(message_too_big)".to_string())]);
        // At the limit exactly: accepted.
        let got = read_all(frame(0xc1, &deflate(&[b'x'; 1000])), 64, 1000).await;
        assert_eq!(got, vec![text(&[b'x'; 1000])]);
        let got = read_all(frame(0xc1, &[0xff, 0xff, 0xff, 0xff]), 1 << 20, 1000).await;
        assert_eq!(got, vec![Err("Some(invalid_deflate)".to_string())]);
    }

    /// However compressible a message, what waits for the reader stays
    /// under a bound: inflating pauses when the output is full and goes on
    /// once the reader took it.
    #[test]
    fn output_waiting_for_the_reader_is_bounded() {
        let size = 32 << 20;
        let stats = Arc::new(Stats::default());
        let mut st = State::new(64 << 20, stats.clone());
        st.input = frame(0xc1, &deflate(&vec![0u8; size]));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (mut most, mut inflated, mut walks) = (0, 0, 0);
        while !st.input.is_empty() || st.out_len() > 0 {
            st.walk(&mut cx).unwrap();
            most = most.max(st.out_len());
            // What the reader takes: the frames' payloads.
            let mut at = 0;
            while let Some(h) = parse_header(&st.out[at..]) {
                inflated += h.payload as usize;
                at += h.len + h.payload as usize;
            }
            assert_eq!(at, st.out.len(), "whole frames only");
            st.out.clear();
            walks += 1;
        }
        assert_eq!(inflated, size);
        assert_eq!(
            stats
                .inflated_messages
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(
            most <= OUT_HIGH + CHUNK + 16,
            "{most} bytes waited for the reader"
        );
        assert!(walks > size / (OUT_HIGH + CHUNK), "{walks} walks");
    }

    /// A plain data frame inside a compressed message is refused, even
    /// before the message inflated to anything.
    #[tokio::test]
    async fn a_new_message_inside_a_compressed_one_is_refused() {
        let z = deflate(b"abcabcabc");
        let mut wire = frame(0x41, &z[..1]);
        wire.extend(frame(0x81, b"{}"));
        let got = read_all(wire, 1 << 20, 1 << 20).await;
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .as_ref()
                .is_err_and(|e| e.contains("continue") || e.contains("fragment")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn misplaced_rsv1_reaches_the_reader_as_it_came() {
        // RSV1 on a continuation frame, and on a control frame.
        let z = deflate(b"abcabcabc");
        let mut wire = frame(0x41, &z[..2]);
        wire.extend(frame(0xc0, &z[2..]));
        assert_eq!(
            read_all(wire, 1 << 20, 1 << 20).await,
            vec![Err("rsv".to_string())]
        );
        assert_eq!(
            read_all(frame(0xc9, b""), 1 << 20, 1 << 20).await,
            vec![Err("rsv".to_string())]
        );
        // Not negotiated: RSV1 is refused by the reader.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&frame(0xc1, &z)).await.unwrap();
        let mut ws = crate::core::ws_socket::WsSocket::from_raw_socket(
            Inflating::new(server, None, Default::default()),
            Role::Server,
            None,
        );
        assert!(matches!(
            ws.next().await,
            Some(Err(WsError::Protocol(ProtocolError::NonZeroReservedBits)))
        ));
    }
}
