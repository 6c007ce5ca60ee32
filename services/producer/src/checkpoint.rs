//! Where a run is: saved only after the sink confirmed everything before it.
//!
//! A MongoDB source keeps seed 000's checkpoint document `{_id: "last_processed", last_id,
//! count, status}` (plus the scaler state) in a collection next to its data; the other sources
//! keep the same fields in a JSON file replaced atomically (write, fsync, rename).

use std::path::PathBuf;

use mongodb::{
    Collection,
    bson::{self, Bson, Document, doc},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// `in_progress` while records remain, `complete` once a finite source is exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InProgress,
    Complete,
}

/// A saved position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Source-specific: `{"last_id": …}`, `{"offset": …, "line": …}` or `{"next": …}`.
    pub position: Value,
    /// Records confirmed by the sink so far.
    pub count: u64,
    pub status: Status,
    /// The transform's state after the last confirmed record.
    #[serde(default)]
    pub scaler: Option<Value>,
}

/// Where checkpoints live.
#[derive(Debug, Clone)]
pub enum CheckpointStore {
    Mongo {
        collection: Collection<Document>,
        id: String,
    },
    File(PathBuf),
    /// Nothing is saved: every run starts from the beginning.
    None,
}

impl CheckpointStore {
    pub async fn load(&self) -> Result<Option<Checkpoint>> {
        match self {
            Self::Mongo { collection, id } => {
                let Some(doc) = collection.find_one(doc! {"_id": id}).await? else {
                    return Ok(None);
                };
                let status = match doc.get_str("status") {
                    Ok("complete") => Status::Complete,
                    _ => Status::InProgress,
                };
                let last_id = doc.get("last_id").cloned().unwrap_or(Bson::Null);
                Ok(Some(Checkpoint {
                    position: serde_json::json!({ "last_id": if last_id == Bson::Null { Value::Null } else { last_id.into_canonical_extjson() } }),
                    count: u64::try_from(doc.get_i64("count").unwrap_or(0)).unwrap_or(0),
                    status,
                    scaler: doc
                        .get("scaler")
                        .cloned()
                        .filter(|b| *b != Bson::Null)
                        .map(Bson::into_relaxed_extjson),
                }))
            }
            Self::File(path) => match tokio::fs::read(path).await {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::Checkpoint(format!("{}: {e}", path.display()))),
            },
            Self::None => Ok(None),
        }
    }

    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        match self {
            Self::Mongo { collection, id } => {
                let last_id = match checkpoint.position.get("last_id") {
                    None | Some(Value::Null) => Bson::Null,
                    Some(v) => Bson::try_from(v.clone())
                        .map_err(|e| Error::Checkpoint(format!("last_id: {e}")))?,
                };
                let scaler = match &checkpoint.scaler {
                    Some(v) => {
                        bson::to_bson(v).map_err(|e| Error::Checkpoint(format!("scaler: {e}")))?
                    }
                    None => Bson::Null,
                };
                let status = match checkpoint.status {
                    Status::InProgress => "in_progress",
                    Status::Complete => "complete",
                };
                let doc = doc! {
                    "_id": id, "last_id": last_id, "count": i64::try_from(checkpoint.count).unwrap_or(i64::MAX),
                    "status": status, "scaler": scaler, "updated_at": bson::DateTime::now(),
                };
                collection
                    .replace_one(doc! {"_id": id}, doc)
                    .upsert(true)
                    .await?;
                Ok(())
            }
            Self::File(path) => {
                let tmp = path.with_extension("tmp");
                let bytes = serde_json::to_vec_pretty(checkpoint)
                    .map_err(|e| Error::Checkpoint(e.to_string()))?;
                let write = async {
                    let mut file = tokio::fs::File::create(&tmp).await?;
                    tokio::io::AsyncWriteExt::write_all(&mut file, &bytes).await?;
                    file.sync_all().await?;
                    tokio::fs::rename(&tmp, path).await
                };
                write
                    .await
                    .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
            }
            Self::None => Ok(()),
        }
    }
}
