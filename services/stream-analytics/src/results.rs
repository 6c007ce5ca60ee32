//! The results, computed from the merged [`View`] as plain documents: pure functions, so the
//! rules are unit-tested without a database.
//!
//! [`compute`] derives every document (at start and after a rebalance); [`changes`] derives
//! only the documents a flush's changes affect and compares them with the [`Stored`] digests,
//! so a steady flush costs what changed, whatever the size of the state.
//!
//! Money is integer cents (`*_cents`, exact) plus a `"123.45"` string for people. Prices are
//! a product's current record (the latest inventory update), so a sale counts as soon as its
//! product's record exists, whichever arrived first.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hasher as _},
};

use chrono::{DateTime, TimeZone, Utc};
use mongodb::bson::{Bson, Document, RawDocumentBuf, doc};

use crate::{
    model::{Inventory, format_cents},
    state::{Affected, View},
};

/// Result collections, by name.
pub(crate) const WINNERS: &str = "product_winners";
pub(crate) const LOSS_RISK: &str = "loss_risk_products";
pub(crate) const CLIENTS: &str = "clients";
pub(crate) const ROLLUP: &str = "sales_by_category_minute";
/// Every result collection, in the order a flush writes them: the few documents first,
/// then `clients`, which holds one per client (nearly all of a steady flush's documents).
pub(crate) const COLLECTIONS: [&str; 4] = [WINNERS, LOSS_RISK, ROLLUP, CLIENTS];

/// The thresholds of the rules.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) top_products: usize,
    pub(crate) expiry_window_days: i64,
    pub(crate) stale_movement_days: i64,
    pub(crate) promo_min_revenue_cents: i64,
    pub(crate) promo_tiers: Vec<String>,
    /// Minutes of the rollup kept before "now"; `None` keeps every minute.
    pub(crate) rollup_minutes: Option<i64>,
}

/// Collection → document id → document (without `updated_at`).
#[cfg(test)]
pub(crate) type Results = BTreeMap<&'static str, BTreeMap<String, Document>>;

