//! Running the core on the JavaScript thread (`runMode: "js-thread"`).
//!
//! In the `threads` shape the core runs on napi's multi-thread tokio
//! runtime: a socket is read on a worker, the event crosses to the JS
//! thread, the reply crosses back. On a host with one or two cores those
//! crossings cost more than the work (parking, waking, moving each message
//! between cores), so this mode runs the core on a current-thread runtime
//! that the JS thread itself turns while JavaScript has work of ours: a
//! handler runs on the thread whose turn read its frame, and its replies
//! are written before the JS call that made them returns.
//!
//! Who turns the runtime. A current-thread runtime is turned by whoever
//! calls `block_on`; the JS thread must never block, so two parties take
//! turns holding it:
//! - **The waiter**, a plain thread, holds it while no callback of ours is
//!   pending in JavaScript: it parks in the runtime's own driver (sockets,
//!   timers, wake-ups from other threads) and runs what becomes ready, so
//!   traffic that needs no JavaScript (fan-out of publications) costs one
//!   wake-up, as on threads. As soon as a callback into JavaScript is
//!   queued (an event batch, an authentication) it lets go (`Wait`).
//! - **The JS thread** then holds it: the end of each such callback, every
//!   server method that wakes tasks (sends, answers) and a "pump" callback
//!   turn it, running every ready task and polling the sockets without
//!   waiting until nothing is left or a 2 ms slice is over (`Turn`). Under
//!   request/response load a callback is nearly always pending, so the JS
//!   thread keeps the runtime and nothing is parked or woken per message.
//!   When nothing of ours is pending any more, it hands the runtime back.
//!
//! When JavaScript needs the runtime while the waiter holds it (a send from
//! a timer), it takes it back (`acquire`): the waiter is woken and lets go
//! within one scheduler pass.
//!
//! JavaScript may keep its thread a long time before it turns the runtime
//! it was handed: a handler that computes, a garbage collection, other
//! callbacks queued first, the application's own work. Sockets would go
//! unserved meanwhile, even what needs no JavaScript (handshakes, pings,
//! fan-out). So when the JS thread has started no turn for [`GRACE`] since
//! it was handed the runtime, the waiter takes it back (`reclaimed`) and
//! holds it until the JS thread's next turn asks for it.
//!
//! Turns are kept few, since each costs a pass of the scheduler and a look
//! at the sockets (a system call):
//! - the replies an event callback queued are handed over as its last
//!   act, and written by the turn that ends the callback, not by one of
//!   their own (`call_before_turn`);
//! - a pump after a turn that ran out of work and left none behind only
//!   hands the runtime over. Tokio's current-thread scheduler ends each
//!   pass with a look at the sockets and timers, even when the caller is to
//!   be polled next, and the tasks that last look wakes wait for the next
//!   turn; whether it woke any is known because the core's tasks count
//!   their wake-ups (`core::task`, `STRANDED`), and then the pump turns.
//!
//! On Node (the process's main thread, Linux) the JS thread does not hand
//! the runtime back when nothing of ours is pending: it keeps it and
//! sleeps in its own event loop, where a libuv poll handle on the
//! runtime's epoll descriptor wakes it for sockets and wake-ups
//! (`loop_watch`), so a message that finds the server idle wakes one
//! thread, not the waiter and then the JS thread. That loop does not see
//! the runtime's timers: the waiter takes the runtime back once the JS
//! thread, asleep, has turned it for none for [`SLACK`]. Nor would it wake
//! for tasks a turn's last look left queued (`STRANDED`): such a turn is
//! followed by another. While our callbacks come closer than
//! [`DENSE_GAP`], the runtime goes back to the waiter between them as
//! without the watch: the waiter, woken for it, is still awake when the
//! next message comes, which measured cheaper than the JS thread waking
//! from its loop for each (docs/PERFORMANCE.md, (l)); connection storms
//! are served there too, off the main thread's memory arena.
//!
//! The core does not know any of this: it spawns its tasks as always
//! (through `core::task`), and they run on whichever thread holds this
//! runtime.

use napi::bindgen_prelude::{FromNapiValue, JsValuesTupleIntoVec};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};
use parking_lot::{Condvar, Mutex};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::core::{deferred_wakes, task};
use crate::loop_watch::{self, LoopWatch};

