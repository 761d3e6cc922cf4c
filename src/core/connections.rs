//! Connection accounting: how many connection tasks are running (what
//! `shutdown()` waits for), how many come from each address (for
//! `maxConnectionsPerIp`), and whether the server is shutting down.
//!
//! Counting lives in one place, behind a guard: a [`Live`] exists for as
//! long as a socket is being served, from the accept to the end of its
//! connection task (a panic included), so the count can never drift.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

pub struct Connections {
    live: AtomicUsize,
    all_closed: Notify,
    /// Counted only when a per-address limit is set.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    per_ip_limit: usize,
    shutting_down: AtomicBool,
}

impl Connections {
    pub fn new(per_ip_limit: usize) -> Arc<Connections> {
        Arc::new(Connections {
            live: AtomicUsize::new(0),
            all_closed: Notify::new(),
            per_ip: Mutex::new(HashMap::new()),
            per_ip_limit,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Counts a socket from `ip` until the returned guard is dropped.
    pub fn start(self: &Arc<Self>, ip: IpAddr) -> Live {
        self.live.fetch_add(1, Ordering::AcqRel);
        if self.per_ip_limit > 0 {
            *self.per_ip.lock().entry(ip).or_insert(0) += 1;
        }
        Live {
            connections: self.clone(),
            ip,
        }
    }

    /// Sockets being served (closing ones included).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Open sockets from `ip` (counted only when a per-address limit is set).
    pub fn from(&self, ip: IpAddr) -> usize {
        self.per_ip.lock().get(&ip).copied().unwrap_or(0)
    }

    /// Marks the server as shutting down; true if it already was.
    pub fn begin_shutdown(&self) -> bool {
        self.shutting_down.swap(true, Ordering::AcqRel)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Resolves once no socket is being served, calling `nudge` (which asks
    /// the remaining ones to close) first and after every change.
    pub async fn all_closed(&self, nudge: impl Fn()) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            nudge();
            notified.await;
        }
    }

    fn ended(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_closed.notify_waiters();
        }
    }
}

/// One socket counted as live (and against its address's limit) for as
/// long as this exists. It moves from the task that accepts a socket into
/// the connection's own task.
pub struct Live {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Live {
    /// A connection spliced to the application's HTTP server is not waited
    /// for by `shutdown()` (browsers keep HTTP connections open for
    /// minutes): it stops counting as live while the returned guard exists,
    /// though it still counts against its address.
    pub fn forwarding(&self) -> Forwarding<'_> {
        self.connections.ended();
        Forwarding(self)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let c = &self.connections;
        if c.per_ip_limit > 0 {
            let mut map = c.per_ip.lock();
            if let Some(n) = map.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
        c.ended();
    }
}

/// See [`Live::forwarding`].
pub struct Forwarding<'a>(&'a Live);

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        self.0.connections.live.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_follow_the_guards() {
        let c = Connections::new(10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = c.start(ip);
        let b = c.start(ip);
        assert_eq!((c.live(), c.from(ip)), (2, 2));
        {
            let _f = a.forwarding();
            assert_eq!((c.live(), c.from(ip)), (1, 2), "spliced: not waited for");
        }
        assert_eq!(c.live(), 2);
        drop(a);
        drop(b);
        assert_eq!((c.live(), c.from(ip)), (0, 0));
        // Resolves at once, without nudging, when nothing is live.
        c.all_closed(|| panic!("nothing to nudge")).await;
    }

    #[tokio::test]
    async fn all_closed_waits_for_the_last_guard() {
        let c = Connections::new(0);
        let live = c.start("10.0.0.2".parse().unwrap());
        let nudged = std::sync::atomic::AtomicUsize::new(0);
        let holder = crate::core::task::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            drop(live);
        });
        c.all_closed(|| {
            nudged.fetch_add(1, Ordering::Relaxed);
        })
        .await;
        holder.await.unwrap();
        assert_eq!(c.live(), 0);
        assert!(nudged.load(Ordering::Relaxed) >= 1);
    }
}
