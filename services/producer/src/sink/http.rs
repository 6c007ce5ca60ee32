//! The aggregator's `POST /publish`: batches of valid events, retried on 429/503 as the
//! aggregator's Retry-After says and on 5xx or connection errors with jittered backoff.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_resilience::{RetryPolicy, Verdict, retry};

use super::{DeadLetterFile, Delivered, aggregator_events};
use crate::{Error, Result, record::Record};

#[derive(Debug, Clone)]
pub struct HttpSink {
    client: reqwest::Client,
    publish_url: String,
    health_url: String,
    policy: RetryPolicy,
    dead: DeadLetterFile,
}

/// Why a POST failed, for the retry classifier.
#[derive(Debug)]
enum Failure {
    Status(u16, Option<Duration>, String),
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(status, _, body) => write!(f, "the aggregator answered {status}: {body}"),
            Self::Transport(e) => write!(f, "request failed: {e}"),
        }
    }
}

impl HttpSink {
    pub fn new(base: &str, dead: DeadLetterFile) -> Result<Self> {
        let base = base.trim_end_matches('/');
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        Ok(Self {
            client,
            publish_url: format!("{base}/publish"),
            health_url: format!("{base}/health"),
            policy: RetryPolicy::new(8).with_max_elapsed(Duration::from_secs(120)),
            dead,
        })
    }

    pub async fn send(&mut self, records: &[Record]) -> Result<Delivered> {
        let (valid, poison) = aggregator_events(records);
        let events: Vec<&Value> = valid
            .iter()
            .filter_map(|(r, _)| r.body.as_ref().ok())
            .collect();
        self.dead.write(&poison).await?;
        if !events.is_empty() {
            let body = json!({ "events": events });
            retry(&self.policy, classify, |e| tracing::warn!(attempt = e.attempt, delay = ?e.delay, failure = %e.error, "publish retry"), || self.post(&body))
                .await
                .map_err(|f| match f {
                    Failure::Status(status, ..) if status < 500 && status != 429 => Error::HttpRejected(f.to_string()),
                    other => Error::Http(other.to_string()),
                })?;
        }
        Ok(Delivered {
            sent: events.len() as u64,
            dead_lettered: poison.len() as u64,
        })
    }

    async fn post(&self, body: &Value) -> std::result::Result<(), Failure> {
        let response = self
            .client
            .post(&self.publish_url)
            .json(body)
            .send()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        if status == 202 {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        Err(Failure::Status(status, retry_after, text))
    }

    pub async fn health_check(&mut self) -> Result<()> {
        let r = self
            .client
            .get(&self.health_url)
            .send()
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(Error::Http(format!("health answered {}", r.status())))
        }
    }
}

fn classify(failure: &Failure) -> Verdict {
    match failure {
        Failure::Status(429 | 503, Some(wait), _) => Verdict::RetryAfter(*wait),
        Failure::Status(status, _, _) if *status == 429 || *status >= 500 => Verdict::Transient,
        Failure::Status(..) => Verdict::Permanent,
        Failure::Transport(_) => Verdict::Transient,
    }
}