/// The longest a turn keeps the JS thread while work keeps arriving; then
/// JavaScript gets the thread back and the rest waits for the next turn.
const TURN_SLICE: Duration = Duration::from_millis(2);

/// How long the JS thread may hold the runtime without turning it, once
/// handed it, before the waiter takes it back. Short enough that a busy JS
/// thread delays no handshake or fan-out noticeably; long enough that a JS
/// thread merely finishing a callback is not raced for it (a steal costs
/// two wake-ups).
const GRACE: Duration = Duration::from_millis(2);

/// While the JS thread keeps turning the runtime, the waiter checks on it
/// less and less often, up to this: each check is a wake-up of its own
/// (≈ 30 µs of CPU on a small VM; every 2 ms it cost ≈ 1 % of (d)'s CPU).
/// A JS thread that stops turning after a long busy spell is thus noticed
/// within twice this.
const GRACE_MAX: Duration = Duration::from_millis(16);

/// With the loop watch (Node): how long the JS thread may sleep in its
/// event loop holding the runtime before the waiter takes it back. Its loop
/// wakes it for sockets and wake-ups, but not for the runtime's timers,
/// which fire when the runtime next turns: this bounds how late they can
/// be. Traffic spaced closer than this (and further than [`DENSE_GAP`])
/// keeps the runtime on the JS thread.
const SLACK: Duration = Duration::from_millis(16);

/// With the loop watch: callbacks of ours ending closer together than
/// this hand the runtime to the waiter between them, as without the watch.
const DENSE_GAP: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Holder {
    Js,
    Waiter,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    None,
    Js,
    Waiter,
}

thread_local! {
    /// Which party this thread is, for the runtime's park hooks.
    static ROLE: Cell<Role> = const { Cell::new(Role::None) };
    /// This thread made the runner and owns it: the JS thread. A flag of
    /// its own, read on every call, where `thread::current()` would clone
    /// the thread's handle (a thread std did not start is not `main` to it).
    static JS_THREAD: Cell<bool> = const { Cell::new(false) };
    /// The JS thread is inside `block_on` (a nested entry just runs).
    static TURNING: Cell<bool> = const { Cell::new(false) };
    /// Set by the park hook when the JS thread's turn ran out of work.
    static IDLE: Cell<bool> = const { Cell::new(false) };
    static TURN_WAKER: RefCell<Option<Waker>> = const { RefCell::new(None) };
    /// The core's wake-ups made on the JS thread when its turn ran out of
    /// work: more by the time the turn ends, and the runtime's last look at
    /// the sockets and timers woke tasks, left queued for the next turn.
    static WAKES_AT_IDLE: Cell<u64> = const { Cell::new(0) };
    /// The JS thread's last turn ran out of work.
    static LAST_IDLE: Cell<bool> = const { Cell::new(false) };
    /// ... and its last look woke tasks, or another thread queued some:
    /// they wait in the run queue.
    static STRANDED: Cell<bool> = const { Cell::new(false) };
    /// Tasks woken by a call made just before a turn (`call_before_turn`),
    /// for that turn to wake.
    static LATER: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    /// When the last callback of ours ended on the JS thread.
    static LAST_CALLBACK: Cell<Option<Instant>> = const { Cell::new(None) };
    /// It ended within [`DENSE_GAP`] of the one before.
    static DENSE: Cell<bool> = const { Cell::new(false) };
}

struct State {
    holder: Holder,
    /// The JS thread wants the runtime back from the waiter.
    steal: bool,
    /// Wakes the waiter's `block_on` (held while it waits).
    wait_waker: Option<Waker>,
    /// A pump callback is queued on the JS thread.
    pump_queued: bool,
    /// The waiter took the runtime back from a JS thread that did not turn
    /// it within [`GRACE`]: it holds it until the JS thread asks, even with
    /// callbacks pending.
    reclaimed: bool,
}

type PumpFn = ThreadsafeFunction<(), (), (), Status, false, true>;

