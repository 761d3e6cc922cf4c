//! What the bus receives, handed from the runtime its connections run on
//! to the runtime that serves the sockets.
//!
//! A broker whose connections run on a thread of their own (see
//! `RedisConfig::runtime`) must not simply fan what it receives out from
//! there: each member's wake-up would cross threads (a system call each
//! on a current-thread runtime). The relay moves each batch of messages
//! across once, and the fan-out runs where the members' tasks live, as it
//! would with the connections there.
//!
//! The queue between the two is bounded in bytes, as Redis bounds what it
//! holds for a subscriber that does not read (`client-output-buffer-limit
//! pubsub`, 32 MiB by default): once [`MAX_QUEUED_BYTES`] would be passed,
//! what arrives is dropped and counted (`busRelayDropped`), with one log
//! line, until the receiving task has taken everything queued before. The
//! receiver is then told `resubscribed`, as after a lost Redis connection,
//! so history rooms fill the gap at once, whether or not more arrives.
//!
//! With direct writes most members of a room need no wake-up: the fan-out
//! writes to their sockets itself. Then ([`Relay::spawn`]'s `on_arrival`)
//! a lone message that arrives while nothing waits to cross is delivered
//! where it arrived, and only the wake-ups of members whose frames it had
//! to queue cross, together (`deferred_wakes`): one hand-over fewer for a
//! publication on its own. Anything else still crosses as before: a
//! batch crossing while the sockets' runtime is busy joins the batches
//! behind it into one run per member, which a burst needs (delivering
//! every batch where it arrived cut a burst's rate by 40 %), and nothing
//! may overtake what waits to cross.

use super::Subscriber;
use crate::core::deferred_wakes;
use crate::core::log::Logger;
use crate::core::stats::Stats;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use tokio::sync::mpsc;

/// The most bytes (channels and payloads) waiting for the sockets'
/// runtime. A batch is always taken when nothing waits, whatever its size.
pub const MAX_QUEUED_BYTES: usize = 32 << 20;

enum Relayed {
    /// The messages and their bytes (channels and payloads).
    Messages(Vec<(String, String)>, usize),
    Resubscribed,
    /// Tasks to wake for a message delivered where it arrived.
    Wake(Vec<Waker>),
}

pub struct Relay {
    tx: mpsc::UnboundedSender<Relayed>,
    /// Bytes sent and not yet taken by the receiving task.
    queued: Arc<AtomicUsize>,
    max: usize,
    /// Set from the first drop until everything queued before it was
    /// taken; whichever side then clears it has `resubscribed` told.
    dropping: Arc<AtomicBool>,
    /// Set (`on_arrival`): where a lone message is delivered when nothing
    /// waits to cross.
    here: Option<Arc<dyn Subscriber>>,
    /// Messages and resubscriptions sent and not yet delivered by the
    /// receiving task: while any is, nothing is delivered here, which
    /// would overtake it.
    in_flight: Arc<AtomicUsize>,
    stats: Arc<Stats>,
    log: Logger,
}

impl Relay {
    /// Delivers to `to` from a task on the calling runtime, in the order
    /// received; the task ends when the relay is dropped. With
    /// `on_arrival`, a lone message is delivered where it arrives when
    /// nothing waits to cross (see the module's comment).
    pub fn spawn(
        to: Arc<dyn Subscriber>,
        on_arrival: bool,
        stats: Arc<Stats>,
        log: Logger,
    ) -> Relay {
        Self::bounded(to, MAX_QUEUED_BYTES, on_arrival, stats, log)
    }

    fn bounded(
        to: Arc<dyn Subscriber>,
        max: usize,
        on_arrival: bool,
        stats: Arc<Stats>,
        log: Logger,
    ) -> Relay {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let dropping = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (taken, gap, delivered) = (queued.clone(), dropping.clone(), in_flight.clone());
        let here = on_arrival.then(|| to.clone());
        crate::core::task::spawn(async move {
            let mut batch: Vec<(String, String)> = Vec::new();
            while let Some(first) = rx.recv().await {
                // Batches that arrived together are delivered as one, as
                // the subscriber would have read them together: a burst to
                // a room becomes one run per member.
                let mut next = Some(first);
                let mut items = 0;
                while let Some(item) = next {
                    match item {
                        Relayed::Messages(m, bytes) => {
                            batch.extend(m);
                            taken.fetch_sub(bytes, Ordering::SeqCst);
                            items += 1;
                        }
                        Relayed::Resubscribed => {
                            deliver(&*to, &mut batch);
                            to.resubscribed();
                            items += 1;
                        }
                        // On their own runtime: each wake-up is a push to
                        // its run queue, not a system call.
                        Relayed::Wake(wakers) => wakers.into_iter().for_each(Waker::wake),
                    }
                    next = rx.try_recv().ok();
                }
                deliver(&*to, &mut batch);
                delivered.fetch_sub(items, Ordering::SeqCst);
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
            here,
            in_flight,
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
            self.send(Relayed::Resubscribed);
        }
    }

    /// Sends a message or resubscription to the receiving task.
    fn send(&self, item: Relayed) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        // Closed only when the receiving runtime is gone: nothing is left
        // there to deliver to.
        let _ = self.tx.send(item);
    }

    /// Delivers `messages` here if they may be (`on_arrival`, one message,
    /// nothing waiting to cross, no gap being reported), handing over the
    /// wake-ups it made; false if they must cross.
    fn delivered_here(&self, messages: &[(&str, &str)]) -> bool {
        let Some(to) = &self.here else {
            return false;
        };
        if messages.len() != 1
            || self.in_flight.load(Ordering::SeqCst) > 0
            || self.dropping.load(Ordering::SeqCst)
        {
            return false;
        }
        let wakers = deferred_wakes::gather(|| to.deliver_all(messages));
        if !wakers.is_empty() {
            let _ = self.tx.send(Relayed::Wake(wakers));
        }
        true
    }
}

impl Subscriber for Relay {
    fn deliver_all(&self, messages: &[(&str, &str)]) {
        if self.delivered_here(messages) {
            return;
        }
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
        self.send(Relayed::Messages(owned, bytes));
    }

