//! Requests to the application carried many per crossing into JavaScript,
//! and answered the same way: the napi-free half of the binding's
//! `BatchedCalls` (which adds only the thread-safe function that hands a
//! batch over).
//!
//! A promise per request costs, per request, a crossing, the argument
//! values, the adapter's promise and two functions N-API creates to await
//! it; in a connection storm that is most of the JS thread's work and most
//! of its garbage. Here each request is a JSON entry `[seq, …]` appended to
//! one text; the caller is told to hand the text over only when it goes
//! from empty to non-empty, and the JS thread takes whatever has
//! accumulated by the time it runs, so a burst costs one call and a lone
//! request costs what it did before. Answers come back many at a time, and
//! each completes its request's future.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Weak};
use tokio::sync::oneshot;

pub struct CallQueue<O> {
    inner: Arc<Mutex<Queue<O>>>,
    /// The outcome of a request JavaScript could not answer.
    fail: fn(String) -> O,
}

impl<O> Clone for CallQueue<O> {
    fn clone(&self) -> Self {
        CallQueue {
            inner: self.inner.clone(),
            fail: self.fail,
        }
    }
}

struct Queue<O> {
    next: u64,
    /// Entries not yet handed to JavaScript, comma-separated.
    text: String,
    /// Their sequence numbers, to fail them if the hand-over fails.
    queued: Vec<u64>,
    /// The sequence numbers of the batch JavaScript is being called with.
    handed: Vec<u64>,
    waiting: HashMap<u64, oneshot::Sender<O>>,
}

impl<O> Queue<O> {
    fn fail(&mut self, seqs: &[u64], fail: fn(String) -> O, why: &str) {
        for seq in seqs {
            if let Some(tx) = self.waiting.remove(seq) {
                let _ = tx.send(fail(why.to_string()));
            }
        }
    }
}

/// Removes a request's slot when its future is dropped unanswered (the
/// connection closed while `authenticateFn` was pending), so a handler that
/// never settles leaks nothing.
struct Slot<O> {
    queue: Weak<Mutex<Queue<O>>>,
    seq: u64,
    answered: bool,
}

impl<O> Drop for Slot<O> {
    fn drop(&mut self) {
        if !self.answered {
            if let Some(q) = self.queue.upgrade() {
                q.lock().waiting.remove(&self.seq);
            }
        }
    }
}

impl<O: Send + 'static> CallQueue<O> {
    pub fn new(fail: fn(String) -> O) -> Self {
        CallQueue {
            inner: Arc::new(Mutex::new(Queue {
                next: 0,
                text: String::new(),
                queued: Vec::new(),
                handed: Vec::new(),
                waiting: HashMap::new(),
            })),
            fail,
        }
    }

    /// Queues a request: `write` appends its fields (a JSON fragment) after
    /// its sequence number. Returns the future of its answer, and whether
    /// the queue was empty, in which case the caller must ask the JS thread
    /// to take it ([`CallQueue::take_batch`]).
    pub fn push(
        &self,
        write: impl FnOnce(&mut String),
    ) -> (impl std::future::Future<Output = O> + Send + 'static, bool) {
        let (tx, rx) = oneshot::channel();
        let (seq, first) = {
            let mut q = self.inner.lock();
            let seq = q.next;
            q.next += 1;
            let first = q.text.is_empty();
            if !first {
                q.text.push(',');
            }
            let _ = write!(q.text, "[{seq},");
            write(&mut q.text);
            q.text.push(']');
            q.queued.push(seq);
            q.waiting.insert(seq, tx);
            (seq, first)
        };
        let slot = Slot {
            queue: Arc::downgrade(&self.inner),
            seq,
            answered: false,
        };
        let answer = async move {
            // The whole guard moves in (not just the field set below).
            let mut slot = slot;
            let answer = rx.await;
            slot.answered = true;
            // The sender is only dropped with the whole queue (the server
            // object itself is gone).
            match answer {
                Ok(outcome) => outcome,
                Err(_) => futures_util::future::pending().await,
            }
        };
        (answer, first)
    }

    /// Everything queued so far, as one JSON array text; called on the JS
    /// thread just before the adapter runs. Never fails.
    pub fn take_batch(&self) -> String {
        let mut q = self.inner.lock();
        let mut batch = String::with_capacity(q.text.len() + 2);
        batch.push('[');
        batch.push_str(&q.text);
        batch.push(']');
        q.text.clear();
        q.handed = std::mem::take(&mut q.queued);
        batch
    }

    /// The adapter threw while handling the batch it took: fail that batch
    /// instead of leaving it hanging.
    pub fn fail_handed(&self, why: &str) {
        let mut q = self.inner.lock();
        let handed = std::mem::take(&mut q.handed);
        q.fail(&handed, self.fail, why);
    }

    /// JavaScript cannot be called at all: fail what waits to be taken.
    pub fn fail_queued(&self, why: &str) {
        let mut q = self.inner.lock();
        q.text.clear();
        let queued = std::mem::take(&mut q.queued);
        q.fail(&queued, self.fail, why);
    }

    /// A handle that does not keep the queue alive (for callbacks).
    pub fn downgrade(&self) -> WeakCallQueue<O> {
        WeakCallQueue {
            inner: Arc::downgrade(&self.inner),
            fail: self.fail,
        }
    }

    /// Requests waiting for an answer.
    pub fn waiting(&self) -> usize {
        self.inner.lock().waiting.len()
    }

    /// Completes the requests a JSON array of answers names (an unknown
    /// one was already given up on); `outcome` reads one answer as its
    /// request's number and outcome. Only this package's adapter sends
    /// these, so an unreadable batch is a bug: the error is for the log.
    pub fn answer_all<A: serde::de::DeserializeOwned>(
        &self,
        answers: &str,
        outcome: impl Fn(A) -> (u64, O),
    ) -> serde_json::Result<()> {
        let list: Vec<A> = serde_json::from_str(answers)?;
        let mut q = self.inner.lock();
        for answer in list {
            let (seq, outcome) = outcome(answer);
            if let Some(tx) = q.waiting.remove(&seq) {
                let _ = tx.send(outcome);
            }
        }
        Ok(())
    }
}

