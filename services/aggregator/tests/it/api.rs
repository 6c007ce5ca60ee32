use serde_json::{Value, json};

use crate::support::{TestApp, event};

#[tokio::test]
async fn publish_accepts_the_three_body_shapes() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    for (body, n) in [
        (json!({"events": [event("a", "1"), event("a", "2")]}), 2),
        (json!([event("a", "3")]), 1),
        (event("a", "4"), 1),
    ] {
        let r = app.publish(&body).await?;
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await?;
        assert_eq!(
            body,
            json!({"status": "accepted", "queued": n, "accepted": n})
        );
    }
    let stats = app.wait_received(4).await?;
    assert_eq!(stats["unique_processed"], 4);
    assert_eq!(stats["duplicate_dropped"], 0);
    assert_eq!(
        stats["topics"], 1,
        "a number, as the seed's service answered"
    );
    assert_eq!(stats["topic_names"], json!(["a"]));
    assert_eq!(stats["status"], "healthy");
    assert!(stats["uptime_seconds"].as_f64().is_some());
    app.stop().await
}

#[tokio::test]
async fn payloads_round_trip_exactly() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let payload = json!({
        "nested": {"list": [1, 2.5, -3, null, true, {"deep": "ü 漢字 🚀"}], "empty": {}},
        "big": 9007199254740991_i64, "float": 0.1, "neg": -1.5e-7, "quote": "a\"b\\c\n"
    });
    let sent = json!({"topic": "round", "event_id": "x", "source": "s",
                      "timestamp": "2025-06-01T10:20:30.123+02:00", "payload": payload});
    assert_eq!(app.publish(&sent).await?.status(), 202);
    app.wait_received(1).await?;
    let (status, events) = app.get_json("/events?topic=round").await?;
    assert_eq!(status, 200);
    let got = &events[0];
    assert_eq!(got["payload"], payload);
    assert_eq!(got["timestamp"], "2025-06-01T08:20:30.123Z");
    assert_eq!(
        (
            got["topic"].as_str(),
            got["event_id"].as_str(),
            got["source"].as_str()
        ),
        (Some("round"), Some("x"), Some("s"))
    );
    assert!(got["processed_at"].as_str().is_some());
    app.stop().await
}

#[tokio::test]
async fn a_bad_event_names_its_index_and_field_and_nothing_is_queued() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let mut bad = event("t", "2");
    bad["timestamp"] = json!("not a time");
    let r = app
        .publish(&json!({"events": [event("t", "1"), bad]}))
        .await?;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await?;
    assert_eq!(
        (body["index"].as_u64(), body["field"].as_str()),
        (Some(1), Some("timestamp"))
    );
    for (body, field) in [
        (json!({"events": []}), "events"),
        (
            json!({"topic": "t", "source": "s", "timestamp": "2025-01-01T00:00:00Z"}),
            "event_id",
        ),
        (
            json!([{"topic": 5, "event_id": "x", "source": "s", "timestamp": "2025-01-01T00:00:00Z"}]),
            "topic",
        ),
    ] {
        let r = app.publish(&body).await?;
        assert_eq!(r.status(), 422, "{body}");
        assert_eq!(r.json::<Value>().await?["field"], field);
    }
    // A good request afterwards is the only thing consumed.
    assert_eq!(app.publish(&event("t", "ok")).await?.status(), 202);
    let stats = app.wait_received(1).await?;
    assert_eq!(stats["received"], 1);
    app.stop().await
}

#[tokio::test]
async fn malformed_json_wrong_type_and_oversized_bodies() -> anyhow::Result<()> {
    let app = TestApp::start_with(|c| {
        c.max_body_bytes = 2_000;
        c.max_batch_events = 3;
        c.max_payload_bytes = 100;
    })
    .await?;
    let post = |ct: &'static str, body: String| {
        app.http
            .post(app.url("/publish"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = post("application/json", "{\"events\": [".into()).await?;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await?["error"], "malformed_json");
    let r = post("text/plain", event("t", "1").to_string()).await?;
    assert_eq!(r.status(), 415);
    let big = json!({"events": [event("t", &"x".repeat(3000))]}).to_string();
    let r = post("application/json", big).await?;
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await?["error"], "body_too_large");
    let four: Vec<Value> = (0..4).map(|i| event("t", &i.to_string())).collect();
    let r = app.publish(&json!({ "events": four })).await?;
    assert_eq!(
        (
            r.status().as_u16(),
            r.json::<Value>().await?["field"].clone()
        ),
        (422, json!("events"))
    );
    let mut fat = event("t", "fat");
    fat["payload"] = json!({"blob": "y".repeat(200)});
    let r = app.publish(&json!([event("t", "thin"), fat])).await?;
    let body: Value = r.json().await?;
    assert_eq!(
        (body["index"].as_u64(), body["field"].as_str()),
        (Some(1), Some("payload"))
    );
    app.stop().await
}

