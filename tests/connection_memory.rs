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

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
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

/// Opens `frames.len()` connections and authenticates each with its frame.
fn open(addr: std::net::SocketAddr, frames: &[Vec<u8>], into: &mut Vec<TcpStream>) {
    let mut buf = [0u8; 2048];
    for frame in frames {
        into.push(common::open_with(addr, frame, &mut buf));
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
    let server = common::quiet_server(&rt);
    let addr = server.local_addr().expect("listening");
    let frames: Vec<Vec<u8>> = (0..WARM + N)
        .map(|i| {
            common::masked_text(
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