pub struct WeakCallQueue<O> {
    inner: Weak<Mutex<Queue<O>>>,
    fail: fn(String) -> O,
}

impl<O: Send + 'static> WeakCallQueue<O> {
    pub fn upgrade(&self) -> Option<CallQueue<O>> {
        Some(CallQueue {
            inner: self.inner.upgrade()?,
            fail: self.fail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn queue() -> CallQueue<Result<String, String>> {
        CallQueue::new(Err)
    }

    #[test]
    fn only_the_first_request_asks_for_a_hand_over_and_a_batch_takes_them_all() {
        let q = queue();
        let (a, first_a) = q.push(|t| t.push_str("\"a\""));
        let (b, first_b) = q.push(|t| t.push_str("\"b\""));
        assert!(first_a && !first_b);
        assert_eq!(q.take_batch(), r#"[[0,"a"],[1,"b"]]"#);
        // Taken: the next request asks again.
        let (_c, first_c) = q.push(|t| t.push_str("\"c\""));
        assert!(first_c);
        q.answer_all(
            r#"[[1,"B"],[0,"A"],[9,"unknown"]]"#,
            |(seq, v): (u64, String)| (seq, Ok(v)),
        )
        .unwrap();
        assert_eq!(a.now_or_never(), Some(Ok("A".to_string())));
        assert_eq!(b.now_or_never(), Some(Ok("B".to_string())));
        assert_eq!(q.waiting(), 1);
    }

    #[test]
    fn a_failed_hand_over_fails_exactly_its_batch() {
        let q = queue();
        let (a, _) = q.push(|t| t.push('1'));
        q.take_batch();
        let (b, _) = q.push(|t| t.push('2'));
        q.fail_handed("adapter threw");
        assert_eq!(a.now_or_never(), Some(Err("adapter threw".to_string())));
        let mut b = Box::pin(b);
        assert!(
            (&mut b).now_or_never().is_none(),
            "not handed yet: still waiting"
        );
        q.fail_queued("JavaScript cannot be called");
        assert_eq!(
            b.now_or_never(),
            Some(Err("JavaScript cannot be called".to_string()))
        );
        assert_eq!(q.take_batch(), "[]");
    }

    #[test]
    fn a_dropped_request_leaves_nothing_behind() {
        let q = queue();
        let (a, _) = q.push(|t| t.push('1'));
        assert_eq!(q.waiting(), 1);
        drop(a);
        assert_eq!(q.waiting(), 0);
        // Its late answer is ignored.
        q.answer_all("[[0,\"late\"]]", |(seq, v): (u64, String)| (seq, Ok(v)))
            .unwrap();
        assert!(q
            .answer_all("not json", |(seq, v): (u64, String)| (seq, Ok(v)))
            .is_err());
    }
}
