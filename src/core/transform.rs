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
        crate::core::task::spawn(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::handlers::{AppEvent, AuthOutcome};
    use crate::core::log::NullLog;
    use futures_util::future::BoxFuture;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers "x" with "X" after a delay that shrinks with each call (so a
    /// later call settles first), fails "bad", and counts calls in flight.
    #[derive(Default)]
    struct Upper {
        calls: AtomicUsize,
        in_flight: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Handlers for Upper {
        fn authenticate(&self, _: &str, _: &str) -> BoxFuture<'static, AuthOutcome> {
            async { AuthOutcome::Rejected }.boxed()
        }
        fn has_transformer(&self) -> bool {
            true
        }
        fn transform(
            &self,
            _: &str,
            frame: &str,
        ) -> Option<BoxFuture<'static, Result<Option<String>, String>>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) as u64;
            let frame = frame.to_string();
            let (in_flight, most) = (self.in_flight.clone(), self.most.clone());
            Some(
                async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50u64.saturating_sub(n * 10))).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    if frame == "bad" {
                        Err("refused".into())
                    } else {
                        Ok(Some(frame.to_uppercase()))
                    }
                }
                .boxed(),
            )
        }
        fn deliver(&self, _: &mut Vec<AppEvent>) -> BoxFuture<'static, ()> {
            async {}.boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn frames_keep_their_order_and_a_failure_drops_only_its_own() {
        let handlers = Arc::new(Upper::default());
        let stats = Arc::new(Stats::default());
        let t = Transformer::new(
            handlers.clone(),
            1,
            stats.clone(),
            Logger::new(Arc::new(NullLog)),
        );
        let (client, mut reader) = Client::new(
            Arc::from("c"),
            "127.0.0.1:1".into(),
            0,
            1 << 20,
            false,
            stats.clone(),
        );
        t.attach(&client);
        for f in ["a", "bad", "b", "c"] {
            client.offer(&Frame::from(f));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let out: Vec<String> = reader.take(10).texts();
        assert_eq!(out, ["A", "B", "C"]);
        assert_eq!(stats.handler_errors.load(Ordering::Relaxed), 1);
        assert_eq!(
            handlers.most.load(Ordering::SeqCst),
            1,
            "one call in flight per client"
        );
    }
}
