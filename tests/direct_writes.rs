//! Direct writes (`Config::direct_writes`): a frame offered to a client
//! whose connection task has nothing to write goes to its socket from the
//! offering thread. Over real loopback TCP, with a peer that reads in fits
//! (so that the socket fills and writes are taken in part) and pings (so
//! that tungstenite writes pongs of its own between the frames), every
//! frame must arrive whole, once and in order, and every ping must be
//! answered; and a socket that closed must never be written again, though
//! its descriptor's number goes to the next connection. Linux only, as
//! direct writes are (`TryWrite::direct_fd`).
#![cfg(target_os = "linux")]

mod common;

use common::{masked_text, open_authenticated, read_until, Quiet, REQUEST};
use ignis_ws_native::core::config::Config;
use ignis_ws_native::core::log::{Logger, NullLog};
use ignis_ws_native::core::protocol::Frame;
use ignis_ws_native::core::server::Server;
use socket2::SockRef;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A server with direct writes on a current-thread runtime (as in
/// `js-thread` mode), driven by a thread of its own so that offers come
/// both from it and from other threads (the JS thread while the runtime's
/// waiter drives it).
struct Running {
    server: Arc<Server>,
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn start(backpressure_limit: usize) -> Running {
    let (tx, rx) = mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = Config {
                host: "127.0.0.1".into(),
                port: 0,
                backpressure_limit,
                direct_writes: true,
                ..Config::default()
            };
            let server = Server::start(cfg, Arc::new(Quiet), Logger::new(Arc::new(NullLog)), None)
                .await
                .unwrap();
            tx.send((Arc::new(server), tokio::runtime::Handle::current()))
                .unwrap();
            let _ = stopped.await;
        });
        rt.shutdown_background();
    });
    let (server, handle) = rx.recv().unwrap();
    Running {
        server,
        handle,
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// A masked client control frame.
fn masked_control(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = masked_text(payload);
    f[0] = 0x80 | opcode;
    f
}

/// Server frames parsed off a byte stream: (opcode, payload). Panics on
/// anything that is not a whole, unmasked, final frame of a known kind,
/// which is what bytes of two frames interleaved would look like.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<(u8, Vec<u8>)>) {
        self.buf.extend_from_slice(bytes);
        loop {
            let b = &self.buf;
            if b.len() < 2 {
                return;
            }
            assert_eq!(b[0] & 0xF0, 0x80, "not a final frame: {:02x?}", &b[..2]);
            let opcode = b[0] & 0x0F;
            assert!(
                matches!(opcode, 0x1 | 0x8 | 0x9 | 0xA),
                "opcode {opcode:#x}: frames interleaved"
            );
            assert_eq!(b[1] & 0x80, 0, "a server frame is never masked");
            let (len, at) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => return,
                n => (n as usize, 2),
            };
            if b.len() < at + len {
                return;
            }
            out.push((opcode, b[at..at + len].to_vec()));
            self.buf.drain(..at + len);
        }
    }
}

/// The `n` of a frame `{"event":"seq","data":{"from":"<from>","n":<n>,…}}`.
fn seq_of(payload: &[u8]) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("a text frame that is not JSON ({e}): frames interleaved"));
    if v["event"] != "seq" {
        return None;
    }
    let d = &v["data"];
    Some((d["from"].as_str()?.to_owned(), d["n"].as_u64()?))
}

fn seq_frame(from: &str, n: u64) -> Frame {
    // Sizes from a few bytes to 96 KiB: large ones fill the socket of a
    // peer that reads slowly, so that writes are taken in part.
    let pad = match n % 7 {
        _ if n == EACH - 1 => 1 << 20,
        0 => 96 * 1024,
        3 => 9_000,
        _ => (n as usize * 37) % 300,
    };
    Frame::from(format!(
        r#"{{"event":"seq","data":{{"from":"{from}","n":{n},"pad":"{}"}}}}"#,
        "x".repeat(pad)
    ))
}

