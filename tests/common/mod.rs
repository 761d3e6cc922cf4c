//! What several integration tests share: a handler set that accepts every
//! token, and a client on a plain blocking socket.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use ignis_ws_native::core::config::Config;
use ignis_ws_native::core::handlers::{AppEvent, AuthOutcome, Handlers};
use ignis_ws_native::core::log::{Logger, NullLog};
use ignis_ws_native::core::server::Server;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Accepts every token as its own user and keeps no event.
pub struct Quiet;

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

/// A server on `rt`, on a free port of 127.0.0.1, with [`Quiet`] handlers.
#[allow(dead_code)] // not every test file uses it
pub fn quiet_server(rt: &tokio::runtime::Runtime) -> Server {
    let cfg = Config {
        host: "127.0.0.1".into(),
        port: 0,
        ..Config::default()
    };
    rt.block_on(Server::start(
        cfg,
        std::sync::Arc::new(Quiet),
        Logger::new(std::sync::Arc::new(NullLog)),
        None,
    ))
    .unwrap()
}

pub const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// A masked client text frame (payload under 126 bytes).
pub fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads into `buf` until `needle` has arrived (no allocation).
pub fn read_until(s: &mut TcpStream, buf: &mut [u8; 2048], needle: &[u8]) {
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

/// Opens a connection and authenticates it with `frame` (from
/// [`masked_text`]); returns once `connected` has arrived.
pub fn open_with(addr: std::net::SocketAddr, frame: &[u8], buf: &mut [u8; 2048]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    // A server that never answers fails the test rather than hangs it.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(REQUEST).unwrap();
    read_until(&mut s, buf, b"\r\n\r\n");
    s.write_all(frame).unwrap();
    read_until(&mut s, buf, b"connected");
    s
}

/// A connection authenticated with `token`.
#[allow(dead_code)] // not every test file uses it
pub fn open_authenticated(addr: std::net::SocketAddr, token: &str) -> TcpStream {
    let frame = masked_text(
        format!(r#"{{"event":"authenticate","data":{{"token":"{token}"}}}}"#).as_bytes(),
    );
    open_with(addr, &frame, &mut [0u8; 2048])
}
