//! The event of the aggregator contract (DESIGN §3) and its validation.
//!
//! A publish body is read once into borrowed raw JSON: each event's fields are checked one by
//! one, so a bad event is reported precisely (which event of the batch, which field) rather than
//! by serde's first complaint, and the payload is never built into a tree: it is checked in one
//! pass over its text ([`payload`]) and carried as that text, numbers exactly as sent, to the
//! queue and on to Postgres.

mod payload;

use std::borrow::Cow;

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, value::RawValue};

/// Longest `topic`, `event_id` or `source`, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// Deepest nesting of objects and arrays in a payload (the payload object itself is level 1).
/// serde_json refuses input nested 128 levels or more, and an accepted event travels inside
/// wrappers (`{"v":"1","events":[event]}` on the queue, three levels), so without this bound an
/// event accepted at `/publish` could be undecodable by the worker. Postgres's jsonb allows
/// thousands of levels; 100 leaves room for future wrappers.
pub const MAX_PAYLOAD_DEPTH: usize = 100;

/// Earliest and latest timestamp accepted: the ISO 8601 four-digit years. Postgres holds
/// 4713 BC to 294276 AD, but a client sending a year outside 1–9999 has a bug we should name.
const MIN_YEAR: i32 = 1;
const MAX_YEAR: i32 = 9999;

/// One event: where it belongs (`topic`), its identity within the topic (`event_id`), who sent
/// it, when it happened and a JSON object, kept as the text it arrived as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub topic: String,
    pub event_id: String,
    pub timestamp: DateTime<Utc>,
    pub source: String,
    #[serde(default = "empty_payload")]
    pub payload: Box<RawValue>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.topic,
            &self.event_id,
            self.timestamp,
            &self.source,
            self.payload.get(),
        ) == (
            &other.topic,
            &other.event_id,
            other.timestamp,
            &other.source,
            other.payload.get(),
        )
    }
}

fn empty_payload() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("{} is JSON")
}

/// Why an event (or a batch of them) was rejected, naming the event's index and the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ValidationError {
    /// Position of the bad event in the batch; `None` when the batch itself is at fault.
    pub index: Option<usize>,
    /// The field at fault, e.g. `topic`, `payload.items[2].note`, or `events` for the batch.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    fn new(index: Option<usize>, field: &str, message: impl Into<String>) -> Self {
        Self {
            index,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn describe(&self) -> String {
        match self.index {
            Some(i) => format!("event {i}: `{}` {}", self.field, self.message),
            None => format!("`{}` {}", self.field, self.message),
        }
    }
}

/// Size limits applied while a body is parsed, so nothing is measured twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most events in one body (`events` is named when over).
    pub max_events: usize,
    /// Largest payload in bytes of compact JSON (`payload` of that event is named when over).
    pub max_payload_bytes: usize,
}

impl Limits {
    /// No limits beyond the contract's.
    pub const NONE: Self = Self {
        max_events: usize::MAX,
        max_payload_bytes: usize::MAX,
    };
}

