//! Data endpoints over seeded MongoDB documents, the aggregator's figures from Postgres and
//! Redis, and accountant input arriving on Kafka.

use std::time::Duration;

use mongodb::bson::{DateTime as BsonTime, doc};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_testkit::eventually;

use crate::support::{Env, Running, inventory_body, sale_body};

/// Documents shaped as sluice-analytics writes them.
pub(crate) async fn seed_results(env: &Env) -> anyhow::Result<()> {
    let db = env.mongo.database();
    let now = BsonTime::now();
    let winner = |rank: i64, id: &str, profit: i64| {
        doc! {
            "_id": id, "rank": rank, "product_id": id, "name": format!("Product {id}"), "category": "dairy",
            "units": 3_i64, "profit_cents": profit, "profit": format!("{}.00", profit / 100), "updated_at": now,
        }
    };
    db.collection("product_winners")
        .insert_many([winner(2, "P2", 500), winner(1, "P1", 900)])
        .await?;
    db.collection("loss_risk_products")
        .insert_one(doc! {
            "_id": "P7", "product_id": "P7", "name": "Yoghurt", "category": "dairy",
            "reasons": ["expires_within_7_days", "margin_below_threshold"],
            "days_to_expiry": 2_i64, "updated_at": now,
        })
        .await?;
    db.collection("clients")
        .insert_one(doc! {
            "_id": "C1", "client_id": "C1", "name": "Ana", "loyalty_tier": "gold",
            "revenue_cents": 12_000_i64, "revenue": "120.00", "eligible_promo": true,
            "promo_rule": "loyalty tier gold", "updated_at": now,
        })
        .await?;
    let minute = BsonTime::from_millis((chrono::Utc::now().timestamp() / 60 * 60 - 120) * 1000);
    let old = BsonTime::from_millis((chrono::Utc::now().timestamp() - 3 * 3600) * 1000);
    db.collection("sales_by_category_minute")
        .insert_many([
            doc! {"_id": "dairy|a", "category": "dairy", "minute": minute, "units": 4_i64, "revenue_cents": 800_i64, "profit_cents": 300_i64, "updated_at": now},
            doc! {"_id": "dairy|old", "category": "dairy", "minute": old, "units": 1_i64, "revenue_cents": 1_i64, "profit_cents": 1_i64, "updated_at": now},
        ])
        .await?;
    Ok(())
}

