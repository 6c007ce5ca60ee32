use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestApp, event};

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() -> anyhow::Result<()> {
    let app = TestApp::start_with(|c| {
        // Slow enough that three requests never span one refill, however loaded the machine.
        c.rate_limit_per_client = 0.1;
        c.rate_limit_burst = 2;
    })
    .await?;
    assert_eq!(app.publish(&event("r", "1")).await?.status(), 202);
    assert_eq!(app.publish(&event("r", "2")).await?.status(), 202);
    let r = app.publish(&event("r", "3")).await?;
    assert_eq!(r.status(), 429);
    let wait: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("Retry-After");
    assert!((1..=10).contains(&wait), "{wait}");
    assert_eq!(r.json::<Value>().await?["error"], "rate_limited");
    app.stop().await
}

#[tokio::test]
async fn a_request_slower_than_the_timeout_gets_408() -> anyhow::Result<()> {
    let app = TestApp::start_with(|c| c.request_timeout_ms = 300).await?;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    // Promise 100 bytes, send 10, then stall.
    conn.write_all(b"POST /publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"events\":").await?;
    let mut response = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut response)).await??;
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    app.stop().await
}
