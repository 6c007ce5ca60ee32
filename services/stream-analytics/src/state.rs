//! What one Kafka partition contributed, key by key, with the offset each key reflects.
//!
//! Every key (a product's units sold, a client's spend, a category-minute cell, a product's
//! inventory record, a client record) carries `next`: the first offset of its partition it
//! does *not* include yet. A message at offset `o` changes a key only if `o >= next`, then sets
//! `next = o + 1`. Keys are written to MongoDB with their `next`, so after a crash (even one
//! between writing some keys and the partition's offset) replaying from the partition's
//! stored offset reapplies exactly what each key lacks: nothing is counted twice or lost.

use std::{collections::BTreeSet, hash::Hash};

use hashbrown::{Equivalent, hash_map::Entry};

use crate::model::{Client, Input, Inventory, Sale};

/// The state's hash maps and sets: foldhash instead of SipHash, which was a tenth of the CPU
/// of applying a sale. Its keys come from the input topics, whose writers are ours; foldhash
/// is seeded per process, which leaves a stranger nothing to aim at. hashbrown's maps (std's
/// are built on them) because they look a key up by any [`Equivalent`] form of it: a rollup
/// cell by its minute and the product id borrowed from the message ([`CellRef`]), with no
/// copy of the id unless the cell is new.
pub(crate) type HashMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type HashSet<K> = hashbrown::HashSet<K, foldhash::fast::RandomState>;

/// A value and the first offset it does not include.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot<T> {
    pub(crate) value: T,
    pub(crate) next: i64,
}

impl<T> Slot<T> {
    pub(crate) fn stored(value: T, next: i64) -> Self {
        Self { value, next }
    }
}

/// A client's spending seen in sales.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Spent {
    pub(crate) cents: i64,
    pub(crate) invoices: u64,
}

/// A product's or client's id as a key of the state the sales change: up to 24 bytes are
/// held inline, so comparing a key found by its hash reads no second cache line. With
/// `String` keys, comparing them (memcmp) was ~11 % of the service's CPU under a backlog,
/// nearly all of it waiting for the key's bytes to come from memory.
pub(crate) type Id = compact_str::CompactString;

/// A (minute since the epoch, product) cell of the rollup.
pub(crate) type Cell = (i64, Id);

/// A [`Cell`] as a line item names it: hashed like the cell (a tuple hashes its fields in
/// order), so it finds the cell without building one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CellRef<'a>(pub(crate) i64, pub(crate) &'a str);

impl Equivalent<Cell> for CellRef<'_> {
    fn equivalent(&self, cell: &Cell) -> bool {
        self.0 == cell.0 && self.1 == cell.1
    }
}

/// A borrowed form of a state key, copied into a key only when the key is new.
pub(crate) trait KeyRef<K>: Hash + Equivalent<K> {
    fn to_key(&self) -> K;
}

impl KeyRef<String> for str {
    fn to_key(&self) -> String {
        self.to_owned()
    }
}

impl KeyRef<Id> for str {
    fn to_key(&self) -> Id {
        Id::from(self)
    }
}

impl KeyRef<Cell> for CellRef<'_> {
    fn to_key(&self) -> Cell {
        (self.0, Id::from(self.1))
    }
}

/// When the pipeline took a message in: a count over every partition it consumes. A flush
/// writes the clients' documents oldest change first, so a change waits for about one flush
/// to become visible, not for up to a whole second one because of where its id sorts.
pub(crate) type Arrival = u64;

/// Keys changed since the last write: what a flush writes, and what it derives again. A
/// client's keys also keep the [`Arrival`] of the first message that changed them since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Touched {
    pub(crate) sold: HashSet<Id>,
    pub(crate) cells: HashSet<Cell>,
    pub(crate) spent: HashMap<Id, Arrival>,
    pub(crate) inventory: HashSet<String>,
    pub(crate) clients: HashMap<String, Arrival>,
}

impl Touched {
    /// Keys in all five sets.
    pub(crate) fn len(&self) -> usize {
        self.sold.len()
            + self.cells.len()
            + self.spent.len()
            + self.inventory.len()
            + self.clients.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sold.is_empty()
            && self.cells.is_empty()
            && self.spent.is_empty()
            && self.inventory.is_empty()
            && self.clients.is_empty()
    }

    /// Every key of `parts`.
    pub(crate) fn all(parts: &[&PartitionState]) -> Self {
        let mut t = Self::default();
        for p in parts {
            t.sold.extend(p.sold.keys().cloned());
            t.cells.extend(p.cells.keys().cloned());
            t.spent.extend(p.spent.keys().map(|k| (k.clone(), 0)));
            t.inventory.extend(p.inventory.keys().cloned());
            t.clients.extend(p.clients.keys().map(|k| (k.clone(), 0)));
        }
        t
    }

