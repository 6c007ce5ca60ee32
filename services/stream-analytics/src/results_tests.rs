use chrono::NaiveDate;

use super::*;
use crate::{
    model::{Client, Input, LineItem, Sale},
    state::{PartitionState, Spent, Touched},
};

/// Two days of rollup: the random test's clock moves by up to two days at a time.
const ROLLUP_MINUTES: i64 = 2 * 24 * 60;

fn rules() -> Rules {
    Rules {
        top_products: 2,
        expiry_window_days: 7,
        stale_movement_days: 30,
        promo_min_revenue_cents: 10_000,
        promo_tiers: vec!["gold".into()],
        rollup_minutes: Some(ROLLUP_MINUTES),
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
        .single()
        .expect("time")
}

fn product(
    id: &str,
    buy: i64,
    sell: i64,
    expiry: (i32, u32, u32),
    moved_days_ago: i64,
) -> Inventory {
    Inventory {
        product_id: id.into(),
        name: format!("Product {id}"),
        category: "dairy".into(),
        buy_cents: buy,
        sell_cents: sell,
        min_margin_bp: 1500,
        quantity: 5,
        last_movement: now() - chrono::Duration::days(moved_days_ago),
        expiry_date: NaiveDate::from_ymd_opt(expiry.0, expiry.1, expiry.2).expect("date"),
        batch_no: "B1".into(),
    }
}

#[test]
fn winners_rank_by_profit_over_all_units_and_skip_unknown_products() {
    let mut view = View {
        sold: [("A", 10), ("B", 3), ("C", 100), ("X", 1000)]
            .map(|(k, v)| (k.to_owned(), v))
            .into_iter()
            .collect(),
        ..View::default()
    };
    for (id, buy, sell) in [("A", 100, 150), ("B", 100, 400), ("C", 100, 101)] {
        view.inventory
            .insert(id.into(), product(id, buy, sell, (2026, 1, 1), 0));
    }
    let out = compute(&view, &rules(), now());
    let w = &out[WINNERS];
    assert_eq!(w.len(), 2);
    assert_eq!(w["B"].get_i64("profit_cents"), Ok(900));
    assert_eq!(w["B"].get_i64("rank"), Ok(1));
    assert_eq!(w["A"].get_i64("revenue_cents"), Ok(1500));
    assert_eq!(w["A"].get_i64("cost_cents"), Ok(1000));
    assert_eq!(w["A"].get_str("profit"), Ok("5.00"));
}

#[test]
fn loss_risk_lists_every_reason() {
    let mut view = View::default();
    view.inventory
        .insert("all".into(), product("all", 100, 110, (2025, 3, 8), 30));
    view.inventory
        .insert("none".into(), product("none", 100, 200, (2025, 3, 9), 29));
    view.inventory
        .insert("margin".into(), product("margin", 85, 100, (2025, 4, 1), 0));
    let out = compute(&view, &rules(), now());
    let risk = &out[LOSS_RISK];
    let reasons = |id: &str| -> Vec<String> {
        risk[id]
            .get_array("reasons")
            .expect("reasons")
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        reasons("all"),
        [
            "expires_within_7_days",
            "no_movement_30_days",
            "margin_below_threshold"
        ]
    );
    assert!(!risk.contains_key("none"));
    // 15 % exactly is not below a 15 % threshold.
    assert!(!risk.contains_key("margin"));
}

#[test]
fn clients_by_tier_or_revenue() {
    let mut view = View::default();
    view.spent.insert(
        "rich".into(),
        Spent {
            cents: 10_000,
            invoices: 2,
        },
    );
    view.spent.insert(
        "poor".into(),
        Spent {
            cents: 9_999,
            invoices: 1,
        },
    );
    view.clients.insert(
        "gold".into(),
        Client {
            client_id: "gold".into(),
            name: "G".into(),
            reported_revenue_cents: 0,
            loyalty_tier: "Gold".into(),
        },
    );
    let out = compute(&view, &rules(), now());
    let c = &out[CLIENTS];
    assert_eq!(
        c["rich"].get_str("promo_rule"),
        Ok("revenue 100.00 >= 100.00")
    );
    assert_eq!(c["poor"].get_bool("eligible_promo"), Ok(false));
    assert_eq!(c["gold"].get_str("promo_rule"), Ok("loyalty tier gold"));
}

#[test]
fn rollup_groups_by_category_and_minute() {
    let mut view = View::default();
    view.inventory
        .insert("A".into(), product("A", 100, 150, (2026, 1, 1), 0));
    let minute = view.cells.entry(1).or_default();
    minute.insert("A".into(), 2);
    minute.insert("unknown".into(), 9);
    let out = compute(&view, &rules(), now());
    let cell = &out[ROLLUP]["dairy|1970-01-01T00:01Z"];
    assert_eq!(cell.get_i64("units"), Ok(2));
    assert_eq!(cell.get_i64("profit_cents"), Ok(100));
    assert_eq!(out[ROLLUP].len(), 1);
}

/// The stored digests without empty collections, for comparison.
fn normalized(s: &Stored) -> BTreeMap<&'static str, BTreeMap<String, u64>> {
    s.0.iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(k, m)| (*k, m.iter().map(|(id, h)| (id.clone(), *h)).collect()))
        .collect()
}

