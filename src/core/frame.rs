//! An outbound message as its recipients share it: its JSON text, and its
//! compressed form (permessage-deflate), made the first time a compressed
//! recipient writes it and then shared by every other one — a room's,
//! a broadcast's or a history replay's recipients get one compression of a
//! publication between them, not one each.

use crate::core::deflate::Deflate;
use std::sync::{Arc, OnceLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A pre-serialized outbound frame, shared by every recipient of a fan-out.
#[derive(Clone)]
pub struct Frame(Arc<Shared>);

struct Shared {
    text: Utf8Bytes,
    /// `None` inside: sent plain (below the threshold, or not smaller).
    deflated: OnceLock<Option<Box<[u8]>>>,
}

impl Frame {
    pub fn as_str(&self) -> &str {
        self.0.text.as_str()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.text.as_bytes()
    }

    pub fn len(&self) -> usize {
        self.0.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.text.is_empty()
    }

    /// The text, as the WebSocket layer takes it.
    pub fn text(&self) -> Utf8Bytes {
        self.0.text.clone()
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

impl From<Utf8Bytes> for Frame {
    fn from(text: Utf8Bytes) -> Self {
        Frame(Arc::new(Shared {
            text,
            deflated: OnceLock::new(),
        }))
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Self {
        Utf8Bytes::from(s).into()
    }
}

impl From<&str> for Frame {
    fn from(s: &str) -> Self {
        Utf8Bytes::from(s).into()
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
