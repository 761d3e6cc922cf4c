//! ignis-ws-native: the napi binding around the napi-free [`core`].
//!
//! `core` holds the whole server; the files next to it only convert options,
//! wrap JavaScript functions as the core's `Handlers`, and expose
//! `NativeServer` to the TypeScript layer.
#![deny(clippy::all)]

mod batched_calls;
pub mod core;
mod js_handlers;
mod js_thread;
mod loop_watch;
mod native_emitter;
mod native_server;
mod options;
mod queued_sends;
mod run_mode;
mod worker_end;
