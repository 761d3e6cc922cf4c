//! permessage-deflate (RFC 7692), both ways, with no context takeover on
//! either side (uWebSockets' shared mode):
//!
//! - `negotiate` reads a client's offers and writes the server's answer;
//! - `compress` deflates an outbound message. Its result is kept with the
//!   frame (`core::frame::Frame`) and with a run of frames shared by a
//!   room's members (`core::client::Run`), so a publication is compressed
//!   once for every compressed recipient, not once per socket;
//! - `inflate::Inflating` sits under the WebSocket reader and hands it the
//!   client's compressed messages inflated, as plain frames, enforcing
//!   `maxPayloadLength` on the inflated size while it inflates.
//!
//! No context takeover is what lets a connection keep no compressor state:
//! every message is compressed and inflated on its own, by state kept per
//! thread, so an idle compressed connection costs what a plain one does.

mod compress;
mod inflate;
mod negotiate;

pub use compress::compress;
pub use inflate::Inflating;
pub use negotiate::negotiate;

use crate::core::stats::Stats;
use std::sync::Arc;

/// The server's side of the extension, when `perMessageDeflate` is on.
#[derive(Debug, Clone)]
pub struct Deflate {
    /// Messages shorter than this many bytes go uncompressed.
    pub threshold: usize,
    /// zlib's level, 0 (stored) to 9.
    pub level: u32,
    pub stats: Arc<Stats>,
}

impl Deflate {
    /// `payload` compressed, or `None` when it goes plain: below the
    /// threshold, or not made smaller.
    pub fn compress(&self, payload: &[u8]) -> Option<Box<[u8]>> {
        if payload.len() < self.threshold {
            return None;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let out = compress(payload, self.level);
        self.stats.deflate_compressed.fetch_add(1, Relaxed);
        self.stats
            .deflate_bytes_in
            .fetch_add(payload.len() as u64, Relaxed);
        self.stats.deflate_bytes_out.fetch_add(
            out.as_ref().map_or(payload.len(), |o| o.len()) as u64,
            Relaxed,
        );
        out
    }
}
