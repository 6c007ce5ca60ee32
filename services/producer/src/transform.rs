//! Online scaling of numeric fields, with state that is plain JSON.
//!
//! The state is saved with the checkpoint after every confirmed batch and restored on restart,
//! so a run that is killed and resumed emits exactly what an uninterrupted run emits (seed 000
//! pickled a scikit-learn scaler that could not be serialised with the checkpoint).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::{Record, lookup_mut};

/// Welford's running mean and variance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Standard {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
}

impl Standard {
    fn scale(&mut self, x: f64) -> f64 {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
        let var = if self.n > 1 {
            self.m2 / (self.n - 1) as f64
        } else {
            0.0
        };
        if var > 0.0 {
            (x - self.mean) / var.sqrt()
        } else {
            0.0
        }
    }
}

/// Running minimum and maximum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinMax {
    pub min: f64,
    pub max: f64,
}

impl MinMax {
    fn scale(state: &mut Option<Self>, x: f64) -> f64 {
        let s = state.get_or_insert(Self { min: x, max: x });
        s.min = s.min.min(x);
        s.max = s.max.max(x);
        if s.max > s.min {
            (x - s.min) / (s.max - s.min)
        } else {
            0.0
        }
    }
}

/// The scalers of a run, keyed by field path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scalers {
    pub standard: BTreeMap<String, Standard>,
    pub minmax: BTreeMap<String, Option<MinMax>>,
}

impl Scalers {
    /// Scalers for the given fields, continuing from `saved` state when there is one.
    pub fn new(
        standard: &[String],
        minmax: &[String],
        saved: Option<Value>,
    ) -> Result<Self, serde_json::Error> {
        let mut scalers: Self = match saved {
            Some(state) => serde_json::from_value(state)?,
            None => Self::default(),
        };
        for f in standard {
            scalers.standard.entry(f.clone()).or_default();
        }
        for f in minmax {
            scalers.minmax.entry(f.clone()).or_default();
        }
        Ok(scalers)
    }

    /// True when no field is scaled.
    pub fn is_empty(&self) -> bool {
        self.standard.is_empty() && self.minmax.is_empty()
    }

    /// Scales the configured numeric fields of each record in order; other values pass as is.
    pub fn apply(&mut self, records: &mut [Record]) {
        if self.is_empty() {
            return;
        }
        for record in records {
            let Ok(body) = &mut record.body else { continue };
            for (path, state) in &mut self.standard {
                if let Some(v) = lookup_mut(body, path)
                    && let Some(x) = v.as_f64()
                {
                    *v = number(state.scale(x));
                }
            }
            for (path, state) in &mut self.minmax {
                if let Some(v) = lookup_mut(body, path)
                    && let Some(x) = v.as_f64()
                {
                    *v = number(MinMax::scale(state, x));
                }
            }
        }
    }

    /// The state as JSON, for the checkpoint.
    pub fn state(&self) -> Option<Value> {
        if self.is_empty() {
            None
        } else {
            serde_json::to_value(self).ok()
        }
    }
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn records_from(values: &[f64], first: usize) -> Vec<Record> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Record::new(
                    (first + i).to_string(),
                    None,
                    json!({"payload": {"amount": v, "n": v}}),
                )
            })
            .collect()
    }

    fn records(values: &[f64]) -> Vec<Record> {
        records_from(values, 0)
    }

    fn amounts(records: &[Record]) -> Vec<Value> {
        records
            .iter()
            .map(|r| r.body.as_ref().expect("ok")["payload"]["amount"].clone())
            .collect()
    }

    #[test]
    fn resuming_from_saved_state_gives_the_same_output_as_one_run() {
        let values: Vec<f64> = (0..50).map(|i| (i * 37 % 11) as f64 * 1.5).collect();
        let fields = (
            vec!["payload.amount".to_owned()],
            vec!["payload.n".to_owned()],
        );
        let mut whole = records(&values);
        Scalers::new(&fields.0, &fields.1, None)
            .expect("new")
            .apply(&mut whole);

        let (mut first, mut second) = (records(&values[..20]), records_from(&values[20..], 20));
        let mut a = Scalers::new(&fields.0, &fields.1, None).expect("new");
        a.apply(&mut first);
        let saved = serde_json::to_string(&a.state()).expect("plain JSON");
        let restored: Option<Value> = serde_json::from_str(&saved).expect("parse");
        Scalers::new(&fields.0, &fields.1, restored)
            .expect("restore")
            .apply(&mut second);
        first.extend(second);
        assert_eq!(first, whole);
    }

    #[test]
    fn minmax_lands_in_unit_interval_and_standard_is_centred() {
        let mut rs = records(&[10.0, 20.0, 30.0, 40.0]);
        let mut s = Scalers::new(&[], &["payload.amount".to_owned()], None).expect("new");
        s.apply(&mut rs);
        assert_eq!(
            amounts(&rs),
            [json!(0.0), json!(1.0), json!(1.0), json!(1.0)]
        );
        let mut rs = records(&[1.0, 2.0, 3.0]);
        let mut s = Scalers::new(&["payload.amount".to_owned()], &[], None).expect("new");
        s.apply(&mut rs);
        // 1 → 0 (one value); 2 → (2 − 1.5) / 0.707; 3 → (3 − 2) / 1.
        let z = amounts(&rs);
        assert_eq!((z[0].clone(), z[2].clone()), (json!(0.0), json!(1.0)));
        assert!((z[1].as_f64().expect("number") - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9);
    }

    #[test]
    fn non_numeric_and_missing_fields_pass_unchanged() {
        let mut rs = vec![Record::new(
            "x",
            None,
            json!({"payload": {"amount": "n/a"}}),
        )];
        let mut s = Scalers::new(
            &["payload.amount".to_owned(), "payload.missing".to_owned()],
            &[],
            None,
        )
        .expect("new");
        s.apply(&mut rs);
        assert_eq!(amounts(&rs), [json!("n/a")]);
    }
}
