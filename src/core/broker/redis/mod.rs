//! Redis as the bus: standalone (one publisher connection, one subscriber
//! connection) or Redis Cluster (one RESP3 cluster connection carrying both).
//!
//! Subscriptions follow local interest channel by channel (`ws:room:x` while
//! a local client is in room x, likewise users and clients, plus
//! `ws:broadcast`), batched into one SUBSCRIBE/UNSUBSCRIBE per wakeup. The
//! original PSUBSCRIBEs `ws:room:*`; exact channels are wire-compatible and
//! spare an instance the traffic of rooms it does not host.
//!
//! Failure policy: Redis going away never stops local delivery. Publications
//! made while it is away wait in a bounded buffer (`publish_buffer`
//! messages) and are sent in order once it is back; past the bound the
//! oldest are dropped, counted, and logged once per outage. The subscriber
//! reconnects with a short capped backoff and resubscribes every channel it
//! needs. Delivery guarantee: on a healthy link, each publication reaches
//! every instance subscribed at that moment, once. Redis Pub/Sub stores
//! nothing, so an instance that is away misses what is published
//! meanwhile; around an outage a publication whose pipeline failed half
//! way is sent again (it can arrive twice), and past the buffer's bound
//! the oldest are dropped (counted in `busPublishDropped`).

mod connect;
mod publish;
mod state;
mod subscribe;

pub use connect::Outgoing;
pub(super) use connect::{cluster_builder, open_publisher, Publisher};
pub use connect::{Endpoint, RedisConfig, TlsSettings};

use crate::core::broker::relay::Relay;
use crate::core::broker::store::{ScriptCall, Store};
use crate::core::broker::{Broker, BrokerStatus, Subscriber};
use crate::core::envelope::BROADCAST_CHANNEL;
use crate::core::log::Logger;
use crate::core::stats::Stats;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;
use redis::{ProtocolVersion, PushInfo, RedisResult};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

use connect::{standalone_publisher, standalone_store, standalone_subscriber};
use publish::publish_loop;
use state::{Channel, Inner, STATE_CLOSED, STATE_CONNECTED, STATE_CONNECTING, STATE_DISCONNECTED};
use subscribe::{cluster_probe, cluster_subscribe_loop, standalone_subscribe_loop};

pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl RedisBroker {
    /// Connects (bounded by `connect_timeout`) and starts the publisher and
    /// subscriber tasks. Fails with a message naming the address.
    ///
    /// With `cfg.runtime`, the connections and those tasks run there, and
    /// what is received is relayed to `inbound` on the calling runtime
    /// (a lone message may be delivered to it there:
    /// `cfg.fan_out_on_arrival`).
    pub async fn connect(
        cfg: RedisConfig,
        inbound: Arc<dyn Subscriber>,
        log: Logger,
        stats: Arc<Stats>,
    ) -> Result<RedisBroker, String> {
        match cfg.runtime.clone() {
            None => Self::connect_here(cfg, inbound, log, stats).await,
            Some(rt) => {
                let inbound: Arc<dyn Subscriber> = Arc::new(Relay::spawn(
                    inbound,
                    cfg.fan_out_on_arrival,
                    stats.clone(),
                    log.clone(),
                ));
                crate::core::task::spawn_on(&rt, Self::connect_here(cfg, inbound, log, stats))
                    .await
                    .map_err(|e| format!("the Redis connections' thread failed: {e}"))?
            }
        }
    }

    async fn connect_here(
        cfg: RedisConfig,
        inbound: Arc<dyn Subscriber>,
        log: Logger,
        stats: Arc<Stats>,
    ) -> Result<RedisBroker, String> {
        let unreachable = |e: String| {
            format!(
                "cannot reach Redis at {} within {} ms: {e}",
                cfg.display,
                cfg.connect_timeout.as_millis()
            )
        };
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let (publisher, sub, push_rx, cluster_client, store) = match &cfg.endpoint {
            Endpoint::Standalone(url) => {
                let connect = async {
                    let p =
                        standalone_publisher(url, cfg.tls.as_ref(), cfg.connect_timeout).await?;
                    let s =
                        standalone_subscriber(url, cfg.tls.as_ref(), cfg.connect_timeout).await?;
                    let st = standalone_store(url, cfg.tls.as_ref(), cfg.connect_timeout).await?;
                    RedisResult::Ok((p, s, st))
                };
                let (p, s, st) = tokio::time::timeout(cfg.connect_timeout, connect)
                    .await
                    .map_err(|_| unreachable("timed out".into()))?
                    .map_err(|e| unreachable(e.to_string()))?;
                (
                    Publisher::Standalone(p),
                    Some(s),
                    None,
                    None,
                    Store::standalone(st),
                )
            }
            Endpoint::Cluster { nodes, sharded } => {
                let (tx, rx) = mpsc::unbounded_channel::<PushInfo>();
                let client = cluster_builder(nodes, cfg.tls.as_ref())
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| unreachable(e.to_string()))?;
                let conn = tokio::time::timeout(cfg.connect_timeout, client.get_async_connection())
                    .await
                    .map_err(|_| unreachable("timed out".into()))?
                    .map_err(|e| unreachable(e.to_string()))?;
                (
                    Publisher::Cluster(conn.clone(), *sharded),
                    None,
                    Some(rx),
                    Some(client),
                    Store::cluster(conn),
                )
            }
        };
        let inner = Arc::new(Inner {
            cfg,
            log,
            inbound,
            cluster_client,
            queue: Mutex::new(VecDeque::new()),
            queue_notify: Notify::new(),
            interest_tx,
            state: AtomicU8::new(STATE_CONNECTED),
            closing: AtomicBool::new(false),
            close_notify: Notify::new(),
            drop_logged: AtomicBool::new(false),
            stats,
            in_flight: AtomicU64::new(0),
            live: Mutex::new(HashSet::new()),
            confirm_notify: Notify::new(),
            store,
            tasks: Mutex::new(Vec::new()),
        });
        // Every instance hears broadcasts.
        let _ = inner
            .interest_tx
            .send((Channel::from(BROADCAST_CHANNEL), true));
        let pub_task = crate::core::task::spawn(publish_loop(inner.clone(), publisher.clone()));
        let sub_task = match (sub, push_rx, publisher) {
            (Some(pubsub), _, _) => crate::core::task::spawn(standalone_subscribe_loop(
                inner.clone(),
                pubsub,
                interest_rx,
            )),
            (None, Some(rx), Publisher::Cluster(conn, sharded)) => {
                inner
                    .tasks
                    .lock()
                    .push(crate::core::task::spawn(cluster_probe(
                        inner.clone(),
                        conn.clone(),
                    )));
                crate::core::task::spawn(cluster_subscribe_loop(
                    inner.clone(),
                    conn,
                    sharded,
                    rx,
                    interest_rx,
                ))
            }
            _ => unreachable!("each endpoint yields its subscriber"),
        };
        inner.tasks.lock().extend([pub_task, sub_task]);
        inner
            .log
            .info("Redis connected", &[("redis", &inner.cfg.display)]);
        Ok(RedisBroker { inner })
    }
}

