//! The server as a whole: start (bind, accept, sweep, deliver events), the
//! delivery API the application calls, and an orderly shutdown.

use crate::core::client::ClientState;
use crate::core::config::Config;
use crate::core::handlers::{AppEvent, Handlers};
use crate::core::hub::Hub;
use crate::core::listener;
use crate::core::log::Logger;
use crate::core::protocol::{self, close, Frame};
use crate::core::stats::Stats;
use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// State shared by the listener, every connection task and the API.
pub struct Shared {
    pub config: Arc<Config>,
    pub hub: Hub,
    pub handlers: Arc<dyn Handlers>,
    pub log: Logger,
    pub stats: Arc<Stats>,
    events: Mutex<Option<mpsc::Sender<AppEvent>>>,
    shutting_down: AtomicBool,
    live_connections: AtomicUsize,
    all_closed: Notify,
}

impl Shared {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Queues an event for the application, in order. Waits (pausing this
    /// connection's reads) when the application is behind, instead of
    /// dropping what a client already sent.
    pub async fn emit(&self, ev: AppEvent) {
        let tx = self.events.lock().clone();
        match tx {
            Some(tx) => {
                if tx.send(ev).await.is_err() {
                    self.log
                        .warn(|| "Event dropped: the event queue is closed".to_string());
                }
            }
            None => self
                .log
                .debug(|| "Event dropped after shutdown".to_string()),
        }
    }

    pub(crate) fn connection_started(&self) {
        self.live_connections.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn connection_finished(&self) {
        if self.live_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_closed.notify_waiters();
        }
    }
}

pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Binds and starts serving. Must be called inside a tokio runtime.
    pub async fn start(
        config: Config,
        handlers: Arc<dyn Handlers>,
        log: Logger,
    ) -> io::Result<Server> {
        let addr = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (option host/port): {e}"),
            )
        })?;
        let local_addr = listener.local_addr()?;
        Ok(Self::with_listener(
            config, handlers, log, listener, local_addr,
        ))
    }

    fn with_listener(
        config: Config,
        handlers: Arc<dyn Handlers>,
        log: Logger,
        listener: TcpListener,
        local_addr: SocketAddr,
    ) -> Server {
        let (tx, rx) = mpsc::channel(config.event_queue_capacity.max(1));
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            hub: Hub::new(),
            handlers,
            log,
            stats: Arc::new(Stats::default()),
            events: Mutex::new(Some(tx)),
            shutting_down: AtomicBool::new(false),
            live_connections: AtomicUsize::new(0),
            all_closed: Notify::new(),
        });
        let dispatcher = tokio::spawn(dispatch_events(shared.clone(), rx));
        let accept = tokio::spawn(listener::accept_loop(shared.clone(), listener));
        let sweep = tokio::spawn(heartbeat_sweep(shared.clone()));
        shared.log.info(|| {
            format!(
                "WebSocket Server READY | id: {} | address: {local_addr} | path: {}",
                shared.config.identifier, shared.config.path
            )
        });
        Server {
            shared,
            local_addr,
            tasks: Mutex::new(vec![accept, sweep]),
            dispatcher: Mutex::new(Some(dispatcher)),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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

    pub fn send_to_user(&self, user_id: &str, frame: &Frame) -> usize {
        self.shared.hub.send_to_user(user_id, frame)
    }

    pub fn send_to_room(&self, room: &str, frame: &Frame, exclude: &[String]) -> usize {
        self.shared.hub.send_to_room(room, frame, exclude)
    }

    pub fn broadcast(&self, frame: &Frame, exclude: &[String]) -> usize {
        self.shared.hub.broadcast(frame, exclude)
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
        // Closing the queue lets the dispatcher drain it and end.
        self.shared.events.lock().take();
        let dispatcher = self.dispatcher.lock().take();
        if let Some(d) = dispatcher {
            let _ = d.await;
        }
        self.shared
            .log
            .info(|| "WebSocket server shutdown complete".to_string());
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

/// PROTOCOL §6: every `heartbeatInterval`, close authenticated clients that
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
