//! Accepting connections: TLS when configured, connection limits, the HTTP
//! request head (404 / 403 / 426 / 429 / 503 / metrics), then the upgrade
//! to WebSocket at `path`, or, with `httpFallback`, the splice of any other
//! request to the application's HTTP server. Authentication happens later,
//! in the protocol (docs/PROTOCOL.md §1): any upgrade that passes these checks is
//! accepted.

use crate::core::connection::{self, Env};
use crate::core::connections::{Connections, Live};
use crate::core::deflate::{self, Inflating};
use crate::core::forward::Forwarder;
use crate::core::frame_writer::{FrameWriter, TryWrite};
use crate::core::http::{self, Prefixed};
use crate::core::metrics::{self, Metrics};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tungstenite::protocol::WebSocketConfig;

/// A client that opened TCP but never finished its TLS and HTTP handshakes
/// is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What serving a socket up to its upgrade needs.
pub struct Listener {
    pub env: Arc<Env>,
    pub connections: Arc<Connections>,
    /// Set with `httpFallback`: where other requests are spliced.
    pub forwarder: Option<Arc<Forwarder>>,
    pub metrics: Arc<Metrics>,
    pub tls: Option<TlsAcceptor>,
}

/// Builds the TLS acceptor from PEM certificate chain and key.
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert: {e}"))?;
    if certs.is_empty() {
        return Err("tls.cert: no PEM certificate found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls.key: {e}"))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds `addr` with an accept queue of `backlog`, or of the kernel's cap
/// for zero (`TcpListener::bind` asks for 1024 on Linux through mio but
/// offers no way to choose). The kernel caps the queue at
/// `net.core.somaxconn`.
///
/// Zero asks for the cap itself, as Go's `net.Listen` does, so that the
/// queue is as deep as the host allows. Node's 511 (and uWebSockets' 512)
/// overflowed under a storm of 2 000 opens on a busy 2-core host: the
/// accept loop fell behind for a moment, and the connections past the
/// queue waited a second for the handshake's retransmission. Where the
/// cap cannot be read, 4096, Linux's default since 5.4.
pub async fn bind(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let backlog = match backlog {
        0 => somaxconn().filter(|&c| c > 0).unwrap_or(4096),
        n => n,
    };
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As every server does: a restart must not wait for TIME_WAIT.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(backlog)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address to bind")))
}

