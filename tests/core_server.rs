//! The core driven without JavaScript: fake handlers in Rust, real sockets
//! on loopback, a tokio-tungstenite client.

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use ignis_ws_native::core::config::Config;
use ignis_ws_native::core::handlers::{AppEvent, AuthOutcome, Handlers};
use ignis_ws_native::core::log::{Logger, NullLog};
use ignis_ws_native::core::protocol::encode_frame;
use ignis_ws_native::core::server::Server;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

#[derive(Default)]
struct Fake {
    events: Mutex<Vec<AppEvent>>,
    validate: bool,
}

impl Handlers for Fake {
    fn authenticate(&self, _id: &str, data: &str) -> BoxFuture<'static, AuthOutcome> {
        let v: Value = serde_json::from_str(data).unwrap();
        match v.get("token").and_then(Value::as_str) {
            // Injected faults: a panic while the connection task calls the
            // handler, and one while it polls the returned future.
            Some("panic-now") => panic!("injected panic in authenticate"),
            Some("panic-later") => return async { panic!("injected panic while polling") }.boxed(),
            _ => {}
        }
        let out = match v.get("token").and_then(Value::as_str) {
            Some("throw") => AuthOutcome::Failed("boom".into()),
            Some(t) => AuthOutcome::Accepted {
                user_id: Some(format!("user-{t}")),
            },
            None => AuthOutcome::Rejected,
        };
        async move { out }.boxed()
    }
    fn validate_rooms(
        &self,
        _: &str,
        _: Option<&str>,
        rooms: Vec<String>,
    ) -> Option<BoxFuture<'static, Result<Vec<String>, String>>> {
        self.validate.then(|| {
            async move { Ok(rooms.into_iter().filter(|r| r != "denied").collect()) }.boxed()
        })
    }
    fn wants_messages(&self) -> bool {
        true
    }
    fn deliver(&self, events: &mut Vec<AppEvent>) -> BoxFuture<'static, ()> {
        self.events.lock().extend(events.drain(..));
        async {}.boxed()
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start(cfg: Config, fake: Arc<Fake>) -> Server {
    let cfg = Config {
        host: "127.0.0.1".into(),
        port: 0,
        ..cfg
    };
    Server::start(cfg, fake, Logger::new(Arc::new(NullLog)), None)
        .await
        .unwrap()
}

async fn connect(server: &Server) -> Ws {
    let url = format!("ws://{}/ws", server.local_addr().expect("listening"));
    connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Next text frame as JSON, or the close frame as `{"close": code, "reason": ..}`.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(3), ws.next())
            .await
            .expect("frame in time")
            .expect("stream open")
            .expect("no socket error");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(Some(f)) => {
                return json!({"close": u16::from(f.code), "reason": f.reason.as_str()})
            }
            _ => continue,
        }
    }
}

async fn authed(server: &Server, token: &str) -> (Ws, String) {
    let mut ws = connect(server).await;
    send(
        &mut ws,
        json!({"event":"authenticate","data":{"token":token}}),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["event"], "connected");
    let id = m["data"]["id"].as_str().unwrap().to_string();
    (ws, id)
}