/// A document to write, as raw BSON (a flush from scratch may hold a million): `Some`
/// replaces it, `None` deletes it.
pub(crate) type Change = (&'static str, String, Option<RawDocumentBuf>);

/// What MongoDB holds: collection → id → digest of the document (without `updated_at`). A
/// digest instead of the document keeps a million clients' results in tens of MB.
#[derive(Debug, Default)]
pub(crate) struct Stored(HashMap<&'static str, HashMap<String, u64>>);

/// A digest of a document's BSON bytes.
fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// A document's BSON bytes; `None` (logged) for one BSON cannot hold, which never happens
/// with the fixed field names here.
fn encode(d: &Document) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    match d.to_writer(&mut bytes) {
        Ok(()) => Some(bytes),
        Err(err) => {
            tracing::error!(error = %err, "result document not encodable; not written");
            None
        }
    }
}

impl Stored {
    /// The digests of documents.
    #[cfg(test)]
    pub(crate) fn of(results: &Results) -> Self {
        let mut out = Self::default();
        for (name, docs) in results {
            for (id, d) in docs {
                out.insert(name, id.clone(), d);
            }
        }
        out
    }

    /// Records a document as read back from MongoDB (without `updated_at`).
    pub(crate) fn insert(&mut self, name: &'static str, id: String, d: &Document) {
        if let Some(bytes) = encode(d) {
            self.0.entry(name).or_default().insert(id, digest(&bytes));
        }
    }

    /// Adds a change to `out` unless MongoDB holds that already.
    fn compare(
        &self,
        name: &'static str,
        id: String,
        new: Option<Document>,
        out: &mut Vec<Change>,
    ) {
        let old = self.0.get(name).and_then(|m| m.get(&id));
        let new = match new {
            Some(d) => match encode(&d) {
                Some(bytes) => Some(bytes),
                None => return,
            },
            None => None,
        };
        let same = match (&new, old) {
            (Some(bytes), Some(&h)) => digest(bytes) == h,
            (None, None) => true,
            _ => false,
        };
        if !same {
            let raw = new.map(RawDocumentBuf::from_bytes).transpose();
            match raw {
                Ok(raw) => out.push((name, id, raw)),
                Err(err) => tracing::error!(error = %err, "result document not encodable"),
            }
        }
    }

    /// Records written changes.
    pub(crate) fn apply(&mut self, changes: &[Change]) {
        for (name, id, d) in changes {
            let map = self.0.entry(name).or_default();
            match d {
                Some(d) => {
                    map.insert(id.clone(), digest(d.as_bytes()));
                }
                None => {
                    map.remove(id);
                }
            }
        }
    }

    /// Every difference between `new` (every document) and what is stored.
    #[cfg(test)]
    pub(crate) fn diff(&self, new: Results) -> Vec<Change> {
        let mut out = Vec::new();
        for name in COLLECTIONS {
            let docs = new.get(name);
            if let Some(stored) = self.0.get(name) {
                for id in stored.keys() {
                    if !docs.is_some_and(|d| d.contains_key(id)) {
                        out.push((name, id.clone(), None));
                    }
                }
            }
        }
        for (name, docs) in new {
            for (id, d) in docs {
                self.compare(name, id, Some(d), &mut out);
            }
        }
        out
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Units × price in cents, saturating instead of wrapping.
fn times(units: u64, cents: i64) -> i64 {
    i64::try_from(i128::from(units) * i128::from(cents)).unwrap_or(i64::MAX)
}

/// Computes every result collection (the rules as documents, for tests; the service derives
/// from scratch with [`all_changes`], which never holds them all).
#[cfg(test)]
pub(crate) fn compute(view: &View, rules: &Rules, now: DateTime<Utc>) -> Results {
    let mut out = Results::new();
    out.insert(WINNERS, winners(view, rules));
    let risk = view
        .inventory
        .iter()
        .filter_map(|(id, p)| Some((id.clone(), loss_risk(p, rules, now)?)))
        .collect();
    out.insert(LOSS_RISK, risk);
    let clients = view
        .spent
        .keys()
        .chain(view.clients.keys())
        .map(|id| (id.clone(), client(view, rules, id)))
        .collect();
    out.insert(CLIENTS, clients);
    let mut cells = BTreeMap::new();
    for (minute, products) in &view.cells {
        for product in products.keys() {
            if let Some(p) = view.inventory.get(product) {
                cells.insert((p.category.clone(), *minute), ());
            }
        }
    }
    let rollup = cells
        .into_keys()
        .filter_map(|(category, minute)| rollup(view, &category, minute))
        .collect();
    out.insert(ROLLUP, rollup);
    out
}

/// Every document that differs from what is stored, derived from scratch (at start, after a
/// rebalance) one document at a time: with a million clients, only the changed ones are held,
/// as raw BSON.
pub(crate) fn all_changes(
    view: &View,
    rules: &Rules,
    now: DateTime<Utc>,
    stored: &Stored,
) -> Vec<Change> {
    let ranking = Affected {
        winners: true,
        ..Affected::default()
    };
    let mut out = changes(view, &ranking, true, rules, now, stored);
    let known = |id: &String| view.spent.contains_key(id) || view.clients.contains_key(id);
    if let Some(old) = stored.0.get(CLIENTS) {
        for id in old.keys().filter(|id| !known(id)) {
            out.push((CLIENTS, id.clone(), None));
        }
    }
    let only_records = view
        .clients
        .keys()
        .filter(|id| !view.spent.contains_key(*id));
    for id in view.spent.keys().chain(only_records) {
        stored.compare(CLIENTS, id.clone(), Some(client(view, rules, id)), &mut out);
    }
    let mut cells = BTreeMap::new();
    for (minute, products) in &view.cells {
        for product in products.keys() {
            if let Some(p) = view.inventory.get(product) {
                let id = rollup_id(&p.category, *minute);
                cells.entry(id).or_insert((p.category.as_str(), *minute));
            }
        }
    }
    if let Some(old) = stored.0.get(ROLLUP) {
        for id in old.keys().filter(|id| !cells.contains_key(*id)) {
            out.push((ROLLUP, id.clone(), None));
        }
    }
    for (id, (category, minute)) in cells {
        let d = rollup(view, category, minute).map(|(_, d)| d);
        stored.compare(ROLLUP, id, d, &mut out);
    }
    out
}

/// The documents that `affected` changes, compared with what is stored. `all_products`
/// re-evaluates every product's loss risk (the clock moved).
pub(crate) fn changes(
    view: &View,
    affected: &Affected,
    all_products: bool,
    rules: &Rules,
    now: DateTime<Utc>,
    stored: &Stored,
) -> Vec<Change> {
    let mut out = Vec::new();
    if affected.winners {
        let top = winners(view, rules);
        if let Some(old) = stored.0.get(WINNERS) {
            for id in old.keys().filter(|id| !top.contains_key(*id)) {
                out.push((WINNERS, id.clone(), None));
            }
        }
        for (id, d) in top {
            stored.compare(WINNERS, id, Some(d), &mut out);
        }
    }
    let risk = |id: &String| {
        view.inventory
            .get(id)
            .and_then(|p| loss_risk(p, rules, now))
    };
    if all_products {
        if let Some(old) = stored.0.get(LOSS_RISK) {
            for id in old.keys().filter(|id| !view.inventory.contains_key(*id)) {
                out.push((LOSS_RISK, id.clone(), None));
            }
        }
        for id in view.inventory.keys() {
            stored.compare(LOSS_RISK, id.clone(), risk(id), &mut out);
        }
    } else {
        for id in &affected.products {
            stored.compare(LOSS_RISK, id.clone(), risk(id), &mut out);
        }
    }
    for id in affected.clients_oldest_first() {
        let known = view.spent.contains_key(id) || view.clients.contains_key(id);
        let d = known.then(|| client(view, rules, id));
        stored.compare(CLIENTS, id.clone(), d, &mut out);
    }
    for (category, minute) in &affected.rollup {
        let id = rollup_id(category, *minute);
        let d = rollup(view, category, *minute).map(|(_, d)| d);
        stored.compare(ROLLUP, id, d, &mut out);
    }
    out
}

fn winners(view: &View, rules: &Rules) -> BTreeMap<String, Document> {
    let mut rows: Vec<(&String, u64, &Inventory, i64)> = view
        .sold
        .iter()
        .filter_map(|(id, &units)| {
            let p = view.inventory.get(id)?;
            Some((id, units, p, times(units, p.sell_cents - p.buy_cents)))
        })
        .collect();
    let order = |a: &(&String, u64, &Inventory, i64), b: &(&String, u64, &Inventory, i64)| {
        b.3.cmp(&a.3).then_with(|| a.0.cmp(b.0))
    };
    if rows.len() > rules.top_products && rules.top_products > 0 {
        rows.select_nth_unstable_by(rules.top_products - 1, order);
        rows.truncate(rules.top_products);
    }
    rows.sort_by(order);
    rows.into_iter()
        .take(rules.top_products)
        .enumerate()
        .map(|(rank, (id, units, p, profit))| {
            let (revenue, cost) = (times(units, p.sell_cents), times(units, p.buy_cents));
            let d = doc! {
                "_id": id, "rank": int(rank as u64 + 1), "product_id": id, "name": &p.name,
                "category": &p.category, "units": int(units),
                "buy_price_cents": p.buy_cents, "sell_price_cents": p.sell_cents,
                "revenue_cents": revenue, "cost_cents": cost, "profit_cents": profit,
                "revenue": format_cents(revenue), "cost": format_cents(cost),
                "profit": format_cents(profit),
            };
            (id.clone(), d)
        })
        .collect()
}

/// A product's loss-risk document, if it is at risk.
fn loss_risk(p: &Inventory, rules: &Rules, now: DateTime<Utc>) -> Option<Document> {
    let days_to_expiry = (p.expiry_date - now.date_naive()).num_days();
    let days_since_movement = (now - p.last_movement).num_days();
    // Margin on the selling price, in basis points, compared without rounding.
    let margin_diff = i128::from(p.sell_cents - p.buy_cents) * 10_000;
    let below = if p.sell_cents == 0 {
        p.min_margin_bp > 0
    } else {
        margin_diff < i128::from(p.min_margin_bp) * i128::from(p.sell_cents)
    };
    let mut reasons = Vec::new();
    if days_to_expiry <= rules.expiry_window_days {
        reasons.push(format!("expires_within_{}_days", rules.expiry_window_days));
    }
    if days_since_movement >= rules.stale_movement_days {
        reasons.push(format!("no_movement_{}_days", rules.stale_movement_days));
    }
    if below {
        reasons.push("margin_below_threshold".to_owned());
    }
    if reasons.is_empty() {
        return None;
    }
    let margin_bp = if p.sell_cents == 0 {
        Bson::Null
    } else {
        Bson::Int64(i64::try_from(margin_diff / i128::from(p.sell_cents)).unwrap_or(0))
    };
    Some(doc! {
        "_id": &p.product_id, "product_id": &p.product_id, "name": &p.name,
        "category": &p.category, "reasons": reasons, "expiry_date": p.expiry_date.to_string(),
        "days_to_expiry": days_to_expiry,
        "last_movement": crate::model::bson_time(p.last_movement),
        "days_since_movement": days_since_movement,
        "margin_bp": margin_bp, "min_margin_bp": p.min_margin_bp,
        "quantity": int(p.quantity), "batch_no": &p.batch_no,
    })
}

/// A client's document.
fn client(view: &View, rules: &Rules, id: &str) -> Document {
    let spent = view.spent.get(id).copied().unwrap_or_default();
    let record = view.clients.get(id);
    let tier = record.map(|c| c.loyalty_tier.to_ascii_lowercase());
    let rule = match &tier {
        Some(t) if rules.promo_tiers.contains(t) => Some(format!("loyalty tier {t}")),
        _ if spent.cents >= rules.promo_min_revenue_cents => Some(format!(
            "revenue {} >= {}",
            format_cents(spent.cents),
            format_cents(rules.promo_min_revenue_cents)
        )),
        _ => None,
    };
    doc! {
        "_id": id, "client_id": id, "name": record.map(|c| c.name.clone()),
        "loyalty_tier": record.map(|c| c.loyalty_tier.clone()),
        "revenue_cents": spent.cents, "revenue": format_cents(spent.cents),
        "invoices": int(spent.invoices),
        "reported_revenue_cents": record.map(|c| c.reported_revenue_cents),
        "eligible_promo": rule.is_some(), "promo_rule": rule,
    }
}

fn minute_start(minute: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(minute.saturating_mul(60), 0)
        .single()
        .unwrap_or_default()
}

fn rollup_id(category: &str, minute: i64) -> String {
    format!(
        "{category}|{}",
        minute_start(minute).format("%Y-%m-%dT%H:%MZ")
    )
}

/// The rollup document of a category's minute, if a product of that category sold in it.
fn rollup(view: &View, category: &str, minute: i64) -> Option<(String, Document)> {
    let mut found = false;
    let (mut units, mut revenue, mut profit) = (0u64, 0i64, 0i64);
    for (product, &n) in view.cells.get(&minute)? {
        let Some(p) = view.inventory.get(product) else {
            continue;
        };
        if p.category != category {
            continue;
        }
        found = true;
        units = units.saturating_add(n);
        revenue = revenue.saturating_add(times(n, p.sell_cents));
        profit = profit.saturating_add(times(n, p.sell_cents - p.buy_cents));
    }
    if !found {
        return None;
    }
    let id = rollup_id(category, minute);
    let d = doc! {
        "_id": &id, "category": category, "minute": crate::model::bson_time(minute_start(minute)),
        "units": int(units), "revenue_cents": revenue, "profit_cents": profit,
    };
    Some((id, d))
}

#[cfg(test)]
#[path = "results_tests.rs"]
mod tests;
