//! The three input messages of DESIGN §5, parsed strictly: money as integer cents (never
//! binary floats), quantities as non-negative integers, dates as dates. Anything else is
//! malformed and goes to the dead-letter topic with the reason.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, de::Error as _};

/// Which input a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Sales,
    Inventory,
    Clients,
}

/// A sale (`topic-raw-sales`). Its text borrows from the message where it can (it has no
/// escapes): sales are most of the input, and their client and product ids are copied only
/// into new keys (a rollup cell's key is still built for each line).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Sale<'a> {
    #[allow(dead_code, reason = "parsed to validate the message; not aggregated")]
    #[serde(borrow)]
    pub(crate) invoice_id: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) client_id: Cow<'a, str>,
    #[serde(deserialize_with = "date_time")]
    pub(crate) timestamp: DateTime<Utc>,
    #[serde(deserialize_with = "cents")]
    pub(crate) total_amount: i64,
    #[serde(borrow)]
    pub(crate) items: Vec<LineItem<'a>>,
}

/// One line of a sale.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LineItem<'a> {
    #[serde(borrow)]
    pub(crate) product_id: Cow<'a, str>,
    pub(crate) quantity: u64,
}

/// An inventory update (`topic-inventory-updates`): the product's latest known state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Inventory {
    pub(crate) product_id: String,
    pub(crate) name: String,
    pub(crate) category: String,
    #[serde(deserialize_with = "cents", rename = "buy_price")]
    pub(crate) buy_cents: i64,
    #[serde(deserialize_with = "cents", rename = "sell_price")]
    pub(crate) sell_cents: i64,
    /// Minimum margin as basis points (0.15 → 1500).
    #[serde(deserialize_with = "basis_points", rename = "min_margin_threshold")]
    pub(crate) min_margin_bp: i64,
    pub(crate) quantity: u64,
    #[serde(deserialize_with = "date_time")]
    pub(crate) last_movement: DateTime<Utc>,
    pub(crate) expiry_date: NaiveDate,
    pub(crate) batch_no: String,
}

/// A client record (`topic-clients`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Client {
    pub(crate) client_id: String,
    pub(crate) name: String,
    #[serde(deserialize_with = "cents", rename = "total_revenue_generated")]
    pub(crate) reported_revenue_cents: i64,
    pub(crate) loyalty_tier: String,
}

/// A parsed message.
#[derive(Debug, Clone)]
pub(crate) enum Input<'a> {
    Sale(Sale<'a>),
    Inventory(Inventory),
    Client(Client),
}

/// Parses a message of `kind`; `Err` holds the reason it is malformed.
pub(crate) fn parse(kind: Kind, payload: Option<&[u8]>) -> Result<Input<'_>, String> {
    let bytes = payload.ok_or_else(|| "empty message (no value)".to_owned())?;
    // Checked as a whole first (std's check is vectorised), so the parser need not check each
    // string as it goes.
    let text = std::str::from_utf8(bytes).map_err(|e| format!("bad JSON: not UTF-8 ({e})"))?;
    let input = match kind {
        Kind::Sales => Input::Sale(serde_json::from_str(text).map_err(reason)?),
        Kind::Inventory => Input::Inventory(serde_json::from_str(text).map_err(reason)?),
        Kind::Clients => Input::Client(serde_json::from_str(text).map_err(reason)?),
    };
    check(&input)?;
    Ok(input)
}

fn reason(err: serde_json::Error) -> String {
    use serde_json::error::Category;
    let class = match err.classify() {
        Category::Syntax | Category::Eof => "bad JSON",
        Category::Data => "bad field",
        Category::Io => "unreadable",
    };
    format!("{class}: {err}")
}

fn check(input: &Input<'_>) -> Result<(), String> {
    let empty = |field: &str, value: &str| {
        if value.trim().is_empty() {
            Err(format!("bad field: `{field}` is empty"))
        } else {
            Ok(())
        }
    };
    match input {
        Input::Sale(s) => {
            empty("invoice_id", &s.invoice_id)?;
            empty("client_id", &s.client_id)?;
            if s.items.is_empty() {
                return Err("bad field: `items` is empty".into());
            }
            // The field's name is formatted only for the error: three allocations per sale
            // were a tenth of the consuming loop's CPU under a backlog.
            if let Some(i) = (s.items.iter()).position(|item| item.product_id.trim().is_empty()) {
                return Err(format!("bad field: `items[{i}].product_id` is empty"));
            }
        }
        Input::Inventory(p) => {
            empty("product_id", &p.product_id)?;
            empty("category", &p.category)?;
            if p.buy_cents < 0 || p.sell_cents < 0 {
                return Err("bad field: negative price".into());
            }
        }
        Input::Client(c) => empty("client_id", &c.client_id)?,
    }
    Ok(())
}

