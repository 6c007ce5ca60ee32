//! One pass over a payload's raw JSON text (already known to be valid JSON) that finds what
//! Postgres's jsonb would refuse although JSON allows it, without building a tree:
//! - U+0000 in a string or key (jsonb refuses `\u0000`), and an unpaired surrogate escape;
//! - nesting deeper than [`MAX_PAYLOAD_DEPTH`];
//! - numbers outside jsonb's numeric: more than 131,072 digits before the decimal point or
//!   16,383 after it (numbers are kept exactly as sent, so `1e400` is fine and `1e200000` not).
//!
//! It also counts the payload's bytes without insignificant whitespace, for the size limit.

use super::MAX_PAYLOAD_DEPTH;

/// Postgres numeric: weight of at most 32,767 groups of 4 digits, display scale 16,383.
const MAX_DIGITS_BEFORE_POINT: i64 = 131_072;
const MAX_DIGITS_AFTER_POINT: i64 = 16_383;

pub(super) const NUL_MESSAGE: &str =
    "must not contain the character U+0000 (Postgres cannot store it)";

/// What is wrong and where: the path of the value (`payload.a[2].b`) and a message.
pub(super) type Refusal = (String, &'static str);

enum Frame {
    Object { key: Option<(usize, usize)> },
    Array { index: usize },
}

/// Checks `raw` (a JSON object) and returns its length without insignificant whitespace.
pub(super) fn scan(raw: &str) -> Result<usize, Refusal> {
    let b = raw.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut compact = 0;
    let mut i = 0;
    // Inside an object, whether the next string is a key.
    let mut expect_key = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'{' | b'[' => {
                stack.push(if c == b'{' {
                    Frame::Object { key: None }
                } else {
                    Frame::Array { index: 0 }
                });
                expect_key = c == b'{';
                if stack.len() > MAX_PAYLOAD_DEPTH {
                    return Err((
                        path(raw, &stack[..stack.len() - 1]),
                        "is nested too deeply (at most 100 levels)",
                    ));
                }
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
                i += 1;
            }
            b',' => {
                match stack.last_mut() {
                    Some(Frame::Array { index }) => *index += 1,
                    Some(Frame::Object { .. }) => expect_key = true,
                    None => {}
                }
                i += 1;
            }
            b':' => {
                expect_key = false;
                i += 1;
            }
            b'"' => {
                let end = string_end(b, i + 1).ok_or_else(|| refusal(raw, &stack))?;
                if expect_key && let Some(Frame::Object { key }) = stack.last_mut() {
                    *key = Some((i + 1, end));
                }
                check_escapes(&b[i + 1..end]).map_err(|m| (path(raw, &stack), m))?;
                compact += end + 1 - i;
                i = end + 1;
                continue;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                check_number(&raw[start..i]).map_err(|m| (path(raw, &stack), m))?;
                compact += i - start;
                continue;
            }
            _ => i += 1, // the letters of true, false, null
        }
        compact += 1;
    }
    Ok(compact)
}

/// The index of the closing quote of a string whose content starts at `from`.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            b'"' => return Some(i),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// Refuses `\u0000` and surrogate escapes that are not a high one followed by a low one
/// (serde_json lets such strings pass when it only skips over them; Postgres refuses them).
fn check_escapes(s: &[u8]) -> Result<(), &'static str> {
    let mut i = 0;
    let mut pending_high = false;
    while i < s.len() {
        if s[i] != b'\\' {
            if pending_high {
                return Err("holds an unpaired surrogate escape (\\ud800-\\udfff)");
            }
            i += 1;
            continue;
        }
        if s.get(i + 1) != Some(&b'u') {
            if pending_high {
                return Err("holds an unpaired surrogate escape (\\ud800-\\udfff)");
            }
            i += 2;
            continue;
        }
        let hex = s
            .get(i + 2..i + 6)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok())
            .ok_or("holds a malformed \\u escape")?;
        match hex {
            0 => return Err(NUL_MESSAGE),
            0xD800..=0xDBFF if !pending_high => pending_high = true,
            0xDC00..=0xDFFF if pending_high => pending_high = false,
            0xD800..=0xDFFF => return Err("holds an unpaired surrogate escape (\\ud800-\\udfff)"),
            _ if pending_high => {
                return Err("holds an unpaired surrogate escape (\\ud800-\\udfff)");
            }
            _ => {}
        }
        i += 6;
    }
    if pending_high {
        return Err("holds an unpaired surrogate escape (\\ud800-\\udfff)");
    }
    Ok(())
}

