//! Requests to a JavaScript adapter carried many per crossing, and answered
//! the same way. The queue itself is napi-free (`core::call_queue`, where
//! the why is); this adds the thread-safe function that hands a batch to
//! the JS thread.

use crate::core::call_queue::CallQueue;
use crate::js_thread::{self, Runner};
use napi::bindgen_prelude::Function;
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi::Status;

type BatchFn = ThreadsafeFunction<(), (), String, Status, false, true>;

pub struct BatchedCalls<O> {
    f: BatchFn,
    queue: CallQueue<O>,
    runner: Option<&'static Runner>,
}

impl<O: Send + 'static> BatchedCalls<O> {
    /// Wraps the adapter `f(batch: string)`; weak, like every function the
    /// native side holds: it never keeps the process alive.
    pub fn new(
        f: &Function<'_, String, ()>,
        fail: fn(String) -> O,
        runner: Option<&'static Runner>,
    ) -> napi::Result<Self> {
        let queue = CallQueue::new(fail);
        let q = queue.clone();
        let f = f
            .build_threadsafe_function::<()>()
            .weak::<true>()
            .callee_handled::<false>()
            // On the JS thread, just before the call: take everything
            // queued so far. Never fails (a failure here would be fatal).
            .build_callback(move |_: ThreadsafeCallContext<()>| Ok(q.take_batch()))?;
        Ok(BatchedCalls { f, queue, runner })
    }

    /// Queues a request. `write` appends the request's fields (a JSON
    /// fragment) after its sequence number. The future ends with the
    /// adapter's answer, or the failure outcome when JavaScript could not
    /// give one.
    pub fn request(
        &self,
        write: impl FnOnce(&mut String),
    ) -> impl std::future::Future<Output = O> + Send + 'static {
        let (answer, first) = self.queue.push(write);
        if first {
            self.call();
        }
        answer
    }

    /// Asks the JS thread to take the queue.
    fn call(&self) {
        let queue = self.queue.downgrade();
        let runner = self.runner;
        js_thread::js_call_queued(runner);
        let status = self.f.call_with_return_value(
            (),
            ThreadsafeFunctionCallMode::NonBlocking,
            move |r, _| {
                js_thread::js_callback(runner, || {
                    // The adapter catches everything; should it throw all
                    // the same, its batch fails instead of hanging.
                    if let (Err(e), Some(q)) = (r, queue.upgrade()) {
                        q.fail_handed(&e.reason);
                    }
                });
                Ok(())
            },
        );
        if status != Status::Ok {
            js_thread::js_call_dropped(runner);
            self.queue
                .fail_queued(&format!("JavaScript cannot be called ({status})"));
        }
    }

    /// See [`CallQueue::answer_all`].
    pub fn answer_all<A: serde::de::DeserializeOwned>(
        &self,
        answers: &str,
        outcome: impl Fn(A) -> (u64, O),
    ) -> serde_json::Result<()> {
        self.queue.answer_all(answers, outcome)
    }
}
