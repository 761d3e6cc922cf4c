//! What a client sends (docs/PROTOCOL.md §3): the inbound state machine,
//! the rate window, and RFC 6455 violations answered with their close code.

use super::state::{Connection, Next, PendingAuth};
use crate::core::client::ClientState;
use crate::core::handlers::AppEvent;
use crate::core::history::protocol as history;
use crate::core::protocol::{self, close, errors, events, EventName};
use crate::core::stats::bump;
use crate::core::violation::Violation;
use std::time::Duration;
use tokio::time::Instant;
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::Message;

impl Connection {
    /// One more inbound frame in the rate window; false when over the limit.
    pub(super) fn within_rate(&mut self) -> bool {
        let max = self.env.config.max_frames_per_second;
        if max == 0 {
            return true;
        }
        // Compared with the window's end rather than its length measured
        // from its start: a comparison per frame, the sum once a second.
        let now = Instant::now();
        if now >= self.window_end {
            self.window_end = now + Duration::from_secs(1);
            self.window_frames = 0;
        }
        self.window_frames += 1;
        self.window_frames <= max
    }

    /// Handles what the socket produced. Takes the message by value so it
    /// is not kept in the loop's future across a wait for the event queue.
    pub(super) fn on_read(&mut self, msg: Option<Result<Message, WsError>>) -> Next {
        match msg {
            None => Next::Stop,
            Some(Ok(Message::Text(t))) => self.on_text(t.as_str()),
            Some(Ok(Message::Binary(b))) => self.on_text(&String::from_utf8_lossy(&b)),
            Some(Ok(Message::Close(_))) => Next::Continue, // the reply goes out on the next poll
            Some(Ok(_)) => Next::Continue,                 // ping, pong
            Some(Err(e)) => self.on_read_error(e),
        }
    }

    pub(super) fn on_text(&mut self, text: &str) -> Next {
        let env = self.env.clone();
        self.client.touch(protocol::now_ms());
        bump(&env.stats.messages_in);
        if !self.within_rate() {
            bump(&env.stats.rate_limited);
            env.log.warn(
                "Rate limit exceeded; closing",
                &[
                    ("id", &self.client.id),
                    ("maxFramesPerSecond", &env.config.max_frames_per_second),
                ],
            );
            let (code, reason) = close::RATE_LIMIT;
            return Next::Close(code, reason);
        }
        let frame = match protocol::parse_inbound(text) {
            Ok(f) => f,
            Err(_) => {
                bump(&env.stats.invalid_frames);
                self.send_error(errors::INVALID_FORMAT);
                return Next::Continue;
            }
        };
        let event = match frame.event {
            EventName::Falsy => {
                bump(&env.stats.invalid_frames);
                env.log.debug(
                    "Invalid message payload: missing event",
                    &[("id", &self.client.id)],
                );
                return Next::Continue;
            }
            EventName::Str(s) => Some(s),
            EventName::Other => None,
        };
        match event.as_deref() {
            Some(events::HEARTBEAT) => return Next::Continue,
            Some(events::AUTHENTICATE) => {
                if self.client.state() != ClientState::Unauthorized {
                    self.send_error(errors::ALREADY_AUTHENTICATED);
                    return Next::Continue;
                }
                let max = env.config.max_pending_auth;
                let pending = env
                    .pending_auth
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let guard = PendingAuth(env.clone());
                if max > 0 && pending >= max {
                    drop(guard);
                    bump(&env.stats.auth_busy);
                    env.log.warn(
                        "Too many pending authentications; closing",
                        &[("id", &self.client.id), ("maxPendingAuthentications", &max)],
                    );
                    let (code, reason) = close::AUTH_BUSY;
                    return Next::Close(code, reason);
                }
                self.start_auth(protocol::auth_payload(frame.data).to_string(), guard);
                return Next::Continue;
            }
            _ => {}
        }
        if self.client.state() != ClientState::Authenticated {
            self.send_error(errors::NOT_AUTHENTICATED);
            return Next::Continue;
        }
        match event.as_deref() {
            Some(events::JOIN) => {
                let rooms = protocol::parse_rooms(frame.data, env.config.max_rooms_per_request);
                let recover = match &env.history {
                    Some(_) => history::parse_recover(frame.data, rooms.len()),
                    None => Default::default(),
                };
                self.start_join(rooms, recover);
                Next::Continue
            }
            Some(events::LEAVE) => {
                let rooms = protocol::parse_rooms(frame.data, env.config.max_rooms_per_request);
                if !rooms.is_empty() {
                    let left = env.hub.leave(&self.client.id, &rooms);
                    if let Some(p) = &env.presence {
                        let user = self.client.user_id();
                        for room in &left {
                            p.announce(&env.hub, room, &self.client.id, user.as_deref(), false);
                        }
                    }
                    if !left.is_empty() {
                        env.log.debug(
                            "Left rooms",
                            &[
                                ("id", &self.client.id),
                                ("rooms", &format_args!("{:?}", left)),
                            ],
                        );
                    }
                }
                Next::Continue
            }
            _ => {
                if !env.handlers.wants_messages() {
                    bump(&env.stats.dropped_no_handler);
                    return Next::Continue;
                }
                match env.events.try_emit(AppEvent::Message {
                    client_id: self.client.id.clone(),
                    serial: self.client.serial,
                    frame: text.to_string(),
                    spans: frame.spans,
                }) {
                    None => Next::Continue,
                    Some(wait) => Next::Wait(wait),
                }
            }
        }
    }

    /// A violation of RFC 6455 is answered with the close code the RFC
    /// gives it (`core::violation`), counted by kind; the socket's own end
    /// (reset, EOF) stops quietly.
    pub(super) fn on_read_error(&self, e: WsError) -> Next {
        let Some(violation) = Violation::of(&e) else {
            self.env
                .log
                .debug("Peer gone", &[("id", &self.client.id), ("error", &e)]);
            return Next::Stop;
        };
        self.env.stats.violations.bump(violation);
        if violation == Violation::message_too_big {
            bump(&self.env.stats.oversized_frames);
            let size = match e {
                WsError::Capacity(CapacityError::MessageTooLong { size, .. }) => size.to_string(),
                // Inflating stopped at the limit: the real size is unknown.
                _ => "over the limit, inflated".to_string(),
            };
            self.env.log.warn(
                "Frame too large",
                &[
                    ("id", &self.client.id),
                    ("size", &size),
                    ("max", &self.env.config.max_payload_length),
                ],
            );
        } else {
            self.env.log.debug(
                "Protocol violation",
                &[
                    ("id", &self.client.id),
                    ("reason", &violation.label()),
                    ("error", &e),
                ],
            );
        }
        Next::Close(violation.code(), violation.reason())
    }
}
