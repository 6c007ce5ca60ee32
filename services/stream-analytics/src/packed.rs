//! A partition's keys as the log and the snapshots store them: each key an [`Entry`] (its value
//! and the first offset the value does not include), encoded with postcard and packed
//! [`PER_DOCUMENT`] to one binary field.
//!
//! The log and the snapshots are the service's own; nothing queries them field by field. So
//! they are opaque bytes: the MongoDB-protocol server of the tests stored 180,000 keys in 40-80
//! ms this way, against 650-800 ms as 10,000 sub-documents a document (docs/benchmarks.md), and
//! a backlog logs ~190,000 keys per million sales. postcard's wire format is stable since 1.0;
//! it encodes an [`Entry`]'s variant by its position and then its fields one after the other,
//! with no count or length, so stored entries are read only by the same layout: a new layout
//! is a new variant, appended, and an existing variant (or record) never changes.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    model::{Client, Inventory},
    state::{Cell, PartitionState, Slot, Spent, Touched, merge},
};

/// Keys per stored document (a client record is ~60 bytes: far below the 16 MB limit).
pub(crate) const PER_DOCUMENT: usize = 10_000;

/// One stored key. Never reorder, remove or change a variant, nor the fields of it or of the
/// records it holds (stored entries carry neither names nor lengths); append a new variant.
#[derive(Debug, Serialize, Deserialize)]
enum Entry<'a> {
    Sold {
        product: Cow<'a, str>,
        next: i64,
        units: u64,
    },
    Cell {
        minute: i64,
        product: Cow<'a, str>,
        next: i64,
        units: u64,
    },
    Spent {
        client: Cow<'a, str>,
        next: i64,
        cents: i64,
        invoices: u64,
    },
    Inventory {
        next: i64,
        record: StoredInventory<'a>,
    },
    Client {
        next: i64,
        record: StoredClient<'a>,
    },
}

/// [`Inventory`] as stored (the message's own type parses JSON input).
#[derive(Debug, Serialize, Deserialize)]
struct StoredInventory<'a> {
    product_id: Cow<'a, str>,
    name: Cow<'a, str>,
    category: Cow<'a, str>,
    buy_cents: i64,
    sell_cents: i64,
    min_margin_bp: i64,
    quantity: u64,
    last_movement: DateTime<Utc>,
    expiry_date: NaiveDate,
    batch_no: Cow<'a, str>,
}

/// [`Client`] as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredClient<'a> {
    client_id: Cow<'a, str>,
    name: Cow<'a, str>,
    reported_revenue_cents: i64,
    loyalty_tier: Cow<'a, str>,
}

impl<'a> From<&'a Inventory> for StoredInventory<'a> {
    fn from(p: &'a Inventory) -> Self {
        Self {
            product_id: p.product_id.as_str().into(),
            name: p.name.as_str().into(),
            category: p.category.as_str().into(),
            buy_cents: p.buy_cents,
            sell_cents: p.sell_cents,
            min_margin_bp: p.min_margin_bp,
            quantity: p.quantity,
            last_movement: p.last_movement,
            expiry_date: p.expiry_date,
            batch_no: p.batch_no.as_str().into(),
        }
    }
}

impl From<StoredInventory<'_>> for Inventory {
    fn from(p: StoredInventory<'_>) -> Self {
        Self {
            product_id: p.product_id.into_owned(),
            name: p.name.into_owned(),
            category: p.category.into_owned(),
            buy_cents: p.buy_cents,
            sell_cents: p.sell_cents,
            min_margin_bp: p.min_margin_bp,
            quantity: p.quantity,
            last_movement: p.last_movement,
            expiry_date: p.expiry_date,
            batch_no: p.batch_no.into_owned(),
        }
    }
}

impl<'a> From<&'a Client> for StoredClient<'a> {
    fn from(c: &'a Client) -> Self {
        Self {
            client_id: c.client_id.as_str().into(),
            name: c.name.as_str().into(),
            reported_revenue_cents: c.reported_revenue_cents,
            loyalty_tier: c.loyalty_tier.as_str().into(),
        }
    }
}

impl From<StoredClient<'_>> for Client {
    fn from(c: StoredClient<'_>) -> Self {
        Self {
            client_id: c.client_id.into_owned(),
            name: c.name.into_owned(),
            reported_revenue_cents: c.reported_revenue_cents,
            loyalty_tier: c.loyalty_tier.into_owned(),
        }
    }
}

/// Entries encoded, cut into one document's worth each.
#[derive(Default)]
pub(crate) struct Packed {
    chunks: Vec<Vec<u8>>,
    entries: usize,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes: usize = self.chunks.iter().map(Vec::len).sum();
        (f.debug_struct("Packed"))
            .field("entries", &self.entries)
            .field("documents", &self.chunks.len())
            .field("bytes", &bytes)
            .finish()
    }
}

