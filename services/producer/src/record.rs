//! What flows from a source to a sink.

use serde_json::Value;

/// One record: a stable id (used as the message id, so consumers can deduplicate), an optional
/// topic (routing key or Kafka topic), and the JSON body — or why the source could not read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub topic: Option<String>,
    pub body: Result<Value, String>,
}

impl Record {
    /// A readable record.
    pub fn new(id: impl Into<String>, topic: Option<String>, body: Value) -> Self {
        Self {
            id: id.into(),
            topic,
            body: Ok(body),
        }
    }

    /// A record the source could not read (a poison record): it is dead-lettered, never sent.
    pub fn poison(id: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            topic: None,
            body: Err(reason.into()),
        }
    }
}

/// Looks up a dotted path (`payload.amount`) in a JSON value.
pub fn lookup_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(value, |v, key| v.get_mut(key))
}
