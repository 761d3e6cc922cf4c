//! The bus between instances. A broker publishes envelopes for other
//! instances and subscribes to the channels this instance has local
//! interest in; what it receives goes to a [`Subscriber`] (the
//! [`router::Router`], which delivers it to local sockets).
//!
//! Two implementations: [`LocalBroker`] (no Redis: one instance, nothing to
//! deliver elsewhere) and [`redis::RedisBroker`] (standalone or cluster).

pub mod emitter;
pub mod keys;
pub mod redis;
pub mod relay;
pub mod router;
pub mod store;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

/// Where received envelopes go.
pub trait Subscriber: Send + Sync + 'static {
    /// Messages received together, `(channel, payload)` each, in order.
    fn deliver_all(&self, messages: &[(&str, &str)]);
    /// The subscriptions were lost and are live again: what was published
    /// meanwhile was not delivered.
    fn resubscribed(&self) {}
}

#[derive(Debug, Clone, Default)]
pub struct BrokerStatus {
    /// "local", "redis" or "redis-cluster"
    pub kind: &'static str,
    /// "connected", "connecting", "disconnected" or "closed"
    pub state: &'static str,
    pub publish_buffered: u64,
    pub subscribed_channels: u64,
}

pub trait Broker: Send + Sync + 'static {
    /// Queues a publication; never waits. What cannot be sent is buffered
    /// (bounded) or dropped and counted, per implementation.
    fn publish(&self, channel: String, payload: String);
    /// Queues a script call behind the publications queued before it (a
    /// history append, a presence change); never waits. Dropped by a
    /// broker without a store.
    fn eval(&self, _call: store::ScriptCall) {}
    /// Resolves once `channel` is subscribed on the server (true), or when
    /// that did not happen within `timeout` (false).
    fn subscribed(
        &self,
        _channel: &str,
        _timeout: std::time::Duration,
    ) -> BoxFuture<'static, bool> {
        async { true }.boxed()
    }
    /// A connection for awaited requests, when the bus is a store too.
    fn store(&self) -> Option<store::Store> {
        None
    }
    /// Whether publications use sharded Pub/Sub (SPUBLISH).
    fn sharded(&self) -> bool {
        false
    }
    /// This instance gained (`true`) or lost local interest in a channel.
    fn interest(&self, channel: String, present: bool);
    fn status(&self) -> BrokerStatus;
    /// Flushes what can be flushed (bounded in time) and disconnects.
    fn shutdown(&self) -> BoxFuture<'static, ()>;
}

/// The in-process bus of a single instance: there is no other instance to
/// publish to, and the original ignores its own publications, so publishing
/// delivers nothing more than the local delivery that preceded it.
pub struct LocalBroker;

impl Broker for LocalBroker {
    fn publish(&self, _channel: String, _payload: String) {}
    fn interest(&self, _channel: String, _present: bool) {}
    fn status(&self) -> BrokerStatus {
        BrokerStatus {
            kind: "local",
            state: "connected",
            ..BrokerStatus::default()
        }
    }
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
}
