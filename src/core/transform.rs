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
use crate::core::handlers::Handlers;
use crate::core::log::Logger;
use crate::core::protocol::Frame;
use crate::core::stats::{bump, Stats};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

pub const TRANSFORM_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Transformer {
    handlers: Arc<dyn Handlers>,
    /// Calls allowed in flight (`encryptedBatchLimit`).
    permits: Semaphore,
    stats: Arc<Stats>,
    log: Logger,
}

impl Transformer {
    pub fn new(
        handlers: Arc<dyn Handlers>,
        limit: usize,
        stats: Arc<Stats>,
        log: Logger,
    ) -> Arc<Transformer> {
        Arc::new(Transformer {
            handlers,
            permits: Semaphore::new(limit.max(1)),
            stats,
            log,
        })
    }

    /// Routes `client`'s frames through the transformer from now on. Call
    /// it before the client becomes reachable by fan-out as encrypted.
    pub fn attach(self: &Arc<Self>, client: &Arc<Client>) {
        let (tx, rx) = mpsc::unbounded_channel::<Frame>();
        client.set_transformer(tx);
        // Weak: the task must not keep the client (and so its own sender)
        // alive.
        tokio::spawn(
            self.clone()
                .run(Arc::downgrade(client), client.id.clone(), rx),
        );
    }

    async fn run(
        self: Arc<Self>,
        client: std::sync::Weak<Client>,
        id: Arc<str>,
        mut rx: mpsc::UnboundedReceiver<Frame>,
    ) {
        while let Some(frame) = rx.recv().await {
            let Some(call) = self.handlers.transform(&id, frame.as_str()) else {
                if let Some(c) = client.upgrade() {
                    c.sent(frame.len());
                    c.offer_plain(&frame);
                }
                continue;
            };
            let result = {
                let Ok(_permit) = self.permits.acquire().await else {
                    return;
                };
                tokio::time::timeout(TRANSFORM_TIMEOUT, call).await
            };
            let Some(c) = client.upgrade() else { return };
            c.sent(frame.len());
            match result {
                Ok(Ok(None)) => {
                    c.offer_plain(&frame);
                }
                Ok(Ok(Some(text))) => {
                    c.offer_plain(&Frame::from(text));
                }
                Ok(Err(e)) => {
                    bump(&self.stats.handler_errors);
                    self.log.error(
                        "Outbound transformer error; message dropped",
                        &[("id", &id), ("error", &e)],
                    );
                }
                Err(_) => {
                    bump(&self.stats.handler_errors);
                    self.log.error(
                        "Outbound transformer did not settle in time; message dropped",
                        &[("id", &id), ("timeoutMs", &TRANSFORM_TIMEOUT.as_millis())],
                    );
                }
            }
        }
    }
}
