//! The gate through a broker outage: SIGKILL of the test broker (started by `scripts/kafka.sh
//! start`; `scripts/test.sh` does it) while a delivery is half read, then a restart on its data.
//! `/readyz` must go 503 while the broker is down and 200 once it is back, and the delivery must
//! not be closed by its timeout during the outage: it gets one verdict on all its records.
//!
//! This binary holds one test on purpose: cargo runs test binaries one after another, so no other
//! test sees the shared broker go away.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    env,
    kafka::{gate_command, produce, test_config},
    process::{http_get, reserve_port, wait_for, KillOnDrop},
};
use labelgate::{service, wire::VerdictMessage};
use rand::{RngExt, SeedableRng};
use serde_json::json;

const DIM: usize = 16;

/// A record of `batch` whose features sit around its class's mean, so the window can learn them.
fn record(rng: &mut rand_chacha::ChaCha8Rng, batch: &str, i: usize) -> (String, String) {
    let class = i % 4;
    let features: Vec<f32> = (0..DIM).map(|d| if d % 4 == class { 2.0 } else { 0.0 } + rng.random::<f32>() - 0.5).collect();
    let payload = json!({"sample_id": format!("{batch}-{i}"), "batch_id": batch, "vendor_id": "steady", "label": class.to_string(), "features": features});
    (batch.to_string(), payload.to_string())
}

fn broker_pid(run_dir: &str) -> String {
    std::fs::read_to_string(format!("{run_dir}/pid")).expect("the test broker's pid file (scripts/kafka.sh start)").trim().to_string()
}

fn readyz(port: u16) -> Option<u16> {
    http_get(port, "/readyz").map(|r| r.0)
}

#[test]
fn readiness_follows_the_broker_and_an_outage_never_splits_a_delivery() {
    let port = env("KAFKA_PORT");
    let run_dir = std::env::var("KAFKA_RUN_DIR").unwrap_or_else(|_| format!("/tmp/labelgate-kafka-{port}"));
    let config = test_config("outage", DIM);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(service::ensure_topics(&config, 1)).unwrap();
    let http_port = reserve_port();
    let _gate = KillOnDrop(
        gate_command(&config)
            .env("LABELGATE__GATE__FEATURE_DIM", DIM.to_string())
            .env("LABELGATE__GATE__MIN_WINDOW_RECORDS", "1000")
            .env("LABELGATE__GATE__DELIVERY_TIMEOUT_SECS", "8")
            .env("LABELGATE__METRICS__LISTEN", format!("127.0.0.1:{http_port}"))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_for("/readyz 200", Duration::from_secs(60), || readyz(http_port) == Some(200));

    // The first half of a delivery, without its batch_end.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let batch = format!("{}-d0", config.kafka.input_topic);
    let records: Vec<(String, String)> = (0..1200).map(|i| record(&mut rng, &batch, i)).collect();
    produce(&config, &records[..600]);
    std::thread::sleep(Duration::from_secs(2));

    let pid = broker_pid(&run_dir);
    assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let down = Instant::now();
    wait_for("/readyz 503 while the broker is down", Duration::from_secs(60), || readyz(http_port) == Some(503));
    eprintln!("readyz 503 after {:.1} s", down.elapsed().as_secs_f64());
    assert_eq!(http_get(http_port, "/healthz").map(|r| r.0), Some(200), "alive while not ready");
    // Down for longer than the delivery timeout.
    std::thread::sleep(Duration::from_secs(12));
    let restart = Command::new("scripts/kafka.sh").arg("restart").env("KAFKA_PORT", &port).env("KAFKA_RUN_DIR", &run_dir).status().unwrap();
    assert!(restart.success(), "scripts/kafka.sh restart");
    let up = Instant::now();
    wait_for("/readyz 200 once the broker is back", Duration::from_secs(90), || readyz(http_port) == Some(200));
    eprintln!("readyz 200 after {:.1} s from the broker's restart (down {:.1} s)", up.elapsed().as_secs_f64(), down.elapsed().as_secs_f64());

    // The rest of the delivery: it was never closed by its timeout while the broker was away.
    let mut rest = records[600..].to_vec();
    rest.push((batch.clone(), json!({"type": "batch_end", "batch_id": batch, "vendor_id": "steady", "count": 1200}).to_string()));
    produce(&config, &rest);
    let read_verdicts = || {
        let mut verdicts: Vec<VerdictMessage> = Vec::new();
        service::read_topic(&config, &config.kafka.verdicts_topic, |_, v| verdicts.push(serde_json::from_slice(v).unwrap())).map(|_| verdicts)
    };
    wait_for("the delivery's verdict", Duration::from_secs(120), || read_verdicts().is_ok_and(|v| !v.is_empty()));
    // A second verdict, had the delivery been split, would follow within the next window.
    std::thread::sleep(Duration::from_secs(3));
    let verdicts = read_verdicts().unwrap();
    assert_eq!(verdicts.len(), 1, "one verdict: {verdicts:?}");
    assert_eq!((verdicts[0].records, verdicts[0].closed_by.as_str()), (1200, "batch_end"), "the whole delivery, closed by its batch_end");
    let mut dead_letters = 0;
    service::read_topic(&config, &config.kafka.dlq_topic, |_, _| dead_letters += 1).unwrap();
    assert_eq!(dead_letters, 0, "no record dead-lettered (no late_record)");
}