/// Refuses numbers Postgres's numeric cannot hold.
fn check_number(n: &str) -> Result<(), &'static str> {
    let n = n.strip_prefix('-').unwrap_or(n);
    let (mantissa, exponent) = match n.find(['e', 'E']) {
        Some(at) => (&n[..at], &n[at + 1..]),
        None => (n, "0"),
    };
    let exponent: i64 =
        exponent
            .trim_start_matches('+')
            .parse()
            .unwrap_or(if exponent.starts_with('-') {
                i64::MIN / 2
            } else {
                i64::MAX / 2
            });
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let int = int.trim_start_matches('0');
    let before = int.len() as i64 + exponent;
    let after = frac.len() as i64 - exponent;
    let is_zero = int.is_empty() && frac.bytes().all(|d| d == b'0');
    if !is_zero && (before > MAX_DIGITS_BEFORE_POINT || after > MAX_DIGITS_AFTER_POINT) {
        return Err("is a number out of the range Postgres can store");
    }
    Ok(())
}

fn refusal(raw: &str, stack: &[Frame]) -> Refusal {
    (path(raw, stack), "is not valid JSON")
}

/// `payload.key[3].other` for the value being scanned.
fn path(raw: &str, stack: &[Frame]) -> String {
    let mut path = String::from("payload");
    // The first frame is the payload object itself.
    for (depth, frame) in stack.iter().enumerate() {
        match frame {
            Frame::Object {
                key: Some((from, to)),
            } => {
                path.push('.');
                // The key as sent, escapes decoded where possible.
                let text = &raw[*from..*to];
                match serde_json::from_str::<String>(&format!("\"{text}\"")) {
                    Ok(key) => path.push_str(&key),
                    Err(_) => path.push_str(text),
                }
            }
            Frame::Object { key: None } => {}
            Frame::Array { index } if depth > 0 => path.push_str(&format!("[{index}]")),
            Frame::Array { .. } => {}
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(raw: &str) -> Refusal {
        scan(raw).expect_err(raw)
    }

    #[test]
    fn counts_bytes_without_whitespace() {
        let raw = r#"{ "a" : [1, 2.5, "x y"], "b": { "c": null } }"#;
        let compact =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(raw).expect("json"))
                .expect("json");
        assert_eq!(scan(raw), Ok(compact.len()));
    }

    #[test]
    fn finds_nul_in_strings_and_keys_with_its_path() {
        assert_eq!(refused(r#"{"a":"x\u0000"}"#).0, "payload.a");
        assert_eq!(refused(r#"{"k\u0000":1}"#).0, "payload.k\u{0}");
        assert_eq!(
            refused(r#"{"a":[1,{"b":["\u0000"]}]}"#).0,
            "payload.a[1].b[0]"
        );
        // An escaped backslash followed by u0000 is text, not U+0000.
        assert!(scan(r#"{"a":"\\u0000"}"#).is_ok());
    }

    #[test]
    fn refuses_unpaired_surrogates_and_keeps_pairs() {
        assert!(scan(r#"{"a":"\ud83d\ude80"}"#).is_ok());
        for bad in [
            r#"{"a":"\ud83d"}"#,
            r#"{"a":"\ude80x"}"#,
            r#"{"a":"\ud83dx"}"#,
        ] {
            assert_eq!(refused(bad).0, "payload.a", "{bad}");
        }
    }

    #[test]
    fn refuses_numbers_numeric_cannot_hold_and_keeps_the_rest() {
        for ok in [
            "1e400",
            "-1.5e-300",
            "123456789012345678901234567890.5",
            "0e999999",
            "0.0",
        ] {
            assert!(scan(&format!(r#"{{"n":{ok}}}"#)).is_ok(), "{ok}");
        }
        for bad in ["1e200000", "1e-20000", "-9E+131072"] {
            assert_eq!(
                refused(&format!(r#"{{"n":{bad}}}"#)).0,
                "payload.n",
                "{bad}"
            );
        }
    }

    #[test]
    fn bounds_nesting() {
        let nest = |levels: usize| "{\"n\":".repeat(levels - 1) + "{}" + &"}".repeat(levels - 1);
        assert!(scan(&nest(MAX_PAYLOAD_DEPTH)).is_ok());
        let (path, _) = refused(&nest(MAX_PAYLOAD_DEPTH + 1));
        assert!(path.starts_with("payload.n.n"), "{path}");
    }
}
