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

use crate::core::connections::Live;
use crate::core::http;
use crate::core::log::Logger;
use crate::core::stats::{bump, Stats};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWrite;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;

/// Splices connections to the application's server at `upstream`, and
/// keeps the real client address of each one it carries.
pub struct Forwarder {
    upstream: String,
    /// Real client addresses, by the local port of the loopback
    /// connection that carries them.
    peers: Mutex<HashMap<u16, SocketAddr>>,
    stats: Arc<Stats>,
    log: Logger,
}

impl Forwarder {
    pub fn new(upstream: String, stats: Arc<Stats>, log: Logger) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            upstream,
            peers: Mutex::new(HashMap::new()),
            stats,
            log,
        })
    }

    /// The real client behind a forwarded connection, by the local port the
    /// application sees as its peer's port.
    pub fn peer_of(&self, local_port: u16) -> Option<SocketAddr> {
        self.peers.lock().get(&local_port).copied()
    }

    /// Splices `client` (whose first bytes, `head`, were already read) to
    /// the application's server. Answers 502 when it cannot be reached.
    pub async fn splice<S>(&self, mut client: S, head: Vec<u8>, addr: SocketAddr, live: &Live)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let upstream = self.upstream.as_str();
        let mut app = match TcpStream::connect(upstream).await {
            Ok(s) => s,
            Err(e) => {
                bump(&self.stats.http_forward_errors);
                self.log.error(
                    "HTTP request not forwarded: the application is unreachable",
                    &[("upstream", &upstream), ("error", &e), ("remote", &addr)],
                );
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
        bump(&self.stats.http_forwarded);
        let port = app.local_addr().ok().map(|a| a.port());
        if let Some(p) = port {
            self.peers.lock().insert(p, addr);
        }
        let _forwarding = live.forwarding();
        let _peer = Peer {
            forwarder: self,
            port,
        };
        if app.write_all(&head).await.is_err() {
            return;
        }
        drop(head);
        // Either side may end the exchange; errors here are resets by a
        // peer, not faults of this server.
        let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
    }
}

/// Forgets a forwarded connection's peer however the splice ends.
struct Peer<'a> {
    forwarder: &'a Forwarder,
    port: Option<u16>,
}

impl Drop for Peer<'_> {
    fn drop(&mut self) {
        if let Some(port) = self.port {
            self.forwarder.peers.lock().remove(&port);
        }
    }
}
