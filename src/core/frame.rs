//! An outbound message as its recipients share it: its JSON text, and its
//! compressed form (permessage-deflate), made the first time a compressed
//! recipient writes it and then shared by every other one — a room's,
//! a broadcast's or a history replay's recipients get one compression of a
//! publication between them, not one each.

use crate::core::deflate::Deflate;
use crate::core::frame_writer::{frame_header, TEXT};
use std::sync::{Arc, OnceLock};

/// What a frame's text is built after ([`Frame::from_headroom`]): room for
/// its WebSocket header (the longest is 10 bytes), as text, so that the
/// JSON can be written with `String`'s own methods and the frame then takes
/// the allocation as it is.
pub const HEADROOM: &str = "\0\0\0\0\0\0\0\0\0\0";

const HEAD: usize = HEADROOM.len();

/// A pre-serialized outbound frame, shared by every recipient of a fan-out.
#[derive(Clone)]
pub struct Frame(Arc<Shared>);

struct Shared {
    /// The uncompressed frame as it goes on the wire: its header, ending
    /// at `HEAD`, from `start`; its text (valid UTF-8) from `HEAD`. A frame
    /// written alone goes to the socket from here as it is, with neither a
    /// copy nor a second slice for its header.
    bytes: Vec<u8>,
    start: u8,
    /// `None` inside: sent plain (below the threshold, or not smaller).
    deflated: OnceLock<Option<Box<[u8]>>>,
}

impl Frame {
    /// The frame whose text follows [`HEADROOM`] in `text`.
    ///
    /// # Panics
    /// If `text` does not start with [`HEADROOM`] (a bug of the caller's).
    pub fn from_headroom(text: String) -> Frame {
        assert!(
            text.starts_with(HEADROOM),
            "a frame's text follows its headroom"
        );
        let mut bytes = text.into_bytes();
        let (header, used) = frame_header(TEXT, bytes.len() - HEAD);
        let start = HEAD - used;
        bytes[start..HEAD].copy_from_slice(&header[..used]);
        Frame(Arc::new(Shared {
            bytes,
            start: start as u8,
            deflated: OnceLock::new(),
        }))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: the bytes from `HEAD` are a `String`'s from a char
        // boundary (after the ASCII `HEADROOM`), never written since.
        unsafe { std::str::from_utf8_unchecked(self.as_bytes()) }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0.bytes[HEAD..]
    }

    /// The whole uncompressed text frame, header included.
    pub fn wire(&self) -> &[u8] {
        &self.0.bytes[self.0.start as usize..]
    }

    pub fn len(&self) -> usize {
        self.0.bytes.len() - HEAD
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload compressed for a message with RSV1 set, made once; `None`:
    /// it goes plain.
    pub fn deflated(&self, deflate: &Deflate) -> Option<&[u8]> {
        self.0
            .deflated
            .get_or_init(|| deflate.compress(self.as_bytes()))
            .as_deref()
    }
}

impl From<&str> for Frame {
    fn from(s: &str) -> Self {
        let mut text = String::with_capacity(HEAD + s.len());
        text.push_str(HEADROOM);
        text.push_str(s);
        Frame::from_headroom(text)
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Self {
        Frame::from(s.as_str())
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::frame_writer::append_frame;

    /// A frame's bytes are its header in the shortest form, then its text,
    /// across the header's three length forms and with multibyte text.
    #[test]
    fn a_frame_is_its_header_then_its_text() {
        for len in [0, 1, 2, 125, 126, 127, 65535, 65536, 70_000] {
            let text = if len >= 2 {
                format!("é{}", "a".repeat(len - 2))
            } else {
                "a".repeat(len)
            };
            assert_eq!(text.len(), len);
            let mut want = Vec::new();
            append_frame(&mut want, TEXT, text.as_bytes());
            for frame in [
                Frame::from(text.as_str()),
                Frame::from(text.clone()),
                Frame::from_headroom(format!("{HEADROOM}{text}")),
            ] {
                assert_eq!(frame.wire(), want, "{len} bytes");
                assert_eq!(frame.as_str(), text);
                assert_eq!(frame.len(), len);
                assert_eq!(frame.is_empty(), len == 0);
            }
        }
    }

    #[test]
    #[should_panic(expected = "headroom")]
    fn text_without_its_headroom_is_refused() {
        Frame::from_headroom(r#"{"event":"x"}"#.to_string());
    }
}
