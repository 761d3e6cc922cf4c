//! The server as a whole: where its pieces are assembled (the one place
//! that knows them all), the delivery API the application calls, and an
//! orderly shutdown. Each piece owns its own state:
//!
//! - [`Hub`]: clients, users, rooms, and fan-out;
//! - [`Connections`]: live sockets and per-address counts, what shutdown
//!   waits for;
//! - [`Events`]: the queue of application events and its dispatcher;
//! - [`Stats`]: the counters;
//! - a [`Broker`] with its [`Router`] (the bus), a [`Forwarder`] (sharing
//!   the port with an HTTP server), a [`Transformer`] (the outbound hook);
//! - [`Env`]: what each connection task uses of the above;
//! - [`Listener`]: what serving a socket up to its upgrade uses.

use crate::core::broker::redis::{RedisBroker, RedisConfig};
use crate::core::broker::router::{Router, Subscriptions};
use crate::core::broker::{Broker, BrokerStatus, LocalBroker};
use crate::core::config::Config;
use crate::core::connection::Env;
use crate::core::connections::Connections;
use crate::core::envelope::{self, Kind};
use crate::core::events::{self, Events};
use crate::core::forward::Forwarder;
use crate::core::handlers::Handlers;
use crate::core::heartbeat;
use crate::core::history::local::History;
use crate::core::history::protocol::HistoryConfig;
use crate::core::history::redis::RedisHistory;
use crate::core::history::Backend;
use crate::core::hub::Hub;
use crate::core::listener::{self, Listener};
use crate::core::log::Logger;
use crate::core::metrics::Metrics;
use crate::core::presence::Presence;
use crate::core::presence_redis::RedisPresence;
use crate::core::protocol::{self, close, Frame};
use crate::core::room_selection::RoomSelection;
use crate::core::stats::Stats;
use crate::core::transform::Transformer;
use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Server {
    env: Arc<Env>,
    listener: Arc<Listener>,
    broker: Arc<dyn Broker>,
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
        let hub = Arc::new(Hub::new());
        let stats = Arc::new(Stats::default());
        let router = Arc::new(Router {
            hub: hub.clone(),
            server_id: config.server_id.clone(),
            stats: stats.clone(),
            log: log.clone(),
            history: Default::default(),
        });
        let broker: Arc<dyn Broker> = match redis {
            None => Arc::new(LocalBroker),
            Some(rc) => Arc::new(
                RedisBroker::connect(rc, router.clone(), log.clone(), stats.clone())
                    .await
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?,
            ),
        };
        let tcp = if config.listen {
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
        if let Some(cap) = listener::somaxconn().filter(|&c| tcp.is_some() && c < config.backlog) {
            log.warn(
                "backlog is capped by the kernel at net.core.somaxconn",
                &[("backlog", &config.backlog), ("somaxconn", &cap)],
            );
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
        Ok(Self::assemble(
            config, hub, stats, handlers, log, broker, router, tcp, tls,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: Config,
        hub: Arc<Hub>,
        stats: Arc<Stats>,
        handlers: Arc<dyn Handlers>,
        log: Logger,
        broker: Arc<dyn Broker>,
        router: Arc<Router>,
        tcp: Option<TcpListener>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Server {
        let config = Arc::new(config);
        let local_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        hub.set_interest_listener(Arc::new(Subscriptions(broker.clone())));
        let connections = Connections::new(config.max_connections_per_ip);
        let (events, queue) = Events::new(config.event_queue_capacity, log.clone());
        let transformer = handlers.has_transformer().then(|| {
            Transformer::new(
                handlers.clone(),
                config.encrypted_batch_limit,
                stats.clone(),
                log.clone(),
            )
        });
        let store = broker.store();
        let history = config.history.then(|| {
            let cfg = HistoryConfig {
                size: config.history_size,
                ttl: config.history_ttl,
                rooms: RoomSelection {
                    rooms: config.history_rooms.clone(),
                    default_rooms: config.default_rooms.clone(),
                },
            };
            match &store {
                None => Backend::Local(Arc::new(History::new(cfg))),
                Some(store) => {
                    let h = Arc::new(RedisHistory::new(
                        cfg,
                        hub.clone(),
                        broker.clone(),
                        store.clone(),
                        stats.clone(),
                        log.clone(),
                        config.server_id.clone(),
                    ));
                    let _ = router.history.set(h.clone());
                    Backend::Redis(h)
                }
            }
        });
        let presence = config.presence.then(|| {
            Arc::new(Presence {
                rooms: RoomSelection {
                    rooms: config.presence_rooms.clone(),
                    default_rooms: config.default_rooms.clone(),
                },
                events: config.presence_events,
                fleet: store.as_ref().map(|store| {
                    Arc::new(RedisPresence::new(
                        config.presence_ttl,
                        broker.clone(),
                        store.clone(),
                        stats.clone(),
                        config.server_id.clone(),
                    ))
                }),
            })
        });
        let env = Arc::new(Env {
            config: config.clone(),
            hub: hub.clone(),
            handlers: handlers.clone(),
            log: log.clone(),
            stats: stats.clone(),
            events,
            connections: connections.clone(),
            transformer,
            history: history.clone(),
            presence: presence.clone(),
            pending_auth: Default::default(),
            deflate: config.per_message_deflate.then(|| {
                Arc::new(crate::core::deflate::Deflate {
                    threshold: config.per_message_deflate_threshold,
                    level: config.per_message_deflate_level as u32,
                    stats: stats.clone(),
                })
            }),
        });
        let listener = Arc::new(Listener {
            env: env.clone(),
            connections: connections.clone(),
            forwarder: config
                .http_fallback
                .clone()
                .map(|upstream| Forwarder::new(upstream, stats.clone(), log.clone())),
            metrics: Arc::new(Metrics {
                identifier: config.identifier.clone(),
                hub: hub.clone(),
                stats: stats.clone(),
                broker: broker.clone(),
                connections,
            }),
            tls,
        });
        let dispatcher =
            crate::core::task::spawn(events::dispatch(handlers, queue, config.event_batch_max));
        let mut tasks = vec![crate::core::task::spawn(heartbeat::sweep(
            hub,
            config.heartbeat_interval,
            config.heartbeat_timeout,
            log.clone(),
        ))];
        if let Some(tcp) = tcp {
            tasks.push(crate::core::task::spawn(listener.clone().accept_loop(tcp)));
        }
        if let Some(h) = history {
            // Rooms whose history expired are dropped lazily on use; this
            // frees the ones nobody uses again (locally: rings; with Redis:
            // the feeds of rooms nobody here follows).
            let period = config.history_ttl.clamp(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(60),
            );
            tasks.push(crate::core::task::spawn(async move {
                let mut tick = tokio::time::interval(period);
                loop {
                    tick.tick().await;
                    match &h {
                        Backend::Local(h) => h.sweep(),
                        Backend::Redis(h) => h.sweep(),
                    }
                }
            }));
        }
        if let Some((p, fleet)) = presence
            .as_ref()
            .and_then(|p| Some((p.clone(), p.fleet.clone()?)))
        {
            // Entries of a live instance never expire: each is re-added
            // well within its time to live.
            let hub = env.hub.clone();
            tasks.push(crate::core::task::spawn(async move {
                let mut tick = tokio::time::interval(fleet.ttl / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    fleet.refresh(&hub, |r| p.applies(r));
                }
            }));
        }
        log.info(
            "WebSocket Server READY",
            &[
                ("id", &config.identifier),
                (
                    "address",
                    &local_addr.map_or("attached sockets only".to_string(), |a| a.to_string()),
                ),
                ("path", &config.path),
            ],
        );
        Server {
            env,
            listener,
            broker,
            local_addr,
            tasks: Mutex::new(tasks),
            dispatcher: Mutex::new(Some(dispatcher)),
        }
    }

    /// Whether `shutdown()` has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.env.connections.is_shutting_down()
    }

    /// The bound address; `None` when the server only serves attached sockets.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Serves a TCP connection accepted elsewhere (an HTTP server's
    /// `upgrade` event): `head` is every byte already read from it, starting
    /// with the request line, which the upgrade reads first.
    pub fn adopt(&self, stream: std::net::TcpStream, head: Vec<u8>) -> io::Result<()> {
        if self.is_shutting_down() {
            return Err(io::Error::other("server is shutting down"));
        }
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        let addr = stream.peer_addr()?;
        let stream = TcpStream::from_std(stream)?;
        let live = self.env.connections.start(addr.ip());
        crate::core::task::spawn(
            self.listener
                .clone()
                .serve_adopted(stream, head, addr, live),
        );
        Ok(())
    }

    /// Serves any byte stream as if it had been accepted (plain, no TLS):
    /// what tests use to drive a connection through `tokio::io::duplex`.
    pub fn serve_io<S>(&self, stream: S, remote: SocketAddr)
    where
        S: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + crate::core::frame_writer::TryWrite
            + Unpin
            + Send
            + 'static,
    {
        let live = self.env.connections.start(remote.ip());
        crate::core::task::spawn(self.listener.clone().serve_socket(stream, remote, live));
    }

    /// Connections whose tasks are still running (closing ones included).
    pub fn live_connections(&self) -> usize {
        self.env.connections.live()
    }

    pub fn hub(&self) -> &Hub {
        &self.env.hub
    }

    pub fn stats(&self) -> &Stats {
        &self.env.stats
    }

    pub fn metrics(&self) -> &Metrics {
        &self.listener.metrics
    }

    /// The real client behind a connection spliced to `httpFallback`.
    pub fn forwarded_peer(&self, local_port: u16) -> Option<SocketAddr> {
        self.listener.forwarder.as_ref()?.peer_of(local_port)
    }

    pub fn send_to_client(&self, client_id: &str, frame: &Frame) -> usize {
        self.env.hub.send_to_client(client_id, frame)
    }

    /// Many `sendToClient` calls at once (see `protocol::each_queued_send`).
    pub fn send_to_clients(&self, batch: &str) -> usize {
        let mut sent = 0;
        protocol::each_queued_send(batch, |id, frame| {
            sent += self.env.hub.send_to_client(id, frame)
        });
        sent
    }

    pub fn send_to_user(&self, user_id: &str, frame: &Frame) -> usize {
        self.env.hub.send_to_user(user_id, frame)
    }

    /// Joins without validation (the server-side `joinRoom`).
    pub fn join_room(&self, client_id: &str, room: &str) -> bool {
        let Some(new) = self.env.hub.join_new(client_id, &[room]) else {
            return false;
        };
        if let (false, Some(p)) = (new.is_empty(), &self.env.presence) {
            let user = self.env.hub.get(client_id).and_then(|c| c.user_id());
            p.announce(&self.env.hub, room, client_id, user.as_deref(), true);
        }
        true
    }

    /// Leaves (the server-side `leaveRoom`); false when not a member.
    pub fn leave_room(&self, client_id: &str, room: &str) -> bool {
        let left = !self.env.hub.leave(client_id, &[room]).is_empty();
        if let (true, Some(p)) = (left, &self.env.presence) {
            let user = self.env.hub.get(client_id).and_then(|c| c.user_id());
            p.announce(&self.env.hub, room, client_id, user.as_deref(), false);
        }
        left
    }

    /// Whether `room` has presence (the `presence` option).
    pub fn has_presence(&self, room: &str) -> bool {
        self.env.presence.as_ref().is_some_and(|p| p.applies(room))
    }

    /// A publication to a room: through its history when it keeps one
    /// (with Redis, that reaches the room's members on every instance).
    pub fn send_to_room(&self, room: &str, frame: &Frame, exclude: &[String]) -> usize {
        match &self.env.history {
            Some(h) if h.applies(room) => h.publish(&self.env.hub, room, frame.as_str(), exclude),
            _ => self.env.hub.send_to_room(room, frame, exclude),
        }
    }

    /// Whether publications to `room` go through a history in Redis.
    fn fleet_history(&self, room: &str) -> bool {
        matches!(&self.env.history, Some(h @ Backend::Redis(_)) if h.applies(room))
    }

    /// The members of a presence room across the fleet (with Redis), as a
    /// JSON array text; `None` without Redis (the hub has the answer).
    pub async fn fleet_presence(&self, room: &str) -> Option<Result<String, String>> {
        let fleet = self.env.presence.as_ref()?.fleet.clone()?;
        Some(fleet.get(room).await)
    }

    pub fn broadcast(&self, frame: &Frame, exclude: &[String]) -> usize {
        self.env.hub.broadcast(frame, exclude)
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
            &self.env.config.server_id,
            kind,
            target,
            event,
            data_json,
            exclude,
        );
        self.broker
            .publish(envelope::channel(kind, target), payload);
    }

    /// The original's `send`: local delivery when the destination is here,
    /// and always a publication for the other instances.
    ///
    /// The publication is queued first. Its task is woken before the local
    /// recipients' tasks, so it goes out ahead of the local fan-out rather
    /// than behind a room's worth of socket writes; the original's Redis
    /// command likewise leaves before Bun writes its local subscribers. The
    /// two sets of recipients are disjoint (this instance ignores its own
    /// envelopes), so no client sees a different order.
    pub fn send(&self, destination: Option<&str>, event: &str, data_json: &str) {
        let frame = protocol::encode_frame(event, Some(data_json));
        let hub = &self.env.hub;
        let (kind, target) = match destination {
            None => (Kind::Broadcast, None),
            Some(d) if hub.has_client(d) => (Kind::Client, Some(d)),
            Some(d) if self.fleet_history(d) => {
                // Redis positions it and publishes it to every instance.
                self.send_to_room(d, &frame, &[]);
                return;
            }
            // A local room, or something on another instance: either way
            // the original publishes it as a room.
            Some(d) => (Kind::Room, Some(d)),
        };
        self.publish(kind, target, event, Some(data_json), None);
        match (kind, target) {
            (Kind::Client, Some(d)) => {
                hub.send_to_client(d, &frame);
            }
            (Kind::Room, Some(d)) => {
                self.send_to_room(d, &frame, &[]);
            }
            (Kind::Broadcast, _) => {
                hub.broadcast(&frame, &[]);
            }
            _ => {}
        }
    }

    pub fn broker_status(&self) -> BrokerStatus {
        self.broker.status()
    }

    /// Stops accepting, closes every socket with 1001, waits (bounded) for
    /// their tasks to finish, then delivers every pending event (the
    /// disconnect callbacks among them) before returning.
    pub async fn shutdown(&self) {
        let env = &self.env;
        if env.connections.begin_shutdown() {
            return;
        }
        env.log.info("Shutting down WebSocket server...", &[]);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        let (code, reason) = close::SHUTDOWN;
        let grace = env.config.shutdown_grace;
        let closed = env.connections.all_closed(|| {
            for c in env.hub.all_clients() {
                c.request_close(code, reason);
            }
        });
        if tokio::time::timeout(grace * 2, closed).await.is_err() {
            env.log.warn(
                "Shutdown: connections did not finish in time",
                &[("left", &env.connections.live())],
            );
        }
        self.broker.shutdown().await;
        // Closing the queue lets the dispatcher drain it and end.
        env.events.close();
        let dispatcher = self.dispatcher.lock().take();
        if let Some(d) = dispatcher {
            let _ = d.await;
        }
        env.log.info("WebSocket server shutdown complete", &[]);
        // What was logged should reach stderr before the process exits
        // (bounded: stderr may not be read at all).
        crate::core::log::stderr::flush(std::time::Duration::from_millis(500)).await;
    }
}
