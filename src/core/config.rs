//! Server settings after normalisation. Defaults are the original's
//! (docs/PROTOCOL.md §11); the binding fills this from the JavaScript options.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub identifier: String,
    /// This instance's id on the bus; envelopes carrying it are its own.
    pub server_id: String,
    pub host: String,
    /// 0 binds an ephemeral port.
    pub port: u16,
    /// Bind `host:port`; false serves only sockets handed over by
    /// `Server::adopt` (an application's own HTTP server).
    pub listen: bool,
    pub path: String,
    pub default_rooms: Vec<String>,
    pub auth_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub require_encryption: bool,
    /// Built-in encryption (`encryption: 'ecdh-p256-aes-256-gcm'`): the
    /// handshake and every outbound frame are done in Rust.
    pub native_encryption: bool,
    /// `outboundTransformer` calls in flight at most, server-wide.
    pub encrypted_batch_limit: usize,
    /// Largest inbound message; larger ones close the socket with 1009.
    pub max_payload_length: usize,
    /// Close a socket that sent nothing (not even a pong) for this long;
    /// zero disables it.
    pub idle_timeout: Duration,
    /// Bytes queued for one socket before further frames are dropped (or the
    /// socket is closed, with `close_on_backpressure_limit`).
    pub backpressure_limit: usize,
    pub close_on_backpressure_limit: bool,
    /// Send transport pings to idle sockets so live peers are not cut off.
    pub send_pings: bool,
    /// Distinct rooms one `join`/`leave` frame may name; the rest are ignored.
    pub max_rooms_per_request: usize,
    /// Joins awaiting `validateRoomFn` per client; more are refused.
    pub max_pending_joins: usize,
    /// Application events waiting for JavaScript before readers pause.
    pub event_queue_capacity: usize,
    /// Events handed to JavaScript in one call at most.
    pub event_batch_max: usize,
    /// How long `shutdown()` waits for sockets to finish their close handshake.
    pub shutdown_grace: Duration,
    /// Origins allowed to open sockets (empty: any). Others get HTTP 403.
    pub allowed_origins: Vec<String>,
    /// Open connections at most (0: no limit); beyond, upgrades get HTTP 503.
    pub max_connections: usize,
    /// Open connections per remote IP at most (0: no limit); beyond, HTTP 429.
    pub max_connections_per_ip: usize,
    /// Rooms one client may be in through `join` (own and default rooms not counted).
    pub max_rooms_per_client: usize,
    /// Inbound frames per second per client (0: no limit); beyond, close 1008.
    pub max_frames_per_second: u32,
    /// `authenticateFn` calls in flight at most (0: no limit); beyond, close 1013.
    pub max_pending_auth: usize,
    /// Serve Prometheus text at this path (plain GET on the same port).
    pub metrics_path: Option<String>,
    /// PEM certificate chain and private key: serve `wss://`.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Length of the accept queue asked of the kernel (it caps it at
    /// `net.core.somaxconn`): a fleet reconnecting at once must not find
    /// it full, or its SYNs are retransmitted a second later. Zero, the
    /// default, asks for the kernel's cap itself (`listener::bind`).
    pub backlog: u32,
    /// A write that makes no progress for this long (the peer stopped
    /// reading) drops the connection; zero disables it.
    pub send_timeout: Duration,
    /// History rooms on (the `history` option given).
    pub history: bool,
    /// History rooms: publications kept per room.
    pub history_size: usize,
    /// How long a room's history lives after its last publication.
    pub history_ttl: Duration,
    /// Rooms with history: names or prefixes ending in `*`; `None`: every
    /// room but the default rooms and client-id rooms.
    pub history_rooms: Option<Vec<String>>,
    /// Presence: whether it is on, for which rooms (as `history_rooms`), and
    /// whether join/leave events go to the room's members.
    pub presence: bool,
    pub presence_rooms: Option<Vec<String>>,
    pub presence_events: bool,
    /// With Redis: how long a member's entry outlives its instance's last
    /// refresh (entries are refreshed every third of it).
    pub presence_ttl: Duration,
    /// permessage-deflate (RFC 7692) offered to clients that ask for it.
    pub per_message_deflate: bool,
    /// Messages shorter than this go uncompressed.
    pub per_message_deflate_threshold: usize,
    /// zlib's compression level, 0–9.
    pub per_message_deflate_level: usize,
    /// `host:port` of the application's HTTP server: connections that do
    /// not open with a WebSocket upgrade at `path` are spliced to it
    /// (one public port for both; see `forward`). None answers them 404/426.
    pub http_fallback: Option<String>,
    /// A frame offered to a client whose connection has nothing to write
    /// is written to its socket by whoever offers it, instead of by the
    /// connection's task (`Client`'s gate). Worth it where offers and
    /// tasks share one thread (`js-thread` mode); on several, it would put
    /// a fan-out's writes on one.
    pub direct_writes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            identifier: "WEBSOCKET_SERVER".into(),
            server_id: uuid::Uuid::new_v4().to_string(),
            host: "0.0.0.0".into(),
            port: 0,
            listen: true,
            path: "/ws".into(),
            default_rooms: vec!["ws-default".into(), "ws-notification".into()],
            auth_timeout: Duration::from_millis(5_000),
            heartbeat_interval: Duration::from_millis(30_000),
            heartbeat_timeout: Duration::from_millis(90_000),
            require_encryption: false,
            encrypted_batch_limit: 10,
            native_encryption: false,
            max_payload_length: 128 * 1024,
            idle_timeout: Duration::from_secs(60),
            backpressure_limit: 1024 * 1024,
            close_on_backpressure_limit: false,
            send_pings: true,
            max_rooms_per_request: 1024,
            max_pending_joins: 16,
            event_queue_capacity: 16 * 1024,
            event_batch_max: 1024,
            shutdown_grace: Duration::from_secs(2),
            allowed_origins: Vec::new(),
            max_connections: 100_000,
            max_connections_per_ip: 0,
            max_rooms_per_client: 1_000,
            max_frames_per_second: 1_000,
            max_pending_auth: 10_000,
            metrics_path: None,
            tls: None,
            http_fallback: None,
            per_message_deflate: false,
            per_message_deflate_threshold: 128,
            per_message_deflate_level: 6,
            backlog: 0,
            history: false,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            history_rooms: None,
            presence: false,
            presence_rooms: None,
            presence_events: false,
            presence_ttl: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            direct_writes: false,
        }
    }
}
