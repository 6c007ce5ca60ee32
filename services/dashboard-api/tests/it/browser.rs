//! The page in headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
//! scripts/deps.sh), driven over WebDriver with fantoccini. Screenshots of every view go to
//! `target/dashboard-screenshots/` for a reviewer to look at.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::Context;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use mongodb::bson::{DateTime as BsonTime, doc};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
};
use serde_json::{Value, json};
use sluice_dashboard::Config;
use sluice_testkit::eventually;
use tokio::process::{Child, Command};

use crate::support::{Env, PASSWORD, Running};

/// A chromedriver of this test, killed when dropped.
pub(crate) struct Driver {
    _child: Child,
    url: String,
}

impl Driver {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver (scripts/deps.sh installs chromium-driver)")?;
        eventually(
            "chromedriver to listen",
            Duration::from_secs(15),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await?;
        Ok(Self {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// A fresh headless browser (its own profile, so its own cookies) of `width` × `height`.
    pub(crate) async fn browser(&self, width: u32, height: u32) -> anyhow::Result<Browser> {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", format!("--window-size={width},{height}"),
            ]}),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .context("opening a Chromium session")?;
        Ok(client)
    }
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots")
}

pub(crate) async fn screenshot(b: &Browser, name: &str) -> anyhow::Result<()> {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.png")), b.screenshot().await?)?;
    Ok(())
}

async fn js(b: &Browser, script: &str) -> anyhow::Result<Value> {
    Ok(b.execute(script, vec![]).await?)
}

/// Waits until `script` returns true.
pub(crate) async fn until(
    b: &Browser,
    what: &str,
    timeout: Duration,
    script: &str,
) -> anyhow::Result<()> {
    eventually(what, timeout, || async move {
        (js(b, script).await.ok()? == Value::Bool(true)).then_some(())
    })
    .await
}

/// Opens the page and logs in through the form, as a person would (keyboard only).
pub(crate) async fn log_in(b: &Browser, base: &str, name: &str) -> anyhow::Result<()> {
    b.goto(base).await?;
    until(
        b,
        "the login form",
        Duration::from_secs(10),
        "return !document.getElementById('login-view').hidden",
    )
    .await?;
    b.find(Locator::Id("login-name"))
        .await?
        .send_keys(name)
        .await?;
    b.find(Locator::Id("login-password"))
        .await?
        .send_keys(&format!("{PASSWORD}\u{E007}"))
        .await?; // Enter submits
    until(
        b,
        "the dashboard after login",
        Duration::from_secs(10),
        "return !document.getElementById('app').hidden",
    )
    .await?;
    until(
        b,
        "the live indicator",
        Duration::from_secs(10),
        "return document.getElementById('conn').dataset.state === 'live'",
    )
    .await
}

async fn visible_views(b: &Browser) -> anyhow::Result<Vec<String>> {
    let v = js(b, "return [...document.querySelectorAll('[data-least]')].filter(s => !s.hidden).map(s => s.id)").await?;
    Ok(serde_json::from_value(v)?)
}

#[tokio::test]
async fn each_role_sees_only_its_views_at_1280_and_390_px() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    crate::data::seed_results(&env).await?;
    let app = Running::start(env.config()).await?;
    let driver = Driver::start().await?;
    let base = app.url("/");
    let results = [
        "view-winners",
        "view-chart",
        "view-loss-risk",
        "view-clients",
    ];
    let input = ["view-sale", "view-inventory"];
    let admin = ["view-system", "view-users"];
    for (role, expected) in [
        ("viewer", results.to_vec()),
        ("accountant", [&results[..], &input[..]].concat()),
        ("admin", [&results[..], &input[..], &admin[..]].concat()),
    ] {
        let b = driver.browser(1280, 1000).await?;
        log_in(&b, &base, role).await?;
        assert_eq!(visible_views(&b).await?, expected, "{role}");
        until(
            &b,
            "the winners table",
            Duration::from_secs(10),
            "return document.querySelectorAll('#winners-body tbody tr').length === 2",
        )
        .await?;
        until(
            &b,
            "the chart's bars",
            Duration::from_secs(10),
            "return document.querySelectorAll('#sales_by_category-body svg rect.bar').length === 2",
        )
        .await?;
        if role == "admin" {
            until(
                &b,
                "system figures",
                Duration::from_secs(10),
                "return document.querySelectorAll('#system-body .stat').length > 5",
            )
            .await?;
        }
        screenshot(&b, &format!("{role}-1280")).await?;
        if role == "admin" {
            js(
                &b,
                "document.getElementById('view-system').scrollIntoView(); return true",
            )
            .await?;
            screenshot(&b, "admin-system-1280").await?;
        }
        b.set_window_size(390, 1600).await?;
        let (inner, scroll) = (
            js(&b, "return window.innerWidth").await?,
            js(&b, "return document.documentElement.scrollWidth").await?,
        );
        assert!(
            scroll.as_u64() <= inner.as_u64(),
            "{role} at 390 px scrolls sideways: {scroll} > {inner}"
        );
        screenshot(&b, &format!("{role}-390")).await?;
        b.close().await?;
    }
    // The login page itself, and a failed attempt's message.
    let b = driver.browser(390, 844).await?;
    b.goto(&base).await?;
    until(
        &b,
        "the login form",
        Duration::from_secs(10),
        "return !document.getElementById('login-view').hidden",
    )
    .await?;
    b.find(Locator::Id("login-name"))
        .await?
        .send_keys("viewer")
        .await?;
    b.find(Locator::Id("login-password"))
        .await?
        .send_keys("wrong\u{E007}")
        .await?;
    until(
        &b,
        "the error message",
        Duration::from_secs(10),
        "return document.getElementById('login-error').textContent.length > 0",
    )
    .await?;
    screenshot(&b, "login-390").await?;
    b.close().await?;
    app.stop().await
}

