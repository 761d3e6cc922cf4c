//! The subscribing side: channels followed as local interest changes, one
//! SUBSCRIBE/UNSUBSCRIBE per batch, resubscription after a lost
//! connection, and the cluster's reachability probe.

use futures_util::{FutureExt, StreamExt};
use redis::cluster_async::ClusterConnection;
use redis::PushInfo;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::connect::{backoff, standalone_subscriber, Endpoint, BACKOFF_MAX};
use super::state::{
    Channel, Inner, BUS_BATCH, PING_EVERY, STATE_CLOSED, STATE_CONNECTED, STATE_CONNECTING,
    STATE_DISCONNECTED,
};

impl Inner {
    /// The channels to subscribe and unsubscribe for the queued interest
    /// changes (see `drain_interest`).
    fn drain(
        &self,
        first: Option<(Channel, bool)>,
        rx: &mut mpsc::UnboundedReceiver<(Channel, bool)>,
        desired: &mut HashSet<Channel>,
    ) -> (Vec<Channel>, Vec<Channel>) {
        drain_interest(first, rx, desired, &self.live.lock())
    }
}

pub(super) fn names(channels: &[Channel]) -> Vec<&str> {
    channels.iter().map(|c| &**c).collect()
}

/// Applies queued interest changes to `desired`; returns the channels to
/// subscribe and unsubscribe on the live connection.
pub(super) fn drain_interest(
    first: Option<(Channel, bool)>,
    rx: &mut mpsc::UnboundedReceiver<(Channel, bool)>,
    desired: &mut HashSet<Channel>,
    live: &HashSet<Channel>,
) -> (Vec<Channel>, Vec<Channel>) {
    // Only the channels named in this batch can differ from `live`:
    // comparing the whole sets would cost O(channels) per client that
    // connects (two channels each), quadratic over a connection storm.
    let mut touched: HashSet<Channel> = HashSet::new();
    let mut apply = |(ch, present): (Channel, bool)| {
        if present {
            desired.insert(ch.clone());
        } else {
            desired.remove(&ch);
        }
        touched.insert(ch);
    };
    if let Some(f) = first {
        apply(f);
    }
    while let Ok(c) = rx.try_recv() {
        apply(c);
    }
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for ch in touched {
        match (desired.contains(&ch), live.contains(&ch)) {
            (true, false) => add.push(ch),
            (false, true) => remove.push(ch),
            _ => {}
        }
    }
    (add, remove)
}

