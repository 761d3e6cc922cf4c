//! The outbound transformer path (docs/PROTOCOL.md §9): every frame to an
//! encrypted client goes through the application's `outboundTransformer`
//! before its socket.
//!
//! Each encrypted client gets a small task that takes its frames in order
//! (so a client never sees its messages reordered), and all of them share
//! `encryptedBatchLimit` permits, so no more transformer calls than that are
//! in flight server-wide, whatever the fan-out. A call that does not settle
//! within `TRANSFORM_TIMEOUT` gives its permit back and its message is
//! dropped and counted, so a hung transformer cannot stall the others.

use crate::core::client::Client;
use crate::core::protocol::Frame;
use crate::core::server::Shared;
use crate::core::stats::bump;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub const TRANSFORM_TIMEOUT: Duration = Duration::from_secs(10);

/// Routes `client`'s frames through the transformer from now on. Call it
/// before the client becomes reachable by fan-out as encrypted.
pub fn attach(shared: &Arc<Shared>, client: &Arc<Client>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    client.set_transformer(tx);
    // Weak: the task must not keep the client (and so its own sender) alive.
    let weak = Arc::downgrade(client);
    let id = client.id.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let Some(call) = shared.handlers.transform(&id, frame.as_str()) else {
                if let Some(c) = weak.upgrade() {
                    c.sent(frame.len());
                    c.offer_plain(&frame);
                }
                continue;
            };
            let result = {
                let Ok(_permit) = shared.transform_permits.acquire().await else {
                    return;
                };
                tokio::time::timeout(TRANSFORM_TIMEOUT, call).await
            };
            let Some(c) = weak.upgrade() else { return };
            c.sent(frame.len());
            match result {
                Ok(Ok(None)) => {
                    c.offer_plain(&frame);
                }
                Ok(Ok(Some(text))) => {
                    c.offer_plain(&Frame::from(text));
                }
                Ok(Err(e)) => {
                    bump(&shared.stats.handler_errors);
                    shared.log.error(|| {
                        format!(
                            "Outbound transformer error; message dropped | id: {id} | error: {e}"
                        )
                    });
                }
                Err(_) => {
                    bump(&shared.stats.handler_errors);
                    shared.log.error(|| {
                        format!(
                            "Outbound transformer did not settle within {} s; message dropped | id: {id}",
                            TRANSFORM_TIMEOUT.as_secs()
                        )
                    });
                }
            }
        }
    });
}
