//! Counters for what the server did and, above all, what it could not do:
//! every frame that is dropped is counted here, never lost silently.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub invalid_frames: AtomicU64,
    pub dropped_backpressure: AtomicU64,
    pub dropped_no_handler: AtomicU64,
    pub handler_errors: AtomicU64,
    pub joins_refused: AtomicU64,
    pub oversized_frames: AtomicU64,
    pub rooms_limited: AtomicU64,
    pub auth_busy: AtomicU64,
    pub rate_limited: AtomicU64,
    pub connections_refused: AtomicU64,
    pub http_forwarded: AtomicU64,
    pub http_forward_errors: AtomicU64,
    pub send_timeouts: AtomicU64,
    /// Envelopes from the bus that were not JSON or not shaped right.
    pub bus_invalid: AtomicU64,
}

#[derive(Debug, Clone, Default)]
pub struct StatsSnapshot {
    pub connections_total: u64,
    pub messages_in: u64,
    pub frames_out: u64,
    pub invalid_frames: u64,
    pub dropped_backpressure: u64,
    pub dropped_no_handler: u64,
    pub handler_errors: u64,
    pub joins_refused: u64,
    pub oversized_frames: u64,
    pub rooms_limited: u64,
    pub auth_busy: u64,
    pub rate_limited: u64,
    pub connections_refused: u64,
    pub http_forwarded: u64,
    pub http_forward_errors: u64,
    pub send_timeouts: u64,
    pub bus_invalid: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_total: g(&self.connections_total),
            messages_in: g(&self.messages_in),
            frames_out: g(&self.frames_out),
            invalid_frames: g(&self.invalid_frames),
            dropped_backpressure: g(&self.dropped_backpressure),
            dropped_no_handler: g(&self.dropped_no_handler),
            handler_errors: g(&self.handler_errors),
            joins_refused: g(&self.joins_refused),
            oversized_frames: g(&self.oversized_frames),
            rooms_limited: g(&self.rooms_limited),
            auth_busy: g(&self.auth_busy),
            rate_limited: g(&self.rate_limited),
            connections_refused: g(&self.connections_refused),
            http_forwarded: g(&self.http_forwarded),
            http_forward_errors: g(&self.http_forward_errors),
            send_timeouts: g(&self.send_timeouts),
            bus_invalid: g(&self.bus_invalid),
        }
    }
}

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
