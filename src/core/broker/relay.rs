//! What the bus receives, handed from the runtime its connections run on
//! to the runtime that serves the sockets.
//!
//! A broker whose connections run on a thread of their own (see
//! `RedisConfig::runtime`) must not fan what it receives out from there:
//! each member's wake-up would cross threads (a system call each on a
//! current-thread runtime). The relay moves each batch of messages across
//! once, and the fan-out runs where the members' tasks live, as it would
//! with the connections there.
//!
//! The queue between the two is bounded in bytes, as Redis bounds what it
//! holds for a subscriber that does not read (`client-output-buffer-limit
//! pubsub`, 32 MiB by default): once [`MAX_QUEUED_BYTES`] would be passed,
//! what arrives is dropped and counted (`busRelayDropped`), with one log
//! line, until the receiving task has taken everything queued before. The
//! receiver is then told `resubscribed`, as after a lost Redis connection,
//! so history rooms fill the gap at once, whether or not more arrives.

use super::Subscriber;
use crate::core::log::Logger;
use crate::core::stats::Stats;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The most bytes (channels and payloads) waiting for the sockets'
/// runtime. A batch is always taken when nothing waits, whatever its size.
pub const MAX_QUEUED_BYTES: usize = 32 << 20;

enum Relayed {
    /// The messages and their bytes (channels and payloads).
    Messages(Vec<(String, String)>, usize),
    Resubscribed,
}

pub struct Relay {
    tx: mpsc::UnboundedSender<Relayed>,
    /// Bytes sent and not yet taken by the receiving task.
    queued: Arc<AtomicUsize>,
    max: usize,
    /// Set from the first drop until everything queued before it was
    /// taken; whichever side then clears it has `resubscribed` told.
    dropping: Arc<AtomicBool>,
    stats: Arc<Stats>,
    log: Logger,
}

impl Relay {
    /// Delivers to `to` from a task on the calling runtime, in the order
    /// received; the task ends when the relay is dropped.
    pub fn spawn(to: Arc<dyn Subscriber>, stats: Arc<Stats>, log: Logger) -> Relay {
        Self::bounded(to, MAX_QUEUED_BYTES, stats, log)
    }

    fn bounded(to: Arc<dyn Subscriber>, max: usize, stats: Arc<Stats>, log: Logger) -> Relay {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let dropping = Arc::new(AtomicBool::new(false));
        let (taken, gap) = (queued.clone(), dropping.clone());
        tokio::spawn(async move {
            let mut batch: Vec<(String, String)> = Vec::new();
            while let Some(first) = rx.recv().await {
                // Batches that arrived together are delivered as one, as
                // the subscriber would have read them together: a burst to
                // a room becomes one run per member.
                let mut next = Some(first);
                while let Some(item) = next {
                    match item {
                        Relayed::Messages(m, bytes) => {
                            batch.extend(m);
                            taken.fetch_sub(bytes, Ordering::SeqCst);
                        }
                        Relayed::Resubscribed => {
                            deliver(&*to, &mut batch);
                            to.resubscribed();
                        }
                    }
                    next = rx.try_recv().ok();
                }
                deliver(&*to, &mut batch);
                // Drained after drops: the gap is reported now, not when
                // (if ever) the next message comes.
                if end_of_gap(&taken, &gap) {
                    to.resubscribed();
                }
            }
        });
        Relay {
            tx,
            queued,
            max,
            dropping,
            stats,
            log,
        }
    }
}

/// Whether drops left a gap and nothing from before them still waits;
/// clears the mark, so that exactly one caller reports the gap (the
/// receiving task or the next `deliver_all`, whichever sees it first).
fn end_of_gap(queued: &AtomicUsize, dropping: &AtomicBool) -> bool {
    dropping.load(Ordering::SeqCst)
        && queued.load(Ordering::SeqCst) == 0
        && dropping
            .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
}

fn deliver(to: &dyn Subscriber, batch: &mut Vec<(String, String)>) {
    if batch.is_empty() {
        return;
    }
    let borrowed: Vec<(&str, &str)> = batch.iter().map(|(c, p)| (&**c, &**p)).collect();
    to.deliver_all(&borrowed);
    batch.clear();
}

impl Relay {
    /// Queues `resubscribed` behind what the receiver has yet to deliver,
    /// if a gap ended with nothing left from before it.
    fn report_gap_if_drained(&self) {
        if end_of_gap(&self.queued, &self.dropping) {
            let _ = self.tx.send(Relayed::Resubscribed);
        }
    }
}

