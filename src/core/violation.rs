//! What a client can do wrong at the WebSocket layer (RFC 6455), and the
//! close code each gets (§7.4.1): 1002 for a framing error, 1007 for data
//! that is not what its type says, 1009 for size. The connection answers
//! each with a close frame before it drops the TCP connection, so a client,
//! a proxy's log or the SDK can tell a broken client from a network loss.
//!
//! [`with_violations!`] is the one list. The counters (`Counts`), the
//! metrics page's `protocol_errors_total{reason}` and the binding's
//! `stats().protocolErrors` are generated from it.

use std::sync::atomic::{AtomicU64, Ordering};
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};

/// Calls `$m! { name code "close reason" "help", … }` with every violation.
/// The name is the metrics label (camelCase in `stats()`).
#[macro_export]
macro_rules! with_violations {
    ($m:path) => {
        $m! {
            unmasked_frame 1002 "Unmasked client frame" "Client frames without a mask.",
            reserved_bits 1002 "Reserved bits set" "Frames with reserved bits set that no extension defines.",
            reserved_opcode 1002 "Reserved opcode" "Frames with a reserved opcode.",
            bad_continuation 1002 "Bad continuation" "A continuation with no message started, or a new message inside a fragmented one.",
            bad_control_frame 1002 "Bad control frame" "Control frames fragmented or over 125 bytes.",
            bad_close_frame 1002 "Bad close frame" "Close frames with a 1-byte payload.",
            invalid_utf8 1007 "Invalid UTF-8" "Text messages or close reasons that are not UTF-8.",
            invalid_deflate 1007 "Invalid compressed data" "Compressed messages (permessage-deflate) that are not valid DEFLATE data.",
            message_too_big 1009 "Message too big" "Messages over maxPayloadLength (compressed ones by their inflated size).",
            other 1002 "Protocol error" "Any other violation of RFC 6455.",
        }
    };
}

macro_rules! define_violations {
    ($($name:ident $code:literal $reason:literal $help:literal,)*) => {
        /// One kind of protocol violation.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Violation {
            $(#[doc = $help] $name,)*
        }

        impl Violation {
            /// Every violation, in the list's order (the order of [`Counts`]).
            pub const ALL: &'static [Violation] = &[$(Violation::$name,)*];

            /// The close code RFC 6455 gives it.
            pub fn code(self) -> u16 {
                match self { $(Violation::$name => $code,)* }
            }

            /// The close frame's reason text.
            pub fn reason(self) -> &'static str {
                match self { $(Violation::$name => $reason,)* }
            }

            /// The metrics label.
            pub fn label(self) -> &'static str {
                match self { $(Violation::$name => stringify!($name),)* }
            }
        }
    };
}
with_violations!(define_violations);

impl Violation {
    /// The violation behind an error of the WebSocket reader; `None` for
    /// what is the socket's own end (reset, EOF, closed), which is not the
    /// client's fault and stops quietly.
    pub fn of(e: &WsError) -> Option<Violation> {
        use ProtocolError as P;
        Some(match e {
            // What the inflating reader refused (`core::deflate`).
            WsError::Io(io) => return Violation::of_io(io),
            WsError::ConnectionClosed | WsError::AlreadyClosed => return None,
            WsError::Protocol(P::ResetWithoutClosingHandshake) => return None,
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => Violation::message_too_big,
            WsError::Utf8(_) => Violation::invalid_utf8,
            WsError::Protocol(p) => match p {
                P::UnmaskedFrameFromClient => Violation::unmasked_frame,
                P::NonZeroReservedBits => Violation::reserved_bits,
                P::UnknownControlFrameType(_)
                | P::UnknownDataFrameType(_)
                | P::InvalidOpcode(_) => Violation::reserved_opcode,
                P::UnexpectedContinueFrame | P::ExpectedFragment(_) => Violation::bad_continuation,
                P::FragmentedControlFrame | P::ControlFrameTooBig => Violation::bad_control_frame,
                P::InvalidCloseSequence => Violation::bad_close_frame,
                _ => Violation::other,
            },
            _ => Violation::other,
        })
    }
}

impl Violation {
    /// The violation an I/O error of a reader carries, if it is one (the
    /// inflating reader refuses compressed messages this way).
    pub fn of_io(e: &std::io::Error) -> Option<Violation> {
        e.get_ref()?.downcast_ref::<Violation>().copied()
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Violation {}

/// How many of each violation the server met, in [`Violation::ALL`]'s order.
#[derive(Debug, Default)]
pub struct Counts([AtomicU64; Violation::ALL.len()]);

impl Counts {
    pub fn bump(&self, v: Violation) {
        self.0[v as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> [u64; Violation::ALL.len()] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_gets_its_code() {
        use ProtocolError as P;
        let cases: Vec<(WsError, Option<u16>)> = vec![
            (WsError::Protocol(P::UnmaskedFrameFromClient), Some(1002)),
            (WsError::Protocol(P::NonZeroReservedBits), Some(1002)),
            (WsError::Protocol(P::UnknownDataFrameType(3)), Some(1002)),
            (
                WsError::Protocol(P::UnknownControlFrameType(11)),
                Some(1002),
            ),
            (WsError::Protocol(P::UnexpectedContinueFrame), Some(1002)),
            (WsError::Protocol(P::FragmentedControlFrame), Some(1002)),
            (WsError::Protocol(P::ControlFrameTooBig), Some(1002)),
            (WsError::Protocol(P::InvalidCloseSequence), Some(1002)),
            (WsError::Utf8("bad".into()), Some(1007)),
            (
                WsError::Capacity(CapacityError::MessageTooLong {
                    size: 2,
                    max_size: 1,
                }),
                Some(1009),
            ),
            (
                WsError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    Violation::invalid_deflate,
                )),
                Some(1007),
            ),
            (
                WsError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    Violation::message_too_big,
                )),
                Some(1009),
            ),
            (WsError::ConnectionClosed, None),
            (WsError::Protocol(P::ResetWithoutClosingHandshake), None),
            (
                WsError::Io(std::io::ErrorKind::ConnectionReset.into()),
                None,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Violation::of(&e).map(Violation::code), code, "{e:?}");
        }
    }

    #[test]
    fn counted_per_reason() {
        let c = Counts::default();
        c.bump(Violation::invalid_utf8);
        c.bump(Violation::invalid_utf8);
        c.bump(Violation::other);
        let snap = c.snapshot();
        assert_eq!(snap[Violation::invalid_utf8 as usize], 2);
        assert_eq!(snap[Violation::other as usize], 1);
        assert_eq!(snap.iter().sum::<u64>(), 3);
        // Labels are unique: they are the metrics page's label values.
        let labels: std::collections::HashSet<_> =
            Violation::ALL.iter().map(|v| v.label()).collect();
        assert_eq!(labels.len(), Violation::ALL.len());
    }
}
