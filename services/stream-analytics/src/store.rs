//! MongoDB: each partition's keys with the offset they reflect (`analytics_log`, snapshots in
//! `analytics_state`), each partition's processed offset (`analytics_offsets`) and latest
//! snapshot's offset (`analytics_heads`), and the result collections.
//!
//! Every stored key is an entry (see [`crate::packed`]): its value once the partition's
//! messages before offset `next` are applied. Loading merges every entry of a partition, the
//! larger `next` winning per key, so an entry written twice (a replay) or by a stale writer
//! (a replica that lost the partition) changes nothing.
//!
//! Write order of a flush, and why no transaction is needed:
//! 1. the changed keys of a partition, appended to the log (a few large documents);
//! 2. the partition's offset, replaced only if the stored one is lower;
//! 3. the results, derived from the state (only documents that differ are written);
//! 4. only then the Kafka commit (by the caller).
//!
//! A crash between 1 and 2 leaves keys ahead of their partition: the replay skips, per key,
//! what the key holds already (see [`crate::state`]). A crash between 2 and 3 leaves the
//! results behind the state: they are derived again at start, before any new input.
//!
//! A compaction replaces a partition's log by a snapshot of its whole state at offset `next`:
//! (1) the snapshot's documents, (2) the partition's head (its offset, moved forward only),
//! (3) then the log documents up to `next` and the older snapshots are deleted. Nothing is
//! deleted before a complete snapshot that covers it is stored, and a load that saw the same
//! heads before and after its reads saw no deletion.

use std::collections::{BTreeMap, HashMap};

use chrono::{NaiveDate, Utc};
use futures::TryStreamExt;
use mongodb::{
    Client, Database,
    bson::{
        self, Binary, Bson, Document, RawArrayBuf, RawDocumentBuf, doc, rawdoc, spec::BinarySubtype,
    },
};

use crate::{
    Error, Result,
    model::{Client as ClientRecord, Inventory},
    packed::{Packed, unpack},
    results::{COLLECTIONS, Change, Stored},
    state::{PartitionState, Slot, Spent, merge},
};

const STATE: &str = "analytics_state";
const OFFSETS: &str = "analytics_offsets";
const LOG: &str = "analytics_log";
const HEADS: &str = "analytics_heads";
/// Reads of the state in a row that a finishing compaction may disturb before a load fails.
const LOAD_ATTEMPTS: usize = 5;
/// Statements per `update` command.
const CHUNK: usize = 1_000;

/// `topic|partition`, the id of a partition in MongoDB.
pub(crate) fn tp_id(topic: &str, partition: i32) -> String {
    format!("{topic}|{partition}")
}

/// The analytics database.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    client: Client,
    db: Database,
}

impl Store {
    /// A client for `url`; connects lazily.
    pub(crate) async fn connect(url: &str, database: &str) -> Result<Self> {
        let client = Client::with_uri_str(url).await?;
        Ok(Self {
            db: client.database(database),
            client,
        })
    }

    /// Ends the driver's sessions and closes its connections while the runtime still runs.
    /// Left to `Drop`, the driver spawns that cleanup on a runtime that is shutting down,
    /// and its task panics.
    pub(crate) async fn shutdown(&self) {
        self.client.clone().shutdown().immediate(true).await;
    }

    /// Round trip to the server.
    pub(crate) async fn ping(&self) -> Result<()> {
        self.db.run_command(doc! {"ping": 1}).await?;
        Ok(())
    }

    /// Every partition's stored offset.
    pub(crate) async fn offsets(&self) -> Result<HashMap<String, i64>> {
        let mut cursor = self
            .db
            .collection::<Document>(OFFSETS)
            .find(doc! {})
            .await?;
        let mut out = HashMap::new();
        while let Some(d) = cursor.try_next().await? {
            let id = d.get_str("_id").unwrap_or_default().to_owned();
            out.insert(id, d.get_i64("next").unwrap_or(0));
        }
        Ok(out)
    }

