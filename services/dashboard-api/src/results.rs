//! The analytics results in MongoDB (DESIGN §5), read-only, as JSON for the API and the page.
//!
//! Collections and the fields the page uses (written by sluice-analytics, each document with
//! an `updated_at`): `product_winners` (`rank`, `product_id`, `name`, `category`, `units`,
//! `profit`, …), `loss_risk_products` (`reasons`, `days_to_expiry`, `days_since_movement`,
//! `margin_bp`, …), `clients` (`revenue`, `loyalty_tier`, `eligible_promo`, `promo_rule`, …)
//! and `sales_by_category_minute` (`category`, `minute`, `revenue_cents`, `profit_cents`).

use chrono::Utc;
use futures::TryStreamExt;
use mongodb::{
    Client, Database,
    bson::{Bson, Document, doc},
    options::FindOptions,
};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::Result;

/// A result collection the dashboard shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Collection {
    /// Top products by profit.
    Winners,
    /// Products at risk of loss, with reasons.
    LossRisk,
    /// Clients with revenue and promotion eligibility.
    Clients,
    /// Sales and profit per category per minute (the chart shows the last hour).
    SalesByCategory,
}

impl Collection {
    /// Every collection, in the order the page shows them.
    pub const ALL: [Self; 4] = [
        Self::Winners,
        Self::LossRisk,
        Self::Clients,
        Self::SalesByCategory,
    ];

    /// The MongoDB collection name.
    pub fn mongo_name(self) -> &'static str {
        match self {
            Self::Winners => "product_winners",
            Self::LossRisk => "loss_risk_products",
            Self::Clients => "clients",
            Self::SalesByCategory => "sales_by_category_minute",
        }
    }

    /// The name in URLs and live messages.
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Winners => "winners",
            Self::LossRisk => "loss_risk",
            Self::Clients => "clients",
            Self::SalesByCategory => "sales_by_category",
        }
    }

    /// Parses an API name.
    pub fn from_api_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.api_name() == name)
    }

    fn query(self) -> (Document, Document) {
        match self {
            Self::Winners => (doc! {}, doc! {"rank": 1}),
            Self::LossRisk => (doc! {}, doc! {"days_to_expiry": 1, "_id": 1}),
            Self::Clients => (doc! {}, doc! {"revenue_cents": -1, "_id": 1}),
            Self::SalesByCategory => {
                let hour_ago = mongodb::bson::DateTime::from_millis(
                    (Utc::now() - chrono::Duration::hours(1)).timestamp_millis(),
                );
                // Newest minutes first: when the hour holds more than `max_rows` documents,
                // the limit leaves out the oldest minutes, never the latest sales.
                (
                    doc! {"minute": {"$gte": hour_ago}},
                    doc! {"minute": -1, "category": 1},
                )
            }
        }
    }
}

/// The results database.
#[derive(Debug, Clone)]
pub struct ResultStore {
    client: Client,
    db: Database,
    max_rows: i64,
}

impl ResultStore {
    /// A client for `url` (connects lazily) on database `name`.
    pub async fn connect(url: &str, name: &str, max_rows: i64) -> Result<Self> {
        let client = Client::with_uri_str(url).await?;
        Ok(Self {
            db: client.database(name),
            client,
            max_rows,
        })
    }

    /// Ends the driver's sessions and closes its connections while the runtime still runs
    /// (left to `Drop`, that cleanup is spawned on a runtime shutting down, and panics).
    pub async fn shutdown(&self) {
        self.client.clone().shutdown().immediate(true).await;
    }

    /// Round trip to the server.
    pub async fn ping(&self) -> Result<()> {
        self.db.run_command(doc! {"ping": 1}).await?;
        Ok(())
    }

    /// A value that changes whenever the collection does: its count and latest `updated_at`,
    /// in one aggregation (the cheap query each watcher runs per interval).
    #[tracing::instrument(skip(self))]
    pub async fn marker(&self, c: Collection) -> Result<(i64, i64)> {
        let pipeline = [doc! {"$group": {
            "_id": Bson::Null, "n": {"$sum": 1}, "t": {"$max": "$updated_at"},
        }}];
        let mut cursor = self
            .db
            .collection::<Document>(c.mongo_name())
            .aggregate(pipeline)
            .await?;
        let Some(d) = cursor.try_next().await? else {
            return Ok((0, 0));
        };
        let n = d
            .get_i32("n")
            .map(i64::from)
            .or_else(|_| d.get_i64("n"))
            .unwrap_or(0);
        let t = d
            .get_datetime("t")
            .map(|t| t.timestamp_millis())
            .unwrap_or(0);
        Ok((n, t))
    }

    /// The documents of a collection as JSON objects (at most `max_rows`), `_id` and
    /// `updated_at` left out.
    #[tracing::instrument(skip(self))]
    pub async fn rows(&self, c: Collection) -> Result<Vec<Value>> {
        let (filter, sort) = c.query();
        let options = FindOptions::builder()
            .sort(sort)
            .limit(self.max_rows)
            .build();
        let cursor = self
            .db
            .collection::<Document>(c.mongo_name())
            .find(filter)
            .with_options(options)
            .await?;
        let docs: Vec<Document> = cursor.try_collect().await?;
        Ok(docs
            .into_iter()
            .map(|mut d| {
                d.remove("_id");
                d.remove("updated_at");
                to_json(Bson::Document(d))
            })
            .collect())
    }
}

/// BSON to plain JSON: dates as RFC 3339 text, numbers as numbers (not extended JSON).
pub(crate) fn to_json(value: Bson) -> Value {
    match value {
        Bson::Double(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s),
        Bson::Array(a) => Value::Array(a.into_iter().map(to_json).collect()),
        Bson::Document(d) => Value::Object(
            d.into_iter()
                .map(|(k, v)| (k, to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => Value::from(i),
        Bson::DateTime(t) => t.try_to_rfc3339_string().map_or(Value::Null, Value::String),
        Bson::ObjectId(id) => Value::String(id.to_hex()),
        Bson::Decimal128(d) => Value::String(d.to_string()),
        Bson::Null | Bson::Undefined => Value::Null,
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bson_becomes_plain_json() {
        let d = doc! {
            "a": 1_i64, "b": "x", "c": [true, Bson::Null],
            "t": mongodb::bson::DateTime::from_millis(0),
        };
        let v = to_json(Bson::Document(d));
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "b": "x", "c": [true, null], "t": "1970-01-01T00:00:00Z"})
        );
    }

    #[test]
    fn api_names_round_trip() {
        for c in Collection::ALL {
            assert_eq!(Collection::from_api_name(c.api_name()), Some(c));
        }
        assert_eq!(Collection::from_api_name("users"), None);
    }
}