pub struct Runner {
    rt: tokio::runtime::Runtime,
    /// The runtime's metrics, made once (each `Runtime::metrics` call
    /// clones the handle).
    metrics: tokio::runtime::RuntimeMetrics,
    state: Mutex<State>,
    changed: Condvar,
    /// Callbacks into JavaScript queued by the core and not yet run.
    pending: AtomicUsize,
    /// Bumped by the JS thread at the start and at the end of each turn
    /// (`block_on`), so odd while it is inside one: the waiter watches it
    /// move to tell a JS thread that turns the runtime from one that does
    /// not.
    turns: AtomicU64,
    pump: OnceLock<PumpFn>,
    /// Node: the JS thread's event loop watches the runtime's descriptor,
    /// so the JS thread keeps the runtime between turns instead of handing
    /// it back (`loop_watch`).
    watch: OnceLock<LoopWatch>,
    /// The watch is on: the JS thread holds the runtime while it sleeps in
    /// its loop.
    armed: AtomicBool,
    /// libuv reported an error on the watch: it is not used again.
    watch_broken: AtomicBool,
    /// The JS thread's id in the kernel, to tell whether it sleeps.
    js_tid: libc::pid_t,
    /// When the JS thread's last turn ended, in nanoseconds since `born`:
    /// with the watch on, the waiter takes the runtime back [`SLACK`]
    /// after it.
    last_turn_end: AtomicU64,
    born: Instant,
}

static RUNNER: OnceLock<&'static Runner> = OnceLock::new();

/// Whether the calling thread is the process's main thread (not a worker
/// thread of Node or Bun).
pub fn on_main_thread() -> bool {
    unsafe { libc::gettid() == libc::getpid() }
}

/// The process's runner, made on first use from the calling JS thread; the
/// runner belongs to that thread (`None` from any other, e.g. a worker
/// thread of Node, whose servers run on threads instead).
pub fn runner(env: &Env) -> napi::Result<Option<&'static Runner>> {
    // Two JS threads (Node's main thread and a worker) may ask at once:
    // one makes the runner, the other finds it.
    static MAKING: Mutex<()> = Mutex::new(());
    let _making = MAKING.lock();
    if let Some(r) = RUNNER.get() {
        return Ok(JS_THREAD.get().then_some(*r));
    }
    let epolls = loop_watch::epoll_fds();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(before_park)
        .on_thread_unpark(after_unpark)
        .build()
        .map_err(|e| napi::Error::from_reason(format!("js-thread runtime: {e}")))?;
    let epfd = loop_watch::runtime_epoll_fd(&epolls, &loop_watch::epoll_fds(), || {
        // A task spawned from outside the runtime wakes its driver.
        drop(rt.spawn(async {}));
    });
    let runner: &'static Runner = Box::leak(Box::new(Runner {
        metrics: rt.metrics(),
        rt,
        state: Mutex::new(State {
            holder: Holder::Js,
            steal: false,
            wait_waker: None,
            pump_queued: false,
            reclaimed: false,
        }),
        changed: Condvar::new(),
        pending: AtomicUsize::new(0),
        turns: AtomicU64::new(0),
        pump: OnceLock::new(),
        watch: OnceLock::new(),
        armed: AtomicBool::new(false),
        watch_broken: AtomicBool::new(false),
        js_tid: unsafe { libc::gettid() },
        last_turn_end: AtomicU64::new(0),
        born: Instant::now(),
    }));
    // Only on the process's main thread: a worker's loop is closed when the
    // worker ends, which a handle left open on it would abort.
    if let Some(watch) = epfd
        .filter(|_| on_main_thread() && watch_wanted())
        .and_then(|fd| LoopWatch::new(env, fd, on_readable))
    {
        let _ = runner.watch.set(watch);
    }
    let noop = env.create_function_from_closure::<(), (), _>("ignisWsPump", |_| Ok(()))?;
    let pump = noop
        .build_threadsafe_function::<()>()
        .weak::<true>()
        .callee_handled::<false>()
        .build_callback(move |_| {
            runner.pumped();
            Ok(())
        })?;
    let _ = runner.pump.set(pump);
    ROLE.set(Role::Js);
    std::thread::Builder::new()
        .name("ignis-ws-waiter".into())
        .spawn(move || runner.wait_loop())
        .map_err(|e| napi::Error::from_reason(format!("js-thread waiter: {e}")))?;
    // Past every step that can fail: a thread that failed to make the
    // runner must not pass for the one that owns another's.
    JS_THREAD.set(true);
    let _ = RUNNER.set(runner);
    runner.hand_back();
    Ok(Some(runner))
}

