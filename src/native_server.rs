//! `NativeServer`: the class the TypeScript layer wraps. Options arrive
//! already normalised and validated by `ts/options.ts`; this file converts
//! them, starts the core on the runtime its run mode names (`run_mode`:
//! napi's multi-thread runtime, or the JS thread's) and exposes the hub.

use crate::batched_calls::BatchedCalls;
use crate::core::broker::redis::RedisConfig;
use crate::core::config::Config;
use crate::core::handlers::AuthOutcome;
use crate::core::hub::ClientSnapshot;
use crate::core::log::{Format, Level, Logger, StderrLog};
use crate::core::metrics::Sample;
use crate::core::protocol::Frame;
use crate::core::server::Server;
use crate::core::violation::Violation;
use crate::js_handlers::{weak, HandshakeResult, JsHandlers, JsLog, TransformResult};
use crate::options::{to_config, to_redis_config, LogFormat, NativeOptions};
use crate::queued_sends;
use crate::run_mode::{act_on, with_core, Exec};
use crate::worker_end::on_worker_end;
use napi::bindgen_prelude::{FnArgs, Function, Promise};
use napi::{Error, Result, Status};
use napi_derive::napi;
use parking_lot::Mutex;
use std::sync::Arc;

#[napi(object)]
pub struct NativeClient {
    pub id: String,
    pub user_id: Option<String>,
    pub state: String,
    pub rooms: Vec<String>,
    pub backpressured: bool,
    pub encrypted: bool,
    pub connected_at: f64,
    pub last_activity: f64,
    pub server_public_key: Option<String>,
    pub salt: Option<String>,
    pub remote_address: String,
}

impl From<ClientSnapshot> for NativeClient {
    fn from(s: ClientSnapshot) -> Self {
        NativeClient {
            id: s.id,
            user_id: s.user_id,
            state: s.state.as_str().to_string(),
            rooms: s.rooms,
            backpressured: s.backpressured,
            encrypted: s.encrypted,
            connected_at: s.connected_at as f64,
            last_activity: s.last_activity as f64,
            server_public_key: s.server_public_key,
            salt: s.salt,
            remote_address: s.remote,
        }
    }
}

