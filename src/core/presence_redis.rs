//! Presence kept in Redis: per room, a hash of entries
//! (`{"clientId","userId","metadata"}` JSON by client id) and a sorted set
//! of each entry's expiry (keys in `broker::keys`).
//!
//! An instance adds its members when they join and removes them when they
//! leave or disconnect, and refreshes every entry of its members every
//! third of `ttl`. An instance that stops (crash, `kill -9`, a network
//! split) stops refreshing: its entries expire `ttl` after their last
//! refresh at the latest and are dropped by the next `getPresence`. Times
//! are Redis's (`TIME`), so clocks of instances do not matter.

use crate::core::broker::keys::room_keys;
use crate::core::broker::store::{self, scripts, ScriptCall, Store};
use crate::core::broker::Broker;
use crate::core::client::Client;
use crate::core::envelope::{self, Kind};
use crate::core::hub::Hub;
use crate::core::protocol;
use crate::core::stats::{bump, Stats};
use std::sync::Arc;
use std::time::Duration;

/// Members refreshed per script call.
const REFRESH_CHUNK: usize = 500;

pub struct RedisPresence {
    pub ttl: Duration,
    broker: Arc<dyn Broker>,
    store: Store,
    stats: Arc<Stats>,
    server_id: String,
}

fn keys(room: &str) -> Vec<String> {
    room_keys("ws:presence", room, ["members", "expiry"]).into()
}

/// A member's entry as `getPresence` returns it.
pub fn entry(c: &Client) -> String {
    let d = c.details.lock();
    let mut out = String::with_capacity(96);
    out.push_str("{\"clientId\":");
    protocol::push_json_str(&mut out, &c.id);
    if let Some(u) = &d.user_id {
        out.push_str(",\"userId\":");
        protocol::push_json_str(&mut out, u);
    }
    if let Some(m) = &d.metadata {
        out.push_str(",\"metadata\":");
        out.push_str(m);
    }
    out.push('}');
    out
}

impl RedisPresence {
    pub fn new(
        ttl: Duration,
        broker: Arc<dyn Broker>,
        store: Store,
        stats: Arc<Stats>,
        server_id: String,
    ) -> RedisPresence {
        RedisPresence {
            ttl,
            broker,
            store,
            stats,
            server_id,
        }
    }

    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    fn ttl_ms(&self) -> String {
        self.ttl.as_millis().max(1).to_string()
    }

    /// Queued behind earlier publications and presence changes.
    pub fn add(&self, room: &str, c: &Client) {
        self.broker.eval(ScriptCall {
            script: &scripts().presence_add,
            keys: keys(room),
            args: vec![self.ttl_ms(), c.id.to_string(), entry(c)],
        });
    }

    pub fn remove(&self, room: &str, client_id: &str) {
        self.broker.eval(ScriptCall {
            script: &scripts().presence_remove,
            keys: keys(room),
            args: vec![client_id.to_string()],
        });
    }

    /// A `presence` event envelope for the other instances.
    pub fn publish(&self, room: &str, payload: String) {
        self.broker
            .publish(envelope::channel(Kind::Room, Some(room)), payload);
    }

    /// Re-adds every local member of every presence room, pushing their
    /// expiry forward (and restoring entries lost with a Redis restart).
    pub fn refresh(&self, hub: &Hub, applies: impl Fn(&str) -> bool) {
        for (room, members) in hub.room_members(applies) {
            for chunk in members.chunks(REFRESH_CHUNK) {
                let mut args = Vec::with_capacity(1 + 2 * chunk.len());
                args.push(self.ttl_ms());
                for c in chunk {
                    args.push(c.id.to_string());
                    args.push(entry(c));
                }
                self.broker.eval(ScriptCall {
                    script: &scripts().presence_add,
                    keys: keys(&room),
                    args,
                });
            }
        }
    }

    /// The room's entries across the fleet, as a JSON array text.
    pub async fn get(&self, room: &str) -> Result<String, String> {
        let call = ScriptCall {
            script: &scripts().presence_get,
            keys: keys(room),
            args: Vec::new(),
        };
        match self.store.run(&call).await {
            Ok(redis::Value::Array(items)) => {
                let entries: Vec<String> = items.into_iter().filter_map(store::text).collect();
                Ok(format!("[{}]", entries.join(",")))
            }
            Ok(_) => Ok("[]".to_string()),
            Err(e) => {
                bump(&self.stats.store_errors);
                Err(format!("cannot read presence from Redis: {e}"))
            }
        }
    }
}
