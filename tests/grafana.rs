//! The provisioned Grafana dashboard (`deploy/grafana/`) against a running
//! service: every metric name its PromQL expressions use must be on
//! `/metrics` (checked by `scripts/check-grafana.py`, which also checks
//! that each panel has a title, the provisioned datasource and a query),
//! and every expression must evaluate without error on a real Prometheus
//! scraping the service (`scripts/eval-grafana-promql.sh`).

mod common;

use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_grafana_dashboard_is_exported() {
    let mut env = TestEnv::new("grafana", 2).await;
    env.start().await;
    // One event through Kafka and one API request, as any running service
    // has seen: the per-route HTTP series exist from the first request.
    let events = trading_events(10, 5, Utc::now(), 10);
    env.produce(&kafka_records(&env.topics, &events, events.len()))
        .await;
    env.wait_count("SELECT count(*) FROM events", 10, Duration::from_secs(60))
        .await;
    let (status, _) = env.get_json("/api/v1/dashboard/metrics").await;
    assert_eq!(status, 200);
    // RSS comes from the process collector (Linux).
    assert!(env
        .prometheus()
        .await
        .contains("process_resident_memory_bytes"));

    let root = env!("CARGO_MANIFEST_DIR");
    let (ok, report) = run_report(
        Command::new("python3")
            .arg(format!("{root}/scripts/check-grafana.py"))
            .arg(format!("{root}/deploy/grafana/dashboards/analytics.json"))
            .arg(format!("http://127.0.0.1:{}/metrics", env.metrics_port)),
    );
    println!("{report}");
    assert!(ok, "{report}");
    assert!(report.contains("all present"), "{report}");

    // Every expression evaluated by a real Prometheus scraping the service
    // (built by scripts/install-prometheus.sh, run by install-test-tools.sh).
    let (ok, report) = run_report(
        Command::new("bash")
            .arg(format!("{root}/scripts/eval-grafana-promql.sh"))
            .arg(format!("{root}/deploy/grafana/dashboards/analytics.json"))
            .arg(format!("127.0.0.1:{}", env.metrics_port)),
    );
    println!("{report}");
    assert!(ok, "{report}");
    let summary = report
        .lines()
        .find(|l| l.starts_with("promql: "))
        .unwrap_or_default();
    let expressions = summary_field(summary, "expressions");
    assert!(expressions >= 20, "{summary}");
    assert_eq!(
        summary_field(summary, "evaluated"),
        expressions,
        "{summary}"
    );
    assert_eq!(summary_field(summary, "errors"), 0, "{summary}");
    env.stop().await;
}
