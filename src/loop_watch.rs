//! Node on Linux: the JS thread's own event loop (libuv) watches the
//! `js-thread` runtime's epoll descriptor, so that a socket's readiness, or
//! a wake-up from another thread, wakes the JS thread itself.
//!
//! Without it, work that arrives while JavaScript is idle is read by the
//! waiter thread, which then wakes the JS thread for the handler: two
//! threads woken in series per message, where the original wakes one. On a
//! small VM a wake-up from idle takes tens of microseconds, and in the
//! cross-instance scenario of the bench, (e), the tail of the latency was
//! lower by ≈ 15 % with the watch (docs/PERFORMANCE.md).
//!
//! Tokio does not expose its driver's descriptor (tokio-rs/tokio#7348,
//! #6994); it is found as the one epoll descriptor that building the
//! runtime opened. The libuv functions are looked up in the process when
//! the watch is made, not linked: Bun, whose `uv_poll_*` are stubs that
//! abort, never reaches them (the caller checks the host first), and an
//! addon loaded by a host without them still loads.

use napi::bindgen_prelude::JsObjectValue;
use napi::{sys, Env};
use std::collections::HashSet;
use std::ffi::{c_int, c_void, CStr};
use std::os::fd::RawFd;

type PollCb = extern "C" fn(*mut c_void, c_int, c_int);

/// libuv's `uv_handle_type` for a poll handle, and its readable event.
const UV_POLL: c_int = 8;
const UV_READABLE: c_int = 1;

type HandleSizeFn = extern "C" fn(c_int) -> usize;
type PollInitFn = extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int;
type PollStartFn = extern "C" fn(*mut c_void, c_int, PollCb) -> c_int;
type PollStopFn = extern "C" fn(*mut c_void) -> c_int;
type UnrefFn = extern "C" fn(*mut c_void);

struct Uv {
    handle_size: HandleSizeFn,
    poll_init: PollInitFn,
    poll_start: PollStartFn,
    poll_stop: PollStopFn,
    unref: UnrefFn,
}

impl Uv {
    fn find() -> Option<Uv> {
        fn sym(name: &CStr) -> Option<*mut c_void> {
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        }
        // SAFETY: the symbols are libuv's, with these C signatures (uv.h).
        unsafe {
            Some(Uv {
                handle_size: std::mem::transmute::<*mut c_void, HandleSizeFn>(sym(
                    c"uv_handle_size",
                )?),
                poll_init: std::mem::transmute::<*mut c_void, PollInitFn>(sym(c"uv_poll_init")?),
                poll_start: std::mem::transmute::<*mut c_void, PollStartFn>(sym(c"uv_poll_start")?),
                poll_stop: std::mem::transmute::<*mut c_void, PollStopFn>(sym(c"uv_poll_stop")?),
                unref: std::mem::transmute::<*mut c_void, UnrefFn>(sym(c"uv_unref")?),
            })
        }
    }
}

/// A libuv poll handle on the runtime's epoll descriptor, made and used on
/// the JS thread only. It never keeps the loop alive (`uv_unref`), and it
/// lives as long as the process, like the runner that owns it.
pub struct LoopWatch {
    uv: Uv,
    handle: *mut c_void,
    cb: PollCb,
}

// SAFETY: the handle is only touched on the JS thread (the runner checks
// the thread before every call); the runner, a process-wide static, must
// be `Sync` for its other, thread-safe fields.
unsafe impl Send for LoopWatch {}
unsafe impl Sync for LoopWatch {}

impl LoopWatch {
    /// A watch of `epfd` on `env`'s loop, calling `cb` on the JS thread
    /// when it is readable; `None` where that cannot be done (not Node,
    /// no libuv, a failed call).
    pub fn new(env: &Env, epfd: RawFd, cb: PollCb) -> Option<LoopWatch> {
        if is_bun(env) {
            return None;
        }
        let uv = Uv::find()?;
        let mut lp: *mut sys::uv_loop_s = std::ptr::null_mut();
        let status = unsafe { sys::napi_get_uv_event_loop(env.raw(), &mut lp) };
        if status != sys::Status::napi_ok || lp.is_null() {
            return None;
        }
        let size = (uv.handle_size)(UV_POLL);
        if size == 0 {
            return None;
        }
        // Zeroed, as libuv expects of a handle it has not initialised, and
        // aligned for the pointers it keeps there; leaked on purpose (see
        // the type's comment).
        let layout = std::alloc::Layout::from_size_align(size, 16).ok()?;
        // SAFETY: `size` is not zero (checked above).
        let handle = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<c_void>();
        if handle.is_null() {
            return None;
        }
        if (uv.poll_init)(lp.cast(), handle, epfd) != 0 {
            return None;
        }
        (uv.unref)(handle);
        Some(LoopWatch { uv, handle, cb })
    }

