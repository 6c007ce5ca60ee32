//! sluice-core: what every sluice service shares.
//!
//! # Layout
//! - [`event`]: the event of the aggregator contract and its validation, with errors that name
//!   the index and the field at fault.
//! - [`wire`]: versioned messages as they travel through brokers, so every service agrees.
//! - [`config`]: typed configuration from defaults, an optional TOML file and the environment,
//!   with errors that name the setting; [`config::Secret`] keeps credentials out of logs.
//! - [`telemetry`]: logs through `tracing` (JSON, or text on a terminal) and a Prometheus
//!   registry owned by the app.
//! - [`health`]: dependency probes behind `/health` and `/ready`.
//! - [`shutdown`]: a [`CancellationToken`](tokio_util::sync::CancellationToken) tied to SIGTERM
//!   and SIGINT, for binaries; libraries only ever receive the token.
//! - [`http`]: binds a listener (port 0 in tests), exposes the bound address and serves a router
//!   until the token is cancelled, finishing requests in flight.
//!
//! # Example
//! ```no_run
//! use sluice_core::{health::Health, http::HttpServer, shutdown, telemetry::Metrics};
//!
//! # async fn run() -> Result<(), sluice_core::Error> {
//! sluice_core::telemetry::init_logs("demo");
//! let metrics = Metrics::new("demo")?;
//! let health = Health::new();
//! let router = health.router().merge(metrics.router());
//! let server = HttpServer::bind("127.0.0.1:0").await?;
//! println!("listening on {}", server.local_addr());
//! server.serve(router, shutdown::on_signal()).await
//! # }
//! ```

pub mod config;
pub mod event;
pub mod health;
pub mod http;
pub mod shutdown;
pub mod telemetry;
pub mod wire;

mod error;

pub use error::{Error, Result};
pub use event::{Event, ValidationError};