    /// Adds `other`'s keys; a key in both keeps its earlier arrival.
    pub(crate) fn extend(&mut self, other: Self) {
        self.sold.extend(other.sold);
        self.cells.extend(other.cells);
        self.inventory.extend(other.inventory);
        for (key, arrival) in other.spent {
            first_arrival(&mut self.spent, key, arrival);
        }
        for (key, arrival) in other.clients {
            first_arrival(&mut self.clients, key, arrival);
        }
    }
}

/// The stored documents that hold a partition's keys, as far as this process knows them (read
/// at load, or written by it): what the next compaction deletes.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoredDocuments {
    /// `analytics_log` ids.
    pub(crate) log: Vec<String>,
    /// `analytics_state` ids: a snapshot's documents (or older versions' per-key documents).
    pub(crate) state: Vec<String>,
}

/// One partition's state.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionState {
    /// First offset not processed yet.
    pub(crate) next: i64,
    /// `next` as stored in MongoDB.
    pub(crate) stored_next: i64,
    pub(crate) sold: HashMap<Id, Slot<u64>>,
    pub(crate) cells: HashMap<Cell, Slot<u64>>,
    pub(crate) spent: HashMap<Id, Slot<Spent>>,
    pub(crate) inventory: HashMap<String, Slot<Inventory>>,
    pub(crate) clients: HashMap<String, Slot<Client>>,
    /// Keys changed since the last write.
    pub(crate) touched: Touched,
    /// Its stored documents.
    pub(crate) documents: StoredDocuments,
    /// Log entries written since the last compaction (see [`crate::store`]).
    pub(crate) logged: usize,
    /// The first minute the rollup keeps (see [`PartitionState::prune_cells`]); `None` keeps
    /// every minute.
    pub(crate) cells_from: Option<i64>,
}

/// Keeps the slot that includes more of the partition (the larger `next`).
pub(crate) fn merge<K: Hash + Eq, T>(map: &mut HashMap<K, Slot<T>>, key: K, slot: Slot<T>) {
    match map.entry(key) {
        Entry::Vacant(e) => {
            e.insert(slot);
        }
        Entry::Occupied(mut e) => {
            if slot.next > e.get().next {
                e.insert(slot);
            }
        }
    }
}

/// Applies `change` to the slot of `key` unless the slot already includes `offset`; true if
/// it was applied. The key is copied only when it is new to `map`.
fn touch<K, Q, T: Default>(
    map: &mut HashMap<K, Slot<T>>,
    key: &Q,
    offset: i64,
    change: impl FnOnce(&mut T),
) -> bool
where
    K: Hash + Eq,
    Q: KeyRef<K> + ?Sized,
{
    let slot = match map.get_mut(key) {
        Some(slot) => slot,
        None => map
            .entry(key.to_key())
            .or_insert_with(|| Slot::stored(T::default(), 0)),
    };
    if offset < slot.next {
        return false;
    }
    slot.next = offset + 1;
    change(&mut slot.value);
    true
}

/// Adds `key` to `set` unless it is there already (so a key touched again is not copied).
fn mark<K, Q>(set: &mut HashSet<K>, key: &Q)
where
    K: Hash + Eq,
    Q: KeyRef<K> + ?Sized,
{
    if !set.contains(key) {
        set.insert(key.to_key());
    }
}

/// Adds `key` with `arrival` to `map` unless it is there already: it keeps its first arrival.
fn mark_arrival<K, Q>(map: &mut HashMap<K, Arrival>, key: &Q, arrival: Arrival)
where
    K: Hash + Eq,
    Q: KeyRef<K> + ?Sized,
{
    if !map.contains_key(key) {
        map.insert(key.to_key(), arrival);
    }
}

/// Records that `key` changed at `arrival`, keeping the earlier arrival if it is there.
fn first_arrival<K: Hash + Eq>(map: &mut HashMap<K, Arrival>, key: K, arrival: Arrival) {
    map.entry(key)
        .and_modify(|a| *a = (*a).min(arrival))
        .or_insert(arrival);
}

/// True when `new` replaces `old` as a product's current record: the later movement wins,
/// then the larger batch number, so the outcome never depends on arrival order.
pub(crate) fn newer_inventory(new: &Inventory, old: &Inventory) -> bool {
    (new.last_movement, &new.batch_no) > (old.last_movement, &old.batch_no)
}

