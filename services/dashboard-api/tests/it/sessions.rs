//! Sessions survive a restart, expire when idle or too old, and the first admin and the CLI
//! create users.

use std::time::Duration;

use reqwest::StatusCode;
use sluice_core::config::Secret;
use sluice_dashboard::Config;
use sluice_testkit::eventually;
use tokio::io::AsyncWriteExt;

use crate::support::{Env, Running};

#[tokio::test]
async fn a_restart_keeps_everyone_logged_in() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let first = Running::start(env.config()).await?;
    let client = first.login("accountant").await?;
    first.stop().await?;
    let second = Running::start(env.config()).await?;
    let client = crate::support::Client {
        addr: second.addr,
        ..client
    };
    let (status, me) = client.get("/api/me").await?;
    assert_eq!(
        (status, me["name"].as_str()),
        (StatusCode::OK, Some("accountant"))
    );
    // The CSRF token of the session still works too.
    let (status, _) = client
        .post("/api/inventory", crate::support::inventory_body("P9"))
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    second.stop().await
}

#[tokio::test]
async fn an_idle_session_ends_and_so_does_an_old_one() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let idle = Running::start(Config {
        session_idle_secs: 1,
        session_absolute_secs: 60,
        ..env.config()
    })
    .await?;
    let client = idle.login("viewer").await?;
    // Watched in Redis, not through the API: a request would renew the idle timer.
    let key = env.redis.key(&format!(
        "session:{}",
        client.session_id().unwrap_or_default()
    ));
    eventually(
        "the idle session to expire in Redis",
        Duration::from_secs(5),
        || async {
            let keys = env.redis.keys().await.ok()?;
            (!keys.contains(&key)).then_some(())
        },
    )
    .await?;
    assert_eq!(client.get("/api/me").await?.0, StatusCode::UNAUTHORIZED);
    idle.stop().await?;
    // Used all the time (eventually polls every ≤ 250 ms), a session still ends at its absolute lifetime.
    let old = Running::start(Config {
        session_idle_secs: 2,
        session_absolute_secs: 2,
        ..env.config()
    })
    .await?;
    let client = old.login("viewer").await?;
    let started = std::time::Instant::now();
    eventually(
        "the session to reach its lifetime",
        Duration::from_secs(6),
        || {
            let client = client.clone();
            async move {
                (client.get("/api/me").await.ok()?.0 == StatusCode::UNAUTHORIZED).then_some(())
            }
        },
    )
    .await?;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "ended after {:?}",
        started.elapsed()
    );
    old.stop().await
}

#[tokio::test]
async fn the_first_admin_comes_from_the_environment_once() -> anyhow::Result<()> {
    let env = Env::create().await?;
    let config = Config {
        admin_user: Some("root".into()),
        admin_password: Some(Secret::new("first password".into())),
        ..env.config()
    };
    let app = Running::start(config.clone()).await?;
    let (status, me) = app.client().login("root", "first password").await?;
    assert_eq!(
        (status, me["role"].as_str()),
        (StatusCode::OK, Some("admin"))
    );
    app.stop().await?;
    // A later start with another password changes nothing: users exist.
    let again = Config {
        admin_password: Some(Secret::new("other password".into())),
        ..config
    };
    let app = Running::start(again).await?;
    assert_eq!(
        app.client().login("root", "other password").await?.0,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await
}

#[tokio::test]
async fn user_add_on_the_command_line_reads_the_password_from_stdin() -> anyhow::Result<()> {
    let env = Env::create().await?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-dashboard"))
        .args(["user", "add", "carol", "--role", "accountant"])
        .env("DATABASE_URL", env.db.url())
        .env_remove("SLUICE_DASHBOARD_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    stdin.write_all(b"carols password\n").await?;
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "{status}");
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-dashboard"))
        .args(["user", "add", "dave", "--role", "root"])
        .env("DATABASE_URL", env.db.url())
        .env("SLUICE_DASHBOARD_PASSWORD", "daves password")
        .output()
        .await?;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("role"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let app = Running::start(env.config()).await?;
    let (status, me) = app.client().login("carol", "carols password").await?;
    assert_eq!(
        (status, me["role"].as_str()),
        (StatusCode::OK, Some("accountant"))
    );
    app.stop().await
}
