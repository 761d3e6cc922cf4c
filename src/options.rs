//! A server's options, each stated once: its name as the application
//! writes it (`serverOptions.maxPayloadLength`), its type and check, its
//! default and where it goes in the core's `Config`.
//!
//! [`with_options!`] is the one list. Generated from it:
//! - `NativeOptions`, what `ts/options.ts` hands over (and its TypeScript
//!   type in the generated `index.d.ts`);
//! - `defaultOptions()`, the defaults, read from `Config::default()` (the
//!   one place they are set);
//! - `optionSchema()`, which `ts/options.ts` reads every value against
//!   (path, kind, lower bound), and which the tests hold the TypeScript
//!   types and docs/API.md to;
//! - `to_config`, their conversion into `Config`.
//!
//! Options with a shape of their own (`redis`, `tls`, `encryption`,
//! `logLevel`, `logFormat`, the handlers, and the objects `history`,
//! `presence` and `perMessageDeflate` whose fields are rows here, with
//! `perMessageDeflate.level`'s upper bound) are checked by hand in
//! `ts/options.ts`; those of their values that reach `Config` are the extra
//! fields of `NativeOptions`.

use crate::core::broker::redis::{Endpoint, RedisConfig, TlsSettings};
use crate::core::config::Config;
use crate::core::log::Level;
use napi::{Error, Result, Status};
use napi_derive::napi;
use std::time::Duration;

/// Calls `$m! { field path kind(min) "doc", … }` with every option that has
/// a plain value. `field` is the `Config` field (and, in camelCase, the
/// `NativeOptions` one); `path` is the option as written, dotted inside
/// its object; `kind` is one of:
/// `str` (non-empty string), `opt_str` (absent or a non-empty string),
/// `strings` (array of non-empty strings), `opt_strings` (absent or one),
/// `bool`, `int` (integer ≥ min, at most 2³²−1), `ms` (milliseconds ≥ min),
/// `secs` (seconds ≥ min).
#[macro_export]
macro_rules! with_options {
    ($m:path) => {
        $m! {
            identifier "identifier" str(0) "Name of this server in logs and metrics.",
            host "host" str(0) "Address to listen on.",
            port "port" int(0) "Port to listen on; 0 picks a free one (read `ws.port`).",
            path "path" str(0) "Path of WebSocket upgrades; must start with \"/\".",
            default_rooms "defaultRooms" strings(0) "Rooms every authenticated client joins.",
            auth_timeout "authTimeout" ms(1) "ms to send `authenticate` after connecting (×3 to finish it).",
            heartbeat_interval "heartbeatInterval" ms(1) "ms between heartbeat sweeps.",
            heartbeat_timeout "heartbeatTimeout" ms(1) "ms of silence after which a client is closed 4002.",
            require_encryption "requireEncryption" bool(0) "Refuse clients without an encryption handshake (4004).",
            encrypted_batch_limit "encryptedBatchLimit" int(1) "`outboundTransformer` calls in flight at most.",
            max_payload_length "serverOptions.maxPayloadLength" int(1) "Largest inbound message in bytes; larger ones close 1009.",
            idle_timeout "serverOptions.idleTimeout" secs(0) "Seconds without a frame (or pong) before a socket is closed; 0 disables.",
            backpressure_limit "serverOptions.backpressureLimit" int(1) "Bytes queued for one socket before its frames are dropped.",
            close_on_backpressure_limit "serverOptions.closeOnBackpressureLimit" bool(0) "Close (1013) instead of dropping at the backpressure limit.",
            send_pings "serverOptions.sendPings" bool(0) "Ping idle sockets so live peers are not cut off.",
            allowed_origins "allowedOrigins" strings(0) "Browser origins allowed to connect (empty: any); others get HTTP 403.",
            max_connections "limits.maxConnections" int(0) "Open connections at most (0: no limit); beyond, HTTP 503.",
            max_connections_per_ip "limits.maxConnectionsPerIp" int(0) "Open connections per IP at most (0: no limit); beyond, HTTP 429.",
            max_rooms_per_client "limits.maxRoomsPerClient" int(0) "Rooms one client may join through `join`.",
            max_frames_per_second "limits.maxFramesPerSecond" int(0) "Inbound frames per second per client (0: no limit); beyond, close 1008.",
            max_pending_auth "limits.maxPendingAuthentications" int(0) "`authenticateFn` calls in flight at most (0: no limit); beyond, close 1013.",
            metrics_path "metricsPath" opt_str(0) "Serve Prometheus text at this path on the same port.",
            backlog "backlog" int(0) "Accept queue length asked of the kernel; 0: the kernel's cap, `net.core.somaxconn`.",
            send_timeout "sendTimeout" ms(0) "ms a write may make no progress before the socket is dropped; 0 disables.",
            history_size "history.size" int(1) "History rooms: publications kept per room.",
            history_ttl "history.ttl" ms(1) "History rooms: ms a room's history lives after its last publication.",
            history_rooms "history.rooms" opt_strings(0) "History rooms: names or prefixes ending in `*` (default: every room but the default and client-id rooms).",
            presence_events "presence.events" bool(0) "Presence rooms: send `presence` join/leave events to the members.",
            presence_ttl "presence.ttl" ms(300) "Presence with Redis: ms a member's entry outlives its instance's last refresh.",
            presence_rooms "presence.rooms" opt_strings(0) "Presence rooms: names or prefixes ending in `*`.",
            per_message_deflate_threshold "perMessageDeflate.threshold" int(0) "Compression on: messages shorter than this many bytes go uncompressed.",
            per_message_deflate_level "perMessageDeflate.level" int(0) "Compression on: zlib level, 0 (fastest) to 9 (smallest); each publication is compressed once.",
        }
    };
}