impl RedisBroker {
    /// Queues an item for the publisher, dropping the oldest past the bound.
    fn enqueue(&self, item: Outgoing) {
        let inner = &self.inner;
        if inner.closing.load(Ordering::Acquire) {
            inner
                .stats
                .bus_publish_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        {
            let mut q = inner.queue.lock();
            if q.len() >= inner.cfg.publish_buffer.max(1) {
                q.pop_front();
                inner
                    .stats
                    .bus_publish_dropped
                    .fetch_add(1, Ordering::Relaxed);
                if !inner.drop_logged.swap(true, Ordering::AcqRel) {
                    inner.log.error(
                        "Redis publish buffer full: dropping the oldest until Redis is back",
                        &[
                            ("publishBuffer", &inner.cfg.publish_buffer),
                            ("redis", &inner.cfg.display),
                        ],
                    );
                }
            }
            q.push_back(item);
        }
        inner.queue_notify.notify_one();
    }
}

impl Broker for RedisBroker {
    fn publish(&self, channel: String, payload: String) {
        self.enqueue(Outgoing::Publish(channel, payload));
    }

    fn eval(&self, call: ScriptCall) {
        self.enqueue(Outgoing::Script(call));
    }

    fn subscribed(&self, channel: &str, timeout: Duration) -> BoxFuture<'static, bool> {
        let inner = self.inner.clone();
        let channel = Channel::from(channel);
        async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let notified = inner.confirm_notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if inner.live.lock().contains(&channel) {
                    return true;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return false;
                }
            }
        }
        .boxed()
    }

    fn store(&self) -> Option<Store> {
        Some(self.inner.store.clone())
    }

    fn sharded(&self) -> bool {
        matches!(
            self.inner.cfg.endpoint,
            Endpoint::Cluster { sharded: true, .. }
        )
    }

    fn interest(&self, channel: String, present: bool) {
        let _ = self
            .inner
            .interest_tx
            .send((Channel::from(channel), present));
    }

    fn status(&self) -> BrokerStatus {
        let i = &self.inner;
        BrokerStatus {
            kind: if i.cluster_client.is_some() {
                "redis-cluster"
            } else {
                "redis"
            },
            state: match i.state.load(Ordering::Acquire) {
                STATE_CONNECTED => "connected",
                STATE_CONNECTING => "connecting",
                STATE_DISCONNECTED => "disconnected",
                _ => "closed",
            },
            publish_buffered: i.buffered(),
            subscribed_channels: i.live.lock().len() as u64,
        }
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        async move {
            if inner.closing.swap(true, Ordering::AcqRel) {
                return;
            }
            // Give queued publications a moment to leave (bounded), the
            // batch being written included: the writer is stopped below,
            // and a batch cut off mid-write would be lost uncounted.
            let deadline = Instant::now() + Duration::from_secs(2);
            while inner.buffered() > 0
                && inner.state.load(Ordering::Acquire) == STATE_CONNECTED
                && Instant::now() < deadline
            {
                inner.queue_notify.notify_one();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let left = inner.buffered();
            if left > 0 {
                inner
                    .stats
                    .bus_publish_dropped
                    .fetch_add(left, Ordering::Relaxed);
                inner.log.warn(
                    "Redis shutdown: unpublished messages dropped",
                    &[("dropped", &left)],
                );
            }
            inner.state.store(STATE_CLOSED, Ordering::Release);
            inner.close_notify.notify_waiters();
            for t in inner.tasks.lock().drain(..) {
                t.abort();
            }
            // The history's and presence's connection goes too.
            inner.store.close();
        }
        .boxed()
    }
}
