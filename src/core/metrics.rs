//! Prometheus text exposition of the server's gauges and counters, served
//! at `metricsPath` on the server's own port.

use crate::core::server::Shared;
use std::fmt::Write;

pub fn render(shared: &Shared) -> String {
    let mut out = String::with_capacity(2048);
    let [un, ing, ed] = shared.hub.count_by_state().map(|n| n as u64);
    let id = &shared.config.identifier;
    let mut gauge = |name: &str, help: &str, labels: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP ignis_ws_{name} {help}\n# TYPE ignis_ws_{name} gauge"
        );
        let _ = writeln!(out, "ignis_ws_{name}{{server=\"{id}\"{labels}}} {v}");
    };
    gauge(
        "connections",
        "Open WebSocket connections.",
        ",state=\"unauthorized\"",
        un,
    );
    gauge(
        "connections",
        "Open WebSocket connections.",
        ",state=\"authenticating\"",
        ing,
    );
    gauge(
        "connections",
        "Open WebSocket connections.",
        ",state=\"authenticated\"",
        ed,
    );
    gauge(
        "rooms",
        "Rooms with at least one local member.",
        "",
        shared.hub.room_count() as u64,
    );
    gauge(
        "users",
        "Users with at least one local client.",
        "",
        shared.hub.user_count() as u64,
    );
    let bus = shared.broker.status();
    gauge(
        "bus_connected",
        "1 when the bus (Redis) link is up.",
        &format!(",bus=\"{}\"", bus.kind),
        u64::from(bus.state == "connected"),
    );
    gauge(
        "bus_publish_buffered",
        "Publications waiting for Redis.",
        "",
        bus.publish_buffered,
    );
    gauge(
        "bus_subscribed_channels",
        "Redis channels subscribed.",
        "",
        bus.subscribed_channels,
    );
    let s = shared.stats.snapshot();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP ignis_ws_{name}_total {help}\n# TYPE ignis_ws_{name}_total counter"
        );
        let _ = writeln!(out, "ignis_ws_{name}_total{{server=\"{id}\"}} {v}");
    };
    counter("connections", "Connections accepted.", s.connections_total);
    counter(
        "connections_refused",
        "Upgrades refused for a connection limit.",
        s.connections_refused,
    );
    counter(
        "http_forwarded",
        "Connections spliced to the application's HTTP server.",
        s.http_forwarded,
    );
    counter(
        "http_forward_errors",
        "Connections answered 502: the application's HTTP server was unreachable.",
        s.http_forward_errors,
    );
    counter(
        "messages_in",
        "Frames received from clients.",
        s.messages_in,
    );
    counter("frames_out", "Frames written to clients.", s.frames_out);
    counter(
        "invalid_frames",
        "Frames that were not valid protocol messages.",
        s.invalid_frames,
    );
    counter(
        "dropped_backpressure",
        "Frames dropped at a slow client's backpressure limit.",
        s.dropped_backpressure,
    );
    counter(
        "dropped_no_handler",
        "Application events dropped for lack of a messageHandler.",
        s.dropped_no_handler,
    );
    counter(
        "handler_errors",
        "Application handlers that threw, rejected or timed out.",
        s.handler_errors,
    );
    counter("joins_refused", "Joins refused.", s.joins_refused);
    counter(
        "oversized_frames",
        "Frames over maxPayloadLength.",
        s.oversized_frames,
    );
    counter(
        "rate_limited",
        "Clients closed for exceeding maxFramesPerSecond.",
        s.rate_limited,
    );
    counter(
        "auth_busy",
        "Clients closed because too many authentications were pending.",
        s.auth_busy,
    );
    counter(
        "rooms_limited",
        "Room joins ignored at maxRoomsPerClient.",
        s.rooms_limited,
    );
    counter("bus_reconnects", "Redis reconnections.", bus.reconnects);
    counter("bus_published", "Envelopes published.", bus.published);
    counter(
        "bus_publish_dropped",
        "Publications dropped while Redis was away.",
        bus.publish_dropped,
    );
    counter("bus_received", "Envelopes received.", bus.received);
    counter(
        "bus_invalid",
        "Envelopes that were not JSON or not shaped right.",
        shared
            .invalid_envelopes
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    out
}
