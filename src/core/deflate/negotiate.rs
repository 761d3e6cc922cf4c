//! The extension's negotiation (RFC 7692 §5, §7.1): the first offer the
//! server can honour is accepted; one it cannot is declined by leaving the
//! extension out of the answer. The upgrade never fails over an offer.

/// The `Sec-WebSocket-Extensions` value to answer `offers` (every such
/// header of the request) with, or `None` to decline.
///
/// The answer always asks for no context takeover on both sides: the
/// server compresses each message once for all its recipients, and
/// inflates each client message with state it does not keep between
/// messages. The server compresses with a 32 KiB window, so an offer that
/// limits it (`server_max_window_bits` below 15) is declined.
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<String> {
    offers
        .into_iter()
        .flat_map(split_outside_quotes(','))
        .find_map(accept)
}

/// Splits on `sep` where it is not inside a quoted string.
fn split_outside_quotes(sep: char) -> impl Fn(&str) -> Vec<&str> {
    move |s: &str| {
        let mut parts = Vec::new();
        let (mut start, mut quoted) = (0, false);
        for (i, ch) in s.char_indices() {
            if ch == '"' {
                quoted = !quoted;
            } else if ch == sep && !quoted {
                parts.push(&s[start..i]);
                start = i + 1;
            }
        }
        parts.push(&s[start..]);
        parts
    }
}

/// The answer to one offer, if it is permessage-deflate and acceptable.
fn accept(offer: &str) -> Option<String> {
    let mut params = split_outside_quotes(';')(offer).into_iter();
    if !params
        .next()?
        .trim()
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return None;
    }
    let mut seen = Vec::new();
    let mut server_window = None;
    for p in params {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p.trim(), None),
        };
        let name = name.to_ascii_lowercase();
        // A parameter given twice makes the offer invalid (§7.1).
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => server_window = Some(window_bits(v)?),
            // Without a value: the client can take a limit; none is asked.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    if server_window.is_some_and(|w| w < 15) {
        return None;
    }
    let mut answer =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if server_window.is_some() {
        answer.push_str("; server_max_window_bits=15");
    }
    Some(answer)
}

/// A window size parameter: 8 to 15, digits only.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 2 {
        return None;
    }
    let bits: u8 = v.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn offers_browsers_and_libraries_make_are_accepted() {
        // Chromium, Firefox, ws, Bun.
        assert_eq!(
            negotiate(["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(BOTH)
        );
        assert_eq!(negotiate(["permessage-deflate"]).as_deref(), Some(BOTH));
        assert_eq!(
            negotiate([
                "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
            ])
            .as_deref(),
            Some(BOTH)
        );
        assert_eq!(
            negotiate(["permessage-deflate; client_max_window_bits=10"]).as_deref(),
            Some(BOTH)
        );
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=15"]).as_deref(),
            Some(format!("{BOTH}; server_max_window_bits=15").as_str())
        );
        assert_eq!(
            negotiate(["Permessage-Deflate; server_max_window_bits=\"15\""]).as_deref(),
            Some(format!("{BOTH}; server_max_window_bits=15").as_str())
        );
    }

    #[test]
    fn offers_that_cannot_be_honoured_are_declined_or_skipped() {
        assert_eq!(negotiate([]), None);
        assert_eq!(negotiate(["x-webkit-deflate-frame"]), None);
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=8"]),
            None
        );
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=16"]),
            None
        );
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits"]),
            None
        );
        assert_eq!(
            negotiate(["permessage-deflate; client_max_window_bits=7"]),
            None
        );
        assert_eq!(negotiate(["permessage-deflate; unknown_param"]), None);
        assert_eq!(
            negotiate([
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
            ]),
            None
        );
        assert_eq!(
            negotiate(["permessage-deflate; server_no_context_takeover=1"]),
            None
        );
        // The next acceptable offer wins, across headers and within one.
        assert_eq!(
            negotiate([
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_no_context_takeover"
            ])
            .as_deref(),
            Some(BOTH)
        );
        assert_eq!(
            negotiate([
                "foo",
                "permessage-deflate; server_max_window_bits=9",
                "permessage-deflate"
            ])
            .as_deref(),
            Some(BOTH)
        );
    }
}
