//! Secured links against the real services: the private CA, PostgreSQL's
//! TLS-only role and Kafka's SSL and SASL_SSL listeners that
//! `scripts/services.sh` starts (`scripts/services.sh tls-env`).

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;

/// The fixtures' paths, users and ports.
fn tls_env() -> HashMap<String, String> {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
        .arg("tls-env")
        .output()
        .expect("scripts/services.sh tls-env");
    assert!(out.status.success(), "tls-env: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// Rewrites the test's config: PostgreSQL as the TLS-only role over
/// `verify-full` at `pg_host`, Kafka over SASL_SSL with SCRAM-SHA-512, both
/// passwords from files holding `pg_password` and `scram_password`.
fn secure(env: &TestEnv, tls: &HashMap<String, String>, pg_host: &str, scram_password: &str) {
    let dir = env.config_path.parent().expect("config dir");
    let pg_secret = dir.join("pg-password");
    let kafka_secret = dir.join("kafka-password");
    std::fs::write(&pg_secret, format!("{}\n", tls["PG_TLS_PASSWORD"])).expect("pg secret");
    std::fs::write(&kafka_secret, scram_password).expect("kafka secret");
    let yaml = std::fs::read_to_string(&env.config_path).expect("config");
    let replace = |yaml: String, from: &str, to: String| {
        assert!(yaml.contains(from), "{from} not in {yaml}");
        yaml.replacen(from, &to, 1)
    };
    let yaml = replace(
        yaml,
        "database:\n  host: \"127.0.0.1\"\n",
        format!(
            "database:\n  host: \"{pg_host}\"\n  ssl_mode: \"verify-full\"\n  ssl_root_cert: \"{}\"\n",
            tls["TLS_CA_FILE"]
        ),
    );
    let yaml = replace(
        yaml,
        "  user: \"analytics_user\"\n  password: \"change_me\"\n",
        format!(
            "  user: \"{}\"\n  password_file: \"{}\"\n",
            tls["PG_TLS_USER"],
            pg_secret.display()
        ),
    );
    let yaml = replace(
        yaml,
        &format!("  brokers: [\"{BROKERS}\"]\n"),
        format!(
            "  brokers: [\"{}\"]\n  security:\n    protocol: \"sasl_ssl\"\n    ca_file: \"{}\"\n    sasl_mechanism: \"SCRAM-SHA-512\"\n    username: \"{}\"\n    password_file: \"{}\"\n",
            tls["KAFKA_SASL_SSL_BROKERS"],
            tls["TLS_CA_FILE"],
            tls["KAFKA_SCRAM_USER"],
            kafka_secret.display()
        ),
    );
    std::fs::write(&env.config_path, yaml).expect("write config");
}

/// Runs `analytics ARGS` on the test's config until it exits (at most
/// `timeout`); its status and whole output.
fn run_to_exit(
    env: &TestEnv,
    args: &[&str],
    timeout: Duration,
) -> (std::process::ExitStatus, String) {
    let log = env
        .config_path
        .with_file_name(format!("{}.log", args.join("-")));
    let file = std::fs::File::create(&log).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_analytics"))
        .arg("--config")
        .arg(&env.config_path)
        .args(args)
        .stdout(Stdio::from(file.try_clone().expect("log")))
        .stderr(Stdio::from(file))
        .env("RUST_LOG", "info")
        .spawn()
        .expect("start analytics");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "analytics {args:?} still running after {timeout:?}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, std::fs::read_to_string(&log).expect("log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_flow_exactly_once_over_sasl_ssl_into_postgres_over_verify_full() {
    let tls = tls_env();
    let mut env = TestEnv::new("tls", 2).await;
    secure(
        &env,
        &tls,
        &tls["PG_TLS_HOST"],
        &tls["KAFKA_SCRAM_PASSWORD"],
    );
    env.start().await;
    let events = trading_events(2_000, 7, Utc::now(), 300);
    let records = kafka_records(&env.topics, &events, 50);
    // Produced over the plaintext listener: only the service's links are
    // under test.
    env.produce(&records).await;
    env.wait_count(
        "SELECT count(*) FROM events",
        events.len() as i64,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        env.count("SELECT count(DISTINCT id) FROM events").await,
        events.len() as i64
    );
    // Every connection of the service is the TLS-only role, over TLS.
    let plain = env
        .count(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = current_database() AND a.application_name = 'analytics'
               AND (NOT s.ssl OR a.usename <> 'analytics_tls')",
        )
        .await;
    let secured = env
        .count(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = current_database() AND a.usename = 'analytics_tls' AND s.ssl",
        )
        .await;
    assert_eq!(plain, 0, "a connection of the service without TLS");
    assert!(secured > 0, "no TLS connection of the service seen");
    // A restart resumes from the offsets stored over TLS: nothing twice.
    env.stop().await;
    env.start().await;
    let more = trading_events(500, 8, Utc::now(), 60);
    env.produce(&kafka_records(&env.topics, &more, 50)).await;
    env.wait_count(
        "SELECT count(*) FROM events",
        (events.len() + more.len()) as i64,
        Duration::from_secs(120),
    )
    .await;
    env.stop().await;
    let log = env.log();
    for secret in [&tls["PG_TLS_PASSWORD"], &tls["KAFKA_SCRAM_PASSWORD"]] {
        assert!(!log.contains(secret.as_str()), "a secret in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_against_another_host_name_fails_at_start_up_naming_the_setting() {
    let tls = tls_env();
    let env = TestEnv::new("tlshost", 1).await;
    // The same server, reached by an address its certificate does not name.
    secure(
        &env,
        &tls,
        &tls["PG_TLS_WRONG_HOST"],
        &tls["KAFKA_SCRAM_PASSWORD"],
    );
    let started = Instant::now();
    let (status, out) = run_to_exit(&env, &["migrate"], Duration::from_secs(60));
    assert!(!status.success(), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up only after {:?}: a certificate error is not worth retrying",
        started.elapsed()
    );
    assert!(out.contains("database.ssl_mode \"verify-full\""), "{out}");
    assert!(out.contains("certificate verify failed"), "{out}");
    assert!(!out.contains(&tls["PG_TLS_PASSWORD"]), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_scram_password_fails_at_start_up_without_a_retry_storm() {
    let tls = tls_env();
    let env = TestEnv::new("tlsscram", 1).await;
    let wrong = "not-the-scram-secret";
    secure(&env, &tls, &tls["PG_TLS_HOST"], wrong);
    let started = Instant::now();
    let (status, out) = run_to_exit(&env, &["run"], Duration::from_secs(90));
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("kafka.security.username \"analytics\""),
        "the error names the setting: {out}"
    );
    assert!(!out.contains(wrong), "the password in the output: {out}");
    let attempts = out
        .lines()
        .filter(|l| l.contains("Authentication failed") || l.contains("SASL authentication error"))
        .count();
    assert!(
        attempts <= 10,
        "{attempts} authentication attempts in {:?}: {out}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_configured_certificate_and_refuses_plain_http() {
    let tls = tls_env();
    let mut env = TestEnv::new("https", 1).await;
    let yaml = std::fs::read_to_string(&env.config_path).expect("config");
    let yaml = yaml.replacen(
        "server:\n",
        &format!(
            "server:\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n",
            tls["TLS_SERVER_CERT"], tls["TLS_SERVER_KEY"]
        ),
        1,
    );
    std::fs::write(&env.config_path, yaml).expect("write config");
    env.spawn();
    let ca = std::fs::read(&tls["TLS_CA_FILE"]).expect("ca");
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    // The certificate names localhost: verified against our CA and name.
    let url = format!("https://localhost:{}/livez", env.api_port);
    wait_for("HTTPS answers", Duration::from_secs(90), || async {
        https
            .get(&url)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
    let (status, body) = {
        let r = https
            .get(format!(
                "https://localhost:{}/api/v1/events/stats",
                env.api_port
            ))
            .send()
            .await
            .expect("stats over https");
        (r.status(), r.text().await.expect("body"))
    };
    assert_eq!(status, 200, "{body}");
    // Plain HTTP on the same port gets no HTTP answer.
    let plain = env
        .http
        .get(format!("http://127.0.0.1:{}/livez", env.api_port))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // A client that does not trust the CA refuses the certificate.
    let stranger = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    assert!(stranger.get(&url).send().await.is_err());
    // The health port stays plain HTTP (for probes; see README).
    let health = env
        .http
        .get(format!("http://127.0.0.1:{}/livez", env.health_port))
        .send()
        .await
        .expect("health over http");
    assert!(health.status().is_success());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ssl_mode_means_what_it_means_in_libpq() {
    let tls = tls_env();
    let env = TestEnv::new("tlsmodes", 1).await;
    // 127.0.0.2 reaches the same server, whose certificate does not name it.
    secure(
        &env,
        &tls,
        &tls["PG_TLS_WRONG_HOST"],
        &tls["KAFKA_SCRAM_PASSWORD"],
    );
    let base = std::fs::read_to_string(&env.config_path).expect("config");
    let with = |mode: &str, root: bool| {
        let mut yaml = base.replacen(
            "ssl_mode: \"verify-full\"",
            &format!("ssl_mode: \"{mode}\""),
            1,
        );
        if !root {
            yaml = yaml.replacen(
                &format!("  ssl_root_cert: \"{}\"\n", tls["TLS_CA_FILE"]),
                "",
                1,
            );
        }
        std::fs::write(&env.config_path, yaml).expect("write config");
        run_to_exit(&env, &["migrate"], Duration::from_secs(60))
    };
    // verify-ca checks the chain, not the name.
    let (status, out) = with("verify-ca", true);
    assert!(status.success(), "verify-ca: {out}");
    // require without a root certificate verifies nothing; prefer takes TLS.
    for mode in ["require", "prefer"] {
        let (status, out) = with(mode, false);
        assert!(status.success(), "{mode}: {out}");
    }
    // verify-ca with only the system's roots: our private CA is not one.
    let (status, out) = with("verify-ca", false);
    assert!(!status.success(), "verify-ca, system roots: {out}");
    assert!(out.contains("certificate verify failed"), "{out}");
    // disable: the TLS-only role is refused by pg_hba.conf, at once.
    let (status, out) = with("disable", true);
    assert!(!status.success(), "disable: {out}");
    assert!(
        out.contains("refused the credentials of database.user \"analytics_tls\""),
        "{out}"
    );
}
