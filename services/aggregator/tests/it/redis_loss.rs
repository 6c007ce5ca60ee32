//! Redis losing its data (a restart without persistence, FLUSHALL, an eviction) takes the
//! consumer group with it; the aggregator creates it again and consumption goes on.

use std::{process::Stdio, time::Duration};

use serde_json::json;
use sluice_testkit::{TestDatabase, TestRedis, eventually};
use tokio::process::{Child, Command};

use crate::support::{TestApp, config, event};

#[tokio::test]
async fn consumption_goes_on_after_the_stream_and_its_group_are_deleted() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    assert_eq!(app.publish(&event("g", "1")).await?.status(), 202);
    app.wait_received(1).await?;
    let mut conn = app.redis.conn();
    let () = redis::cmd("DEL")
        .arg(app.stream_key())
        .query_async(&mut conn)
        .await?;
    for i in 2..=4 {
        assert_eq!(
            app.publish(&event("g", &i.to_string())).await?.status(),
            202
        );
    }
    let stats = app.wait_received(4).await?;
    assert_eq!(stats["unique_processed"], 4);
    assert!(
        app.metric("sluice_aggregator_consumer_group_recreated_total")
            .await?
            >= 1.0
    );
    app.stop().await
}

/// A Redis server of this test's own, without persistence, on a fixed port so it can be
/// restarted at the same address.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    async fn start(port: u16) -> anyhow::Result<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let url = format!("redis://127.0.0.1:{port}");
        eventually("own redis-server up", Duration::from_secs(10), || async {
            let client = redis::Client::open(url.as_str()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        })
        .await?;
        Ok(Self { port, child })
    }

    async fn kill(mut self) -> anyhow::Result<u16> {
        self.child.kill().await?;
        Ok(self.port)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
async fn consumption_goes_on_after_redis_restarts_without_its_data() -> anyhow::Result<()> {
    let redis = OwnRedis::start(free_port()?).await?;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // The shared Redis is not used; TestRedis only gives the test a unique prefix.
    let (db, prefix) = tokio::try_join!(TestDatabase::create(), TestRedis::create())?;
    let cfg = config(db.url(), &url, &prefix.key("events"));
    let app = TestApp::start_on(db, prefix, cfg).await?;
    assert_eq!(app.publish(&event("r", "1")).await?.status(), 202);
    app.wait_received(1).await?;

    let port = redis.kill().await?;
    // While Redis is down, /publish refuses (503) rather than accepting into nowhere.
    let down = app.publish(&event("r", "lost")).await?.status();
    assert_eq!(down, 503);
    let _redis = OwnRedis::start(port).await?;
    // Back, empty: the first publishes may still meet the dropped connection; the client retries
    // on 503 as the API asks.
    for i in 2..=4 {
        let body = json!([event("r", &i.to_string())]);
        eventually("publish accepted", Duration::from_secs(20), || async {
            (app.publish(&body).await.ok()?.status() == 202).then_some(())
        })
        .await?;
    }
    let stats = app.wait_received(4).await?;
    assert_eq!(stats["unique_processed"], 4);
    app.stop().await
}
