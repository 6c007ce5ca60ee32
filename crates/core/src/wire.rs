//! Versioned messages as they travel through Redis, RabbitMQ and Kafka.
//!
//! Every message carries its version in a `v` tag, so a consumer can refuse (and dead-letter)
//! what it does not understand instead of misreading it, and a new version can be rolled out
//! while old messages are still queued.
//!
//! Deserializing reads a flat envelope (`v` beside the fields) and then picks the version, by
//! hand rather than with serde's internally tagged enums: those buffer the input first, and an
//! event's payload, kept as raw JSON text, cannot be read back from such a buffer.

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

use crate::{Error, Event, Result};

/// The message header (Kafka, AMQP) that carries a message's trace id from the service that
/// wrote it to every service that reads it, so their log lines can be joined (DESIGN §8).
/// Over HTTP the same id travels as `x-request-id`; in a Redis stream entry, as the batch's
/// `trace_id`.
pub const TRACE_HEADER: &str = "trace-id";

/// An event on its way to the aggregator's workers, with the trace id of the request that
/// accepted it so logs of both sides can be joined.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "v")]
pub enum EventMessage {
    /// First version: the validated event as is.
    #[serde(rename = "1")]
    V1 {
        event: Event,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
    },
}

impl EventMessage {
    /// Wraps an event in the current version.
    pub fn new(event: Event, trace_id: Option<String>) -> Self {
        Self::V1 { event, trace_id }
    }

    /// The event, whatever the version.
    pub fn into_event(self) -> Event {
        match self {
            Self::V1 { event, .. } => event,
        }
    }

    /// JSON bytes for a broker.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(Error::Wire)
    }

    /// Decodes JSON bytes from a broker; an unknown version or a malformed body is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(Error::Wire)
    }
}

/// A validated batch of events as one queue entry: what the aggregator's `/publish` appends to
/// its Redis stream, so a batch costs one XADD however many events it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "v")]
pub enum BatchMessage {
    /// First version.
    #[serde(rename = "1")]
    V1 {
        events: Vec<Event>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
    },
}

impl BatchMessage {
    /// Wraps events in the current version.
    pub fn new(events: Vec<Event>, trace_id: Option<String>) -> Self {
        Self::V1 { events, trace_id }
    }

    /// The events, whatever the version.
    pub fn into_events(self) -> Vec<Event> {
        match self {
            Self::V1 { events, .. } => events,
        }
    }

    /// JSON bytes for a broker.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(Error::Wire)
    }

    /// Decodes JSON bytes; an unknown version or a malformed body is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(Error::Wire)
    }
}

/// Every version's fields side by side; each version takes what it needs.
#[derive(Deserialize)]
struct Envelope {
    v: String,
    #[serde(default)]
    event: Option<Event>,
    #[serde(default)]
    events: Option<Vec<Event>>,
    #[serde(default)]
    trace_id: Option<String>,
}

fn unknown_version<E: serde::de::Error>(v: &str) -> E {
    E::custom(format!("unknown message version {v:?}"))
}

impl<'de> Deserialize<'de> for EventMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let e = Envelope::deserialize(d)?;
        match (e.v.as_str(), e.event) {
            ("1", Some(event)) => Ok(Self::V1 {
                event,
                trace_id: e.trace_id,
            }),
            ("1", None) => Err(D::Error::missing_field("event")),
            (v, _) => Err(unknown_version(v)),
        }
    }
}

impl<'de> Deserialize<'de> for BatchMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let e = Envelope::deserialize(d)?;
        match (e.v.as_str(), e.events) {
            ("1", Some(events)) => Ok(Self::V1 {
                events,
                trace_id: e.trace_id,
            }),
            ("1", None) => Err(D::Error::missing_field("events")),
            (v, _) => Err(unknown_version(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event() -> Event {
        let v = json!({"topic": "t", "event_id": "1", "source": "s",
                       "timestamp": "2025-01-01T00:00:00Z", "payload": {"k": [1, "ü", {"n": null}]}});
        Event::from_json(&v, None).expect("valid")
    }

    #[test]
    fn round_trips_and_carries_its_version() {
        let msg = EventMessage::new(event(), Some("abc".into()));
        let bytes = msg.to_bytes().expect("encode");
        let raw: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(raw["v"], "1");
        assert_eq!(EventMessage::from_bytes(&bytes).expect("decode"), msg);
    }

    #[test]
    fn batches_round_trip() {
        let msg = BatchMessage::new(vec![event(), event()], None);
        let back = BatchMessage::from_bytes(&msg.to_bytes().expect("encode")).expect("decode");
        assert_eq!(back.into_events().len(), 2);
        assert!(BatchMessage::from_bytes(br#"{"v":"2","events":[]}"#).is_err());
    }

    #[test]
    fn the_deepest_payload_validation_accepts_survives_the_queue() {
        let mut payload = json!(1);
        for _ in 0..crate::event::MAX_PAYLOAD_DEPTH {
            payload = json!({ "n": payload });
        }
        let body = json!({"events": [{"topic": "t", "event_id": "1", "source": "s",
                          "timestamp": "2025-01-01T00:00:00Z", "payload": payload}]});
        // As /publish receives it, then as the worker reads it back from the queue.
        let body: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&body).expect("encode")).expect("parse");
        let events = crate::event::parse_batch(&body).expect("valid");
        let bytes = BatchMessage::new(events, Some("t".into()))
            .to_bytes()
            .expect("encode");
        assert!(BatchMessage::from_bytes(&bytes).is_ok());
    }

    #[test]
    fn refuses_an_unknown_version() {
        let err = EventMessage::from_bytes(br#"{"v":"99","event":{}}"#).expect_err("v99");
        assert!(matches!(err, Error::Wire(_)));
    }
}