    /// One partition's state as stored.
    #[tracing::instrument(skip(self))]
    pub(crate) async fn load(&self, tp: &str) -> Result<PartitionState> {
        let next = self
            .db
            .collection::<Document>(OFFSETS)
            .find_one(doc! {"_id": tp})
            .await?
            .and_then(|d| d.get_i64("next").ok())
            .unwrap_or(0);
        let mut parts = self.load_where(doc! {"tp": tp}).await?;
        let mut part = parts.remove(tp).unwrap_or_default();
        part.next = next;
        part.stored_next = next;
        Ok(part)
    }

    /// The stored state of every partition except `mine`.
    pub(crate) async fn load_others(
        &self,
        mine: &[String],
    ) -> Result<BTreeMap<String, PartitionState>> {
        self.load_where(doc! {"tp": {"$nin": mine}}).await
    }

    /// The stored entries of the partitions `filter` selects, merged. The partitions' heads
    /// are read before and after: a partition whose compaction finished meanwhile may have
    /// had documents deleted under the reads, and is read again.
    async fn load_where(&self, filter: Document) -> Result<BTreeMap<String, PartitionState>> {
        let mut heads = self.heads(&filter).await?;
        let mut parts = self.read_where(&filter).await?;
        for _ in 0..LOAD_ATTEMPTS {
            let now = self.heads(&filter).await?;
            let moved: Vec<&String> = (now.iter())
                .filter(|(tp, next)| heads.get(*tp) != Some(next))
                .map(|(tp, _)| tp)
                .collect();
            if moved.is_empty() {
                return Ok(parts);
            }
            tracing::debug!(
                ?moved,
                "a compaction finished while the state was read; reading again"
            );
            for tp in &moved {
                parts.remove(*tp);
            }
            parts.extend(self.read_where(&doc! {"tp": {"$in": moved}}).await?);
            heads = now;
        }
        Err(Error::Stored {
            id: STATE.to_owned(),
            reason: format!("compactions finished during {LOAD_ATTEMPTS} reads in a row"),
        })
    }

    /// Each partition's head: the offset of its latest complete snapshot.
    async fn heads(&self, filter: &Document) -> Result<BTreeMap<String, i64>> {
        let mut cursor = (self.db.collection::<Document>(HEADS))
            .find(filter.clone())
            .await?;
        let mut out = BTreeMap::new();
        while let Some(d) = cursor.try_next().await? {
            let tp = d.get_str("tp").unwrap_or_default().to_owned();
            out.insert(tp, d.get_i64("next").unwrap_or(0));
        }
        Ok(out)
    }

    /// The log, then the snapshots (and per-key documents, as older versions stored them).
    async fn read_where(&self, filter: &Document) -> Result<BTreeMap<String, PartitionState>> {
        let mut parts: BTreeMap<String, PartitionState> = BTreeMap::new();
        for (collection, logged) in [(LOG, true), (STATE, false)] {
            let mut cursor = (self.db.collection::<Document>(collection))
                .find(filter.clone())
                .await?;
            while let Some(d) = cursor.try_next().await? {
                let tp = d.get_str("tp").unwrap_or_default().to_owned();
                let part = parts.entry(tp).or_default();
                let damaged = |reason: &str| Error::Stored {
                    id: format!("{collection} {}", d.get_str("_id").unwrap_or_default()),
                    reason: reason.to_owned(),
                };
                if let Some(packed) = d.get("packed") {
                    let Bson::Binary(Binary {
                        subtype: BinarySubtype::Generic,
                        bytes,
                    }) = packed
                    else {
                        return Err(damaged("`packed` is not generic binary data"));
                    };
                    let read = unpack(bytes, part).map_err(|reason| damaged(&reason))?;
                    part.logged += if logged { read } else { 0 };
                } else if let Some(entries) = d.get("entries") {
                    // As the version of 2026-12-06 stored them: a sub-document per key.
                    let Bson::Array(entries) = entries else {
                        return Err(damaged("`entries` is not an array"));
                    };
                    for e in entries {
                        let e = e
                            .as_document()
                            .ok_or_else(|| damaged("an entry is not a document"))?;
                        read_key(part, e)?;
                        part.logged += usize::from(logged);
                    }
                } else if d.contains_key("k") {
                    read_key(part, &d)?;
                } else {
                    continue; // not a document of ours
                }
                let id = d.get_str("_id").unwrap_or_default().to_owned();
                match logged {
                    true => part.documents.log.push(id),
                    false => part.documents.state.push(id),
                }
            }
        }
        Ok(parts)
    }