#[tokio::test]
async fn authentication_paths() {
    let fake = Arc::new(Fake::default());
    let server = start(Config::default(), fake.clone()).await;

    let (mut ok, id) = authed(&server, "a").await;
    send(&mut ok, json!({"event":"authenticate","data":{}})).await;
    assert_eq!(
        recv(&mut ok).await["data"]["message"],
        "Already authenticated"
    );
    assert_eq!(
        server.hub().get(&id).unwrap().user_id().as_deref(),
        Some("user-a")
    );

    let mut rejected = connect(&server).await;
    send(&mut rejected, json!({"event":"authenticate","data":{}})).await;
    assert_eq!(
        recv(&mut rejected).await["data"]["message"],
        "Authentication failed"
    );
    assert_eq!(
        recv(&mut rejected).await,
        json!({"close": 4003, "reason": "Authentication failed"})
    );

    let mut failed = connect(&server).await;
    send(
        &mut failed,
        json!({"event":"authenticate","data":{"token":"throw"}}),
    )
    .await;
    assert_eq!(
        recv(&mut failed).await["data"]["message"],
        "Authentication error"
    );
    assert_eq!(recv(&mut failed).await["close"], 4003);

    let mut early = connect(&server).await;
    send(&mut early, json!({"event":"join","data":{"rooms":["x"]}})).await;
    assert_eq!(
        recv(&mut early).await["data"]["message"],
        "Not authenticated"
    );
    early.send(Message::Text("nope".into())).await.unwrap();
    assert_eq!(
        recv(&mut early).await["data"]["message"],
        "Invalid message format"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn auth_timeout_closes_4001() {
    let cfg = Config {
        auth_timeout: Duration::from_millis(100),
        ..Config::default()
    };
    let server = start(cfg, Arc::new(Fake::default())).await;
    let mut ws = connect(&server).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"close": 4001, "reason": "Authentication timeout"})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rooms_fan_out_and_messages() {
    let fake = Arc::new(Fake {
        validate: true,
        ..Fake::default()
    });
    let server = start(Config::default(), fake.clone()).await;
    let (mut a, a_id) = authed(&server, "a").await;
    let (mut b, b_id) = authed(&server, "b").await;
    send(
        &mut a,
        json!({"event":"join","data":{"rooms":["lobby","denied","ws:x"]}}),
    )
    .await;
    send(&mut b, json!({"event":"join","data":{"rooms":["lobby"]}})).await;
    for _ in 0..100 {
        if server.hub().room_snapshot("lobby").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.hub().room_snapshot("lobby").len(), 2);
    assert!(!server.hub().has_room("denied"));
    assert!(!server.hub().has_room("ws:x"));

    let frame = encode_frame("news", Some("{\"n\":1}"));
    assert_eq!(
        server.send_to_room("lobby", &frame, std::slice::from_ref(&b_id)),
        1
    );
    assert_eq!(recv(&mut a).await, json!({"event":"news","data":{"n":1}}));
    assert_eq!(server.broadcast(&frame, &[]), 2);
    assert_eq!(recv(&mut b).await["event"], "news");
    assert_eq!(recv(&mut a).await["event"], "news");

    send(&mut a, json!({"event":"chat","data":"hi"})).await;
    for _ in 0..100 {
        if fake
            .events
            .lock()
            .iter()
            .any(|e| matches!(e, AppEvent::Message { .. }))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let events = fake.events.lock().clone();
    assert!(events.iter().any(|e| matches!(e,
        AppEvent::Message { client_id, frame, .. }
            if **client_id == *a_id && frame.contains("\"hi\""))));
    assert!(events.iter().any(|e| matches!(e,
        AppEvent::Connected { client_id, user_id, .. }
            if **client_id == *a_id && user_id.as_deref() == Some("user-a"))));
    // A message names its client by the serial `Connected` gave it, and
    // each client has its own.
    let serial_of = |id: &str| {
        events.iter().find_map(|e| match e {
            AppEvent::Connected {
                client_id, serial, ..
            } if **client_id == *id => Some(*serial),
            _ => None,
        })
    };
    let (sa, sb) = (serial_of(&a_id).unwrap(), serial_of(&b_id).unwrap());
    assert_ne!(sa, sb);
    assert!(events.iter().any(|e| matches!(e,
        AppEvent::Message { client_id, serial, .. } if **client_id == *a_id && *serial == sa)));

    server.shutdown().await;
    assert_eq!(
        recv(&mut a).await,
        json!({"close": 1001, "reason": "Server shutting down"})
    );
    let events = fake.events.lock().clone();
    let gone = events
        .iter()
        .filter(|e| matches!(e, AppEvent::Disconnected { .. }))
        .count();
    assert_eq!(
        gone, 2,
        "both disconnects delivered before shutdown returned"
    );
    assert_eq!(server.hub().client_count(), 0);
}

#[tokio::test]
async fn oversized_frame_closes_1009() {
    let cfg = Config {
        max_payload_length: 1024,
        ..Config::default()
    };
    let server = start(cfg, Arc::new(Fake::default())).await;
    let (mut ws, _) = authed(&server, "a").await;
    send(&mut ws, json!({"event":"chat","data":"x".repeat(4096)})).await;
    assert_eq!(recv(&mut ws).await["close"], 1009);
    server.shutdown().await;
}

#[tokio::test]
async fn a_panic_in_one_connection_closes_only_that_connection() {
    let fake = Arc::new(Fake::default());
    let server = start(Config::default(), fake.clone()).await;
    let (mut bystander, by_id) = authed(&server, "calm").await;
    for token in ["panic-now", "panic-later"] {
        let mut victim = connect(&server).await;
        send(
            &mut victim,
            json!({"event":"authenticate","data":{"token":token}}),
        )
        .await;
        // The victim's socket goes away (no close frame: its task unwound).
        let end = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match victim.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert!(end.is_ok(), "victim closed after {token}");
    }
    for _ in 0..100 {
        if server.hub().client_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.hub().client_count(),
        1,
        "panicked clients were removed from the hub"
    );
    let frame = encode_frame("still", None);
    assert_eq!(server.send_to_client(&by_id, &frame), 1);
    assert_eq!(recv(&mut bystander).await, json!({"event":"still"}));
    let (_, fresh) = authed(&server, "fresh").await;
    assert!(
        server.hub().has_client(&fresh),
        "the server keeps accepting"
    );
    let gone = fake
        .events
        .lock()
        .iter()
        .filter(|e| matches!(e, AppEvent::Disconnected { .. }))
        .count();
    assert_eq!(gone, 2, "disconnect reported for both panicked connections");
    server.shutdown().await;
}