    /// Watches (again); idempotent in libuv.
    pub fn arm(&self) -> bool {
        (self.uv.poll_start)(self.handle, UV_READABLE, self.cb) == 0
    }

    pub fn disarm(&self) {
        (self.uv.poll_stop)(self.handle);
    }
}

fn is_bun(env: &Env) -> bool {
    let check = || -> napi::Result<bool> {
        let versions: napi::bindgen_prelude::Object = env
            .get_global()?
            .get_named_property::<napi::bindgen_prelude::Object>("process")?
            .get_named_property("versions")?;
        versions.has_named_property("bun")
    };
    // Unknown counts as Bun: the watch is then simply not made.
    check().unwrap_or(true)
}

/// The epoll descriptors open in the process.
pub fn epoll_fds() -> HashSet<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        (target.as_os_str() == "anon_inode:[eventpoll]")
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
    .collect()
}

/// The runtime's epoll descriptor among those opened while it was built
/// (`after` less `before`; other threads may open theirs meanwhile): the
/// one that `wake` (a wake-up of the runtime, which writes its driver's
/// event descriptor) makes readable.
pub fn runtime_epoll_fd(
    before: &HashSet<RawFd>,
    after: &HashSet<RawFd>,
    wake: impl FnOnce(),
) -> Option<RawFd> {
    let new: Vec<RawFd> = after.difference(before).copied().collect();
    let readable = |fds: &[RawFd]| -> Vec<RawFd> {
        fds.iter()
            .copied()
            .filter(|&fd| {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                let n = unsafe { libc::poll(&mut p, 1, 0) };
                n == 1 && p.revents & libc::POLLIN != 0
            })
            .collect()
    };
    // Readable before the wake-up: not told apart by it.
    let before_wake = readable(&new);
    wake();
    let found: Vec<RawFd> = readable(&new)
        .into_iter()
        .filter(|fd| !before_wake.contains(fd))
        .collect();
    // Tokio keeps a duplicate of its epoll descriptor (its registry's):
    // the same epoll, with the same watched descriptors.
    let watched = |fd: RawFd| -> Option<String> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        Some(info.lines().filter(|l| l.starts_with("tfd:")).collect())
    };
    let (&fd, rest) = found.split_first()?;
    let first = watched(fd)?;
    rest.iter()
        .all(|&other| watched(other).as_ref() == Some(&first))
        .then_some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        (unsafe { libc::poll(&mut p, 1, 0) }) == 1
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Other tests build runtimes on other threads meanwhile: a snapshot
    /// they disturb is refused (`None`), so a few tries are allowed.
    fn found(pick: impl Fn(&tokio::runtime::Runtime, &tokio::runtime::Runtime) -> bool) {
        for _ in 0..20 {
            let before = epoll_fds();
            let (a, b) = (current_thread(), current_thread());
            let after = epoll_fds();
            let woken = if pick(&a, &b) { &b } else { &a };
            let Some(fd) = runtime_epoll_fd(&before, &after, || drop(woken.spawn(async {}))) else {
                continue;
            };
            // It is the woken runtime's: turning that runtime takes the
            // wake-up, and waking it again makes the descriptor readable.
            assert!(readable(fd));
            woken.block_on(tokio::task::yield_now());
            assert!(!readable(fd), "turning the woken runtime drained it");
            drop(woken.spawn(async {}));
            assert!(readable(fd));
            return;
        }
        panic!("the runtime's epoll descriptor was never found");
    }

    #[test]
    fn the_woken_runtime_s_descriptor_is_found_among_new_ones() {
        found(|_, _| false);
        found(|_, _| true);
    }

    #[test]
    fn nothing_is_found_when_no_new_descriptor_wakes() {
        let before = epoll_fds();
        let rt = current_thread();
        let after = epoll_fds();
        assert_eq!(runtime_epoll_fd(&before, &after, || {}), None);
        drop(rt);
    }
}
