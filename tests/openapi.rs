//! The OpenAPI document against the running service: schemathesis (from
//! PyPI, installed by `scripts/install-test-tools.sh`) generates requests
//! for every operation of `GET /api/v1/openapi.json` and checks that none
//! answers 5xx and that every answer conforms to the document (status
//! code, content type, headers, body schema). Once with API keys off, once
//! on with an admin key. `make test` runs this file with `--nocapture`, so
//! the number of generated cases is in its output.
//!
//! `/api/v1/stream` is left out of the fuzzing: it never ends (the browser
//! test and tests/dashboard.rs read it).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_error_and_no_drift_without_keys() {
    fuzz(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_error_and_no_drift_with_keys() {
    fuzz(true).await;
}

async fn fuzz(with_keys: bool) {
    let mut env = TestEnv::new(if with_keys { "oakeys" } else { "oa" }, 1).await;
    let key = with_keys.then(|| {
        env.enable_api_keys("30s");
        env.create_key("fuzz", "admin")
    });
    env.start().await;

    // Something to read: trading events, a dead letter, a definition.
    let events = trading_events(300, 7, chrono::Utc::now(), 120);
    env.produce(&kafka_records(&env.topics, &events, 7)).await;
    env.wait_count("SELECT count(*) FROM events", 300, Duration::from_secs(60))
        .await;
    let http = reqwest::Client::new();
    let with_key = |rb: reqwest::RequestBuilder| match &key {
        Some(k) => rb.header("X-API-Key", k),
        None => rb,
    };
    let refused = with_key(http.post(env.url("/api/v1/events")))
        .json(&json!({"event_type": "order.placed", "properties": {"price": "cheap"}}))
        .send()
        .await
        .expect("post");
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let created = with_key(http.post(env.url("/api/v1/custom-events")))
        .json(&json!({"name": "deposit", "schema": {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}}}))
        .send()
        .await
        .expect("post");
    assert_eq!(created.status().as_u16(), 201);

    // The document and the page are served without a key.
    let doc: serde_json::Value = http
        .get(env.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/events",
        "/api/v1/events/stats",
        "/api/v1/metrics",
        "/api/v1/dashboard/metrics",
        "/api/v1/custom-events/{name}",
        "/api/v1/dead-letters/{id}/replay",
        "/api/v1/trading/market/{symbol}",
        "/health",
    ] {
        assert!(paths.contains_key(path), "{path} documented");
    }
    let page = http.get(env.url("/api/v1/docs")).send().await.expect("get");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html")));
    assert!(page.text().await.expect("text").contains("openapi.json"));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/schemathesis.sh");
    let base = format!("http://127.0.0.1:{}", env.api_port);
    let output = tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(script);
        command.arg(base).args(key.as_deref());
        command.output()
    })
    .await
    .expect("join")
    .expect("run scripts/schemathesis.sh (installed by scripts/install-test-tools.sh)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("schemathesis: "))
        .unwrap_or_default()
        .to_string();
    println!("keys {}: {summary}", if with_keys { "on" } else { "off" });
    assert!(
        output.status.success(),
        "schemathesis failed:\n{stdout}\n{}\nservice log (tail):\n{}",
        String::from_utf8_lossy(&output.stderr),
        tail(&env.log(), 60)
    );
    assert!(summary_field(&summary, "operations") >= 20, "{summary}");
    assert!(summary_field(&summary, "cases") >= 500, "{summary}");
    assert_eq!(summary_field(&summary, "failures"), 0, "{summary}");
    env.stop().await;
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
