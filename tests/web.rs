//! The web dashboard in a real headless Chromium (Debian's `chromium`,
//! driven by `tests/web/dashboard.mjs` through playwright-core): the page
//! loads from the service, shows the numbers of the API for the same
//! `as_of`, updates when events arrive, draws the percentile chart for one
//! symbol with labelled axes, and logs no console error; with API keys on,
//! it asks for a key and then works with it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_dashboard_shows_live_numbers_that_move() {
    browse(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_the_web_dashboard_asks_for_one_and_works() {
    browse(true).await;
}

async fn browse(with_keys: bool) {
    let mut env = TestEnv::new(if with_keys { "webkeys" } else { "web" }, 1).await;
    let key = with_keys.then(|| {
        env.enable_api_keys("30s");
        env.create_key("browser", "read,ingest")
    });
    env.start().await;
    let events: Vec<_> = (0..20)
        .map(|i| json!({"event_type": if i % 2 == 0 { "order.placed" } else { "order.filled" }, "user_id": format!("u{i}"), "properties": {"symbol": "BTCUSDT", "price": 100.0 + i as f64, "quantity": 1.0}}))
        .collect();
    env.produce(&kafka_records(&env.topics, &events, 5)).await;
    env.wait_count("SELECT count(*) FROM events", 20, Duration::from_secs(60))
        .await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web");
    let screenshot = std::env::temp_dir().join(format!("{}-dashboard.png", env.database));
    let base = format!("http://127.0.0.1:{}", env.api_port);
    let shot = screenshot.clone();
    // The browser runs on a blocking thread; the service keeps serving.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(format!("{dir}/dashboard.mjs"))
            .arg(base)
            .arg(shot)
            .args(key)
            .current_dir(dir)
            .output()
    })
    .await
    .expect("join")
    .expect("run node (tests/web: npm ci; chromium from scripts/install-test-tools.sh)");
    assert!(
        output.status.success(),
        "browser test failed:\n{}\n{}\nservice log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        env.log()
    );
    env.stop().await;
}
