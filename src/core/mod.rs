//! The server engine, free of any JavaScript binding. It reaches the
//! application only through [`handlers::Handlers`] and [`log::Log`].

pub mod broker;
pub mod client;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod envelope;
pub mod forward;
pub mod handlers;
pub mod http;
pub mod hub;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod outgoing;
pub mod protocol;
pub mod server;
pub mod stats;
pub mod transform;
