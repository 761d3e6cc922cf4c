//! Many WebSocket clients for the benchmarks, speaking the Ignis protocol or
//! (`--proto socketio`) Socket.IO 4 over its WebSocket transport.
//!
//! Modes (every mode prints one JSON line with its results and its own CPU
//! seconds, so a reader can see the load generator was not the bottleneck):
//!
//! `idle --clients 10000 --hold 3`
//!   connects and authenticates `clients` sockets (at most `--concurrency`
//!   handshakes at a time), reports the connect+auth time, then holds them
//!   open `--hold` seconds so the server's memory can be read.
//!
//! `receive --clients 1000 --room bench --event bench --expect 2000`
//!   connects, authenticates, joins `room`, waits `--settle` ms (joins are
//!   not acknowledged), prints `READY`, then counts frames
//!   of `event` until every client has `expect` of them (or `--timeout`
//!   seconds pass). Reports deliveries/s, the time from the first to the last
//!   delivery and, when frames carry `"t":<ms since the epoch>`, latency
//!   percentiles. With `--send N --rate R`, the first client also sends N
//!   `--send-event` frames (`{room, t}`) at R per second after READY.
//!   `--latency 0` skips the stamps (a burst reports no latency): reading
//!   the clock and parsing `t` for every frame was a fifth of the load
//!   generator's CPU in a burst, taken from the server on a 2-core machine.
//!
//!   `--deflate 1` offers permessage-deflate (asserting the server takes
//!   it), inflates what comes compressed, and reports the bytes the
//!   server put on the wire per delivery (`receive` without `--send`).
//!
//! `echo --clients 50 --duration 5 [--message echo|order]`
//!   closed loop: each client sends `echo` and waits for the server's `echo`
//!   answer before sending again; reports round trips/s and percentiles.
//!   With `--message order` it sends an order of about 1.5 KiB instead and
//!   waits for the `receipt` (about 1 KiB) the server's handler answers.

mod raw;

use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Clone)]
struct Args {
    mode: String,
    url: String,
    proto: Proto,
    clients: usize,
    concurrency: usize,
    hold: u64,
    room: String,
    event: String,
    expect: u64,
    timeout: u64,
    send: u64,
    rate: f64,
    send_event: String,
    duration: f64,
    settle: u64,
    /// What the closed loop sends: `echo`, or `order` (a 1–2 KiB order the
    /// server's handler validates and answers with a `receipt`).
    message: String,
    /// Whether `receive` reads the `t` stamps of the frames for latency.
    latency: bool,
    /// Offer permessage-deflate (`receive` only).
    deflate: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Ignis,
    SocketIo,
}

