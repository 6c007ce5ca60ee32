//! The whole route × role matrix, checked on the server, and WebSocket subscriptions per role.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sluice_dashboard::users::Role;

use crate::support::{Client, Env, Running, inventory_body, sale_body};

/// Who may call a route: `None` for anyone logged in.
struct Route {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    least: Role,
}

fn routes() -> Vec<Route> {
    let r = |method: Method, path: &'static str, body: Option<Value>, least: Role| Route {
        method,
        path,
        body,
        least,
    };
    vec![
        r(Method::GET, "/api/me", None, Role::Viewer),
        r(Method::GET, "/api/results/winners", None, Role::Viewer),
        r(Method::GET, "/api/results/loss_risk", None, Role::Viewer),
        r(Method::GET, "/api/results/clients", None, Role::Viewer),
        r(
            Method::GET,
            "/api/results/sales_by_category",
            None,
            Role::Viewer,
        ),
        r(
            Method::POST,
            "/api/sales",
            Some(sale_body("INV-M")),
            Role::Accountant,
        ),
        r(
            Method::POST,
            "/api/inventory",
            Some(inventory_body("P-M")),
            Role::Accountant,
        ),
        r(Method::GET, "/api/system", None, Role::Admin),
        r(Method::GET, "/api/users", None, Role::Admin),
        r(
            Method::POST,
            "/api/users",
            Some(json!({"name": "x", "role": "viewer", "password": "short"})),
            Role::Admin,
        ),
        r(Method::DELETE, "/api/users/nobody", None, Role::Admin),
    ]
}

#[tokio::test]
async fn every_route_checks_the_role_on_the_server() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let anonymous = app.client();
    let mut clients: Vec<(Option<Role>, Client)> = vec![(None, anonymous)];
    for (name, role) in [
        ("viewer", Role::Viewer),
        ("accountant", Role::Accountant),
        ("admin", Role::Admin),
    ] {
        clients.push((Some(role), app.login(name).await?));
    }
    let mut checked = 0;
    for route in routes() {
        for (role, client) in &clients {
            let (status, _, body) = client
                .send(route.method.clone(), route.path, route.body.clone())
                .await?;
            let expected = match role {
                None => Some(StatusCode::UNAUTHORIZED),
                Some(role) if *role < route.least => Some(StatusCode::FORBIDDEN),
                Some(_) => None,
            };
            match expected {
                Some(code) => assert_eq!(
                    status, code,
                    "{role:?} {} {}: {body}",
                    route.method, route.path
                ),
                // Allowed: whatever the answer (201, 202, 404 for a missing user, 422 for a short
                // password), it is past the role check.
                None => assert!(
                    ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status)
                        && !status.is_server_error(),
                    "{role:?} {} {}: {status} {body}",
                    route.method,
                    route.path
                ),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes().len() * 4);
    app.stop().await
}

#[tokio::test]
async fn websocket_topics_are_checked_per_role() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let refused = |r: Result<_, tokio_tungstenite::tungstenite::Error>, code: u16| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16() == code,
        _ => false,
    };
    assert!(
        refused(app.client().websocket("winners").await, 401),
        "anonymous"
    );
    for name in ["viewer", "accountant"] {
        let client = app.login(name).await?;
        assert!(
            client
                .websocket("winners,loss_risk,clients,sales_by_category")
                .await
                .is_ok(),
            "{name} results"
        );
        assert!(
            refused(client.websocket("winners,system").await, 403),
            "{name} system"
        );
    }
    let admin = app.login("admin").await?;
    assert!(admin.websocket("winners,system").await.is_ok());
    assert!(
        refused(admin.websocket("users").await, 403),
        "unknown topic"
    );
    app.stop().await
}

#[tokio::test]
async fn a_demoted_user_loses_access_at_once() -> anyhow::Result<()> {
    let env = Env::create().await?;
    env.users().await?;
    let app = Running::start(env.config()).await?;
    let accountant = app.login("accountant").await?;
    assert_eq!(
        accountant
            .post("/api/inventory", inventory_body("P1"))
            .await?
            .0,
        StatusCode::ACCEPTED
    );
    sqlx::query("UPDATE dashboard_users SET role = 'viewer' WHERE name = 'accountant'")
        .execute(env.db.pool())
        .await?;
    assert_eq!(
        accountant
            .post("/api/inventory", inventory_body("P1"))
            .await?
            .0,
        StatusCode::FORBIDDEN
    );
    let admin = app.login("admin").await?;
    let (status, _, _) = admin
        .send(Method::DELETE, "/api/users/accountant", None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(accountant.get("/api/me").await?.0, StatusCode::UNAUTHORIZED);
    app.stop().await
}
