//! A dashboard per test on port 0, with its own resources, and an HTTP client that keeps the
//! session cookie and the CSRF token explicitly (tests look at both).

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sluice_core::config::Secret;
use sluice_dashboard::{
    App, Config,
    users::{Role, UserStore},
};
use sluice_testkit::{InProcess, TestDatabase, TestKafka, TestMongo, TestRedis};

/// The password every test user gets.
pub(crate) const PASSWORD: &str = "correct horse battery";

/// Isolated resources for one dashboard.
pub(crate) struct Env {
    pub(crate) db: TestDatabase,
    pub(crate) redis: TestRedis,
    pub(crate) mongo: TestMongo,
    pub(crate) kafka: TestKafka,
    pub(crate) topic_prefix: String,
}

impl Env {
    /// Creates the resources and the Kafka topics the dashboard publishes to.
    pub(crate) async fn create() -> anyhow::Result<Self> {
        let kafka = TestKafka::create().await?;
        let sales = kafka.topic("topic-raw-sales", 1).await?;
        kafka.topic("topic-inventory-updates", 1).await?;
        let topic_prefix = sales.trim_end_matches("topic-raw-sales").to_owned();
        Ok(Self {
            db: TestDatabase::create().await?,
            redis: TestRedis::create().await?,
            mongo: TestMongo::create().await?,
            kafka,
            topic_prefix,
        })
    }

    /// A config pointing at this test's resources, on 127.0.0.1:0.
    pub(crate) fn config(&self) -> Config {
        Config {
            host: "127.0.0.1".into(),
            port: 0,
            database_url: Secret::new(self.db.url().to_owned()),
            redis_url: Secret::new(self.redis.url().to_owned()),
            redis_prefix: self.redis.prefix().to_owned(),
            aggregator_stream: self.redis.key("events"),
            mongodb_url: Secret::new(self.mongo.url().to_owned()),
            mongodb_database: self.mongo.database().name().to_owned(),
            kafka_brokers: self.kafka.bootstrap().to_owned(),
            topic_prefix: self.topic_prefix.clone(),
            analytics_group: self.kafka.group_id("analytics"),
            cookie_secure: false,
            poll_interval_ms: 100,
            ..Config::default()
        }
    }

    /// Adds a user with [`PASSWORD`].
    pub(crate) async fn user(&self, name: &str, role: Role) -> anyhow::Result<()> {
        UserStore::new(self.db.pool().clone())?
            .add(name, role, PASSWORD)
            .await?;
        Ok(())
    }

    /// One user of each role: `viewer`, `accountant`, `admin`.
    pub(crate) async fn users(&self) -> anyhow::Result<()> {
        self.user("viewer", Role::Viewer).await?;
        self.user("accountant", Role::Accountant).await?;
        self.user("admin", Role::Admin).await
    }
}

/// A running dashboard.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) app: InProcess<sluice_dashboard::Result<()>>,
    pub(crate) hub: std::sync::Arc<sluice_dashboard::live::Hub>,
}

impl Running {
    /// Builds and runs a dashboard with `config`.
    pub(crate) async fn start(config: Config) -> anyhow::Result<Self> {
        let app = App::build(config).await.context("building the dashboard")?;
        let (addr, hub) = (app.local_addr(), app.hub());
        let app = InProcess::spawn(|token| app.run(token));
        Ok(Self { addr, app, hub })
    }

    /// `http://addr/path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A client without a session.
    pub(crate) fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// A client logged in as `name` with [`PASSWORD`].
    pub(crate) async fn login(&self, name: &str) -> anyhow::Result<Client> {
        let mut client = self.client();
        let (status, body) = client.login(name, PASSWORD).await?;
        if status != StatusCode::OK {
            bail!("login as {name}: {status} {body}");
        }
        Ok(client)
    }

    /// Stops it (cancels the token) and waits.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.app.stop(Duration::from_secs(20)).await??;
        Ok(())
    }
}

/// An HTTP client holding one session cookie and its CSRF token.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) addr: SocketAddr,
    pub(crate) http: reqwest::Client,
    /// `name=value` of the session cookie.
    pub(crate) cookie: Option<String>,
    pub(crate) csrf: Option<String>,
    /// The full `Set-Cookie` of the last login.
    pub(crate) set_cookie: Option<String>,
}

impl Client {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            cookie: None,
            csrf: None,
            set_cookie: None,
        }
    }

    /// Logs in; keeps the cookie and token on success.
    pub(crate) async fn login(
        &mut self,
        name: &str,
        password: &str,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (status, headers, body) = self
            .send(
                Method::POST,
                "/api/login",
                Some(json!({"name": name, "password": password})),
            )
            .await?;
        if status == StatusCode::OK {
            let set = headers
                .get(header::SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .context("no Set-Cookie")?
                .to_owned();
            self.cookie = set.split(';').next().map(str::to_owned);
            self.set_cookie = Some(set);
            self.csrf = body["csrf"].as_str().map(str::to_owned);
        }
        Ok((status, body))
    }

    /// A request with the cookie and the CSRF token (when held).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, header::HeaderMap, Value)> {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.addr));
        if let Some(cookie) = &self.cookie {
            req = req.header(header::COOKIE, cookie);
        }
        if let Some(csrf) = &self.csrf {
            req = req.header("x-csrf-token", csrf);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, headers, value))
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let (s, _, b) = self.send(Method::GET, path, None).await?;
        Ok((s, b))
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        body: Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (s, _, b) = self.send(Method::POST, path, Some(body)).await?;
        Ok((s, b))
    }

    /// The session id from the cookie.
    pub(crate) fn session_id(&self) -> Option<&str> {
        self.cookie.as_deref()?.split_once('=').map(|(_, v)| v)
    }

    /// Opens `/api/ws?topics=…` with the session cookie.
    pub(crate) async fn websocket(
        &self,
        topics: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tokio_tungstenite::tungstenite::Error,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}/api/ws?topics={topics}", self.addr).into_client_request()?;
        if let Some(cookie) = &self.cookie
            && let Ok(value) = cookie.parse()
        {
            req.headers_mut().insert(header::COOKIE, value);
        }
        Ok(tokio_tungstenite::connect_async(req).await?.0)
    }
}

/// A sale with three line items, as the accountant form sends it.
pub(crate) fn sale_body(invoice: &str) -> Value {
    json!({
        "invoice_id": invoice, "client_id": "C001", "total_amount": "42.50",
        "items": [
            {"product_id": "P001", "quantity": 2},
            {"product_id": "P002", "quantity": 1},
            {"product_id": "P003", "quantity": 5},
        ],
    })
}

/// An inventory update.
pub(crate) fn inventory_body(product: &str) -> Value {
    json!({
        "product_id": product, "name": "Oat milk", "category": "dairy",
        "buy_price": "1.10", "sell_price": "1.99", "min_margin_threshold": "0.15",
        "quantity": 40, "expiry_date": "2030-01-31", "batch_no": "B-7",
    })
}