fn random_input(rng: &mut fastrand::Rng, now: DateTime<Utc>) -> Input<'static> {
    let categories = ["dairy", "bakery", "drinks"];
    match rng.u8(0..10) {
        0..=5 => Input::Sale(Sale {
            invoice_id: "I".into(),
            client_id: format!("C{}", rng.u8(0..10)).into(),
            timestamp: now + chrono::Duration::minutes(rng.i64(0..5)),
            total_amount: rng.i64(0..50_000),
            items: (0..rng.usize(1..4))
                .map(|_| LineItem {
                    product_id: format!("P{}", rng.u8(0..8)).into(),
                    quantity: rng.u64(0..6),
                })
                .collect(),
        }),
        6..=8 => {
            let mut p = product(
                &format!("P{}", rng.u8(0..8)),
                rng.i64(50..200),
                rng.i64(0..300),
                (2025, 3, rng.u32(1..28)),
                rng.i64(0..60),
            );
            p.category = categories[rng.usize(0..3)].into();
            p.batch_no = format!("B{}", rng.u8(0..3));
            Input::Inventory(p)
        }
        _ => Input::Client(Client {
            client_id: format!("C{}", rng.u8(0..10)),
            name: format!("N{}", rng.u8(0..2)),
            reported_revenue_cents: rng.i64(0..1_000),
            loyalty_tier: ["gold", "bronze"][rng.usize(0..2)].into(),
        }),
    }
}

/// Random input in two partitions, replays included; after every flush the documents the
/// incremental path wrote equal a computation from scratch, also when the clock moves.
#[test]
fn incremental_changes_equal_a_full_computation() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut parts = [PartitionState::default(), PartitionState::default()];
    let mut offsets = [0i64; 2];
    let mut view = View::default();
    let mut stored = Stored::default();
    // Results derived from scratch each round, from whatever the previous round left.
    let mut from_scratch = Stored::default();
    let mut pruned = 0;
    let mut at = now();
    for round in 0..300 {
        for _ in 0..rng.usize(0..12) {
            let p = rng.usize(0..2);
            let input = random_input(&mut rng, now());
            // Now and then an offset again: a replay changes nothing.
            let offset = if rng.u8(0..8) == 0 {
                (offsets[p] - 1).max(0)
            } else {
                offsets[p]
            };
            parts[p].apply(offset, 0, input);
            offsets[p] = offsets[p].max(offset + 1);
        }
        let clock_moved = round % 25 == 0;
        if clock_moved {
            at += chrono::Duration::hours(rng.i64(1..48));
        }
        let mut touched = Touched::default();
        // The rollup keeps ROLLUP_MINUTES before the clock, as the pipeline does.
        let from = at.timestamp().div_euclid(60) - ROLLUP_MINUTES;
        for p in &mut parts {
            let dropped = p.prune_cells(from);
            pruned += dropped.len();
            touched.cells.extend(dropped);
        }
        parts
            .iter_mut()
            .for_each(|p| touched.extend(p.mark_stored(0)));
        let all: Vec<&PartitionState> = parts.iter().collect();
        let affected = view.refresh(&touched, &all);
        let changes = changes(&view, &affected, clock_moved, &rules(), at, &stored);
        stored.apply(&changes);
        let full = Stored::of(&compute(&View::build(&all), &rules(), at));
        assert_eq!(normalized(&stored), normalized(&full), "round {round}");
        let scratch = all_changes(&View::build(&all), &rules(), at, &from_scratch);
        from_scratch.apply(&scratch);
        assert_eq!(
            normalized(&from_scratch),
            normalized(&full),
            "round {round}: from scratch"
        );
        assert!(
            all_changes(&view, &rules(), at, &stored).is_empty(),
            "round {round}: nothing differs from scratch after an incremental flush"
        );
        assert!(
            stored.diff(compute(&view, &rules(), at)).is_empty(),
            "round {round}: the kept view equals one built from scratch"
        );
    }
    assert!(pruned > 0, "the clock moved past the rollup's retention");
}

/// A flush writes the clients' documents in the order their changes arrived, across
/// partitions, not by id: "Z" changed first is written first, and a client changed twice keeps
/// the place of its first change.
#[test]
fn client_documents_are_written_oldest_change_first() {
    let sale = |client: &str| {
        Input::Sale(Sale {
            invoice_id: "I".into(),
            client_id: client.to_owned().into(),
            timestamp: now(),
            total_amount: 100,
            items: vec![LineItem {
                product_id: "P".into(),
                quantity: 1,
            }],
        })
    };
    let mut parts = [PartitionState::default(), PartitionState::default()];
    for (arrival, (p, client)) in [(0, "Z"), (1, "A"), (0, "M"), (1, "Z"), (0, "B")]
        .into_iter()
        .enumerate()
    {
        let offset = parts[p].next;
        parts[p].apply(offset, arrival as u64 + 1, sale(client));
    }
    let mut touched = Touched::default();
    parts
        .iter_mut()
        .for_each(|p| touched.extend(p.mark_stored(0)));
    let all: Vec<&PartitionState> = parts.iter().collect();
    let mut view = View::default();
    let affected = view.refresh(&touched, &all);
    let changes = changes(&view, &affected, false, &rules(), now(), &Stored::default());
    let written: Vec<&str> = (changes.iter())
        .filter(|(name, _, _)| *name == CLIENTS)
        .map(|(_, id, _)| id.as_str())
        .collect();
    assert_eq!(written, ["Z", "A", "M", "B"]);
}
