//! The only door from the core to the application: the handlers the user
//! registered, as a Rust trait. The napi binding implements it with
//! thread-safe functions into JavaScript; `cargo test` implements it with
//! plain Rust closures, so the whole protocol runs without a JS engine.

use super::protocol::EventDataSpans;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// What `authenticateFn` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// A truthy result; `userId` when it carried one.
    Accepted { user_id: Option<String> },
    /// `null`, `false` or another falsy value.
    Rejected,
    /// The handler threw or rejected; the text is for the log only.
    Failed(String),
}

/// What `handshakeFn` decided (only asked when encryption is required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeOutcome {
    Accepted {
        server_public_key: String,
        salt: String,
    },
    Rejected,
    Failed(String),
}

/// Events the application hears about without answering. They are queued in
/// order and delivered in batches (one call into JavaScript carries many).
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// After `connected` was queued to the client.
    Connected {
        client_id: Arc<str>,
        user_id: Option<Arc<str>>,
        /// The client's `Client::serial`, which its messages carry too.
        serial: u64,
    },
    /// After the client was removed from every index.
    Disconnected {
        client_id: Arc<str>,
        user_id: Option<Arc<str>>,
        serial: u64,
    },
    /// A non-system event from an authenticated client: the whole frame text.
    /// The id is the client's own (shared, not copied per message). Its user
    /// is the one `Connected` gave (a client's user never changes), so a
    /// message does not look it up again under the client's lock.
    Message {
        client_id: Arc<str>,
        /// The client's `Client::serial`: a consumer that was told of the
        /// client by `Connected` keys on it instead of the id's text.
        serial: u64,
        frame: String,
        /// Where `event`'s and `data`'s values lie in `frame` when they are
        /// its only keys, in that order (`protocol::EventDataSpans`).
        spans: Option<EventDataSpans>,
    },
}

/// The application's handlers. Only `authenticate` and `deliver` are
/// always there; the optional ones default to "not bound".
pub trait Handlers: Send + Sync + 'static {
    /// `authenticateFn(data)`; `data_json` is the JSON text of `data ?? {}`.
    fn authenticate(&self, client_id: &str, data_json: &str) -> BoxFuture<'static, AuthOutcome>;

    /// `handshakeFn({clientId, userId, data})`; `None` when none is bound.
    fn handshake(
        &self,
        client_id: &str,
        user_id: Option<&str>,
        data_json: &str,
    ) -> Option<BoxFuture<'static, HandshakeOutcome>> {
        let _ = (client_id, user_id, data_json);
        None
    }

    /// `validateRoomFn({clientId, userId, rooms})`; `None` when none is bound
    /// (every join is then refused). `Err` is a throw or rejection.
    fn validate_rooms(
        &self,
        client_id: &str,
        user_id: Option<&str>,
        rooms: Vec<String>,
    ) -> Option<BoxFuture<'static, Result<Vec<String>, String>>> {
        let _ = (client_id, user_id, rooms);
        None
    }

    /// Whether an `outboundTransformer` is bound.
    fn has_transformer(&self) -> bool {
        false
    }

    /// `outboundTransformer({client, event, data})` for a frame to an
    /// encrypted client; `None` when none is bound. `Ok(None)`: send the
    /// original; `Ok(Some(text))`: send this frame text instead; `Err`: the
    /// transformer failed and the message is dropped.
    fn transform(
        &self,
        client_id: &str,
        frame: &str,
    ) -> Option<BoxFuture<'static, Result<Option<String>, String>>> {
        let _ = (client_id, frame);
        None
    }

    /// Whether application messages are wanted at all; without a
    /// `messageHandler` they are dropped before they are queued.
    fn wants_messages(&self) -> bool {
        false
    }

    /// Delivers a batch of events, in order. The future completes when the
    /// batch has been handed over (not when the application's promises
    /// settle), so one slow handler cannot hold up the others. What is left
    /// in `events` is dropped once this returns; the dispatcher keeps the
    /// vector for the next batch (`drain` it to keep the events).
    fn deliver(&self, events: &mut Vec<AppEvent>) -> BoxFuture<'static, ()>;
}
