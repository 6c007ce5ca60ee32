//! Deterministic generated records: events in the aggregator's schema, or the retail scenario
//! of stream analytics (sales with several line items, inventory, clients).
//!
//! Record `i` depends only on the seed and `i`, so a resumed run emits what an uninterrupted one
//! would have.

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, TimeZone, Utc};
use serde_json::{Value, json};

use crate::{config::Scenario, record::Record};

const PRODUCTS: u64 = 50;
const CLIENTS: u64 = 20;
const CATEGORIES: [&str; 5] = ["dairy", "bakery", "produce", "drinks", "household"];
const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];

/// The generator and the index of the next record.
#[derive(Debug)]
pub struct SyntheticSource {
    scenario: Scenario,
    seed: u64,
    total: u64,
    duplicate_rate: f64,
    next: u64,
    epoch: DateTime<Utc>,
}

impl SyntheticSource {
    pub fn new(
        scenario: Scenario,
        seed: u64,
        total: u64,
        duplicate_rate: f64,
        position: Option<&Value>,
    ) -> Self {
        Self {
            scenario,
            seed,
            total,
            duplicate_rate,
            next: position.and_then(|p| p["next"].as_u64()).unwrap_or(0),
            epoch: Utc
                .timestamp_opt(1_735_689_600, 0)
                .single()
                .unwrap_or_default(), // 2025-01-01
        }
    }

    pub fn next_batch(&mut self, max: usize) -> Vec<Record> {
        let end = self.total.min(self.next + max as u64);
        let records = (self.next..end).map(|i| self.record(i)).collect();
        self.next = end;
        records
    }

    pub fn position(&self) -> Value {
        json!({ "next": self.next })
    }

    pub fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.next)
    }

    fn rng(&self, i: u64) -> fastrand::Rng {
        fastrand::Rng::with_seed(self.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn time(&self, i: u64) -> String {
        let t = self.epoch + ChronoDuration::milliseconds(i64::try_from(i).unwrap_or(i64::MAX));
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    fn record(&self, i: u64) -> Record {
        match self.scenario {
            Scenario::Events => self.event(i),
            Scenario::Retail => self.retail(i),
        }
    }

    /// The record an index repeats: itself, or (with the duplicate rate) an earlier original.
    fn original(&self, mut i: u64) -> u64 {
        loop {
            let mut rng = self.rng(i);
            if i == 0 || rng.f64() >= self.duplicate_rate {
                return i;
            }
            i = rng.u64(0..i);
        }
    }

    fn event(&self, i: u64) -> Record {
        let original = self.original(i);
        // A duplicate repeats the earlier event whole, as a retrying client would.
        let mut orig_rng = self.rng(original);
        let topic = format!("topic-{}", original % 10);
        let body = json!({
            "topic": topic,
            "event_id": format!("evt-{original}"),
            "source": "synthetic",
            "timestamp": self.time(original),
            "payload": {"index": original, "value": (orig_rng.f64() * 1000.0).round() / 10.0},
        });
        Record::new(format!("synthetic-{}:{i}", self.seed), Some(topic), body)
    }

    fn price(product: u64) -> (f64, f64) {
        let buy = 1.0 + (product * 37 % 100) as f64 / 10.0;
        (
            buy,
            (buy * (1.1 + (product % 7) as f64 / 20.0) * 100.0).round() / 100.0,
        )
    }

    fn retail(&self, i: u64) -> Record {
        let mut rng = self.rng(i);
        let ts = self.time(i);
        let (topic, body) = match i % 10 {
            0..=5 => {
                let items: Vec<Value> = (0..rng.u64(1..=4))
                    .map(|_| json!({"product_id": format!("P{:03}", rng.u64(0..PRODUCTS)), "quantity": rng.u64(1..=5)}))
                    .collect();
                let total: f64 = items
                    .iter()
                    .map(|it| {
                        let p: u64 = it["product_id"]
                            .as_str()
                            .and_then(|s| s[1..].parse().ok())
                            .unwrap_or(0);
                        Self::price(p).1 * it["quantity"].as_u64().unwrap_or(0) as f64
                    })
                    .sum();
                let body = json!({
                    "invoice_id": format!("INV-{i:07}"), "client_id": format!("C{:03}", rng.u64(0..CLIENTS)),
                    "timestamp": ts, "total_amount": (total * 100.0).round() / 100.0, "items": items,
                });
                ("topic-raw-sales", body)
            }
            6..=8 => {
                let p = rng.u64(0..PRODUCTS);
                let (buy, sell) = Self::price(p);
                let expiry =
                    self.epoch + ChronoDuration::days(i64::try_from(rng.u64(1..120)).unwrap_or(30));
                let body = json!({
                    "product_id": format!("P{p:03}"), "name": format!("Product {p}"),
                    "category": CATEGORIES[(p % 5) as usize], "buy_price": buy, "sell_price": sell,
                    "min_margin_threshold": 0.15, "quantity": rng.u64(0..500), "last_movement": ts,
                    "expiry_date": expiry.date_naive().to_string(), "batch_no": format!("B{i:06}"),
                });
                ("topic-inventory-updates", body)
            }
            _ => {
                let c = rng.u64(0..CLIENTS);
                let body = json!({
                    "client_id": format!("C{c:03}"), "name": format!("Client {c}"),
                    "total_revenue_generated": (rng.f64() * 100_000.0).round() / 100.0,
                    "loyalty_tier": TIERS[rng.usize(0..TIERS.len())],
                });
                ("topic-clients", body)
            }
        };
        Record::new(
            format!("retail-{}:{i}", self.seed),
            Some(topic.to_owned()),
            body,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_at_an_index_gives_the_same_records() {
        let mut whole = SyntheticSource::new(Scenario::Events, 7, 100, 0.3, None);
        let all = whole.next_batch(100);
        let mut resumed =
            SyntheticSource::new(Scenario::Events, 7, 100, 0.3, Some(&json!({"next": 40})));
        assert_eq!(resumed.next_batch(100), all[40..]);
    }

    #[test]
    fn duplicates_repeat_earlier_events_at_about_the_rate() {
        let mut s = SyntheticSource::new(Scenario::Events, 1, 10_000, 0.3, None);
        let records = s.next_batch(10_000);
        let ids: std::collections::HashSet<String> = records
            .iter()
            .map(|r| r.body.as_ref().expect("ok")["event_id"].to_string())
            .collect();
        let dup_share = 1.0 - ids.len() as f64 / 10_000.0;
        assert!((0.27..0.33).contains(&dup_share), "{dup_share}");
    }

    #[test]
    fn retail_emits_the_three_topics_with_multi_item_invoices() {
        let mut s = SyntheticSource::new(Scenario::Retail, 3, 1000, 0.0, None);
        let records = s.next_batch(1000);
        let count = |t: &str| {
            records
                .iter()
                .filter(|r| r.topic.as_deref() == Some(t))
                .count()
        };
        assert_eq!(
            (
                count("topic-raw-sales"),
                count("topic-inventory-updates"),
                count("topic-clients")
            ),
            (600, 300, 100)
        );
        assert!(records.iter().any(|r| {
            r.body.as_ref().expect("ok")["items"]
                .as_array()
                .is_some_and(|i| i.len() > 1)
        }));
    }
}
