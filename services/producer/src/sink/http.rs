//! The aggregator's `POST /publish`: batches of valid events, retried on 408/429/503 (as the
//! aggregator's Retry-After says, capped) and on 5xx or connection errors with jittered backoff.
//!
//! Any 2xx is a delivery. A 413 says the body is too large, not that the events are bad: the
//! batch is split in halves until the parts fit, and an event that is refused on its own is
//! dead-lettered (a poison record), so no restart meets the same 413 again.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_resilience::{RetryPolicy, Verdict, retry::retry_until};
use tokio_util::sync::CancellationToken;

use super::{DeadLetterFile, Delivered, aggregator_events};
use crate::{Error, Result, record::Record};

/// The longest `Retry-After` honoured; a longer one (or a huge one) waits this long.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct HttpSink {
    client: reqwest::Client,
    publish_url: String,
    health_url: String,
    policy: RetryPolicy,
    dead: DeadLetterFile,
    shutdown: CancellationToken,
}

/// Why a request to the aggregator failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    #[error("the aggregator answered {status}: {body}")]
    Status {
        status: u16,
        /// Its `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
        body: String,
    },
    #[error("request failed: {0}")]
    Transport(#[source] reqwest::Error),
}

impl HttpFailure {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Transport(_) => None,
        }
    }
}

impl HttpSink {
    /// `shutdown` ends a wait between attempts: the batch then fails with [`Error::Stopped`]
    /// and the next run sends it again.
    pub fn new(base: &str, dead: DeadLetterFile, shutdown: CancellationToken) -> Result<Self> {
        let base = base.trim_end_matches('/');
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Http(HttpFailure::Transport(e)))?;
        Ok(Self {
            client,
            publish_url: format!("{base}/publish"),
            health_url: format!("{base}/health"),
            policy: RetryPolicy::new(8)
                .with_max_elapsed(Duration::from_secs(120))
                .with_max_retry_after(MAX_RETRY_AFTER),
            dead,
            shutdown,
        })
    }

    /// Posts the valid events, splitting on 413.
    pub async fn send(&mut self, records: &[Record]) -> Result<Delivered> {
        let (valid, poison) = aggregator_events(records);
        let events: Vec<(&Record, &Value)> = valid
            .iter()
            .filter_map(|(r, _)| Some((*r, r.body.as_ref().ok()?)))
            .collect();
        self.dead.write(&poison).await?;
        let mut delivered = Delivered {
            sent: 0,
            dead_lettered: poison.len() as u64,
        };
        // Parts still to post, the next on top; a part refused with 413 is replaced by halves.
        let mut parts: Vec<&[(&Record, &Value)]> = Vec::new();
        if !events.is_empty() {
            parts.push(&events);
        }
        while let Some(part) = parts.pop() {
            match self.post_with_retries(part).await {
                Ok(()) => delivered.sent += part.len() as u64,
                Err(Error::HttpRejected(f)) if f.status() == Some(413) && part.len() > 1 => {
                    let (first, second) = part.split_at(part.len() / 2);
                    tracing::info!(events = part.len(), "413: sending the batch in halves");
                    parts.extend([second, first]);
                }
                Err(Error::HttpRejected(f)) if f.status() == Some(413) => {
                    let reason = format!("too large for the aggregator on its own: {f}");
                    self.dead.write(&[(part[0].0, reason)]).await?;
                    delivered.dead_lettered += 1;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(delivered)
    }

    async fn post_with_retries(&self, part: &[(&Record, &Value)]) -> Result<()> {
        let body = json!({ "events": part.iter().map(|(_, v)| v).collect::<Vec<_>>() });
        let outcome = retry_until(
            &self.policy,
            self.shutdown.cancelled(),
            classify,
            |e| tracing::warn!(attempt = e.attempt, delay = ?e.delay, failure = %e.error, "publish retry"),
            || self.post(&body),
        )
        .await;
        if self.shutdown.is_cancelled() && outcome.is_err() {
            return Err(Error::Stopped);
        }
        outcome.map_err(|f| match classify(&f) {
            Verdict::Permanent => Error::HttpRejected(f),
            _ => Error::Http(f),
        })
    }

    async fn post(&self, body: &Value) -> std::result::Result<(), HttpFailure> {
        let response = self
            .client
            .post(&self.publish_url)
            .json(body)
            .send()
            .await
            .map_err(HttpFailure::Transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = parse_retry_after(response.headers().get(reqwest::header::RETRY_AFTER));
        let body = response.text().await.unwrap_or_default();
        Err(HttpFailure::Status {
            status: status.as_u16(),
            retry_after,
            body,
        })
    }

    pub async fn health_check(&mut self) -> Result<()> {
        let r = self
            .client
            .get(&self.health_url)
            .send()
            .await
            .map_err(|e| Error::Http(HttpFailure::Transport(e)))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(Error::Http(HttpFailure::Status {
                status: r.status().as_u16(),
                retry_after: None,
                body: "health check".to_owned(),
            }))
        }
    }
}

/// `Retry-After` in seconds, capped at [`MAX_RETRY_AFTER`]; anything unreadable is ignored
/// (the backoff applies). A header is input: it never panics.
fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let secs: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// 408 (the aggregator's own request timeout), 429, 5xx and transport errors are worth another
/// attempt; any other 4xx refuses the request itself.
fn classify(failure: &HttpFailure) -> Verdict {
    match failure {
        HttpFailure::Status {
            status: 429 | 503,
            retry_after: Some(wait),
            ..
        } => Verdict::RetryAfter(*wait),
        HttpFailure::Status {
            status: 408 | 429 | 500..,
            ..
        } => Verdict::Transient,
        HttpFailure::Status { .. } => Verdict::Permanent,
        HttpFailure::Transport(_) => Verdict::Transient,
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_is_capped_and_never_panics() {
        let parse = |s: &'static str| parse_retry_after(Some(&HeaderValue::from_static(s)));
        assert_eq!(parse("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse("99999999999999999999999"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn a_408_is_retried_and_a_413_is_not() {
        let status = |status| HttpFailure::Status {
            status,
            retry_after: None,
            body: String::new(),
        };
        assert_eq!(classify(&status(408)), Verdict::Transient);
        assert_eq!(classify(&status(502)), Verdict::Transient);
        assert_eq!(classify(&status(413)), Verdict::Permanent);
        assert_eq!(classify(&status(422)), Verdict::Permanent);
    }
}
