//! Wake-ups of connection tasks made on a thread other than theirs,
//! gathered and handed to the tasks' runtime together.
//!
//! Waking a task of a current-thread runtime from another thread unparks
//! that runtime's driver: a system call per wake-up. A fan-out run on the
//! thread that received the bus's message (`js-thread` mode with direct
//! writes: a lone publication, see `broker::relay`) writes to most members
//! itself and queues for the rest (a full socket, frames already queued, a
//! compressed or encrypted member); those members' tasks are woken with
//! one hand-over per publication instead of one each. Only the waking is
//! put off: each frame is in its member's queue, in order, before
//! [`gather`] returns.

use futures_util::task::AtomicWaker;
use std::cell::RefCell;
use std::task::Waker;

thread_local! {
    /// Set while [`gather`] runs on this thread.
    static GATHERED: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// Wakes the task registered in `task`; inside [`gather`], keeps its waker
/// for `gather`'s caller instead.
pub fn wake(task: &AtomicWaker) {
    let kept = GATHERED.with(|g| match g.borrow_mut().as_mut() {
        Some(wakers) => {
            wakers.extend(task.take());
            true
        }
        None => false,
    });
    if !kept {
        task.wake();
    }
}

/// Runs `f`, keeping the wake-ups it makes on this thread through
/// [`wake`], and returns them for the caller to hand over. If `f` panics,
/// they are woken here: none is lost.
pub fn gather(f: impl FnOnce()) -> Vec<Waker> {
    struct Gathering(Option<Vec<Waker>>);
    impl Drop for Gathering {
        fn drop(&mut self) {
            let wakers = GATHERED.with(|g| std::mem::replace(&mut *g.borrow_mut(), self.0.take()));
            if std::thread::panicking() {
                wakers.into_iter().flatten().for_each(Waker::wake);
            }
        }
    }
    let outer = Gathering(GATHERED.with(|g| g.borrow_mut().replace(Vec::new())));
    f();
    let wakers = GATHERED.with(|g| g.borrow_mut().replace(Vec::new()));
    drop(outer);
    wakers.unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that counts its wake-ups (also for the client's tests).
    #[derive(Default)]
    pub(crate) struct Count(pub(crate) AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn registered() -> (AtomicWaker, Arc<Count>) {
        let count = Arc::new(Count::default());
        let task = AtomicWaker::new();
        task.register(&Waker::from(count.clone()));
        (task, count)
    }

    #[test]
    fn outside_gather_a_wake_is_at_once() {
        let (task, count) = registered();
        wake(&task);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn inside_gather_wakes_are_handed_to_the_caller_once_each() {
        let (a, count_a) = registered();
        let (b, count_b) = registered();
        let wakers = gather(|| {
            wake(&a);
            // Taken already: the task has not registered again.
            wake(&a);
            wake(&b);
        });
        assert_eq!(count_a.0.load(Ordering::SeqCst), 0);
        assert_eq!(count_b.0.load(Ordering::SeqCst), 0);
        assert_eq!(wakers.len(), 2);
        wakers.into_iter().for_each(Waker::wake);
        assert_eq!(count_a.0.load(Ordering::SeqCst), 1);
        assert_eq!(count_b.0.load(Ordering::SeqCst), 1);
        // Over: wakes are at once again.
        b.register(&Waker::from(count_b.clone()));
        wake(&b);
        assert_eq!(count_b.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_nested_gather_keeps_its_own_and_the_outer_one_goes_on() {
        let (a, _) = registered();
        let (b, _) = registered();
        let mut inner = Vec::new();
        let outer = gather(|| {
            inner = gather(|| wake(&a));
            wake(&b);
        });
        assert_eq!((inner.len(), outer.len()), (1, 1));
    }

    #[test]
    fn a_panic_inside_gather_wakes_what_was_gathered() {
        let (task, count) = registered();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gather(|| {
                wake(&task);
                panic!("a fan-out failed");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // Nothing is left gathering on this thread.
        task.register(&Waker::from(count.clone()));
        wake(&task);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
