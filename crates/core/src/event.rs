//! The event of the aggregator contract (DESIGN §3) and its validation.
//!
//! Input arrives as untyped JSON so that a bad event can be reported precisely: which event of
//! the batch (its index) and which field, rather than serde's first complaint.

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
/// it, when it happened and an arbitrary JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub topic: String,
    pub event_id: String,
    pub timestamp: DateTime<Utc>,
    pub source: String,
    #[serde(default)]
    pub payload: Map<String, Value>,
}

/// Why an event (or a batch of them) was rejected, naming the event's index and the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ValidationError {
    /// Position of the bad event in the batch; `None` when the batch itself is at fault.
    pub index: Option<usize>,
    /// The field at fault, e.g. `topic`, or `events` for the batch.
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

impl Event {
    /// Validates one event given as JSON; `index` is its position in the batch, for errors.
    ///
    /// Unknown fields are ignored; a missing or `null` payload becomes `{}`.
    pub fn from_json(value: &Value, index: Option<usize>) -> Result<Self, ValidationError> {
        let err = |field: &str, message: &str| ValidationError::new(index, field, message);
        let obj = value
            .as_object()
            .ok_or_else(|| err("event", "must be a JSON object"))?;
        let name = |field: &str| -> Result<String, ValidationError> {
            match obj.get(field) {
                None | Some(Value::Null) => Err(err(field, "is required")),
                Some(Value::String(s)) => {
                    let chars = s.chars().count();
                    if chars == 0 || chars > MAX_NAME_CHARS {
                        Err(err(field, "must be 1 to 255 characters long"))
                    } else if s.contains('\0') {
                        Err(err(field, NUL_MESSAGE))
                    } else {
                        Ok(s.clone())
                    }
                }
                Some(_) => Err(err(field, "must be a string")),
            }
        };
        let topic = name("topic")?;
        let event_id = name("event_id")?;
        let source = name("source")?;
        let timestamp = match obj.get("timestamp") {
            None | Some(Value::Null) => return Err(err("timestamp", "is required")),
            Some(Value::String(s)) => parse_timestamp(s)
                .ok_or_else(|| {
                    err(
                        "timestamp",
                        "must be an ISO 8601 date-time, e.g. 2025-01-31T12:00:00Z",
                    )
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
                })?,
            Some(_) => return Err(err("timestamp", "must be an ISO 8601 date-time string")),
        };
        let payload = match obj.get("payload") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err(err("payload", "must be a JSON object")),
        };
        check_storable(&payload, 1, &mut String::from("payload"))
            .map_err(|(path, message)| ValidationError::new(index, &path, message))?;
        Ok(Self {
            topic,
            event_id,
            timestamp,
            source,
            payload,
        })
    }
}

/// What a client is told about U+0000, which Postgres cannot hold in text or jsonb.
const NUL_MESSAGE: &str = "must not contain the character U+0000 (Postgres cannot store it)";

/// Checks what Postgres's jsonb would refuse although JSON allows it: U+0000 in a key or a
/// string, and nesting deeper than [`MAX_PAYLOAD_DEPTH`]. Numbers need no check: serde_json
/// refuses those outside f64 while parsing and jsonb's numeric holds every f64. On failure,
/// returns the path of the offending value (`payload.a[2].b`) and what is wrong with it.
fn check_storable(
    map: &Map<String, Value>,
    depth: usize,
    path: &mut String,
) -> Result<(), (String, &'static str)> {
    if depth > MAX_PAYLOAD_DEPTH {
        return Err((path.clone(), "is nested too deeply (at most 100 levels)"));
    }
    for (key, value) in map {
        let len = path.len();
        path.push('.');
        path.push_str(key);
        if key.contains('\0') {
            return Err((path.clone(), NUL_MESSAGE));
        }
        check_value(value, depth, path)?;
        path.truncate(len);
    }
    Ok(())
}

fn check_value(
    value: &Value,
    depth: usize,
    path: &mut String,
) -> Result<(), (String, &'static str)> {
    match value {
        Value::String(s) if s.contains('\0') => Err((path.clone(), NUL_MESSAGE)),
        Value::Object(map) => check_storable(map, depth + 1, path),
        Value::Array(items) => {
            if depth + 1 > MAX_PAYLOAD_DEPTH {
                return Err((path.clone(), "is nested too deeply (at most 100 levels)"));
            }
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_value(item, depth + 1, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Validates a publish body: `{"events":[…]}`, a bare array, or a single event.
///
/// All or nothing: the first bad event rejects the whole batch.
pub fn parse_batch(body: &Value) -> Result<Vec<Event>, ValidationError> {
    let items = match body {
        Value::Array(items) => items,
        Value::Object(obj) if obj.contains_key("events") => match &obj["events"] {
            Value::Array(items) => items,
            _ => return Err(ValidationError::new(None, "events", "must be a list")),
        },
        Value::Object(_) => return Event::from_json(body, None).map(|e| vec![e]),
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
    items
        .iter()
        .enumerate()
        .map(|(i, item)| Event::from_json(item, Some(i)))
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
        assert_eq!(Value::Object(e.payload), good()["payload"]);
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
    fn missing_payload_defaults_to_empty_object() {
        let mut e = good();
        e.as_object_mut().expect("object").remove("payload");
        assert!(
            Event::from_json(&e, None)
                .expect("valid")
                .payload
                .is_empty()
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
