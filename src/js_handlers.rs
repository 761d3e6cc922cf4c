//! The core's `Handlers` and `Log` traits implemented with thread-safe
//! functions into JavaScript.
//!
//! The functions called here are the package's own JS adapters (see
//! `ts/server.ts`), not the user's handlers directly: the adapters call the
//! user's function, await it if it returned a promise, catch whatever it
//! throws or rejects, and reduce the result to a plain object. Calls go
//! through `js_thread::call_js` (a call with its result sent back), so even
//! an exception in an adapter becomes an `Err` here instead of a process
//! crash. All functions are weak (unref'd): they
//! never keep the process alive on their own; a listening server holds a
//! ref'd handle in JS instead, like `net.Server`.

use crate::batched_calls::BatchedCalls;
use crate::core::handlers::{AppEvent, AuthOutcome, Handlers, HandshakeOutcome};
use crate::core::log::{Field, Format, Level, Log};
use crate::core::protocol::push_json_str;
use crate::js_thread::{call_js, Runner};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use napi::bindgen_prelude::{FnArgs, Function, Promise};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use std::sync::Arc;

/// Adapter's answer for `handshakeFn`.
#[napi(object)]
pub struct HandshakeResult {
    /// "ok", "rejected" or "error"
    pub outcome: String,
    pub server_public_key: Option<String>,
    pub salt: Option<String>,
    pub error: Option<String>,
}

/// Adapter's answer for `outboundTransformer`: `frame` is the text to send
/// instead (absent: send the original), `error` a throw or rejection.
#[napi(object)]
pub struct TransformResult {
    pub frame: Option<String>,
    pub error: Option<String>,
}

type Tsfn<Args, Ret> = ThreadsafeFunction<Args, Ret, Args, Status, false, true>;

pub type HandshakeFn = Tsfn<FnArgs<(String, Option<String>, String)>, Promise<HandshakeResult>>;
pub type DeliverFn = Tsfn<String, ()>;
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

/// The rooms `validateRoomFn` allowed, or what it threw or rejected with.
pub type RoomsOutcome = Result<Vec<String>, String>;

