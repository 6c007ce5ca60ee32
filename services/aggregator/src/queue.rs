//! The Redis stream between `/publish` and the workers.
//!
//! `/publish` appends one entry per accepted batch (XADD). Workers of the consumer group read
//! entries (XREADGROUP), store them, then acknowledge and delete them (XACK + XDEL in one
//! MULTI), so the stream holds only what is not stored yet and its length is the backlog. An
//! entry whose worker died stays pending: a restarted worker with the same consumer name reads
//! its own pending entries first, and any worker claims entries idle longer than
//! `claim_idle_ms` (XAUTOCLAIM). Unlike the seed's list with BLPOP, nothing popped is lost.
//!
//! Redis may lose the stream with its group (a restart without persistence, FLUSHALL, an
//! eviction). `/publish` appends with NOMKSTREAM, so it never creates a stream without the
//! group: it creates the group (and the stream) first. Workers that read NOGROUP create it too.

use std::{collections::HashMap, time::Duration};

use redis::{
    AsyncCommands, Client, RedisError, Script, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::{
        StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
    },
};

use crate::{Error, Result};

/// The field of an entry that holds the batch.
const FIELD: &str = "b";

/// Moves an entry to the dead-letter stream, then acknowledges and deletes it. A script, not
/// MULTI: in a MULTI, XACK and XDEL would still run after a failed XADD (e.g. WRONGTYPE), and
/// the entry would be gone from both streams; a script stops at the first error.
/// KEYS: stream, dead-letter stream. ARGV: group, entry id, reason, batch bytes.
const DEAD_LETTER_SCRIPT: &str = r"
redis.call('XADD', KEYS[2], '*', 'entry_id', ARGV[2], 'reason', ARGV[3], 'b', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
";

/// Whether Redis answered that the consumer group (or its stream) does not exist.
pub fn is_nogroup(err: &Error) -> bool {
    matches!(err, Error::Redis(e) if e.code() == Some("NOGROUP"))
}

/// A stream entry id `<ms>-<seq>`, comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// Parses `<ms>-<seq>`; `None` for anything else (e.g. `amqp:…` ids).
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// One stream entry: its id and its batch bytes (`None` if the entry has no batch field).
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub payload: Option<Vec<u8>>,
}

