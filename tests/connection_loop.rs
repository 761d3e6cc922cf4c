//! The connection loop with a peer that stops reading, driven through an
//! in-memory socket (`tokio::io::duplex`) on tokio's paused clock: close
//! requests, `sendTimeout`, the idle check and `shutdown()` must all take
//! effect on schedule while a write cannot progress, and a ping heard
//! meanwhile is answered once the peer reads again. Last, over loopback TCP
//! on the real clock: a peer's messages are read while frames keep being
//! queued for it.

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use ignis_ws_native::core::config::Config;
use ignis_ws_native::core::handlers::{AppEvent, AuthOutcome, Handlers};
use ignis_ws_native::core::log::{Logger, NullLog};
use ignis_ws_native::core::protocol::Frame;
use ignis_ws_native::core::server::Server;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Default)]
struct Fake {
    events: Mutex<Vec<AppEvent>>,
}

impl Handlers for Fake {
    fn authenticate(&self, _: &str, _: &str) -> BoxFuture<'static, AuthOutcome> {
        async {
            AuthOutcome::Accepted {
                user_id: Some("u".into()),
            }
        }
        .boxed()
    }
    fn wants_messages(&self) -> bool {
        true
    }
    fn deliver(&self, events: &mut Vec<AppEvent>) -> BoxFuture<'static, ()> {
        self.events.lock().extend(events.drain(..));
        async {}.boxed()
    }
}

impl Fake {
    fn disconnected(&self) -> usize {
        self.events
            .lock()
            .iter()
            .filter(|e| matches!(e, AppEvent::Disconnected { .. }))
            .count()
    }
}

/// Settings that leave only the mechanism under test: no heartbeat sweep
/// (it reads the wall clock), no idle check, no send timeout.
fn quiet() -> Config {
    Config {
        listen: false,
        heartbeat_interval: Duration::ZERO,
        idle_timeout: Duration::ZERO,
        send_timeout: Duration::ZERO,
        ..Config::default()
    }
}

/// `quiet()` with a send timeout.
fn with_send_timeout(send_timeout: Duration) -> Config {
    Config {
        send_timeout,
        ..quiet()
    }
}

/// Authenticates a client and returns its id (from `connected`).
async fn authenticate<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::Text(
        r#"{"event":"authenticate","data":{"token":"t"}}"#.into(),
    ))
    .await
    .unwrap();
    loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(v["event"], "connected");
            return v["data"]["id"].as_str().unwrap().to_string();
        }
    }
}