impl Subscriber for Relay {
    fn deliver_all(&self, messages: &[(&str, &str)]) {
        let bytes: usize = messages.iter().map(|(c, p)| c.len() + p.len()).sum();
        self.report_gap_if_drained();
        let queued = self.queued.load(Ordering::SeqCst);
        if self.dropping.load(Ordering::SeqCst) || (queued > 0 && queued + bytes > self.max) {
            self.stats
                .bus_relay_dropped
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            if !self.dropping.swap(true, Ordering::SeqCst) {
                self.log.error(
                    "the sockets' runtime is not taking what Redis delivers: dropping it until it does; history rooms recover it",
                    &[("queuedBytes", &queued)],
                );
            }
            // The receiver may have taken the last of the queue just
            // before the mark was set, and found it clear.
            self.report_gap_if_drained();
            return;
        }
        let owned = messages
            .iter()
            .map(|(c, p)| ((*c).to_owned(), (*p).to_owned()))
            .collect();
        self.queued.fetch_add(bytes, Ordering::SeqCst);
        // Closed only when the receiving runtime is gone: nothing is left
        // there to deliver to.
        let _ = self.tx.send(Relayed::Messages(owned, bytes));
    }

    fn resubscribed(&self) {
        let _ = self.tx.send(Relayed::Resubscribed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Subscriber for Seen {
        fn deliver_all(&self, messages: &[(&str, &str)]) {
            let mut s = self.0.lock();
            for (c, p) in messages {
                s.push(format!("{c}={p}"));
            }
        }
        fn resubscribed(&self) {
            self.0.lock().push("resubscribed".into());
        }
    }

    fn quiet() -> Logger {
        Logger::new(Arc::new(crate::core::log::NullLog))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A relay of `max` bytes to a recorder, on a runtime not yet running.
    fn bounded(max: usize) -> (tokio::runtime::Runtime, Arc<Seen>, Arc<Stats>, Relay) {
        let here = runtime();
        let seen = Arc::new(Seen::default());
        let stats = Arc::new(Stats::default());
        let relay =
            here.block_on(async { Relay::bounded(seen.clone(), max, stats.clone(), quiet()) });
        (here, seen, stats, relay)
    }

    async fn settle(seen: &Seen, n: usize) {
        for _ in 0..100 {
            if seen.0.lock().len() >= n {
                break;
            }
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn delivers_on_the_runtime_that_made_it_in_order() {
        let (here, seen, _, relay) = bounded(MAX_QUEUED_BYTES);
        // From another thread, as a bus runtime would.
        std::thread::scope(|s| {
            s.spawn(|| {
                relay.deliver_all(&[("a", "1"), ("b", "2")]);
                relay.resubscribed();
                relay.deliver_all(&[("c", "3")]);
            });
        });
        here.block_on(settle(&seen, 4));
        assert_eq!(*seen.0.lock(), ["a=1", "b=2", "resubscribed", "c=3"]);
    }

    #[test]
    fn past_the_bound_drops_counts_and_reports_the_gap_once_there_is_room() {
        // Room for two messages of 4 bytes ("r" + 3).
        let (here, seen, stats, relay) = bounded(8);
        // The receiving runtime is not running: nothing is taken.
        relay.deliver_all(&[("r", "p01")]);
        relay.deliver_all(&[("r", "p02")]);
        relay.deliver_all(&[("r", "p03"), ("r", "p04")]);
        relay.deliver_all(&[("r", "p05")]);
        assert_eq!(stats.bus_relay_dropped.load(Ordering::Relaxed), 3);
        // Taken: the gap is reported once the queue is drained, without
        // waiting for another message.
        here.block_on(settle(&seen, 3));
        assert_eq!(*seen.0.lock(), ["r=p01", "r=p02", "resubscribed"]);
        relay.deliver_all(&[("r", "p06")]);
        here.block_on(settle(&seen, 4));
        assert_eq!(*seen.0.lock(), ["r=p01", "r=p02", "resubscribed", "r=p06"]);
        assert_eq!(relay.queued.load(Ordering::Relaxed), 0);
        assert_eq!(stats.bus_relay_dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_batch_over_the_bound_is_taken_when_nothing_waits() {
        let (here, seen, stats, relay) = bounded(8);
        relay.deliver_all(&[("r", "a long payload"), ("r", "another")]);
        here.block_on(settle(&seen, 2));
        assert_eq!(*seen.0.lock(), ["r=a long payload", "r=another"]);
        assert_eq!(stats.bus_relay_dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_gap_the_receiver_drained_past_is_reported_by_the_next_message() {
        let (here, seen, stats, relay) = bounded(8);
        // As if the receiver took the last of the queue between a drop's
        // decision and its mark: marked, with nothing queued.
        relay.dropping.store(true, Ordering::SeqCst);
        relay.deliver_all(&[("r", "p01")]);
        here.block_on(settle(&seen, 2));
        assert_eq!(*seen.0.lock(), ["resubscribed", "r=p01"]);
        assert_eq!(stats.bus_relay_dropped.load(Ordering::Relaxed), 0);
    }
}
