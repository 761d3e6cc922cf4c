//! `NativeEmitter`: the Redis publisher behind `WebSocketEmitter`.

use crate::core::broker::redis::{Endpoint, Outgoing, RedisEmitter};
use crate::core::envelope::{self, Kind, EMITTER_SERVER_ID};
use crate::core::history::{HistoryConfig, RoomSelection};
use crate::core::history_redis;
use crate::native_server::{to_redis_config, NativeRedisOptions};
use napi::{Error, Result, Status};
use napi_derive::napi;
use std::sync::Arc;
use tokio::sync::RwLock;

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
    inner: Arc<RwLock<Option<Arc<RedisEmitter>>>>,
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
            inner: Arc::new(RwLock::new(None)),
        })
    }

    #[napi]
    pub async fn configure(&self) -> Result<()> {
        let e = RedisEmitter::connect(self.config.clone())
            .await
            .map_err(|e| Error::new(Status::GenericFailure, e))?;
        *self.inner.write().await = Some(Arc::new(e));
        Ok(())
    }

    /// Publishes `{serverId:"emitter", type, target, event, data, exclude}`
    /// on the envelope's channel; resolves once Redis accepted it.
    #[napi]
    pub async fn publish(
        &self,
        kind: String,
        target: Option<String>,
        event: String,
        data_json: Option<String>,
        exclude: Option<Vec<String>>,
    ) -> Result<()> {
        let kind = Kind::parse(&kind).ok_or_else(|| {
            Error::new(Status::InvalidArg, format!("unknown message type {kind:?}"))
        })?;
        let emitter = self.inner.read().await.clone().ok_or_else(|| {
            Error::new(
                Status::GenericFailure,
                "WebSocketEmitter: call configure() before publishing",
            )
        })?;
        if let (Kind::Room, Some(room), Some(h)) = (kind, target.as_deref(), &self.history) {
            if h.rooms.applies(room) {
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
                let call = history_redis::append_call(h, room, head, sharded);
                return emitter
                    .send(Outgoing::Script(call))
                    .await
                    .map_err(|e| Error::new(Status::GenericFailure, e));
            }
        }
        let payload = envelope::encode(
            EMITTER_SERVER_ID,
            kind,
            target.as_deref(),
            &event,
            data_json.as_deref(),
            exclude.as_deref(),
        );
        emitter
            .publish(envelope::channel(kind, target.as_deref()), payload)
            .await
            .map_err(|e| Error::new(Status::GenericFailure, e))
    }

    #[napi]
    pub async fn shutdown(&self) -> Result<()> {
        if let Some(e) = self.inner.write().await.take() {
            e.close().await;
        }
        Ok(())
    }
}