/// Why a publish body was refused: not JSON at all (400), or JSON that breaks the contract (422).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("malformed JSON: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// An event's fields as sent, unparsed. `null` and missing are the same (`None`).
#[derive(Deserialize)]
struct RawFields<'a> {
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    /// Only for telling `{"events": …}` from a single event; present even when `null`.
    #[serde(borrow, default, deserialize_with = "present")]
    events: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl Event {
    /// Validates one event given as JSON; `index` is its position in the batch, for errors.
    ///
    /// Unknown fields are ignored; a missing or `null` payload becomes `{}`.
    pub fn from_json(value: &Value, index: Option<usize>) -> Result<Self, ValidationError> {
        let text = value.to_string();
        let fields = match value {
            Value::Object(_) => serde_json::from_str::<RawFields<'_>>(&text)
                .map_err(|e| ValidationError::new(index, "event", e.to_string()))?,
            _ => {
                return Err(ValidationError::new(
                    index,
                    "event",
                    "must be a JSON object",
                ));
            }
        };
        Self::from_fields(&fields, index, usize::MAX)
    }

    /// Validates one event from its raw JSON text.
    fn from_raw(
        raw: &RawValue,
        index: Option<usize>,
        max_payload_bytes: usize,
    ) -> Result<Self, ValidationError> {
        if !raw.get().starts_with('{') {
            return Err(ValidationError::new(
                index,
                "event",
                "must be a JSON object",
            ));
        }
        let fields = serde_json::from_str::<RawFields<'_>>(raw.get())
            .map_err(|e| ValidationError::new(index, "event", e.to_string()))?;
        Self::from_fields(&fields, index, max_payload_bytes)
    }

    fn from_fields(
        fields: &RawFields<'_>,
        index: Option<usize>,
        max_payload_bytes: usize,
    ) -> Result<Self, ValidationError> {
        let err = |field: &str, message: &str| ValidationError::new(index, field, message);
        let name = |field: &str, raw: Option<&RawValue>| -> Result<String, ValidationError> {
            let s = string_field(raw).map_err(|m| err(field, m))?;
            let chars = s.chars().count();
            if chars == 0 || chars > MAX_NAME_CHARS {
                Err(err(field, "must be 1 to 255 characters long"))
            } else if s.contains('\0') {
                Err(err(field, payload::NUL_MESSAGE))
            } else {
                Ok(s.into_owned())
            }
        };
        let topic = name("topic", fields.topic)?;
        let event_id = name("event_id", fields.event_id)?;
        let source = name("source", fields.source)?;
        let timestamp = string_field(fields.timestamp)
            .map_err(|m| match m {
                "must be a string" => err("timestamp", "must be an ISO 8601 date-time string"),
                m => err("timestamp", m),
            })
            .and_then(|s| {
                parse_timestamp(&s).ok_or_else(|| {
                    err(
                        "timestamp",
                        "must be an ISO 8601 date-time, e.g. 2025-01-31T12:00:00Z",
                    )
                })
            })
            .and_then(|t| {
                if (MIN_YEAR..=MAX_YEAR).contains(&t.year()) {
                    Ok(t)
                } else {
                    Err(err(
                        "timestamp",
                        "must be within the years 0001 to 9999 (UTC)",
                    ))
                }
            })?;
        let payload = match fields.payload {
            None => empty_payload(),
            Some(raw) if raw.get().starts_with('{') => {
                let size = payload::scan(raw.get())
                    .map_err(|(path, message)| ValidationError::new(index, &path, message))?;
                if size > max_payload_bytes {
                    return Err(ValidationError::new(
                        index,
                        "payload",
                        format!("must be at most {max_payload_bytes} bytes of JSON"),
                    ));
                }
                raw.to_owned()
            }
            Some(_) => return Err(err("payload", "must be a JSON object")),
        };
        Ok(Self {
            topic,
            event_id,
            timestamp,
            source,
            payload,
        })
    }
}

/// A string field's value: missing or `null` is "is required", another type "must be a string".
fn string_field(raw: Option<&RawValue>) -> Result<Cow<'_, str>, &'static str> {
    let raw = raw.ok_or("is required")?;
    if !raw.get().starts_with('"') {
        return Err("must be a string");
    }
    serde_json::from_str::<Cow<'_, str>>(raw.get()).map_err(|_| "must be a valid string")
}

/// Validates a publish body given as bytes: `{"events":[…]}`, a bare array, or a single event.
///
/// All or nothing: the first bad event rejects the whole batch. Payload sizes count compact JSON
/// (whitespace between tokens not counted).
pub fn parse_body(body: &[u8], limits: &Limits) -> Result<Vec<Event>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        BodyError::Malformed(serde::de::Error::custom(format!("body is not UTF-8: {e}")))
    })?;
    let whole: &RawValue = serde_json::from_str(text).map_err(BodyError::Malformed)?;
    parse_raw_batch(whole, limits).map_err(BodyError::Invalid)
}

/// Validates a publish body already parsed into a JSON value.
pub fn parse_batch(body: &Value) -> Result<Vec<Event>, ValidationError> {
    let text = body.to_string();
    let whole: &RawValue = serde_json::from_str(&text)
        .map_err(|e| ValidationError::new(None, "body", e.to_string()))?;
    parse_raw_batch(whole, &Limits::NONE)
}

