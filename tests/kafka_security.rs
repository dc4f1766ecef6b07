//! The gate on a secured broker: SASL_SSL with SCRAM-SHA-512 users and the StandardAuthorizer
//! (`scripts/kafka.sh start-secure`, which `scripts/test.sh` runs), each principal holding only
//! the ACLs `scripts/kafka-acls.sh` grants. Topics are created by the admin: the gate's principal
//! has no CREATE.

mod common;

use std::{
    collections::BTreeSet,
    io::Read,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use common::{
    env,
    kafka::{gate_command, test_config},
    process::{http_get, reserve_port, scrape, KillOnDrop},
};
use labelgate::{
    config::Config,
    data::mnist,
    service::{self, client_config},
    wire::VerdictMessage,
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    producer::{BaseProducer, BaseRecord, Producer},
    types::RDKafkaErrorCode,
    Offset, TopicPartitionList,
};
use serde_json::json;

/// `base` as `user` on the secured broker: what an operator puts in `kafka.client` and
/// `kafka.sasl_password`.
fn as_user(base: &Config, user: &str, password: &str) -> Config {
    let mut c = base.clone();
    c.kafka.bootstrap_servers = env("LABELGATE_KAFKA_SECURE_BOOTSTRAP");
    c.kafka.client = [("security.protocol", "SASL_SSL"), ("sasl.mechanisms", "SCRAM-SHA-512"), ("sasl.username", user)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("ssl.ca.location".to_string(), env("LABELGATE_KAFKA_CA"))])
        .collect();
    c.kafka.sasl_password = Some(serde_json::from_value(serde_json::Value::String(password.to_string())).unwrap());
    c
}

fn admin(base: &Config) -> Config {
    as_user(base, "admin", &env("LABELGATE_KAFKA_ADMIN_PASSWORD"))
}

fn vendor(base: &Config) -> Config {
    as_user(base, "vendor-acme", &env("LABELGATE_KAFKA_VENDOR_PASSWORD"))
}

/// `scripts/kafka-acls.sh ROLE PRINCIPAL` as the admin, with this test's topic and group names in
/// the gate's own variables (as an operator would run it next to the gate's settings).
fn grant(base: &Config, role: &str, principal: &str) {
    acls(base, &[role, principal]);
}

