//! A connection whose queue is refilled as fast as its socket drains must
//! still let the other tasks of its thread run, and soon: each write takes
//! a unit of the task's budget, and the loop also yields by itself after a
//! few turns that each wrote two batches whole, well before the budget is
//! spent.
//! On a current-thread runtime (the `js-thread` mode) a task that never
//! yielded would stop every other socket, timer and handler of the server.
//!
//! The peer and the producer are plain threads, off the runtime: a reader
//! on the runtime would itself stop the writes once the socket filled.

mod common;

use common::{open_authenticated, quiet_server};
use ignis_ws_native::core::protocol::Frame;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_queue_refilled_as_fast_as_it_is_written_leaves_the_thread_to_others() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = Arc::new(quiet_server(&rt));
    let addr = server.local_addr().expect("listening");
    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));

    // The socket is served by the runtime, so the handshake runs in
    // `block_on` while this thread's client waits for it in another.
    let client = std::thread::spawn(move || open_authenticated(addr, "busy"));
    let mut socket = rt.block_on(async {
        loop {
            if client.is_finished() {
                break client.join().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    // A peer that reads everything at once.
    let reader = {
        let (stop, read) = (stop.clone(), read.clone());
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while !stop.load(Relaxed) {
                if let Ok(n) = socket.read(&mut buf) {
                    read.fetch_add(n as u64, Relaxed);
                }
            }
        })
    };
    // A producer that keeps the queue filled for 2 s, one frame at a
    // time: about as fast as the socket drains it, so the queue is seldom
    // found empty and the socket (read at once) seldom full, either of
    // which would end the task's turn anyway.
    let producer = {
        let server = server.clone();
        std::thread::spawn(move || {
            let frame = Frame::from(r#"{"event":"tick","data":1}"#);
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                server.broadcast(&frame, &[]);
            }
        })
    };

    // Meanwhile this thread's own task takes turns: the longest wait for
    // one is how long the busy socket kept the thread. A task that never
    // yielded would hold it until the producer stopped.
    let longest = rt.block_on(async {
        let mut longest = Duration::ZERO;
        while !producer.is_finished() {
            let asked = Instant::now();
            tokio::task::yield_now().await;
            longest = longest.max(asked.elapsed());
        }
        longest
    });
    stop.store(true, Relaxed);
    let written = read.load(Relaxed);
    eprintln!("longest wait for a turn: {longest:?}; {written} bytes written");
    assert!(
        written > 1 << 20,
        "the socket was never busy: {written} bytes"
    );
    assert!(
        longest < Duration::from_millis(100),
        "the thread's other tasks waited {longest:?} behind a busy socket"
    );
    producer.join().unwrap();
    reader.join().unwrap();
    rt.shutdown_background();
}
