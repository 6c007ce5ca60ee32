//! What one Kafka partition contributed, key by key, with the offset each key reflects.
//!
//! Every key (a product's units sold, a client's spend, a category-minute cell, a product's
//! inventory record, a client record) carries `next`: the first offset of its partition it
//! does *not* include yet. A message at offset `o` changes a key only if `o >= next`, then sets
//! `next = o + 1`. Keys are written to MongoDB with their `next`, so after a crash (even one
//! between writing some keys and the partition's offset) replaying from the partition's
//! stored offset reapplies exactly what each key lacks: nothing is counted twice or lost.

use std::collections::{BTreeMap, HashMap};

use crate::model::{Client, Input, Inventory, Sale};

/// A value and the first offset it does not include.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot<T> {
    pub(crate) value: T,
    pub(crate) next: i64,
    pub(crate) dirty: bool,
}

impl<T> Slot<T> {
    pub(crate) fn stored(value: T, next: i64) -> Self {
        Self {
            value,
            next,
            dirty: false,
        }
    }
}

/// A client's spending seen in sales.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Spent {
    pub(crate) cents: i64,
    pub(crate) invoices: u64,
}

/// A (minute since the epoch, product) cell of the rollup.
pub(crate) type Cell = (i64, String);

/// One partition's state.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionState {
    /// First offset not processed yet.
    pub(crate) next: i64,
    /// `next` as stored in MongoDB.
    pub(crate) stored_next: i64,
    pub(crate) sold: HashMap<String, Slot<u64>>,
    pub(crate) cells: HashMap<Cell, Slot<u64>>,
    pub(crate) spent: HashMap<String, Slot<Spent>>,
    pub(crate) inventory: HashMap<String, Slot<Inventory>>,
    pub(crate) clients: HashMap<String, Slot<Client>>,
}

/// Applies `change` to the slot of `key` unless the slot already includes `offset`.
fn touch<K, T: Default>(
    map: &mut HashMap<K, Slot<T>>,
    key: K,
    offset: i64,
    change: impl FnOnce(&mut T) -> bool,
) where
    K: std::hash::Hash + Eq,
{
    let slot = map
        .entry(key)
        .or_insert_with(|| Slot::stored(T::default(), 0));
    if offset >= slot.next {
        slot.next = offset + 1;
        if change(&mut slot.value) {
            slot.dirty = true;
        }
    }
}

/// True when `new` replaces `old` as a product's current record: the later movement wins,
/// then the larger batch number, so the outcome never depends on arrival order.
pub(crate) fn newer_inventory(new: &Inventory, old: &Inventory) -> bool {
    (new.last_movement, &new.batch_no) > (old.last_movement, &old.batch_no)
}

impl PartitionState {
    /// True when messages from `offset` on are new to this partition.
    pub(crate) fn is_new(&self, offset: i64) -> bool {
        offset >= self.next
    }

    /// Marks `offset` processed (also for dead-lettered messages).
    pub(crate) fn advance(&mut self, offset: i64) {
        self.next = self.next.max(offset + 1);
    }

    /// True when something must be written.
    pub(crate) fn has_changes(&self) -> bool {
        self.next != self.stored_next
            || self.sold.values().any(|s| s.dirty)
            || self.cells.values().any(|s| s.dirty)
            || self.spent.values().any(|s| s.dirty)
            || self.inventory.values().any(|s| s.dirty)
            || self.clients.values().any(|s| s.dirty)
    }

    /// Applies a valid message at `offset`; a replayed one changes nothing.
    pub(crate) fn apply(&mut self, offset: i64, input: Input) {
        if !self.is_new(offset) {
            return;
        }
        match input {
            Input::Sale(sale) => self.apply_sale(offset, sale),
            Input::Inventory(record) => {
                let key = record.product_id.clone();
                let slot = self
                    .inventory
                    .entry(key)
                    .or_insert_with(|| Slot::stored(record.clone(), 0));
                if offset >= slot.next {
                    let first = slot.next == 0 && !slot.dirty;
                    slot.next = offset + 1;
                    if first || newer_inventory(&record, &slot.value) {
                        slot.value = record;
                        slot.dirty = true;
                    }
                }
            }
            Input::Client(record) => {
                let key = record.client_id.clone();
                let slot = self
                    .clients
                    .entry(key)
                    .or_insert_with(|| Slot::stored(record.clone(), 0));
                if offset >= slot.next {
                    slot.next = offset + 1;
                    slot.value = record;
                    slot.dirty = true;
                }
            }
        }
        self.advance(offset);
    }

