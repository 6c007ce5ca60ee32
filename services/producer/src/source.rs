//! Where records come from. Each source reads in batches and can say where it is (the position
//! saved in the checkpoint) and resume from there.

mod jsonl;
mod mongo;
mod synthetic;

pub use jsonl::JsonlSource;
pub use mongo::MongoSource;
use serde_json::Value;
pub use synthetic::SyntheticSource;

use crate::{Result, record::Record};

/// One of the sources.
#[derive(Debug)]
pub enum Source {
    Mongo(MongoSource),
    Jsonl(JsonlSource),
    Synthetic(SyntheticSource),
}

impl Source {
    /// The next records, at most `max`; empty when the source has nothing more right now.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>> {
        match self {
            Self::Mongo(s) => s.next_batch(max).await,
            Self::Jsonl(s) => s.next_batch(max).await,
            Self::Synthetic(s) => Ok(s.next_batch(max)),
        }
    }

    /// Where the next batch starts, as saved in the checkpoint.
    pub fn position(&self) -> Value {
        match self {
            Self::Mongo(s) => s.position(),
            Self::Jsonl(s) => s.position(),
            Self::Synthetic(s) => s.position(),
        }
    }

    /// Records left, when the source knows (for the progress bar).
    pub async fn remaining(&self) -> Option<u64> {
        match self {
            Self::Mongo(s) => s.remaining().await,
            Self::Jsonl(s) => s.remaining(),
            Self::Synthetic(s) => Some(s.remaining()),
        }
    }
}