fn parse_raw_batch(whole: &RawValue, limits: &Limits) -> Result<Vec<Event>, ValidationError> {
    let items: Vec<&RawValue> = match whole.get().as_bytes().first() {
        Some(b'[') => serde_json::from_str(whole.get())
            .map_err(|e| ValidationError::new(None, "events", e.to_string()))?,
        Some(b'{') => {
            let fields = serde_json::from_str::<RawFields<'_>>(whole.get())
                .map_err(|e| ValidationError::new(None, "event", e.to_string()))?;
            match fields.events {
                Some(list) if list.get().starts_with('[') => serde_json::from_str(list.get())
                    .map_err(|e| ValidationError::new(None, "events", e.to_string()))?,
                Some(_) => return Err(ValidationError::new(None, "events", "must be a list")),
                None => {
                    return Event::from_fields(&fields, None, limits.max_payload_bytes)
                        .map(|e| vec![e]);
                }
            }
        }
        _ => {
            return Err(ValidationError::new(
                None,
                "body",
                "must be an event, a list of events or {\"events\": [...]}",
            ));
        }
    };
    if items.is_empty() {
        return Err(ValidationError::new(None, "events", "must not be empty"));
    }
    if items.len() > limits.max_events {
        return Err(ValidationError::new(
            None,
            "events",
            format!("must hold at most {} events", limits.max_events),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| Event::from_raw(item, Some(i), limits.max_payload_bytes))
        .collect()
}

/// Parses an ISO 8601 date-time; without an offset it is taken as UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    const WITH_OFFSET: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"];
    const NAIVE: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    WITH_OFFSET
        .iter()
        .find_map(|f| DateTime::parse_from_str(s, f).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            NAIVE
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                .map(|t| t.and_utc())
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn good() -> Value {
        json!({"topic": "user.login", "event_id": "e-1", "source": "web",
               "timestamp": "2025-01-31T12:00:00Z", "payload": {"n": 1, "s": "é", "deep": {"a": [1, 2.5]}}})
    }

    #[test]
    fn accepts_a_valid_event_and_keeps_the_payload() {
        let e = Event::from_json(&good(), Some(0)).expect("valid");
        assert_eq!(e.topic, "user.login");
        assert_eq!(
            serde_json::from_str::<Value>(e.payload.get()).expect("json"),
            good()["payload"]
        );
    }

    #[test]
    fn accepts_the_three_body_shapes() {
        assert_eq!(parse_batch(&good()).expect("single").len(), 1);
        assert_eq!(
            parse_batch(&json!([good(), good()])).expect("array").len(),
            2
        );
        assert_eq!(
            parse_batch(&json!({"events": [good()]}))
                .expect("wrapped")
                .len(),
            1
        );
    }

    #[test]
    fn names_the_index_and_field_of_a_bad_event() {
        let mut bad = good();
        bad["topic"] = json!("");
        let err = parse_batch(&json!({"events": [good(), bad]})).expect_err("bad topic");
        assert_eq!((err.index, err.field.as_str()), (Some(1), "topic"));
        assert_eq!(
            err.to_string(),
            "event 1: `topic` must be 1 to 255 characters long"
        );
    }

    #[test]
    fn rejects_missing_wrong_typed_and_oversized_fields() {
        for (field, value) in [
            ("event_id", Value::Null),
            ("source", json!(7)),
            ("topic", json!("x".repeat(256))),
            ("timestamp", json!("yesterday")),
            ("timestamp", json!(1_700_000_000)),
            ("payload", json!([1, 2])),
        ] {
            let mut e = good();
            e[field] = value;
            let err = Event::from_json(&e, Some(3)).expect_err(field);
            assert_eq!((err.index, err.field.as_str()), (Some(3), field));
        }
    }

    #[test]
    fn rejects_what_postgres_cannot_store() {
        for (field, value, at) in [
            ("topic", json!("a\u{0}b"), "topic"),
            ("event_id", json!("\u{0}"), "event_id"),
            ("source", json!("x\u{0}"), "source"),
            ("payload", json!({"a": "x\u{0}"}), "payload.a"),
            ("payload", json!({"k\u{0}": 1}), "payload.k\u{0}"),
            (
                "payload",
                json!({"a": [1, {"b": ["\u{0}"]}]}),
                "payload.a[1].b[0]",
            ),
            ("timestamp", json!("0000-12-31T23:00:00Z"), "timestamp"),
            ("timestamp", json!("+10000-01-01T00:00:00"), "timestamp"),
            ("timestamp", json!("9999-12-31T23:00:00-02:00"), "timestamp"),
        ] {
            let mut e = good();
            e[field] = value;
            let err = Event::from_json(&e, Some(2)).expect_err(at);
            assert_eq!((err.index, err.field.as_str()), (Some(2), at));
        }
        assert!(Event::from_json(&good(), None).is_ok());
    }

    #[test]
    fn bounds_payload_nesting() {
        let nest = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!({ "n": v });
            }
            v
        };
        let mut e = good();
        e["payload"] = nest(MAX_PAYLOAD_DEPTH);
        assert!(Event::from_json(&e, None).is_ok());
        e["payload"] = nest(MAX_PAYLOAD_DEPTH + 1);
        let err = Event::from_json(&e, None).expect_err("too deep");
        assert!(err.field.starts_with("payload.n.n"), "{}", err.field);
    }

    #[test]
    fn counts_characters_not_bytes() {
        let mut e = good();
        e["topic"] = json!("é".repeat(255));
        assert!(Event::from_json(&e, None).is_ok());
    }

    #[test]
    fn rejects_an_empty_batch_and_a_non_list() {
        assert_eq!(parse_batch(&json!([])).expect_err("empty").field, "events");
        assert_eq!(
            parse_batch(&json!({"events": 3}))
                .expect_err("non-list")
                .field,
            "events"
        );
        assert_eq!(parse_batch(&json!("x")).expect_err("string").field, "body");
    }

    #[test]
    fn a_body_is_parsed_from_bytes_with_the_payload_kept_as_sent() {
        let body = br#"{"events": [{"topic": "t", "event_id": "1", "source": "s",
            "timestamp": "2025-01-31T12:00:00Z", "payload": {"big": 123456789012345678901234567890.50}}]}"#;
        let events = parse_body(body, &Limits::NONE).expect("valid");
        assert_eq!(
            events[0].payload.get(),
            r#"{"big": 123456789012345678901234567890.50}"#
        );
        assert!(matches!(
            parse_body(b"{nope", &Limits::NONE),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            parse_body(b"\xff", &Limits::NONE),
            Err(BodyError::Malformed(_))
        ));
        let Err(BodyError::Invalid(err)) = parse_body(br#"[{"topic": "t"}, 5]"#, &Limits::NONE)
        else {
            panic!("expected a validation error");
        };
        assert_eq!((err.index, err.field.as_str()), (Some(0), "event_id"));
        let Err(BodyError::Invalid(err)) = parse_body(br#"{"events": null}"#, &Limits::NONE) else {
            panic!("expected a validation error");
        };
        assert_eq!(err.field, "events");
    }

    #[test]
    fn limits_name_the_batch_or_the_payload_over_them() {
        let event = |payload: &str| {
            format!(
                r#"{{"topic":"t","event_id":"1","source":"s","timestamp":"2025-01-31T12:00:00Z","payload":{payload}}}"#
            )
        };
        let limits = Limits {
            max_events: 2,
            max_payload_bytes: 9,
        };
        // Compact size counts: `{"a": 12}` sent with spaces is 8 bytes, within 9.
        let fits = format!("[{}, {}]", event(r#"{ "a" : 12 }"#), event("{}"));
        assert_eq!(parse_body(fits.as_bytes(), &limits).expect("fits").len(), 2);
        let too_many = format!("[{0}, {0}, {0}]", event("{}"));
        let Err(BodyError::Invalid(err)) = parse_body(too_many.as_bytes(), &limits) else {
            panic!("expected a validation error");
        };
        assert_eq!((err.index, err.field.as_str()), (None, "events"));
        let too_big = format!("[{}, {}]", event("{}"), event(r#"{"a":"0123456"}"#));
        let Err(BodyError::Invalid(err)) = parse_body(too_big.as_bytes(), &limits) else {
            panic!("expected a validation error");
        };
        assert_eq!((err.index, err.field.as_str()), (Some(1), "payload"));
    }

    #[test]
    fn missing_payload_defaults_to_empty_object() {
        let mut e = good();
        e.as_object_mut().expect("object").remove("payload");
        assert_eq!(
            Event::from_json(&e, None).expect("valid").payload.get(),
            "{}"
        );
    }

    #[test]
    fn parses_iso8601_with_and_without_offsets() {
        let utc = parse_timestamp("2025-01-31T12:00:00Z").expect("Z");
        for s in [
            "2025-01-31T12:00:00",
            "2025-01-31T12:00:00.000",
            "2025-01-31 12:00:00",
            "2025-01-31T14:00:00+02:00",
            "2025-01-31T14:00:00+0200",
            "2025-01-31T12:00",
        ] {
            assert_eq!(parse_timestamp(s), Some(utc), "{s}");
        }
        assert_eq!(parse_timestamp("2025-13-01T00:00:00Z"), None);
    }
}
