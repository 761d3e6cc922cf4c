//! What the bus receives, handed from the runtime its connections run on
//! to the runtime that serves the sockets.
//!
//! A broker whose connections run on a thread of their own (see
//! `RedisConfig::runtime`) must not fan what it receives out from there:
//! each member's wake-up would cross threads (a system call each on a
//! current-thread runtime). The relay moves each batch of messages across
//! once, and the fan-out runs where the members' tasks live, as it would
//! with the connections there.

use super::Subscriber;
use std::sync::Arc;
use tokio::sync::mpsc;

enum Relayed {
    Messages(Vec<(String, String)>),
    Resubscribed,
}

pub struct Relay {
    tx: mpsc::UnboundedSender<Relayed>,
}

impl Relay {
    /// Delivers to `to` from a task on the calling runtime, in the order
    /// received; the task ends when the relay is dropped.
    pub fn spawn(to: Arc<dyn Subscriber>) -> Relay {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut batch: Vec<(String, String)> = Vec::new();
            while let Some(first) = rx.recv().await {
                // Batches that arrived together are delivered as one, as
                // the subscriber would have read them together: a burst to
                // a room becomes one run per member.
                let mut next = Some(first);
                while let Some(item) = next {
                    match item {
                        Relayed::Messages(m) => batch.extend(m),
                        Relayed::Resubscribed => {
                            deliver(&*to, &mut batch);
                            to.resubscribed();
                        }
                    }
                    next = rx.try_recv().ok();
                }
                deliver(&*to, &mut batch);
            }
        });
        Relay { tx }
    }
}

fn deliver(to: &dyn Subscriber, batch: &mut Vec<(String, String)>) {
    if batch.is_empty() {
        return;
    }
    let borrowed: Vec<(&str, &str)> = batch.iter().map(|(c, p)| (&**c, &**p)).collect();
    to.deliver_all(&borrowed);
    batch.clear();
}

impl Subscriber for Relay {
    fn deliver_all(&self, messages: &[(&str, &str)]) {
        let owned = messages
            .iter()
            .map(|(c, p)| ((*c).to_owned(), (*p).to_owned()))
            .collect();
        // Closed only when the receiving runtime is gone: nothing is left
        // there to deliver to.
        let _ = self.tx.send(Relayed::Messages(owned));
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

    #[test]
    fn delivers_on_the_runtime_that_made_it_in_order() {
        let here = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Seen::default());
        let relay = here.block_on(async { Relay::spawn(seen.clone()) });
        // From another thread, as a bus runtime would.
        std::thread::scope(|s| {
            s.spawn(|| {
                relay.deliver_all(&[("a", "1"), ("b", "2")]);
                relay.resubscribed();
                relay.deliver_all(&[("c", "3")]);
            });
        });
        here.block_on(async {
            for _ in 0..100 {
                if seen.0.lock().len() == 4 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(*seen.0.lock(), ["a=1", "b=2", "resubscribed", "c=3"]);
    }
}
