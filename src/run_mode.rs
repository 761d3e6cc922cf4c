//! Where a server's core runs: on napi's multi-thread runtime (`threads`)
//! or on the JavaScript thread (`js-thread`, see `js_thread`), and which of
//! the two `auto` picks for the cores this process may use.

use crate::core::server::Server;
use crate::js_thread::{self, Runner};
use napi::Env;
use napi_derive::napi;
use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;

/// `runMode`.
#[napi(string_enum = "kebab-case")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// `js-thread` when this process may use at most [`JS_THREAD_MAX_CORES`]
    /// cores (affinity mask and cgroup quota), `threads` otherwise.
    Auto,
    JsThread,
    Threads,
}

/// Up to this many allowed cores, `auto` runs the core on the JS thread.
/// On one core the crossings between threads are pure cost; on two, with
/// the Redis connections on a thread of their own, it measured ahead of
/// `threads` on request/response, steady fan-out and cross-instance
/// latency, and on fan-out bursts within 15 % or, in the latest runs,
/// ahead (docs/PERFORMANCE.md, "Run modes"). Beyond, the parallel socket
/// side leaves the JS thread to the handlers (not measured: the bench's
/// machine has two cores).
pub const JS_THREAD_MAX_CORES: usize = 2;

/// The environment variable that stands in for `auto` (deployments and the
/// test matrix force a mode without touching the code).
const ENV_VAR: &str = "IGNIS_WS_RUN_MODE";

impl RunMode {
    /// `auto` resolved: the environment variable when it names a mode, else
    /// by the cores this process may use (`available_parallelism` reads the
    /// affinity mask and the cgroup quota).
    pub fn resolve(self) -> RunMode {
        if self != RunMode::Auto {
            return self;
        }
        match std::env::var(ENV_VAR).as_deref() {
            Ok("js-thread") => return RunMode::JsThread,
            Ok("threads") => return RunMode::Threads,
            _ => {}
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores <= JS_THREAD_MAX_CORES {
            RunMode::JsThread
        } else {
            RunMode::Threads
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Auto => "auto",
            RunMode::JsThread => "js-thread",
            RunMode::Threads => "threads",
        }
    }
}

/// How a server's work reaches its runtime.
#[derive(Clone, Copy)]
pub enum Exec {
    /// napi's multi-thread runtime.
    Threads,
    JsThread(&'static Runner),
}

impl Exec {
    /// The executor for `mode` (resolved). `js-thread` from a thread that
    /// is not the process's first JS thread (a worker) runs on threads.
    pub fn new(mode: RunMode, env: &Env) -> napi::Result<Exec> {
        Ok(match mode.resolve() {
            RunMode::JsThread => match js_thread::runner(env)? {
                Some(r) => Exec::JsThread(r),
                None => Exec::Threads,
            },
            _ => Exec::Threads,
        })
    }

    pub fn mode(self) -> RunMode {
        match self {
            Exec::Threads => RunMode::Threads,
            Exec::JsThread(_) => RunMode::JsThread,
        }
    }

    /// Whether offers write to idle sockets themselves
    /// (`Config::direct_writes`): in `js-thread` mode, where the offers and
    /// the connections' tasks share the thread, unless
    /// `IGNIS_WS_DIRECT_WRITES=off` (to measure them against the queue).
    pub fn direct_writes(self) -> bool {
        self.runner().is_some() && std::env::var("IGNIS_WS_DIRECT_WRITES").as_deref() != Ok("off")
    }

    pub fn runner(self) -> Option<&'static Runner> {
        match self {
            Exec::Threads => None,
            Exec::JsThread(r) => Some(r),
        }
    }

    /// Runs `fut` on the server's runtime and waits for it (from napi's
    /// async functions).
    pub async fn run<F>(self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Exec::Threads => fut.await,
            Exec::JsThread(r) => match crate::core::task::spawn_on(r.handle(), fut).await {
                Ok(out) => out,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: only when the runtime itself goes away.
                Err(_) => std::future::pending().await,
            },
        }
    }

    /// A call from JavaScript: on the JS thread's runtime, `body` runs with
    /// it held and the tasks it wakes run before this returns.
    pub fn call<R>(self, body: impl FnOnce() -> R) -> R {
        match self {
            Exec::Threads => body(),
            Exec::JsThread(r) => r.call(body),
        }
    }

    /// [`Exec::call`] at the end of a callback into JavaScript, whose
    /// return turns the runtime anyway (`Runner::call_before_turn`).
    pub fn call_before_turn<R>(self, body: impl FnOnce() -> R) -> R {
        match self {
            Exec::Threads => body(),
            Exec::JsThread(r) => r.call_before_turn(body),
        }
    }

    /// [`Exec::call`] inside the runtime's context, for a `body` that
    /// registers sockets or spawns tasks.
    pub fn enter<R>(self, body: impl FnOnce() -> R) -> R {
        match self {
            Exec::Threads => napi::bindgen_prelude::within_runtime_if_available(body),
            Exec::JsThread(r) => r.call(body),
        }
    }
}

/// `f` on the core once it is started; `default` before.
pub fn with_core<T>(
    server: &Mutex<Option<Arc<Server>>>,
    f: impl FnOnce(&Server) -> T,
    default: T,
) -> T {
    match server.lock().as_ref() {
        Some(s) => f(s),
        None => default,
    }
}

/// [`with_core`] for a call that wakes the core's tasks (sends, room
/// changes, answers): see [`Exec::call`].
pub fn act_on<T>(
    exec: Exec,
    server: &Mutex<Option<Arc<Server>>>,
    f: impl FnOnce(&Server) -> T,
    default: T,
) -> T {
    exec.call(|| with_core(server, f, default))
}
