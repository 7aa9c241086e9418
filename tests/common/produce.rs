//! Producing with Kafka's own Java console producer
//! (`scripts/produce-independent.sh`): a client independent of the
//! service's code, one process per topic.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::Value;

use super::{topic_of, TestEnv};

fn write_topic_file(path: &std::path::Path, lines: &[(String, String)]) {
    let mut f = std::fs::File::create(path).expect("create");
    for (key, json) in lines {
        writeln!(f, "{key}\t{json}").expect("write");
    }
}

/// Starts one console producer per topic for `events`; `tag` keeps the
/// files of several calls in one test apart.
pub fn spawn_independent_producers(
    env: &TestEnv,
    events: &[Value],
    tag: &str,
) -> Vec<std::process::Child> {
    let mut per_topic: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let topic = topic_of(&env.topics, e["event_type"].as_str().expect("type")).to_string();
        per_topic
            .entry(topic)
            .or_default()
            .push((format!("key-{}", i % 1009), e.to_string()));
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/produce-independent.sh"
    );
    per_topic
        .into_iter()
        .map(|(topic, lines)| {
            let file = std::env::temp_dir().join(format!("{}-{tag}-{topic}.tsv", env.database));
            write_topic_file(&file, &lines);
            std::process::Command::new(script)
                .arg(&topic)
                .arg(&file)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start console producer")
        })
        .collect()
}

/// Produces `events` with the console producers and waits for every one
/// to be acknowledged.
pub fn produce_independently(env: &TestEnv, events: &[Value], tag: &str) {
    for mut p in spawn_independent_producers(env, events, tag) {
        let status = p.wait().expect("producer exit");
        assert!(status.success(), "console producer failed: {status}");
    }
}
