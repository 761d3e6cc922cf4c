//! Redis as a store (history streams, presence sets) beside Redis as a bus:
//! the Lua scripts, what calls them, and a connection for awaited requests.
//!
//! Writes that must keep their order with publications (a history append
//! publishes; presence changes follow joins and leaves) are queued on the
//! broker's publication queue as [`ScriptCall`]s. Reads a caller awaits
//! (a join's replay, a gap fill, `getPresence`) go through a [`Store`],
//! a connection of its own that reconnects by itself.

use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, Script, Value};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The prologue of both history scripts: the room's epoch, a new one
/// (`ARGV[1]`) when its meta is gone (expired, flushed, evicted), and then
/// the log of the old epoch goes too. KEYS: meta, log.
macro_rules! room_epoch {
    () => {
        r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
local fresh = false
if not epoch then
  epoch = ARGV[1]
  fresh = true
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)
end"#
    };
}

/// Appends a publication to a room's history and publishes it, atomically:
/// the room's next offset (starting a new epoch when the room's meta is
/// gone: expired, flushed, evicted), the stream entry (trimmed to the
/// size), both keys' time to live, then the envelope on the room's channel
/// (`ARGV[5]`: PUBLISH, SPUBLISH, or empty for none).
///
/// Appends are idempotent: each publisher numbers its publications
/// (`ARGV[7]`, `ARGV[8]`) and sends them in order, and the meta keeps the
/// last number applied per publisher, so a call sent again after a
/// connection failure (it may have run before the reply was lost) is not
/// appended twice. Returns `{0, epoch}` for such a repeat.
///
/// KEYS: meta, log. ARGV: new epoch, size, ttl ms, envelope head, publish
/// command, channel, publisher id, publication number. Returns `{offset,
/// epoch}`.
pub const APPEND: &str = concat!(
    room_epoch!(),
    r#"
local seen = 'p:' .. ARGV[7]
if tonumber(ARGV[8]) <= tonumber(redis.call('HGET', KEYS[1], seen) or '0') then
  return {0, epoch}
end
redis.call('HSET', KEYS[1], seen, ARGV[8])
local top = redis.call('HINCRBY', KEYS[1], 't', 1)
local msg = ARGV[4] .. ',"offset":' .. top .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. top, 'm', msg)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[5] ~= '' then
  redis.call(ARGV[5], ARGV[6], msg)
end
return {top, epoch}
"#
);

/// A join's view of a room's history: its epoch and top offset (creating
/// the room's meta, so that the epoch a client is given is the one the
/// next publication uses), and, when asked to recover from offset N of
/// the same epoch and the log still holds N+1, every entry after N.
///
/// KEYS: meta, log. ARGV: new epoch, ttl ms, epoch to recover ('' for
/// none), offset to recover from. Returns `{epoch, top, recovered (0|1),
/// entry...}`.
pub const READ: &str = concat!(
    room_epoch!(),
    r#"
if fresh then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local top = tonumber(redis.call('HGET', KEYS[1], 't'))
if ARGV[3] == '' or ARGV[3] ~= epoch then
  return {epoch, top, 0}
end
local n = tonumber(ARGV[4])
if n > top then
  return {epoch, top, 0}
end
if n == top then
  return {epoch, top, 1}
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first == 0 or tonumber(string.sub(first[1][1], 3)) > n + 1 then
  return {epoch, top, 0}
end
local out = {epoch, top, 1}
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '0-' .. (n + 1), '+')) do
  out[#out + 1] = e[2][2]
end
return out
"#
);

/// Adds or refreshes presence entries: each member's JSON in the room's
/// hash and its expiry (Redis time + ttl) in the room's sorted set.
///
/// KEYS: members, expiry. ARGV: ttl ms, then clientId, entry pairs.
pub const PRESENCE_ADD: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local exp = now + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], exp, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"#;

/// Removes presence entries. KEYS: members, expiry. ARGV: clientIds.
pub const PRESENCE_REMOVE: &str = r#"
for i = 1, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
return 1
"#;

/// A room's members: drops those whose expiry passed (their instance
/// stopped refreshing them), then returns the entries' JSON.
/// KEYS: members, expiry.
pub const PRESENCE_GET: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(dead) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return redis.call('HVALS', KEYS[1])
"#;

