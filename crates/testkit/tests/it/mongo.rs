use mongodb::bson::{Document, doc};
use sluice_testkit::TestMongo;

#[tokio::test]
async fn documents_round_trip_and_transactions_commit_or_abort() -> anyhow::Result<()> {
    let mongo = TestMongo::create().await?;
    let coll = mongo.database().collection::<Document>("clients");
    coll.insert_one(doc! {"_id": "c1", "name": "Ana", "revenue": 12.5})
        .await?;
    let found = coll.find_one(doc! {"_id": "c1"}).await?.expect("c1 stored");
    assert_eq!(found.get_str("name")?, "Ana");

    let mut session = mongo.client().start_session().await?;
    session.start_transaction().await?;
    coll.insert_one(doc! {"_id": "c2"})
        .session(&mut session)
        .await?;
    coll.insert_one(doc! {"_id": "c3"})
        .session(&mut session)
        .await?;
    session.commit_transaction().await?;

    session.start_transaction().await?;
    coll.insert_one(doc! {"_id": "c4"})
        .session(&mut session)
        .await?;
    session.abort_transaction().await?;

    let ids: Vec<String> = coll
        .distinct("_id", doc! {})
        .await?
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 3, "committed c2 and c3, aborted c4: {ids:?}");
    assert!(!ids.contains(&"c4".to_owned()));
    Ok(())
}

#[tokio::test]
async fn two_tests_use_two_databases_and_each_is_dropped() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(TestMongo::create(), TestMongo::create())?;
    assert_ne!(a.database().name(), b.database().name());
    a.database()
        .collection::<Document>("x")
        .insert_one(doc! {"v": 1})
        .await?;
    let in_b = b
        .database()
        .collection::<Document>("x")
        .count_documents(doc! {})
        .await?;
    assert_eq!(in_b, 0);

    let name = a.database().name().to_owned();
    drop(a);
    let names = b.client().list_database_names().await?;
    assert!(!names.contains(&name), "{name} still exists");
    Ok(())
}
