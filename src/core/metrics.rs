//! Prometheus text exposition of the server's gauges and counters, served
//! at `metricsPath` on the server's own port.
//!
//! Every series is named once, in the two tables below, and encoded by the
//! `prometheus` crate's text encoder (format 0.0.4): one HELP and TYPE per
//! family, whatever its labels. `prometheus-client` was tried first; it
//! writes OpenMetrics (`# TYPE x counter` over samples named `x_total`),
//! which `promtool check metrics` rejects ("no help text") and a classic
//! scrape reads as untyped.

use crate::core::broker::{Broker, BrokerStatus};
use crate::core::connections::Connections;
use crate::core::hub::Hub;
use crate::core::stats::{Stats, StatsSnapshot};
use crate::core::violation::Violation;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Arc;

/// What one scrape (or one `stats()`) reads, taken once so every series
/// agrees.
#[derive(Debug, Default)]
pub struct Sample {
    /// Clients in the hub (any state, closing ones until they are removed).
    pub clients: u64,
    pub by_state: [u64; 3],
    pub rooms: u64,
    pub users: u64,
    pub live: u64,
    pub stats: StatsSnapshot,
    pub bus: BrokerStatus,
    pub log_dropped: u64,
}

type Read = fn(&Sample) -> u64;

/// Calls `$m! { name "help" |sample| value, … }` with every gauge without
/// labels: the metrics page below and the binding's `stats()` object are
/// generated from this list (the labelled ones, connections by state,
/// protocol errors by reason and the bus's kind, are written out in
/// `encode`).
#[macro_export]
macro_rules! with_gauges {
    ($m:path) => {
        $m! {
            rooms "Rooms with at least one local member." |s| s.rooms,
            users "Users with at least one local client." |s| s.users,
            sockets "Connection tasks running (closing ones included)." |s| s.live,
            bus_publish_buffered "Publications waiting for Redis." |s| s.bus.publish_buffered,
            bus_subscribed_channels "Redis channels subscribed." |s| s.bus.subscribed_channels,
        }
    };
}

macro_rules! gauge_table {
    ($($field:ident $help:literal |$s:ident| $read:expr,)*) => {
        /// Gauges without labels: (name, help, value).
        const GAUGES: &[(&str, &str, Read)] = &[$((stringify!($field), $help, |$s| $read),)*];
    };
}
crate::with_gauges!(gauge_table);

macro_rules! counter_table {
    ($($field:ident $help:literal,)*) => {
        /// Counters: (name, help, value); the page names them `<name>_total`.
        const COUNTERS: &[(&str, &str, Read)] = &[
            $((stringify!($field), $help, |s| s.stats.$field),)*
            (
                "log_dropped",
                "Log lines dropped because stderr was not read fast enough (process-wide).",
                |s| s.log_dropped,
            ),
        ];
    };
}
crate::with_counters!(counter_table);

/// What the page is read from.
pub struct Metrics {
    pub identifier: String,
    pub hub: Arc<Hub>,
    pub stats: Arc<Stats>,
    pub broker: Arc<dyn Broker>,
    pub connections: Arc<Connections>,
}

impl Metrics {
    pub fn sample(&self) -> Sample {
        Sample {
            clients: self.hub.client_count() as u64,
            by_state: self.hub.count_by_state().map(|n| n as u64),
            rooms: self.hub.room_count() as u64,
            users: self.hub.user_count() as u64,
            live: self.connections.live() as u64,
            stats: self.stats.snapshot(),
            bus: self.broker.status(),
            log_dropped: crate::core::log::stderr::dropped(),
        }
    }

    pub fn render(&self) -> String {
        encode(&self.identifier, &self.sample())
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encodes a sample; every series carries `server="<identifier>"` (the
/// encoder writes a series' labels in name order).
pub fn encode(identifier: &str, s: &Sample) -> String {
    let registry =
        Registry::new_custom(Some("ignis_ws".into()), None).expect("the prefix is valid");
    // Names and help texts are this file's constants: creating and
    // registering them cannot fail unless a name repeats, which a unit test
    // rules out.
    let connections = IntGaugeVec::new(
        Opts::new("connections", "Open WebSocket connections, by state."),
        &["server", "state"],
    )
    .expect("valid");
    for (state, n) in ["unauthorized", "authenticating", "authenticated"]
        .iter()
        .zip(s.by_state)
    {
        connections
            .with_label_values(&[identifier, state])
            .set(n as i64);
    }
    registry
        .register(Box::new(connections))
        .expect("unique name");
    let bus = IntGaugeVec::new(
        Opts::new(
            "bus_connected",
            "1 when the bus (Redis) is reachable; the bus label says which kind.",
        ),
        &["server", "bus"],
    )
    .expect("valid");
    let kind = if s.bus.kind.is_empty() {
        "local"
    } else {
        s.bus.kind
    };
    bus.with_label_values(&[identifier, kind]).set(i64::from(
        s.bus.state == "connected" || s.bus.kind.is_empty(),
    ));
    registry.register(Box::new(bus)).expect("unique name");
    let violations = IntCounterVec::new(
        Opts::new(
            "protocol_errors_total",
            "Clients closed for violating RFC 6455, by reason (1002, 1007 or 1009).",
        ),
        &["server", "reason"],
    )
    .expect("valid");
    for (v, n) in Violation::ALL.iter().zip(s.stats.violations) {
        violations
            .with_label_values(&[identifier, v.label()])
            .inc_by(n);
    }
    registry
        .register(Box::new(violations))
        .expect("unique name");
    for (name, help, read) in GAUGES {
        let g = IntGaugeVec::new(Opts::new(*name, *help), &["server"]).expect("valid");
        g.with_label_values(&[identifier]).set(read(s) as i64);
        registry.register(Box::new(g)).expect("unique name");
    }
    for (name, help, read) in COUNTERS {
        let name = name.strip_suffix("_total").unwrap_or(name);
        let c = IntCounterVec::new(Opts::new(format!("{name}_total"), *help), &["server"])
            .expect("valid");
        c.with_label_values(&[identifier]).inc_by(read(s));
        registry.register(Box::new(c)).expect("unique name");
    }
    let mut out = Vec::with_capacity(4096);
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding into memory");
    String::from_utf8(out).expect("the encoder writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_help_and_type_per_family() {
        let s = Sample {
            clients: 6,
            by_state: [1, 2, 3],
            rooms: 4,
            users: 5,
            live: 6,
            stats: StatsSnapshot::default(),
            bus: BrokerStatus::default(),
            log_dropped: 7,
        };
        let text = encode("srv \"1\"", &s);
        let mut names = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(names.insert(name.to_string()), "second HELP for {name}");
        }
        assert_eq!(names.len(), 3 + GAUGES.len() + COUNTERS.len());
        assert!(text
            .contains("ignis_ws_connections{server=\"srv \\\"1\\\"\",state=\"authenticating\"} 2"));
        assert!(text.contains("ignis_ws_log_dropped_total{server=\"srv \\\"1\\\"\"} 7"));
        assert!(text.contains("# TYPE ignis_ws_frames_out_total counter"));
    }
}