    /// Appends a partition's changed keys to the log, then writes its offset; returns the
    /// log documents' ids.
    #[cfg(test)]
    pub(crate) async fn save(&self, tp: &str, part: &PartitionState) -> Result<Vec<String>> {
        (self.save_entries(tp, part.next, &Packed::keys(part, &part.touched))).await
    }

    /// Appends keys to a partition's log (one insert per [`PER_DOCUMENT`](crate::packed::PER_DOCUMENT) keys, instead of an
    /// update per key), then sets its offset to `next` unless a greater one is stored.
    #[tracing::instrument(skip(self, entries), fields(entries = entries.len()))]
    pub(crate) async fn save_entries(
        &self,
        tp: &str,
        next: i64,
        entries: &Packed,
    ) -> Result<Vec<String>> {
        let docs = entry_documents(tp, next, entries);
        let written = ids(&docs);
        if !docs.is_empty() {
            self.db
                .collection::<RawDocumentBuf>(LOG)
                .insert_many(docs)
                .ordered(false)
                .await?;
        }
        let (topic, partition) = tp.rsplit_once('|').unwrap_or((tp, "0"));
        let offset = rawdoc! {
            "_id": tp, "topic": topic, "partition": partition.parse::<i32>().unwrap_or(0),
            "next": next, "updated_at": crate::model::bson_time(Utc::now()),
        };
        let stmt = rawdoc! {"q": {"_id": tp, "next": {"$lt": next}}, "u": offset, "upsert": true};
        self.upsert(OFFSETS, vec![stmt]).await?;
        Ok(written)
    }

    /// Compacts a partition in one go (the pipeline does it step by step, beside flushes).
    #[cfg(test)]
    pub(crate) async fn compact(&self, tp: &str, part: &mut PartitionState) -> Result<usize> {
        let documents = snapshot(tp, part);
        for d in &documents {
            self.save_snapshot(d).await?;
        }
        self.set_head(tp, part.stored_next).await?;
        let replaced = part.replace_documents(ids(&documents));
        self.delete(true, &replaced.log).await?;
        self.delete(false, &replaced.state).await?;
        part.mark_compacted();
        Ok(part.keys())
    }

    /// Stores one document of a snapshot ([`snapshot`]); stored already (a retry after an
    /// answer that was lost) is stored.
    pub(crate) async fn save_snapshot(&self, document: &RawDocumentBuf) -> Result<()> {
        let command = rawdoc! {"insert": STATE, "documents": [document.clone()]};
        let reply = self.db.run_raw_command(command).await?;
        check_write_errors(STATE, &reply)
    }

    /// Once every document of a partition's snapshot at offset `next` is stored: moves the
    /// partition's head to it, unless a later one is stored. What the snapshot covers can be
    /// deleted from then on ([`Store::delete`]).
    pub(crate) async fn set_head(&self, tp: &str, next: i64) -> Result<()> {
        let head = rawdoc! {"_id": tp, "tp": tp, "next": next};
        let stmt = rawdoc! {"q": {"_id": tp, "next": {"$lt": next}}, "u": head, "upsert": true};
        self.upsert(HEADS, vec![stmt]).await
    }

    /// Deletes the documents `ids` of `analytics_log` (`log`) or `analytics_state`.
    pub(crate) async fn delete(&self, log: bool, ids: &[String]) -> Result<()> {
        let collection = if log { LOG } else { STATE };
        let reply = self
            .db
            .run_command(doc! {
                "delete": collection,
                "deletes": [{"q": {"_id": {"$in": ids}}, "limit": 0}],
            })
            .await?;
        check_write_errors(collection, &reply)
    }