#[tokio::test]
async fn a_sale_entered_in_the_page_reaches_kafka_and_an_open_viewer_page_updates()
-> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let driver = Driver::start().await?;
    let base = app.url("/");
    let viewer = driver.browser(1280, 1000).await?;
    log_in(&viewer, &base, "viewer").await?;
    until(
        &viewer,
        "the winners placeholder",
        Duration::from_secs(10),
        "return !!document.querySelector('#winners-body .placeholder')",
    )
    .await?;

    let accountant = driver.browser(1280, 1200).await?;
    log_in(&accountant, &base, "accountant").await?;
    let type_into = |id: &'static str, text: &'static str| {
        let b = &accountant;
        async move { b.find(Locator::Id(id)).await?.send_keys(text).await }
    };
    type_into("sale-invoice", "INV-BROWSER").await?;
    type_into("sale-client", "C042").await?;
    type_into("sale-total", "31.50").await?;
    type_into("item-product-1", "P010").await?;
    type_into("item-qty-1", "3").await?;
    accountant
        .find(Locator::Id("sale-add-item"))
        .await?
        .click()
        .await?;
    type_into("item-product-2", "P011").await?;
    type_into("item-qty-2", "2").await?;
    accountant
        .find(Locator::Css("#sale-form button[type=submit]"))
        .await?
        .click()
        .await?;
    until(&accountant, "the published message", Duration::from_secs(15), "return document.getElementById('sale-result').textContent.startsWith('Published sale INV-BROWSER')").await?;
    screenshot(&accountant, "accountant-sale-published").await?;

    let consumer: StreamConsumer = env
        .kafka
        .client_config()
        .set("group.id", env.kafka.group_id("browser"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(
        &format!("{}topic-raw-sales", env.topic_prefix),
        0,
        Offset::Beginning,
    )?;
    // Assigned, not subscribed: no consumer group join to wait for.
    consumer.assign(&assignment)?;
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
    let sale: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
    assert_eq!(
        (
            sale["invoice_id"].as_str(),
            sale["items"].as_array().map(Vec::len)
        ),
        (Some("INV-BROWSER"), Some(2)),
        "{sale}"
    );

    // Stand-in for sluice-analytics (not run by this test): the result it would write.
    env.mongo.database().collection("product_winners")
        .insert_one(doc! {"_id": "P010", "rank": 1_i64, "product_id": "P010", "name": "Product 10", "category": "dairy",
            "units": 3_i64, "revenue": "30.00", "profit": "12.00", "updated_at": BsonTime::now()})
        .await?;
    let written = std::time::Instant::now();
    until(
        &viewer,
        "the viewer's winners to show P010 without a reload",
        Duration::from_secs(2),
        "return document.getElementById('winners-body').textContent.includes('P010')",
    )
    .await?;
    eprintln!("Mongo write to the viewer's page: {:?}", written.elapsed());
    screenshot(&viewer, "viewer-live-update").await?;
    viewer.close().await?;
    accountant.close().await?;
    app.stop().await
}

#[tokio::test]
async fn a_logged_in_page_stays_logged_in_across_a_restart() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let first = Running::start(env.config()).await?;
    let port = first.addr.port();
    let driver = Driver::start().await?;
    let b = driver.browser(1280, 900).await?;
    log_in(&b, &first.url("/"), "viewer").await?;
    first.stop().await?;
    until(
        &b,
        "the page to notice",
        Duration::from_secs(10),
        "return document.getElementById('conn').dataset.state === 'reconnecting'",
    )
    .await?;
    screenshot(&b, "viewer-reconnecting").await?;
    let second = Running::start(Config {
        port,
        ..env.config()
    })
    .await?;
    until(
        &b,
        "the page to reconnect by itself",
        Duration::from_secs(20),
        "return document.getElementById('conn').dataset.state === 'live'",
    )
    .await?;
    b.refresh().await?;
    until(&b, "the dashboard after a reload", Duration::from_secs(10), "return !document.getElementById('app').hidden && document.getElementById('login-view').hidden").await?;
    assert_eq!(
        js(&b, "return document.getElementById('who-name').textContent").await?,
        "viewer"
    );
    b.close().await?;
    second.stop().await
}
