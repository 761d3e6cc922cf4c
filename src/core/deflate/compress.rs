//! Outbound compression: raw DEFLATE with a 32 KiB window, each message on
//! its own (no context takeover), ended by a sync flush whose empty stored
//! block (`00 00 ff ff`) is cut off, as RFC 7692 §7.2.1 says.

use flate2::{Compress, Compression, FlushCompress};
use std::cell::RefCell;

thread_local! {
    /// One compressor per thread and level, reset between messages: its
    /// state (about 256 KiB) is never paid per connection.
    static COMPRESSOR: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// The tail every sync flush ends with, left off the wire.
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// `payload` deflated for a message with RSV1 set, or `None` when that is
/// not smaller than `payload` itself.
pub fn compress(payload: &[u8], level: u32) -> Option<Box<[u8]>> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _)| *l != level) {
            *cell = Some((level, Compress::new(Compression::new(level), false)));
        }
        let (_, c) = cell.as_mut().expect("set above");
        c.reset();
        let mut out: Vec<u8> = Vec::with_capacity(payload.len() / 2 + 64);
        let mut taken = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = c.total_in();
            if c.compress_vec(&payload[taken..], &mut out, FlushCompress::Sync)
                .is_err()
            {
                // zlib only fails on misuse; send the message plain.
                return None;
            }
            taken += (c.total_in() - before) as usize;
            // The flush is complete once input is all taken and the
            // output was not filled.
            if taken == payload.len() && out.len() < out.capacity() {
                break;
            }
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < payload.len()).then(|| out.into_boxed_slice())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    fn inflate(data: &[u8]) -> Vec<u8> {
        let mut d = Decompress::new(false);
        let mut input = data.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[test]
    fn round_trips_and_is_independent_of_earlier_messages() {
        let a = br#"{"event":"chat","data":{"text":"hello hello hello hello hello"}}"#.repeat(20);
        let b = br#"{"event":"tick","data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}"#.repeat(20);
        let ca = compress(&a, 6).unwrap();
        let cb = compress(&b, 6).unwrap();
        assert!(ca.len() < a.len() / 4);
        assert_eq!(inflate(&ca), a);
        // No context takeover: b inflates alone, without a's window.
        assert_eq!(inflate(&cb), b);
        // The same input gives the same output (the compressor is reset).
        assert_eq!(compress(&a, 6).unwrap(), ca);
        assert_eq!(inflate(&compress(&a, 1).unwrap()), a);
    }

    #[test]
    fn incompressible_goes_plain() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                // xorshift64: no pattern deflate could use.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(&noise, 6).is_none());
        assert!(compress(b"", 6).is_none());
    }
}
