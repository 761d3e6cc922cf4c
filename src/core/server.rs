//! The server as a whole: start (bind, accept, sweep, deliver events), the
//! delivery API the application calls, and an orderly shutdown.

use crate::core::broker::redis::{RedisBroker, RedisConfig};
use crate::core::broker::{Broker, BrokerStatus, Inbound, LocalBroker};
use crate::core::client::ClientState;
use crate::core::config::Config;
use crate::core::envelope::{self, Kind};
use crate::core::handlers::{AppEvent, Handlers};
use crate::core::hub::{Hub, Interest, InterestListener};
use crate::core::listener;
use crate::core::log::Logger;
use crate::core::protocol::{self, close, Frame};
use crate::core::stats::Stats;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// State shared by the listener, every connection task and the API.
pub struct Shared {
    pub config: Arc<Config>,
    pub hub: Hub,
    pub handlers: Arc<dyn Handlers>,
    pub log: Logger,
    pub stats: Arc<Stats>,
    pub broker: Arc<dyn Broker>,
    /// Outbound transformer calls allowed in flight (`encryptedBatchLimit`).
    pub transform_permits: Arc<tokio::sync::Semaphore>,
    /// Envelopes from the bus that were not JSON or not shaped right.
    pub invalid_envelopes: AtomicU64,
    events: Mutex<Option<mpsc::Sender<AppEvent>>>,
    shutting_down: AtomicBool,
    live_connections: AtomicUsize,
    all_closed: Notify,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// `authenticateFn` calls in flight.
    pub pending_auth: AtomicUsize,
    /// Real peers of connections spliced to `httpFallback`.
    pub forwarded_peers: crate::core::forward::Peers,
}

impl Shared {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Queues an event for the application, in order. Waits (pausing this
    /// connection's reads) when the application is behind, instead of
    /// dropping what a client already sent.
    pub async fn emit(&self, ev: AppEvent) {
        if let Some(wait) = self.try_emit(ev) {
            wait.await;
        }
    }

    /// `emit` without an await point when the queue has room (nearly
    /// always); otherwise the (boxed) wait to await. Connection loops use
    /// this so the waiting state does not size their lifelong futures.
    pub fn try_emit(&self, ev: AppEvent) -> Option<BoxFuture<'static, ()>> {
        let (tx, ev) = match self.events.lock().as_ref() {
            None => {
                self.log
                    .debug(|| "Event dropped after shutdown".to_string());
                return None;
            }
            Some(tx) => match tx.try_send(ev) {
                Ok(()) => return None,
                Err(mpsc::error::TrySendError::Full(ev)) => (tx.clone(), ev),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.log
                        .warn(|| "Event dropped: the event queue is closed".to_string());
                    return None;
                }
            },
        };
        let log = self.log.clone();
        Some(Box::pin(async move {
            if tx.send(ev).await.is_err() {
                log.warn(|| "Event dropped: the event queue is closed".to_string());
            }
        }))
    }

    fn connection_started(&self, ip: IpAddr) {
        self.live_connections.fetch_add(1, Ordering::AcqRel);
        if self.config.max_connections_per_ip > 0 {
            *self.per_ip.lock().entry(ip).or_insert(0) += 1;
        }
    }

    fn connection_finished(&self, ip: IpAddr) {
        if self.config.max_connections_per_ip > 0 {
            let mut map = self.per_ip.lock();
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        if self.live_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_closed.notify_waiters();
        }
    }

    /// A connection spliced to the application's HTTP server is not waited
    /// for by `shutdown()` (browsers keep HTTP connections open for minutes);
    /// it stops counting as live until it ends.
    pub(crate) fn forwarding_started(&self) {
        if self.live_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_closed.notify_waiters();
        }
    }

    pub(crate) fn forwarding_finished(&self) {
        self.live_connections.fetch_add(1, Ordering::AcqRel);
    }

    /// Connection tasks running (closing ones included).
    pub fn live(&self) -> u64 {
        self.live_connections.load(Ordering::Acquire) as u64
    }

    /// Open TCP connections from `ip` (counted only when a per-IP limit is set).
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.per_ip.lock().get(&ip).copied().unwrap_or(0)
    }
}

