//! Test input and the reference results, computed here independently of the service: plain
//! integer cents, straight loops, no shared code.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

pub(crate) const PRODUCTS: usize = 30;
pub(crate) const CLIENTS: usize = 12;
const CATEGORIES: [&str; 4] = ["dairy", "bakery", "produce", "drinks"];
const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];
/// The fixed "now" of every test: 2025-01-20.
pub(crate) const NOW: &str = "2025-01-20T00:00:00Z";
/// Sales happen from 2025-01-19T00:00Z on, 37 ms apart.
const SALES_EPOCH_MS: i64 = 1_737_244_800_000;

/// `12.34` as JSON number text, from cents.
fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// One input message: topic base name, key, JSON text.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub(crate) topic: &'static str,
    pub(crate) key: String,
    pub(crate) json: String,
}

/// A product's inventory record; prices in cents.
#[derive(Debug, Clone)]
pub(crate) struct Product {
    pub(crate) id: String,
    pub(crate) buy: i64,
    pub(crate) sell: i64,
    pub(crate) min_margin_bp: i64,
    pub(crate) category: &'static str,
    /// Days before [`NOW`] of the last movement.
    pub(crate) moved_days_ago: i64,
    pub(crate) expiry: (u32, u32),
    pub(crate) batch: u32,
}

/// Two records per product: the second (later movement) is the current one.
pub(crate) fn inventory() -> Vec<Product> {
    let mut out = Vec::new();
    for p in 0..PRODUCTS {
        for batch in 0..2u32 {
            let pi = p as i64;
            let buy = 100 + (pi * 37 + i64::from(batch) * 11) % 400;
            out.push(Product {
                id: format!("P{p:02}"),
                buy,
                sell: buy + (pi * 13 + i64::from(batch) * 7) % 150,
                min_margin_bp: 1500,
                category: CATEGORIES[p % CATEGORIES.len()],
                // Batch 1 moved later; a third of the products have not moved for 30+ days.
                moved_days_ago: if p % 3 == 0 { 41 } else { 6 } - i64::from(batch),
                expiry: if p % 5 == 0 {
                    (1, 24)
                } else {
                    (3, 1 + (p as u32 % 20))
                },
                batch,
            });
        }
    }
    out
}

