use std::time::Duration;

use sluice_testkit::{ChildService, InProcess};
use tokio::process::Command;

fn demo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-demo"));
    cmd.env("PORT", "0").env("RUST_LOG", "info");
    cmd
}

#[tokio::test]
async fn child_on_port_zero_serves_health_and_metrics_and_stops_gracefully_on_sigterm()
-> anyhow::Result<()> {
    let mut child = ChildService::spawn(demo(), Duration::from_secs(30)).await?;
    let http = reqwest::Client::new();
    let health = http.get(child.url("/health")).send().await?;
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await?;
    assert_eq!(body["self"], "connected");
    let metrics = http.get(child.url("/metrics")).send().await?.text().await?;
    assert!(metrics.contains("sluice_build_info"), "{metrics}");

    // A request in flight when SIGTERM arrives still gets its answer.
    let slow = tokio::spawn(http.get(child.url("/slow?ms=300")).send());
    sluice_testkit::eventually(
        "slow request in flight",
        Duration::from_secs(10),
        || async {
            let metrics = reqwest::get(child.url("/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics
                .contains("demo_slow_requests_in_flight 1")
                .then_some(())
        },
    )
    .await?;
    let status = child.terminate(Duration::from_secs(10)).await?;
    let answer = slow.await??;
    assert_eq!(answer.text().await?, "done");
    assert!(status.success(), "exit status {status}");
    assert!(
        child
            .logs()
            .iter()
            .any(|l| l.contains(r#""message":"stopped""#))
    );
    Ok(())
}

#[tokio::test]
async fn sigkill_ends_the_child_at_once() -> anyhow::Result<()> {
    let mut child = ChildService::spawn(demo(), Duration::from_secs(30)).await?;
    let status = child.kill().await?;
    assert!(!status.success());
    assert!(reqwest::get(child.url("/health")).await.is_err());
    Ok(())
}

#[tokio::test]
async fn in_process_app_stops_when_cancelled() -> anyhow::Result<()> {
    let app = InProcess::spawn(|token| async move {
        token.cancelled().await;
        "stopped cleanly"
    });
    assert_eq!(app.stop(Duration::from_secs(5)).await?, "stopped cleanly");
    Ok(())
}
