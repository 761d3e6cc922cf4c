//! Sharing one port with an application's HTTP server when its sockets
//! cannot be handed over (Bun: `node:http` upgrade sockets carry no file
//! descriptor, and `Bun.serve` exposes no socket at all).
//!
//! The native listener owns the public port. A connection whose first
//! request is a WebSocket upgrade at `path` is served here; any other
//! connection is spliced, bytes untouched, to the application's server on a
//! loopback address (`httpFallback`). Splicing at the TCP level keeps the
//! application's HTTP stack (keep-alive, streaming, chunked bodies,
//! `Expect: 100-continue`) exactly as it was, at the cost of one loopback
//! hop per connection. WebSocket clients (browsers, `ws`, Bun's and the
//! SDK's) open a fresh connection for every handshake, so deciding on the
//! first request is enough; an upgrade sent later on a kept-alive HTTP
//! connection reaches the application, as any other request on it does.
//!
//! The application sees its peers as loopback addresses; `peer_of` maps the
//! loopback port of a forwarded connection back to the real client, so the
//! JavaScript side can restore it (`x-forwarded-for`).

use crate::core::http;
use crate::core::server::Shared;
use crate::core::stats;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Real client addresses of forwarded connections, by the local port of
/// the loopback connection that carries them.
#[derive(Default)]
pub struct Peers(Mutex<HashMap<u16, SocketAddr>>);

impl Peers {
    pub fn get(&self, local_port: u16) -> Option<SocketAddr> {
        self.0.lock().get(&local_port).copied()
    }
}

/// Undoes the bookkeeping of a splice however it ends.
struct Splicing<'a> {
    shared: &'a Shared,
    port: Option<u16>,
}

impl Drop for Splicing<'_> {
    fn drop(&mut self) {
        if let Some(port) = self.port {
            self.shared.forwarded_peers.0.lock().remove(&port);
        }
        self.shared.forwarding_finished();
    }
}

/// Splices `client` (whose first bytes, `head`, were already read) to the
/// application's server. Answers 502 when that server cannot be reached.
pub async fn splice<S>(
    shared: Arc<Shared>,
    mut client: S,
    head: Vec<u8>,
    addr: SocketAddr,
    upstream: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut app = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            stats::bump(&shared.stats.http_forward_errors);
            shared.log.error(|| {
                format!("HTTP request not forwarded: the application at {upstream} is unreachable ({e}) | remote: {addr}")
            });
            http::respond(
                &mut client,
                502,
                "Bad Gateway",
                "text/plain",
                "Bad Gateway\n",
            )
            .await;
            return;
        }
    };
    let _ = app.set_nodelay(true);
    stats::bump(&shared.stats.http_forwarded);
    let port = app.local_addr().ok().map(|a| a.port());
    if let Some(p) = port {
        shared.forwarded_peers.0.lock().insert(p, addr);
    }
    shared.forwarding_started();
    let _splicing = Splicing {
        shared: &shared,
        port,
    };
    if app.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    // Either side may end the exchange; errors here are resets by a peer,
    // not faults of this server.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
}
