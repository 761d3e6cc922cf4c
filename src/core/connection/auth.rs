//! The authentication flow (docs/PROTOCOL.md §4): `authenticateFn`, then
//! the optional encryption handshake, polled by the connection's own task.

use super::state::{AuthFlow, Connection, PendingAuth};
use crate::core::client::ClientState;
use crate::core::handlers::{AppEvent, AuthOutcome, HandshakeOutcome};
use crate::core::protocol::{self, close, errors};
use crate::core::stats::bump;
use futures_util::FutureExt;
use std::sync::Arc;
use tokio::time::Instant;

impl Connection {
    pub(super) fn start_auth(&mut self, data_json: String, pending: PendingAuth) {
        self.client.set_state(ClientState::Authenticating);
        self.auth_deadline = Some(Instant::now() + self.env.config.auth_timeout * 3);
        let handlers = self.env.handlers.clone();
        let require_encryption = self.env.config.require_encryption;
        let native_encryption = self.env.config.native_encryption;
        let id = self.client.id.clone();
        let fut = async move {
            let authenticated = handlers.authenticate(&id, &data_json).await;
            drop(pending);
            let user_id = match authenticated {
                AuthOutcome::Accepted { user_id } => user_id,
                AuthOutcome::Rejected => return AuthFlow::Rejected,
                AuthOutcome::Failed(e) => return AuthFlow::Error(e),
            };
            if native_encryption {
                let key = serde_json::from_str::<serde_json::Value>(&data_json)
                    .ok()
                    .and_then(|v| {
                        v.get("publicKey")
                            .and_then(|k| k.as_str())
                            .map(str::to_string)
                    });
                return match key.as_deref().map(crate::core::crypto::handshake) {
                    Some(Ok(hs)) => AuthFlow::Ok {
                        user_id,
                        keys: Some((hs.server_public_key, hs.salt)),
                        cipher: Some(Box::new(hs.cipher)),
                    },
                    _ => AuthFlow::HandshakeRejected,
                };
            }
            if !require_encryption {
                return AuthFlow::Ok {
                    user_id,
                    keys: None,
                    cipher: None,
                };
            }
            let Some(handshake) = handlers.handshake(&id, user_id.as_deref(), &data_json) else {
                return AuthFlow::NoHandshakeHandler;
            };
            match handshake.await {
                HandshakeOutcome::Accepted {
                    server_public_key,
                    salt,
                } => AuthFlow::Ok {
                    user_id,
                    keys: Some((server_public_key, salt)),
                    cipher: None,
                },
                HandshakeOutcome::Rejected => AuthFlow::HandshakeRejected,
                HandshakeOutcome::Failed(e) => AuthFlow::Error(e),
            }
        };
        self.auth = Some(fut.boxed());
    }

    /// Applies the outcome of the authentication flow; returns the close to
    /// perform when it failed.
    pub(super) async fn finish_auth(&mut self, flow: AuthFlow) -> Option<(u16, &'static str)> {
        let env = self.env.clone();
        let id = self.client.id.clone();
        match flow {
            AuthFlow::Ok {
                user_id,
                keys,
                cipher,
            } => {
                let frame_keys = keys.clone();
                let native = cipher.is_some();
                if let Some(c) = cipher {
                    // Before the client is visible as encrypted to any fan-out.
                    let _ = self.client.cipher.set(c);
                }
                if let (Some(_), false, Some(t)) = (&keys, native, &env.transformer) {
                    t.attach(&self.client);
                }
                if !env.hub.authenticate(
                    &self.client,
                    user_id.as_deref(),
                    keys,
                    &env.config.default_rooms,
                ) {
                    return None;
                }
                let frame = protocol::connected_frame(
                    &id,
                    user_id.as_deref(),
                    protocol::now_ms(),
                    frame_keys.as_ref().map(|(k, s)| (k.as_str(), s.as_str())),
                );
                // `connected` is never transformed: it carries the keys the
                // client needs to read what the transformer produces.
                self.client.offer_plain(&frame);
                env.log.info(
                    "Authenticated",
                    &[
                        ("id", &id),
                        ("userId", &user_id.as_deref().unwrap_or("anonymous")),
                        ("encrypted", &frame_keys.is_some()),
                    ],
                );
                env.events
                    .emit(AppEvent::Connected {
                        client_id: self.client.id.clone(),
                        user_id: user_id.map(Arc::from),
                        serial: self.client.serial,
                    })
                    .await;
                None
            }
            AuthFlow::Rejected => {
                env.log.info("Authentication rejected", &[("id", &id)]);
                self.send_error(errors::AUTH_FAILED);
                Some(close::AUTH_FAILED)
            }
            AuthFlow::Error(e) => {
                bump(&env.stats.handler_errors);
                env.log
                    .error("Authentication error", &[("id", &id), ("error", &e)]);
                self.send_error(errors::AUTH_ERROR);
                Some(close::AUTH_FAILED)
            }
            AuthFlow::NoHandshakeHandler => {
                env.log.error(
                    "requireEncryption is true but no handshakeFn configured",
                    &[("id", &id)],
                );
                Some(close::ENCRYPTION_REQUIRED)
            }
            AuthFlow::HandshakeRejected => {
                env.log.info("Handshake rejected", &[("id", &id)]);
                self.send_error(errors::HANDSHAKE_FAILED);
                Some(close::ENCRYPTION_REQUIRED)
            }
        }
    }
}