/// Each kind's conversion to and from its `Config` field.
macro_rules! to_js {
    (ms, $v:expr) => {
        $v.as_millis() as f64
    };
    (secs, $v:expr) => {
        $v.as_secs_f64()
    };
    (int, $v:expr) => {
        u32::try_from($v).unwrap_or(u32::MAX)
    };
    ($kind:ident, $v:expr) => {
        $v
    };
}

macro_rules! from_js {
    (ms, $path:literal, $v:expr) => {
        millis($path, *$v)?
    };
    (secs, $path:literal, $v:expr) => {
        millis($path, *$v * 1000.0)?
    };
    (int, $path:literal, $v:expr) => {
        (*$v).try_into().map_err(|_| {
            Error::new(
                Status::InvalidArg,
                format!("{}: {} is out of range", $path, $v),
            )
        })?
    };
    ($kind:ident, $path:literal, $v:expr) => {
        $v.clone()
    };
}

/// `logLevel`: the most verbose level written.
#[napi(string_enum = "lowercase")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Silent,
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub fn max(self) -> Option<Level> {
        match self {
            LogLevel::Silent => None,
            LogLevel::Error => Some(Level::Error),
            LogLevel::Warn => Some(Level::Warn),
            LogLevel::Info => Some(Level::Info),
            LogLevel::Debug => Some(Level::Debug),
        }
    }
}

/// `logFormat`: text lines or one JSON object per line.
#[napi(string_enum = "lowercase")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Redis connection, normalised by `ts/redis-options.ts`.
#[napi(object)]
pub struct NativeRedisOptions {
    /// `redis://` / `rediss://` URL of a standalone server.
    pub url: Option<String>,
    /// Seed node URLs of a Redis Cluster.
    pub nodes: Option<Vec<String>>,
    /// Cluster only: SSUBSCRIBE/SPUBLISH (not compatible with original instances).
    pub sharded: bool,
    /// milliseconds
    pub connect_timeout: f64,
    pub publish_buffer: f64,
    /// The address as shown in messages (no password).
    pub display: String,
    /// TLS details beyond `rediss://` (ioredis-style `tls` object).
    pub tls: Option<NativeRedisTls>,
}

#[napi(object)]
pub struct NativeRedisTls {
    /// PEM CA certificate(s) to trust instead of the system store.
    pub ca: Option<String>,
    /// PEM client certificate and key, for mutual TLS.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// `rejectUnauthorized: false`: no certificate verification.
    pub insecure: bool,
}

