use std::time::Duration;

use sluice_testkit::{TestDatabase, eventually};
use sqlx::PgPool;

async fn database_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap_or(true)
}

#[tokio::test]
async fn migrated_database_round_trips_a_row_and_is_dropped_afterwards() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    sqlx::query(
        "INSERT INTO processed_events (topic, event_id, source, timestamp, payload)
         VALUES ('t', 'e1', 's', now(), $1)",
    )
    .bind(serde_json::json!({"n": 1, "s": "ü"}))
    .execute(db.pool())
    .await?;
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM processed_events WHERE event_id = 'e1'")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(payload, serde_json::json!({"n": 1, "s": "ü"}));

    // The dedup constraint of the contract is in place.
    let dup = sqlx::query(
        "INSERT INTO processed_events (topic, event_id, source, timestamp) VALUES ('t', 'e1', 's', now())",
    )
    .execute(db.pool())
    .await;
    assert!(
        dup.is_err(),
        "UNIQUE(topic, event_id) must reject a duplicate"
    );

    let witness = TestDatabase::create_empty().await?;
    let name = db.name().to_owned();
    assert!(database_exists(witness.pool(), &name).await);
    drop(db);
    eventually("database dropped", Duration::from_secs(10), || async {
        (!database_exists(witness.pool(), &name).await).then_some(())
    })
    .await
}

#[tokio::test]
async fn two_databases_at_once_do_not_see_each_other() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(TestDatabase::create(), TestDatabase::create())?;
    assert_ne!(a.name(), b.name());
    sqlx::query("INSERT INTO topics (topic) VALUES ('only-in-a')")
        .execute(a.pool())
        .await?;
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM topics")
        .fetch_one(b.pool())
        .await?;
    assert_eq!(in_b, 0);
    Ok(())
}