#[tokio::test]
async fn events_are_newest_first_filtered_and_limited() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    for i in 0..5 {
        // One request at a time, each consumed before the next: processed_at follows i.
        assert_eq!(
            app.publish(&event(
                if i % 2 == 0 { "even" } else { "odd" },
                &i.to_string()
            ))
            .await?
            .status(),
            202
        );
        app.wait_received(i + 1).await?;
    }
    let (_, all) = app.get_json("/events").await?;
    let ids: Vec<&str> = all
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids, ["4", "3", "2", "1", "0"]);
    let (_, even) = app.get_json("/events?topic=even&limit=2").await?;
    let ids: Vec<&str> = even
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids, ["4", "2"]);
    for bad in ["0", "1001", "ten", "-1"] {
        let (status, body) = app.get_json(&format!("/events?limit={bad}")).await?;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some("limit")),
            "limit={bad}"
        );
    }
    let (status, _) = app.get_json("/events?limit=1000").await?;
    assert_eq!(status, 200);
    app.stop().await
}

#[tokio::test]
async fn health_root_and_metrics() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let (status, health) = app.get_json("/health").await?;
    assert_eq!(status, 200);
    assert_eq!(
        (
            health["status"].as_str(),
            health["database"].as_str(),
            health["redis"].as_str()
        ),
        (Some("healthy"), Some("connected"), Some("connected"))
    );
    assert!(health["timestamp"].as_str().is_some());
    let (_, root) = app.get_json("/").await?;
    assert_eq!(root["service"], "sluice-aggregator");
    assert!(root["endpoints"].as_array().is_some_and(|e| !e.is_empty()));
    assert_eq!(app.publish(&event("m", "1")).await?.status(), 202);
    app.wait_received(1).await?;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for metric in [
        "sluice_aggregator_events_accepted_total 1",
        "sluice_aggregator_events_received_total 1",
        "sluice_aggregator_events_unique_total 1",
        "sluice_aggregator_commit_seconds_bucket",
        "sluice_aggregator_stream_length",
        r#"http_requests_total{method="POST",route="/publish",status="202"} 1"#,
    ] {
        assert!(text.contains(metric), "missing {metric}");
    }
    app.stop().await
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    let (status, doc) = app.get_json("/openapi.json").await?;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/",
        "/publish",
        "/events",
        "/stats",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    let publish = &doc["paths"]["/publish"]["post"]["responses"];
    for status in ["202", "400", "408", "413", "415", "422", "429", "503"] {
        assert!(
            publish[status].is_object(),
            "/publish {status} undocumented"
        );
    }
    let event = &doc["components"]["schemas"]["Event"];
    assert_eq!(event["properties"]["topic"]["maxLength"], 255);
    app.stop().await
}

#[tokio::test]
async fn numbers_are_stored_and_returned_exactly_as_sent() -> anyhow::Result<()> {
    let app = TestApp::start().await?;
    // Beyond what a 64-bit float holds: digits a Value round trip would lose.
    let body = r#"{"topic": "num", "event_id": "1", "source": "s", "timestamp": "2025-01-01T00:00:00Z",
        "payload": {"big": 123456789012345678901234567890.50, "id": 9007199254740993, "huge": 1e400}}"#;
    let r = app
        .http
        .post(app.url("/publish"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    app.wait_received(1).await?;
    let text = app
        .http
        .get(app.url("/events?topic=num"))
        .send()
        .await?
        .text()
        .await?;
    for exact in ["123456789012345678901234567890.50", "9007199254740993"] {
        assert!(text.contains(exact), "{exact} not in {text}");
    }
    // A number Postgres's numeric cannot hold is refused up front, naming where it is.
    let r = app
        .http
        .post(app.url("/publish"))
        .header("content-type", "application/json")
        .body(r#"{"topic": "num", "event_id": "2", "source": "s", "timestamp": "2025-01-01T00:00:00Z", "payload": {"n": 1e200000}}"#)
        .send()
        .await?;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await?["field"], "payload.n");
    app.stop().await
}
