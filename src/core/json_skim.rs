//! Finding where a JSON value ends, and checking it is JSON, without building
//! it.
//!
//! Every frame a client sends is checked before its text goes, as it is, into
//! a batch that JavaScript reads with one `JSON.parse`: one frame that is not
//! JSON would fail the whole batch. serde_json's deserializer did the check
//! and found `event` and `data` in ≈ 1 200 instructions for a 33-byte frame
//! and ≈ 26 700 for a 1.7 KiB order; the skim below takes ≈ 740 and
//! ≈ 16 500 (callgrind, in the server), with no visitors, no raw-value
//! buffering and no keys copied to be compared.
//!
//! It accepts exactly what serde_json's `ignore_value` accepts, which is what
//! `JSON.parse` accepts: RFC 8259 values, whitespace of space, tab, CR and LF
//! only, no nesting limit (the nesting is kept on a stack of bits, never by
//! recursion), and `\u` escapes checked for four hex digits but not decoded,
//! so a lone surrogate passes as it does in `JSON.parse`. tests/fuzz_protocol.rs
//! compares the two on random text.

/// The lowest byte of the result with its high bit set marks the first
/// byte of `v` (from the low end) that ends a run of plain string bytes:
/// `"`, `\` or a control character; bytes of 0x80 and above never do. Bits
/// above the lowest may be spurious (a borrow carries upward), so only the
/// lowest is used.
fn string_stop(v: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * n as u64) & !v & HIGH;
    let quote = v ^ (ONES * b'"' as u64);
    let backslash = v ^ (ONES * b'\\' as u64);
    below(v, 0x20) | below(quote, 1) | below(backslash, 1)
}

/// The index after the whitespace at `i`.
#[inline(always)]
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        // Most calls find no whitespace at all: one comparison for them.
        if c > b' ' || !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

/// The string whose opening quote is at `i`: the index after its closing
/// quote, and whether it holds an escape. `None` if it is not a valid JSON
/// string (unterminated, a raw control character, a bad escape).
#[inline(always)]
fn skip_string(b: &[u8], i: usize) -> Option<(usize, bool)> {
    debug_assert_eq!(b.get(i), Some(&b'"'));
    let i = plain_run(b, i + 1);
    match *b.get(i)? {
        b'"' => Some((i + 1, false)),
        b'\\' => Some((skip_escaped_string(b, i)?, true)),
        _ => None,
    }
}

