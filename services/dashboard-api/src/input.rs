//! What an accountant enters, checked on the server before it is published: the messages of
//! DESIGN §5 as sluice-analytics parses them (money with at most two decimals, quantities as
//! whole numbers, dates as dates), so nothing the page sends can end up dead-lettered.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Error, Result};

/// Most line items of one sale.
pub const MAX_ITEMS: usize = 100;
const MAX_ID: usize = 64;

/// A sale as entered (`POST /api/sales`).
#[derive(Debug, Deserialize)]
pub struct SaleInput {
    /// Optional; one is made up when missing.
    #[serde(default)]
    pub invoice_id: Option<String>,
    /// The buyer.
    pub client_id: String,
    /// Optional; now when missing.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// The invoice's total, e.g. `"12.50"` or `12.5`.
    pub total_amount: Value,
    /// One or more line items.
    pub items: Vec<ItemInput>,
}

/// One line of a sale.
#[derive(Debug, Deserialize)]
pub struct ItemInput {
    /// The product sold.
    pub product_id: String,
    /// Units, at least 1.
    pub quantity: Value,
}

/// An inventory update as entered (`POST /api/inventory`).
#[derive(Debug, Deserialize)]
pub struct InventoryInput {
    pub product_id: String,
    pub name: String,
    pub category: String,
    pub buy_price: Value,
    pub sell_price: Value,
    /// Minimum margin as a fraction, e.g. `0.15`.
    pub min_margin_threshold: Value,
    pub quantity: Value,
    /// Optional; now when missing.
    #[serde(default)]
    pub last_movement: Option<String>,
    /// `YYYY-MM-DD`.
    pub expiry_date: String,
    pub batch_no: String,
}

fn text(field: &str, value: &str) -> Result<String> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_ID || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("1 to {MAX_ID} printable characters"),
        ));
    }
    Ok(value.to_owned())
}

/// A non-negative decimal with at most `scale` decimals, as an integer of 10^-scale units.
pub(crate) fn fixed(field: &str, value: &Value, scale: u32) -> Result<i64> {
    let raw = match value {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return Err(Error::invalid(field, "must be a number")),
    };
    let bad = || {
        Error::invalid(
            field,
            format!("`{raw}` is not a number ≥ 0 with at most {scale} decimals"),
        )
    };
    let (whole, frac) = raw.split_once('.').unwrap_or((raw.as_str(), ""));
    if whole.is_empty()
        || whole.len() > 12
        || frac.len() > scale as usize
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    format!("{whole}{frac:0<width$}", width = scale as usize)
        .parse()
        .map_err(|_| bad())
}

fn whole(field: &str, value: &Value, min: u64) -> Result<u64> {
    let n = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if (min..=1_000_000_000).contains(&n) => Ok(n),
        _ => Err(Error::invalid(
            field,
            format!("must be a whole number from {min}"),
        )),
    }
}