/// A client in several partitions (records not keyed by client id): the record with the most
/// revenue to date wins, then the greater name, whatever the order.
fn newer_client(new: &Client, old: &Client) -> bool {
    let rank = |c: &Client| {
        (
            c.reported_revenue_cents,
            c.name.clone(),
            c.loyalty_tier.clone(),
        )
    };
    rank(new) > rank(old)
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
        self.next != self.stored_next || !self.touched.is_empty()
    }

    /// Applies a valid message at `offset`, taken in at `arrival`; a replayed one changes
    /// nothing.
    pub(crate) fn apply(&mut self, offset: i64, arrival: Arrival, input: Input<'_>) {
        if !self.is_new(offset) {
            return;
        }
        match input {
            Input::Sale(sale) => self.apply_sale(offset, arrival, sale),
            Input::Inventory(record) => {
                let key = record.product_id.clone();
                let changed = match self.inventory.entry(key.clone()) {
                    Entry::Vacant(e) => {
                        e.insert(Slot::stored(record, offset + 1));
                        true
                    }
                    Entry::Occupied(mut e) => {
                        let slot = e.get_mut();
                        let newer = offset >= slot.next && newer_inventory(&record, &slot.value);
                        if offset >= slot.next {
                            slot.next = offset + 1;
                        }
                        if newer {
                            slot.value = record;
                        }
                        newer
                    }
                };
                if changed {
                    self.touched.inventory.insert(key);
                }
            }
            Input::Client(record) => {
                let key = record.client_id.clone();
                let slot = self
                    .clients
                    .entry(key.clone())
                    .or_insert_with(|| Slot::stored(record.clone(), 0));
                if offset >= slot.next {
                    slot.next = offset + 1;
                    slot.value = record;
                    self.touched.clients.entry(key).or_insert(arrival);
                }
            }
        }
        self.advance(offset);
    }

    fn apply_sale(&mut self, offset: i64, arrival: Arrival, sale: Sale<'_>) {
        let minute = sale.timestamp.timestamp().div_euclid(60);
        // One change per key and message: a product on two lines of an invoice adds both.
        let mut items = sale.items;
        items.sort_unstable_by(|a, b| a.product_id.cmp(&b.product_id));
        items.dedup_by(|line, kept| {
            let same = line.product_id == kept.product_id;
            if same {
                kept.quantity = kept.quantity.saturating_add(line.quantity);
            }
            same
        });
        let in_rollup = self.cells_from.is_none_or(|from| minute >= from);
        for item in items {
            let units = item.quantity;
            let product: &str = &item.product_id;
            if touch(&mut self.sold, product, offset, |u| {
                *u = u.saturating_add(units);
            }) {
                mark(&mut self.touched.sold, product);
            }
            if !in_rollup {
                // A minute past the rollup's retention: it stays out.
                continue;
            }
            let cell = CellRef(minute, product);
            if touch(&mut self.cells, &cell, offset, |u| {
                *u = u.saturating_add(units);
            }) {
                mark(&mut self.touched.cells, &cell);
            }
        }
        let client: &str = &sale.client_id;
        if touch(&mut self.spent, client, offset, |s| {
            s.cents = s.cents.saturating_add(sale.total_amount);
            s.invoices += 1;
        }) {
            mark_arrival(&mut self.touched.spent, client, arrival);
        }
    }

    /// After a successful write of `written` log entries: the changed keys, which are no
    /// longer pending.
    pub(crate) fn mark_stored(&mut self, written: usize) -> Touched {
        self.stored_next = self.next;
        self.logged += written;
        std::mem::take(&mut self.touched)
    }

    /// Drops the rollup cells of minutes before `from`, and keeps later sales from adding
    /// them back; returns the cells dropped, so the view drops them too. `from` only grows
    /// (it follows the clock).
    pub(crate) fn prune_cells(&mut self, from: i64) -> Vec<Cell> {
        if self.cells_from.is_some_and(|kept| kept >= from) {
            return Vec::new();
        }
        self.cells_from = Some(from);
        let old: Vec<Cell> = self
            .cells
            .keys()
            .filter(|(minute, _)| *minute < from)
            .cloned()
            .collect();
        for cell in &old {
            self.cells.remove(cell);
            self.touched.cells.remove(cell);
        }
        old
    }

    /// Once a snapshot of the state is taken: the log it replaces no longer counts.
    pub(crate) fn mark_compacted(&mut self) {
        self.logged = 0;
    }

    /// Once the documents `snapshot` are about to replace what is stored: the documents they
    /// replace.
    pub(crate) fn replace_documents(&mut self, snapshot: Vec<String>) -> StoredDocuments {
        let snapshot = StoredDocuments {
            log: Vec::new(),
            state: snapshot,
        };
        std::mem::replace(&mut self.documents, snapshot)
    }

    /// Keys held, of every kind.
    pub(crate) fn keys(&self) -> usize {
        self.sold.len()
            + self.cells.len()
            + self.spent.len()
            + self.inventory.len()
            + self.clients.len()
    }
}

