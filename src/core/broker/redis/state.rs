//! What the bus's tasks share: the connection state, the publish queue,
//! the channels confirmed live.

use crate::core::broker::store::Store;
use crate::core::broker::Subscriber;
use crate::core::log::Logger;
use crate::core::stats::Stats;
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

use super::connect::{Outgoing, RedisConfig};

pub(super) const STATE_CONNECTED: u8 = 0;
pub(super) const STATE_CONNECTING: u8 = 1;
pub(super) const STATE_DISCONNECTED: u8 = 2;
pub(super) const STATE_CLOSED: u8 = 3;
pub(super) const PUBLISH_BATCH: usize = 256;
pub(super) const PING_EVERY: Duration = Duration::from_secs(5);
/// After an outage, publications wait this long once the link is back, so
/// that the other instances (reconnecting on the same backoff) have
/// resubscribed before the buffered messages go out: Redis keeps nothing
/// for a channel nobody is subscribed to.
pub(super) const RESUBSCRIBE_GRACE: Duration = Duration::from_millis(350);

/// A channel name, allocated once and shared by the wanted and the live
/// sets (a client has three channels of its own: its id, its user and its
/// own-id room, so copies per set add up per idle connection).
pub(super) type Channel = Arc<str>;

pub(super) struct Inner {
    pub(super) cfg: RedisConfig,
    pub(super) log: Logger,
    pub(super) inbound: Arc<dyn Subscriber>,
    pub(super) cluster_client: Option<redis::cluster::ClusterClient>,
    pub(super) queue: Mutex<VecDeque<Outgoing>>,
    pub(super) queue_notify: Notify,
    pub(super) interest_tx: mpsc::UnboundedSender<(Channel, bool)>,
    pub(super) state: AtomicU8,
    pub(super) closing: AtomicBool,
    pub(super) close_notify: Notify,
    pub(super) drop_logged: AtomicBool,
    pub(super) stats: Arc<Stats>,
    /// Publications taken from the queue and not yet confirmed.
    pub(super) in_flight: AtomicU64,
    /// The channels the server confirmed on the live connection: what the
    /// subscriber compares wanted channels with, what `subscribed()` waits
    /// for, and the count `status()` reports. Changed batch by batch, never
    /// copied whole.
    pub(super) live: Mutex<HashSet<Channel>>,
    pub(super) confirm_notify: Notify,
    pub(super) store: Store,
    pub(super) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// At most this many received messages are handed to the subscriber at
/// once: it bounds how long the first of them waits for the others' fan-out.
pub(super) const BUS_BATCH: usize = 32;

impl Inner {
    /// Publications not yet confirmed by Redis: queued, or taken off the
    /// queue by the writer and being written (which sets `in_flight` under
    /// the queue's lock before it drains, so the sum is never short).
    pub(super) fn buffered(&self) -> u64 {
        self.queue.lock().len() as u64 + self.in_flight.load(Ordering::Acquire)
    }

    /// Messages from the subscriptions, to the subscriber in one call.
    pub(super) fn receive(&self, batch: &[redis::Msg]) {
        self.stats
            .bus_received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut messages = Vec::with_capacity(batch.len());
        for msg in batch {
            match std::str::from_utf8(msg.get_payload_bytes()) {
                Ok(payload) => messages.push((msg.get_channel_name(), payload)),
                Err(_) => self.log.error(
                    "Redis message is not UTF-8",
                    &[("channel", &msg.get_channel_name())],
                ),
            }
        }
        self.inbound.deliver_all(&messages);
    }

    /// Records what the server confirmed (or, `clear`, that the connection
    /// holding the subscriptions is gone) and wakes `subscribed()` waiters.
    pub(super) fn confirm(&self, clear: bool, add: Vec<Channel>, remove: &[Channel]) {
        {
            let mut live = self.live.lock();
            if clear {
                live.clear();
            }
            for r in remove {
                live.remove(r);
            }
            live.extend(add);
        }
        self.confirm_notify.notify_waiters();
    }
}
