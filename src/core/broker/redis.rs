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

use super::store::{scripts, ScriptCall, Store};
use super::{Broker, BrokerStatus, Subscriber};
use crate::core::envelope::BROADCAST_CHANNEL;
use crate::core::log::Logger;
use crate::core::stats::Stats;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, RedisResult};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A `redis://` or `rediss://` URL.
    Standalone(String),
    /// Seed node URLs; `sharded` uses SSUBSCRIBE/SPUBLISH.
    Cluster { nodes: Vec<String>, sharded: bool },
}

/// TLS beyond what a `rediss://` URL says: a private CA, a client
/// certificate (mTLS), or no verification at all.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// PEM root certificate(s) to trust instead of the system store.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate and key.
    pub cert: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    /// Skip certificate verification (`rejectUnauthorized: false`).
    pub insecure: bool,
}

impl TlsSettings {
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca.is_none() && self.cert.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: match (&self.cert, &self.key) {
                (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                    client_cert: c.clone(),
                    client_key: k.clone(),
                }),
                _ => None,
            },
            root_cert: self.ca.clone(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub endpoint: Endpoint,
    pub tls: Option<TlsSettings>,
    /// How long `configure()` waits for the first connection.
    pub connect_timeout: Duration,
    /// Publications kept while Redis is unreachable.
    pub publish_buffer: usize,
    /// How the address is named in messages (no password).
    pub display: String,
}

const STATE_CONNECTED: u8 = 0;
const STATE_CONNECTING: u8 = 1;
const STATE_DISCONNECTED: u8 = 2;
const STATE_CLOSED: u8 = 3;
const PUBLISH_BATCH: usize = 256;
const PING_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// After an outage, publications wait this long once the link is back, so
/// that the other instances (reconnecting on the same backoff) have
/// resubscribed before the buffered messages go out: Redis keeps nothing
/// for a channel nobody is subscribed to.
const RESUBSCRIBE_GRACE: Duration = Duration::from_millis(350);

/// What the publisher sends, in queue order.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Publish(String, String),
    Script(ScriptCall),
}

/// The two connection flavours behind one small surface.
#[derive(Clone)]
pub(super) enum Publisher {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection, bool),
}

