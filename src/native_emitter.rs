//! `NativeEmitter`: the Redis publisher behind `WebSocketEmitter`.

use crate::core::broker::redis::RedisEmitter;
use crate::core::envelope::{self, Kind, EMITTER_SERVER_ID};
use crate::native_server::{to_redis_config, NativeRedisOptions};
use napi::{Error, Result, Status};
use napi_derive::napi;
use std::sync::Arc;
use tokio::sync::RwLock;

#[napi]
pub struct NativeEmitter {
    config: crate::core::broker::redis::RedisConfig,
    inner: Arc<RwLock<Option<Arc<RedisEmitter>>>>,
}

#[napi]
impl NativeEmitter {
    #[napi(constructor)]
    pub fn new(redis: NativeRedisOptions) -> Result<Self> {
        Ok(NativeEmitter {
            config: to_redis_config(&redis)?,
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