/// A JSON number literal with at most `scale` decimals as an integer of 10^-scale units,
/// exactly: read from the literal's own digits (an exponent shifts them), never through a
/// binary float, so any amount that fits in an `i64` of units is exact to the last digit.
fn fixed_point(literal: &str, scale: u32) -> Result<i64, String> {
    let not_a_number = || format!("{literal} is not a JSON number");
    let (negative, rest) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => {
            let exp = rest[at + 1..].strip_prefix('+').unwrap_or(&rest[at + 1..]);
            let exp: i64 = exp.parse().map_err(|_| not_a_number())?;
            (&rest[..at], exp)
        }
        None => (rest, 0),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let dangling_point = mantissa.ends_with('.');
    if whole.is_empty() || dangling_point || !digits(whole) || !digits(frac) {
        return Err(not_a_number());
    }
    // The literal is `digits × 10^shift` units: with a negative shift, its last digits
    // fall below a unit and must be zeros.
    let shift = (exponent.saturating_add(i64::from(scale))).saturating_sub(frac.len() as i64);
    let count = whole.len() + frac.len();
    let kept = if shift >= 0 {
        count
    } else {
        count.saturating_sub(usize::try_from(shift.unsigned_abs()).unwrap_or(usize::MAX))
    };
    let too_large = || format!("{literal} is too large");
    let mut value: i64 = 0;
    for (i, b) in whole.bytes().chain(frac.bytes()).enumerate() {
        if i >= kept {
            if b != b'0' {
                return Err(format!("{literal} has more than {scale} decimals"));
            }
            continue;
        }
        value = (value.checked_mul(10))
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or_else(too_large)?;
    }
    if value != 0 && shift > 0 {
        let factor = u32::try_from(shift)
            .ok()
            .and_then(|s| 10_i64.checked_pow(s))
            .ok_or_else(too_large)?;
        value = value.checked_mul(factor).ok_or_else(too_large)?;
    }
    Ok(if negative { -value } else { value })
}

/// A JSON number's literal text, as the message has it.
fn literal<'de, D: Deserializer<'de>>(d: D) -> Result<&'de str, D::Error> {
    let raw = <&serde_json::value::RawValue>::deserialize(d)?;
    Ok(raw.get())
}

fn cents<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    fixed_point(literal(d)?, 2).map_err(D::Error::custom)
}

fn basis_points<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    fixed_point(literal(d)?, 4).map_err(D::Error::custom)
}

/// A JSON string, borrowed from the message unless it has escapes.
struct Text;

impl<'de> serde::de::Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// RFC 3339, or a date-time without offset (taken as UTC).
fn date_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = d.deserialize_str(Text)?;
    if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|e| D::Error::custom(format!("`{text}` is not a date-time: {e}")))
}

/// A BSON date-time (milliseconds).
pub(crate) fn bson_time(t: DateTime<Utc>) -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::from_millis(t.timestamp_millis())
}

/// Back from a BSON date-time.
pub(crate) fn chrono_time(t: mongodb::bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or_default()
}

