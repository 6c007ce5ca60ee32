//! The results, computed from the merged [`View`] as plain documents: a pure function, so the
//! rules are unit-tested without a database.
//!
//! Money is integer cents (`*_cents`, exact) plus a `"123.45"` string for people. Prices are
//! a product's current record (the latest inventory update), so a sale counts as soon as its
//! product's record exists, whichever arrived first.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use mongodb::bson::{Bson, Document, doc};

use crate::{
    model::{Inventory, format_cents},
    state::View,
};

/// Result collections, by name.
pub(crate) const WINNERS: &str = "product_winners";
pub(crate) const LOSS_RISK: &str = "loss_risk_products";
pub(crate) const CLIENTS: &str = "clients";
pub(crate) const ROLLUP: &str = "sales_by_category_minute";
/// Every result collection.
pub(crate) const COLLECTIONS: [&str; 4] = [WINNERS, LOSS_RISK, CLIENTS, ROLLUP];

/// The thresholds of the rules.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) top_products: usize,
    pub(crate) expiry_window_days: i64,
    pub(crate) stale_movement_days: i64,
    pub(crate) promo_min_revenue_cents: i64,
    pub(crate) promo_tiers: Vec<String>,
}

/// Collection → document id → document (without `updated_at`).
pub(crate) type Results = BTreeMap<&'static str, BTreeMap<String, Document>>;

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Units × price in cents, saturating instead of wrapping.
fn times(units: u64, cents: i64) -> i64 {
    i64::try_from(i128::from(units) * i128::from(cents)).unwrap_or(i64::MAX)
}

/// Computes every result collection.
pub(crate) fn compute(view: &View, rules: &Rules, now: DateTime<Utc>) -> Results {
    let mut out = Results::new();
    out.insert(WINNERS, winners(view, rules));
    out.insert(LOSS_RISK, loss_risk(view, rules, now));
    out.insert(CLIENTS, clients(view, rules));
    out.insert(ROLLUP, rollup(view));
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
    rows.sort_by(|a, b| b.3.cmp(&a.3).then_with(|| a.0.cmp(b.0)));
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

fn loss_risk(view: &View, rules: &Rules, now: DateTime<Utc>) -> BTreeMap<String, Document> {
    let mut out = BTreeMap::new();
    for (id, p) in &view.inventory {
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
            continue;
        }
        let margin_bp = if p.sell_cents == 0 {
            Bson::Null
        } else {
            Bson::Int64(i64::try_from(margin_diff / i128::from(p.sell_cents)).unwrap_or(0))
        };
        let d = doc! {
            "_id": id, "product_id": id, "name": &p.name, "category": &p.category,
            "reasons": reasons, "expiry_date": p.expiry_date.to_string(),
            "days_to_expiry": days_to_expiry,
            "last_movement": crate::model::bson_time(p.last_movement),
            "days_since_movement": days_since_movement,
            "margin_bp": margin_bp, "min_margin_bp": p.min_margin_bp,
            "quantity": int(p.quantity), "batch_no": &p.batch_no,
            "evaluated_for": crate::model::bson_time(now),
        };
        out.insert(id.clone(), d);
    }
    out
}

fn clients(view: &View, rules: &Rules) -> BTreeMap<String, Document> {
    let ids = view.spent.keys().chain(view.clients.keys());
    let mut out = BTreeMap::new();
    for id in ids {
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
        let d = doc! {
            "_id": id, "client_id": id, "name": record.map(|c| c.name.clone()),
            "loyalty_tier": record.map(|c| c.loyalty_tier.clone()),
            "revenue_cents": spent.cents, "revenue": format_cents(spent.cents),
            "invoices": int(spent.invoices),
            "reported_revenue_cents": record.map(|c| c.reported_revenue_cents),
            "eligible_promo": rule.is_some(), "promo_rule": rule,
        };
        out.insert(id.clone(), d);
    }
    out
}

fn rollup(view: &View) -> BTreeMap<String, Document> {
    let mut cells: BTreeMap<(String, i64), (u64, i64, i64)> = BTreeMap::new();
    for ((minute, product), &units) in &view.cells {
        let Some(p) = view.inventory.get(product) else {
            continue;
        };
        let e = cells.entry((p.category.clone(), *minute)).or_default();
        e.0 += units;
        e.1 += times(units, p.sell_cents);
        e.2 += times(units, p.sell_cents - p.buy_cents);
    }
    cells
        .into_iter()
        .map(|((category, minute), (units, revenue, profit))| {
            let at = Utc
                .timestamp_opt(minute.saturating_mul(60), 0)
                .single()
                .unwrap_or_default();
            let id = format!("{category}|{}", at.format("%Y-%m-%dT%H:%MZ"));
            let d = doc! {
                "_id": &id, "category": category, "minute": crate::model::bson_time(at),
                "units": int(units), "revenue_cents": revenue, "profit_cents": profit,
            };
            (id, d)
        })
        .collect()
}

#[cfg(test)]
#[path = "results_tests.rs"]
mod tests;
