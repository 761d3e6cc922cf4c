//! Accepting TCP connections and upgrading them to WebSocket at `path`.
//! Any upgrade at the path is accepted: authentication happens afterwards,
//! in the protocol (PROTOCOL §1).

use crate::core::connection;
use crate::core::server::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client that opened TCP but never finished the HTTP upgrade is dropped
/// after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                shared.connection_started();
                tokio::spawn(async move {
                    serve_socket(shared.clone(), stream, addr.to_string()).await;
                    shared.connection_finished();
                });
            }
            Err(e) => {
                // EMFILE and friends: say so, back off, keep serving.
                shared.log.error(|| format!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Socket settings: small buffers (a socket mostly idles), inbound messages
/// capped at `maxPayloadLength`.
pub fn ws_config(max_payload: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(max_payload))
        .max_frame_size(Some(max_payload))
}

/// Upgrades one accepted socket and runs it as a connection.
// The error type of the upgrade callback is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
pub async fn serve_socket<S>(shared: Arc<Shared>, stream: S, remote: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let path = shared.config.path.clone();
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == path {
            Ok(resp)
        } else {
            let mut err = ErrorResponse::new(Some("Not Found".to_string()));
            *err.status_mut() = StatusCode::NOT_FOUND;
            Err(err)
        }
    };
    let config = ws_config(shared.config.max_payload_length);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => connection::run(shared, ws, remote).await,
        Ok(Err(e)) => shared
            .log
            .debug(|| format!("Upgrade refused | remote: {remote} | error: {e}")),
        Err(_) => shared
            .log
            .debug(|| format!("Upgrade timed out | remote: {remote}")),
    }
}