/// The scripts, compiled once (each `Script` knows its SHA1).
pub struct Scripts {
    pub append: Script,
    pub read: Script,
    pub presence_add: Script,
    pub presence_remove: Script,
    pub presence_get: Script,
}

impl Scripts {
    /// Every script, for loading them all on a new connection.
    pub fn all(&self) -> [&Script; 5] {
        [
            &self.append,
            &self.read,
            &self.presence_add,
            &self.presence_remove,
            &self.presence_get,
        ]
    }
}

pub fn scripts() -> &'static Scripts {
    static S: OnceLock<Scripts> = OnceLock::new();
    S.get_or_init(|| Scripts {
        append: Script::new(APPEND),
        read: Script::new(READ),
        presence_add: Script::new(PRESENCE_ADD),
        presence_remove: Script::new(PRESENCE_REMOVE),
        presence_get: Script::new(PRESENCE_GET),
    })
}

/// A script call, queued or awaited.
#[derive(Debug, Clone)]
pub struct ScriptCall {
    pub script: &'static Script,
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

impl ScriptCall {
    /// `EVALSHA` of the call, for a pipeline (its scripts were loaded
    /// when the connection was made).
    pub fn evalsha(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }

    pub fn invocation(&self) -> redis::ScriptInvocation<'static> {
        let mut inv = self.script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        for a in &self.args {
            inv.arg(a);
        }
        inv
    }
}

/// How long an awaited request may take before its caller gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection for awaited requests: a `ConnectionManager` (standalone:
/// it reconnects by itself) or a clone of the cluster connection, shared by
/// every clone of the store until [`Store::close`].
#[derive(Clone)]
pub struct Store(Arc<Mutex<Option<Conn>>>);

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The requests below are written once for both kinds of connection.
impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Store {
    pub fn standalone(c: ConnectionManager) -> Store {
        Store(Arc::new(Mutex::new(Some(Conn::Standalone(c)))))
    }

    pub fn cluster(c: ClusterConnection) -> Store {
        Store(Arc::new(Mutex::new(Some(Conn::Cluster(c)))))
    }

    /// Lets the connection go, for every clone: a connection's driver runs
    /// until its last handle is dropped, so a stopped server would
    /// otherwise keep it open for as long as the process lives. Requests
    /// made afterwards fail.
    pub fn close(&self) {
        self.0.lock().take();
    }

    fn conn(&self) -> RedisResult<Conn> {
        self.0.lock().clone().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "the Redis store is closed"))
        })
    }

    /// Runs a script (loading it first when the server does not know it,
    /// as after a restart), bounded by [`REQUEST_TIMEOUT`].
    pub async fn run(&self, call: &ScriptCall) -> RedisResult<Value> {
        let inv = call.invocation();
        self.retried(|mut conn| {
            let inv = &inv;
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
    }

    /// Entries `0-from` to `0-to` (inclusive; `None`: to the end) of a stream.
    pub async fn xrange(&self, key: &str, from: u64, to: Option<u64>) -> RedisResult<Value> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(key).arg(format!("0-{from}"));
        match to {
            Some(t) => cmd.arg(format!("0-{t}")),
            None => cmd.arg("+"),
        };
        self.retried(|mut conn| {
            let cmd = &cmd;
            async move { cmd.query_async(&mut conn).await }
        })
        .await
    }

    /// Every request here only reads (or creates what is missing), so one
    /// that met a dropped connection is sent again once: the connection
    /// reconnects by itself, but fails the request that found it broken.
    async fn retried<'a, F, Fut>(&self, request: F) -> RedisResult<Value>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = RedisResult<Value>> + 'a,
    {
        match timed(request(self.conn()?)).await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
                timed(request(self.conn()?)).await
            }
            r => r,
        }
    }
}

async fn timed<T>(fut: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis request timed out",
        ))),
    }
}

/// The text entries of a stream read by XRANGE (`[[id, [field, value]]…]`):
/// each value, in order.
pub fn stream_values(v: Value) -> Vec<String> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| match e {
            Value::Array(mut parts) if parts.len() == 2 => match parts.pop() {
                Some(Value::Array(mut fields)) if fields.len() == 2 => text(fields.pop()?),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A bulk or simple string as text.
pub fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

pub fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}