impl Packed {
    /// The keys `keys` as the partition holds them: what a flush logs.
    pub(crate) fn keys(part: &PartitionState, keys: &Touched) -> Self {
        let mut out = Self::default();
        for (k, s) in (keys.sold.iter()).filter_map(|k| Some((k, part.sold.get(k)?))) {
            out.sold(k, s);
        }
        for (k, s) in (keys.cells.iter()).filter_map(|k| Some((k, part.cells.get(k)?))) {
            out.cell(k, s);
        }
        for (k, s) in (keys.spent.keys()).filter_map(|k| Some((k, part.spent.get(k)?))) {
            out.spent(k, s);
        }
        for s in keys.inventory.iter().filter_map(|k| part.inventory.get(k)) {
            out.inventory(s);
        }
        for s in keys.clients.keys().filter_map(|k| part.clients.get(k)) {
            out.client(s);
        }
        out
    }

    /// Every key of the partition: a snapshot.
    pub(crate) fn all(part: &PartitionState) -> Self {
        let mut out = Self::default();
        for (k, s) in &part.sold {
            out.sold(k, s);
        }
        for (cell, s) in &part.cells {
            out.cell(cell, s);
        }
        for (k, s) in &part.spent {
            out.spent(k, s);
        }
        for s in part.inventory.values() {
            out.inventory(s);
        }
        for s in part.clients.values() {
            out.client(s);
        }
        out
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries
    }

    /// The encoded entries, [`PER_DOCUMENT`] (or fewer, the last) in each.
    pub(crate) fn chunks(&self) -> &[Vec<u8>] {
        &self.chunks
    }

    fn push(&mut self, entry: &Entry<'_>) {
        if self.entries.is_multiple_of(PER_DOCUMENT) {
            self.chunks.push(Vec::new());
        }
        if let Some(chunk) = self.chunks.last_mut() {
            let buffer = std::mem::take(chunk);
            // postcard fails only on a sequence of unknown length or a full fixed buffer; an
            // entry has no sequence and a Vec grows.
            *chunk = postcard::to_extend(entry, buffer).expect("an entry encodes into a Vec");
        }
        self.entries += 1;
    }

    fn sold(&mut self, product: &str, s: &Slot<u64>) {
        let (product, next, units) = (product.into(), s.next, s.value);
        self.push(&Entry::Sold {
            product,
            next,
            units,
        });
    }

    fn cell(&mut self, (minute, product): &Cell, s: &Slot<u64>) {
        let (minute, product, next, units) = (*minute, product.as_str().into(), s.next, s.value);
        self.push(&Entry::Cell {
            minute,
            product,
            next,
            units,
        });
    }

    fn spent(&mut self, client: &str, s: &Slot<Spent>) {
        let (client, next) = (client.into(), s.next);
        let Spent { cents, invoices } = s.value;
        self.push(&Entry::Spent {
            client,
            next,
            cents,
            invoices,
        });
    }

    /// A product's record; its key is its `product_id`.
    fn inventory(&mut self, s: &Slot<Inventory>) {
        let record = (&s.value).into();
        self.push(&Entry::Inventory {
            next: s.next,
            record,
        });
    }

    /// A client's record; its key is its `client_id`.
    fn client(&mut self, s: &Slot<Client>) {
        let record = (&s.value).into();
        self.push(&Entry::Client {
            next: s.next,
            record,
        });
    }
}

/// Merges the entries of one stored chunk into `part` (the larger `next` winning per key);
/// returns how many there were, or why the chunk cannot be read.
pub(crate) fn unpack(mut bytes: &[u8], part: &mut PartitionState) -> Result<usize, String> {
    let mut read = 0;
    while !bytes.is_empty() {
        let (entry, rest) = postcard::take_from_bytes::<Entry<'_>>(bytes)
            .map_err(|e| format!("entry {read} unreadable: {e}"))?;
        bytes = rest;
        read += 1;
        match entry {
            Entry::Sold {
                product,
                next,
                units,
            } => merge(&mut part.sold, product.into(), Slot::stored(units, next)),
            Entry::Cell {
                minute,
                product,
                next,
                units,
            } => merge(
                &mut part.cells,
                (minute, product.into()),
                Slot::stored(units, next),
            ),
            Entry::Spent {
                client,
                next,
                cents,
                invoices,
            } => merge(
                &mut part.spent,
                client.into(),
                Slot::stored(Spent { cents, invoices }, next),
            ),
            Entry::Inventory { next, record } => {
                let record = Inventory::from(record);
                let key = record.product_id.clone();
                merge(&mut part.inventory, key, Slot::stored(record, next));
            }
            Entry::Client { next, record } => {
                let record = Client::from(record);
                let key = record.client_id.clone();
                merge(&mut part.clients, key, Slot::stored(record, next));
            }
        }
    }
    Ok(read)
}