fn acls(base: &Config, args: &[&str]) -> String {
    let k = &base.kafka;
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka-acls.sh"))
        .args(args)
        .env("LABELGATE__KAFKA__BOOTSTRAP_SERVERS", env("LABELGATE_KAFKA_SECURE_BOOTSTRAP"))
        .env("KAFKA_ADMIN_CONFIG", env("LABELGATE_KAFKA_ADMIN_CONFIG"))
        .env("LABELGATE__KAFKA__GROUP_ID", &k.group_id)
        .env("LABELGATE__KAFKA__TRANSACTIONAL_ID_PREFIX", &k.transactional_id_prefix)
        .env("LABELGATE__KAFKA__INPUT_TOPIC", &k.input_topic)
        .env("LABELGATE__KAFKA__REVIEWS_TOPIC", &k.reviews_topic)
        .env("LABELGATE__KAFKA__ACCEPTED_TOPIC", &k.accepted_topic)
        .env("LABELGATE__KAFKA__REREVIEW_TOPIC", &k.rereview_topic)
        .env("LABELGATE__KAFKA__VERDICTS_TOPIC", &k.verdicts_topic)
        .env("LABELGATE__KAFKA__DLQ_TOPIC", &k.dlq_topic)
        .env("LABELGATE__KAFKA__PROGRESS_TOPIC", &k.progress_topic)
        .output()
        .unwrap();
    assert!(out.status.success(), "kafka-acls.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Produces as `config`'s principal and returns each record's delivery result.
fn produce_as(config: &Config, topic: &str, messages: &[(String, String)]) -> Vec<Result<(), KafkaError>> {
    use std::sync::{Arc, Mutex};
    struct Reports(Arc<Mutex<Vec<Result<(), KafkaError>>>>);
    impl rdkafka::ClientContext for Reports {}
    impl rdkafka::producer::ProducerContext for Reports {
        type DeliveryOpaque = ();
        fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
            self.0.lock().unwrap().push(r.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
        }
    }
    let reports = Arc::new(Mutex::new(Vec::new()));
    let producer: BaseProducer<Reports> = client_config(config).set("message.timeout.ms", "30000").create_with_context(Reports(reports.clone())).unwrap();
    for (key, payload) in messages {
        let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(payload.as_bytes());
        // Serve the queue while it is full, as service::send_retrying_when_full does.
        while let Err((e, r)) = producer.send(record) {
            assert!(matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)), "{e}");
            producer.poll(Duration::from_millis(10));
            record = r;
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let out = std::mem::take(&mut *reports.lock().unwrap());
    out
}

/// Two MNIST deliveries of 1,000 records each with their batch_end markers, as vendor-acme.
fn deliveries() -> Vec<(String, String)> {
    let mut set = mnist::load(&common::data_dir(), "train").unwrap();
    set.truncate(2000);
    let dim = set.shape.len();
    let mut out = Vec::new();
    for d in 0..2 {
        let batch = format!("acme-{d}");
        for i in d * 1000..(d + 1) * 1000 {
            let record =
                json!({"sample_id": set.sample_ids[i], "batch_id": batch, "vendor_id": "vendor-acme", "label": set.classes[set.labels[i] as usize], "features": &set.features[i * dim..(i + 1) * dim]});
            out.push((batch.clone(), record.to_string()));
        }
        out.push((batch.clone(), json!({"type": "batch_end", "batch_id": batch, "vendor_id": "vendor-acme", "count": 1000}).to_string()));
    }
    out
}

/// `labelgate run` on `base`'s topics, on the secured broker as `user`, its settings in the
/// environment as a deployment sets them: `kafka.client` as one inline table (librdkafka's keys
/// hold dots, which `LABELGATE__A__B` names cannot) and the password in its own variable.
fn secured_gate(base: &Config, user: &str, password: &str) -> Command {
    let client = format!(r#"{{"security.protocol"="SASL_SSL","sasl.mechanisms"="SCRAM-SHA-512","sasl.username"="{user}","ssl.ca.location"="{}"}}"#, env("LABELGATE_KAFKA_CA"));
    let mut cmd = gate_command(base);
    cmd.env("LABELGATE__KAFKA__BOOTSTRAP_SERVERS", env("LABELGATE_KAFKA_SECURE_BOOTSTRAP"))
        .env("LABELGATE__KAFKA__CLIENT", client)
        .env("LABELGATE__KAFKA__SASL_PASSWORD", password)
        .env("LABELGATE__GATE__MIN_WINDOW_RECORDS", "2000")
        .env("LABELGATE__GATE__MAX_WINDOW_RECORDS", "2000")
        // No HTTP server: tests run side by side, and the default port is one.
        .env("LABELGATE__METRICS__LISTEN", "")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The child's stderr, collected on a thread so that it never blocks on a full pipe.
fn collect_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    })
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Every ACL the broker holds whose resource name contains `id`, as (resource type, name,
/// pattern type, operation), from `scripts/kafka-acls.sh list PRINCIPAL`.
fn acls_held(base: &Config, principal: &str, id: &str) -> BTreeSet<(String, String, String, String)> {
    let out = acls(base, &["list", principal]);
    let mut held = BTreeSet::new();
    let mut resource = None;
    for line in out.lines() {
        // Current ACLs for resource `ResourcePattern(resourceType=TOPIC, name=x, patternType=LITERAL)`:
        if let Some(r) = line.split("ResourcePattern(").nth(1) {
            let field = |k: &str| r.split(&format!("{k}=")).nth(1).unwrap().split([',', ')']).next().unwrap().to_string();
            resource = Some((field("resourceType"), field("name"), field("patternType")));
        } else if let (Some(op), Some((t, n, p))) = (line.split("operation=").nth(1), &resource) {
            if n.contains(id) {
                held.insert((t.clone(), n.clone(), p.clone(), op.split(',').next().unwrap().to_string()));
            }
        }
    }
    held
}

#[test]
fn the_gate_gates_over_sasl_ssl_with_only_its_acls() {
    let mut base = test_config("sasl-gate", 784);
    // Every name of this test holds its instance id, so its ACLs are told from other runs'.
    let id = base.kafka.instance_id.clone();
    base.kafka.transactional_id_prefix = format!("lg-{id}");
    let admin = admin(&base);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(service::ensure_topics(&admin, 2)).unwrap();
    grant(&base, "gate", "User:labelgate");
    grant(&base, "vendor", "User:vendor-acme");

    // The broker holds exactly the list in docs/deploying.md for the gate, and nothing more.
    let k = &base.kafka;
    let mut want = BTreeSet::new();
    let mut add = |t: &str, names: &[&str], pattern: &str, ops: &[&str]| {
        for n in names {
            for op in ops {
                want.insert((t.to_string(), n.to_string(), pattern.to_string(), op.to_string()));
            }
        }
    };
    add("TOPIC", &[&k.input_topic, &k.reviews_topic], "LITERAL", &["READ", "DESCRIBE"]);
    add("TOPIC", &[&k.accepted_topic, &k.rereview_topic, &k.dlq_topic], "LITERAL", &["WRITE", "DESCRIBE"]);
    add("TOPIC", &[&k.verdicts_topic, &k.progress_topic], "LITERAL", &["READ", "WRITE", "DESCRIBE"]);
    let groups = [k.group_id.clone(), format!("{}-reviews", k.group_id), format!("{}-reader", k.group_id)];
    add("GROUP", &groups.iter().map(String::as_str).collect::<Vec<_>>(), "LITERAL", &["READ", "DESCRIBE"]);
    add("TRANSACTIONAL_ID", &[&format!("{}-", k.transactional_id_prefix)], "PREFIXED", &["WRITE", "DESCRIBE"]);
    assert_eq!(acls_held(&base, "User:labelgate", &id), want);
    let vendor_acls: Vec<_> = acls_held(&base, "User:vendor-acme", &id).into_iter().map(|(t, n, _, op)| format!("{t} {n} {op}")).collect();
    assert_eq!(vendor_acls, [format!("TOPIC {} DESCRIBE", k.input_topic), format!("TOPIC {} WRITE", k.input_topic)]);

    // With them the gate's principal cannot create topics (its --create-topics is for brokers
    // without ACLs).
    let gate_user = as_user(&base, "labelgate", &env("LABELGATE_KAFKA_GATE_PASSWORD"));
    let err = rt.block_on(service::ensure_topics(&gate_user, 2)).expect_err("the gate's principal has no Create").to_string();
    assert!(err.contains("authorization failed"), "{err}");

    // The vendor delivers; a reviewer's (malformed) review waits on the reviews topic; the gate
    // runs as its own principal.
    let messages = deliveries();
    let sent = produce_as(&vendor(&base), &k.input_topic, &messages);
    assert_eq!(sent.len(), messages.len());
    assert!(sent.iter().all(Result::is_ok), "vendor-acme writes the input: {:?}", sent.iter().find(|r| r.is_err()));
    assert!(produce_as(&admin, &k.reviews_topic, &[("x".into(), "not a review".into())]).iter().all(Result::is_ok));
    let http_port = reserve_port();
    let mut gate = KillOnDrop(
        secured_gate(&base, "labelgate", &env("LABELGATE_KAFKA_GATE_PASSWORD"))
            .env("LABELGATE__KAFKA__TRANSACTIONAL_ID_PREFIX", &k.transactional_id_prefix)
            .env("LABELGATE__METRICS__LISTEN", format!("127.0.0.1:{http_port}"))
            .spawn()
            .unwrap(),
    );
    let log = collect_stderr(&mut gate.0);

    // One verdict per delivery, read back as the admin.
    let started = Instant::now();
    let mut verdicts: Vec<VerdictMessage> = Vec::new();
    while verdicts.len() < 2 && started.elapsed() < Duration::from_secs(240) {
        if let Some(status) = gate.0.try_wait().unwrap() {
            panic!("the gate exited ({status}) over SASL_SSL:\n{}", tail(&log.join().unwrap()));
        }
        std::thread::sleep(Duration::from_secs(2));
        verdicts.clear();
        service::read_topic(&admin, &k.verdicts_topic, |_, v| verdicts.push(serde_json::from_slice(v).unwrap())).unwrap();
    }
    eprintln!("2 deliveries gated over SASL_SSL in {:.0} s", started.elapsed().as_secs_f64());
    // The review was consumed in the reviews group, and no consumer reported an error (a refused
    // topic or group would be one).
    let invalid_review = "labelgate_reviews_total{result=\"invalid\",vendor=\"unknown\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut counted = scrape(http_port, invalid_review) == Some(1.0);
    while !counted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        counted = scrape(http_port, invalid_review) == Some(1.0);
    }
    let consumer_errors = scrape(http_port, "labelgate_consumer_errors_total");
    let ready = http_get(http_port, "/readyz").map(|r| r.0);
    // SIGTERM: the gate drains and exits 0, its last transaction committed.
    Command::new("kill").args(["-TERM", &gate.0.id().to_string()]).status().unwrap();
    let exit = wait_exit(&mut gate.0, Duration::from_secs(60));
    let log = log.join().unwrap();
    let mut batches: Vec<&str> = verdicts.iter().map(|v| v.batch_id.as_str()).collect();
    batches.sort();
    assert_eq!(batches, ["acme-0", "acme-1"], "one verdict per delivery; gate log:\n{}", tail(&log));
    assert!(counted, "the gate consumed the reviews topic; gate log:\n{}", tail(&log));
    assert_eq!(consumer_errors, Some(0.0), "consumer errors; gate log:\n{}", tail(&log));
    assert_eq!(ready, Some(200));
    assert!(exit.is_some_and(|s| s.success()), "SIGTERM exits 0, got {exit:?}:\n{}", tail(&log));
    let mut routed = 0;
    for topic in [&k.accepted_topic, &k.rereview_topic] {
        service::read_topic(&admin, topic, |_, _| routed += 1).unwrap();
    }
    assert_eq!(routed, 2000, "every record accepted or sent to re-review");
}

/// Reads partition 0 of each of `topics` from the start as `config`'s principal, in group
/// `{group}-probe`, until `want` records arrived or `wait` passed: the records and the errors.
fn read_partitions(config: &Config, topics: &[&String], want: usize, wait: Duration) -> (usize, Vec<KafkaError>) {
    let consumer: BaseConsumer = client_config(config).set("group.id", format!("{}-probe", config.kafka.group_id)).set("enable.auto.commit", "false").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + wait;
    let (mut records, mut errors) = (0, Vec::new());
    while records < want && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => records += 1,
            Some(Err(e)) => errors.push(e),
            None => {}
        }
    }
    (records, errors)
}

