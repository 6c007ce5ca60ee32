//! A MongoDB collection read in `_id` order, one short query per batch.
//!
//! Each batch is `find({_id: {$gt: last_id}}).sort({_id: 1}).limit(n)`, read to the end: no
//! cursor stays open between batches, so a slow sink never meets the seed's cursor timeouts.

use futures::TryStreamExt;
use mongodb::{
    Collection,
    bson::{Bson, Document, doc},
};
use serde_json::{Value, json};

use crate::{Result, record::Record};

/// The collection and the last `_id` sent.
#[derive(Debug)]
pub struct MongoSource {
    collection: Collection<Document>,
    last_id: Option<Bson>,
}

impl MongoSource {
    /// Resumes after `position` (`{"last_id": <canonical extended JSON>}`), or from the start.
    pub fn new(collection: Collection<Document>, position: Option<&Value>) -> Result<Self> {
        let last_id = match position.and_then(|p| p.get("last_id")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                Bson::try_from(v.clone())
                    .map_err(|e| crate::Error::Checkpoint(format!("last_id: {e}")))?,
            ),
        };
        Ok(Self {
            collection,
            last_id,
        })
    }

    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>> {
        let filter = match &self.last_id {
            Some(id) => doc! {"_id": {"$gt": id.clone()}},
            None => doc! {},
        };
        let docs: Vec<Document> = self
            .collection
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(i64::try_from(max).unwrap_or(i64::MAX))
            .batch_size(u32::try_from(max).unwrap_or(u32::MAX))
            .await?
            .try_collect()
            .await?;
        if let Some(last) = docs.last() {
            self.last_id = last.get("_id").cloned();
        }
        let namespace = self.collection.namespace().to_string();
        Ok(docs.into_iter().map(|d| to_record(&namespace, d)).collect())
    }

    pub fn position(&self) -> Value {
        json!({ "last_id": self.last_id.clone().map(Bson::into_canonical_extjson) })
    }

    /// The last `_id` sent, as stored in the checkpoint document.
    pub fn last_id(&self) -> Option<&Bson> {
        self.last_id.as_ref()
    }

    pub async fn remaining(&self) -> Option<u64> {
        let filter = match &self.last_id {
            Some(id) => doc! {"_id": {"$gt": id.clone()}},
            None => doc! {},
        };
        self.collection.count_documents(filter).await.ok()
    }
}

/// The record id is `<db>.<collection>:<_id>`, unique across sources (consumers deduplicate
/// deliveries by it).
fn to_record(namespace: &str, doc: Document) -> Record {
    let id = match doc.get("_id") {
        Some(Bson::ObjectId(oid)) => oid.to_hex(),
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.clone().into_relaxed_extjson().to_string(),
        None => String::new(),
    };
    let topic = doc.get_str("topic").ok().map(str::to_owned);
    Record::new(
        format!("{namespace}:{id}"),
        topic,
        Bson::Document(doc).into_relaxed_extjson(),
    )
}