impl Publisher {
    pub(super) async fn publish_batch(&mut self, batch: &[Outgoing]) -> RedisResult<()> {
        match self {
            Publisher::Standalone(c) => {
                let mut p = redis::pipe();
                for item in batch {
                    match item {
                        Outgoing::Publish(ch, msg) => {
                            p.publish(ch, msg).ignore();
                        }
                        Outgoing::Script(call) => {
                            p.add_command(call.evalsha()).ignore();
                        }
                    }
                }
                p.query_async::<()>(c).await
            }
            Publisher::Cluster(c, sharded) => {
                let cmd_name = if *sharded { "SPUBLISH" } else { "PUBLISH" };
                for item in batch {
                    match item {
                        Outgoing::Publish(ch, msg) => {
                            redis::cmd(cmd_name)
                                .arg(ch)
                                .arg(msg)
                                .query_async::<()>(c)
                                .await?
                        }
                        Outgoing::Script(call) => {
                            call.invocation().invoke_async::<redis::Value>(c).await?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Loads the scripts a pipeline may call by SHA1: a restarted server
/// knows none, and a pipeline cannot load one half way.
async fn load_scripts(c: &mut MultiplexedConnection) -> RedisResult<()> {
    for script in scripts().all() {
        script.prepare_invoke().load_async(c).await?;
    }
    Ok(())
}

struct Inner {
    cfg: RedisConfig,
    log: Logger,
    inbound: Arc<dyn Subscriber>,
    cluster_client: Option<redis::cluster::ClusterClient>,
    queue: Mutex<VecDeque<Outgoing>>,
    queue_notify: Notify,
    interest_tx: mpsc::UnboundedSender<(Channel, bool)>,
    state: AtomicU8,
    closing: AtomicBool,
    close_notify: Notify,
    drop_logged: AtomicBool,
    stats: Arc<Stats>,
    /// Publications taken from the queue and not yet confirmed.
    in_flight: AtomicU64,
    /// The channels the server confirmed on the live connection: what the
    /// subscriber compares wanted channels with, what `subscribed()` waits
    /// for, and the count `status()` reports. Changed batch by batch, never
    /// copied whole.
    live: Mutex<HashSet<Channel>>,
    confirm_notify: Notify,
    store: Store,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// At most this many received messages are handed to the subscriber at
/// once: it bounds how long the first of them waits for the others' fan-out.
const BUS_BATCH: usize = 32;

impl Inner {
    /// Messages from the subscriptions, to the subscriber in one call.
    fn receive(&self, batch: &[redis::Msg]) {
        self.stats
            .bus_received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut messages = Vec::with_capacity(batch.len());
        for msg in batch {
            match std::str::from_utf8(msg.get_payload_bytes()) {
                Ok(payload) => messages.push((msg.get_channel_name(), payload)),
                Err(_) => self.log.error(
                    "Redis message is not UTF-8",
                    &[("channel", &msg.get_channel_name())],
                ),
            }
        }
        self.inbound.deliver_all(&messages);
    }

    /// Records what the server confirmed (or, `clear`, that the connection
    /// holding the subscriptions is gone) and wakes `subscribed()` waiters.
    fn confirm(&self, clear: bool, add: Vec<Channel>, remove: &[Channel]) {
        {
            let mut live = self.live.lock();
            if clear {
                live.clear();
            }
            for r in remove {
                live.remove(r);
            }
            live.extend(add);
        }
        self.confirm_notify.notify_waiters();
    }

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

pub struct RedisBroker {
    inner: Arc<Inner>,
}

fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1 << attempt.min(5))
        .min(BACKOFF_MAX);
    // Jitter so a fleet does not reconnect in lockstep.
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    base.mul_f64(0.75 + f64::from(jitter) / 4000.0)
}

/// A client for a standalone server, with the TLS settings applied.
fn standalone_client(url: &str, tls: Option<&TlsSettings>) -> RedisResult<redis::Client> {
    let Some(tls) = tls else {
        return redis::Client::open(url);
    };
    let url = if tls.insecure && !url.contains('#') {
        format!("{url}#insecure")
    } else {
        url.to_string()
    };
    match tls.certificates() {
        Some(certs) => redis::Client::build_with_tls(url.as_str(), certs),
        None => redis::Client::open(url.as_str()),
    }
}

async fn standalone_publisher(
    url: &str,
    tls: Option<&TlsSettings>,
    timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    let client = standalone_client(url, tls)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    load_scripts(&mut c).await?;
    Ok(c)
}

async fn standalone_store(
    url: &str,
    tls: Option<&TlsSettings>,
    timeout: Duration,
) -> RedisResult<ConnectionManager> {
    let client = standalone_client(url, tls)?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(super::store::REQUEST_TIMEOUT))
        .set_max_delay(BACKOFF_MAX);
    ConnectionManager::new_with_config(client, cfg).await
}

async fn standalone_subscriber(
    url: &str,
    tls: Option<&TlsSettings>,
    timeout: Duration,
) -> RedisResult<redis::aio::PubSub> {
    let client = standalone_client(url, tls)?;
    match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection timed out",
        ))),
    }
}

pub(super) fn cluster_builder(nodes: &[String], tls: Option<&TlsSettings>) -> ClusterClientBuilder {
    let mut b = ClusterClientBuilder::new(nodes.to_vec());
    if let Some(tls) = tls {
        if let Some(certs) = tls.certificates() {
            b = b.certs(certs);
        }
        if tls.insecure {
            b = b.tls(redis::TlsMode::Insecure);
        }
    }
    b
}

impl RedisBroker {
    /// Connects (bounded by `connect_timeout`) and starts the publisher and
    /// subscriber tasks. Fails with a message naming the address.
    pub async fn connect(
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
                    Store::Standalone(st),
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
                    Store::Cluster(conn),
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
        let pub_task = tokio::spawn(publish_loop(inner.clone(), publisher.clone()));
        let sub_task = match (sub, push_rx, publisher) {
            (Some(pubsub), _, _) => tokio::spawn(standalone_subscribe_loop(
                inner.clone(),
                pubsub,
                interest_rx,
            )),
            (None, Some(rx), Publisher::Cluster(conn, sharded)) => {
                inner
                    .tasks
                    .lock()
                    .push(tokio::spawn(cluster_probe(inner.clone(), conn.clone())));
                tokio::spawn(cluster_subscribe_loop(
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
            publish_buffered: i.queue.lock().len() as u64 + i.in_flight.load(Ordering::Relaxed),
            subscribed_channels: i.live.lock().len() as u64,
        }
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        async move {
            if inner.closing.swap(true, Ordering::AcqRel) {
                return;
            }
            // Give queued publications a moment to leave (bounded).
            let deadline = Instant::now() + Duration::from_secs(2);
            while !inner.queue.lock().is_empty()
                && inner.state.load(Ordering::Acquire) == STATE_CONNECTED
                && Instant::now() < deadline
            {
                inner.queue_notify.notify_one();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let left = inner.queue.lock().len() as u64;
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
        }
        .boxed()
    }
}

/// Sends queued publications in pipelined batches; reconnects on failure
/// and keeps the batch at the front of the queue until it went out.
async fn publish_loop(inner: Arc<Inner>, mut conn: Publisher) {
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

fn requeue_front(inner: &Inner, batch: Vec<Outgoing>) {
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

async fn reconnect_publisher(inner: &Inner) -> Option<Publisher> {
    open_publisher(&inner.cfg, inner.cluster_client.as_ref())
        .await
        .ok()
}

/// Opens a publisher connection (scripts loaded), bounded by
/// `connect_timeout`: the servers' publisher and the emitter's both.
pub(super) async fn open_publisher(
    cfg: &RedisConfig,
    cluster: Option<&redis::cluster::ClusterClient>,
) -> RedisResult<Publisher> {
    let open = async {
        match (&cfg.endpoint, cluster) {
            (Endpoint::Standalone(url), _) => {
                standalone_publisher(url, cfg.tls.as_ref(), cfg.connect_timeout)
                    .await
                    .map(Publisher::Standalone)
            }
            (Endpoint::Cluster { sharded, .. }, Some(client)) => client
                .get_async_connection()
                .await
                .map(|c| Publisher::Cluster(c, *sharded)),
            (Endpoint::Cluster { .. }, None) => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no cluster client",
            ))),
        }
    };
    match tokio::time::timeout(cfg.connect_timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection timed out",
        ))),
    }
}

/// A channel name, allocated once and shared by the wanted and the live
/// sets (a client has three channels of its own: its id, its user and its
/// own-id room, so copies per set add up per idle connection).
type Channel = Arc<str>;

fn names(channels: &[Channel]) -> Vec<&str> {
    channels.iter().map(|c| &**c).collect()
}

/// Applies queued interest changes to `desired`; returns the channels to
/// subscribe and unsubscribe on the live connection.
fn drain_interest(
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

async fn standalone_subscribe_loop(
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
const CLUSTER_PROBE_EVERY: Duration = Duration::from_secs(1);
const CLUSTER_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The cluster connection reconnects and resubscribes by itself, so
/// nothing else here learns that Redis went away: a PING through it every
/// second (routed by the client to one node) sets the state `status()`
/// reports, and, like the standalone subscriber's link, holds
/// publications in the buffer while it fails.
async fn cluster_probe(inner: Arc<Inner>, mut conn: ClusterConnection) {
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

async fn cluster_subscribe_loop(
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
                            tokio::spawn(async move {
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