fn time(field: &str, value: Option<&str>) -> Result<String> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        Some(v) => DateTime::parse_from_rfc3339(v)
            .map(|t| {
                t.with_timezone(&Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
            .map_err(|_| Error::invalid(field, "must be an RFC 3339 date-time")),
    }
}

/// `units` of 10^-scale as a JSON number with exactly that text (e.g. 1250, 2 → 12.5).
fn number(units: i64, scale: u32) -> Value {
    // The nearest double to a decimal of ≤ 4 places below 10^12 prints back as that decimal.
    json!(units as f64 / 10_f64.powi(scale as i32))
}

impl SaleInput {
    /// The `topic-raw-sales` message and its key (the invoice id).
    pub fn into_message(self) -> Result<(String, Value)> {
        let invoice_id = match self.invoice_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => text("invoice_id", id)?,
            _ => format!("DASH-{}", uuid::Uuid::new_v4().simple()),
        };
        let client_id = text("client_id", &self.client_id)?;
        let timestamp = time("timestamp", self.timestamp.as_deref())?;
        let total = fixed("total_amount", &self.total_amount, 2)?;
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            return Err(Error::invalid(
                "items",
                format!("1 to {MAX_ITEMS} line items"),
            ));
        }
        let items = self
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                Ok(json!({
                    "product_id": text(&format!("items[{i}].product_id"), &item.product_id)?,
                    "quantity": whole(&format!("items[{i}].quantity"), &item.quantity, 1)?,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let message = json!({
            "invoice_id": invoice_id, "client_id": client_id, "timestamp": timestamp,
            "total_amount": number(total, 2), "items": items,
        });
        Ok((invoice_id, message))
    }
}

impl InventoryInput {
    /// The `topic-inventory-updates` message and its key (the product id).
    pub fn into_message(self) -> Result<(String, Value)> {
        let product_id = text("product_id", &self.product_id)?;
        let buy = fixed("buy_price", &self.buy_price, 2)?;
        let sell = fixed("sell_price", &self.sell_price, 2)?;
        let margin = fixed("min_margin_threshold", &self.min_margin_threshold, 4)?;
        if margin > 10_000 {
            return Err(Error::invalid(
                "min_margin_threshold",
                "must be between 0 and 1",
            ));
        }
        let expiry = NaiveDate::parse_from_str(self.expiry_date.trim(), "%Y-%m-%d")
            .map_err(|_| Error::invalid("expiry_date", "must be a date YYYY-MM-DD"))?;
        let message = json!({
            "product_id": product_id, "name": text("name", &self.name)?,
            "category": text("category", &self.category)?,
            "buy_price": number(buy, 2), "sell_price": number(sell, 2),
            "min_margin_threshold": number(margin, 4),
            "quantity": whole("quantity", &self.quantity, 0)?,
            "last_movement": time("last_movement", self.last_movement.as_deref())?,
            "expiry_date": expiry.to_string(), "batch_no": text("batch_no", &self.batch_no)?,
        });
        Ok((product_id, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(v: Value) -> Result<(String, Value)> {
        serde_json::from_value::<SaleInput>(v)
            .map_err(|e| Error::invalid("body", e.to_string()))?
            .into_message()
    }

    #[test]
    fn a_sale_with_several_items_becomes_the_topic_message() {
        let (key, m) = sale(json!({
            "invoice_id": "INV-1", "client_id": "C1", "total_amount": "19.99",
            "items": [{"product_id": "P1", "quantity": 2}, {"product_id": "P2", "quantity": "3"}],
        }))
        .expect("valid");
        assert_eq!(key, "INV-1");
        assert_eq!(m["total_amount"].to_string(), "19.99");
        assert_eq!(m["items"][1], json!({"product_id": "P2", "quantity": 3}));
        assert!(m["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn bad_sales_name_the_field() {
        let cases = [
            (
                json!({"client_id": "C", "total_amount": 1, "items": []}),
                "items",
            ),
            (
                json!({"client_id": " ", "total_amount": 1, "items": [{"product_id": "P", "quantity": 1}]}),
                "client_id",
            ),
            (
                json!({"client_id": "C", "total_amount": "1.005", "items": [{"product_id": "P", "quantity": 1}]}),
                "total_amount",
            ),
            (
                json!({"client_id": "C", "total_amount": -1, "items": [{"product_id": "P", "quantity": 1}]}),
                "total_amount",
            ),
            (
                json!({"client_id": "C", "total_amount": 1, "items": [{"product_id": "P", "quantity": 0}]}),
                "items[0].quantity",
            ),
        ];
        for (body, field) in cases {
            match sale(body) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected {field} refused, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_inventory_update_keeps_exact_prices() {
        let input: InventoryInput = serde_json::from_value(json!({
            "product_id": "P1", "name": "Milk", "category": "dairy", "buy_price": "0.10",
            "sell_price": 1.2, "min_margin_threshold": "0.15", "quantity": 10,
            "expiry_date": "2030-01-31", "batch_no": "B1",
        }))
        .expect("shape");
        let (key, m) = input.into_message().expect("valid");
        assert_eq!(key, "P1");
        assert_eq!(
            (
                m["buy_price"].to_string(),
                m["sell_price"].to_string(),
                m["min_margin_threshold"].to_string()
            ),
            ("0.1".into(), "1.2".into(), "0.15".into())
        );
    }
}
