//! The Redis stream between `/publish` and the workers.
//!
//! `/publish` appends one entry per accepted batch (XADD). Workers of the consumer group read
//! entries (XREADGROUP), store them, then acknowledge and delete them (XACK + XDEL in one
//! MULTI), so the stream holds only what is not stored yet and its length is the backlog. An
//! entry whose worker died stays pending: a restarted worker with the same consumer name reads
//! its own pending entries first, and any worker claims entries idle longer than
//! `claim_idle_ms` (XAUTOCLAIM). Unlike the seed's list with BLPOP, nothing popped is lost.

use std::time::Duration;

use redis::{
    AsyncCommands, Client, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::{
        StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
    },
};

use crate::Result;

/// The field of an entry that holds the batch.
const FIELD: &str = "b";

/// One stream entry: its id and its batch bytes (`None` if the entry has no batch field).
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub payload: Option<Vec<u8>>,
}

impl From<StreamId> for Entry {
    fn from(entry: StreamId) -> Self {
        let payload = match entry.map.get(FIELD) {
            Some(Value::BulkString(bytes)) => Some(bytes.clone()),
            _ => None,
        };
        Self {
            id: entry.id,
            payload,
        }
    }
}

/// Opens a self-reconnecting connection that gives up on a command after `response_timeout`.
pub async fn connect(url: &str, response_timeout: Duration) -> Result<ConnectionManager> {
    let client = Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

/// The stream as the HTTP side sees it.
#[derive(Clone)]
pub struct Stream {
    conn: ConnectionManager,
    key: String,
    group: String,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("key", &self.key)
            .field("group", &self.group)
            .finish()
    }
}

/// Entries in the stream (not stored yet) and, of those, delivered but not acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub length: u64,
    pub pending: u64,
}

impl Stream {
    pub fn new(conn: ConnectionManager, key: &str, group: &str) -> Self {
        Self {
            conn,
            key: key.to_owned(),
            group: group.to_owned(),
        }
    }

    /// Creates the consumer group (and the stream) unless it exists.
    pub async fn ensure_group(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let created: redis::RedisResult<()> = conn
            .xgroup_create_mkstream(&self.key, &self.group, "0")
            .await;
        match created {
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Appends a batch; returns its entry id once Redis has it.
    pub async fn append(&self, batch: &[u8]) -> Result<String> {
        let mut conn = self.conn.clone();
        Ok(conn.xadd(&self.key, "*", &[(FIELD, batch)]).await?)
    }

    /// Stream length and pending count.
    pub async fn backlog(&self) -> Result<Backlog> {
        let mut conn = self.conn.clone();
        let (length, pending): (u64, Value) = redis::pipe()
            .xlen(&self.key)
            .cmd("XPENDING")
            .arg(&self.key)
            .arg(&self.group)
            .query_async(&mut conn)
            .await?;
        let pending = match pending {
            Value::Array(items) => items
                .first()
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                .unwrap_or(0),
            _ => 0,
        };
        Ok(Backlog { length, pending })
    }

    /// Moves an entry that cannot be stored to `<key>:dead` with the reason, then removes it.
    pub async fn dead_letter(&self, entry: &Entry, reason: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let payload = entry.payload.clone().unwrap_or_default();
        let _: () = redis::pipe()
            .atomic()
            .xadd(
                format!("{}:dead", self.key),
                "*",
                &[
                    ("entry_id", entry.id.as_bytes()),
                    ("reason", reason.as_bytes()),
                    (FIELD, &payload),
                ],
            )
            .ignore()
            .xack(&self.key, &self.group, &[&entry.id])
            .ignore()
            .xdel(&self.key, &[&entry.id])
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// PING, for `/health`.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// The stream's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// One consumer of the group, with a connection of its own (its reads block).
pub struct Consumer {
    conn: ConnectionManager,
    stream: Stream,
    name: String,
    count: usize,
    block: Duration,
    claim_idle: Duration,
    claim_cursor: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .finish()
    }
}

impl Consumer {
    pub fn new(
        conn: ConnectionManager,
        stream: Stream,
        name: String,
        count: usize,
        block: Duration,
        claim_idle: Duration,
    ) -> Self {
        Self {
            conn,
            stream,
            name,
            count,
            block,
            claim_idle,
            claim_cursor: "0-0".into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Entries delivered to this consumer name before and never acknowledged (a previous run
    /// of this process that died), oldest first.
    pub async fn own_pending(&mut self) -> Result<Vec<Entry>> {
        self.read("0", None).await
    }

    /// New entries, waiting up to the block time for some.
    pub async fn next_new(&mut self) -> Result<Vec<Entry>> {
        self.read(">", Some(self.block)).await
    }

    async fn read(&mut self, from: &str, block: Option<Duration>) -> Result<Vec<Entry>> {
        let mut opts = StreamReadOptions::default()
            .group(&self.stream.group, &self.name)
            .count(self.count);
        if let Some(block) = block {
            opts = opts.block(usize::try_from(block.as_millis()).unwrap_or(usize::MAX));
        }
        let reply: Option<StreamReadReply> = self
            .conn
            .xread_options(&[&self.stream.key], &[from], &opts)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(Entry::from)
            .collect())
    }

    /// Takes over entries other consumers left pending longer than the claim idle time.
    pub async fn claim_stale(&mut self) -> Result<Vec<Entry>> {
        let idle = usize::try_from(self.claim_idle.as_millis()).unwrap_or(usize::MAX);
        let opts = StreamAutoClaimOptions::default().count(self.count);
        let reply: StreamAutoClaimReply = self
            .conn
            .xautoclaim_options(
                &self.stream.key,
                &self.stream.group,
                &self.name,
                idle,
                &self.claim_cursor,
                opts,
            )
            .await?;
        self.claim_cursor = reply.next_stream_id;
        Ok(reply.claimed.into_iter().map(Entry::from).collect())
    }

    /// Acknowledges and deletes stored entries in one MULTI.
    pub async fn ack(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: () = redis::pipe()
            .atomic()
            .xack(&self.stream.key, &self.stream.group, ids)
            .ignore()
            .xdel(&self.stream.key, ids)
            .ignore()
            .query_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// The stream this consumer reads.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }
}
