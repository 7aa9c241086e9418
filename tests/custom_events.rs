//! Custom event types end to end, against the real services and binary:
//! the definitions API (statuses, versions, deactivation), validation on
//! the REST path (422/400 with every error's JSON pointer, dead letters)
//! and on the Kafka path (dead letters with reason `schema_violation`),
//! definition changes in force without a restart (through the API and by
//! hand in PostgreSQL, via NOTIFY), the dead-letter API (filters, pages),
//! replay after relaxing a schema (stored once, idempotent), and a fuzz
//! of malformed bodies: never a 5xx, every one accounted for.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

async fn send(
    env: &TestEnv,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = env.http.request(method, env.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(env: &TestEnv, path: &str, body: Value) -> (u16, Value) {
    send(env, reqwest::Method::POST, path, Some(body)).await
}

async fn metric(env: &TestEnv, line_prefix: &str) -> f64 {
    let text = env.prometheus().await;
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn kyc_schema() -> Value {
    json!({
        "type": "object",
        "required": ["level"],
        "properties": {
            "level": {"type": "integer", "minimum": 1, "maximum": 3},
            "country": {"type": "string", "minLength": 2, "maxLength": 2}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_api_statuses_versions_and_deactivation() {
    let mut env = TestEnv::new("cedefs", 1).await;
    env.start().await;
    let definition = json!({
        "name": "kyc.checked",
        "display_name": "KYC checked",
        "description": "a customer passed a KYC level",
        "schema": kyc_schema(),
        "is_active": true
    });
    let (status, created) = post(&env, "/api/v1/custom-events", definition.clone()).await;
    assert_eq!(status, 201, "{created}");
    assert!(created["id"]
        .as_str()
        .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()));
    assert_eq!(created["name"], "kyc.checked");
    assert_eq!(created["display_name"], "KYC checked");
    assert_eq!(created["schema"], kyc_schema());
    assert_eq!(created["version"], 1);
    assert_eq!(created["is_active"], true);
    assert!(created["created_at"].is_string() && created["updated_at"].is_string());

    let (status, body) = post(&env, "/api/v1/custom-events", definition.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].is_string());

    let long = "x".repeat(256);
    for (bad, param) in [
        (json!({"name": "a", "schema": {"type": "nope"}}), "schema"),
        (
            json!({"name": "a", "schema": {"minimum": "five"}}),
            "schema",
        ),
        (json!({"name": "a", "schema": "object"}), "schema"),
        (json!({"name": "a"}), "schema"),
        (json!({"name": "", "schema": {}}), "name"),
        (json!({"name": long, "schema": {}}), "name"),
        (json!({"name": "order.placed", "schema": {}}), "name"),
        (json!({"schema": {}}), "name"),
    ] {
        let (status, body) = post(&env, "/api/v1/custom-events", bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert_eq!(body["details"]["parameter"], param, "{body}");
    }
    let r = env
        .http
        .post(env.url("/api/v1/custom-events"))
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);

    let (status, got) = env.get_json("/api/v1/custom-events/kyc.checked").await;
    assert_eq!(status, 200);
    assert_eq!(got, created);
    let (status, _) = env.get_json("/api/v1/custom-events/no.such.type").await;
    assert_eq!(status, 404);
    let (status, _) = post(
        &env,
        "/api/v1/custom-events",
        json!({"name": "deposit.made", "schema": true}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, listed) = env.get_json("/api/v1/custom-events").await;
    assert_eq!(status, 200);
    assert_eq!(listed["count"], 2);
    let names: Vec<&str> = listed["definitions"]
        .as_array()
        .expect("definitions")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["deposit.made", "kyc.checked"]);

    let mut relaxed = kyc_schema();
    relaxed["required"] = json!([]);
    let (status, updated) = send(
        &env,
        reqwest::Method::PUT,
        "/api/v1/custom-events/kyc.checked",
        Some(json!({"schema": relaxed, "description": "relaxed"})),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["schema"], relaxed);
    assert_eq!(updated["description"], "relaxed");
    assert_eq!(updated["display_name"], "KYC checked", "kept");
    assert_eq!(updated["id"], created["id"]);
    assert_eq!(updated["created_at"], created["created_at"]);
    assert!(
        updated["updated_at"].as_str() > created["updated_at"].as_str(),
        "{updated}"
    );
    // A fetched definition can be PUT back as it is: a new version.
    let (status, again) = send(
        &env,
        reqwest::Method::PUT,
        "/api/v1/custom-events/kyc.checked",
        Some(updated.clone()),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["version"], 3);
    for (path, body, expected) in [
        ("/api/v1/custom-events/nope", json!({"schema": {}}), 404),
        (
            "/api/v1/custom-events/kyc.checked",
            json!({"schema": {"type": 5}}),
            400,
        ),
        (
            "/api/v1/custom-events/kyc.checked",
            json!({"name": "other"}),
            400,
        ),
    ] {
        let (status, body) = send(&env, reqwest::Method::PUT, path, Some(body)).await;
        assert_eq!(status, expected, "{path}: {body}");
    }

    let (status, deleted) = send(
        &env,
        reqwest::Method::DELETE,
        "/api/v1/custom-events/kyc.checked",
        None,
    )
    .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["is_active"], false);
    let (_, got) = env.get_json("/api/v1/custom-events/kyc.checked").await;
    assert_eq!(got["is_active"], false);
    assert_eq!(got["version"], 3);
    let (status, _) = send(
        &env,
        reqwest::Method::DELETE,
        "/api/v1/custom-events/nope",
        None,
    )
    .await;
    assert_eq!(status, 404);
    // The name stays taken; PUT reactivates.
    let (status, _) = post(&env, "/api/v1/custom-events", definition).await;
    assert_eq!(status, 409);
    let (status, back) = send(
        &env,
        reqwest::Method::PUT,
        "/api/v1/custom-events/kyc.checked",
        Some(json!({"is_active": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(back["is_active"], true);
    assert_eq!(back["version"], 4);
    assert_eq!(
        env.count("SELECT count(*) FROM custom_event_definition_versions")
            .await,
        5,
        "every version is kept (kyc 1..4, deposit 1)"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_violations_are_refused_with_pointers_and_become_dead_letters() {
    let mut env = TestEnv::new("cerest", 1).await;
    env.start().await;
    let (status, _) = post(
        &env,
        "/api/v1/custom-events",
        json!({"name": "kyc.checked", "schema": kyc_schema()}),
    )
    .await;
    assert_eq!(status, 201);

    // One event, two violations: 422 listing both, one dead letter.
    let (status, body) = post(
        &env,
        "/api/v1/events",
        json!({"event_type": "kyc.checked", "properties": {"level": 9, "country": "FRA"}}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["dead_letters"], 1);
    let details = body["details"].as_array().expect("details");
    let mut pointers: Vec<&str> = details
        .iter()
        .map(|d| d["pointer"].as_str().expect("pointer"))
        .collect();
    pointers.sort();
    assert_eq!(pointers, vec!["/properties/country", "/properties/level"]);
    assert!(details
        .iter()
        .all(|d| d["reason"] == "schema_violation" && d["index"] == 0));
    let row = env
        .pg()
        .await
        .query_one(
            "SELECT reason, event_type, errors, source FROM dead_letters",
            &[],
        )
        .await
        .expect("dead letter");
    assert_eq!(row.get::<_, String>(0), "schema_violation");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("kyc.checked")
    );
    let errors: Value = row.get(2);
    assert_eq!(errors.as_array().map(Vec::len), Some(2), "{errors}");
    assert!(errors
        .as_array()
        .expect("errors")
        .iter()
        .any(|e| e["pointer"] == "/properties/level" && e["message"].is_string()));
    assert_eq!(row.get::<_, String>(3), "rest");

    // A batch: index and pointer per error; all or nothing.
    let (status, body) = post(
        &env,
        "/api/v1/events",
        json!([
            {"event_type": "kyc.checked", "properties": {"level": 2}},
            {"event_type": "kyc.checked", "properties": {}},
            {"event_type": "order.placed", "properties": {"symbol": "BTCUSDT", "side": "bid", "price": "cheap"}},
        ]),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["dead_letters"], 2);
    let entries: Vec<(i64, String, String)> = body["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| {
            (
                d["index"].as_i64().expect("index"),
                d["pointer"].as_str().expect("pointer").to_string(),
                d["reason"].as_str().expect("reason").to_string(),
            )
        })
        .collect();
    assert!(
        entries.contains(&(1, "/properties".into(), "schema_violation".into())),
        "{entries:?}"
    );
    assert!(entries.contains(&(2, "/properties/side".into(), "invalid_field".into())));
    assert!(entries.contains(&(2, "/properties/price".into(), "invalid_field".into())));
    assert_eq!(
        env.count("SELECT count(*) FROM events WHERE event_type = 'kyc.checked'")
            .await,
        0
    );
    // Malformed and invalid together: 400.
    let (status, body) = post(
        &env,
        "/api/v1/events",
        json!([{"event_type": "kyc.checked", "properties": {}}, {"event_type": 7}]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["details"][1]["pointer"], "/event_type", "{body}");
    // Valid events are stored.
    let (status, body) = post(
        &env,
        "/api/v1/events",
        json!([
            {"event_type": "kyc.checked", "properties": {"level": 2, "country": "FR"}},
            {"event_type": "order.placed", "properties": {"symbol": "BTCUSDT", "side": "buy", "price": "50000.5"}},
        ]),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // A side in another case is accepted and stored in its canonical form.
    assert_eq!(
        env.count("SELECT count(*) FROM events WHERE event_type = 'order.placed' AND properties->>'side' = 'BUY'")
            .await,
        1
    );
    let failed = metric(
        &env,
        "analytics_events_failed_total{reason=\"schema_violation\"}",
    )
    .await;
    assert_eq!(failed, 3.0, "one single, one per refused batch");
    let failed = metric(
        &env,
        "analytics_events_failed_total{reason=\"invalid_field\"}",
    )
    .await;
    assert_eq!(failed, 2.0, "one built-in, one event_type: 7");

    // The dead-letter API: filters and pages.
    let total = env.count("SELECT count(*) FROM dead_letters").await;
    assert_eq!(total, 5);
    let (status, page) = env
        .get_json("/api/v1/dead-letters?reason=schema_violation&event_type=kyc.checked&source=rest")
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["count"], 3, "{page}");
    let item = &page["dead_letters"][0];
    for field in [
        "id",
        "received_at",
        "source",
        "reason",
        "detail",
        "errors",
        "payload",
    ] {
        assert!(!item[field].is_null(), "{field} in {item}");
    }
    assert_eq!(item["payload_encoding"], "utf8");
    assert!(item["topic"].is_null() && item["offset"].is_null());
    let payload: Value =
        serde_json::from_str(item["payload"].as_str().expect("text")).expect("json");
    assert_eq!(payload["event_type"], "kyc.checked");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/dead-letters?limit=2&cursor={c}"),
            None => "/api/v1/dead-letters?limit=2".to_string(),
        };
        let (status, page) = env.get_json(&path).await;
        assert_eq!(status, 200);
        for d in page["dead_letters"].as_array().expect("items") {
            seen.push(d["id"].as_i64().expect("id"));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    let (_, offset_page) = env.get_json("/api/v1/dead-letters?limit=2&offset=4").await;
    assert_eq!(offset_page["count"], 1);
    assert_eq!(offset_page["dead_letters"][0]["id"], seen[4]);
    let (_, none) = env
        .get_json(
            "/api/v1/dead-letters?start_time=2000-01-01T00:00:00Z&end_time=2000-01-02T00:00:00Z",
        )
        .await;
    assert_eq!(none["count"], 0);
    for bad in [
        "reason=nope",
        "source=ftp",
        "limit=0",
        "limit=100001",
        "cursor=x",
        "offset=-1",
        "start_time=yesterday",
    ] {
        let (status, body) = env.get_json(&format!("/api/v1/dead-letters?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, one) = env
        .get_json(&format!("/api/v1/dead-letters/{}", seen[0]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["id"], seen[0]);
    let (status, _) = env.get_json("/api/v1/dead-letters/999999").await;
    assert_eq!(status, 404);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_path_follows_definitions_without_restart_and_replay_stores_once() {
    let mut env = TestEnv::new("cekafka", 2).await;
    env.start().await;
    let topic = env.topics[0].clone();
    let kyc = |i: usize, properties: Value| {
        (
            topic.clone(),
            format!("k{i}"),
            json!({"event_type": "kyc.checked", "user_id": format!("u{i}"), "properties": properties}).to_string(),
        )
    };
    let stored = "SELECT count(*) FROM events WHERE event_type = 'kyc.checked'";
    let dead =
        "SELECT count(*) FROM dead_letters WHERE reason = 'schema_violation' AND source = 'kafka'";

    // No definition yet: everything of the type is stored.
    let before: Vec<_> = (0..10)
        .map(|i| {
            kyc(
                i,
                if i % 2 == 0 {
                    json!({"level": 1})
                } else {
                    json!({"level": "high"})
                },
            )
        })
        .collect();
    env.produce(&before).await;
    env.wait_count(stored, 10, Duration::from_secs(60)).await;

    // A definition created through the API is in force on the Kafka path
    // once the API has answered: no restart.
    let (status, _) = post(
        &env,
        "/api/v1/custom-events",
        json!({"name": "kyc.checked", "schema": kyc_schema()}),
    )
    .await;
    assert_eq!(status, 201);
    let mut after: Vec<_> = (10..30)
        .map(|i| {
            kyc(
                i,
                match i % 4 {
                    0 | 1 => json!({"level": 2, "country": "DE"}),
                    2 => json!({"level": "high"}),
                    _ => json!({"country": "Germany"}),
                },
            )
        })
        .collect();
    after.push((topic.clone(), "bad".into(), "{not json".into()));
    env.produce(&after).await;
    env.wait_count(stored, 20, Duration::from_secs(60)).await;
    env.wait_count(dead, 10, Duration::from_secs(60)).await;
    env.wait_count(
        "SELECT count(*) FROM dead_letters WHERE reason = 'malformed_json'",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        env.count(
            "SELECT count(*) FROM dead_letters WHERE source = 'kafka' AND kafka_topic IS NOT NULL \
             AND kafka_offset IS NOT NULL AND event_type = 'kyc.checked' \
             AND errors @> '[{\"pointer\": \"/properties/level\"}]'"
        )
        .await,
        5,
        "level \"high\" is named by its pointer"
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM dead_letters WHERE errors @> '[{\"pointer\": \"/properties\"}]'"
        )
        .await,
        5,
        "a missing required property is reported at its object"
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM dead_letters WHERE errors @> '[{\"pointer\": \"/properties/country\"}]'"
        )
        .await,
        5
    );
    assert_eq!(
        metric(&env, "analytics_schema_compilations_total").await,
        1.0,
        "compiled once, not per event or per refresh"
    );

    // A change made by hand in PostgreSQL reaches the running dataflow
    // through NOTIFY: country becomes required.
    env.pg()
        .await
        .execute(
            "UPDATE custom_event_definitions SET version = version + 1,
             schema = jsonb_set(schema, '{required}', '[\"level\", \"country\"]')
             WHERE name = 'kyc.checked'",
            &[],
        )
        .await
        .expect("update by hand");
    wait_for(
        "the new version to be compiled",
        Duration::from_secs(30),
        || async {
            (metric(&env, "analytics_schema_compilations_total").await >= 2.0).then_some(())
        },
    )
    .await;
    env.produce(&[
        kyc(30, json!({"level": 3})),
        kyc(31, json!({"level": 3, "country": "NL"})),
    ])
    .await;
    env.wait_count(dead, 11, Duration::from_secs(60)).await;
    env.wait_count(stored, 21, Duration::from_secs(60)).await;

    // The dead-letter API shows the Kafka position.
    let (status, page) = env
        .get_json("/api/v1/dead-letters?source=kafka&reason=schema_violation&limit=100")
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["count"], 11);
    let item = &page["dead_letters"][0];
    assert_eq!(item["topic"], topic.as_str());
    assert!(
        item["partition"].is_i64() && item["offset"].is_i64(),
        "{item}"
    );
    assert_eq!(item["event_type"], "kyc.checked");

    // Relax the schema (PUT), then replay one dead letter: stored once.
    let (status, _) = send(
        &env,
        reqwest::Method::PUT,
        "/api/v1/custom-events/kyc.checked",
        Some(json!({"schema": {"type": "object", "properties": {"level": {"type": ["integer", "string"]}}}})),
    )
    .await;
    assert_eq!(status, 200);
    let high = page["dead_letters"]
        .as_array()
        .expect("items")
        .iter()
        .find(|d| {
            d["payload"]
                .as_str()
                .is_some_and(|p| p.contains("\"high\""))
        })
        .expect("a level=high dead letter");
    let id = high["id"].as_i64().expect("id");
    let (status, first) = post(
        &env,
        &format!("/api/v1/dead-letters/{id}/replay"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["replayed"], true);
    assert_eq!(first["already"], false);
    let event_id = first["event_id"].as_str().expect("event id").to_string();
    let by_id = format!("SELECT count(*) FROM events WHERE id = '{event_id}'");
    assert_eq!(env.count(&by_id).await, 1);
    let (status, second) = post(
        &env,
        &format!("/api/v1/dead-letters/{id}/replay"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["replayed"], true);
    assert_eq!(second["already"], true);
    assert_eq!(second["event_id"], first["event_id"]);
    assert_eq!(env.count(&by_id).await, 1, "a second replay stores nothing");
    assert_eq!(env.count(stored).await, 22);
    let (_, marked) = env.get_json(&format!("/api/v1/dead-letters/{id}")).await;
    assert!(marked["replayed_at"].is_string(), "{marked}");
    assert_eq!(marked["replayed_event_id"], event_id.as_str());
    // Still invalid: 422 with the errors; unknown: 404.
    let malformed: i64 = env
        .pg()
        .await
        .query_one(
            "SELECT id FROM dead_letters WHERE reason = 'malformed_json'",
            &[],
        )
        .await
        .expect("malformed")
        .get(0);
    let (status, body) = post(
        &env,
        &format!("/api/v1/dead-letters/{malformed}/replay"),
        json!({}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["details"][0]["reason"], "malformed_json");
    let (status, _) = post(&env, "/api/v1/dead-letters/999999/replay", json!({})).await;
    assert_eq!(status, 404);
    // A replayed event counts in the live stats like any REST event.
    let stats = env.get_json("/api/v1/events/stats").await.1;
    assert!(
        stats["by_type"]["kyc.checked"].as_i64().is_some(),
        "{stats}"
    );

    // Deactivated: the type is no longer validated, still without restart.
    let (status, _) = send(
        &env,
        reqwest::Method::DELETE,
        "/api/v1/custom-events/kyc.checked",
        None,
    )
    .await;
    assert_eq!(status, 200);
    env.produce(&[kyc(40, json!({"level": {"deep": true}}))])
        .await;
    env.wait_count(stored, 23, Duration::from_secs(60)).await;
    assert_eq!(env.count(dead).await, 11);
    env.stop().await;
}

/// A malformed body of one of several kinds.
fn malformed_body(i: usize, rng: &mut rand::rngs::StdRng, limit: usize) -> Vec<u8> {
    use rand::Rng;
    let valid =
        json!({"event_type": "note.taken", "properties": {"text": "hello", "n": i}}).to_string();
    match i % 16 {
        0 => (0..rng.random_range(1..200)).map(|_| rng.random::<u8>()).collect(),
        1 => {
            let mut b = valid.clone().into_bytes();
            let at = rng.random_range(0..b.len());
            b.insert(at, 0xff);
            b
        }
        2 => {
            let cut = rng.random_range(1..valid.len());
            valid.as_bytes()[..cut].to_vec()
        }
        3 => "[".repeat(10_000).into_bytes(),
        4 => format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000)).into_bytes(),
        5 => format!(
            r#"{{"event_type":"note.taken","properties":{}{}}}"#,
            "{\"a\":".repeat(300),
            "}".repeat(300)
        )
        .into_bytes(),
        6 => {
            let wrong = [
                json!(7), json!(null), json!([]), json!({}), json!(true), json!(""), json!("   "),
            ];
            json!({"event_type": wrong[i % wrong.len()]}).to_string().into_bytes()
        }
        7 => {
            let cases = [
                json!({"event_type": "note.taken", "properties": [1, 2]}),
                json!({"event_type": "note.taken", "properties": "text"}),
                json!({"event_type": "note.taken", "id": "not-a-uuid"}),
                json!({"event_type": "note.taken", "timestamp": 12345}),
                json!({"event_type": "note.taken", "timestamp": "1999-01-01T00:00:00Z"}),
                json!({"event_type": "note.taken", "user_id": {"x": 1}}),
                json!({"event_type": "note.taken", "session_id": [1]}),
            ];
            cases[i % cases.len()].to_string().into_bytes()
        }
        8 => {
            let props = [
                json!({"text": 5}),
                json!({}),
                json!({"text": "x".repeat(11)}),
                json!({"text": ["a"]}),
            ];
            json!({"event_type": "note.taken", "properties": props[i % props.len()]})
                .to_string()
                .into_bytes()
        }
        9 => json!({"event_type": "order.filled", "properties": {"side": "sideways", "price": [], "order_id": 5}})
            .to_string()
            .into_bytes(),
        10 => [
            r#"{"event_type":"note.taken","properties":{"text":"\u0000"}}"#,
            r#"{"event_type":"note.taken","properties":{"text":"\ud800"}}"#,
            r#"{"event_type":"note.taken","properties":{"n":1e999999}}"#,
            r#"{"event_type":"a\u0000b"}"#,
        ][i % 4]
            .as_bytes()
            .to_vec(),
        11 => {
            // Near the body limit: a huge string where it does not belong.
            if i % 256 == 11 {
                let huge = "y".repeat(limit - 200);
                if i % 512 == 11 {
                    json!({"event_type": huge}).to_string().into_bytes()
                } else {
                    json!({"event_type": "note.taken", "properties": {"text": huge}}).to_string().into_bytes()
                }
            } else {
                b"   ".to_vec()
            }
        }
        12 => {
            // Over the body limit now and then.
            if i % 128 == 12 {
                vec![b' '; limit + 10]
            } else {
                b"".to_vec()
            }
        }
        13 => json!([
            {"event_type": "note.taken", "properties": {"text": "ok"}},
            {"event_type": "note.taken", "properties": {"text": 1}},
            {"no_type": true},
        ])
        .to_string()
        .into_bytes(),
        14 => b"[]".to_vec(),
        _ => {
            let mut b = valid.into_bytes();
            for _ in 0..3 {
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
            }
            // Flipped bytes may leave it valid; force a structural error.
            b.push(b',');
            b
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_never_get_a_5xx_and_are_all_accounted_for() {
    use rand::SeedableRng;
    let mut env = TestEnv::new("cefuzz", 1).await;
    env.start().await;
    let (status, _) = post(
        &env,
        "/api/v1/custom-events",
        json!({"name": "note.taken", "schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "maxLength": 10}}}}),
    )
    .await;
    assert_eq!(status, 201);
    let limit = 1024 * 1024;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let bodies: Vec<Vec<u8>> = (0..3_000)
        .map(|i| malformed_body(i, &mut rng, limit))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let url = env.url("/api/v1/events");
    let results: Vec<(usize, u16, Value)> = futures::stream::iter(bodies.iter().enumerate())
        .map(|(i, body)| {
            let http = http.clone();
            let url = url.clone();
            let body = body.clone();
            async move {
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("body {i}: no answer: {e}"));
                let status = r.status().as_u16();
                (i, status, r.json().await.unwrap_or(Value::Null))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut dead_letters = 0i64;
    for (i, status, body) in &results {
        assert!(
            (400..500).contains(status),
            "body {i} ({} bytes, {:?}…) got {status}: {body}",
            bodies[*i].len(),
            String::from_utf8_lossy(&bodies[*i][..bodies[*i].len().min(80)])
        );
        *by_status.entry(*status).or_default() += 1;
        if let Some(n) = body["dead_letters"].as_i64() {
            assert!(n >= 1, "{body}");
            dead_letters += n;
        } else {
            // Refused before validation: too large, or an empty batch.
            assert!(
                *status == 413 || body["details"]["parameter"] == "body",
                "body {i}: {status} {body}"
            );
        }
    }
    assert_eq!(results.len(), bodies.len());
    println!("fuzz statuses {by_status:?}, dead letters {dead_letters}");
    assert!(
        by_status.get(&422).copied().unwrap_or(0) > 100,
        "{by_status:?}"
    );
    assert!(
        by_status.get(&400).copied().unwrap_or(0) > 1_000,
        "{by_status:?}"
    );
    assert!(
        by_status.get(&413).copied().unwrap_or(0) > 0,
        "{by_status:?}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM dead_letters WHERE source = 'rest'")
            .await,
        dead_letters,
        "one dead letter per refused item that reached parsing"
    );
    let counted = metric(&env, "analytics_dead_letters_total{source=\"rest\"}").await;
    assert_eq!(counted as i64, dead_letters);
    assert_eq!(env.count("SELECT count(*) FROM events").await, 0);
    // Still up and serving.
    assert!(matches!(
        env.child.as_mut().map(|c| c.try_wait()),
        Some(Ok(None))
    ));
    let (status, _) = env.get_json("/health").await;
    assert_eq!(status, 200);
    let (status, body) = post(
        &env,
        "/api/v1/events",
        json!({"event_type": "note.taken", "properties": {"text": "fine"}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    env.stop().await;
}