    fn apply_sale(&mut self, offset: i64, sale: Sale) {
        let minute = sale.timestamp.timestamp().div_euclid(60);
        // One change per key and message: a product on two lines of an invoice adds both.
        let mut per_product: BTreeMap<String, u64> = BTreeMap::new();
        for item in sale.items {
            *per_product.entry(item.product_id).or_default() += item.quantity;
        }
        for (product, units) in per_product {
            touch(&mut self.sold, product.clone(), offset, |u| {
                *u += units;
                true
            });
            touch(&mut self.cells, (minute, product), offset, |u| {
                *u += units;
                true
            });
        }
        touch(&mut self.spent, sale.client_id, offset, |s| {
            s.cents += sale.total_amount;
            s.invoices += 1;
            true
        });
    }

    /// Clears the dirty marks after a successful write.
    pub(crate) fn mark_stored(&mut self) {
        self.stored_next = self.next;
        self.sold.values_mut().for_each(|s| s.dirty = false);
        self.cells.values_mut().for_each(|s| s.dirty = false);
        self.spent.values_mut().for_each(|s| s.dirty = false);
        self.inventory.values_mut().for_each(|s| s.dirty = false);
        self.clients.values_mut().for_each(|s| s.dirty = false);
    }
}

/// Every partition merged: what the results are computed from.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub(crate) sold: HashMap<String, u64>,
    pub(crate) cells: HashMap<Cell, u64>,
    pub(crate) spent: HashMap<String, Spent>,
    pub(crate) inventory: HashMap<String, Inventory>,
    pub(crate) clients: HashMap<String, Client>,
}

impl View {
    /// Adds one partition's contribution.
    pub(crate) fn add(&mut self, part: &PartitionState) {
        for (k, s) in &part.sold {
            *self.sold.entry(k.clone()).or_default() += s.value;
        }
        for (k, s) in &part.cells {
            *self.cells.entry(k.clone()).or_default() += s.value;
        }
        for (k, s) in &part.spent {
            let e = self.spent.entry(k.clone()).or_default();
            e.cents += s.value.cents;
            e.invoices += s.value.invoices;
        }
        for (k, s) in &part.inventory {
            match self.inventory.get(k) {
                Some(old) if !newer_inventory(&s.value, old) => {}
                _ => {
                    self.inventory.insert(k.clone(), s.value.clone());
                }
            }
        }
        for (k, s) in &part.clients {
            // A client in several partitions (records not keyed by client id): the record
            // with the most revenue to date wins, then the greater name, whatever the order.
            let rank = |c: &Client| {
                (
                    c.reported_revenue_cents,
                    c.name.clone(),
                    c.loyalty_tier.clone(),
                )
            };
            match self.clients.get(k) {
                Some(old) if rank(old) >= rank(&s.value) => {}
                _ => {
                    self.clients.insert(k.clone(), s.value.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::model::LineItem;

    fn sale(client: &str, items: &[(&str, u64)], cents: i64) -> Input {
        Input::Sale(Sale {
            invoice_id: "I".into(),
            client_id: client.into(),
            timestamp: Utc.timestamp_opt(120, 0).single().expect("time"),
            total_amount: cents,
            items: items
                .iter()
                .map(|(p, q)| LineItem {
                    product_id: (*p).into(),
                    quantity: *q,
                })
                .collect(),
        })
    }

    #[test]
    fn replays_change_nothing_and_same_product_lines_add_up() {
        let mut p = PartitionState::default();
        p.apply(0, sale("C1", &[("P1", 2), ("P1", 3), ("P2", 1)], 500));
        p.apply(0, sale("C1", &[("P1", 2)], 500));
        p.apply(1, sale("C1", &[("P1", 1)], 100));
        assert_eq!(p.sold["P1"].value, 6);
        assert_eq!(p.cells[&(2, "P1".to_owned())].value, 6);
        assert_eq!(
            p.spent["C1"].value,
            Spent {
                cents: 600,
                invoices: 2
            }
        );
        assert_eq!(p.next, 2);
    }

    #[test]
    fn a_key_ahead_of_its_partition_skips_what_it_holds() {
        // P1 was stored after offset 5, the partition offset only after 3 (a crash between).
        let mut p = PartitionState {
            next: 3,
            stored_next: 3,
            ..Default::default()
        };
        p.sold.insert("P1".into(), Slot::stored(10, 6));
        p.apply(4, sale("C", &[("P1", 7), ("P2", 1)], 1));
        p.apply(6, sale("C", &[("P1", 1)], 1));
        assert_eq!((p.sold["P1"].value, p.sold["P2"].value), (11, 1));
    }
}
