//! Login, cookie attributes, id rotation, no user enumeration, CSRF, rate limits.

use reqwest::{Method, StatusCode, header};
use serde_json::json;
use sluice_dashboard::Config;

use crate::support::{Client, Env, PASSWORD, Running};

#[tokio::test]
async fn login_sets_a_hardened_cookie_and_a_new_id_each_time() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(Config {
        cookie_secure: true,
        ..env.config()
    })
    .await?;
    let mut client = app.login("viewer").await?;
    let set = client.set_cookie.clone().unwrap_or_default();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    let first = client.clone();
    // Logging in again with the old cookie rotates the id and ends the old session.
    let (status, _) = client.login("viewer", PASSWORD).await?;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(client.session_id(), first.session_id());
    assert_eq!(first.get("/api/me").await?.0, StatusCode::UNAUTHORIZED);
    let (status, me) = client.get("/api/me").await?;
    assert_eq!(
        (status, me["name"].as_str(), me["role"].as_str()),
        (StatusCode::OK, Some("viewer"), Some("viewer"))
    );
    app.stop().await
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_name_get_the_same_answer() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let (s1, b1) = app.client().login("viewer", "wrong password").await?;
    let (s2, b2) = app.client().login("nobody", "wrong password").await?;
    assert_eq!(
        (s1, s2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(b1, b2);
    let metrics = reqwest::get(app.url("/metrics")).await?.text().await?;
    assert!(
        metrics.contains("dashboard_login_failures_total 2"),
        "{metrics}"
    );
    app.stop().await
}

#[tokio::test]
async fn logout_deletes_the_session_in_redis() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let client = app.login("viewer").await?;
    let key = env.redis.key(&format!(
        "session:{}",
        client.session_id().unwrap_or_default()
    ));
    assert!(env.redis.keys().await?.contains(&key));
    let (status, headers, _) = client.send(Method::POST, "/api/logout", None).await?;
    assert_eq!(status, StatusCode::OK);
    let cleared = headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert!(
        !env.redis.keys().await?.contains(&key),
        "session key still in Redis"
    );
    assert_eq!(client.get("/api/me").await?.0, StatusCode::UNAUTHORIZED);
    app.stop().await
}

#[tokio::test]
async fn every_state_changing_request_needs_the_csrf_token() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let admin = app.login("admin").await?;
    let without = Client {
        csrf: None,
        ..admin.clone()
    };
    let wrong = Client {
        csrf: Some("0".repeat(64)),
        ..admin.clone()
    };
    let new_user = json!({"name": "eve", "role": "viewer", "password": "long enough pw"});
    for client in [&without, &wrong] {
        let cases = [
            (Method::POST, "/api/users", Some(new_user.clone())),
            (Method::DELETE, "/api/users/viewer", None),
            (
                Method::POST,
                "/api/sales",
                Some(crate::support::sale_body("I-1")),
            ),
            (
                Method::POST,
                "/api/inventory",
                Some(crate::support::inventory_body("P1")),
            ),
            (Method::POST, "/api/logout", None),
        ];
        for (method, path, body) in cases {
            let (status, _, body) = client.send(method.clone(), path, body).await?;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::FORBIDDEN, Some("csrf")),
                "{method} {path}"
            );
        }
    }
    // Nothing happened, and the right token works.
    assert_eq!(admin.get("/api/me").await?.0, StatusCode::OK);
    assert_eq!(
        admin.post("/api/users", new_user).await?.0,
        StatusCode::CREATED
    );
    app.stop().await
}

#[tokio::test]
async fn logins_are_limited_per_user_name_and_per_address() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let config = Config {
        login_per_user_per_minute: 3,
        login_per_ip_per_minute: 6,
        ..env.config()
    };
    let app = Running::start(config).await?;
    for _ in 0..3 {
        assert_eq!(
            app.client().login("viewer", "guess").await?.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // The fourth try of that name is refused even with the right password.
    let mut client = app.client();
    let (status, body) = client.login("viewer", PASSWORD).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    let (_, headers, _) = client
        .send(
            Method::POST,
            "/api/login",
            Some(json!({"name": "viewer", "password": PASSWORD})),
        )
        .await?;
    assert!(headers.get(header::RETRY_AFTER).is_some());
    // Unknown names are limited the same way (no enumeration through the limiter either).
    // Another name still gets in, until the address has used its 6 attempts.
    assert_eq!(
        app.client().login("admin", PASSWORD).await?.0,
        StatusCode::OK
    );
    let (status, _) = app.client().login("accountant", PASSWORD).await?;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "7th attempt from one address"
    );
    app.stop().await
}
