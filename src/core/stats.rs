//! Counters for what the server did and, above all, what it could not do:
//! every frame that is dropped is counted here, never lost silently.
//!
//! [`with_counters!`] is the one list of them. Everything that shows a
//! counter is generated from it: the atomics below, their snapshot, the
//! metrics page (`metrics.rs`) and the binding's `stats()` object with its
//! TypeScript type (`native_server.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Calls `$m! { field "help", … }` with every counter: its name (the
/// metrics page adds `_total`; `stats()` spells it in camelCase) and what it
/// counts.
#[macro_export]
macro_rules! with_counters {
    // Tokens after `;` go first, for a macro that also takes another list.
    ($m:path $(; $($pre:tt)*)?) => {
        $m! {
            $($($pre)*)?
            connections_total "Connections accepted.",
            connections_refused "Upgrades refused for a connection limit (HTTP 503 or 429).",
            http_forwarded "Connections spliced to the application's HTTP server.",
            http_forward_errors "Connections answered 502: the application's HTTP server was unreachable.",
            messages_in "Frames received from clients.",
            frames_out "Frames written to clients.",
            invalid_frames "Frames that were not valid protocol messages.",
            oversized_frames "Frames over maxPayloadLength.",
            dropped_backpressure "Frames dropped at a slow client's backpressure limit.",
            dropped_no_handler "Application events dropped for lack of a messageHandler.",
            handler_errors "Application handlers that threw, rejected or timed out.",
            joins_refused "Joins refused.",
            rooms_limited "Room joins cut at maxRoomsPerClient.",
            rate_limited "Clients closed for exceeding maxFramesPerSecond.",
            auth_busy "Clients closed because maxPendingAuthentications was reached.",
            send_timeouts "Connections dropped because a write made no progress for sendTimeout.",
            bus_reconnects "Redis reconnections.",
            bus_published "Envelopes published.",
            bus_publish_dropped "Publications dropped because Redis was away longer than the buffer lasts.",
            bus_received "Envelopes received.",
            bus_invalid "Envelopes received that were not JSON or not shaped right.",
            bus_relay_dropped "Envelopes received but dropped because the sockets' runtime did not take them before 32 MiB waited (js-thread mode); history rooms recover them as after a Redis reconnection.",
            history_reads "Joins to history rooms answered with a read of the room's history in Redis (the replay of a recovering join).",
            history_skipped "History publications a member could not be given: missing from Redis when a gap was filled.",
            store_errors "Redis requests for history or presence that failed or timed out.",
            deflate_compressed "Outbound messages compressed (permessage-deflate): once per publication, whatever the number of recipients.",
            deflate_bytes_in "Bytes of outbound messages given to the compressor.",
            deflate_bytes_out "Bytes the compressor made of them (sent in their place when smaller).",
            inflated_messages "Compressed messages received from clients and inflated.",
        }
    };
}

macro_rules! define_stats {
    ($($field:ident $help:literal,)*) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $help] pub $field: AtomicU64,)*
            /// Protocol violations, by kind (`core::violation`).
            pub violations: crate::core::violation::Counts,
        }

        /// The counters' values at one moment.
        #[derive(Debug, Clone, Default)]
        pub struct StatsSnapshot {
            $(#[doc = $help] pub $field: u64,)*
            /// Protocol violations, in `Violation::ALL`'s order.
            pub violations: [u64; crate::core::violation::Violation::ALL.len()],
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($field: self.$field.load(Ordering::Relaxed),)*
                    violations: self.violations.snapshot(),
                }
            }
        }
    };
}

with_counters!(define_stats);

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