impl Proto {
    fn frame(self, event: &str, data: &str) -> String {
        match self {
            Proto::Ignis => format!(r#"{{"event":"{event}","data":{data}}}"#),
            Proto::SocketIo => format!(r#"42["{event}",{data}]"#),
        }
    }

    /// What a frame of `event` contains, to recognise it without parsing.
    fn needle(self, event: &str) -> String {
        match self {
            Proto::Ignis => format!(r#""event":"{event}""#),
            Proto::SocketIo => format!(r#"42["{event}""#),
        }
    }
}

fn args() -> Args {
    let mut a = Args {
        mode: String::new(),
        url: "ws://127.0.0.1:3000/ws".into(),
        proto: Proto::Ignis,
        clients: 1000,
        concurrency: 200,
        hold: 5,
        room: "bench".into(),
        event: "bench".into(),
        expect: 1,
        timeout: 60,
        send: 0,
        rate: 100.0,
        send_event: "chat".into(),
        duration: 5.0,
        settle: 1500,
        message: "echo".into(),
        latency: true,
        deflate: false,
    };
    let mut it = std::env::args().skip(1);
    a.mode = it.next().unwrap_or_default();
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--url" => a.url = v,
            "--proto" => {
                a.proto = match v.as_str() {
                    "ignis" => Proto::Ignis,
                    "socketio" => Proto::SocketIo,
                    other => panic!("--proto ignis|socketio, got {other}"),
                }
            }
            "--clients" => a.clients = v.parse().expect("--clients"),
            "--concurrency" => a.concurrency = v.parse().expect("--concurrency"),
            "--hold" => a.hold = v.parse().expect("--hold"),
            "--room" => a.room = v,
            "--event" => a.event = v,
            "--expect" => a.expect = v.parse().expect("--expect"),
            "--timeout" => a.timeout = v.parse().expect("--timeout"),
            "--send" => a.send = v.parse().expect("--send"),
            "--rate" => a.rate = v.parse().expect("--rate"),
            "--send-event" => a.send_event = v,
            "--duration" => a.duration = v.parse().expect("--duration"),
            "--settle" => a.settle = v.parse().expect("--settle"),
            "--latency" => a.latency = v != "0",
            "--deflate" => a.deflate = v != "0",
            "--message" => {
                assert!(v == "echo" || v == "order", "--message echo|order, got {v}");
                a.message = v
            }
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
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(11) + field(12)) / 100.0
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Whether `text` is a frame of the event `needle` names. Every contender
/// puts the event first, so the search starts with a look at the start.
fn is_event(text: &[u8], needle: &[u8]) -> bool {
    text.get(1..1 + needle.len()) == Some(needle)
        || text.get(..needle.len()) == Some(needle)
        || text.windows(needle.len()).any(|w| w == needle)
}

/// The number after `"t":` in a frame, if any.
fn stamp(text: &str) -> Option<f64> {
    let at = text.find(r#""t":"#)? + 4;
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// An order of 12 lines, about 1.5 KiB, different for every client and
/// round (the handler prices every line, so the numbers vary).
fn order_json(client: usize, k: u64) -> String {
    let mut items = String::new();
    for n in 0..12u64 {
        if n > 0 {
            items.push(',');
        }
        let sku = (client as u64 * 31 + k * 7 + n) % 10_000;
        items.push_str(&format!(
            r#"{{"sku":"SKU-{sku:04}","name":"Stainless steel widget, model {n}","qty":{},"price":{}.{:02},"tags":["hardware","steel","in-stock"]}}"#,
            1 + (k + n) % 5,
            3 + n * 2,
            (k * 13 + n) % 100
        ));
    }
    format!(
        r#"{{"id":"ord-{client}-{k}","customer":{{"id":"cust-{client}","name":"Customer number {client}","email":"customer{client}@example.com","tier":"gold"}},"currency":"EUR","items":[{items}],"note":"Please leave the parcel at the reception desk if nobody answers the door.","createdAt":"2026-11-29T12:00:00.000Z"}}"#
    )
}

fn percentiles(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return r#""p50_ms":null,"p99_ms":null,"max_ms":null"#.into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        r#""p50_ms":{:.3},"p99_ms":{:.3},"max_ms":{:.3}"#,
        p(0.5),
        p(0.99),
        v[v.len() - 1]
    )
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and authenticates one client; returns the socket once the
/// server said it is in.
async fn connect(a: &Args, i: usize) -> Ws {
    // Small buffers: tungstenite's default read buffer is 128 KiB per
    // socket, and faulting in 1.3 GB for 10 000 clients would make the load
    // generator, not the server, the slow part of scenario (a).
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(a.url.as_str(), Some(config), true)
            .await
            .expect("connect");
    let auth = format!(r#"{{"token":"t{i}","userId":"u{i}"}}"#);
    if a.proto == Proto::Ignis {
        ws.send(Message::Text(a.proto.frame("authenticate", &auth).into()))
            .await
            .expect("send");
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let t = t.as_str();
                match a.proto {
                    Proto::Ignis if t.contains(r#""event":"connected""#) => return ws,
                    // Engine.IO open packet, then the namespace connect with auth.
                    Proto::SocketIo if t.starts_with("0{") => ws
                        .send(Message::Text(format!("40{auth}").into()))
                        .await
                        .expect("send"),
                    Proto::SocketIo if t.starts_with("40") => return ws,
                    Proto::SocketIo if t.starts_with("44") => panic!("refused: {t}"),
                    _ => continue,
                }
            }
            Some(Ok(_)) => continue,
            other => panic!("not authenticated: {other:?}"),
        }
    }
}

/// Reads the next text frame, answering Engine.IO pings on the way.
async fn next_text(ws: &mut Ws, proto: Proto) -> Option<Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if proto == Proto::SocketIo && t.as_str() == "2" {
                    let _ = ws.send(Message::Text("3".into())).await;
                    continue;
                }
                return Some(t);
            }
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

async fn connect_all(a: &Args) -> (Vec<Ws>, f64) {
    let gate = Arc::new(Semaphore::new(a.concurrency));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let (a, gate) = (a.clone(), gate.clone());
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("semaphore");
            connect(&a, i).await
        }));
    }
    let mut sockets = Vec::with_capacity(a.clients);
    for h in handles {
        sockets.push(h.await.expect("client task"));
    }
    (sockets, t0.elapsed().as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let a = args();
    if a.deflate {
        assert!(
            a.send == 0,
            "--deflate 1 is for idle and receive without --send"
        );
        let t0 = Instant::now();
        let readers = connect_all_deflate(&a).await;
        match a.mode.as_str() {
            "idle" => idle(&a, t0.elapsed().as_secs_f64() * 1000.0).await,
            "receive" => receive(&a, Receivers::Raw(readers)).await,
            other => panic!("--deflate 1 is for idle and receive, got {other:?}"),
        }
        return;
    }
    let (mut sockets, connect_ms) = connect_all(&a).await;
    match a.mode.as_str() {
        "idle" => idle(&a, connect_ms).await,
        "receive" => receive(&a, Receivers::Ws(sockets)).await,
        "echo" => echo(&a, std::mem::take(&mut sockets)).await,
        other => panic!("mode must be idle, receive or echo, got {other:?}"),
    }
}

/// Reports the connect+auth time, then holds the sockets open.
async fn idle(a: &Args, connect_ms: f64) {
    println!(
        r#"{{"mode":"idle","clients":{},"connect_auth_ms":{connect_ms:.1},"per_second":{:.0},"loadgen_cpu_s":{:.2}}}"#,
        a.clients,
        a.clients as f64 / (connect_ms / 1000.0),
        cpu_seconds()
    );
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
}

/// Clients connected with permessage-deflate, authenticated, read raw.
async fn connect_all_deflate(a: &Args) -> Vec<raw::Reader> {
    assert!(
        a.proto == Proto::Ignis,
        "--deflate 1 speaks the Ignis protocol"
    );
    let gate = Arc::new(Semaphore::new(a.concurrency));
    let mut handles = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let (a, gate) = (a.clone(), gate.clone());
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("semaphore");
            let mut reader = raw::Reader::connect_deflate(&a.url).await;
            let auth = format!(r#"{{"token":"t{i}","userId":"u{i}"}}"#);
            reader
                .send(0x1, a.proto.frame("authenticate", &auth).as_bytes())
                .await;
            let connected = a.proto.needle("connected");
            let mut ok = false;
            reader
                .run(false, |text| {
                    ok = is_event(text, connected.as_bytes());
                    if ok {
                        raw::Next::Stop
                    } else {
                        raw::Next::More
                    }
                })
                .await;
            assert!(ok, "not authenticated");
            reader
        }));
    }
    let mut readers = Vec::with_capacity(a.clients);
    for h in handles {
        readers.push(h.await.expect("client task"));
    }
    readers
}