    fn resubscribed(&self) {
        self.send(Relayed::Resubscribed);
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
        let relay = here
            .block_on(async { Relay::bounded(seen.clone(), max, false, stats.clone(), quiet()) });
        (here, seen, stats, relay)
    }

    /// Runs the runtime until `seen` holds `n` entries, or gives up.
    async fn settle(seen: &Mutex<Vec<String>>, n: usize) {
        for _ in 0..100 {
            if seen.lock().len() >= n {
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
        here.block_on(settle(&seen.0, 4));
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
        here.block_on(settle(&seen.0, 3));
        assert_eq!(*seen.0.lock(), ["r=p01", "r=p02", "resubscribed"]);
        relay.deliver_all(&[("r", "p06")]);
        here.block_on(settle(&seen.0, 4));
        assert_eq!(*seen.0.lock(), ["r=p01", "r=p02", "resubscribed", "r=p06"]);
        assert_eq!(relay.queued.load(Ordering::Relaxed), 0);
        assert_eq!(stats.bus_relay_dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_batch_over_the_bound_is_taken_when_nothing_waits() {
        let (here, seen, stats, relay) = bounded(8);
        relay.deliver_all(&[("r", "a long payload"), ("r", "another")]);
        here.block_on(settle(&seen.0, 2));
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
        here.block_on(settle(&seen.0, 2));
        assert_eq!(*seen.0.lock(), ["resubscribed", "r=p01"]);
        assert_eq!(stats.bus_relay_dropped.load(Ordering::Relaxed), 0);
    }

    /// Records what it is given and on which thread, and wakes a task for
    /// each, as a room's fan-out queuing for a member would.
    #[derive(Default)]
    struct Waking {
        seen: Mutex<Vec<String>>,
        task: futures_util::task::AtomicWaker,
    }

    fn thread() -> String {
        std::thread::current().name().unwrap_or("?").to_string()
    }

    impl Subscriber for Waking {
        fn deliver_all(&self, messages: &[(&str, &str)]) {
            for (c, p) in messages {
                self.seen.lock().push(format!("{c}={p}@{}", thread()));
            }
            deferred_wakes::wake(&self.task);
        }
        fn resubscribed(&self) {
            self.seen.lock().push(format!("resubscribed@{}", thread()));
            deferred_wakes::wake(&self.task);
        }
    }

    /// Names the thread each wake-up came on.
    #[derive(Default)]
    struct Woken(Mutex<Vec<String>>);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.lock().push(thread());
        }
    }

    /// A relay delivering lone messages on arrival, to a recorder, on a
    /// runtime not yet running.
    fn on_arrival() -> (tokio::runtime::Runtime, Arc<Waking>, Relay) {
        let here = runtime();
        let to = Arc::new(Waking::default());
        let stats = Arc::new(Stats::default());
        let relay = here
            .block_on(async { Relay::bounded(to.clone(), MAX_QUEUED_BYTES, true, stats, quiet()) });
        (here, to, relay)
    }

    /// Runs `f` on a thread named "bus", as the Redis thread would.
    fn on_the_bus(f: impl FnOnce() + Send) {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("bus".into())
                .spawn_scoped(s, f)
                .unwrap();
        });
    }

    #[test]
    fn a_lone_message_is_delivered_where_it_arrives_and_only_its_wake_ups_cross() {
        let (here, to, relay) = on_arrival();
        let woken = Arc::new(Woken::default());
        to.task.register(&Waker::from(woken.clone()));
        on_the_bus(|| relay.deliver_all(&[("a", "1")]));
        // Delivered before the bus's call returned, on its thread; the
        // task is not woken there.
        assert_eq!(*to.seen.lock(), ["a=1@bus"]);
        assert!(woken.0.lock().is_empty());
        // The runtime that made the relay wakes it.
        here.block_on(settle(&woken.0, 1));
        assert_eq!(*woken.0.lock(), [thread()]);
    }

    #[test]
    fn nothing_is_delivered_on_arrival_ahead_of_what_waits_to_cross() {
        let (here, to, relay) = on_arrival();
        // The receiving runtime is not running: what crosses waits.
        on_the_bus(|| {
            // Two messages cross, as a burst must (one run per member).
            relay.deliver_all(&[("a", "1"), ("b", "2")]);
            // Lone, but behind them: crosses too.
            relay.deliver_all(&[("c", "3")]);
            relay.resubscribed();
            relay.deliver_all(&[("d", "4")]);
        });
        assert!(to.seen.lock().is_empty());
        here.block_on(settle(&to.seen, 5));
        let me = thread();
        assert_eq!(
            *to.seen.lock(),
            [
                format!("a=1@{me}"),
                format!("b=2@{me}"),
                format!("c=3@{me}"),
                format!("resubscribed@{me}"),
                format!("d=4@{me}"),
            ]
        );
        // All delivered: the next lone message is delivered on arrival.
        on_the_bus(|| relay.deliver_all(&[("e", "5")]));
        assert_eq!(to.seen.lock().last().unwrap(), "e=5@bus");
    }
}