/// A server, and a client on a 4 KiB in-memory socket that authenticated
/// and then stopped reading while 512 KiB were sent to it.
async fn stalled(cfg: Config) -> (Server, Arc<Fake>, String, WebSocketStream<DuplexStream>) {
    let fake = Arc::new(Fake::default());
    let server = Server::start(cfg, fake.clone(), Logger::new(Arc::new(NullLog)), None)
        .await
        .unwrap();
    let (client_side, server_side) = tokio::io::duplex(4096);
    server.serve_io(server_side, "127.0.0.1:40000".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async("ws://test/ws", client_side)
        .await
        .unwrap();
    let id = authenticate(&mut ws).await;
    let payload = "x".repeat(1024);
    let frame = Frame::from(format!(r#"{{"event":"fill","data":"{payload}"}}"#).as_str());
    for _ in 0..512 {
        server.send_to_client(&id, &frame);
    }
    // Let the connection fill the socket and block on it.
    sleep(Duration::from_millis(50)).await;
    assert!(
        server.hub().has_client(&id),
        "still connected while stalled"
    );
    (server, fake, id, ws)
}

#[tokio::test(start_paused = true)]
async fn a_close_request_takes_effect_while_a_write_is_stalled() {
    let (server, fake, id, _ws) = stalled(quiet()).await;
    let grace = Config::default().shutdown_grace;
    server
        .hub()
        .get(&id)
        .unwrap()
        .request_close(4002, "Heartbeat timeout");
    sleep(Duration::from_millis(10)).await;
    assert!(!server.hub().has_client(&id), "removed at once");
    assert_eq!(fake.disconnected(), 1);
    // The close frame cannot be written: the TCP connection is dropped
    // once the close handshake's grace is over.
    sleep(grace - Duration::from_millis(100)).await;
    assert_eq!(server.live_connections(), 1, "still trying the close frame");
    sleep(Duration::from_millis(200)).await;
    assert_eq!(server.live_connections(), 0, "dropped after the grace");
}

#[tokio::test(start_paused = true)]
async fn a_write_stalled_for_send_timeout_drops_the_connection() {
    let send_timeout = Duration::from_secs(5);
    let (server, fake, id, _ws) = stalled(with_send_timeout(send_timeout)).await;
    sleep(send_timeout - Duration::from_millis(200)).await;
    assert!(server.hub().has_client(&id), "not before sendTimeout");
    sleep(Duration::from_millis(300)).await;
    assert!(!server.hub().has_client(&id), "gone after sendTimeout");
    assert_eq!(server.live_connections(), 0);
    assert_eq!(fake.disconnected(), 1);
    assert_eq!(
        server
            .stats()
            .send_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn send_timeout_counts_from_the_last_progress_made_inside_a_stall() {
    let send_timeout = Duration::from_secs(5);
    let (server, _fake, id, mut ws) = stalled(with_send_timeout(send_timeout)).await;
    // Two seconds into the stall the peer reads once: the write under way
    // moves on, fills the socket again and stalls for good.
    sleep(Duration::from_secs(2)).await;
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    sleep(Duration::from_millis(50)).await;
    let progressed = Instant::now();
    sleep(send_timeout - Duration::from_millis(300)).await;
    assert!(server.hub().has_client(&id), "the read was progress");
    // Dropped a sendTimeout after that progress, not a sendTimeout after
    // the timer that first noticed it.
    sleep(Duration::from_millis(600)).await;
    assert!(
        !server.hub().has_client(&id),
        "still there {:?} after the last progress",
        progressed.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_keeps_reading_slowly_is_not_timed_out() {
    let send_timeout = Duration::from_secs(2);
    let (server, _fake, id, mut ws) = stalled(with_send_timeout(send_timeout)).await;
    // Four frames a second (about one read of the 4 KiB socket a second):
    // always within sendTimeout of the last progress.
    let started = Instant::now();
    let mut read = 0;
    while started.elapsed() < Duration::from_secs(10) {
        sleep(Duration::from_millis(250)).await;
        match ws.next().await {
            Some(Ok(Message::Text(_))) => read += 1,
            other => panic!("read {read} then {other:?}"),
        }
    }
    assert!(read >= 39, "read {read}");
    assert!(server.hub().has_client(&id), "a slow reader is kept");
}

#[tokio::test(start_paused = true)]
async fn the_idle_check_closes_a_silent_peer_whose_writes_are_stalled() {
    let idle = Duration::from_secs(10);
    let (server, fake, id, _ws) = stalled(Config {
        idle_timeout: idle,
        ..quiet()
    })
    .await;
    // Checked every idle/2: closed after two quiet checks, so between
    // idle and 1.5 x idle after the last frame heard.
    sleep(idle - Duration::from_millis(500)).await;
    assert!(server.hub().has_client(&id), "not before two quiet checks");
    sleep(idle / 2 + Duration::from_millis(600)).await;
    assert!(!server.hub().has_client(&id), "closed by the idle check");
    assert_eq!(fake.disconnected(), 1);
}

/// tungstenite answers a ping itself, but cannot write the pong while the
/// socket is backed up; once the peer reads again, the pong must follow
/// the frames queued before it, without the peer having to send anything
/// more.
#[tokio::test(start_paused = true)]
async fn a_ping_heard_while_a_write_is_stalled_is_answered_once_the_peer_reads() {
    let (server, _fake, id, mut ws) = stalled(quiet()).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    sleep(Duration::from_millis(50)).await;
    // More frames while the socket is still backed up.
    let frame = Frame::from(r#"{"event":"more","data":1}"#);
    for _ in 0..8 {
        server.send_to_client(&id, &frame);
    }
    sleep(Duration::from_millis(50)).await;
    let mut frames = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Ok(Some(Ok(_))) => frames += 1,
            other => panic!("no pong after {frames} frames: {other:?}"),
        }
    }
    assert!(frames > 0, "the frames queued before the ping came first");
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_within_its_grace_with_a_stalled_reader() {
    let (server, fake, _id, _ws) = stalled(quiet()).await;
    let grace = Config::default().shutdown_grace;
    let started = Instant::now();
    server.shutdown().await;
    let took = started.elapsed();
    assert!(took <= grace + Duration::from_millis(600), "took {took:?}");
    assert_eq!(server.live_connections(), 0);
    assert_eq!(fake.disconnected(), 1);
}

/// While frames keep being queued for a client, its task is woken by them
/// over and over; the peer's own messages must still be read as they come
/// (the socket's read side marks the client when it wakes the task, and the
/// socket is read after each write). Over loopback TCP, so that the
/// readiness comes from tokio's reactor as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_read_while_frames_keep_being_queued_for_it() {
    const SENT: usize = 200;
    let fake = Arc::new(Fake::default());
    let server = Arc::new(
        Server::start(quiet(), fake.clone(), Logger::new(Arc::new(NullLog)), None)
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client_side, accepted) =
        tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let (server_side, remote) = accepted.unwrap();
    server.serve_io(server_side, remote);
    let (mut ws, _) = tokio_tungstenite::client_async("ws://test/ws", client_side.unwrap())
        .await
        .unwrap();
    let id = authenticate(&mut ws).await;
    let (mut tx, mut rx) = ws.split();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = tokio::spawn({
        let (server, id, stop) = (server.clone(), id.clone(), stop.clone());
        async move {
            let frame = Frame::from(r#"{"event":"tick","data":"xxxxxxxxxxxxxxxx"}"#);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..16 {
                    server.send_to_client(&id, &frame);
                }
                tokio::task::yield_now().await;
            }
        }
    });
    let reader = tokio::spawn(async move {
        let mut frames = 0usize;
        while let Some(Ok(_)) = rx.next().await {
            frames += 1;
        }
        frames
    });
    for i in 0..SENT {
        tx.send(Message::Text(
            format!(r#"{{"event":"chat","data":{{"i":{i}}}}}"#).into(),
        ))
        .await
        .unwrap();
        sleep(Duration::from_millis(1)).await;
    }
    let messages = || {
        fake.events
            .lock()
            .iter()
            .filter(|e| matches!(e, AppEvent::Message { .. }))
            .count()
    };
    let until = Instant::now() + Duration::from_secs(10);
    while messages() < SENT && Instant::now() < until {
        sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.await.unwrap();
    assert_eq!(messages(), SENT, "every message the peer sent was read");
    let _ = tx.close().await;
    let frames = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the connection closes")
        .unwrap();
    assert!(frames > SENT, "frames kept flowing to the peer: {frames}");
}
