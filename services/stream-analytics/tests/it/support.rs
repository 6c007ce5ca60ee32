//! Per-test topics, database and group; starting the service; producing input; reading the
//! results in the reference's shape.

use std::{collections::BTreeMap, mem::ManuallyDrop, time::Duration};

use futures::{TryStreamExt, future::join_all};
use mongodb::bson::{Bson, Document, doc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_analytics::{App, Config};
use sluice_core::config::Secret;
use sluice_testkit::{ChildService, InProcess, TestKafka, TestMongo, eventually};

use crate::data::{Expected, Msg, NOW, Product, Sale, client_msgs, inventory_msg, sale_msg};

/// A test's own topics, database and consumer group.
pub(crate) struct TestEnv {
    producer: FutureProducer,
    /// Never dropped, so the topics are not deleted: deleting topics a group had read made
    /// librdkafka crash (SIGSEGV in `rd_kafka_metadata_cache_find`, the admin client's
    /// metadata refresh after tansu's answer) in about one run in three. tansu keeps topics
    /// in memory only; they go with its restart.
    pub(crate) kafka: ManuallyDrop<TestKafka>,
    pub(crate) mongo: TestMongo,
    pub(crate) prefix: String,
    pub(crate) dead_letters: String,
    pub(crate) group: String,
}

impl TestEnv {
    /// Topics with 3 (sales), 2 (inventory), 1 (clients) and 1 (dead letters) partitions.
    pub(crate) async fn create() -> anyhow::Result<Self> {
        Self::on(TestKafka::create().await?).await
    }

    /// The same on another broker.
    pub(crate) async fn on(kafka: TestKafka) -> anyhow::Result<Self> {
        let mongo = TestMongo::create().await?;
        let sales = kafka.topic("topic-raw-sales", 3).await?;
        kafka.topic("topic-inventory-updates", 2).await?;
        kafka.topic("topic-clients", 1).await?;
        let dead_letters = kafka.topic("topic-analytics-dead-letters", 1).await?;
        let prefix = sales
            .strip_suffix("topic-raw-sales")
            .unwrap_or_default()
            .to_owned();
        let producer = kafka
            .client_config()
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()?;
        let group = kafka.group_id("analytics");
        Ok(Self {
            kafka: ManuallyDrop::new(kafka),
            mongo,
            prefix,
            dead_letters,
            group,
            producer,
        })
    }

    /// The service's config for this test: port 0, fixed clock, quick flushes.
    pub(crate) fn config(&self) -> Config {
        Config {
            host: "127.0.0.1".into(),
            port: 0,
            kafka_brokers: self.kafka.bootstrap().to_owned(),
            mongodb_url: Secret::new(self.mongo.url().to_owned()),
            database: self.mongo.database().name().to_owned(),
            group_id: self.group.clone(),
            topic_prefix: self.prefix.clone(),
            flush_interval_ms: 100,
            // Small, so every test also folds the log into per-key documents (and crashes
            // land around compactions too).
            compact_after_entries: 2_000,
            // Small batches: many flushes, so a kill lands between two of them.
            flush_batch_size: 5_000,
            kafka_session_timeout_ms: 6_000,
            now: Some(NOW.into()),
            shutdown_timeout_ms: 10_000,
            ..Config::default()
        }
    }

    /// The same settings as environment variables, for the binary.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        let c = self.config();
        vec![
            ("KAFKA_BROKERS", c.kafka_brokers),
            ("MONGODB_URL", c.mongodb_url.expose().clone()),
            ("PORT", "0".into()),
            ("SLUICE_ANALYTICS_HOST", c.host),
            ("SLUICE_ANALYTICS_DATABASE", c.database),
            ("SLUICE_ANALYTICS_GROUP_ID", c.group_id),
            ("SLUICE_ANALYTICS_TOPIC_PREFIX", c.topic_prefix),
            ("SLUICE_ANALYTICS_FLUSH_INTERVAL_MS", "100".into()),
            ("SLUICE_ANALYTICS_COMPACT_AFTER_ENTRIES", "2000".into()),
            ("SLUICE_ANALYTICS_FLUSH_BATCH_SIZE", "5000".into()),
            ("SLUICE_ANALYTICS_KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
            ("SLUICE_ANALYTICS_NOW", NOW.into()),
            ("RUST_LOG", "info".into()),
        ]
    }

    /// Sends every message (keyed), waiting for each acknowledgement.
    pub(crate) async fn produce(&self, msgs: &[Msg]) -> anyhow::Result<()> {
        for chunk in msgs.chunks(5_000) {
            let topics: Vec<String> = chunk
                .iter()
                .map(|m| format!("{}{}", self.prefix, m.topic))
                .collect();
            let sends = chunk.iter().zip(&topics).map(|(m, t)| {
                let record = FutureRecord::to(t).key(&m.key).payload(&m.json);
                self.producer.send(record, Duration::from_secs(30))
            });
            for r in join_all(sends).await {
                r.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
            }
        }
        Ok(())
    }

    /// The inventory `products`, the clients' records, then `sales`.
    pub(crate) async fn produce_all(
        &self,
        products: &[Product],
        sales: &[Sale],
    ) -> anyhow::Result<()> {
        self.produce(&products.iter().map(inventory_msg).collect::<Vec<_>>())
            .await?;
        self.produce(&client_msgs()).await?;
        self.produce(&sales.iter().map(sale_msg).collect::<Vec<_>>())
            .await
    }

    /// Sends raw payloads to a topic (base name), for malformed input.
    /// Sends `payloads` as they are, each with a trace id `<topic>#<index>` in its trace
    /// header.
    pub(crate) async fn produce_raw(&self, topic: &str, payloads: &[&str]) -> anyhow::Result<()> {
        let trace = |i: usize| format!("{topic}#{i}");
        let topic = format!("{}{topic}", self.prefix);
        for (i, p) in payloads.iter().enumerate() {
            let id = trace(i);
            let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: sluice_core::wire::TRACE_HEADER,
                value: Some(id.as_str()),
            });
            self.producer
                .send(
                    FutureRecord::<str, str>::to(&topic)
                        .payload(*p)
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
        }
        Ok(())
    }

    /// Every document of a collection, by `_id`.
    pub(crate) async fn docs(&self, name: &str) -> anyhow::Result<BTreeMap<String, Document>> {
        let mut cursor = self
            .mongo
            .database()
            .collection::<Document>(name)
            .find(doc! {})
            .await?;
        let mut out = BTreeMap::new();
        while let Some(d) = cursor.try_next().await? {
            out.insert(d.get_str("_id").unwrap_or_default().to_owned(), d);
        }
        Ok(out)
    }

    /// The results in the reference's shape.
    pub(crate) async fn results(&self) -> anyhow::Result<Expected> {
        let int = |d: &Document, k: &str| match d.get(k) {
            Some(Bson::Int64(v)) => *v,
            Some(Bson::Int32(v)) => i64::from(*v),
            _ => i64::MIN,
        };
        let pick = |d: &Document, keys: &[&str]| keys.iter().map(|k| int(d, k)).collect();
        let mut out = Expected::new();
        let w = self.docs("product_winners").await?;
        let keys = [
            "rank",
            "units",
            "revenue_cents",
            "cost_cents",
            "profit_cents",
        ];
        out.insert(
            "product_winners",
            w.iter().map(|(k, d)| (k.clone(), pick(d, &keys))).collect(),
        );
        let c = self.docs("clients").await?;
        let clients = c
            .iter()
            .map(|(k, d)| {
                let eligible = i64::from(d.get_bool("eligible_promo").unwrap_or(false));
                (
                    k.clone(),
                    vec![int(d, "revenue_cents"), int(d, "invoices"), eligible],
                )
            })
            .collect();
        out.insert("clients", clients);
        let r = self.docs("sales_by_category_minute").await?;
        let keys = ["units", "revenue_cents", "profit_cents"];
        out.insert(
            "sales_by_category_minute",
            r.iter().map(|(k, d)| (k.clone(), pick(d, &keys))).collect(),
        );
        let l = self.docs("loss_risk_products").await?;
        let risk = l
            .iter()
            .map(|(k, d)| {
                let reasons: Vec<&str> = d
                    .get_array("reasons")
                    .map(|a| a.iter().filter_map(Bson::as_str).collect())
                    .unwrap_or_default();
                let bit = |r: &str| i64::from(reasons.contains(&r));
                let bits = bit("expires_within_7_days")
                    | bit("no_movement_30_days") << 1
                    | bit("margin_below_threshold") << 2;
                (k.clone(), vec![bits])
            })
            .collect();
        out.insert("loss_risk_products", risk);
        Ok(out)
    }

    /// Waits until the results equal `expected`; on timeout, shows the difference.
    pub(crate) async fn wait_exact(
        &self,
        expected: &Expected,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let waited = eventually("results equal to the reference", timeout, || async {
            (self.results().await.ok()? == *expected).then_some(())
        })
        .await;
        if waited.is_err() {
            let got = self.results().await?;
            for (name, want) in expected {
                assert_eq!(got.get(name), Some(want), "collection {name}");
            }
        }
        waited
    }

    /// Σ of the stored offsets of the sales partitions: sales messages durably processed.
    pub(crate) async fn sales_done(&self) -> anyhow::Result<i64> {
        let offsets = self.docs("analytics_offsets").await?;
        Ok(offsets
            .values()
            .filter(|d| {
                d.get_str("topic")
                    .is_ok_and(|t| t.ends_with("topic-raw-sales"))
            })
            .map(|d| d.get_i64("next").unwrap_or(0))
            .sum())
    }
}

/// The service in this process.
pub(crate) async fn start(
    config: Config,
) -> anyhow::Result<(
    InProcess<sluice_analytics::Result<()>>,
    sluice_core::telemetry::Metrics,
)> {
    sluice_core::telemetry::init_json_logs("analytics-test");
    let app = App::build(config).await?;
    let metrics = app.metrics().clone();
    Ok((InProcess::spawn(|token| app.run(token)), metrics))
}

/// The value of a metric line without labels, e.g. `analytics_idle_flushes_total`.
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Sales messages applied so far (`analytics_messages_total`, outcome `applied`).
pub(crate) fn applied_sales(text: &str, sales_topic: &str) -> f64 {
    let topic = format!("topic=\"{sales_topic}\"");
    text.lines()
        .filter(|l| l.starts_with("analytics_messages_total{") && l.contains(&topic))
        .filter(|l| l.contains("outcome=\"applied\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The binary as a child process.
pub(crate) async fn spawn_child(env: &TestEnv) -> anyhow::Result<ChildService> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-analytics"));
    for (k, v) in env.env() {
        cmd.env(k, v);
    }
    ChildService::spawn(cmd, Duration::from_secs(60)).await
}