fn moved_at(days_ago: i64) -> String {
    let now = chrono::DateTime::parse_from_rfc3339(NOW).unwrap_or_default();
    (now - chrono::Duration::days(days_ago) + chrono::Duration::hours(8))
        .to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn inventory_msg(p: &Product) -> Msg {
    let json = format!(
        r#"{{"product_id":"{}","name":"Product {}","category":"{}","buy_price":{},"sell_price":{},"min_margin_threshold":0.15,"quantity":{},"last_movement":"{}","expiry_date":"2025-{:02}-{:02}","batch_no":"B{}"}}"#,
        p.id,
        p.id,
        p.category,
        money(p.buy),
        money(p.sell),
        10 + p.batch,
        moved_at(p.moved_days_ago),
        p.expiry.0,
        p.expiry.1,
        p.batch
    );
    Msg {
        topic: "topic-inventory-updates",
        key: p.id.clone(),
        json,
    }
}

/// A client record per client.
pub(crate) fn client_msgs() -> Vec<Msg> {
    (0..CLIENTS)
        .map(|c| Msg {
            topic: "topic-clients",
            key: format!("C{c:02}"),
            json: json!({"client_id": format!("C{c:02}"), "name": format!("Client {c}"),
                "total_revenue_generated": 10, "loyalty_tier": TIERS[c % TIERS.len()]})
            .to_string(),
        })
        .collect()
}

/// A sale: (client, time ms, items (product index, quantity), total cents).
#[derive(Debug, Clone)]
pub(crate) struct Sale {
    pub(crate) invoice: usize,
    pub(crate) client: usize,
    pub(crate) at_ms: i64,
    pub(crate) items: Vec<(usize, u64)>,
    pub(crate) total: i64,
}

/// Sale `i`: 1-4 lines, sometimes the same product twice; some products sold with none in
/// the inventory (`P9x`, unknown ids).
pub(crate) fn sale(i: usize) -> Sale {
    let lines = 1 + (i * 7) % 4;
    let items = (0..lines)
        .map(|j| {
            (
                (i * 11 + j * 17 + j * j) % (PRODUCTS + 2),
                1 + ((i + j) % 5) as u64,
            )
        })
        .collect();
    Sale {
        invoice: i,
        client: (i * 5) % CLIENTS,
        at_ms: SALES_EPOCH_MS + i as i64 * 37,
        items,
        total: 100 + (i as i64 * 7919) % 5000,
    }
}

pub(crate) fn product_id(p: usize) -> String {
    if p < PRODUCTS {
        format!("P{p:02}")
    } else {
        format!("P9{p}")
    }
}

pub(crate) fn sale_msg(s: &Sale) -> Msg {
    let items: Vec<Value> = s
        .items
        .iter()
        .map(|(p, q)| json!({"product_id": product_id(*p), "quantity": q}))
        .collect();
    let ts = chrono::DateTime::from_timestamp_millis(s.at_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let json = format!(
        r#"{{"invoice_id":"INV-{}","client_id":"C{:02}","timestamp":"{ts}","total_amount":{},"items":{}}}"#,
        s.invoice,
        s.client,
        money(s.total),
        Value::Array(items)
    );
    Msg {
        topic: "topic-raw-sales",
        key: format!("INV-{}", s.invoice),
        json,
    }
}

/// What the results must be, per collection: id → the fields compared.
pub(crate) type Expected = BTreeMap<&'static str, BTreeMap<String, Vec<i64>>>;

/// The reference: winners (rank, units, revenue, cost, profit), clients (revenue, invoices,
/// eligible 0/1), rollup (units, revenue, profit), loss risk (bit set of reasons).
pub(crate) fn expected(sales: &[Sale], products: &[Product]) -> Expected {
    let mut current: HashMap<String, &Product> = HashMap::new();
    for p in products {
        let newer = current
            .get(&p.id)
            .is_none_or(|old| (-p.moved_days_ago, p.batch) > (-old.moved_days_ago, old.batch));
        if newer {
            current.insert(p.id.clone(), p);
        }
    }
    let mut units: BTreeMap<String, i64> = BTreeMap::new();
    let mut spent: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut rollup: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for s in sales {
        let e = spent.entry(format!("C{:02}", s.client)).or_default();
        e.0 += s.total;
        e.1 += 1;
        for (p, q) in &s.items {
            let id = product_id(*p);
            *units.entry(id.clone()).or_default() += *q as i64;
            if let Some(prod) = current.get(&id) {
                let minute = chrono::DateTime::from_timestamp_millis(s.at_ms / 60_000 * 60_000)
                    .unwrap_or_default()
                    .format("%Y-%m-%dT%H:%MZ");
                let cell = rollup
                    .entry(format!("{}|{minute}", prod.category))
                    .or_insert_with(|| vec![0, 0, 0]);
                cell[0] += *q as i64;
                cell[1] += *q as i64 * prod.sell;
                cell[2] += *q as i64 * (prod.sell - prod.buy);
            }
        }
    }
    let mut winners: Vec<(i64, String, Vec<i64>)> = units
        .iter()
        .filter_map(|(id, &u)| {
            let p = current.get(id)?;
            let profit = u * (p.sell - p.buy);
            Some((profit, id.clone(), vec![u, u * p.sell, u * p.buy, profit]))
        })
        .collect();
    winners.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let winners = winners
        .into_iter()
        .take(10)
        .enumerate()
        .map(|(rank, (_, id, mut v))| {
            v.insert(0, rank as i64 + 1);
            (id, v)
        })
        .collect();
    let mut clients: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for c in 0..CLIENTS {
        let id = format!("C{c:02}");
        let (cents, n) = spent.get(&id).copied().unwrap_or_default();
        let eligible = TIERS[c % TIERS.len()] == "gold"
            || TIERS[c % TIERS.len()] == "platinum"
            || cents >= 100_000;
        clients.insert(id, vec![cents, n, i64::from(eligible)]);
    }
    let mut risk = BTreeMap::new();
    for (id, p) in &current {
        // now = 2025-01-20: expiry 2025-01-24 is within 7 days.
        let bits = i64::from(p.expiry == (1, 24))
            | i64::from(p.moved_days_ago >= 30) << 1
            | i64::from((p.sell - p.buy) * 10_000 < p.min_margin_bp * p.sell) << 2;
        if bits != 0 {
            risk.insert(id.clone(), vec![bits]);
        }
    }
    BTreeMap::from([
        ("product_winners", winners),
        ("clients", clients),
        ("sales_by_category_minute", rollup),
        ("loss_risk_products", risk),
    ])
}