/// What a server is assembled from besides its config.
struct Parts {
    tls: Option<tokio_rustls::TlsAcceptor>,
    handlers: Arc<dyn Handlers>,
    log: Logger,
    broker: Arc<dyn Broker>,
    router: Arc<Router>,
}

/// One connection counted as live (and against its address's limit) for as
/// long as this exists. It moves from the task that accepts a socket into
/// the connection's own task, and dropping it (a panic included) ends the
/// count, which `shutdown()` waits on.
pub struct Live {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Live {
    pub(crate) fn start(shared: &Arc<Shared>, ip: IpAddr) -> Live {
        shared.connection_started(ip);
        Live {
            shared: shared.clone(),
            ip,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shared.connection_finished(self.ip);
    }
}

pub struct Server {
    shared: Arc<Shared>,
    local_addr: Option<SocketAddr>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Binds and starts serving. Must be called inside a tokio runtime.
    pub async fn start(
        config: Config,
        handlers: Arc<dyn Handlers>,
        log: Logger,
        redis: Option<RedisConfig>,
    ) -> io::Result<Server> {
        let router = Arc::new(Router {
            shared: OnceLock::new(),
            server_id: config.server_id.clone(),
        });
        let broker: Arc<dyn Broker> = match redis {
            None => Arc::new(LocalBroker),
            Some(rc) => Arc::new(
                RedisBroker::connect(rc, router.clone(), log.clone())
                    .await
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?,
            ),
        };
        let listener = if config.listen {
            let addr = format!("{}:{}", config.host, config.port);
            match listener::bind(&addr, config.backlog).await {
                Ok(l) => Some(l),
                Err(e) => {
                    broker.shutdown().await;
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} (option host/port): {e}"),
                    ));
                }
            }
        } else {
            None
        };
        if let Some(cap) =
            listener::somaxconn().filter(|&c| listener.is_some() && c < config.backlog)
        {
            log.warn(|| {
                format!(
                    "backlog {} is capped by the kernel at net.core.somaxconn = {cap}",
                    config.backlog
                )
            });
        }
        let tls = match &config.tls {
            None => None,
            Some((cert, key)) => match listener::tls_acceptor(cert, key) {
                Ok(a) => Some(a),
                Err(e) => {
                    broker.shutdown().await;
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
                }
            },
        };
        let parts = Parts {
            tls,
            handlers,
            log,
            broker,
            router,
        };
        Ok(Self::with_listener(config, parts, listener))
    }

    fn with_listener(config: Config, parts: Parts, listener: Option<TcpListener>) -> Server {
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let Parts {
            tls,
            handlers,
            log,
            broker,
            router,
        } = parts;
        let (tx, rx) = mpsc::channel(config.event_queue_capacity.max(1));
        let transform_permits = Arc::new(tokio::sync::Semaphore::new(
            config.encrypted_batch_limit.max(1),
        ));
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            hub: Hub::new(),
            handlers,
            log,
            stats: Arc::new(Stats::default()),
            transform_permits,
            broker: broker.clone(),
            invalid_envelopes: AtomicU64::new(0),
            events: Mutex::new(Some(tx)),
            shutting_down: AtomicBool::new(false),
            live_connections: AtomicUsize::new(0),
            all_closed: Notify::new(),
            per_ip: Mutex::new(HashMap::new()),
            pending_auth: AtomicUsize::new(0),
            forwarded_peers: Default::default(),
        });
        let _ = router.shared.set(Arc::downgrade(&shared));
        shared
            .hub
            .set_interest_listener(Arc::new(BrokerInterest(broker)));
        let dispatcher = tokio::spawn(dispatch_events(shared.clone(), rx));
        let mut tasks = vec![tokio::spawn(heartbeat_sweep(shared.clone()))];
        if let Some(l) = listener {
            tasks.push(tokio::spawn(listener::accept_loop(shared.clone(), l, tls)));
        }
        shared.log.info(|| {
            format!(
                "WebSocket Server READY | id: {} | address: {} | path: {}",
                shared.config.identifier,
                local_addr.map_or("attached sockets only".to_string(), |a| a.to_string()),
                shared.config.path
            )
        });
        Server {
            shared,
            local_addr,
            tasks: Mutex::new(tasks),
            dispatcher: Mutex::new(Some(dispatcher)),
        }
    }

    /// The bound address; `None` when the server only serves attached sockets.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Serves a TCP connection accepted elsewhere (an HTTP server's
    /// `upgrade` event): `head` is every byte already read from it, starting
    /// with the request line, which the upgrade reads first.
    pub fn adopt(&self, stream: std::net::TcpStream, head: Vec<u8>) -> io::Result<()> {
        if self.shared.is_shutting_down() {
            return Err(io::Error::other("server is shutting down"));
        }
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        let addr = stream.peer_addr()?;
        let stream = TcpStream::from_std(stream)?;
        let live = Live::start(&self.shared, addr.ip());
        tokio::spawn(listener::serve_adopted(
            self.shared.clone(),
            stream,
            head,
            addr,
            live,
        ));
        Ok(())
    }

    /// Serves any byte stream as if it had been accepted (plain, no TLS):
    /// what tests use to drive a connection through `tokio::io::duplex`.
    pub fn serve_io<S>(&self, stream: S, remote: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let live = Live::start(&self.shared, remote.ip());
        tokio::spawn(listener::serve_socket(
            self.shared.clone(),
            stream,
            remote,
            live,
        ));
    }

    /// Connections whose tasks are still running (closing ones included).
    pub fn live_connections(&self) -> usize {
        self.shared.live_connections.load(Ordering::Acquire)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn send_to_client(&self, client_id: &str, frame: &Frame) -> usize {
        self.shared.hub.send_to_client(client_id, frame)
    }

    /// Many `sendToClient` calls at once (see `protocol::each_queued_send`).
    pub fn send_to_clients(&self, batch: String) -> usize {
        let mut sent = 0;
        protocol::each_queued_send(batch, |id, frame| {
            sent += self.shared.hub.send_to_client(id, frame)
        });
        sent
    }

    pub fn send_to_user(&self, user_id: &str, frame: &Frame) -> usize {
        self.shared.hub.send_to_user(user_id, frame)
    }

    pub fn send_to_room(&self, room: &str, frame: &Frame, exclude: &[String]) -> usize {
        self.shared.hub.send_to_room(room, frame, exclude)
    }

    pub fn broadcast(&self, frame: &Frame, exclude: &[String]) -> usize {
        self.shared.hub.broadcast(frame, exclude)
    }

    /// Publishes an envelope for the other instances (this one ignores it).
    pub fn publish(
        &self,
        kind: Kind,
        target: Option<&str>,
        event: &str,
        data_json: Option<&str>,
        exclude: Option<&[String]>,
    ) {
        let payload = envelope::encode(
            &self.shared.config.server_id,
            kind,
            target,
            event,
            data_json,
            exclude,
        );
        self.shared
            .broker
            .publish(envelope::channel(kind, target), payload);
    }

    /// The original's `send`: local delivery when the destination is here,
    /// and always a publication for the other instances.
    pub fn send(&self, destination: Option<&str>, event: &str, data_json: &str) {
        let frame = protocol::encode_frame(event, Some(data_json));
        let hub = &self.shared.hub;
        let (kind, target) = match destination {
            None => {
                hub.broadcast(&frame, &[]);
                (Kind::Broadcast, None)
            }
            Some(d) if hub.has_client(d) => {
                hub.send_to_client(d, &frame);
                (Kind::Client, Some(d))
            }
            Some(d) => {
                // A local room, or something on another instance: either way
                // the original publishes it as a room.
                hub.send_to_room(d, &frame, &[]);
                (Kind::Room, Some(d))
            }
        };
        self.publish(kind, target, event, Some(data_json), None);
    }

    pub fn broker_status(&self) -> BrokerStatus {
        self.shared.broker.status()
    }

    pub fn invalid_envelopes(&self) -> u64 {
        self.shared.invalid_envelopes.load(Ordering::Relaxed)
    }

    /// Stops accepting, closes every socket with 1001, waits (bounded) for
    /// their tasks to finish, then delivers every pending event (the
    /// disconnect callbacks among them) before returning.
    pub async fn shutdown(&self) {
        if self.shared.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared
            .log
            .info(|| "Shutting down WebSocket server...".to_string());
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        let (code, reason) = close::SHUTDOWN;
        let grace = self.shared.config.shutdown_grace;
        let wait_closed = async {
            loop {
                let notified = self.shared.all_closed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.shared.live_connections.load(Ordering::Acquire) == 0 {
                    break;
                }
                for c in self.shared.hub.all_clients() {
                    c.request_close(code, reason);
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace * 2, wait_closed).await.is_err() {
            self.shared.log.warn(|| {
                format!(
                    "Shutdown: {} connection(s) did not finish in time",
                    self.shared.live_connections.load(Ordering::Acquire)
                )
            });
        }
        self.shared.broker.shutdown().await;
        // Closing the queue lets the dispatcher drain it and end.
        self.shared.events.lock().take();
        let dispatcher = self.dispatcher.lock().take();
        if let Some(d) = dispatcher {
            let _ = d.await;
        }
        self.shared
            .log
            .info(|| "WebSocket server shutdown complete".to_string());
        // What was logged should reach stderr before the process exits
        // (bounded: stderr may not be read at all).
        crate::core::log::stderr::flush(std::time::Duration::from_millis(500)).await;
    }
}

/// Hands application events to the handlers in batches: one call carries
/// whatever queued up while the previous call was running.
async fn dispatch_events(shared: Arc<Shared>, mut rx: mpsc::Receiver<AppEvent>) {
    let max = shared.config.event_batch_max.max(1);
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, max).await > 0 {
        let events = std::mem::replace(&mut batch, Vec::with_capacity(64));
        shared.handlers.deliver(events).await;
    }
}

/// docs/PROTOCOL.md §6: every `heartbeatInterval`, close authenticated clients that
/// were silent for longer than `heartbeatTimeout`.
async fn heartbeat_sweep(shared: Arc<Shared>) {
    let period = shared.config.heartbeat_interval;
    if period.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = shared.config.heartbeat_timeout.as_millis() as u64;
    loop {
        tick.tick().await;
        let now = protocol::now_ms();
        for c in shared.hub.all_clients() {
            if c.state() != ClientState::Authenticated {
                continue;
            }
            let last = c.last_activity.load(Ordering::Relaxed);
            if now.saturating_sub(last) > timeout {
                shared.log.warn(|| {
                    format!(
                        "Heartbeat timeout | id: {} | lastActivity: {}",
                        c.id,
                        protocol::iso_time(last)
                    )
                });
                let (code, reason) = close::HEARTBEAT_TIMEOUT;
                c.request_close(code, reason);
            }
        }
    }
}

/// Subscribes the broker to the channel of each interest the hub reports.
struct BrokerInterest(Arc<dyn Broker>);

impl InterestListener for BrokerInterest {
    fn changed(&self, interest: Interest, present: bool) {
        let channel = match interest {
            Interest::Room(r) => envelope::channel(Kind::Room, Some(&r)),
            Interest::User(u) => envelope::channel(Kind::User, Some(&u)),
            Interest::Client(c) => envelope::channel(Kind::Client, Some(&c)),
        };
        self.0.interest(channel, present);
    }
}

/// Delivers envelopes from the bus to local sockets (docs/PROTOCOL.md §10).
pub struct Router {
    shared: OnceLock<Weak<Shared>>,
    server_id: String,
}

impl Inbound for Router {
    fn deliver(&self, channel: &str, payload: &str) {
        let Some(shared) = self.shared.get().and_then(Weak::upgrade) else {
            return;
        };
        let env = match envelope::decode(payload) {
            Ok(e) => e,
            Err(why) => {
                shared.invalid_envelopes.fetch_add(1, Ordering::Relaxed);
                shared
                    .log
                    .error(|| format!("Invalid Redis message ({why}) | channel: {channel}"));
                return;
            }
        };
        if env.server_id == self.server_id {
            return;
        }
        let hub = &shared.hub;
        match (env.kind, env.target.as_deref()) {
            (Some(Kind::Broadcast), _) => {
                hub.broadcast(&env.frame(), &env.exclude);
            }
            (Some(Kind::Room), Some(room)) => {
                hub.send_to_room(room, &env.frame(), &env.exclude);
            }
            (Some(Kind::Client), Some(id)) => {
                hub.send_to_client(id, &env.frame());
            }
            (Some(Kind::User), Some(user)) => {
                hub.send_to_user(user, &env.frame());
            }
            _ => {}
        }
    }
}
