//! Joins (docs/PROTOCOL.md §5, §15, §16): `validateRoomFn` polled by the
//! connection's own task, then the rooms joined, history replayed and
//! presence announced.

use super::state::{Connection, JoinDone};
use crate::core::client::ClientState;
use crate::core::history::protocol::Recover;
use crate::core::history::Backend;
use crate::core::protocol;
use crate::core::stats::bump;
use futures_util::FutureExt;

impl Connection {
    pub(super) fn start_join(
        &mut self,
        rooms: Vec<String>,
        recover: std::collections::HashMap<String, Recover>,
    ) {
        let env = &self.env;
        let id = &self.client.id;
        let requested: Vec<String> = rooms
            .into_iter()
            .filter(|r| protocol::is_joinable_room(r))
            .collect();
        if requested.is_empty() {
            env.log
                .debug("Join rejected: all rooms filtered out", &[("id", &id)]);
            return;
        }
        if self.joins.as_ref().map_or(0, |j| j.len()) >= env.config.max_pending_joins {
            bump(&env.stats.joins_refused);
            env.log.warn(
                "Join rejected: too many joins awaiting validateRoomFn",
                &[("id", &id)],
            );
            return;
        }
        let user = self.client.user_id();
        match env
            .handlers
            .validate_rooms(id, user.as_deref(), requested.clone())
        {
            None => {
                bump(&env.stats.joins_refused);
                env.log.warn(
                    "Join rejected: no validateRoomFn configured",
                    &[("id", &id), ("rooms", &format_args!("{requested:?}"))],
                );
            }
            Some(fut) => self.joins.get_or_insert_with(Default::default).push(
                async move {
                    JoinDone {
                        requested,
                        recover,
                        result: fut.await,
                    }
                }
                .boxed(),
            ),
        }
    }

    pub(super) fn finish_join(&mut self, done: JoinDone) {
        let env = &self.env;
        let id = &self.client.id;
        match done.result {
            Ok(allowed) if allowed.is_empty() => {
                bump(&env.stats.joins_refused);
                env.log.debug(
                    "Join rejected: no rooms allowed",
                    &[
                        ("id", &id),
                        ("rooms", &format_args!("{:?}", done.requested)),
                    ],
                );
            }
            Ok(mut allowed) => {
                if self.client.state() == ClientState::Authenticated {
                    // Own and default rooms do not count against the limit.
                    let fixed = 1 + env.config.default_rooms.len();
                    let current = self.client.details.lock().rooms.len().saturating_sub(fixed);
                    let room_left = env.config.max_rooms_per_client.saturating_sub(current);
                    if allowed.len() > room_left {
                        bump(&env.stats.rooms_limited);
                        env.log.warn(
                            "Room limit reached; rooms not joined",
                            &[
                                ("id", &id),
                                ("maxRoomsPerClient", &env.config.max_rooms_per_client),
                                ("notJoined", &(allowed.len() - room_left)),
                            ],
                        );
                        allowed.truncate(room_left);
                    }
                    // Presence announces only rooms the client was not in.
                    let before = match &env.presence {
                        Some(_) => self.client.details.lock().rooms.clone(),
                        None => Default::default(),
                    };
                    match &env.history {
                        None => {
                            env.hub.join(id, &allowed);
                        }
                        Some(history) => {
                            // History rooms one by one (each answers
                            // `joined`, after any replay); the rest at once.
                            let (kept, plain): (Vec<String>, Vec<String>) =
                                allowed.iter().cloned().partition(|r| history.applies(r));
                            env.hub.join(id, &plain);
                            for room in kept {
                                let recover = done.recover.get(&room).cloned();
                                match history {
                                    Backend::Local(h) => {
                                        h.join(&env.hub, &self.client, &room, recover.as_ref());
                                    }
                                    // Reading Redis is awaited apart, so the
                                    // connection goes on meanwhile.
                                    Backend::Redis(h) => {
                                        crate::core::task::spawn(h.clone().join(
                                            self.client.clone(),
                                            room,
                                            recover,
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    if let Some(p) = &env.presence {
                        let user = self.client.user_id();
                        for room in allowed.iter().filter(|r| !before.contains(r.as_str())) {
                            p.announce(&env.hub, room, id, user.as_deref(), true);
                        }
                    }
                    env.log.debug(
                        "Joined rooms",
                        &[("id", &id), ("rooms", &format_args!("{:?}", allowed))],
                    );
                }
            }
            Err(e) => {
                bump(&env.stats.handler_errors);
                env.log.error(
                    "Failed to join rooms",
                    &[
                        ("id", &id),
                        ("rooms", &format_args!("{:?}", done.requested)),
                        ("error", &e),
                    ],
                );
            }
        }
    }
}