impl Runner {
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.handle()
    }

    /// The runtime the Redis connections run on in this mode: a thread of
    /// their own, made on first use and kept for the process.
    ///
    /// On the JS thread's runtime a publication waited behind the sockets'
    /// work: the publisher and redis-rs's connection task are tasks like
    /// the members' of a room, woken after them, so a message fanned out
    /// here and published for the other instances left for Redis only
    /// once the local fan-out (1 000 writes in (e)) was done, and the
    /// instance waited for Redis's answer the same way (measured: taken
    /// by the publisher 7.4 ms after the handler's call at the median,
    /// against 0.25 ms on `threads`). What arrives from Redis is fanned
    /// out on this runtime still (`broker::relay`).
    pub fn redis_runtime() -> napi::Result<tokio::runtime::Handle> {
        static BUS: Mutex<Option<tokio::runtime::Handle>> = Mutex::new(None);
        let mut bus = BUS.lock();
        if let Some(h) = &*bus {
            return Ok(h.clone());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| napi::Error::from_reason(format!("Redis runtime: {e}")))?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("ignis-ws-redis".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .map_err(|e| napi::Error::from_reason(format!("Redis thread: {e}")))?;
        *bus = Some(handle.clone());
        Ok(handle)
    }

    /// Runs `body` on the JS thread with the runtime held and turned: the
    /// tasks it wakes run before this returns.
    pub fn call<R>(&self, body: impl FnOnce() -> R) -> R {
        if !self.can_turn() {
            // Inside a turn, or off the JS thread (where the loop watch must
            // not be touched): the body runs as it is, a pump follows.
            let r = body();
            self.request_pump();
            return r;
        }
        let (r, idle) = self.turn(body);
        if self.keeps().is_some() {
            // The JS thread keeps the runtime: nothing to hand over once
            // JavaScript's microtasks have run.
            self.turned(idle);
        } else {
            self.request_pump();
        }
        r
    }

    /// `body`, then the runtime's ready tasks until none is left or the
    /// time slice is over; with whether it ran out of work (`false` after a
    /// slice cut short: more is waiting).
    fn turn<R>(&self, body: impl FnOnce() -> R) -> (R, bool) {
        if !self.can_turn() {
            return (body(), true);
        }
        self.acquire();
        // Ends the turn on the way out, a panic's unwinding included (a
        // caller may catch it), so that later calls turn the runtime again.
        struct Turning<'a>(&'a Runner);
        impl Drop for Turning<'_> {
            fn drop(&mut self) {
                TURNING.set(false);
                let r = self.0;
                // Read by the waiter only with the watch on.
                if r.watching().is_some() {
                    let now = r.born.elapsed().as_nanos() as u64;
                    r.last_turn_end.store(now, Ordering::Release);
                }
                r.turns.fetch_add(1, Ordering::Release);
            }
        }
        TURNING.set(true);
        let _turning = Turning(self);
        let (r, idle) = self.rt.block_on(async {
            LATER.take().into_iter().for_each(Waker::wake);
            let r = body();
            let idle = Turn::new().await;
            (r, idle)
        });
        LAST_IDLE.set(idle);
        // Woken by the park on this thread (the count moved), or from
        // another thread meanwhile (queued in the runtime's injection
        // queue, its driver's wake-up taken by that same park).
        STRANDED.set(
            idle && (task::wakes() != WAKES_AT_IDLE.get() || self.metrics.global_queue_depth() > 0),
        );
        (r, idle)
    }

    /// [`Runner::call`] for the end of a callback into JavaScript, which
    /// turns the runtime as it returns ([`js_callback`]): `body` runs at
    /// once, and the tasks it wakes through `deferred_wakes` are woken by
    /// that turn instead of one of its own.
    pub fn call_before_turn<R>(&self, body: impl FnOnce() -> R) -> R {
        if !self.can_turn() {
            return body();
        }
        let _runtime = self.rt.enter();
        let mut r = None;
        let wakers = deferred_wakes::gather(|| r = Some(body()));
        LATER.with_borrow_mut(|l| l.extend(wakers));
        // Should no turn follow after all, the pump's does it. With the
        // loop watch, nothing else waits for a pump unless tasks were
        // woken here.
        if self.keeps().is_none() || LATER.with_borrow(|l| !l.is_empty()) {
            self.request_pump();
        }
        r.expect("the body ran")
    }

    /// On the JS thread and not inside a turn already: a call here turns
    /// the runtime (elsewhere its body just runs).
    fn can_turn(&self) -> bool {
        !TURNING.get() && JS_THREAD.get()
    }

    /// On the JS thread, before a turn: the waiter lets go of the runtime.
    fn acquire(&self) {
        let mut s = self.state.lock();
        // Under the lock, so that the waiter sees this turn before it
        // decides to take the runtime back.
        self.turns.fetch_add(1, Ordering::AcqRel);
        if s.holder == Holder::Js {
            return;
        }
        s.steal = true;
        if let Some(w) = s.wait_waker.take() {
            w.wake();
        }
        self.changed.notify_all();
        while s.holder != Holder::Js {
            self.changed.wait(&mut s);
        }
    }

    /// On the JS thread: the waiter takes the runtime (nothing of ours is
    /// pending in JavaScript).
    fn hand_back(&self) {
        let mut s = self.state.lock();
        if s.holder == Holder::Js {
            s.holder = Holder::Waiter;
            self.changed.notify_all();
        }
    }

    fn request_pump(&self) {
        let mut s = self.state.lock();
        if s.pump_queued {
            return;
        }
        s.pump_queued = true;
        drop(s);
        let queued = self
            .pump
            .get()
            .map(|f| f.call((), ThreadsafeFunctionCallMode::NonBlocking));
        if queued != Some(Status::Ok) {
            // JavaScript is going away: the waiter serves what is left.
            self.state.lock().pump_queued = false;
            self.hand_back();
        }
    }

    /// The pump callback, on the JS thread: turn (unless the last turn left
    /// nothing to run), then hand over unless work is left (the slice was
    /// cut short: JavaScript gets the thread for a moment, then the next
    /// pump goes on) or a callback of ours is still to run here.
    fn pumped(&self) {
        self.state.lock().pump_queued = false;
        // The last turn ran out of work, leaving none behind, and nothing
        // waits for a turn: whatever came since (a socket's readiness, a
        // wake-up from another thread) wakes the runtime's driver, where the
        // waiter will find it; a turn here would only find that out.
        if LAST_IDLE.get()
            && !STRANDED.get()
            && LATER.with_borrow(Vec::is_empty)
            && self.pending.load(Ordering::Acquire) == 0
        {
            self.rest();
            return;
        }
        self.turned(self.turn(|| ()).1);
    }

    /// After a turn on the JS thread: pump again if work is left, keep the
    /// runtime while a callback of ours is pending, else rest.
    fn turned(&self, idle: bool) {
        if !idle || (STRANDED.get() && self.keeps().is_some()) {
            // Work left, or tasks woken by the turn's last look at the
            // sockets, which the loop watch would not wake for (the waiter
            // runs them as soon as it holds the runtime).
            self.request_pump();
        } else if self.keeps().is_some() {
            self.rest();
        } else if self.pending.load(Ordering::Acquire) == 0 {
            let s = self.state.lock();
            if !s.pump_queued {
                drop(s);
                self.rest();
            }
        }
    }

    /// Nothing of ours is pending in JavaScript: with the loop watch the
    /// JS thread keeps the runtime and sleeps in its loop, which wakes it
    /// for the runtime's work; without it, the waiter takes the runtime.
    fn rest(&self) {
        let Some(watch) = self.keeps() else {
            self.disarm();
            self.hand_back();
            return;
        };
        if !self.armed.load(Ordering::Acquire) {
            if !watch.arm() {
                self.hand_back();
                return;
            }
            self.armed.store(true, Ordering::Release);
        }
    }

    /// The loop watch saw the runtime's descriptor readable (the JS
    /// thread, from libuv).
    fn readable(&self) {
        if self.state.lock().holder != Holder::Js {
            // The waiter took the runtime back and serves it now.
            self.disarm();
            return;
        }
        self.turned(self.turn(|| ()).1);
    }

    /// The loop watch, if the JS thread is to keep the runtime between
    /// callbacks: not while they come closer than [`DENSE_GAP`].
    fn keeps(&self) -> Option<&LoopWatch> {
        self.watching().filter(|_| !DENSE.get())
    }

    /// The loop watch, unless there is none or libuv gave up on it.
    fn watching(&self) -> Option<&LoopWatch> {
        self.watch
            .get()
            .filter(|_| !self.watch_broken.load(Ordering::Acquire))
    }

    fn disarm(&self) {
        if let Some(w) = self.watch.get() {
            if self.armed.swap(false, Ordering::AcqRel) {
                w.disarm();
            }
        }
    }

    /// Whether the JS thread sleeps (in its event loop, when it holds the
    /// runtime with the watch on), from the kernel's view of it.
    fn js_asleep(&self) -> bool {
        let path = format!("/proc/self/task/{}/stat", self.js_tid);
        let Ok(stat) = std::fs::read_to_string(path) else {
            return false;
        };
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('S'))
    }

    fn wait_loop(&self) {
        ROLE.set(Role::Waiter);
        loop {
            {
                let mut s = self.state.lock();
                let mut seen = self.turns.load(Ordering::Acquire);
                let mut grace = GRACE;
                loop {
                    if s.holder == Holder::Waiter && s.steal {
                        s.steal = false;
                        s.holder = Holder::Js;
                        self.changed.notify_all();
                    }
                    if s.holder == Holder::Waiter {
                        break;
                    }
                    // The JS thread holds the runtime. While it turns it now
                    // and then, it is left alone; once it has started no
                    // turn for a whole grace period and is not in one, the
                    // runtime is taken back so that the sockets are served.
                    if !self.changed.wait_for(&mut s, grace).timed_out() {
                        continue;
                    }
                    let turns = self.turns.load(Ordering::Acquire);
                    let armed = self.armed.load(Ordering::Acquire);
                    // With the watch on, the JS thread asleep in its loop is
                    // woken for the sockets: only the runtime's timers wait,
                    // until `SLACK` after its last turn.
                    let slack_left = || {
                        let end = Duration::from_nanos(self.last_turn_end.load(Ordering::Acquire));
                        SLACK.saturating_sub(self.born.elapsed().saturating_sub(end))
                    };
                    // Unchanged and even: no turn started or ended since the
                    // last look, and none is under way.
                    if s.holder == Holder::Js && turns == seen && turns.is_multiple_of(2) {
                        let left = slack_left();
                        if !left.is_zero() && armed && self.js_asleep() {
                            grace = left.max(GRACE);
                            continue;
                        }
                        s.holder = Holder::Waiter;
                        s.reclaimed = true;
                        break;
                    }
                    seen = turns;
                    grace = if armed {
                        slack_left().max(GRACE)
                    } else {
                        (grace * 2).min(GRACE_MAX)
                    };
                }
            }
            self.rt.block_on(Wait { runner: self });
            // The JS thread takes over: the pending callback's end (or the
            // call that stole it) turns the runtime there.
            let mut s = self.state.lock();
            s.holder = Holder::Js;
            s.steal = false;
            s.reclaimed = false;
            self.changed.notify_all();
        }
    }
}