pub fn to_redis_config(o: &NativeRedisOptions) -> Result<RedisConfig> {
    let endpoint = match (&o.url, &o.nodes) {
        (Some(url), _) => Endpoint::Standalone(url.clone()),
        (None, Some(nodes)) if !nodes.is_empty() => Endpoint::Cluster {
            nodes: nodes.clone(),
            sharded: o.sharded,
        },
        _ => {
            return Err(Error::new(
                Status::InvalidArg,
                "redis: expected a URL or cluster nodes",
            ))
        }
    };
    Ok(RedisConfig {
        endpoint,
        connect_timeout: millis("redis.connectTimeout", o.connect_timeout)?,
        publish_buffer: o.publish_buffer.max(1.0) as usize,
        display: o.display.clone(),
        tls: o.tls.as_ref().map(|t| TlsSettings {
            ca: t.ca.as_ref().map(|s| s.as_bytes().to_vec()),
            cert: t.cert.as_ref().map(|s| s.as_bytes().to_vec()),
            key: t.key.as_ref().map(|s| s.as_bytes().to_vec()),
            insecure: t.insecure,
        }),
        runtime: None,
        fan_out_on_arrival: false,
    })
}

/// One option, as `optionSchema()` describes it.
#[napi(object)]
pub struct NativeOptionSpec {
    /// As the application writes it, dotted inside its object.
    pub path: String,
    /// The `NativeOptions` field it fills.
    pub field: String,
    /// `str`, `opt_str`, `strings`, `opt_strings`, `bool`, `int`, `ms` or `secs`.
    pub kind: String,
    /// Lower bound of a number.
    pub min: f64,
    pub doc: String,
}