/// The kernel's cap on accept queues, where it can be read.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Listener {
    pub async fn accept_loop(self: Arc<Self>, tcp: TcpListener) {
        loop {
            match tcp.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let live = self.connections.start(addr.ip());
                    crate::core::task::spawn(self.clone().accept_one(stream, addr, live));
                }
                Err(e) => {
                    // EMFILE and friends: say so, back off, keep serving.
                    self.env.log.error("accept failed", &[("error", &e)]);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn accept_one(self: Arc<Self>, stream: TcpStream, addr: SocketAddr, live: Live) {
        match self.tls.clone() {
            None => self.serve_socket(stream, addr, live).await,
            // Boxed: the TLS handshake's state is large (this task is
            // short-lived, but a connection storm holds many at once).
            Some(acceptor) => Box::pin(self.accept_tls(stream, addr, acceptor, live)).await,
        }
    }

    async fn accept_tls(
        self: Arc<Self>,
        stream: TcpStream,
        addr: SocketAddr,
        acceptor: TlsAcceptor,
        live: Live,
    ) {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls_stream)) => self.serve_socket(tls_stream, addr, live).await,
            Ok(Err(e)) => self
                .env
                .log
                .debug("TLS handshake failed", &[("remote", &addr), ("error", &e)]),
            Err(_) => self
                .env
                .log
                .debug("TLS handshake timed out", &[("remote", &addr)]),
        }
    }

    /// A connection accepted by someone else (plain TCP), with the bytes
    /// already read from it.
    pub async fn serve_adopted(
        self: Arc<Self>,
        stream: TcpStream,
        head: Vec<u8>,
        addr: SocketAddr,
        live: Live,
    ) {
        self.serve_socket(Prefixed::new(head, stream), addr, live)
            .await
    }

    /// Upgrades the socket (or answers it), then starts it as a connection.
    ///
    /// The connection runs as a task of its own, spawned once the upgrade
    /// is done, and the accepting task ends: what a connection keeps for
    /// its whole life is then that task and its loop, not also the accept
    /// and upgrade futures it started from.
    pub async fn serve_socket<S>(self: Arc<Self>, stream: S, addr: SocketAddr, live: Live)
    where
        S: AsyncRead + AsyncWrite + TryWrite + Unpin + Send + 'static,
    {
        if let Some((ws, deflate)) = Box::pin(self.upgrade(stream, addr, &live)).await {
            let connection = connection::run(self.env.clone(), ws, addr.to_string(), deflate);
            crate::core::task::spawn(async move {
                connection.await;
                drop(live);
            });
        }
    }

    /// Why a request head is refused before the upgrade.
    fn refusal(&self, head: &http::Head, ip: IpAddr) -> Option<(u16, &'static str)> {
        let cfg = &self.env.config;
        if head.path != cfg.path {
            return Some((404, "Not Found"));
        }
        if !head.upgrade_websocket {
            return Some((426, "Upgrade Required"));
        }
        if !http::origin_allowed(&cfg.allowed_origins, head.origin.as_deref()) {
            return Some((403, "Forbidden"));
        }
        if cfg.max_connections > 0 && self.env.hub.client_count() >= cfg.max_connections {
            return Some((503, "Service Unavailable"));
        }
        if cfg.max_connections_per_ip > 0 && self.connections.from(ip) > cfg.max_connections_per_ip
        {
            return Some((429, "Too Many Requests"));
        }
        None
    }

    /// Reads the request head, answers what is not an acceptable upgrade,
    /// and completes the WebSocket handshake for the rest; with whether
    /// permessage-deflate was negotiated.
    async fn upgrade<S>(
        &self,
        mut stream: S,
        addr: SocketAddr,
        live: &Live,
    ) -> Option<(Socket<S>, bool)>
    where
        S: AsyncRead + AsyncWrite + TryWrite + Unpin + Send + 'static,
    {
        let log = &self.env.log;
        let cfg = &self.env.config;
        let (head, bytes) =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, http::read_head(&mut stream)).await {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => {
                    log.debug("Bad request head", &[("remote", &addr), ("error", &e)]);
                    let (status, reason) = http::head_error_status(&e);
                    http::respond(
                        &mut stream,
                        status,
                        reason,
                        "text/plain",
                        &format!("{reason}\n"),
                    )
                    .await;
                    return None;
                }
                Err(_) => {
                    log.debug("Request head timed out", &[("remote", &addr)]);
                    return None;
                }
            };
        if head.method == "GET" && cfg.metrics_path.as_deref() == Some(head.path.as_str()) {
            let body = self.metrics.render();
            http::respond(&mut stream, 200, "OK", metrics::CONTENT_TYPE, &body).await;
            return None;
        }
        if let Some(forwarder) = &self.forwarder {
            if head.path != cfg.path || !head.upgrade_websocket {
                forwarder.splice(stream, bytes, addr, live).await;
                return None;
            }
        }
        if let Some((status, reason)) = self.refusal(&head, addr.ip()) {
            log.log(
                if status == 403 || status >= 429 {
                    crate::core::log::Level::Warn
                } else {
                    crate::core::log::Level::Debug
                },
                "Upgrade refused",
                &[
                    ("status", &status),
                    ("reason", &reason),
                    ("remote", &addr),
                    ("path", &head.path),
                    ("origin", &head.origin.as_deref().unwrap_or("-")),
                ],
            );
            if status >= 429 {
                crate::core::stats::bump(&self.env.stats.connections_refused);
            }
            http::respond(
                &mut stream,
                status,
                reason,
                "text/plain",
                &format!("{reason}\n"),
            )
            .await;
            return None;
        }
        if let Some(why) = head.upgrade_error() {
            log.debug("Upgrade failed", &[("remote", &addr), ("error", &why)]);
            http::respond(
                &mut stream,
                400,
                "Bad Request",
                "text/plain",
                &format!("{why}\n"),
            )
            .await;
            return None;
        }
        let extension = self
            .env
            .deflate
            .as_ref()
            .and_then(|_| deflate::negotiate(head.extensions.iter().map(String::as_str)));
        let answer = head.switching_protocols(extension.as_deref());
        // Flushed: over TLS the answer may otherwise wait in the session.
        let write = async {
            stream.write_all(answer.as_bytes()).await?;
            stream.flush().await
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            _ => {
                log.debug(
                    "Upgrade failed",
                    &[
                        ("remote", &addr),
                        ("error", &"the answer could not be written"),
                    ],
                );
                return None;
            }
        }
        let max = cfg.max_payload_length;
        let inflate = extension.is_some().then_some(max);
        let ws = socket(
            stream,
            bytes,
            head.len,
            inflate,
            max,
            self.env.stats.clone(),
        );
        Some((ws, extension.is_some()))
    }
}

/// A connection's socket, as its task owns it: inflating under the
/// WebSocket reader (when the client negotiated permessage-deflate), the
/// server's own frame writer above it.
pub type Socket<S> = crate::core::ws_socket::WsSocket<FrameWriter<Inflating<Prefixed<S>>>>;

/// The WebSocket over `stream`, whose head (the first `head_len` of
/// `read`) has been answered; the rest of `read` is the client's first
/// frames. `inflate`: the largest inflated message, when compressed
/// messages are taken.
pub fn socket<S>(
    stream: S,
    mut read: Vec<u8>,
    head_len: usize,
    inflate: Option<usize>,
    max_payload: usize,
    stats: Arc<crate::core::stats::Stats>,
) -> Socket<S>
where
    S: AsyncRead + AsyncWrite + TryWrite + Unpin,
{
    read.drain(..head_len.min(read.len()));
    let io = FrameWriter::new(Inflating::new(Prefixed::new(read, stream), inflate, stats));
    crate::core::ws_socket::WsSocket::from_raw_socket(
        io,
        tungstenite::protocol::Role::Server,
        Some(ws_config(max_payload)),
    )
}

/// Socket settings: small buffers (a socket mostly idles), inbound messages
/// capped at `maxPayloadLength`.
pub fn ws_config(max_payload: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(http::READ_BUFFER)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(max_payload))
        .max_frame_size(Some(max_payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero asks for the kernel's cap: connections that nobody accepts
    /// still complete their handshakes, as many as the cap (up to 700
    /// here, within a default limit of 1 024 open files), where a queue of
    /// Node's 511 would stop at 512.
    #[tokio::test]
    async fn zero_asks_for_the_kernels_cap() {
        let listener = bind("127.0.0.1:0", 0).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let want = somaxconn().unwrap_or(4096).min(700) as usize;
        let opened = tokio::task::spawn_blocking(move || {
            let mut held = Vec::new();
            while held.len() < want {
                // A connection past a full queue has its SYN dropped and
                // would wait a second for the retransmission.
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                    Ok(s) => held.push(s),
                    Err(_) => break,
                }
            }
            held.len()
        })
        .await
        .unwrap();
        assert_eq!(opened, want, "handshakes completed without an accept");
        drop(listener);
    }
}