impl From<StreamId> for Entry {
    fn from(mut entry: StreamId) -> Self {
        let payload = match entry.map.remove(FIELD) {
            Some(Value::BulkString(bytes)) => Some(bytes),
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

    /// Creates the consumer group (and the stream) unless it exists; true if it created it.
    ///
    /// The group reads from the start of the stream, so entries appended after Redis lost the
    /// group and before it was created again are consumed too.
    pub async fn ensure_group(&self) -> Result<bool> {
        let mut conn = self.conn.clone();
        let created: redis::RedisResult<()> = conn
            .xgroup_create_mkstream(&self.key, &self.group, "0")
            .await;
        match created {
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(false),
            Err(err) => Err(err.into()),
            Ok(()) => Ok(true),
        }
    }

    /// Appends a batch; returns its entry id once Redis has it, and whether the consumer group
    /// had to be created again first (the stream was gone).
    pub async fn append(&self, batch: &[u8]) -> Result<(String, bool)> {
        let mut conn = self.conn.clone();
        let (mut tried, mut recreated) = (false, false);
        loop {
            let id: Option<String> = redis::cmd("XADD")
                .arg(&self.key)
                .arg("NOMKSTREAM")
                .arg("*")
                .arg(FIELD)
                .arg(batch)
                .query_async(&mut conn)
                .await?;
            match id {
                Some(id) => return Ok((id, recreated)),
                // No stream: Redis lost it. Create it with its group, then append.
                None if !tried => {
                    tried = true;
                    recreated = self.ensure_group().await?;
                }
                None => {
                    return Err(Error::Redis(RedisError::from((
                        redis::ErrorKind::Client,
                        "the stream vanished again right after its group was created",
                    ))));
                }
            }
        }
    }

    /// The id below which no entry can be delivered any more: the first entry still in the
    /// stream (every pending entry is still in it, as entries are deleted only when
    /// acknowledged), or, for an empty stream, the millisecond after the last id it generated.
    /// `None` if the stream does not exist.
    pub async fn deliverable_from(&self) -> Result<Option<EntryId>> {
        let mut conn = self.conn.clone();
        let info: redis::RedisResult<HashMap<String, Value>> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.key)
            .query_async(&mut conn)
            .await;
        let info = match info {
            Ok(info) => info,
            // "ERR no such key"
            Err(err) if err.code() == Some("ERR") => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        if let Some(Value::Array(first)) = info.get("first-entry")
            && let Some(id) = first.first()
        {
            let id: String = redis::from_redis_value_ref(id).map_err(RedisError::from)?;
            return Ok(EntryId::parse(&id));
        }
        let last: String = match info.get("last-generated-id") {
            Some(v) => redis::from_redis_value_ref(v).map_err(RedisError::from)?,
            None => return Ok(None),
        };
        Ok(EntryId::parse(&last).map(|id| EntryId {
            ms: id.ms.saturating_add(1),
            seq: 0,
        }))
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

    /// Moves an entry that cannot be stored to [`Self::dead_key`] with the reason, then
    /// acknowledges and removes it — all or, if the move fails, nothing.
    pub async fn dead_letter(&self, entry: &Entry, reason: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let payload = entry.payload.as_deref().unwrap_or_default();
        let _: i64 = Script::new(DEAD_LETTER_SCRIPT)
            .key(&self.key)
            .key(self.dead_key())
            .arg(&self.group)
            .arg(&entry.id)
            .arg(reason)
            .arg(payload)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The dead-letter stream: entries that cannot be stored, with the reason.
    pub fn dead_key(&self) -> String {
        format!("{}:dead", self.key)
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
    /// Where the next read of this consumer's own pending entries starts: past the last one
    /// read, so an entry that stays pending (its dead-lettering failed) is not read forever.
    pending_cursor: String,
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
            pending_cursor: "0-0".into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Entries delivered to this consumer name before and never acknowledged (a previous run
    /// of this process that died), oldest first.
    pub async fn own_pending(&mut self) -> Result<Vec<Entry>> {
        let cursor = self.pending_cursor.clone();
        let entries = self.read(&cursor, None).await?;
        if let Some(last) = entries.last() {
            self.pending_cursor = last.id.clone();
        }
        Ok(entries)
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

    /// How often each entry was delivered (1 = once). An entry no longer pending counts 0.
    pub async fn deliveries(&mut self, ids: &[String]) -> Result<Vec<u64>> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XPENDING")
                .arg(&self.stream.key)
                .arg(&self.stream.group)
                .arg(id)
                .arg(id)
                .arg(1);
        }
        let replies: Vec<Vec<(String, String, u64, u64)>> =
            pipe.query_async(&mut self.conn).await?;
        Ok(replies
            .into_iter()
            .map(|r| r.first().map_or(0, |(_, _, _, count)| *count))
            .collect())
    }

    /// Resets the idle time of entries this consumer is still working on (XCLAIM JUSTID, which
    /// does not count a delivery), so peers do not claim them while it waits out an outage.
    pub async fn keep_alive(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: Value = redis::cmd("XCLAIM")
            .arg(&self.stream.key)
            .arg(&self.stream.group)
            .arg(&self.name)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .query_async(&mut self.conn)
            .await?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_and_order_numerically() {
        let a = EntryId::parse("1700000000000-9").expect("id");
        let b = EntryId::parse("1700000000000-10").expect("id");
        let c = EntryId::parse("1700000000001-0").expect("id");
        assert!(a < b && b < c, "by millisecond, then sequence, as numbers");
        for not_stream in ["amqp:abc", "amqp:fnv:00ff", "17-", "-3", "x-1", ""] {
            assert_eq!(EntryId::parse(not_stream), None, "{not_stream}");
        }
    }

    #[test]
    fn an_entry_without_its_batch_field_has_no_payload() {
        let mut map = HashMap::new();
        map.insert("other".to_owned(), Value::BulkString(b"x".to_vec()));
        let entry = Entry::from(StreamId {
            id: "1-0".into(),
            map,
            ..StreamId::default()
        });
        assert_eq!((entry.id.as_str(), entry.payload), ("1-0", None));
    }
}
