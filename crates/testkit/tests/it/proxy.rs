use std::time::{Duration, Instant};

use redis::{Client, aio::MultiplexedConnection};
use sluice_testkit::{FaultProxy, TestRedis};

async fn connect(proxy: &FaultProxy) -> redis::RedisResult<MultiplexedConnection> {
    let client = Client::open(format!("redis://{}", proxy.addr()))?;
    client.get_multiplexed_async_connection().await
}

async fn ping(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test]
async fn cuts_refuses_and_restores_connections_to_a_real_server() -> anyhow::Result<()> {
    let redis = TestRedis::create().await?;
    let proxy = FaultProxy::start(redis.addr()?).await?;
    let mut conn = connect(&proxy).await?;
    assert_eq!(ping(&mut conn).await?, "PONG");
    assert_eq!(proxy.open_connections(), 1);

    proxy.cut();
    assert!(ping(&mut conn).await.is_err(), "a cut connection fails");
    let mut fresh = connect(&proxy).await?;
    assert_eq!(
        ping(&mut fresh).await?,
        "PONG",
        "new connections pass after a cut"
    );

    proxy.refuse();
    assert!(
        ping(&mut fresh).await.is_err(),
        "refuse also cuts open connections"
    );
    let refused = async { ping(&mut connect(&proxy).await?).await };
    assert!(refused.await.is_err(), "new connections are refused");

    proxy.restore();
    let mut back = connect(&proxy).await?;
    assert_eq!(ping(&mut back).await?, "PONG");
    Ok(())
}

#[tokio::test]
async fn adds_latency_in_both_directions() -> anyhow::Result<()> {
    let redis = TestRedis::create().await?;
    let proxy = FaultProxy::start(redis.addr()?).await?;
    let mut conn = connect(&proxy).await?;
    proxy.set_latency(Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(ping(&mut conn).await?, "PONG");
    // One chunk each way, each delayed: a functional check that delay is applied, not a speed test.
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    proxy.restore();
    assert_eq!(ping(&mut conn).await?, "PONG");
    Ok(())
}
