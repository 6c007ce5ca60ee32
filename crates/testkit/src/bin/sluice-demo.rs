//! A minimal service built from sluice-core the way every sluice service is: config from the
//! environment, JSON logs, `/health`, `/ready`, `/metrics`, graceful shutdown on SIGTERM.
//! The testkit's tests run it as a child process; `GET /slow?ms=N` answers after N ms, so a
//! test can show that a request in flight finishes after SIGTERM.

use std::time::Duration;

use axum::{Router, extract::Query, routing::get};
use prometheus::IntGauge;
use serde::{Deserialize, Serialize};
use sluice_core::{
    config::ConfigLoader, health::Health, http::HttpServer, shutdown, telemetry, telemetry::Metrics,
};

#[derive(Debug, Serialize, Deserialize)]
struct Config {
    host: String,
    port: u16,
}

#[derive(Debug, Deserialize)]
struct Slow {
    ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_json_logs("sluice-demo");
    let defaults = Config {
        host: "127.0.0.1".into(),
        port: 0,
    };
    let config: Config = ConfigLoader::new(&defaults)
        .env_names(&["PORT"])
        .env_prefixed("SLUICE_DEMO_")
        .load()?;
    let shutdown = shutdown::on_signal();
    let metrics = Metrics::new("demo")?;
    let in_flight = metrics.register(IntGauge::new(
        "demo_slow_requests_in_flight",
        "Requests to /slow being answered",
    )?)?;
    let health = Health::new().with_probe("self", || async { Ok(()) });
    let router = Router::new()
        .route(
            "/slow",
            get(move |Query(q): Query<Slow>| async move {
                in_flight.inc();
                tokio::time::sleep(Duration::from_millis(q.ms)).await;
                in_flight.dec();
                "done"
            }),
        )
        .merge(health.router())
        .merge(metrics.router());
    let server = HttpServer::bind(&format!("{}:{}", config.host, config.port)).await?;
    health.set_ready(true);
    let ready = health.clone();
    let token = shutdown.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        ready.set_ready(false);
    });
    server.serve(router, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
