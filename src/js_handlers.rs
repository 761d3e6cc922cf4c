//! The core's `Handlers` and `Log` traits implemented with thread-safe
//! functions into JavaScript.
//!
//! The functions called here are the package's own JS adapters (see
//! `ts/server.ts`), not the user's handlers directly: the adapters call the
//! user's function, await it if it returned a promise, catch whatever it
//! throws or rejects, and reduce the result to a plain object. Calls use
//! `call_async_catch`, so even an exception in an adapter becomes an `Err`
//! here instead of a process crash. All functions are weak (unref'd): they
//! never keep the process alive on their own; a listening server holds a
//! ref'd handle in JS instead, like `net.Server`.

use crate::core::handlers::{AppEvent, AuthOutcome, Handlers, HandshakeOutcome};
use crate::core::log::{Level, Log};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use napi::bindgen_prelude::{FnArgs, Function, Promise};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use std::sync::Arc;

/// Adapter's answer for `authenticateFn`.
#[napi(object)]
pub struct AuthResult {
    /// "ok", "rejected" or "error"
    pub outcome: String,
    pub user_id: Option<String>,
    pub error: Option<String>,
}

/// Adapter's answer for `handshakeFn`.
#[napi(object)]
pub struct HandshakeResult {
    /// "ok", "rejected" or "error"
    pub outcome: String,
    pub server_public_key: Option<String>,
    pub salt: Option<String>,
    pub error: Option<String>,
}

/// Adapter's answer for `validateRoomFn`.
#[napi(object)]
pub struct RoomsResult {
    pub rooms: Vec<String>,
    pub error: Option<String>,
}

/// Adapter's answer for `outboundTransformer`: `frame` is the text to send
/// instead (absent: send the original), `error` a throw or rejection.
#[napi(object)]
pub struct TransformResult {
    pub frame: Option<String>,
    pub error: Option<String>,
}

/// One application event in a delivered batch. `kind`: 0 connected,
/// 1 disconnected, 2 message (with `frame`, the client's raw JSON text).
#[napi(object)]
pub struct JsEvent {
    pub kind: u32,
    pub client_id: String,
    pub user_id: Option<String>,
    pub frame: Option<String>,
}

type Tsfn<Args, Ret> = ThreadsafeFunction<Args, Ret, Args, Status, false, true>;

pub type AuthFn = Tsfn<FnArgs<(String, String)>, Promise<AuthResult>>;
pub type HandshakeFn = Tsfn<FnArgs<(String, Option<String>, String)>, Promise<HandshakeResult>>;
pub type RoomsFn = Tsfn<FnArgs<(String, Option<String>, Vec<String>)>, Promise<RoomsResult>>;
pub type DeliverFn = Tsfn<Vec<JsEvent>, ()>;
pub type TransformFn = Tsfn<FnArgs<(String, String)>, Promise<TransformResult>>;
pub type LogFn = Tsfn<FnArgs<(String, String)>, ()>;

pub fn weak<
    Args: 'static + napi::bindgen_prelude::JsValuesTupleIntoVec,
    Ret: 'static + napi::bindgen_prelude::FromNapiValue,
>(
    f: &Function<'_, Args, Ret>,
) -> napi::Result<Tsfn<Args, Ret>> {
    f.build_threadsafe_function::<Args>()
        .weak::<true>()
        .callee_handled::<false>()
        .build()
}

pub struct JsHandlers {
    pub authenticate: Arc<AuthFn>,
    pub handshake: Option<Arc<HandshakeFn>>,
    pub validate_rooms: Option<Arc<RoomsFn>>,
    pub transform: Option<Arc<TransformFn>>,
    pub deliver: Arc<DeliverFn>,
    pub wants_messages: bool,
}

/// Awaits an adapter's promise. The adapters never reject (they catch
/// everything), so an error here means the promise was dropped unsettled:
/// the engine garbage-collected a promise nothing could ever resolve (Bun
/// does this for a handler that never settles). That is a handler that
/// never settles, and the protocol's timers deal with it; reporting it as
/// an error would turn a hang into a different close code.
async fn settled<T: napi::bindgen_prelude::FromNapiValue + Send + 'static>(
    call: napi::Result<Promise<T>>,
) -> napi::Result<T> {
    match call {
        Ok(p) => match p.await {
            Ok(v) => Ok(v),
            Err(_) => futures_util::future::pending().await,
        },
        Err(e) => Err(e),
    }
}

fn reason(e: napi::Error) -> String {
    if e.reason.is_empty() {
        format!("{}", e.status)
    } else {
        e.reason.clone()
    }
}

