//! Many WebSocket clients speaking the Ignis protocol, for benchmarks.
//!
//! `ignis-ws-loadgen idle --url ws://127.0.0.1:3000/ws --clients 10000 --hold 10`
//!   connects and authenticates `clients` sockets (at most `--concurrency`
//!   handshakes at a time), prints one JSON line with the connect+auth time,
//!   then holds them open `--hold` seconds so the server's memory can be read.
//!
//! `ignis-ws-loadgen receive --url … --clients 1000 --room bench --expect 2000`
//!   connects, authenticates and joins `room`, prints `READY`, then counts
//!   frames of event `--event` until every client has `--expect` of them;
//!   prints deliveries/s and the time from the first to the last delivery.
//!
//! Its own CPU time is printed too, so a reader can see it was not the
//! bottleneck.

use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    mode: String,
    url: String,
    clients: usize,
    concurrency: usize,
    hold: u64,
    room: String,
    event: String,
    expect: u64,
}

fn args() -> Args {
    let mut a = Args {
        mode: String::new(),
        url: "ws://127.0.0.1:3000/ws".into(),
        clients: 1000,
        concurrency: 200,
        hold: 5,
        room: "bench".into(),
        event: "bench".into(),
        expect: 1,
    };
    let mut it = std::env::args().skip(1);
    a.mode = it.next().unwrap_or_default();
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--url" => a.url = v,
            "--clients" => a.clients = v.parse().expect("--clients"),
            "--concurrency" => a.concurrency = v.parse().expect("--concurrency"),
            "--hold" => a.hold = v.parse().expect("--hold"),
            "--room" => a.room = v,
            "--event" => a.event = v,
            "--expect" => a.expect = v.parse().expect("--expect"),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and authenticates one client; returns the socket after `connected`.
async fn connect(url: &str, i: usize) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let auth = format!(r#"{{"event":"authenticate","data":{{"token":"t{i}","userId":"u{i}"}}}}"#);
    ws.send(Message::Text(auth.into())).await.expect("send");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains(r#""event":"connected""#) => {
                return ws
            }
            Some(Ok(_)) => continue,
            other => panic!("no connected frame: {other:?}"),
        }
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let gate = Arc::new(Semaphore::new(a.concurrency));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let url = a.url.clone();
        let gate = gate.clone();
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("semaphore");
            connect(&url, i).await
        }));
    }
    let mut sockets = Vec::with_capacity(a.clients);
    for h in handles {
        sockets.push(h.await.expect("client task"));
    }
    let connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
    match a.mode.as_str() {
        "idle" => {
            println!(
                r#"{{"mode":"idle","clients":{},"connect_auth_ms":{connect_ms:.1},"per_second":{:.0},"loadgen_cpu_s":{:.2}}}"#,
                a.clients,
                a.clients as f64 / (connect_ms / 1000.0),
                cpu_seconds()
            );
            tokio::time::sleep(Duration::from_secs(a.hold)).await;
        }
        "receive" => {
            let join = format!(r#"{{"event":"join","data":{{"rooms":["{}"]}}}}"#, a.room);
            for ws in sockets.iter_mut() {
                ws.send(Message::Text(join.clone().into()))
                    .await
                    .expect("join");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            println!("READY");
            let total = Arc::new(AtomicU64::new(0));
            let first = Arc::new(std::sync::OnceLock::<Instant>::new());
            let needle = format!(r#""event":"{}""#, a.event);
            let cpu0 = cpu_seconds();
            let mut tasks = Vec::new();
            for mut ws in sockets {
                let (total, first, needle, expect) =
                    (total.clone(), first.clone(), needle.clone(), a.expect);
                tasks.push(tokio::spawn(async move {
                    let mut got = 0u64;
                    while got < expect {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) if t.as_str().contains(&needle) => {
                                first.get_or_init(Instant::now);
                                got += 1;
                                total.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                    }
                    ws
                }));
            }
            let mut kept = Vec::new();
            for t in tasks {
                kept.push(t.await.expect("receiver"));
            }
            let span = first
                .get()
                .map(|f| f.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            let n = total.load(Ordering::Relaxed);
            println!(
                r#"{{"mode":"receive","clients":{},"deliveries":{n},"first_to_last_ms":{:.1},"deliveries_per_s":{:.0},"loadgen_cpu_s":{:.2}}}"#,
                a.clients,
                span * 1000.0,
                n as f64 / span.max(1e-9),
                cpu_seconds() - cpu0
            );
        }
        other => panic!("mode must be idle or receive, got {other:?}"),
    }
}
