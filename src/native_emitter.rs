//! `NativeEmitter`: the Redis publisher behind `WebSocketEmitter`.

use crate::core::broker::emitter::RedisEmitter;
use crate::core::broker::redis::{Endpoint, Outgoing};
use crate::core::envelope::{self, Kind, EMITTER_SERVER_ID};
use crate::core::history::protocol::HistoryConfig;
use crate::core::history::redis::Appender;
use crate::core::room_selection::RoomSelection;
use crate::options::{to_redis_config, NativeRedisOptions};
use napi::bindgen_prelude::PromiseRaw;
use napi::{Env, Error, Result, Status};
use napi_derive::napi;
use parking_lot::Mutex;
use std::sync::Arc;

/// The servers' `history` option, for `toRoom`.
#[napi(object)]
pub struct NativeEmitterHistory {
    pub size: u32,
    /// ms
    pub ttl: f64,
    pub rooms: Option<Vec<String>>,
    pub default_rooms: Vec<String>,
}

#[napi]
pub struct NativeEmitter {
    config: crate::core::broker::redis::RedisConfig,
    history: Option<HistoryConfig>,
    appender: Appender,
    inner: Mutex<Option<Arc<RedisEmitter>>>,
}

#[napi]
impl NativeEmitter {
    #[napi(constructor)]
    pub fn new(redis: NativeRedisOptions, history: Option<NativeEmitterHistory>) -> Result<Self> {
        Ok(NativeEmitter {
            config: to_redis_config(&redis)?,
            history: history.filter(|h| h.size > 0).map(|h| HistoryConfig {
                size: h.size as usize,
                ttl: std::time::Duration::from_millis(h.ttl.max(1.0) as u64),
                rooms: RoomSelection {
                    rooms: h.rooms,
                    default_rooms: h.default_rooms,
                },
            }),
            inner: Mutex::new(None),
            appender: Appender::new(format!(
                "{EMITTER_SERVER_ID}-{}",
                uuid::Uuid::new_v4().simple()
            )),
        })
    }

    #[napi]
    pub async fn configure(&self) -> Result<()> {
        let e = RedisEmitter::connect(self.config.clone())
            .await
            .map_err(|e| Error::new(Status::GenericFailure, e))?;
        *self.inner.lock() = Some(Arc::new(e));
        Ok(())
    }

    /// Publishes `{serverId:"emitter", type, target, event, data, exclude}`
    /// on the envelope's channel (a history room's through its history);
    /// resolves once Redis accepted it. The request is queued here, on the
    /// caller's thread, so publications keep the order of the calls.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn publish<'env>(
        &self,
        env: &'env Env,
        kind: String,
        target: Option<String>,
        event: String,
        data_json: Option<String>,
        exclude: Option<Vec<String>>,
    ) -> Result<PromiseRaw<'env, ()>> {
        let kind = Kind::parse(&kind).ok_or_else(|| {
            Error::new(Status::InvalidArg, format!("unknown message type {kind:?}"))
        })?;
        let emitter = self.inner.lock().clone().ok_or_else(|| {
            Error::new(
                Status::GenericFailure,
                "WebSocketEmitter: call configure() before publishing",
            )
        })?;
        let sent = match (kind, target.as_deref(), &self.history) {
            (Kind::Room, Some(room), Some(h)) if h.rooms.applies(room) => {
                let frame = crate::core::protocol::encode_frame(&event, data_json.as_deref());
                let head = envelope::room_head(
                    EMITTER_SERVER_ID,
                    room,
                    frame.as_str(),
                    exclude.as_deref().unwrap_or_default(),
                );
                let sharded = matches!(
                    self.config.endpoint,
                    Endpoint::Cluster { sharded: true, .. }
                );
                self.appender.append(h, room, head, sharded, |call| {
                    emitter.send(Outgoing::Script(call))
                })
            }
            _ => emitter.send(Outgoing::Publish(
                envelope::channel(kind, target.as_deref()),
                envelope::encode(
                    EMITTER_SERVER_ID,
                    kind,
                    target.as_deref(),
                    &event,
                    data_json.as_deref(),
                    exclude.as_deref(),
                ),
            )),
        };
        env.spawn_future(async move {
            sent.await
                .map_err(|e| Error::new(Status::GenericFailure, e))
        })
    }

    #[napi]
    pub async fn shutdown(&self) -> Result<()> {
        let emitter = self.inner.lock().take();
        if let Some(e) = emitter {
            e.close().await;
        }
        Ok(())
    }
}