/// `ws.stats()`: connections by state and the bus's kind and state, then
/// the gauges of `core::metrics::with_gauges!` and the counters of
/// `core::stats::with_counters!`, generated from those two lists.
macro_rules! native_stats {
    (
        [$($gauge:ident $ghelp:literal |$s:ident| $read:expr,)*]
        $($field:ident $help:literal,)*
    ) => {
        #[napi(object)]
        pub struct NativeStats {
            /// Clients connected (in any state, until removed).
            pub connections: u32,
            pub unauthorized: u32,
            pub authenticating: u32,
            pub authenticated: u32,
            /// "local", "redis" or "redis-cluster"
            pub bus: String,
            /// "connected", "connecting", "disconnected" or "closed"
            pub bus_state: String,
            /// Log lines dropped because stderr was not read fast enough
            /// (process-wide: every server shares the one writer).
            pub log_dropped: f64,
            $(#[doc = $ghelp] pub $gauge: f64,)*
            $(#[doc = $help] pub $field: f64,)*
            /// Clients closed for violating RFC 6455, by reason.
            pub protocol_errors: NativeProtocolErrors,
        }

        impl From<Sample> for NativeStats {
            fn from(sample: Sample) -> NativeStats {
                let [un, ing, ed] = sample.by_state;
                NativeStats {
                    connections: sample.clients as u32,
                    unauthorized: un as u32,
                    authenticating: ing as u32,
                    authenticated: ed as u32,
                    bus: if sample.bus.kind.is_empty() { "local" } else { sample.bus.kind }.to_string(),
                    bus_state: if sample.bus.state.is_empty() { "closed" } else { sample.bus.state }.to_string(),
                    log_dropped: sample.log_dropped as f64,
                    $($gauge: { let $s = &sample; $read } as f64,)*
                    $($field: sample.stats.$field as f64,)*
                    protocol_errors: NativeProtocolErrors::from(&sample.stats.violations),
                }
            }
        }
    };
}

/// `ws.stats().protocolErrors`: one count per kind of
/// `core::violation::with_violations!`, generated from that list.
macro_rules! native_protocol_errors {
    ($($name:ident $code:literal $reason:literal $help:literal,)*) => {
        #[napi(object)]
        #[allow(non_snake_case)]
        pub struct NativeProtocolErrors {
            $(#[doc = $help] pub $name: f64,)*
        }

        impl From<&[u64; Violation::ALL.len()]> for NativeProtocolErrors {
            fn from(counts: &[u64; Violation::ALL.len()]) -> Self {
                NativeProtocolErrors {
                    $($name: counts[Violation::$name as usize] as f64,)*
                }
            }
        }
    };
}
crate::with_violations!(native_protocol_errors);

/// Feeds both lists to `native_stats!`.
macro_rules! with_gauges_then_counters {
    ($($g:tt)*) => {
        crate::with_counters!(native_stats; [$($g)*]);
    };
}
crate::with_gauges!(with_gauges_then_counters);

/// Starts the Autobahn TestSuite's echo fixture (`core::echo`) on
/// `host:port` (0: a free port); resolves with the port. It runs until the
/// process ends. Test tooling only (`npm run autobahn:server`).
#[napi]
#[cfg_attr(test, allow(dead_code))] // called from JavaScript only
pub async fn start_echo_fixture(host: String, port: u32, max_payload: u32) -> Result<u32> {
    let listener = tokio::net::TcpListener::bind((host.as_str(), port as u16))
        .await
        .map_err(|e| napi::Error::from_reason(format!("echo fixture: {e}")))?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    crate::core::task::spawn(crate::core::echo::serve(listener, max_payload as usize));
    Ok(port as u32)
}

/// Native half of `WebSocketServer`.
#[napi]
pub struct NativeServer {
    config: Config,
    redis: Option<RedisConfig>,
    handlers: Arc<JsHandlers>,
    logger: Logger,
    /// For the JavaScript layer's own lines (`log_line`).
    js_lines: JsLines,
    server: Arc<Mutex<Option<Arc<Server>>>>,
    /// Where the core runs.
    exec: Exec,
}

/// How the JavaScript layer's lines are formatted and where they go: the
/// same rules as the core's, so every line of a server looks alike.
struct JsLines {
    max: Option<Level>,
    /// Set when the application has a `logger`: lines are returned for it.
    format: Option<Format>,
    stderr: StderrLog,
}

#[napi]
impl NativeServer {
    #[napi(constructor)]
    // The JS function types must be spelled out for the generated typings.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub fn new(
        env: napi::Env,
        options: NativeOptions,
        authenticate: Function<String, ()>,
        validate_rooms: Option<Function<String, ()>>,
        handshake: Option<
            Function<FnArgs<(String, Option<String>, String)>, Promise<HandshakeResult>>,
        >,
        deliver: Function<String, ()>,
        log: Option<Function<FnArgs<(String, String)>, ()>>,
        transform: Option<Function<FnArgs<(String, String)>, Promise<TransformResult>>>,
    ) -> Result<Self> {
        let mut config = to_config(&options)?;
        let mut redis = options.redis.as_ref().map(to_redis_config).transpose()?;
        let max = options.log_level.max();
        let exec = Exec::new(options.run_mode, &env)?;
        config.direct_writes = exec.direct_writes();
        let runner = exec.runner();
        if let (Some(_), Some(rc)) = (runner, redis.as_mut()) {
            rc.runtime = Some(crate::js_thread::Runner::redis_runtime()?);
            rc.fan_out_on_arrival = config.direct_writes;
        }
        let handlers = Arc::new(JsHandlers {
            authenticate: BatchedCalls::new(&authenticate, AuthOutcome::Failed, runner)?,
            validate_rooms: validate_rooms
                .map(|f| BatchedCalls::new(&f, Err, runner))
                .transpose()?,
            handshake: handshake.map(|f| weak(&f)).transpose()?.map(Arc::new),
            transform: transform.map(|f| weak(&f)).transpose()?.map(Arc::new),
            deliver: Arc::new(weak(&deliver)?),
            wants_messages: options.has_message_handler,
            runner,
        });
        let json = options.log_format == LogFormat::Json;
        let format = if json {
            Format::Json {
                server: config.identifier.clone(),
            }
        } else {
            Format::Text
        };
        let stderr = StderrLog {
            server: config.identifier.clone(),
            max,
            json,
        };
        let logger = match &log {
            Some(f) => weak(f).map(|f| {
                Logger::new(Arc::new(JsLog {
                    f,
                    max,
                    format: format.clone(),
                }))
            }),
            None => Ok(Logger::new(Arc::new(StderrLog {
                server: config.identifier.clone(),
                max,
                json,
            }))),
        };
        let has_logger = log.is_some();
        let logger = logger?;
        let server: Arc<Mutex<Option<Arc<Server>>>> = Arc::new(Mutex::new(None));
        // Shut down with its worker (`worker_end`); started, not awaited: it
        // goes on on the server's runtime.
        on_worker_end(&env, &server, move |slot| {
            let Some(s) = slot.lock().clone().filter(|s| !s.is_shutting_down()) else {
                return;
            };
            crate::core::log::stderr::write(
                b"[ignis-ws] warn the worker thread that made this server ended before shutdown(); \
                  shutting it down (clients get 1001; its last events cannot reach JavaScript)\n",
            );
            exec.enter(|| drop(tokio::spawn(async move { s.shutdown().await })));
        })?;
        Ok(NativeServer {
            config,
            redis,
            handlers,
            logger,
            js_lines: JsLines {
                max,
                format: has_logger.then_some(format),
                stderr,
            },
            server,
            exec,
        })
    }

    /// Where the core runs: "js-thread" or "threads" (`auto` resolved).
    #[napi(getter)]
    pub fn run_mode(&self) -> String {
        self.exec.mode().as_str().to_string()
    }

    /// A line of the JavaScript layer: `fields` alternate keys and values.
    /// Returns the finished line when the application has a `logger` (the
    /// caller hands it over at once), otherwise writes it to stderr through
    /// the log writer and returns nothing; nothing either when `level` is
    /// not logged.
    #[napi]
    pub fn log_line(&self, level: String, msg: String, fields: Vec<String>) -> Option<String> {
        let level = match level.as_str() {
            "error" => Level::Error,
            "warn" => Level::Warn,
            "info" => Level::Info,
            _ => Level::Debug,
        };
        if self.js_lines.max.is_none_or(|m| level > m) {
            return None;
        }
        let pairs: Vec<(&str, &String)> = fields
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((k.as_str(), v)),
                _ => None,
            })
            .collect();
        let fields: Vec<crate::core::log::Field<'_>> = pairs
            .iter()
            .map(|(k, v)| (*k, *v as &dyn std::fmt::Display))
            .collect();
        match &self.js_lines.format {
            Some(format) => Some(format.line(level, &msg, &fields)),
            None => {
                crate::core::log::stderr::write(
                    self.js_lines.stderr.line(level, &msg, &fields).as_bytes(),
                );
                None
            }
        }
    }

    /// Whether `start()` binds host:port (false: attached sockets only).
    #[napi]
    pub fn set_listen(&mut self, listen: bool) {
        self.config.listen = listen;
    }

    /// `host:port` of the application's HTTP server: every connection that
    /// does not open with a WebSocket upgrade at `path` is spliced to it.
    #[napi]
    pub fn set_http_fallback(&mut self, address: Option<String>) {
        self.config.http_fallback = address;
    }

    /// The real client (`ip:port`, `[ipv6]:port`) behind a connection
    /// spliced to `httpFallback`, by the local port the application sees as
    /// its peer's port.
    #[napi]
    pub fn forwarded_peer(&self, port: u32) -> Option<String> {
        let port = u16::try_from(port).ok()?;
        self.with(|s| s.forwarded_peer(port).map(|a| a.to_string()), None)
    }

    /// Binds and starts serving; resolves with the bound port (none when
    /// not listening).
    #[napi]
    pub async fn start(&self) -> Result<Option<u32>> {
        if self.server.lock().is_some() {
            return Err(Error::new(
                Status::GenericFailure,
                "server is already running",
            ));
        }
        let server = self
            .exec
            .run(Server::start(
                self.config.clone(),
                self.handlers.clone(),
                self.logger.clone(),
                self.redis.clone(),
            ))
            .await
            .map_err(|e| Error::new(Status::GenericFailure, e.to_string()))?;
        let port = server.local_addr().map(|a| u32::from(a.port()));
        *self.server.lock() = Some(Arc::new(server));
        Ok(port)
    }

    /// Closes every socket (1001), runs the disconnect callbacks, stops.
    #[napi]
    pub async fn shutdown(&self) -> Result<()> {
        let server = self.server.lock().clone();
        if let Some(s) = server {
            self.exec.run(async move { s.shutdown().await }).await;
        }
        Ok(())
    }

    fn with<T>(&self, f: impl FnOnce(&Server) -> T, default: T) -> T {
        with_core(&self.server, f, default)
    }

    fn act<T>(&self, f: impl FnOnce(&Server) -> T, default: T) -> T {
        act_on(self.exec, &self.server, f, default)
    }

    /// Answers to authentication requests, `[seq, kind, text]` each: kind 0
    /// accepted (text: the userId or null), 1 rejected, 2 the handler
    /// failed (text: the error).
    #[napi]
    pub fn auth_answers(&self, answers: String) {
        let read = self.exec.call(|| {
            self.handlers.authenticate.answer_all(
                &answers,
                |(seq, kind, text): (u64, u8, Option<String>)| {
                    let outcome = match kind {
                        0 => AuthOutcome::Accepted { user_id: text },
                        1 => AuthOutcome::Rejected,
                        _ => AuthOutcome::Failed(text.unwrap_or_else(|| "unknown error".into())),
                    };
                    (seq, outcome)
                },
            )
        });
        if let Err(e) = read {
            // Its clients meet the auth timeout.
            self.logger.error(
                "Unreadable authentication answers; ignored",
                &[("error", &e)],
            );
        }
    }

    /// Answers to room validations, `[seq, rooms, error]` each: the rooms
    /// allowed, or the error `validateRoomFn` threw or rejected with.
    #[napi]
    pub fn room_answers(&self, answers: String) {
        let Some(calls) = self.handlers.validate_rooms.as_ref() else {
            return;
        };
        let read = self.exec.call(|| {
            calls.answer_all(
                &answers,
                |(seq, rooms, error): (u64, Vec<String>, Option<String>)| {
                    (seq, error.map_or(Ok(rooms), Err))
                },
            )
        });
        if let Err(e) = read {
            // Nothing is joined for those requests.
            self.logger.error(
                "Unreadable room validation answers; ignored",
                &[("error", &e)],
            );
        }
    }

    /// `frame` is the complete JSON text to send (`{"event":..,"data":..}`).
    #[napi]
    pub fn send_to_client(&self, client_id: String, frame: String) -> u32 {
        let frame = Frame::from(frame);
        self.act(|s| s.send_to_client(&client_id, &frame) as u32, 0)
    }

    /// The function that takes the `sendToClient` calls made while a batch
    /// of events was handled, in one crossing: lines of a client id, an
    /// event and data, one after another (`protocol::each_queued_send`); a
    /// bare N-API function (`queued_sends`).
    #[napi(ts_return_type = "(batch: string) => number")]
    pub fn queued_sender<'e>(&self, env: &'e napi::Env) -> Result<Function<'e, String, u32>> {
        queued_sends::create(env, self.exec, self.server.clone())
    }

    #[napi]
    pub fn send_to_user(&self, user_id: String, frame: String) -> u32 {
        let frame = Frame::from(frame);
        self.act(|s| s.send_to_user(&user_id, &frame) as u32, 0)
    }

    #[napi]
    pub fn send_to_room(&self, room: String, frame: String, exclude: Option<Vec<String>>) -> u32 {
        let frame = Frame::from(frame);
        let exclude = exclude.unwrap_or_default();
        self.act(|s| s.send_to_room(&room, &frame, &exclude) as u32, 0)
    }

    #[napi]
    pub fn broadcast(&self, frame: String, exclude: Option<Vec<String>>) -> u32 {
        let frame = Frame::from(frame);
        let exclude = exclude.unwrap_or_default();
        self.act(|s| s.broadcast(&frame, &exclude) as u32, 0)
    }

    /// The original's `send` (local delivery + publication); `data_json` is
    /// `JSON.stringify(data)`.
    #[napi]
    pub fn send(&self, destination: Option<String>, event: String, data_json: String) {
        self.act(|s| s.send(destination.as_deref(), &event, &data_json), ())
    }

    #[napi]
    pub fn join_room(&self, client_id: String, room: String) -> bool {
        self.act(|s| s.join_room(&client_id, &room), false)
    }

    #[napi]
    pub fn leave_room(&self, client_id: String, room: String) -> bool {
        self.act(|s| s.leave_room(&client_id, &room), false)
    }

    /// Takes over a TCP socket that an HTTP server accepted and is about to
    /// upgrade: duplicates `fd` (the caller then closes its own), and serves
    /// it, replaying `head` (the reconstructed request head plus any bytes
    /// read past it).
    #[napi]
    pub fn adopt_socket(&self, fd: i32, head: napi::bindgen_prelude::Buffer) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::fd::BorrowedFd;
            if fd < 0 {
                return Err(Error::new(
                    Status::InvalidArg,
                    "adoptSocket: invalid file descriptor",
                ));
            }
            // SAFETY: the caller owns `fd` for the duration of this call; we
            // only duplicate it.
            let owned = unsafe { BorrowedFd::borrow_raw(fd) }
                .try_clone_to_owned()
                .map_err(|e| {
                    Error::new(
                        Status::GenericFailure,
                        format!("adoptSocket: dup failed: {e}"),
                    )
                })?;
            let stream = std::net::TcpStream::from(owned);
            let server = self.server.lock().clone();
            let Some(server) = server else {
                return Err(Error::new(
                    Status::GenericFailure,
                    "adoptSocket: server is not running",
                ));
            };
            self.exec
                .enter(|| server.adopt(stream, head.to_vec()))
                .map_err(|e| Error::new(Status::GenericFailure, format!("adoptSocket: {e}")))
        }
        #[cfg(not(unix))]
        {
            let _ = (fd, head);
            Err(Error::new(
                Status::GenericFailure,
                "adoptSocket is only supported on Unix",
            ))
        }
    }

    /// Closes one client's socket with `code` and `reason`.
    #[napi]
    pub fn close_client(&self, client_id: String, code: u32, reason: String) -> bool {
        let code = u16::try_from(code).unwrap_or(1000);
        self.act(
            |s| match s.hub().get(&client_id) {
                Some(c) => {
                    c.request_close(code, &reason);
                    true
                }
                None => false,
            },
            false,
        )
    }

    #[napi]
    pub fn has_client(&self, client_id: String) -> bool {
        self.with(|s| s.hub().has_client(&client_id), false)
    }

    /// A presence room's members across the fleet, as JSON text
    /// (`[{clientId, userId?, metadata?}]`); `null` without Redis, where
    /// the caller lists this instance's members itself.
    #[napi]
    pub async fn fleet_presence(&self, room: String) -> Result<Option<String>> {
        let server = self.server.lock().clone();
        let Some(server) = server else {
            return Ok(None);
        };
        let presence = self
            .exec
            .run(async move { server.fleet_presence(&room).await })
            .await;
        match presence {
            None => Ok(None),
            Some(Ok(json)) => Ok(Some(json)),
            Some(Err(e)) => Err(Error::new(Status::GenericFailure, e)),
        }
    }

    /// The `metadata` `authenticateFn` gave a client, as JSON: shared with
    /// the fleet by presence entries.
    #[napi]
    pub fn set_client_metadata(&self, client_id: String, metadata_json: Option<String>) {
        self.with(
            |s| {
                if let Some(c) = s.hub().get(&client_id) {
                    c.details.lock().metadata = metadata_json.map(Arc::from);
                }
            },
            (),
        )
    }

    /// Whether `room` has presence (the `presence` option).
    #[napi]
    pub fn has_presence(&self, room: String) -> bool {
        self.with(|s| s.has_presence(&room), false)
    }

    #[napi]
    pub fn has_room(&self, room: String) -> bool {
        self.with(|s| s.hub().has_room(&room), false)
    }

    #[napi]
    pub fn clients(&self) -> Vec<NativeClient> {
        self.with(
            |s| {
                s.hub()
                    .clients_snapshot()
                    .into_iter()
                    .map(Into::into)
                    .collect()
            },
            Vec::new(),
        )
    }

    #[napi]
    pub fn client(&self, client_id: String) -> Option<NativeClient> {
        self.with(
            |s| s.hub().get(&client_id).map(|c| s.hub().snapshot(&c).into()),
            None,
        )
    }

    #[napi]
    pub fn clients_by_user(&self, user_id: String) -> Vec<NativeClient> {
        self.with(
            |s| {
                s.hub()
                    .user_snapshot(&user_id)
                    .into_iter()
                    .map(Into::into)
                    .collect()
            },
            Vec::new(),
        )
    }

    #[napi]
    pub fn clients_by_room(&self, room: String) -> Vec<NativeClient> {
        self.with(
            |s| {
                s.hub()
                    .room_snapshot(&room)
                    .into_iter()
                    .map(Into::into)
                    .collect()
            },
            Vec::new(),
        )
    }

    /// Prometheus text exposition of the gauges and counters.
    #[napi]
    pub fn metrics(&self) -> String {
        self.with(|s| s.metrics().render(), String::new())
    }

    #[napi]
    pub fn stats(&self) -> NativeStats {
        self.with(|s| s.metrics().sample(), Sample::default())
            .into()
    }
}