/// The receivers, before they join.
enum Receivers {
    Ws(Vec<Ws>),
    Raw(Vec<raw::Reader>),
}

async fn receive(a: &Args, receivers: Receivers) {
    let join = a
        .proto
        .frame("join", &format!(r#"{{"rooms":["{}"]}}"#, a.room));
    let (mut sockets, mut readers) = match receivers {
        Receivers::Ws(s) => (s, Vec::new()),
        Receivers::Raw(r) => (Vec::new(), r),
    };
    for ws in sockets.iter_mut() {
        ws.send(Message::Text(join.clone().into()))
            .await
            .expect("join");
    }
    for r in readers.iter_mut() {
        r.send(0x1, join.as_bytes()).await;
    }
    // Joins are not acknowledged by the protocol: give the server time to
    // validate them (and to subscribe on Redis) before saying READY.
    tokio::time::sleep(Duration::from_millis(a.settle)).await;
    // The sender writes through its own half; its reads stay with the receivers.
    let sender = if a.send > 0 {
        Some(sockets.remove(0).split())
    } else {
        None
    };
    println!("READY");
    let total = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::OnceLock::<Instant>::new());
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let needle = a.proto.needle(&a.event);
    let cpu0 = cpu_seconds();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout);
    // The receivers read their frames straight from the socket
    // (`raw`). Nothing is buffered in tungstenite at this point: the
    // server sent nothing after `connected` (or Socket.IO's `40`) that
    // was read with it.
    readers.extend(sockets.into_iter().map(|ws| match ws.into_inner() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => raw::Reader::new(tcp, false),
        _ => panic!("the receivers read plain TCP"),
    }));
    let mut tasks = Vec::new();
    for mut reader in readers {
        let (total, first, latencies, needle, expect, proto, latency) = (
            total.clone(),
            first.clone(),
            latencies.clone(),
            needle.clone(),
            a.expect,
            a.proto,
            a.latency,
        );
        // Only what is read from here on counts as the burst's bytes.
        reader.wire_bytes = 0;
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            let mut own = Vec::with_capacity(if latency { expect as usize } else { 0 });
            let needle = needle.as_bytes();
            let read = reader.run(proto == Proto::SocketIo, |text| {
                if is_event(text, needle) {
                    first.get_or_init(Instant::now);
                    got += 1;
                    if latency {
                        if let Some(t) = std::str::from_utf8(text).ok().and_then(stamp) {
                            own.push(now_ms() - t);
                        }
                    }
                }
                if got < expect {
                    raw::Next::More
                } else {
                    raw::Next::Stop
                }
            });
            // One timer for the whole run, not one per frame.
            let _ = tokio::time::timeout_at(deadline, read).await;
            // Counted once per receiver: a shared counter bumped for every
            // frame would bounce its cache line between the cores.
            total.fetch_add(got, Ordering::Relaxed);
            latencies.lock().unwrap().extend(own);
            reader
        }));
    }
    if let Some((mut tx, mut rx)) = sender {
        let (n, rate, proto, room, event) = (
            a.send,
            a.rate,
            a.proto,
            a.room.clone(),
            a.send_event.clone(),
        );
        tokio::spawn(async move {
            let gap = Duration::from_secs_f64(1.0 / rate);
            let start = tokio::time::Instant::now();
            for k in 0..n {
                tokio::time::sleep_until(start + gap * k as u32).await;
                let data = format!(r#"{{"room":"{room}","k":{k},"t":{:.3}}}"#, now_ms());
                if tx
                    .send(Message::Text(proto.frame(&event, &data).into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        // Keep the sender's connection read (pings, its own echoes).
        tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
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
    let lat = std::mem::take(&mut *latencies.lock().unwrap());
    let wire: u64 = kept.iter().map(|r| r.wire_bytes).sum();
    println!(
        r#"{{"mode":"receive","clients":{},"deliveries":{n},"expected":{},"first_to_last_ms":{:.1},"deliveries_per_s":{:.0},"wire_bytes_per_delivery":{:.1},{},"loadgen_cpu_s":{:.2}}}"#,
        kept.len(),
        kept.len() as u64 * a.expect,
        span * 1000.0,
        n as f64 / span.max(1e-9),
        wire as f64 / n.max(1) as f64,
        percentiles(lat),
        cpu_seconds() - cpu0
    );
}

async fn echo(a: &Args, sockets: Vec<Ws>) {
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(a.duration);
    let order = a.message == "order";
    let needle = a.proto.needle(if order { "receipt" } else { "echo" });
    let closed = Arc::new(AtomicU64::new(0));
    // Orders the server's handler did not accept (a broken payload would
    // measure the error path instead).
    let rejected = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (needle, proto, closed, rejected) =
            (needle.clone(), a.proto, closed.clone(), rejected.clone());
        tasks.push(tokio::spawn(async move {
            let mut rtts = Vec::new();
            let mut k = 0u64;
            while Instant::now() < end {
                let sent = Instant::now();
                let frame = if order {
                    proto.frame("order", &order_json(i, k))
                } else {
                    proto.frame("echo", &format!(r#"{{"k":{k}}}"#))
                };
                if ws.send(Message::Text(frame.into())).await.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                loop {
                    match next_text(&mut ws, proto).await {
                        Some(t) if is_event(t.as_bytes(), needle.as_bytes()) => {
                            if order && !t.contains(r#""status":"accepted""#) {
                                rejected.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                        Some(_) => continue,
                        None => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            return rtts;
                        }
                    }
                }
                rtts.push(sent.elapsed().as_secs_f64() * 1000.0);
                k += 1;
            }
            rtts
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("echo client"));
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        r#"{{"mode":"echo","message":"{}","clients":{},"closed_early":{},"rejected":{},"round_trips":{},"per_second":{:.0},{},"loadgen_cpu_s":{:.2}}}"#,
        a.message,
        a.clients,
        closed.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
        all.len(),
        all.len() as f64 / secs,
        percentiles(all),
        cpu_seconds() - cpu0
    );
}