/// Which results a change of the view affects.
#[derive(Debug, Default)]
pub(crate) struct Affected {
    /// Units sold or a product record changed: the ranking.
    pub(crate) winners: bool,
    /// Products whose record changed.
    pub(crate) products: BTreeSet<String>,
    /// Clients, with the arrival of their earliest change.
    pub(crate) clients: HashMap<String, Arrival>,
    /// (category, minute) cells of the rollup.
    pub(crate) rollup: BTreeSet<(String, i64)>,
}

impl Affected {
    /// The affected clients, the one changed earliest first (ties by id): the order a flush
    /// writes their documents in.
    pub(crate) fn clients_oldest_first(&self) -> Vec<&String> {
        let mut clients: Vec<(&String, Arrival)> =
            self.clients.iter().map(|(id, &a)| (id, a)).collect();
        clients.sort_unstable_by(|(a_id, a), (b_id, b)| a.cmp(b).then_with(|| a_id.cmp(b_id)));
        clients.into_iter().map(|(id, _)| id).collect()
    }
}

/// Every partition merged: what the results are computed from. Kept up to date key by key
/// ([`View::refresh`]), so a flush costs what changed, not what is stored.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub(crate) sold: HashMap<String, u64>,
    /// Minute → product → units.
    pub(crate) cells: HashMap<i64, HashMap<String, u64>>,
    /// Product → the minutes it sold in (to find its cells when its record changes).
    pub(crate) product_minutes: HashMap<String, BTreeSet<i64>>,
    pub(crate) spent: HashMap<String, Spent>,
    pub(crate) inventory: HashMap<String, Inventory>,
    pub(crate) clients: HashMap<String, Client>,
}

/// Σ of a key's values over the partitions that hold it; `None` if none does.
fn sum<K, T, Q>(
    parts: &[&PartitionState],
    map: impl Fn(&PartitionState) -> &HashMap<K, Slot<T>>,
    key: &Q,
    add: impl Fn(&mut T, &T),
) -> Option<T>
where
    K: Hash + Eq,
    Q: Hash + Equivalent<K> + ?Sized,
    T: Default,
{
    let mut out: Option<T> = None;
    for p in parts {
        if let Some(s) = map(p).get(key) {
            add(out.get_or_insert_with(T::default), &s.value);
        }
    }
    out
}

/// The winning record of a key over the partitions (the first of equals).
fn latest<T: Clone>(
    parts: &[&PartitionState],
    map: impl Fn(&PartitionState) -> &HashMap<String, Slot<T>>,
    key: &str,
    newer: impl Fn(&T, &T) -> bool,
) -> Option<T> {
    let mut out: Option<&T> = None;
    for p in parts {
        if let Some(s) = map(p).get(key)
            && out.is_none_or(|o| newer(&s.value, o))
        {
            out = Some(&s.value);
        }
    }
    out.cloned()
}

fn set<T>(map: &mut HashMap<String, T>, key: &str, value: Option<T>) {
    match value {
        Some(v) => {
            map.insert(key.to_owned(), v);
        }
        None => {
            map.remove(key);
        }
    }
}

impl View {
    /// The view of `parts`, from scratch.
    pub(crate) fn build(parts: &[&PartitionState]) -> Self {
        let mut view = Self::default();
        view.refresh(&Touched::all(parts), parts);
        view
    }

