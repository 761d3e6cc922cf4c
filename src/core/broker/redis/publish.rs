//! The publishing side: publications queued while Redis is away, sent in
//! order in pipelines once it is back, the oldest dropped past the bound.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::connect::{backoff, open_publisher, Outgoing, Publisher, BACKOFF_MAX};
use super::state::{Inner, PUBLISH_BATCH, RESUBSCRIBE_GRACE, STATE_CONNECTED};

/// Sends queued publications in pipelined batches; reconnects on failure
/// and keeps the batch at the front of the queue until it went out.
pub(super) async fn publish_loop(inner: Arc<Inner>, mut conn: Publisher) {
    let mut healthy = true;
    let mut attempt = 0u32;
    let mut link_was_up = true;
    loop {
        // While the subscriber link is down, Redis is down for us too: keep
        // the queue (bounded) instead of hammering a dead server.
        let link_up = inner.state.load(Ordering::Acquire) == STATE_CONNECTED;
        if !link_up {
            link_was_up = false;
            let _ = tokio::time::timeout(BACKOFF_MAX, inner.queue_notify.notified()).await;
            continue;
        }
        if !link_was_up {
            link_was_up = true;
            tokio::time::sleep(RESUBSCRIBE_GRACE).await;
        }
        let batch: Vec<Outgoing> = {
            let mut q = inner.queue.lock();
            let n = q.len().min(PUBLISH_BATCH);
            inner.in_flight.store(n as u64, Ordering::Relaxed);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            inner.queue_notify.notified().await;
            continue;
        }
        if !healthy {
            match reconnect_publisher(&inner).await {
                Some(c) => {
                    conn = c;
                    healthy = true;
                    attempt = 0;
                }
                None => {
                    requeue_front(&inner, batch);
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            }
        }
        match conn.publish_batch(&batch).await {
            Ok(()) => {
                inner.in_flight.store(0, Ordering::Relaxed);
                inner
                    .stats
                    .bus_published
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                inner.drop_logged.store(false, Ordering::Release);
            }
            Err(e) => {
                inner.log.warn(
                    "Redis publish failed, will retry",
                    &[("redis", &inner.cfg.display), ("error", &e)],
                );
                requeue_front(&inner, batch);
                healthy = false;
            }
        }
    }
}

pub(super) fn requeue_front(inner: &Inner, batch: Vec<Outgoing>) {
    let mut q = inner.queue.lock();
    inner.in_flight.store(0, Ordering::Relaxed);
    for item in batch.into_iter().rev() {
        q.push_front(item);
    }
    while q.len() > inner.cfg.publish_buffer.max(1) {
        q.pop_front();
        inner
            .stats
            .bus_publish_dropped
            .fetch_add(1, Ordering::Relaxed);
    }
}

pub(super) async fn reconnect_publisher(inner: &Inner) -> Option<Publisher> {
    open_publisher(&inner.cfg, inner.cluster_client.as_ref())
        .await
        .ok()
}