/// The index of the first byte from `i` on that ends a run of plain string
/// bytes (`"`, `\`, a control character), or `b.len()`. Eight bytes at a
/// time while eight remain: strings are most of a frame's bytes.
#[inline(always)]
pub(crate) fn plain_run(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let stop = string_stop(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        if stop != 0 {
            return i + stop.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// The rest of a string from the backslash at `i`: the index after its
/// closing quote. Escapes are rare in frames; this is kept off the inlined
/// path.
#[cold]
fn skip_escaped_string(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = b.get(i + 2..i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            _ => return None, // a control character
        }
        i = plain_run(b, i);
    }
}

#[inline(always)]
fn skip_digits(b: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    i
}

/// The number at `i`: `-`? (`0` | [1-9][0-9]*) (`.` [0-9]+)? ([eE] [+-]? [0-9]+)?
#[inline(always)]
fn skip_number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = skip_digits(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = skip_digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = skip_digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

fn skip_literal(b: &[u8], i: usize, literal: &[u8]) -> Option<usize> {
    b.get(i..)?
        .starts_with(literal)
        .then_some(i + literal.len())
}

/// The key at `i` (a string, whitespace, a colon): the index after its
/// closing quote, whether it holds an escape, and the index after the colon.
#[inline(always)]
pub fn skip_key(b: &[u8], i: usize) -> Option<(usize, bool, usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let (end, escaped) = skip_string(b, i)?;
    let colon = skip_ws(b, end);
    (b.get(colon) == Some(&b':')).then_some((end, escaped, colon + 1))
}

/// The containers around the innermost one, one bit each (set for an
/// object): 64 levels inline, the rest on the heap, which no frame a client
/// sends in earnest reaches.
struct Outer {
    inline: u64,
    len: usize,
    spilled: Vec<bool>,
}

impl Outer {
    const INLINE: usize = 64;

    fn new() -> Self {
        Outer {
            inline: 0,
            len: 0,
            spilled: Vec::new(),
        }
    }

    fn push(&mut self, object: bool) {
        if self.len < Self::INLINE {
            self.inline = self.inline & !(1 << self.len) | (object as u64) << self.len;
        } else {
            self.spilled.push(object);
        }
        self.len += 1;
    }

    /// Whether the container popped is an object.
    fn pop(&mut self) -> bool {
        self.len -= 1;
        if self.len < Self::INLINE {
            self.inline >> self.len & 1 == 1
        } else {
            self.spilled.pop().expect("pushed")
        }
    }
}

/// The value that starts at `i`, after any whitespace: the index after it.
/// `None` if no valid JSON value starts there.
#[inline]
pub fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    // Strings and numbers, most values, without the containers' setup.
    let i = skip_ws(b, i);
    match *b.get(i)? {
        b'"' => Some(skip_string(b, i)?.0),
        b'0'..=b'9' | b'-' => skip_number(b, i),
        _ => skip_any(b, i),
    }
}

/// `skip_value` for any value, containers included.
#[inline(never)]
fn skip_any(b: &[u8], mut i: usize) -> Option<usize> {
    // The innermost container is held in `depth` and `in_object`; `outer`
    // has the ones around it.
    let mut outer = Outer::new();
    let mut depth = 0usize;
    let mut in_object = false;
    loop {
        i = skip_ws(b, i);
        let c = *b.get(i)?;
        match c {
            b'"' => i = skip_string(b, i)?.0,
            b'0'..=b'9' | b'-' => i = skip_number(b, i)?,
            b'{' | b'[' => {
                let object = c == b'{';
                let first = skip_ws(b, i + 1);
                if b.get(first) == Some(if object { &b'}' } else { &b']' }) {
                    i = first + 1;
                } else {
                    if depth > 0 {
                        outer.push(in_object);
                    }
                    depth += 1;
                    in_object = object;
                    i = if object { skip_key(b, first)?.2 } else { first };
                    continue;
                }
            }
            b't' => i = skip_literal(b, i, b"true")?,
            b'f' => i = skip_literal(b, i, b"false")?,
            b'n' => i = skip_literal(b, i, b"null")?,
            _ => return None,
        }
        // A value ended: close what it ends, or go on after a comma.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = skip_ws(b, i);
            match *b.get(i)? {
                b',' => {
                    i = if in_object {
                        skip_key(b, skip_ws(b, i + 1))?.2
                    } else {
                        i + 1
                    };
                    break;
                }
                b'}' if in_object => {}
                b']' if !in_object => {}
                _ => return None,
            }
            i += 1;
            depth -= 1;
            if depth > 0 {
                in_object = outer.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(text: &str) -> bool {
        let b = text.as_bytes();
        skip_value(b, 0).is_some_and(|end| skip_ws(b, end) == b.len())
    }

    #[test]
    fn accepts_json_and_only_json() {
        for ok in [
            "0",
            "-0",
            "-1.5e+10",
            "1E-2",
            "123",
            "\"\"",
            "\"a\\u00e9\\ud800\\n\\/\"",
            "\"\u{e9}😀 long enough for eight bytes at a time\"",
            "[]",
            "{}",
            " [ 1 , { \"a\" : [ true , false , null ] } ] ",
            "{\"a\":{},\"b\":[],\"c\":\"\"}",
        ] {
            assert!(whole(ok), "{ok:?} is JSON");
        }
        for bad in [
            "",
            " ",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "tru",
            "nul",
            "True",
            "\"a",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"\\u12\"",
            "\"tab\there\"",
            "[1,]",
            "[,1]",
            "{\"a\":1,}",
            "{\"a\"}",
            "{\"a\" 1}",
            "{a:1}",
            "{1:1}",
            "[1 2]",
            "[1}",
            "{\"a\":1]",
            "[",
            "{",
            "\u{a0}1",
            "1 x",
        ] {
            assert!(!whole(bad), "{bad:?} is not JSON");
        }
    }

    #[test]
    fn nesting_past_the_inline_bits_is_matched() {
        for depth in [1, 2, 63, 64, 65, 66, 129, 300, 100_000] {
            let open: String = (0..depth)
                .map(|d| if d % 3 == 0 { "{\"k\":" } else { "[" })
                .collect();
            let close: String = (0..depth)
                .rev()
                .map(|d| if d % 3 == 0 { "}" } else { "]" })
                .collect();
            assert!(whole(&format!("{open}1{close}")), "depth {depth}");
            // The same with one bracket of the wrong kind, at the deepest
            // level and at the outermost.
            let mut wrong = close.clone().into_bytes();
            wrong[0] = if wrong[0] == b'}' { b']' } else { b'}' };
            assert!(!whole(&format!(
                "{open}1{}",
                String::from_utf8(wrong).unwrap()
            )));
            let mut wrong = close.into_bytes();
            let last = wrong.len() - 1;
            wrong[last] = if wrong[last] == b'}' { b']' } else { b'}' };
            assert!(!whole(&format!(
                "{open}1{}",
                String::from_utf8(wrong).unwrap()
            )));
        }
    }

    #[test]
    fn strings_end_at_their_own_quote_and_report_escapes() {
        let b = br#""abcdefghijklmnop" tail"#;
        assert_eq!(skip_string(b, 0), Some((18, false)));
        let b = br#""abcdefgh\"ijklmnop\\" tail"#;
        assert_eq!(skip_string(b, 0), Some((22, true)));
        // A control character in the eight-byte path and in the tail.
        assert_eq!(skip_string(b"\"abcdefg\x01hijklmnop\"", 0), None);
        assert_eq!(skip_string(b"\"ab\x1f\"", 0), None);
    }
}
