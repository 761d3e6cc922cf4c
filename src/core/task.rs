//! Spawning the core's tasks with their wake-ups counted.
//!
//! A runtime turned from outside (the binding's `js-thread` mode turns a
//! current-thread runtime from the JavaScript thread, a slice at a time)
//! must know, when a turn ends, whether anything is left to run. Tokio's
//! current-thread scheduler ends every pass with a look at the sockets and
//! timers (a driver park, with no wait when the caller is to be polled
//! again), and the tasks that look wakes run only at the next turn. Tokio
//! does not say whether it woke any (only through an unstable metric), so
//! every task the core spawns polls its future with a waker that counts its
//! wake-ups on the thread that makes them, then wakes the task as tokio's
//! own waker would. The caller reads [`wakes`] before the look and after.
//!
//! It costs no allocation: the counting waker carries tokio's own waker
//! data, with a table of functions of ours that count and then call
//! tokio's. A task polled with a waker that is not tokio's (none is, through
//! [`spawn`]) is polled as it is, uncounted.

use std::cell::Cell;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use tokio::task::JoinHandle;

thread_local! {
    /// Wake-ups of the core's tasks made on this thread.
    static WAKES: Cell<u64> = const { Cell::new(0) };
}

/// How many wake-ups of the core's tasks this thread has made so far.
pub fn wakes() -> u64 {
    WAKES.get()
}

/// `tokio::spawn`, with the task's wake-ups counted.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(Counted { future })
}

/// [`spawn`] on the runtime of `handle`.
pub fn spawn_on<F>(handle: &tokio::runtime::Handle, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle.spawn(Counted { future })
}

struct Counted<F> {
    future: F,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `future` is never moved out of the pinned `Counted`.
        let future = unsafe { self.map_unchecked_mut(|c| &mut c.future) };
        let waker = cx.waker();
        if !is_tokios(waker.vtable()) {
            return future.poll(cx);
        }
        // Borrowed like the caller's: no reference of the task's is taken
        // or given back here (ManuallyDrop), only by its clones and drops.
        // SAFETY: the data is tokio's task waker's, and `COUNTING` forwards
        // each operation on it to tokio's table (`TOKIO`).
        let counting = ManuallyDrop::new(unsafe { Waker::new(waker.data(), &COUNTING) });
        future.poll(&mut Context::from_waker(&counting))
    }
}

/// Tokio's table of task waker functions, as found on the first poll (one
/// static table serves every task of every runtime).
static TOKIO: AtomicPtr<RawWakerVTable> = AtomicPtr::new(ptr::null_mut());

fn is_tokios(vtable: &'static RawWakerVTable) -> bool {
    let seen = vtable as *const RawWakerVTable as *mut RawWakerVTable;
    match TOKIO.compare_exchange(ptr::null_mut(), seen, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => true,
        Err(known) => known == seen,
    }
}

/// Tokio's waker for `data` (owning whatever reference `data` stands for).
///
/// # Safety
/// `data` must come from a waker whose table is `TOKIO`.
unsafe fn tokios(data: *const ()) -> Waker {
    // SAFETY: `TOKIO` was set before any counting waker was made.
    unsafe { Waker::new(data, &*TOKIO.load(Ordering::Acquire)) }
}

static COUNTING: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_waker);

unsafe fn clone(data: *const ()) -> RawWaker {
    let theirs = ManuallyDrop::new(unsafe { tokios(data) });
    // Tokio's clone takes a reference; the clone keeps it.
    let clone = ManuallyDrop::new((*theirs).clone());
    RawWaker::new(clone.data(), &COUNTING)
}

unsafe fn wake(data: *const ()) {
    WAKES.set(WAKES.get() + 1);
    unsafe { tokios(data) }.wake();
}

unsafe fn wake_by_ref(data: *const ()) {
    WAKES.set(WAKES.get() + 1);
    ManuallyDrop::new(unsafe { tokios(data) }).wake_by_ref();
}

unsafe fn drop_waker(data: *const ()) {
    drop(unsafe { tokios(data) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A task woken by a timer and by a channel is counted on the thread
    /// that woke it, and it runs as with tokio's own waker.
    #[tokio::test(flavor = "current_thread")]
    async fn wakes_are_counted_and_delivered() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let task = spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            rx.await.unwrap() + 1
        });
        tokio::task::yield_now().await;
        let before = wakes();
        // The timer fires on this thread's park: one wake-up.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(wakes() > before, "the timer's wake-up was not counted");
        let before = wakes();
        tx.send(41).unwrap();
        assert_eq!(wakes(), before + 1, "the channel's wake-up");
        assert_eq!(task.await.unwrap(), 42);
    }

    /// A clone of the counting waker counts too, and outlives its task
    /// safely (it holds a reference of tokio's, as tokio's clone would).
    #[tokio::test(flavor = "current_thread")]
    async fn clones_count_and_outlive_the_task() {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(None::<Waker>));
        let k = kept.clone();
        let task = spawn(std::future::poll_fn(move |cx| {
            *k.lock().unwrap() = Some(cx.waker().clone());
            Poll::Ready(7)
        }));
        assert_eq!(task.await.unwrap(), 7);
        let waker = kept.lock().unwrap().take().unwrap();
        assert!(ptr::eq(waker.vtable(), &COUNTING));
        let before = wakes();
        let clone = waker.clone();
        assert!(ptr::eq(clone.vtable(), &COUNTING));
        waker.wake_by_ref();
        clone.wake();
        assert_eq!(wakes(), before + 2);
        drop(waker);
    }

    /// Not on a runtime's task (a plain waker): polled uncounted.
    #[test]
    fn a_foreign_waker_is_passed_through() {
        let _ = is_tokios(tokio_vtable());
        let count = std::sync::Arc::new(crate::core::deferred_wakes::tests::Count::default());
        let waker = Waker::from(count.clone());
        let mut fut = std::pin::pin!(Counted {
            future: std::future::poll_fn(|cx| {
                cx.waker().wake_by_ref();
                Poll::Ready(())
            })
        });
        let before = wakes();
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready());
        assert_eq!(wakes(), before);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    /// Tokio's table, from a task of a throwaway runtime.
    fn tokio_vtable() -> &'static RawWakerVTable {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::spawn(std::future::poll_fn(|cx| Poll::Ready(cx.waker().vtable())))
                .await
                .unwrap()
        })
    }
}
