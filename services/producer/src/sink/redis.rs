//! The aggregator's Redis stream: one entry per batch, in the aggregator's wire format.

use redis::{AsyncCommands, aio::ConnectionManager};
use sluice_core::{Event, wire::BatchMessage};

use super::{DeadLetterFile, Delivered, aggregator_events};
use crate::{Result, record::Record};

/// Appends batches of valid events; invalid ones go to the dead-letter file.
#[derive(Clone)]
pub struct RedisSink {
    conn: ConnectionManager,
    key: String,
    dead: DeadLetterFile,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink").field("key", &self.key).finish()
    }
}

impl RedisSink {
    pub async fn connect(url: &str, key: &str, dead: DeadLetterFile) -> Result<Self> {
        let conn = ConnectionManager::new(redis::Client::open(url)?).await?;
        Ok(Self {
            conn,
            key: key.to_owned(),
            dead,
        })
    }

    pub async fn send(&mut self, records: &[Record]) -> Result<Delivered> {
        let (valid, poison) = aggregator_events(records);
        let events: Vec<Event> = valid.into_iter().map(|(_, e)| e).collect();
        self.dead.write(&poison).await?;
        let sent = events.len() as u64;
        if !events.is_empty() {
            let bytes = BatchMessage::new(events, None).to_bytes()?;
            let _: String = self.conn.xadd(&self.key, "*", &[("b", bytes)]).await?;
        }
        Ok(Delivered {
            sent,
            dead_lettered: poison.len() as u64,
        })
    }

    pub async fn health_check(&mut self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn).await?;
        Ok(())
    }
}