pub struct JsHandlers {
    /// `authenticateFn`, many requests per call: `[seq, clientId, data]`
    /// each, answered through `NativeServer::auth_answers`.
    pub authenticate: BatchedCalls<AuthOutcome>,
    pub handshake: Option<Arc<HandshakeFn>>,
    /// `validateRoomFn`, batched the same way: `[seq, clientId, userId,
    /// rooms]` each, answered through `NativeServer::room_answers`.
    pub validate_rooms: Option<BatchedCalls<RoomsOutcome>>,
    pub transform: Option<Arc<TransformFn>>,
    pub deliver: Arc<DeliverFn>,
    pub wants_messages: bool,
    /// Set when the core runs on the JS thread (`js_thread`).
    pub runner: Option<&'static Runner>,
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
        // `data_json` is embedded as it is: the core took it from a frame
        // serde already validated.
        self.authenticate
            .request(|out| {
                push_json_str(out, client_id);
                out.push(',');
                out.push_str(data_json);
            })
            .boxed()
    }

    fn handshake(
        &self,
        client_id: &str,
        user_id: Option<&str>,
        data_json: &str,
    ) -> Option<BoxFuture<'static, HandshakeOutcome>> {
        let f = self.handshake.clone()?;
        let runner = self.runner;
        let args = FnArgs::from((
            client_id.to_string(),
            user_id.map(str::to_string),
            data_json.to_string(),
        ));
        Some(
            async move {
                match settled(call_js(runner, &f, args).await).await {
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
        let calls = self.validate_rooms.as_ref()?;
        Some(
            calls
                .request(|out| {
                    push_json_str(out, client_id);
                    out.push(',');
                    match user_id {
                        Some(u) => push_json_str(out, u),
                        None => out.push_str("null"),
                    }
                    out.push_str(",[");
                    for (i, room) in rooms.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        push_json_str(out, room);
                    }
                    out.push(']');
                })
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
        let runner = self.runner;
        let args = FnArgs::from((client_id.to_string(), frame.to_string()));
        Some(
            async move {
                match settled(call_js(runner, &f, args).await).await {
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

    fn deliver(&self, events: &mut Vec<AppEvent>) -> BoxFuture<'static, ()> {
        let count = events.len();
        let call = call_js(self.runner, &self.deliver, batch_json(events));
        async move {
            if let Err(e) = call.await {
                crate::core::log::stderr::write(
                    format!(
                        "[ignis-ws] error {count} connect/disconnect/message event(s) not delivered to JavaScript: {}\n",
                        reason(e)
                    )
                    .as_bytes(),
                );
            }
        }
        .boxed()
    }
}

/// A batch of events as one JSON array text, so that JavaScript receives a
/// single string and builds every object with one `JSON.parse` (creating
/// them property by property through N-API costs several times more).
///
/// The array is flat, one entry after another:
/// - `0, serial, clientId, userId|null`: connected;
/// - `1, serial, clientId, userId|null`: disconnected;
/// - `2, serial, frame`: a message, the client's frame embedded as it
///   arrived (it was already validated as JSON by `protocol::parse_inbound`,
///   which is stricter than `JSON.parse`);
/// - `3, serial, event, data`: a message whose frame is exactly
///   `{"event":…,"data":…}`, as its two values (`protocol::EventDataSpans`).
///   JavaScript builds `{ event, data }` with an object literal, the object
///   `JSON.parse` would make of the frame, for a fraction of what V8's
///   parser spends building the envelope (docs/PERFORMANCE.md, "Messages
///   handed over as their two values").
///
/// A message names its client by `Client::serial` only. JavaScript keeps
/// the id and user it learnt from `connected` under that number until
/// `disconnected` (serials count from 1, one per connection, so they stay
/// far below 2^53, the largest integer a JavaScript number holds exactly):
/// V8 then parses a number instead of building the id's
/// 36-character string and the user's string for every message, and no
/// array per entry (together ≈ a quarter of `JSON.parse`'s work per
/// message in scenario (d)).
pub fn batch_json(events: &[AppEvent]) -> String {
    let size: usize = events
        .iter()
        .map(|e| match e {
            AppEvent::Message { frame, .. } => frame.len() + 24,
            _ => 96,
        })
        .sum();
    let mut out = String::with_capacity(size + 2);
    out.push('[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match e {
            AppEvent::Connected {
                client_id,
                user_id,
                serial,
            } => push_client_event(&mut out, '0', *serial, client_id, user_id.as_deref()),
            AppEvent::Disconnected {
                client_id,
                user_id,
                serial,
            } => push_client_event(&mut out, '1', *serial, client_id, user_id.as_deref()),
            AppEvent::Message {
                serial,
                frame,
                spans: Some(spans),
                ..
            } => {
                push_kind(&mut out, '3', *serial);
                out.push_str(spans.event(frame));
                out.push(',');
                out.push_str(spans.data(frame));
            }
            AppEvent::Message { serial, frame, .. } => {
                push_kind(&mut out, '2', *serial);
                out.push_str(frame);
            }
        }
    }
    out.push(']');
    out
}

/// `kind,serial,` of one entry.
#[inline(always)]
fn push_kind(out: &mut String, kind: char, serial: u64) {
    out.push(kind);
    out.push(',');
    out.push_str(itoa::Buffer::new().format(serial));
    out.push(',');
}

fn push_client_event(
    out: &mut String,
    kind: char,
    serial: u64,
    client_id: &str,
    user_id: Option<&str>,
) {
    push_kind(out, kind, serial);
    push_json_str(out, client_id);
    out.push(',');
    match user_id {
        Some(u) => push_json_str(out, u),
        None => out.push_str("null"),
    }
}

/// Log lines to the application's `logger` (fire and forget).
pub struct JsLog {
    pub f: LogFn,
    pub max: Option<Level>,
    pub format: Format,
}

impl Log for JsLog {
    fn max_level(&self) -> Option<Level> {
        self.max
    }
    fn write(&self, level: Level, msg: &str, fields: &[Field<'_>]) {
        self.f.call(
            FnArgs::from((
                level.as_str().to_string(),
                self.format.line(level, msg, fields),
            )),
            ThreadsafeFunctionCallMode::NonBlocking,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_one_json_array_with_frames_embedded() {
        let events = vec![
            AppEvent::Connected {
                client_id: "c1".into(),
                user_id: Some("u\"1\n".into()),
                serial: 7,
            },
            AppEvent::Message {
                client_id: "c1".into(),
                serial: 7,
                frame: r#"{"event":"x","data":{"a":[1,"\u00e9"]},"id":"q"}"#.into(),
                spans: None,
            },
            {
                let frame = r#"{ "event" : "y\"", "data" : [null] }"#;
                AppEvent::Message {
                    client_id: "c1".into(),
                    serial: 7,
                    frame: frame.into(),
                    spans: crate::core::protocol::parse_inbound(frame).unwrap().spans,
                }
            },
            AppEvent::Disconnected {
                client_id: "c2".into(),
                user_id: None,
                serial: 9_007_199_254_740_991,
            },
        ];
        let text = batch_json(&events);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                0, 7, "c1", "u\"1\n",
                2, 7, {"event": "x", "data": {"a": [1, "\u{e9}"]}, "id": "q"},
                3, 7, "y\"", [null],
                1, 9_007_199_254_740_991_u64, "c2", null
            ])
        );
        assert_eq!(batch_json(&[]), "[]");
    }
}