#[tokio::test]
async fn results_come_from_mongo_and_empty_ones_have_a_placeholder() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let viewer = app.login("viewer").await?;
    for name in ["winners", "loss_risk", "clients", "sales_by_category"] {
        let (status, body) = viewer.get(&format!("/api/results/{name}")).await?;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(
            (
                body["empty"].as_bool(),
                body["rows"].as_array().map(Vec::len)
            ),
            (Some(true), Some(0)),
            "{name}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {body}"
        );
    }
    seed_results(&env).await?;
    let (_, winners) = viewer.get("/api/results/winners").await?;
    let ids: Vec<&str> = winners["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["product_id"].as_str())
        .collect();
    assert_eq!(ids, ["P1", "P2"], "ranked: {winners}");
    assert!(
        winners["rows"][0].get("_id").is_none() && winners["rows"][0].get("updated_at").is_none()
    );
    let (_, risk) = viewer.get("/api/results/loss_risk").await?;
    assert_eq!(
        risk["rows"][0]["reasons"],
        json!(["expires_within_7_days", "margin_below_threshold"])
    );
    let (_, clients) = viewer.get("/api/results/clients").await?;
    assert_eq!(
        (
            clients["rows"][0]["eligible_promo"].as_bool(),
            clients["empty"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let (_, chart) = viewer.get("/api/results/sales_by_category").await?;
    let rows = chart["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "only the last hour: {chart}");
    assert_eq!(rows[0]["profit_cents"], 300);
    assert!(
        rows[0]["minute"].as_str().is_some_and(|m| m.ends_with('Z')),
        "{chart}"
    );
    assert_eq!(
        viewer.get("/api/results/nothing").await?.0,
        StatusCode::NOT_FOUND
    );
    app.stop().await
}

#[tokio::test]
async fn a_chart_over_the_row_limit_keeps_the_latest_minutes() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let mut config = env.config();
    config.max_rows = 4;
    let app = Running::start(config).await?;
    let now_minute = chrono::Utc::now().timestamp() / 60 * 60;
    let at = |minutes_ago: i64| BsonTime::from_millis((now_minute - 60 * minutes_ago) * 1000);
    let cell = |category: &str, minutes_ago: i64| {
        doc! {
            "_id": format!("{category}|{minutes_ago}"), "category": category, "minute": at(minutes_ago),
            "units": 1_i64, "revenue_cents": 100_i64, "profit_cents": 10_i64, "updated_at": BsonTime::now(),
        }
    };
    // Six older cells fill more than the limit; the latest sale is in a category of its own.
    let mut cells: Vec<_> = (10..13)
        .flat_map(|m| [cell("dairy", m), cell("bakery", m)])
        .collect();
    cells.push(cell("frozen", 0));
    let db = env.mongo.database();
    db.collection("sales_by_category_minute")
        .insert_many(cells)
        .await?;
    let viewer = app.login("viewer").await?;
    let (_, chart) = viewer.get("/api/results/sales_by_category").await?;
    let rows = chart["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 4, "{chart}");
    assert_eq!(
        rows[0]["category"], "frozen",
        "the latest minute first: {chart}"
    );
    app.stop().await
}

#[tokio::test]
async fn the_admin_sees_the_aggregators_figures() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    seed_results(&env).await?;
    sqlx::query("INSERT INTO event_counters (shard, received, unique_processed, duplicate_dropped) VALUES (1, 10, 7, 3), (2, 5, 5, 0)")
        .execute(env.db.pool())
        .await?;
    sqlx::query("INSERT INTO topics (topic) VALUES ('a'), ('b')")
        .execute(env.db.pool())
        .await?;
    let mut redis = env.redis.conn();
    let stream = env.redis.key("events");
    let dead = format!("{stream}:dead");
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("b")
        .arg("{}")
        .query_async(&mut redis)
        .await?;
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("b")
        .arg("{}")
        .query_async(&mut redis)
        .await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("aggregator")
        .arg("0")
        .query_async(&mut redis)
        .await?;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("aggregator")
        .arg("w")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut redis)
        .await?;
    let _: String = redis::cmd("XADD")
        .arg(&dead)
        .arg("*")
        .arg("entry_id")
        .arg("1-1")
        .arg("reason")
        .arg("payload too large")
        .arg("b")
        .arg("{}")
        .query_async(&mut redis)
        .await?;
    let app = Running::start(env.config()).await?;
    let admin = app.login("admin").await?;
    let figures = eventually(
        "system figures with result counts",
        Duration::from_secs(10),
        || {
            let admin = admin.clone();
            async move {
                let (_, body) = admin.get("/api/system").await.ok()?;
                (body["results"]["product_winners"] == 2).then_some(body)
            }
        },
    )
    .await?;
    assert_eq!(
        figures["aggregator"],
        json!({"received": 15, "unique_processed": 12, "duplicate_dropped": 3, "topics": 2})
    );
    let s = &figures["streams"];
    assert_eq!(
        (
            s["length"].as_u64(),
            s["pending"].as_u64(),
            s["dead_letters"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["latest_dead_letters"][0]["reason"], "payload too large");
    assert_eq!(figures["results"]["loss_risk_products"], 1);
    app.stop().await
}

#[tokio::test]
async fn accountant_input_arrives_on_kafka_as_the_topic_messages() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let accountant = app.login("accountant").await?;
    let (status, sale) = accountant.post("/api/sales", sale_body("INV-42")).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{sale}");
    let (status, inv) = accountant
        .post("/api/inventory", inventory_body("P001"))
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{inv}");
    let (status, bad) = accountant
        .post(
            "/api/sales",
            json!({"client_id": "C", "total_amount": "1", "items": []}),
        )
        .await?;
    assert_eq!(
        (status, bad["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("items"))
    );

    let consumer: StreamConsumer = env
        .kafka
        .client_config()
        .set("group.id", env.kafka.group_id("check"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    let sales_topic = format!("{}topic-raw-sales", env.topic_prefix);
    let inventory_topic = format!("{}topic-inventory-updates", env.topic_prefix);
    let mut assignment = TopicPartitionList::new();
    for topic in [&sales_topic, &inventory_topic] {
        assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    }
    // Assigned, not subscribed: no consumer group join to wait for.
    consumer.assign(&assignment)?;
    let mut got: Vec<(String, String, Value, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 2 {
        let m = tokio::time::timeout_at(deadline, consumer.recv()).await??;
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let value: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        let trace = m
            .headers()
            .and_then(|h| {
                rdkafka::message::Headers::iter(h)
                    .find(|h| h.key == sluice_core::wire::TRACE_HEADER)
            })
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        got.push((m.topic().to_owned(), key, value, trace));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let (inv_msg, sale_msg) = (&got[0], &got[1]);
    assert_eq!(
        (sale_msg.0.as_str(), sale_msg.1.as_str()),
        (sales_topic.as_str(), "INV-42")
    );
    assert_eq!(sale_msg.2["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(sale_msg.2["total_amount"].to_string(), "42.5");
    assert_eq!(sale_msg.2, sale["message"]);
    // The request's trace id travels with the message and is in the answer.
    assert!(!sale_msg.3.is_empty(), "the sale has no trace id");
    assert_eq!(sale["trace_id"].as_str(), Some(sale_msg.3.as_str()));
    assert_eq!(inv["trace_id"].as_str(), Some(inv_msg.3.as_str()));
    assert_eq!(
        (inv_msg.0.as_str(), inv_msg.1.as_str()),
        (inventory_topic.as_str(), "P001")
    );
    assert_eq!(inv_msg.2["buy_price"].to_string(), "1.1");
    app.stop().await
}
