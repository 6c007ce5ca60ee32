use redis::AsyncCommands;
use sluice_testkit::TestRedis;

#[tokio::test]
async fn prefixed_keys_round_trip_stay_apart_and_are_deleted() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(TestRedis::create(), TestRedis::create())?;
    assert_ne!(a.prefix(), b.prefix());
    a.conn().set::<_, _, ()>(a.key("k"), "from a").await?;
    b.conn().set::<_, _, ()>(b.key("k"), "from b").await?;
    let got: String = a.conn().get(a.key("k")).await?;
    assert_eq!(got, "from a");
    assert_eq!(a.keys().await?, vec![a.key("k")]);

    let (key, mut conn) = (a.key("k"), b.conn());
    drop(a);
    let left: Option<String> = conn.get(&key).await?;
    assert_eq!(left, None, "keys under a dropped prefix are deleted");
    assert_eq!(b.keys().await?.len(), 1, "another test's keys stay");
    Ok(())
}
