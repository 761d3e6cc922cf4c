//! Requests to a JavaScript adapter carried many per crossing, and answered
//! the same way.
//!
//! A promise per request (what `call_async` gives) costs, per request, a
//! crossing, the argument values, the adapter's promise and two functions
//! N-API creates to await it; in a connection storm that is most of the JS
//! thread's work and most of its garbage. Here each request is a JSON entry
//! `[seq, …]` appended to one text; the thread-safe function is called only
//! when that text goes from empty to non-empty, and takes whatever has
//! accumulated by the time the JS thread runs it, so a burst costs one call
//! and a lone request costs what it did before. The adapter answers through
//! the binding's own methods (`NativeServer::auth_answers`, `room_answers`),
//! also many at a time, and each answer completes its request's future.

use napi::bindgen_prelude::Function;
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi::Status;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Weak};
use tokio::sync::oneshot;

type BatchFn = ThreadsafeFunction<(), (), String, Status, false, true>;

pub struct BatchedCalls<O> {
    f: BatchFn,
    queue: Arc<Mutex<Queue<O>>>,
    /// The outcome of a request JavaScript could not answer.
    fail: fn(String) -> O,
}

struct Queue<O> {
    next: u64,
    /// Entries not yet handed to JavaScript, comma-separated.
    text: String,
    /// Their sequence numbers, to fail them if the adapter throws.
    queued: Vec<u64>,
    /// The sequence numbers of the batch JavaScript is being called with.
    handed: Vec<u64>,
    waiting: HashMap<u64, oneshot::Sender<O>>,
}

impl<O> Queue<O> {
    /// Ends the requests `seqs` with `fail(why)`.
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

impl<O: Send + 'static> BatchedCalls<O> {
    /// Wraps the adapter `f(batch: string)`; weak, like every function the
    /// native side holds: it never keeps the process alive.
    pub fn new(f: &Function<'_, String, ()>, fail: fn(String) -> O) -> napi::Result<Self> {
        let queue = Arc::new(Mutex::new(Queue {
            next: 0,
            text: String::new(),
            queued: Vec::new(),
            handed: Vec::new(),
            waiting: HashMap::new(),
        }));
        let q = queue.clone();
        let f = f
            .build_threadsafe_function::<()>()
            .weak::<true>()
            .callee_handled::<false>()
            .build_callback(move |_: ThreadsafeCallContext<()>| {
                // On the JS thread, just before the call: take everything
                // queued so far. Never fails (a failure here would be fatal).
                let mut q = q.lock();
                let mut batch = String::with_capacity(q.text.len() + 2);
                batch.push('[');
                batch.push_str(&q.text);
                batch.push(']');
                q.text.clear();
                q.handed = std::mem::take(&mut q.queued);
                Ok(batch)
            })?;
        Ok(BatchedCalls { f, queue, fail })
    }

    /// Queues a request. `write` appends the request's fields (a JSON
    /// fragment) after its sequence number. The future ends with the
    /// adapter's answer, or `fail(…)` when JavaScript could not give one.
    pub fn request(
        &self,
        write: impl FnOnce(&mut String),
    ) -> impl std::future::Future<Output = O> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let (seq, first) = {
            let mut q = self.queue.lock();
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
            queue: Arc::downgrade(&self.queue),
            seq,
            answered: false,
        };
        if first {
            self.call();
        }
        async move {
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
        }
    }

    /// Asks the JS thread to take the queue.
    fn call(&self) {
        let queue = Arc::downgrade(&self.queue);
        let fail = self.fail;
        let status = self.f.call_with_return_value(
            (),
            ThreadsafeFunctionCallMode::NonBlocking,
            move |r, _| {
                // The adapter catches everything; should it throw all the
                // same, its batch fails instead of hanging.
                if let (Err(e), Some(q)) = (r, queue.upgrade()) {
                    let mut q = q.lock();
                    let handed = std::mem::take(&mut q.handed);
                    q.fail(&handed, fail, &e.reason);
                }
                Ok(())
            },
        );
        if status != Status::Ok {
            let mut q = self.queue.lock();
            q.text.clear();
            let queued = std::mem::take(&mut q.queued);
            q.fail(
                &queued,
                fail,
                &format!("JavaScript cannot be called ({status})"),
            );
        }
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
        let mut q = self.queue.lock();
        for answer in list {
            let (seq, outcome) = outcome(answer);
            if let Some(tx) = q.waiting.remove(&seq) {
                let _ = tx.send(outcome);
            }
        }
        Ok(())
    }
}
