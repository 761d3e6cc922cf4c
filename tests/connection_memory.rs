//! The heap an idle authenticated connection holds on the server, counted
//! by a global allocator wrapped around the system's. Every idle socket pays
//! it, so a few bytes more here are paid tens of thousands of times; the
//! bound below is what docs/PERFORMANCE.md accounts for, byte by byte, with
//! a little room.
//!
//! The clients are plain blocking sockets whose bytes are all prepared
//! before counting starts, so what is counted is the server's alone. Each
//! authenticates as a user of its own and joins the default rooms. The
//! figure is within a few bytes in debug and release builds.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use ignis_ws_native::core::config::Config;
use ignis_ws_native::core::handlers::{AppEvent, AuthOutcome, Handlers};
use ignis_ws_native::core::log::{Logger, NullLog};
use ignis_ws_native::core::server::Server;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

struct Counting;

/// Bytes allocated and not yet freed, by anyone in this process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Accepts every token as its own user and keeps no event.
struct Quiet;

impl Handlers for Quiet {
    fn authenticate(&self, _: &str, data: &str) -> BoxFuture<'static, AuthOutcome> {
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        let user = data["token"].as_str().map(|t| format!("user-{t}"));
        assert!(user.is_some(), "no token in {data}");
        async move { AuthOutcome::Accepted { user_id: user } }.boxed()
    }
    fn deliver(&self, _: &mut Vec<AppEvent>) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
}

const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// A masked client text frame (payload under 126 bytes).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads into `buf` until `needle` has arrived (no allocation).
fn read_until(s: &mut TcpStream, buf: &mut [u8; 2048], needle: &[u8]) {
    let mut at = 0;
    loop {
        let n = s.read(&mut buf[at..]).expect("server answers");
        assert!(n > 0, "server closed the socket");
        at += n;
        if buf[..at].windows(needle.len()).any(|w| w == needle) {
            return;
        }
    }
}

/// Opens `frames.len()` connections and authenticates each with its frame.
fn open(addr: std::net::SocketAddr, frames: &[Vec<u8>], into: &mut Vec<TcpStream>) {
    let mut buf = [0u8; 2048];
    for frame in frames {
        let mut s = TcpStream::connect(addr).expect("connect");
        // A server that never answers fails the test rather than hangs it.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(REQUEST).unwrap();
        read_until(&mut s, &mut buf, b"\r\n\r\n");
        s.write_all(frame).unwrap();
        read_until(&mut s, &mut buf, b"connected");
        into.push(s);
    }
}

#[test]
fn an_idle_authenticated_connection_holds_at_most_2_700_bytes_of_heap() {
    const WARM: usize = 100;
    const N: usize = 2000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = Config {
        host: "127.0.0.1".into(),
        port: 0,
        ..Config::default()
    };
    let server = rt
        .block_on(Server::start(
            cfg,
            Arc::new(Quiet),
            Logger::new(Arc::new(NullLog)),
            None,
        ))
        .unwrap();
    let addr = server.local_addr().expect("listening");
    let frames: Vec<Vec<u8>> = (0..WARM + N)
        .map(|i| {
            masked_text(
                format!(r#"{{"event":"authenticate","data":{{"token":"t{i}"}}}}"#).as_bytes(),
            )
        })
        .collect();
    let mut sockets = Vec::with_capacity(WARM + N);
    // First uses (thread-locals, buffers per thread, the indexes' first
    // tables) are not per connection.
    open(addr, &frames[..WARM], &mut sockets);
    std::thread::sleep(Duration::from_millis(200));

    let before = LIVE.load(Relaxed);
    open(addr, &frames[WARM..], &mut sockets);
    std::thread::sleep(Duration::from_millis(300));
    let per = (LIVE.load(Relaxed) - before) / N as isize;
    eprintln!("heap per idle authenticated connection: {per} bytes");
    assert!(per > 1024, "{per} bytes: the count missed the connections");
    assert!(
        per <= 2700,
        "an idle authenticated connection holds {per} bytes of heap"
    );
    drop(sockets);
    rt.shutdown_background();
}