    /// Runs `update` statements in chunks; a duplicate `_id` on a conditional upsert means the
    /// stored document is newer, which is not an error.
    ///
    /// The command is built as raw BSON, the statements' bytes copied as they are: through
    /// `Document` each result document was parsed, cloned into the command and encoded again,
    /// ~10 % of the service's CPU under a backlog, and a flush's last writes waited for it.
    async fn upsert(&self, collection: &str, stmts: Vec<RawDocumentBuf>) -> Result<()> {
        let mut stmts = stmts.into_iter().peekable();
        while stmts.peek().is_some() {
            let mut updates = RawArrayBuf::new();
            for stmt in stmts.by_ref().take(CHUNK) {
                updates.push(stmt);
            }
            let command = rawdoc! {"update": collection, "updates": updates, "ordered": false};
            let reply = self.db.run_raw_command(command).await?;
            check_write_errors(collection, &reply)?;
        }
        Ok(())
    }

    /// The digests of the result documents as stored (without `updated_at`), read one
    /// document at a time.
    pub(crate) async fn load_digests(&self) -> Result<Stored> {
        let mut out = Stored::default();
        for name in COLLECTIONS {
            let mut cursor = self.db.collection::<Document>(name).find(doc! {}).await?;
            while let Some(mut d) = cursor.try_next().await? {
                d.remove("updated_at");
                let id = d.get_str("_id").unwrap_or_default().to_owned();
                out.insert(name, id, &d);
            }
        }
        Ok(out)
    }

    /// Writes result changes (replace or delete), 1,000 statements at a time; returns
    /// documents touched.
    #[tracing::instrument(skip_all, fields(changes = changes.len()))]
    pub(crate) async fn write_results(&self, changes: &[Change]) -> Result<usize> {
        let now = crate::model::bson_time(Utc::now());
        for name in COLLECTIONS {
            let upserts: Vec<(&String, &RawDocumentBuf)> = changes
                .iter()
                .filter(|(c, _, _)| *c == name)
                .filter_map(|(_, id, d)| Some((id, d.as_ref()?)))
                .collect();
            let stmts = (upserts.into_iter())
                .map(|(id, raw)| {
                    let mut u = raw.clone();
                    u.append("updated_at", now);
                    rawdoc! {"q": {"_id": id.as_str()}, "u": u, "upsert": true}
                })
                .collect();
            self.upsert(name, stmts).await?;
            let deletes: Vec<Document> = changes
                .iter()
                .filter(|(c, _, d)| *c == name && d.is_none())
                .map(|(_, id, _)| doc! {"q": {"_id": id}, "limit": 1})
                .collect();
            for chunk in deletes.chunks(CHUNK) {
                let reply = self
                    .db
                    .run_command(doc! {"delete": name, "deletes": chunk, "ordered": false})
                    .await?;
                check_write_errors(name, &reply)?;
            }
        }
        Ok(changes.len())
    }
}

fn check_write_errors(collection: &str, reply: &Document) -> Result<()> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Ok(());
    };
    for e in errors.iter().filter_map(Bson::as_document) {
        let code = e
            .get_i32("code")
            .map(i64::from)
            .or_else(|_| e.get_i64("code"));
        if code != Ok(11000) || !on_id(e) {
            return Err(Error::Stored {
                id: collection.to_owned(),
                reason: format!("write refused: {e}"),
            });
        }
    }
    Ok(())
}

/// Whether a duplicate key error is on `_id`: a conditional upsert that found the stored
/// document newer. A duplicate on any other unique index (none of ours) refused the write.
fn on_id(error: &Document) -> bool {
    match error.get_document("keyPattern") {
        Ok(pattern) => pattern.keys().eq(["_id"]),
        // Servers before MongoDB 4.2 name the index only in the message.
        Err(_) => error
            .get_str("errmsg")
            .is_ok_and(|m| m.contains(" index: _id_ ")),
    }
}

/// A snapshot of the partition's whole state at its stored offset, as documents of
/// [`PER_DOCUMENT`](crate::packed::PER_DOCUMENT) keys each (see [`Store::save_snapshot`]).
pub(crate) fn snapshot(tp: &str, part: &PartitionState) -> Vec<RawDocumentBuf> {
    entry_documents(tp, part.stored_next, &Packed::all(part))
}

