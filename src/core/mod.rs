//! The server engine, free of any JavaScript binding. It reaches the
//! application only through [`handlers::Handlers`] and [`log::Log`].
//! docs/ARCHITECTURE.md walks through it.

pub mod broker;
pub mod call_queue;
pub mod client;
pub mod config;
pub mod connection;
pub mod connections;
pub mod crypto;
pub mod deferred_wakes;
pub mod deflate;
pub mod echo;
pub mod envelope;
pub mod events;
pub mod forward;
pub mod frame;
pub mod frame_writer;
pub mod handlers;
pub mod heartbeat;
pub mod history;
pub mod http;
pub mod hub;
pub mod json_skim;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod presence;
pub mod presence_redis;
pub mod protocol;
pub mod room_selection;
pub mod server;
pub mod stats;
pub mod task;
pub mod transform;
pub mod violation;
pub mod ws_socket;