/// Completes when the JS thread's turn has nothing left to run (the park
/// hook says so) or its time slice is over.
struct Turn {
    slice: Pin<Box<tokio::time::Sleep>>,
}

impl Turn {
    fn new() -> Self {
        IDLE.set(false);
        Turn {
            slice: Box::pin(tokio::time::sleep(TURN_SLICE)),
        }
    }
}

impl Future for Turn {
    /// Whether the runtime ran out of work (else the slice ran out).
    type Output = bool;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        if IDLE.replace(false) {
            return Poll::Ready(true);
        }
        if self.slice.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        TURN_WAKER.with_borrow_mut(|w| *w = Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// The waiter's `block_on`: completes once a callback of ours is pending in
/// JavaScript (unless the runtime was reclaimed from a JS thread that is
/// busy elsewhere) or the JS thread asks for the runtime.
struct Wait<'a> {
    runner: &'a Runner,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.runner.state.lock();
        // `pending` is read here, not copied into the state: the waiter is
        // woken to poll this only at a park point (`waiter_check`) or by
        // the JS thread's `acquire`.
        if s.steal || (!s.reclaimed && self.runner.pending.load(Ordering::Acquire) > 0) {
            s.wait_waker = None;
            return Poll::Ready(());
        }
        s.wait_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The runtime found no task to run: the JS thread's turn is over; the
/// waiter checks whether JavaScript has a callback of ours to run.
fn before_park() {
    match ROLE.get() {
        Role::Js => {
            IDLE.set(true);
            WAKES_AT_IDLE.set(task::wakes());
            if let Some(w) = TURN_WAKER.with_borrow_mut(Option::take) {
                w.wake();
            }
        }
        Role::Waiter => waiter_check(),
        Role::None => {}
    }
}

/// The waiter's park returned (something is ready and about to run).
fn after_unpark() {
    if ROLE.get() == Role::Waiter {
        waiter_check();
    }
}

/// On the waiter: ends its hold when a callback of ours is pending in
/// JavaScript, whose end turns the runtime there.
fn waiter_check() {
    let Some(r) = RUNNER.get() else {
        return;
    };
    if r.pending.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut s = r.state.lock();
    // Reclaimed, the waiter keeps the runtime whatever is pending: waking
    // its `Wait` for that would only make it poll, find nothing to do and
    // park again at once, spinning for as long as JavaScript stays busy.
    if s.reclaimed {
        return;
    }
    let w = s.wait_waker.take();
    drop(s);
    if let Some(w) = w {
        w.wake();
    }
}

/// Calls a JavaScript function through `f` and resolves with what it
/// returned. With a `runner`, the JS thread keeps the runtime while the
/// call is queued and turns it when the call returns, so a reply made in
/// the callback is written at once.
pub fn call_js<Args, Ret>(
    runner: Option<&'static Runner>,
    f: &ThreadsafeFunction<Args, Ret, Args, Status, false, true>,
    args: Args,
) -> impl Future<Output = napi::Result<Ret>> + Send + 'static
where
    Args: 'static + JsValuesTupleIntoVec,
    Ret: 'static + FromNapiValue + Send,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    js_call_queued(runner);
    let status = f.call_with_return_value(
        args,
        ThreadsafeFunctionCallMode::NonBlocking,
        move |ret, _| {
            js_callback(runner, move || {
                let _ = tx.send(ret);
            });
            Ok(())
        },
    );
    if status != Status::Ok {
        js_call_dropped(runner);
    }
    async move {
        match rx.await {
            Ok(ret) => ret,
            Err(_) => Err(napi::Error::new(
                Status::GenericFailure,
                format!("JavaScript cannot be called ({status})"),
            )),
        }
    }
}

/// A callback into JavaScript is queued: the JS thread keeps the runtime
/// until [`js_callback`] or [`js_call_dropped`] says it ran or never will.
pub fn js_call_queued(runner: Option<&'static Runner>) {
    if let Some(r) = runner {
        r.pending.fetch_add(1, Ordering::AcqRel);
    }
}

/// The end of a callback into JavaScript, on the JS thread: `finish` runs
/// with the runtime held and turned.
pub fn js_callback(runner: Option<&'static Runner>, finish: impl FnOnce()) {
    match runner {
        Some(r) => {
            // Read only with the watch on (`keeps`).
            if r.watching().is_some() {
                let now = Instant::now();
                DENSE.set(LAST_CALLBACK.get().is_some_and(|t| now - t < DENSE_GAP));
                LAST_CALLBACK.set(Some(now));
            }
            r.pending.fetch_sub(1, Ordering::AcqRel);
            r.call(finish);
        }
        None => finish(),
    }
}

/// A queued callback that will never run (the call was refused).
pub fn js_call_dropped(runner: Option<&'static Runner>) {
    if let Some(r) = runner {
        r.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The loop watch's callback (libuv, on the JS thread).
extern "C" fn on_readable(_handle: *mut std::ffi::c_void, status: i32, _events: i32) {
    if let Some(r) = RUNNER.get() {
        if status < 0 {
            // libuv cannot watch the descriptor: back to the waiter for good.
            r.watch_broken.store(true, Ordering::Release);
            r.disarm();
            r.hand_back();
            return;
        }
        r.readable();
    }
}

/// `IGNIS_WS_LOOP_WATCH=off` keeps the waiter serving the runtime whenever
/// JavaScript has nothing of ours to run, as on Bun.
fn watch_wanted() -> bool {
    std::env::var("IGNIS_WS_LOOP_WATCH").map_or(true, |v| v != "off")
}