/// The broker's answer to `config`'s principal asking for `topic`'s metadata (None: allowed).
fn describe_error(config: &Config, topic: &str) -> Option<RDKafkaErrorCode> {
    let consumer: BaseConsumer = client_config(config).create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    metadata.topics().first().and_then(|t| t.error()).map(RDKafkaErrorCode::from)
}

fn is_code(e: &KafkaError, want: RDKafkaErrorCode) -> bool {
    e.rdkafka_error_code() == Some(want)
}

#[test]
fn a_vendor_writes_the_input_and_reads_nothing() {
    let base = test_config("sasl-vendor", 784);
    let (admin, vendor) = (admin(&base), vendor(&base));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(service::ensure_topics(&admin, 1)).unwrap();
    grant(&base, "vendor", "User:vendor-acme");
    // A group of its own to read in, so that a refusal below is the topic's: without one, the
    // group is refused first and nothing is fetched at all.
    let probe_group = format!("{}-probe", base.kafka.group_id);
    acls(&base, &["command", "--add", "--allow-principal", "User:vendor-acme", "--operation", "Read", "--group", &probe_group]);

    let sent = produce_as(&vendor, &base.kafka.input_topic, &[("d-1".into(), "{\"type\":\"batch_end\",\"batch_id\":\"d-1\"}".into())]);
    assert!(matches!(sent.as_slice(), [Ok(())]), "vendor-acme writes the input: {sent:?}");
    let mut seen = 0;
    service::read_topic(&admin, &base.kafka.input_topic, |k, _| seen += usize::from(k == b"d-1")).unwrap();
    assert_eq!(seen, 1, "the admin reads what the vendor wrote");

    // Every output holds a record, so that reading nothing can only mean being refused.
    let k = &base.kafka;
    let outputs = [&k.accepted_topic, &k.rereview_topic, &k.verdicts_topic, &k.dlq_topic, &k.progress_topic, &k.reviews_topic];
    for topic in outputs {
        assert!(produce_as(&admin, topic, &[("x".into(), "{}".into())]).iter().all(Result::is_ok));
    }
    assert_eq!(read_partitions(&admin, &outputs, outputs.len(), Duration::from_secs(30)).0, outputs.len(), "the admin reads every output");
    // The vendor may not even see an output, nor write one, and reads nothing from them.
    for topic in outputs {
        assert_eq!(describe_error(&vendor, topic), Some(RDKafkaErrorCode::TopicAuthorizationFailed), "{topic}");
        let wrote = produce_as(&vendor, topic, &[("x".into(), "{}".into())]);
        assert!(matches!(wrote.as_slice(), [Err(e)] if is_code(e, RDKafkaErrorCode::TopicAuthorizationFailed)), "{topic}: {wrote:?}");
    }
    let (read, _) = read_partitions(&vendor, &outputs, 1, Duration::from_secs(10));
    assert_eq!(read, 0, "vendor-acme read an output");
    // Its own input it may see and write, but not read: the fetch is refused.
    assert_eq!(describe_error(&vendor, &k.input_topic), None);
    let (read, errors) = read_partitions(&vendor, &[&k.input_topic], 1, Duration::from_secs(20));
    assert_eq!(read, 0, "vendor-acme read the input");
    assert!(errors.iter().any(|e| is_code(e, RDKafkaErrorCode::TopicAuthorizationFailed)), "input: {errors:?}");
    // Nor may it join the gate's group.
    let consumer: BaseConsumer = client_config(&vendor).set("group.id", &k.group_id).create().unwrap();
    consumer.subscribe(&[&k.input_topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Err(e)) => break e,
            Some(Ok(_)) => panic!("vendor-acme consumed the input in the gate's group"),
            None => assert!(Instant::now() < deadline, "no error joining the gate's group as vendor-acme"),
        }
    };
    assert!(is_code(&refused, RDKafkaErrorCode::GroupAuthorizationFailed), "group: {refused:?}");
}

/// A wrong password stops the gate with an error that names the setting to fix.
// The cause reaches only the client's error callback (KafkaError::Global(Authentication));
// src/service/startup.rs turns it into an error naming kafka.sasl_password and stops at once.
#[test]
fn a_wrong_password_is_a_clear_error_naming_the_key() {
    let base = test_config("sasl-badpass", 784);
    tokio::runtime::Runtime::new().unwrap().block_on(service::ensure_topics(&admin(&base), 1)).unwrap();
    let mut gate = KillOnDrop(secured_gate(&base, "labelgate", "not-the-password").spawn().unwrap());
    let log = collect_stderr(&mut gate.0);
    let exit = wait_exit(&mut gate.0, Duration::from_secs(90));
    if exit.is_none() {
        gate.0.kill().unwrap();
    }
    let log = log.join().unwrap();
    eprintln!("gate stderr with a wrong password:\n{}", tail(&log));
    assert!(exit.is_some_and(|s| !s.success()), "the gate should exit non-zero within 90 s, got {exit:?}");
    assert!(log.contains("kafka.sasl_password"), "the error names kafka.sasl_password:\n{}", tail(&log));
    assert!(!log.contains("not-the-password"), "the password never prints");
}