/// Cents as `123.45`.
pub(crate) fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(json: &str) -> Result<Input<'_>, String> {
        parse(Kind::Sales, Some(json.as_bytes()))
    }

    #[test]
    fn money_is_exact_cents() {
        assert_eq!(fixed_point("4.44", 2), Ok(444));
        assert_eq!(fixed_point("0.1", 2), Ok(10));
        assert_eq!(fixed_point("12", 2), Ok(1200));
        assert_eq!(fixed_point("-3.5", 2), Ok(-350));
        assert_eq!(fixed_point("0.15", 4), Ok(1500));
        assert_eq!(fixed_point("123456.78", 2), Ok(12_345_678));
        assert_eq!(fixed_point("1.50000", 2), Ok(150));
        assert_eq!(fixed_point("1.5e2", 2), Ok(15_000));
        assert_eq!(fixed_point("125E-2", 2), Ok(125));
        assert_eq!(fixed_point("0", 2), Ok(0));
        assert_eq!(fixed_point("0e400", 2), Ok(0));
        // Beyond what an f64 holds exactly (17 significant digits): still to the cent.
        assert_eq!(
            fixed_point("12345678901234567.89", 2),
            Ok(1_234_567_890_123_456_789)
        );
        assert!(
            fixed_point("1.005", 2)
                .unwrap_err()
                .contains("more than 2 decimals")
        );
        assert!(
            fixed_point("1e-3", 2)
                .unwrap_err()
                .contains("more than 2 decimals")
        );
        assert!(
            fixed_point("92233720368547758.08", 2)
                .unwrap_err()
                .contains("too large")
        );
        assert!(fixed_point("1e30", 2).unwrap_err().contains("too large"));
        // Exponents at the ends of an i64: an error, never an overflow.
        assert!(fixed_point("0.001e-9223372036854775808", 2).is_err());
        assert!(fixed_point("1e9223372036854775807", 4).is_err());
        assert_eq!(fixed_point("0.000e-9223372036854775808", 2), Ok(0));
        for bad in ["\"1\"", "null", "true", "1.", ".5", "-", "1e", "[1]"] {
            assert!(
                fixed_point(bad, 2)
                    .unwrap_err()
                    .contains("is not a JSON number"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_good_sale_parses() {
        let s = sale(
            r#"{"invoice_id":"I1","client_id":"C1","timestamp":"2025-01-01T00:00:00.000Z",
                "total_amount":10.5,"items":[{"product_id":"P1","quantity":2}]}"#,
        )
        .expect("valid");
        let Input::Sale(s) = s else { panic!("a sale") };
        assert_eq!((s.total_amount, s.items[0].quantity), (1050, 2));
    }

    #[test]
    fn malformed_sales_say_why() {
        let bad = [
            ("{not json", "bad JSON"),
            (
                r#"{"invoice_id":"I","timestamp":"2025-01-01T00:00:00Z","total_amount":1,"items":[]}"#,
                "client_id",
            ),
            (
                r#"{"invoice_id":"I","client_id":"C","timestamp":"2025-01-01T00:00:00Z","total_amount":"1","items":[{"product_id":"P","quantity":1}]}"#,
                "bad field",
            ),
            (
                r#"{"invoice_id":"I","client_id":"C","timestamp":"2025-01-01T00:00:00Z","total_amount":1,"items":[{"product_id":"P","quantity":-2}]}"#,
                "-2",
            ),
            (
                r#"{"invoice_id":"I","client_id":"C","timestamp":"soon","total_amount":1,"items":[{"product_id":"P","quantity":1}]}"#,
                "date-time",
            ),
            (
                r#"{"invoice_id":"I","client_id":"C","timestamp":"2025-01-01T00:00:00Z","total_amount":1,"items":[{"product_id":"P","quantity":1},{"product_id":" ","quantity":1}]}"#,
                "`items[1].product_id` is empty",
            ),
        ];
        for (json, why) in bad {
            let err = sale(json).expect_err(json);
            assert!(err.contains(why), "{json}: {err}");
        }
        assert!(parse(Kind::Sales, None).is_err());
        let not_utf8 = parse(Kind::Sales, Some(b"{\"invoice_id\":\"\xff\"}")).unwrap_err();
        assert!(not_utf8.contains("bad JSON: not UTF-8"), "{not_utf8}");
    }

    #[test]
    fn inventory_prices_and_threshold() {
        let p = parse(
            Kind::Inventory,
            Some(
                br#"{"product_id":"P1","name":"n","category":"dairy","buy_price":3.7,
                "sell_price":4.44,"min_margin_threshold":0.15,"quantity":3,
                "last_movement":"2025-01-01T00:00:00Z","expiry_date":"2025-02-01","batch_no":"B"}"#,
            ),
        )
        .expect("valid");
        let Input::Inventory(p) = p else {
            panic!("inventory")
        };
        assert_eq!(
            (p.buy_cents, p.sell_cents, p.min_margin_bp),
            (370, 444, 1500)
        );
        assert_eq!(format_cents(-1234), "-12.34");
        assert_eq!(format_cents(5), "0.05");
    }
}