    /// Merges the `touched` keys again from `parts` (every partition's state, this process's
    /// and the others' as stored), and says which results that affects.
    pub(crate) fn refresh(&mut self, touched: &Touched, parts: &[&PartitionState]) -> Affected {
        let mut affected = Affected::default();
        for k in &touched.sold {
            let units = sum(
                parts,
                |p| &p.sold,
                k.as_str(),
                |a, b| *a = a.saturating_add(*b),
            );
            set(&mut self.sold, k, units);
            affected.winners = true;
        }
        // Cells before records: a record's change below reaches the cells added here.
        for cell in &touched.cells {
            let (minute, product) = cell;
            let units = sum(parts, |p| &p.cells, cell, |a, b| *a = a.saturating_add(*b));
            let products = self.cells.entry(*minute).or_default();
            if let Some(units) = units {
                products.insert(product.to_string(), units);
                self.product_minutes
                    .entry(product.to_string())
                    .or_default()
                    .insert(*minute);
            } else {
                products.remove(product.as_str());
                if products.is_empty() {
                    self.cells.remove(minute);
                }
                if let Some(minutes) = self.product_minutes.get_mut(product.as_str()) {
                    minutes.remove(minute);
                }
            }
            if let Some(p) = self.inventory.get(product.as_str()) {
                affected.rollup.insert((p.category.clone(), *minute));
            }
        }
        for (k, &arrival) in &touched.spent {
            let spent = sum(
                parts,
                |p| &p.spent,
                k.as_str(),
                |a, b| {
                    a.cents = a.cents.saturating_add(b.cents);
                    a.invoices += b.invoices;
                },
            );
            set(&mut self.spent, k, spent);
            first_arrival(&mut affected.clients, k.to_string(), arrival);
        }
        for (k, &arrival) in &touched.clients {
            let record = latest(parts, |p| &p.clients, k, newer_client);
            set(&mut self.clients, k, record);
            first_arrival(&mut affected.clients, k.clone(), arrival);
        }
        for k in &touched.inventory {
            let record = latest(parts, |p| &p.inventory, k, newer_inventory);
            let categories: BTreeSet<String> = [self.inventory.get(k), record.as_ref()]
                .into_iter()
                .flatten()
                .map(|p| p.category.clone())
                .collect();
            for minute in self.product_minutes.get(k).into_iter().flatten() {
                for c in &categories {
                    affected.rollup.insert((c.clone(), *minute));
                }
            }
            set(&mut self.inventory, k, record);
            affected.winners = true;
            affected.products.insert(k.clone());
        }
        affected
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::model::LineItem;

    fn sale(client: &str, items: &[(&str, u64)], cents: i64) -> Input<'static> {
        sale_at(120, client, items, cents)
    }

    fn sale_at(secs: i64, client: &str, items: &[(&str, u64)], cents: i64) -> Input<'static> {
        Input::Sale(Sale {
            invoice_id: "I".into(),
            client_id: client.to_owned().into(),
            timestamp: Utc.timestamp_opt(secs, 0).single().expect("time"),
            total_amount: cents,
            items: items
                .iter()
                .map(|(p, q)| LineItem {
                    product_id: (*p).to_owned().into(),
                    quantity: *q,
                })
                .collect(),
        })
    }

    #[test]
    fn replays_change_nothing_and_same_product_lines_add_up() {
        let mut p = PartitionState::default();
        p.apply(0, 0, sale("C1", &[("P1", 2), ("P1", 3), ("P2", 1)], 500));
        p.apply(0, 0, sale("C1", &[("P1", 2)], 500));
        p.apply(1, 0, sale("C1", &[("P1", 1)], 100));
        assert_eq!(p.sold["P1"].value, 6);
        assert_eq!(p.cells[&(2, Id::from("P1"))].value, 6);
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
        p.apply(4, 0, sale("C", &[("P1", 7), ("P2", 1)], 1));
        p.apply(6, 0, sale("C", &[("P1", 1)], 1));
        assert_eq!((p.sold["P1"].value, p.sold["P2"].value), (11, 1));
    }

    #[test]
    fn pruned_minutes_leave_the_rollup_and_late_sales_do_not_bring_them_back() {
        let mut p = PartitionState::default();
        p.apply(0, 0, sale_at(60, "C", &[("P1", 1)], 1)); // minute 1
        p.apply(1, 0, sale_at(180, "C", &[("P1", 2)], 1)); // minute 3
        assert_eq!(p.prune_cells(2), [(1, Id::from("P1"))]);
        assert!(!p.touched.cells.contains(&(1, Id::from("P1"))));
        assert_eq!(p.cells.keys().collect::<Vec<_>>(), [&(3, Id::from("P1"))]);
        // A late sale for a pruned minute still counts as units sold and spend, not in the
        // rollup; an earlier cut-off changes nothing.
        p.apply(2, 0, sale_at(61, "C", &[("P1", 5)], 1));
        assert_eq!((p.sold["P1"].value, p.spent["C"].value.invoices), (8, 3));
        assert!(!p.cells.contains_key(&(1, Id::from("P1"))));
        assert!(p.prune_cells(1).is_empty());
        assert_eq!(p.prune_cells(4), [(3, Id::from("P1"))]);
        assert!(p.cells.is_empty());
    }
}