/// `NativeOptions`, one field per row, of its kind's JavaScript type. A
/// tt-muncher, so that napi's attribute sees each type spelled out (a
/// type passed through a macro fragment hides `Option` from it: the field
/// would be typed `any` and required).
macro_rules! native_options_struct {
    (@rows [$($out:tt)*]) => {
        /// Every option of a server, checked and with its defaults filled in
        /// by `ts/options.ts` against `optionSchema()`.
        #[napi(object)]
        pub struct NativeOptions {
            $($out)*
            /// History rooms on (`history` given).
            pub history: bool,
            /// Presence on (`presence` given).
            pub presence: bool,
            /// permessage-deflate offered (`perMessageDeflate` given).
            pub per_message_deflate: bool,
            pub server_id: String,
            pub redis: Option<NativeRedisOptions>,
            /// Bind host:port (false: only sockets handed over with adoptSocket).
            pub listen: bool,
            pub log_level: LogLevel,
            pub log_format: LogFormat,
            /// Where the core runs (`run_mode::RunMode`).
            pub run_mode: crate::run_mode::RunMode,
            pub has_message_handler: bool,
            /// Built-in ECDH P-256 / AES-256-GCM encryption done in Rust.
            pub native_encryption: bool,
            /// PEM certificate chain and key: serve wss://.
            pub tls_cert: Option<String>,
            pub tls_key: Option<String>,
        }
    };
    (@rows [$($out:tt)*] $field:ident str $doc:literal, $($rest:tt)*) => {
        native_options_struct!(@rows [$($out)* #[doc = $doc] pub $field: String,] $($rest)*);
    };
    (@rows [$($out:tt)*] $field:ident opt_str $doc:literal, $($rest:tt)*) => {
        native_options_struct!(@rows [$($out)* #[doc = $doc] pub $field: Option<String>,] $($rest)*);
    };
    (@rows [$($out:tt)*] $field:ident strings $doc:literal, $($rest:tt)*) => {
        native_options_struct!(@rows [$($out)* #[doc = $doc] pub $field: Vec<String>,] $($rest)*);
    };
    (@rows [$($out:tt)*] $field:ident opt_strings $doc:literal, $($rest:tt)*) => {
        native_options_struct!(@rows [$($out)* #[doc = $doc] pub $field: Option<Vec<String>>,] $($rest)*);
    };
    (@rows [$($out:tt)*] $field:ident bool $doc:literal, $($rest:tt)*) => {
        native_options_struct!(@rows [$($out)* #[doc = $doc] pub $field: bool,] $($rest)*);
    };
    (@rows [$($out:tt)*] $field:ident int $doc:literal, $($rest:tt)*) => {
        native_options_struct!(@rows [$($out)* #[doc = $doc] pub $field: u32,] $($rest)*);
    };
    (@rows [$($out:tt)*] $field:ident ms $doc:literal, $($rest:tt)*) => {
        native_options_struct!(@rows [$($out)* #[doc = $doc] pub $field: f64,] $($rest)*);
    };
    (@rows [$($out:tt)*] $field:ident secs $doc:literal, $($rest:tt)*) => {
        native_options_struct!(@rows [$($out)* #[doc = $doc] pub $field: f64,] $($rest)*);
    };
}

macro_rules! define_options {
    ($($field:ident $path:literal $kind:ident($min:literal) $doc:literal,)*) => {
        native_options_struct!(@rows [] $($field $kind $doc,)*);

        /// The options' defaults, from the one place they are set
        /// (`Config::default()`, plus the logging defaults).
        #[napi]
        #[cfg_attr(test, allow(dead_code))] // called from JavaScript only
        pub fn default_options() -> NativeOptions {
            let c = Config::default();
            NativeOptions {
                $($field: to_js!($kind, c.$field),)*
                history: c.history,
                presence: c.presence,
                per_message_deflate: c.per_message_deflate,
                server_id: String::new(),
                redis: None,
                listen: c.listen,
                log_level: LogLevel::Info,
                log_format: LogFormat::Text,
                run_mode: crate::run_mode::RunMode::Auto,
                has_message_handler: false,
                native_encryption: c.native_encryption,
                tls_cert: None,
                tls_key: None,
            }
        }

        /// Every option with a plain value: what `ts/options.ts` checks.
        #[napi]
        #[cfg_attr(test, allow(dead_code))] // called from JavaScript only
        pub fn option_schema() -> Vec<NativeOptionSpec> {
            vec![$(NativeOptionSpec {
                path: $path.into(),
                field: camel_case(stringify!($field)),
                kind: stringify!($kind).into(),
                min: $min as f64,
                doc: $doc.into(),
            },)*]
        }

        /// The options as the core's settings.
        pub fn to_config(o: &NativeOptions) -> Result<Config> {
            let tls = match (&o.tls_cert, &o.tls_key) {
                (Some(c), Some(k)) => Some((c.as_bytes().to_vec(), k.as_bytes().to_vec())),
                (None, None) => None,
                _ => {
                    return Err(Error::new(
                        Status::InvalidArg,
                        "tls: both cert and key are required",
                    ))
                }
            };
            if o.per_message_deflate_level > 9 {
                return Err(Error::new(
                    Status::InvalidArg,
                    format!("perMessageDeflate.level: expected 0 to 9, got {}", o.per_message_deflate_level),
                ));
            }
            Ok(Config {
                $($field: from_js!($kind, $path, &o.$field),)*
                history: o.history,
                presence: o.presence,
                per_message_deflate: o.per_message_deflate,
                server_id: o.server_id.clone(),
                listen: o.listen,
                native_encryption: o.native_encryption,
                tls,
                ..Config::default()
            })
        }
    };
}
with_options!(define_options);

/// `snake_case` → `camelCase`, as napi names the fields.
fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for ch in snake.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    out
}

pub fn millis(name: &str, v: f64) -> Result<Duration> {
    if !v.is_finite() || v < 0.0 {
        return Err(Error::new(
            Status::InvalidArg,
            format!("{name}: expected a non-negative number of milliseconds, got {v}"),
        ));
    }
    Ok(Duration::from_millis(v as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_convert_back_to_the_config_they_came_from() {
        let c = to_config(&default_options()).unwrap();
        let d = Config::default();
        assert_eq!(c.max_payload_length, d.max_payload_length);
        assert_eq!(c.idle_timeout, d.idle_timeout);
        assert_eq!(c.auth_timeout, d.auth_timeout);
        assert_eq!(c.max_pending_auth, d.max_pending_auth);
        assert_eq!(c.history_size, d.history_size);
        assert_eq!(c.default_rooms, d.default_rooms);
    }

    #[test]
    fn the_schema_names_each_field_as_napi_does() {
        let schema = option_schema();
        let paths: std::collections::HashSet<_> = schema.iter().map(|s| s.path.clone()).collect();
        assert_eq!(paths.len(), schema.len(), "a path twice");
        let spec = schema
            .iter()
            .find(|s| s.path == "limits.maxPendingAuthentications")
            .unwrap();
        assert_eq!(
            (spec.field.as_str(), spec.kind.as_str()),
            ("maxPendingAuth", "int")
        );
        assert_eq!(camel_case("max_connections_per_ip"), "maxConnectionsPerIp");
    }

    #[test]
    fn an_out_of_range_port_is_refused() {
        let mut o = default_options();
        o.port = 70_000;
        let e = to_config(&o).err().unwrap();
        assert!(e.reason.contains("port"), "{}", e.reason);
    }
}