pub(super) async fn standalone_subscribe_loop(
    inner: Arc<Inner>,
    first: redis::aio::PubSub,
    mut rx: mpsc::UnboundedReceiver<(Channel, bool)>,
) {
    let Endpoint::Standalone(url) = inner.cfg.endpoint.clone() else {
        return;
    };
    let mut desired: HashSet<Channel> = HashSet::new();
    let mut next = Some(first);
    let mut lost_at: Option<Instant> = None;
    let mut attempt = 0u32;
    loop {
        let pubsub = match next.take() {
            Some(p) => p,
            None => {
                match standalone_subscriber(&url, inner.cfg.tls.as_ref(), inner.cfg.connect_timeout)
                    .await
                {
                    Ok(p) => p,
                    Err(_) => {
                        inner.state.store(STATE_CONNECTING, Ordering::Release);
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                }
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        // A new connection subscribes to everything wanted, not just the
        // channels that changed meanwhile.
        inner.confirm(true, Vec::new(), &[]);
        inner.drain(None, &mut rx, &mut desired);
        let add: Vec<Channel> = desired.iter().cloned().collect();
        if !add.is_empty() && sink.subscribe(names(&add)).await.is_err() {
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            continue;
        }
        let channels = add.len();
        inner.confirm(false, add, &[]);
        inner.state.store(STATE_CONNECTED, Ordering::Release);
        attempt = 0;
        if let Some(t) = lost_at.take() {
            inner.inbound.resubscribed();
            inner.stats.bus_reconnects.fetch_add(1, Ordering::Relaxed);
            // The publisher may be waiting on a dead connection: wake it.
            inner.queue_notify.notify_one();
            inner.log.warn(
                "Redis reconnected; channels resubscribed",
                &[
                    ("afterMs", &t.elapsed().as_millis()),
                    ("channels", &channels),
                    ("redis", &inner.cfg.display),
                ],
            );
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let lost = loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    let (add, remove) = inner.drain(Some(cmd), &mut rx, &mut desired);
                    if !add.is_empty() {
                        if let Err(e) = sink.subscribe(names(&add)).await { break e.to_string(); }
                        inner.confirm(false, add, &[]);
                    }
                    if !remove.is_empty() {
                        if let Err(e) = sink.unsubscribe(names(&remove)).await { break e.to_string(); }
                        inner.confirm(false, Vec::new(), &remove);
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { break "connection closed".to_string() };
                    // This message and those already received after it, as
                    // one batch (the router fans a burst out batch by batch).
                    let mut batch = vec![msg];
                    let mut ended = false;
                    while batch.len() < BUS_BATCH {
                        match stream.next().now_or_never() {
                            Some(Some(m)) => batch.push(m),
                            Some(None) => { ended = true; break }
                            None => break,
                        }
                    }
                    inner.receive(&batch);
                    if ended { break "connection closed".to_string() }
                }
                _ = ping.tick() => {
                    // A subscribed RESP2 connection answers PING with an array
                    // (["pong", ""]), not a string: any answer means alive.
                    let alive = tokio::time::timeout(Duration::from_secs(5), sink.ping::<redis::Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) { break "ping failed".to_string(); }
                }
                _ = inner.close_notify.notified() => return,
            }
        };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        inner.state.store(STATE_DISCONNECTED, Ordering::Release);
        inner.confirm(true, Vec::new(), &[]);
        lost_at = Some(Instant::now());
        inner.log.error(
            "Redis subscriber connection lost; local delivery continues, reconnecting",
            &[("reason", &lost), ("redis", &inner.cfg.display)],
        );
    }
}

/// How often a cluster's reachability is probed, and how long a probe may take.
pub(super) const CLUSTER_PROBE_EVERY: Duration = Duration::from_secs(1);
pub(super) const CLUSTER_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The cluster connection reconnects and resubscribes by itself, so
/// nothing else here learns that Redis went away: a PING through it every
/// second (routed by the client to one node) sets the state `status()`
/// reports, and, like the standalone subscriber's link, holds
/// publications in the buffer while it fails.
pub(super) async fn cluster_probe(inner: Arc<Inner>, mut conn: ClusterConnection) {
    let mut tick = tokio::time::interval(CLUSTER_PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let alive = tokio::time::timeout(
            CLUSTER_PROBE_TIMEOUT,
            redis::cmd("PING").query_async::<redis::Value>(&mut conn),
        )
        .await;
        let up = matches!(alive, Ok(Ok(_)));
        let was = inner.state.load(Ordering::Acquire);
        if was == STATE_CLOSED {
            return;
        }
        if up && was != STATE_CONNECTED {
            inner.inbound.resubscribed();
            inner.stats.bus_reconnects.fetch_add(1, Ordering::Relaxed);
            inner.state.store(STATE_CONNECTED, Ordering::Release);
            inner.queue_notify.notify_one();
            inner.log.info(
                "Redis cluster reachable again",
                &[("redis", &inner.cfg.display)],
            );
        } else if !up && was == STATE_CONNECTED {
            inner.state.store(STATE_DISCONNECTED, Ordering::Release);
            inner.log.warn(
                "Redis cluster unreachable; publications are buffered",
                &[("redis", &inner.cfg.display)],
            );
        }
    }
}

pub(super) async fn cluster_subscribe_loop(
    inner: Arc<Inner>,
    mut conn: ClusterConnection,
    sharded: bool,
    mut push: mpsc::UnboundedReceiver<PushInfo>,
    mut rx: mpsc::UnboundedReceiver<(Channel, bool)>,
) {
    // The cluster connection resubscribes by itself after node failures.
    let mut desired: HashSet<Channel> = HashSet::new();
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let (add, remove) = inner.drain(Some(cmd), &mut rx, &mut desired);
                for ch in add {
                    let r = if sharded { conn.ssubscribe(&*ch).await } else { conn.subscribe(&*ch).await };
                    match r {
                        Ok(()) => inner.confirm(false, vec![ch], &[]),
                        Err(e) => {
                            inner.log.error("Redis cluster subscribe failed", &[("channel", &ch), ("error", &e)]);
                            // Retry with the next change or after a pause.
                            let tx = inner.interest_tx.clone();
                            crate::core::task::spawn(async move {
                                tokio::time::sleep(BACKOFF_MAX).await;
                                let _ = tx.send((ch, true));
                            });
                        }
                    }
                }
                for ch in remove {
                    let r = if sharded { conn.sunsubscribe(&*ch).await } else { conn.unsubscribe(&*ch).await };
                    if r.is_ok() { inner.confirm(false, Vec::new(), &[ch]); }
                }
            }
            info = push.recv() => {
                let Some(info) = info else { return };
                // As on a standalone connection: what is already received,
                // as one batch.
                let mut batch = Vec::new();
                let mut next = Some(info);
                while let Some(info) = next.take() {
                    batch.extend(redis::Msg::from_push_info(info));
                    if batch.len() < BUS_BATCH {
                        next = push.try_recv().ok();
                    }
                }
                inner.receive(&batch);
            }
            _ = inner.close_notify.notified() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(
        changes: &[(&str, bool)],
        desired: &mut HashSet<Channel>,
        live: &HashSet<Channel>,
    ) -> (Vec<String>, Vec<String>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (ch, present) in changes {
            tx.send((Channel::from(*ch), *present)).unwrap();
        }
        let (add, remove) = drain_interest(None, &mut rx, desired, live);
        let sorted = |v: Vec<Channel>| {
            let mut v: Vec<String> = v.iter().map(|c| c.to_string()).collect();
            v.sort();
            v
        };
        (sorted(add), sorted(remove))
    }

    #[test]
    fn interest_batches_yield_only_real_changes() {
        let mut desired = HashSet::new();
        let mut live: HashSet<Channel> = HashSet::new();
        let (add, remove) = batch(
            &[("a", true), ("b", true), ("c", true), ("c", false)],
            &mut desired,
            &live,
        );
        assert_eq!(
            (add.clone(), remove),
            (vec!["a".to_string(), "b".to_string()], vec![])
        );
        live.extend(add.iter().map(|c| Channel::from(c.as_str())));
        // Already live, wanted again: nothing. Gone and back in one batch: nothing.
        let (add, remove) = batch(
            &[("a", true), ("b", false), ("b", true)],
            &mut desired,
            &live,
        );
        assert!(add.is_empty() && remove.is_empty());
        let (add, remove) = batch(&[("a", false), ("d", true)], &mut desired, &live);
        assert_eq!(
            (add, remove),
            (vec!["d".to_string()], vec!["a".to_string()])
        );
        assert_eq!(desired.len(), 2, "b and d wanted");
    }
}