/// Frames each producer sends.
const EACH: u64 = 1_500;
/// Pings the peer sends meanwhile, 2 ms apart.
const PINGS: u32 = 300;

#[test]
fn frames_arrive_whole_and_in_order_between_pongs_from_any_thread() {
    // Nothing dropped at the backpressure limit: every frame must arrive.
    let running = start(1 << 30);
    let addr = running.server.local_addr().unwrap();
    let mut socket = open_authenticated(addr, "direct");
    // Buffers of fixed, small sizes (no autotuning up to tens of MiB):
    // the server's socket fills within a burst, and its writes are taken
    // in part. The server's side of the connection is in this process.
    SockRef::from(&socket)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    // SAFETY: the server's socket outlives this borrow: the connection
    // stays open until the end of the test.
    let server_side = unsafe { BorrowedFd::borrow_raw(server_side_of(&socket)) };
    SockRef::from(&server_side)
        .set_send_buffer_size(16 * 1024)
        .unwrap();
    let mut pinger = socket.try_clone().unwrap();
    // Set when the pings, and the frames from the runtime, are all sent.
    let (pings_done, runtime_done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );

    // From another thread, one frame at a time: mostly to a socket whose
    // task has nothing to write.
    let from_thread = {
        let server = running.server.clone();
        let others_done = [pings_done.clone(), runtime_done.clone()];
        std::thread::spawn(move || {
            for n in 0..EACH {
                if n == EACH - 1 {
                    // The last of all, once the task has caught up: large
                    // enough to be written in part, its end left to the
                    // task with nothing after it (no frame, no pong) to
                    // push it out.
                    while !others_done.iter().all(|d| d.load(Relaxed)) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                server.broadcast(&seq_frame("thread", n), &[]);
                // In bursts (≈ 330 KiB each) faster than the peer reads,
                // with pauses in which it catches up: the socket fills
                // under direct writes, and empties for the next.
                if n % 20 == 19 {
                    std::thread::sleep(Duration::from_millis(15));
                }
            }
        })
    };
    // From a task on the server's own runtime, as the bus's fan-out is.
    let from_runtime = {
        let (server, done) = (running.server.clone(), runtime_done.clone());
        running.handle.spawn(async move {
            for n in 0..EACH {
                server.broadcast(&seq_frame("runtime", n), &[]);
                if n % 20 == 9 {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
            done.store(true, Relaxed);
        })
    };
    // Pings in between, each with a payload of its own, while frames are
    // being written: tungstenite answers each from inside a read.
    let pings = {
        let done = pings_done.clone();
        std::thread::spawn(move || {
            for i in 0..PINGS {
                pinger
                    .write_all(&masked_control(0x9, format!("p{i}").as_bytes()))
                    .unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            done.store(true, Relaxed);
        })
    };

    // A peer that reads in fits: small reads, and pauses long enough for
    // the socket to fill behind them.
    let mut frames = Frames::default();
    let mut got = Vec::new();
    let mut next = std::collections::HashMap::from([
        ("thread".to_owned(), 0u64),
        ("runtime".to_owned(), 0u64),
    ]);
    let mut pongs = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let until = Instant::now() + Duration::from_secs(30);
    let mut fit = 0usize;
    while next.values().any(|&n| n < EACH) {
        assert!(Instant::now() < until, "frames still missing: {next:?}");
        fit += 1;
        let want = [1, 700, 64 * 1024, 5_000][fit % 4];
        let n = socket
            .read(&mut buf[..want])
            .expect("the server keeps the connection");
        assert!(n > 0, "the server closed the connection");
        frames.push(&buf[..n], &mut got);
        for (opcode, payload) in got.drain(..) {
            match opcode {
                0xA => pongs.push(String::from_utf8(payload).unwrap()),
                0x1 => {
                    if let Some((from, n)) = seq_of(&payload) {
                        let expected = next.get_mut(&from).expect("a known producer");
                        assert_eq!(n, *expected, "{from}'s frames out of order or lost");
                        *expected += 1;
                    }
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        // Now and then a stall, for the socket to fill.
        if fit.is_multiple_of(256) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    from_thread.join().unwrap();
    running.handle.block_on(from_runtime).unwrap();
    pings.join().unwrap();
    // The pongs of pings sent last may still be on their way.
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while pongs.len() < PINGS as usize {
        let Ok(n) = socket.read(&mut buf) else { break };
        if n == 0 {
            break;
        }
        frames.push(&buf[..n], &mut got);
        pongs.extend(
            got.drain(..)
                .filter(|(op, _)| *op == 0xA)
                .map(|(_, p)| String::from_utf8(p).unwrap()),
        );
    }
    let expected: Vec<String> = (0..PINGS).map(|i| format!("p{i}")).collect();
    assert_eq!(pongs, expected, "every ping answered once, in order");
}

/// The id in a `connected` frame read off a fresh connection.
fn connected_id(s: &mut TcpStream) -> String {
    let mut frames = Frames::default();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        frames.push(&buf[..n], &mut got);
        for (_, p) in got.drain(..) {
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            if v["event"] == "connected" {
                return v["data"]["id"].as_str().unwrap().to_owned();
            }
        }
    }
}

#[test]
fn a_closed_socket_is_never_written_again_though_its_number_is_reused() {
    let running = start(1 << 20);
    let addr = running.server.local_addr().unwrap();
    for round in 0..40 {
        // A client that gets frame after frame, straight from a thread
        // that holds it (as a fan-out under way does) and keeps offering
        // after it is gone.
        let mut a = TcpStream::connect(addr).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        a.write_all(REQUEST).unwrap();
        read_until(&mut a, &mut [0u8; 2048], b"\r\n\r\n");
        a.write_all(&masked_text(
            br#"{"event":"authenticate","data":{"token":"gone"}}"#,
        ))
        .unwrap();
        let id = connected_id(&mut a);
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let client = running.server.hub().get(&id).expect("registered");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let frame = Frame::from(r#"{"event":"for-a","data":"not for anyone else"}"#);
                while !stop.load(Relaxed) {
                    client.offer(&frame);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(5));
        // Gone at once, without a close handshake (by a reset every other
        // round): the server's task ends and drops the socket, whose
        // number the next accept is likely to get.
        if round % 2 == 1 {
            // `SO_LINGER` of zero: closing sends a reset.
            SockRef::from(&a).set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(a);
        let mut b = TcpStream::connect(addr).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        b.write_all(REQUEST).unwrap();
        // The handshake's answer comes first and whole: a frame written to
        // a reused descriptor would land in front of it.
        let mut head = [0u8; 12];
        b.read_exact(&mut head).unwrap();
        assert_eq!(
            &head, b"HTTP/1.1 101",
            "round {round}: the handshake answer was not first"
        );
        read_until(&mut b, &mut [0u8; 2048], b"\r\n\r\n");
        b.write_all(&masked_text(
            br#"{"event":"authenticate","data":{"token":"next"}}"#,
        ))
        .unwrap();
        connected_id(&mut b);
        // Then nothing meant for the closed client.
        b.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        let mut frames = Frames::default();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = b.read(&mut buf) {
            if n == 0 {
                break;
            }
            frames.push(&buf[..n], &mut got);
        }
        for (_, p) in &got {
            assert!(
                !String::from_utf8_lossy(p).contains("for-a"),
                "round {round}: a frame for the closed client reached the next one"
            );
        }
        stop.store(true, Relaxed);
        sender.join().unwrap();
    }
}

/// The descriptor, in this process, of the server's end of `client`.
fn server_side_of(client: &TcpStream) -> i32 {
    use std::os::fd::FromRawFd;
    let me = client.local_addr().unwrap();
    (3..4096)
        .find(|&fd| {
            // SAFETY: borrowed only (never dropped, so never closed); a
            // descriptor that is not a socket just fails `peer_addr`.
            let s = std::mem::ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
            s.peer_addr().is_ok_and(|p| p == me)
        })
        .expect("the server's end of the connection")
}
