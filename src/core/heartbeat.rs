//! docs/PROTOCOL.md §6: every `heartbeatInterval`, close authenticated
//! clients that were silent for longer than `heartbeatTimeout`.

use crate::core::client::ClientState;
use crate::core::hub::Hub;
use crate::core::log::Logger;
use crate::core::protocol::{self, close};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Runs until aborted. `lastActivity` is wall-clock milliseconds (the
/// original exposes it so), hence `now_ms` rather than tokio's clock.
pub async fn sweep(hub: Arc<Hub>, period: Duration, timeout: Duration, log: Logger) {
    if period.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = timeout.as_millis() as u64;
    loop {
        tick.tick().await;
        let now = protocol::now_ms();
        for c in hub.all_clients() {
            if c.state() != ClientState::Authenticated {
                continue;
            }
            let last = c.last_activity.load(Ordering::Relaxed);
            if now.saturating_sub(last) > timeout {
                log.warn(
                    "Heartbeat timeout",
                    &[("id", &c.id), ("lastActivity", &protocol::iso_time(last))],
                );
                let (code, reason) = close::HEARTBEAT_TIMEOUT;
                c.request_close(code, reason);
            }
        }
    }
}