impl Handlers for JsHandlers {
    fn authenticate(&self, client_id: &str, data_json: &str) -> BoxFuture<'static, AuthOutcome> {
        let f = self.authenticate.clone();
        let args = FnArgs::from((client_id.to_string(), data_json.to_string()));
        async move {
            match settled(f.call_async_catch(args).await).await {
                Ok(r) if r.outcome == "ok" => AuthOutcome::Accepted { user_id: r.user_id },
                Ok(r) if r.outcome == "rejected" => AuthOutcome::Rejected,
                Ok(r) => AuthOutcome::Failed(r.error.unwrap_or_else(|| "unknown error".into())),
                Err(e) => AuthOutcome::Failed(reason(e)),
            }
        }
        .boxed()
    }

    fn handshake(
        &self,
        client_id: &str,
        user_id: Option<&str>,
        data_json: &str,
    ) -> Option<BoxFuture<'static, HandshakeOutcome>> {
        let f = self.handshake.clone()?;
        let args = FnArgs::from((
            client_id.to_string(),
            user_id.map(str::to_string),
            data_json.to_string(),
        ));
        Some(
            async move {
                match settled(f.call_async_catch(args).await).await {
                    Ok(r) if r.outcome == "ok" => match (r.server_public_key, r.salt) {
                        (Some(server_public_key), Some(salt)) => HandshakeOutcome::Accepted {
                            server_public_key,
                            salt,
                        },
                        _ => HandshakeOutcome::Rejected,
                    },
                    Ok(r) if r.outcome == "rejected" => HandshakeOutcome::Rejected,
                    Ok(r) => {
                        HandshakeOutcome::Failed(r.error.unwrap_or_else(|| "unknown error".into()))
                    }
                    Err(e) => HandshakeOutcome::Failed(reason(e)),
                }
            }
            .boxed(),
        )
    }

    fn validate_rooms(
        &self,
        client_id: &str,
        user_id: Option<&str>,
        rooms: Vec<String>,
    ) -> Option<BoxFuture<'static, Result<Vec<String>, String>>> {
        let f = self.validate_rooms.clone()?;
        let args = FnArgs::from((client_id.to_string(), user_id.map(str::to_string), rooms));
        Some(
            async move {
                match settled(f.call_async_catch(args).await).await {
                    Ok(RoomsResult { error: Some(e), .. }) => Err(e),
                    Ok(r) => Ok(r.rooms),
                    Err(e) => Err(reason(e)),
                }
            }
            .boxed(),
        )
    }

    fn has_transformer(&self) -> bool {
        self.transform.is_some()
    }

    fn transform(
        &self,
        client_id: &str,
        frame: &str,
    ) -> Option<BoxFuture<'static, Result<Option<String>, String>>> {
        let f = self.transform.clone()?;
        let args = FnArgs::from((client_id.to_string(), frame.to_string()));
        Some(
            async move {
                match settled(f.call_async_catch(args).await).await {
                    Ok(TransformResult { error: Some(e), .. }) => Err(e),
                    Ok(r) => Ok(r.frame),
                    Err(e) => Err(reason(e)),
                }
            }
            .boxed(),
        )
    }

    fn wants_messages(&self) -> bool {
        self.wants_messages
    }

    fn deliver(&self, events: Vec<AppEvent>) -> BoxFuture<'static, ()> {
        let f = self.deliver.clone();
        let batch: Vec<JsEvent> = events
            .into_iter()
            .map(|e| match e {
                AppEvent::Connected { client_id, user_id } => JsEvent {
                    kind: 0,
                    client_id,
                    user_id,
                    frame: None,
                },
                AppEvent::Disconnected { client_id, user_id } => JsEvent {
                    kind: 1,
                    client_id,
                    user_id,
                    frame: None,
                },
                AppEvent::Message {
                    client_id,
                    user_id,
                    frame,
                } => JsEvent {
                    kind: 2,
                    client_id,
                    user_id,
                    frame: Some(frame),
                },
            })
            .collect();
        async move {
            if let Err(e) = f.call_async_catch(batch).await {
                eprintln!("[ignis-ws-native] event delivery failed: {}", reason(e));
            }
        }
        .boxed()
    }
}

/// Log lines to the application's `logger` (fire and forget).
pub struct JsLog {
    pub f: LogFn,
    pub max: Option<Level>,
    /// Hand over JSON lines instead of text.
    pub json_server: Option<String>,
}

impl Log for JsLog {
    fn max_level(&self) -> Option<Level> {
        self.max
    }
    fn write(&self, level: Level, line: String) {
        let line = match &self.json_server {
            Some(server) => crate::core::log::json_line(server, level, &line),
            None => line,
        };
        self.f.call(
            FnArgs::from((level.as_str().to_string(), line)),
            ThreadsafeFunctionCallMode::NonBlocking,
        );
    }
}