/// The `_id`s of `documents`.
pub(crate) fn ids(documents: &[RawDocumentBuf]) -> Vec<String> {
    (documents.iter())
        .filter_map(|d| Some(d.get_str("_id").ok()?.to_owned()))
        .collect()
}

/// `entries` as documents of [`PER_DOCUMENT`](crate::packed::PER_DOCUMENT) each, for the log or a snapshot. Ids are unique
/// per call: a replay may log the same keys again, which loading merges.
fn entry_documents(tp: &str, next: i64, entries: &Packed) -> Vec<RawDocumentBuf> {
    let nonce = fastrand::u64(..);
    (entries.chunks().iter().enumerate())
        .map(|(i, chunk)| {
            let packed = Binary {
                subtype: BinarySubtype::Generic,
                bytes: chunk.clone(),
            };
            rawdoc! {
                "_id": format!("{tp}|{next}|{nonce:016x}|{i}"),
                "tp": tp,
                "next": next,
                "packed": packed,
            }
        })
        .collect()
}

/// Reads one key as earlier versions stored it, `{k, key, next, v}` (a sub-document of a log
/// or snapshot document, or an `analytics_state` document of its own) into the partition.
fn read_key(part: &mut PartitionState, d: &Document) -> Result<()> {
    let id = d.get_str("_id").map_or_else(
        |_| {
            let part = |k| d.get_str(k).unwrap_or_default();
            format!("{LOG} entry {}|{}", part("k"), part("key"))
        },
        str::to_owned,
    );
    let bad = |reason: &str| Error::Stored {
        id: id.clone(),
        reason: reason.to_owned(),
    };
    let field = |r: std::result::Result<i64, bson::document::ValueAccessError>, name: &str| {
        r.map_err(|_| bad(&format!("no integer `{name}`")))
    };
    let next = field(d.get_i64("next"), "next")?;
    let key = d.get_str("key").map_err(|_| bad("no `key`"))?.to_owned();
    let v = d.get_document("v").map_err(|_| bad("no `v`"))?;
    let uint = |name: &str| field(v.get_i64(name), name).map(|n| u64::try_from(n).unwrap_or(0));
    let text = |name: &str| {
        v.get_str(name)
            .map(str::to_owned)
            .map_err(|_| bad(&format!("no string `{name}`")))
    };
    match d.get_str("k").unwrap_or_default() {
        "sold" => {
            merge(
                &mut part.sold,
                key.into(),
                Slot::stored(uint("units")?, next),
            );
        }
        "cell" => {
            let minute = field(v.get_i64("minute"), "minute")?;
            let cell = (minute, text("product")?.into());
            merge(&mut part.cells, cell, Slot::stored(uint("units")?, next));
        }
        "spent" => {
            let spent = Spent {
                cents: field(v.get_i64("cents"), "cents")?,
                invoices: uint("invoices")?,
            };
            merge(&mut part.spent, key.into(), Slot::stored(spent, next));
        }
        "inv" => {
            let record = Inventory {
                product_id: text("product_id")?,
                name: text("name")?,
                category: text("category")?,
                buy_cents: field(v.get_i64("buy_cents"), "buy_cents")?,
                sell_cents: field(v.get_i64("sell_cents"), "sell_cents")?,
                min_margin_bp: field(v.get_i64("min_margin_bp"), "min_margin_bp")?,
                quantity: uint("quantity")?,
                last_movement: v
                    .get_datetime("last_movement")
                    .map(|t| crate::model::chrono_time(*t))
                    .map_err(|_| bad("no date `last_movement`"))?,
                expiry_date: NaiveDate::parse_from_str(&text("expiry_date")?, "%Y-%m-%d")
                    .map_err(|_| bad("bad `expiry_date`"))?,
                batch_no: text("batch_no")?,
            };
            merge(&mut part.inventory, key, Slot::stored(record, next));
        }
        "client" => {
            let record = ClientRecord {
                client_id: text("client_id")?,
                name: text("name")?,
                reported_revenue_cents: field(
                    v.get_i64("reported_revenue_cents"),
                    "reported_revenue_cents",
                )?,
                loyalty_tier: text("loyalty_tier")?,
            };
            merge(&mut part.clients, key, Slot::stored(record, next));
        }
        other => return Err(bad(&format!("unknown kind `{other}`"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone, Utc};
    use mongodb::bson::doc;
    use sluice_testkit::TestMongo;

    use super::*;
    use crate::{
        model::{Input, LineItem, Sale},
        state::Touched,
    };

    const TP: &str = "t|0";

    fn sale(client: &str, product: &str, quantity: u64) -> Input<'static> {
        Input::Sale(Sale {
            invoice_id: "I".into(),
            client_id: client.to_owned().into(),
            timestamp: Utc.timestamp_opt(600, 0).single().expect("time"),
            total_amount: 250,
            items: vec![LineItem {
                product_id: product.to_owned().into(),
                quantity,
            }],
        })
    }

    fn record(product: &str, batch: &str) -> Input<'static> {
        Input::Inventory(Inventory {
            product_id: product.into(),
            name: "N".into(),
            category: "dairy".into(),
            buy_cents: 100,
            sell_cents: 150,
            min_margin_bp: 1500,
            quantity: 3,
            last_movement: Utc.timestamp_opt(60, 0).single().expect("time"),
            expiry_date: NaiveDate::from_ymd_opt(2030, 1, 1).expect("date"),
            batch_no: batch.into(),
        })
    }

    fn client(id: &str) -> Input<'static> {
        Input::Client(ClientRecord {
            client_id: id.into(),
            name: "C".into(),
            reported_revenue_cents: 5,
            loyalty_tier: "gold".into(),
        })
    }

    /// The keys and offsets of two states are the same.
    fn assert_same(got: &PartitionState, want: &PartitionState, when: &str) {
        assert_eq!(got.next, want.stored_next, "{when}: offset");
        assert_eq!(got.sold, want.sold, "{when}: sold");
        assert_eq!(got.cells, want.cells, "{when}: cells");
        assert_eq!(got.spent, want.spent, "{when}: spent");
        assert_eq!(got.inventory, want.inventory, "{when}: inventory");
        assert_eq!(got.clients, want.clients, "{when}: clients");
    }

    /// A database of the test's own, and the store on it.
    async fn test_store() -> anyhow::Result<(TestMongo, Store)> {
        let mongo = TestMongo::create().await?;
        let store = Store::connect(mongo.url(), mongo.database().name()).await?;
        Ok((mongo, store))
    }

    async fn save(store: &Store, part: &mut PartitionState) -> anyhow::Result<()> {
        let written = store.save(TP, part).await?;
        part.documents.log.extend(written);
        part.mark_stored(part.touched.len());
        Ok(())
    }

    async fn log_documents(mongo: &TestMongo) -> anyhow::Result<u64> {
        Ok(mongo
            .database()
            .collection::<Document>(LOG)
            .count_documents(doc! {})
            .await?)
    }

    #[tokio::test]
    async fn a_compaction_deletes_stored_cells_past_the_rollups_retention() -> anyhow::Result<()> {
        let (_mongo, store) = test_store().await?;
        let mut part = PartitionState::default();
        part.apply(0, 0, sale("C1", "P1", 2));
        save(&store, &mut part).await?;
        store.compact(TP, &mut part).await?;
        let (minute, _) = part.cells.keys().next().cloned().expect("a cell");
        assert_eq!(store.load(TP).await?.cells.len(), 1, "the cell is stored");
        assert_eq!(part.prune_cells(minute + 1).len(), 1);
        store.compact(TP, &mut part).await?;
        let loaded = store.load(TP).await?;
        assert!(loaded.cells.is_empty(), "a cell past retention comes back");
        assert_eq!(loaded.sold["P1"].value, 2, "units sold stay");
        Ok(())
    }

    #[tokio::test]
    async fn the_log_and_its_compaction_load_back_the_same_state() -> anyhow::Result<()> {
        let (mongo, store) = test_store().await?;
        let mut part = PartitionState::default();
        for (offset, input) in [
            sale("C1", "P1", 2),
            record("P1", "B1"),
            client("C1"),
            sale("C2", "P1", 1),
        ]
        .into_iter()
        .enumerate()
        {
            part.apply(offset as i64, 0, input);
        }
        save(&store, &mut part).await?;
        let before = part.clone();
        let loaded = store.load(TP).await?;
        assert_same(&loaded, &part, "from the log");
        assert_eq!(loaded.logged, 6, "sold, cell, 2 × spent, inventory, client");

        part.apply(4, 0, sale("C1", "P1", 5));
        part.apply(5, 0, record("P1", "B2"));
        save(&store, &mut part).await?;
        assert_same(&store.load(TP).await?, &part, "from two log writes");

        let written = store.compact(TP, &mut part).await?;
        assert_eq!(written, 6, "every key once, however often it was logged");
        assert_eq!(log_documents(&mongo).await?, 0, "the log is folded");
        let loaded = store.load(TP).await?;
        assert_same(&loaded, &part, "from the snapshot");
        assert_eq!(loaded.logged, 0);

        // A stale writer (the state before offset 4, e.g. a replica that lost the partition)
        // logs its older keys, then compacts them: they neither win over the newer snapshot
        // nor delete it.
        let mut stale = before;
        stale.touched = Touched::all(&[&stale]);
        store.save(TP, &stale).await?;
        assert_same(&store.load(TP).await?, &part, "with a stale log entry");
        store.compact(TP, &mut stale).await?;
        assert_same(&store.load(TP).await?, &part, "after a stale snapshot");

        // The next snapshot replaces the earlier ones, the stale writer's too once a load
        // has seen it (a process deletes only documents it read or wrote).
        let mut part = store.load(TP).await?;
        part.apply(6, 0, sale("C3", "P2", 1));
        save(&store, &mut part).await?;
        store.compact(TP, &mut part).await?;
        assert_same(&store.load(TP).await?, &part, "from the next snapshot");
        let state = mongo.database().collection::<Document>(STATE);
        let snapshots = state.count_documents(doc! {"packed": {"$exists": true}});
        assert_eq!(snapshots.await?, 1, "one snapshot document left");
        Ok(())
    }

    /// The keys `keys` of `part` as versions before packed entries stored them: `{k, key,
    /// next, v}` each.
    fn keys_as_before(part: &PartitionState, keys: &Touched) -> Vec<Document> {
        let entry = |k: &str, key: &str, next: i64, v: Document| {
            doc! {"k": k, "key": key, "next": next, "v": v}
        };
        let mut out = Vec::new();
        for (p, s) in part.sold.iter().filter(|(k, _)| keys.sold.contains(*k)) {
            out.push(entry("sold", p, s.next, doc! {"units": s.value as i64}));
        }
        for ((m, p), s) in part.cells.iter().filter(|(k, _)| keys.cells.contains(*k)) {
            let v = doc! {"minute": m, "product": p.as_str(), "units": s.value as i64};
            out.push(entry("cell", &format!("{m}|{p}"), s.next, v));
        }
        for (c, s) in part
            .spent
            .iter()
            .filter(|(k, _)| keys.spent.contains_key(*k))
        {
            let v = doc! {"cents": s.value.cents, "invoices": s.value.invoices as i64};
            out.push(entry("spent", c, s.next, v));
        }
        for (p, s) in part
            .inventory
            .iter()
            .filter(|(k, _)| keys.inventory.contains(*k))
        {
            let r = &s.value;
            let v = doc! {
                "product_id": &r.product_id, "name": &r.name, "category": &r.category,
                "buy_cents": r.buy_cents, "sell_cents": r.sell_cents,
                "min_margin_bp": r.min_margin_bp, "quantity": r.quantity as i64,
                "last_movement": crate::model::bson_time(r.last_movement),
                "expiry_date": r.expiry_date.to_string(), "batch_no": &r.batch_no,
            };
            out.push(entry("inv", p, s.next, v));
        }
        for (c, s) in part
            .clients
            .iter()
            .filter(|(k, _)| keys.clients.contains_key(*k))
        {
            let r = &s.value;
            let v = doc! {
                "client_id": &r.client_id, "name": &r.name,
                "reported_revenue_cents": r.reported_revenue_cents,
                "loyalty_tier": &r.loyalty_tier,
            };
            out.push(entry("client", c, s.next, v));
        }
        out
    }

    #[tokio::test]
    async fn state_stored_by_earlier_versions_still_loads_and_is_replaced() -> anyhow::Result<()> {
        let (mongo, store) = test_store().await?;
        let mut part = PartitionState::default();
        part.apply(0, 0, sale("C1", "P1", 2));
        part.apply(1, 0, record("P1", "B1"));
        part.apply(2, 0, client("C1"));
        // Before 2026-12-06: one `analytics_state` document per key.
        let state = mongo.database().collection::<Document>(STATE);
        for mut d in keys_as_before(&part, &Touched::all(&[&part])) {
            let id = format!("{TP}|{}|{}", d.get_str("k")?, d.get_str("key")?);
            d.insert("_id", id);
            d.insert("tp", TP);
            state.insert_one(d).await?;
        }
        part.mark_stored(0);
        // On 2026-12-06: log and snapshot documents of one sub-document per key.
        let as_before = |part: &PartitionState, keys: &Touched, nonce: u8| {
            let (id, next) = (format!("{TP}|{}|{nonce}|0", part.next), part.next);
            doc! {"_id": id, "tp": TP, "next": next, "entries": keys_as_before(part, keys)}
        };
        part.apply(3, 0, sale("C2", "P1", 1));
        let log = mongo.database().collection::<Document>(LOG);
        assert_eq!(part.touched.len(), 3, "sold, cell, spent");
        log.insert_one(as_before(&part, &part.touched, 0)).await?;
        part.mark_stored(3);
        part.apply(4, 0, client("C2"));
        state
            .insert_one(as_before(&part, &Touched::all(&[&part]), 1))
            .await?;
        part.mark_stored(0);
        store
            .save_entries(TP, part.next, &Packed::default())
            .await?;
        let loaded = store.load(TP).await?;
        assert_same(&loaded, &part, "documents of every earlier layout");
        assert_eq!(loaded.logged, 3, "only the log's entries count as logged");

        // Packed entries, newer, for keys stored in the earlier layouts.
        let mut part = loaded;
        part.apply(5, 0, sale("C1", "P1", 1));
        save(&store, &mut part).await?;
        assert_same(&store.load(TP).await?, &part, "packed over earlier layouts");
        store.compact(TP, &mut part).await?;
        assert_same(&store.load(TP).await?, &part, "from the snapshot");
        let earlier = doc! {"$or": [{"k": {"$exists": true}}, {"entries": {"$exists": true}}]};
        let left = state.count_documents(earlier).await?;
        assert_eq!(left, 0, "the earlier layouts' documents are replaced");
        assert_eq!(log_documents(&mongo).await?, 0, "the log is folded");
        Ok(())
    }

    #[tokio::test]
    async fn a_stored_document_of_another_shape_fails_the_load() -> anyhow::Result<()> {
        let (mongo, store) = test_store().await?;
        let log = mongo.database().collection::<Document>(LOG);
        let id = format!("{TP}|1|0|0");
        log.insert_one(doc! {"_id": &id, "tp": TP, "next": 1_i64, "packed": "text"})
            .await?;
        let err = store
            .load(TP)
            .await
            .expect_err("a load of a damaged document");
        assert_eq!(
            err.to_string(),
            format!("stored state {LOG} {id}: `packed` is not generic binary data")
        );
        Ok(())
    }

    #[test]
    fn a_damaged_entry_is_an_error_that_names_it() {
        let mut part = PartitionState::default();
        part.apply(0, 0, sale("C1", "P1", 2));
        let packed = Packed::all(&part);
        let chunk = &packed.chunks()[0];
        let mut loaded = PartitionState::default();
        assert_eq!(unpack(chunk, &mut loaded), Ok(3));
        let err = unpack(&chunk[..chunk.len() - 1], &mut PartitionState::default());
        assert!(
            err.as_ref()
                .is_err_and(|e| e.starts_with("entry 2 unreadable")),
            "{err:?}"
        );
    }
}
