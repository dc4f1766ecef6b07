//! The Label Studio review bridge end to end, on real parts: the Kafka broker, Redis and Label
//! Studio 1.23 that `scripts/test.sh` starts (`scripts/label-studio.sh`: SQLite, a generated admin
//! and their personal access token), the `labelgate` binary, and headless Chromium driven through
//! Debian's chromedriver for a reviewer's clicks. Tests take a lock: one of them restarts Label
//! Studio.

mod common;

use std::{
    collections::{HashMap, HashSet},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{
    kafka::{gate_command, test_config},
    process::{http_get, reserve_port as free_port, sample, wait_for, KillOnDrop},
};
use labelgate::wire::RereviewMessage;
use rdkafka::{
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer},
    producer::{BaseProducer, BaseRecord, Producer},
    Message, Offset, TopicPartitionList,
};
use serde_json::{json, Value};

/// Serialises the tests of this file: one restarts Label Studio under the others' feet otherwise.
static LABEL_STUDIO: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LABEL_STUDIO.lock().unwrap_or_else(|e| e.into_inner())
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/test.sh (it starts Kafka, Redis and Label Studio and exports it)"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().to_string()
}

/// The suite's Redis as the bridge's ACL user, to watch the task map.
fn redis_connection() -> redis::Connection {
    let mut c = redis::Client::open(var("LABELGATE_REDIS_URL")).unwrap().get_connection().unwrap();
    redis::cmd("AUTH").arg(var("LABELGATE_REDIS_USER")).arg(var("LABELGATE_REDIS_PASSWORD")).query::<()>(&mut c).unwrap();
    c
}

/// Topic, Redis prefix and project names of one test run.
#[derive(Clone)]
struct Names {
    unique: String,
    rereview: String,
    reviews: String,
    project: String,
}

fn names(test: &str) -> Names {
    let unique = format!("ls-{test}-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 1_000_000);
    Names { rereview: format!("{unique}.rereview"), reviews: format!("{unique}.reviews"), project: format!("labelgate {unique}"), unique }
}

/// `labelgate review-bridge` on `n`'s topics and project, serving on `port`.
fn bridge(n: &Names, port: u16, webhook: Option<&str>, poll_secs: u64) -> KillOnDrop {
    KillOnDrop(bridge_command(n, port, webhook, poll_secs).spawn().unwrap())
}

fn bridge_command(n: &Names, port: u16, webhook: Option<&str>, poll_secs: u64) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labelgate"));
    cmd.arg("review-bridge")
        .env("LABELGATE_LOG", "info,librdkafka=warn")
        .env("LABELGATE__KAFKA__BOOTSTRAP_SERVERS", var("LABELGATE_KAFKA_BOOTSTRAP"))
        .env("LABELGATE__KAFKA__REREVIEW_TOPIC", &n.rereview)
        .env("LABELGATE__KAFKA__REVIEWS_TOPIC", &n.reviews)
        .env("LABELGATE__STATE__REDIS__URL", var("LABELGATE_REDIS_URL"))
        .env("LABELGATE__STATE__REDIS__USERNAME", var("LABELGATE_REDIS_USER"))
        .env("LABELGATE__STATE__REDIS__PASSWORD", var("LABELGATE_REDIS_PASSWORD"))
        .env("LABELGATE__STATE__REDIS__KEY_PREFIX", format!("labelgate:test:{}:", n.unique))
        .env("LABELGATE__REVIEW_BRIDGE__LABEL_STUDIO_URL", var("LABEL_STUDIO_URL"))
        .env("LABELGATE__REVIEW_BRIDGE__TOKEN", read(&var("LABEL_STUDIO_TOKEN_FILE")))
        .env("LABELGATE__REVIEW_BRIDGE__PROJECT_TITLE", &n.project)
        .env("LABELGATE__REVIEW_BRIDGE__GROUP_ID", format!("{}-bridge", n.unique))
        .env("LABELGATE__REVIEW_BRIDGE__IMPORT_BATCH_SIZE", "50")
        .env("LABELGATE__REVIEW_BRIDGE__IMPORT_LINGER_MS", "200")
        .env("LABELGATE__REVIEW_BRIDGE__POLL_INTERVAL_SECS", poll_secs.to_string())
        .env("LABELGATE__REVIEW_BRIDGE__REQUEST_TIMEOUT_SECS", "10")
        .env("LABELGATE__REVIEW_BRIDGE__LISTEN", format!("127.0.0.1:{port}"))
        .env("LABELGATE__REVIEW_BRIDGE__WEBHOOK_URL", webhook.unwrap_or(""))
        .env("LABELGATE__REVIEW_BRIDGE__WEBHOOK_SECRET", WEBHOOK_SECRET)
        .stderr(Stdio::inherit());
    cmd
}

/// What waiting cannot fix ends the bridge at once with the reason: a token Label Studio refuses,
/// and a setting that cannot work (a CA file that is not there). Within 10 s each.
#[test]
fn the_bridge_stops_with_the_reason_on_a_refused_token_or_a_bad_setting() {
    let n = names("fatal");
    let runs = [
        ("a refused token", vec![("LABELGATE__REVIEW_BRIDGE__TOKEN", "not-a-token".to_string())], "token_refused"),
        (
            "a CA file that is not there",
            vec![("LABELGATE__STATE__REDIS__URL", var("LABELGATE_REDIS_TLS_URL")), ("LABELGATE__STATE__REDIS__TLS_CA_FILE", "/nonexistent/ca.pem".to_string())],
            "state.redis.tls_ca_file",
        ),
    ];
    for (what, env, reason) in runs {
        let mut cmd = bridge_command(&n, free_port(), None, 5);
        cmd.envs(env).stderr(Stdio::piped());
        let started = std::time::Instant::now();
        let mut child = KillOnDrop(cmd.spawn().unwrap());
        while child.0.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}: the bridge still runs after 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = child.0.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{what}: exited {status}");
        assert!(stderr.contains(reason), "{what}: no `{reason}` in\n{stderr}");
        eprintln!("{what}: exited in {:.1} s", started.elapsed().as_secs_f64());
    }
}

const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789";

fn metrics(port: u16) -> String {
    http_get(port, "/metrics").map(|r| r.1).unwrap_or_default()
}

/// Label Studio over REST, as a reviewer's tools would use it (the admin's token).
struct Studio {
    http: reqwest::blocking::Client,
    base: String,
    access: Mutex<Option<String>>,
}

impl Studio {
    fn new() -> Self {
        Self { http: reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(), base: var("LABEL_STUDIO_URL"), access: Mutex::new(None) }
    }

    fn access(&self, fresh: bool) -> String {
        let mut held = self.access.lock().unwrap();
        if fresh || held.is_none() {
            // Right after the test restarts Label Studio its token endpoint may answer without a
            // token for a while (seen once in CI-style runs): ask again for up to 30 s.
            let deadline = Instant::now() + Duration::from_secs(30);
            let token = loop {
                let r = self.http.post(format!("{}/api/token/refresh/", self.base)).json(&json!({"refresh": read(&var("LABEL_STUDIO_TOKEN_FILE"))})).send();
                let body: Option<Value> = r.ok().and_then(|r| r.json().ok());
                match body.as_ref().and_then(|b| b["access"].as_str()) {
                    Some(t) => break t.to_string(),
                    None if Instant::now() < deadline => std::thread::sleep(Duration::from_secs(1)),
                    None => panic!("no access token from Label Studio within 30 s: {body:?}"),
                }
            };
            *held = Some(token);
        }
        held.clone().unwrap()
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        for fresh in [false, true] {
            let mut r = self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(self.access(fresh));
            if let Some(b) = body {
                r = r.json(b);
            }
            let response = r.send().unwrap();
            if response.status() == 401 && !fresh {
                continue;
            }
            let status = response.status();
            let text = response.text().unwrap();
            assert!(status.is_success(), "{method} {path}: {status} {text}");
            return serde_json::from_str(&text).unwrap_or(Value::Null);
        }
        unreachable!()
    }

    fn project(&self, title: &str) -> Option<i64> {
        let page = self.call(reqwest::Method::GET, &format!("/api/projects/?page_size=1000&title={}", title.replace(' ', "%20")), None);
        page["results"].as_array()?.iter().find(|p| p["title"] == title).and_then(|p| p["id"].as_i64())
    }

    /// Every task of the project (with annotations and predictions).
    fn tasks(&self, project: i64) -> Vec<Value> {
        let mut all = Vec::new();
        for page in 1.. {
            let url = format!("{}/api/tasks/?project={project}&page={page}&page_size=500&fields=all", self.base);
            let response = self.http.get(url).bearer_auth(self.access(false)).send().unwrap();
            if response.status() == 404 {
                break;
            }
            let body: Value = response.json().unwrap();
            let tasks = body["tasks"].as_array().cloned().unwrap_or_default();
            let n = tasks.len();
            all.extend(tasks);
            if n < 500 {
                break;
            }
        }
        all
    }

    fn task_count(&self, project: i64) -> usize {
        self.call(reqwest::Method::GET, &format!("/api/tasks/?project={project}&page_size=1&fields=task_only"), None)["total"].as_u64().unwrap_or(0) as usize
    }

    /// A reviewer's answer, as Label Studio's editor saves it.
    fn annotate(&self, task: i64, label: &str, cancelled: bool) -> Value {
        let result = if cancelled { json!([]) } else { json!([{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [label]}}]) };
        self.call(reqwest::Method::POST, &format!("/api/tasks/{task}/annotations/"), Some(&json!({"result": result, "was_cancelled": cancelled})))
    }

    fn relabel(&self, annotation: i64, label: &str) {
        self.call(
            reqwest::Method::PATCH,
            &format!("/api/annotations/{annotation}/"),
            Some(&json!({"result": [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [label]}}]})),
        );
    }

    fn up(&self) -> bool {
        self.http.get(format!("{}/health", self.base)).timeout(Duration::from_secs(2)).send().is_ok_and(|r| r.status().is_success())
    }
}

/// Everything on the reviews topic, with when this test saw it; read by a thread until dropped.
struct ReviewsReader {
    seen: Arc<Mutex<Vec<(Instant, Value)>>>,
    stop: Arc<AtomicBool>,
}

impl ReviewsReader {
    fn start(topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", var("LABELGATE_KAFKA_BOOTSTRAP"))
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "500")
            .create()
            .unwrap();
        // The bridge's producer may not have made the topic yet: make it, then read from the start.
        let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", var("LABELGATE_KAFKA_BOOTSTRAP")).create().unwrap();
        producer.client().fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let mut tpl = TopicPartitionList::new();
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let (seen, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("a review is JSON");
                    s.lock().unwrap().push((Instant::now(), v));
                }
            }
        });
        Self { seen, stop }
    }

    fn all(&self) -> Vec<Value> {
        self.seen.lock().unwrap().iter().map(|(_, v)| v.clone()).collect()
    }

    /// Waits for a review of `sample_id` saying `label`; returns when it arrived.
    fn wait(&self, sample_id: &str, label: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((t, _)) = self.seen.lock().unwrap().iter().find(|(_, v)| v["sample_id"] == sample_id && v["final_label"] == label) {
                return *t;
            }
            assert!(Instant::now() < deadline, "no review of {sample_id} as {label} within {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ReviewsReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn produce(topic: &str, records: &[(String, String)]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", var("LABELGATE_KAFKA_BOOTSTRAP")).create().unwrap();
    for (key, payload) in records {
        while producer.send(BaseRecord::to(topic).key(key).payload(payload)).is_err() {
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn pixels_b64(pixels: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(pixels)
}

/// A suspect as the gate writes it; every third carries text, a URL with a display field, or pixels.
fn suspect(i: usize) -> RereviewMessage {
    let (item, image) = match i % 3 {
        0 => (json!({"text": format!("caption <b>{i}</b> & more")}).as_object().cloned(), None),
        1 => (json!({"uri": format!("https://images.example.invalid/{i}.png"), "camera": format!("cam-{}", i % 5)}).as_object().cloned(), None),
        _ => (None, Some(labelgate::wire::ImagePixels { shape: [8, 8, 1], data_b64: pixels_b64(&[(i % 256) as u8; 64]) })),
    };
    RereviewMessage {
        schema_version: 1,
        sample_id: format!("s{i:05}"),
        batch_id: format!("b{}", i / 100),
        vendor_id: ["acme", "globex"][i % 2].into(),
        annotator_id: None,
        label: (i % 10).to_string(),
        predicted_label: ((i + 3) % 10).to_string(),
        score: 0.5 + (i % 50) as f32 / 100.0,
        rank_percentile: 0.9,
        window_id: "w-test".into(),
        model_version: "mlp-test".into(),
        reason: "o2u_high_loss".into(),
        item,
        image,
        image_uri: None,
        text: None,
        text_pair: None,
    }
}

fn records(suspects: &[RereviewMessage]) -> Vec<(String, String)> {
    suspects.iter().map(|s| (s.batch_id.clone(), serde_json::to_string(s).unwrap())).collect()
}

fn key_of(task: &Value) -> String {
    task["data"]["labelgate_key"].as_str().expect("bridge tasks carry their key").to_string()
}

#[test]
fn a_thousand_suspects_become_a_thousand_tasks_across_a_bridge_kill_and_a_label_studio_restart() {
    let _one = lock();
    let (n, studio) = (names("faults"), Studio::new());
    let suspects: Vec<RereviewMessage> = (0..1000).map(suspect).collect();
    let started = Instant::now();
    produce(&n.rereview, &records(&suspects[..600]));

    // The bridge dies by SIGKILL mid-import: while a batch is marked in the task map, between
    // sending it to Label Studio and recording its task ids...
    let port = free_port();
    let mut first = bridge(&n, port, None, 3600);
    let mut project = None;
    wait_for("the project and 150 tasks", Duration::from_secs(120), || {
        project = project.or_else(|| studio.project(&n.project));
        project.is_some_and(|p| studio.task_count(p) >= 150)
    });
    let project = project.unwrap();
    let mut redis = redis_connection();
    let importing = format!("labelgate:test:{}:review_bridge:{project}:importing", n.unique);
    let deadline = Instant::now() + Duration::from_secs(60);
    while redis::cmd("HLEN").arg(&importing).query::<u64>(&mut redis).unwrap() == 0 {
        assert!(Instant::now() < deadline, "no import in flight to interrupt");
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let at_kill = studio.task_count(project);
    let marked: u64 = redis::cmd("HLEN").arg(&importing).query(&mut redis).unwrap();
    eprintln!("bridge SIGKILLed mid-import: {at_kill} tasks in Label Studio, {marked} suspects marked as importing");
    assert!(marked > 0, "the kill left an import to settle");

    // ...a new one takes over, and Label Studio restarts under it while suspects keep coming.
    let port = free_port();
    let _second = bridge(&n, port, None, 3600);
    wait_for("400 tasks", Duration::from_secs(180), || studio.task_count(project) >= 400);
    let restart = std::thread::spawn(|| {
        let out = Command::new("bash").arg("scripts/label-studio.sh").arg("restart").current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
        assert!(out.status.success(), "label-studio.sh restart: {}", String::from_utf8_lossy(&out.stderr));
    });
    wait_for("Label Studio down", Duration::from_secs(30), || !studio.up());
    produce(&n.rereview, &records(&suspects[600..]));
    let mut saw_not_ready = false;
    wait_for("the bridge to report not ready while Label Studio is down", Duration::from_secs(60), || {
        saw_not_ready |= http_get(port, "/readyz").is_some_and(|r| r.0 == 503);
        saw_not_ready || restart.is_finished()
    });
    restart.join().unwrap();
    assert!(saw_not_ready, "/readyz never said 503 while Label Studio was down");
    wait_for("1000 tasks", Duration::from_secs(300), || studio.task_count(project) >= 1000);
    let imported_in = started.elapsed();
    wait_for("/readyz 200 again", Duration::from_secs(60), || http_get(port, "/readyz").is_some_and(|r| r.0 == 200));

    // A replay of every suspect (a reset consumer group, a restored topic) makes nothing new.
    produce(&n.rereview, &records(&suspects));
    wait_for("the replay read", Duration::from_secs(120), || sample(&metrics(port), "labelgate_review_bridge_tasks_existing_total").unwrap_or(0.0) >= 1000.0);
    std::thread::sleep(Duration::from_secs(2));

    let tasks = studio.tasks(project);
    let keys: Vec<String> = tasks.iter().map(key_of).collect();
    let unique: HashSet<&String> = keys.iter().collect();
    let want: HashSet<String> = suspects.iter().map(|s| labelgate::review_bridge::task::suspect_key(&s.vendor_id, &s.sample_id)).collect();
    let missing = want.iter().filter(|k| !unique.contains(k)).count();
    let m = metrics(port);
    eprintln!(
        "1000 suspects → {} tasks ({} distinct, {} duplicates, {missing} missing) in {:.1} s over a SIGKILL and a Label Studio restart; reconciled {}, errors {:?}",
        tasks.len(),
        unique.len(),
        tasks.len() - unique.len(),
        imported_in.as_secs_f64(),
        sample(&m, "labelgate_review_bridge_tasks_reconciled_total").unwrap_or(0.0),
        m.lines().filter(|l| l.starts_with("labelgate_review_bridge_errors_total{")).collect::<Vec<_>>()
    );
    assert_eq!(tasks.len() - unique.len(), 0, "duplicate tasks");
    assert_eq!(missing, 0, "missing tasks");
    assert_eq!(tasks.len(), 1000);
    assert_eq!(redis::cmd("HLEN").arg(&importing).query::<u64>(&mut redis).unwrap(), 0, "every import mark settled");
    assert!(sample(&m, "labelgate_review_bridge_errors_total{kind=\"label_studio_unreachable\"}").unwrap_or(0.0) >= 1.0, "the outage was counted");

    // What a reviewer gets: the item (escaped), pixels as a PNG, the gate's guess as a prediction.
    let by_key: HashMap<String, &Value> = tasks.iter().map(|t| (key_of(t), t)).collect();
    for s in &suspects[..3] {
        let t = by_key[&labelgate::review_bridge::task::suspect_key(&s.vendor_id, &s.sample_id)];
        let html = t["data"]["item_html"].as_str().unwrap();
        match s.sample_id.as_str() {
            "s00000" => assert!(html.contains("caption &lt;b&gt;0&lt;/b&gt; &amp; more"), "{html}"),
            "s00001" => assert!(html.contains(r#"src="https://images.example.invalid/1.png""#) && html.contains("cam-1"), "{html}"),
            _ => assert!(html.contains("background-image:url('data:image/png;base64,"), "{html}"),
        }
        let p = &t["predictions"][0];
        assert_eq!(p["result"][0]["value"]["choices"][0], s.predicted_label.as_str());
        assert!((p["score"].as_f64().unwrap() - s.rank_percentile).abs() < 1e-6, "the prediction's score is the suspect's rank, which Label Studio shows as a percentage");
        assert_eq!(t["data"]["score"], format!("{:.3}", s.score));
        assert_eq!(t["data"]["vendor_label"], s.label.as_str());
        assert_eq!(t["data"]["batch_id"], s.batch_id.as_str());
    }
}

#[test]
fn answers_reach_the_reviews_topic_once_by_webhook_and_by_poll_with_the_webhook_target_down() {
    let _one = lock();
    let (n, studio) = (names("answers"), Studio::new());
    let suspects: Vec<RereviewMessage> = (0..30).map(suspect).collect();
    produce(&n.rereview, &records(&suspects));
    let port = free_port();
    let hook = format!("http://127.0.0.1:{port}/webhooks/label-studio");
    let mut with_webhook = bridge(&n, port, Some(&hook), 3600);
    let mut project = None;
    wait_for("30 tasks", Duration::from_secs(120), || {
        project = project.or_else(|| studio.project(&n.project));
        project.is_some_and(|p| studio.task_count(p) >= 30)
    });
    let project = project.unwrap();
    wait_for("the bridge ready", Duration::from_secs(60), || http_get(port, "/readyz").is_some_and(|r| r.0 == 200));
    let reader = ReviewsReader::start(&n.reviews);
    let tasks: HashMap<String, i64> = studio.tasks(project).iter().map(|t| (t["data"]["sample_id"].as_str().unwrap().to_string(), t["id"].as_i64().unwrap())).collect();
    let admin = var("LABEL_STUDIO_ADMIN");
    // The reviewer's answer differs from the vendor's label and from the gate's guess.
    let answer_of = |s: &RereviewMessage| ((s.label.parse::<usize>().unwrap() + 5) % 10).to_string();

    // By webhook: each answer on the topic within 2 s of the reviewer saving it.
    let mut webhook_latency = Vec::new();
    let mut annotations = HashMap::new();
    for s in &suspects[..10] {
        let t0 = Instant::now();
        let a = studio.annotate(tasks[&s.sample_id], &answer_of(s), false);
        let arrived = reader.wait(&s.sample_id, &answer_of(s), Duration::from_secs(10));
        webhook_latency.push(arrived.duration_since(t0).as_secs_f64());
        annotations.insert(s.sample_id.clone(), a["id"].as_i64().unwrap());
    }
    let m = metrics(port);
    assert_eq!(sample(&m, "labelgate_review_bridge_reviews_total{path=\"webhook\"}"), Some(10.0), "all ten came by webhook");
    // A skipped task is ignored; a correction is forwarded as a new review; re-saving the same
    // label is not; a call without the secret is refused.
    studio.annotate(tasks[&suspects[10].sample_id], "", true);
    let corrected = ((answer_of(&suspects[0]).parse::<usize>().unwrap() + 1) % 10).to_string();
    studio.relabel(annotations[&suspects[0].sample_id], &corrected);
    reader.wait(&suspects[0].sample_id, &corrected, Duration::from_secs(10));
    studio.relabel(annotations[&suspects[0].sample_id], &corrected);
    let refused = reqwest::blocking::Client::new().post(&hook).header("X-Labelgate-Webhook-Secret", "wrong").body("{}").send().unwrap().status();
    assert_eq!(refused, 401);

    let cancelled = "labelgate_review_bridge_answers_ignored_total{reason=\"cancelled\"}";
    let skipped_by_webhook = sample(&metrics(port), cancelled).unwrap_or(0.0);

    // By poll: the webhook's target is down (the bridge that registered it is gone); a bridge
    // polling every 5 s brings each answer within one interval.
    with_webhook.0.kill().unwrap();
    with_webhook.0.wait().unwrap();
    let poll_secs = 5;
    let port = free_port();
    let _polling = bridge(&n, port, None, poll_secs);
    wait_for("the polling bridge ready", Duration::from_secs(60), || http_get(port, "/readyz").is_some_and(|r| r.0 == 200));
    let mut poll_latency = Vec::new();
    for s in &suspects[11..21] {
        let t0 = Instant::now();
        studio.annotate(tasks[&s.sample_id], &answer_of(s), false);
        let arrived = reader.wait(&s.sample_id, &answer_of(s), Duration::from_secs(poll_secs * 3));
        poll_latency.push(arrived.duration_since(t0).as_secs_f64());
    }
    // Two more polls: nothing arrives twice.
    std::thread::sleep(Duration::from_secs(poll_secs * 2 + 1));
    let m = metrics(port);
    assert_eq!(sample(&m, "labelgate_review_bridge_reviews_total{path=\"poll\"}"), Some(10.0), "the ten came by poll, the webhook's not again");
    assert_eq!(skipped_by_webhook + sample(&m, cancelled).unwrap_or(0.0), 1.0, "the skipped task is counted once, by whichever path saw it first");

    let all = reader.all();
    let mut per_sample: HashMap<String, Vec<String>> = HashMap::new();
    for r in &all {
        assert_eq!(r["reviewer"], admin.as_str(), "the reviewer is resolved from the user id: {r}");
        assert_eq!(r.as_object().unwrap().len(), 3, "exactly sample_id, final_label, reviewer: {r}");
        per_sample.entry(r["sample_id"].as_str().unwrap().to_string()).or_default().push(r["final_label"].as_str().unwrap().to_string());
    }
    for s in suspects[1..10].iter().chain(&suspects[11..21]) {
        assert_eq!(per_sample.get(&s.sample_id), Some(&vec![answer_of(s)]), "one review of {}", s.sample_id);
    }
    assert_eq!(per_sample[&suspects[0].sample_id], vec![answer_of(&suspects[0]), corrected], "the answer, then its correction once");
    assert!(!per_sample.contains_key(&suspects[10].sample_id), "a skipped task sends nothing");
    assert_eq!(all.len(), 21);
    let worst = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "webhook path: UI save → annotations.reviews max {:.3} s (mean {:.3} s); poll path (every {poll_secs} s): max {:.2} s (mean {:.2} s)",
        worst(&webhook_latency),
        webhook_latency.iter().sum::<f64>() / 10.0,
        worst(&poll_latency),
        poll_latency.iter().sum::<f64>() / 10.0
    );
    assert!(worst(&webhook_latency) <= 2.0, "webhook path over 2 s: {webhook_latency:?}");
    assert!(worst(&poll_latency) <= poll_secs as f64 + 2.0, "poll path over one interval (+2 s for the export): {poll_latency:?}");
}

/// A config of `n`'s topics (for reading the gate's outputs with the service's own reader).
fn gate_config(n: &Names) -> labelgate::config::Config {
    let mut c = test_config(&n.unique, 784);
    c.kafka.group_id = format!("{}-gate", n.unique);
    c.kafka.instance_id = n.unique.clone();
    for (topic, name) in [
        (&mut c.kafka.input_topic, "in"),
        (&mut c.kafka.accepted_topic, "accepted"),
        (&mut c.kafka.verdicts_topic, "verdicts"),
        (&mut c.kafka.dlq_topic, "dlq"),
        (&mut c.kafka.progress_topic, "progress"),
    ] {
        *topic = format!("{}.{name}", n.unique);
    }
    c.kafka.rereview_topic = n.rereview.clone();
    c.kafka.reviews_topic = n.reviews.clone();
    c.state.redis.key_prefix = format!("labelgate:test:{}:", n.unique);
    c
}

/// `labelgate run` on `config`'s topics, one window of 3,000 records, metrics on `port`.
fn gate(config: &labelgate::config::Config, port: u16) -> KillOnDrop {
    let mut cmd = gate_command(config);
    cmd.args(["--create-topics", "2"]).env("LABELGATE_LOG", "info,librdkafka=warn").env("LABELGATE__METRICS__LISTEN", format!("127.0.0.1:{port}")).stderr(Stdio::inherit());
    KillOnDrop(cmd.spawn().unwrap())
}

/// Headless Chromium through Debian's chromedriver, on a port of its own.
struct Browser {
    client: fantoccini::Client,
    _driver: KillOnDrop,
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = KillOnDrop(
            Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (Debian package chromium-driver; scripts/test.sh installs it)"),
        );
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]}
        }))
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new()).capabilities(caps.clone()).connect(&format!("http://127.0.0.1:{port}")).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("chromedriver on {port}: {e}"),
            }
        };
        Self { client, _driver: driver }
    }

    /// Runs `script` (asynchronous: it calls its last argument) until it answers other than null.
    async fn until(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.client.execute_async(script, vec![]).await {
                Ok(v) if !v.is_null() => return v,
                Ok(_) | Err(fantoccini::error::CmdError::Standard(_)) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    async fn wait_css(&self, css: &str) -> fantoccini::elements::Element {
        self.client.wait().at_most(Duration::from_secs(60)).for_element(fantoccini::Locator::Css(css)).await.unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
    }
}

#[test]
fn a_reviewer_in_a_browser_sees_the_item_and_the_gates_guess_and_the_answers_reach_the_gate() {
    use labelgate::{
        data::{mnist, LabelledSet},
        noise::NoiseModel,
    };
    let _one = lock();
    let (n, studio) = (names("browser"), Studio::new());
    let config = gate_config(&n);

    // Two vendors' MNIST deliveries as raw pixels, each with an item of display fields.
    let mut set: LabelledSet = mnist::load(&common::data_dir(), "train").unwrap();
    set.truncate(3000);
    let truth = set.truth.clone().unwrap();
    let mut messages = Vec::new();
    for (v, (vendor, rate)) in [("steady", 0.02), ("slipping", 0.25)].into_iter().enumerate() {
        let idx: Vec<usize> = (v * 1500..(v + 1) * 1500).collect();
        let slice: Vec<u32> = idx.iter().map(|&i| truth[i]).collect();
        for (&i, l) in idx.iter().zip(NoiseModel::Symmetric(rate).apply(&slice, 10, v as u64 + 11)) {
            set.labels[i] = l;
        }
        let batch = format!("{vendor}-0");
        for &i in &idx {
            let pixels: Vec<u8> = set.features[i * 784..(i + 1) * 784].iter().map(|f| (f * 255.0).round() as u8).collect();
            let record = json!({"sample_id": set.sample_ids[i], "batch_id": batch, "vendor_id": vendor, "label": set.classes[set.labels[i] as usize],
                "image": {"shape": [28, 28, 1], "data_b64": pixels_b64(&pixels)}, "item": {"source": "mnist-train", "index": i}});
            messages.push((batch.clone(), record.to_string()));
        }
        messages.push((batch.clone(), json!({"type": "batch_end", "batch_id": batch, "vendor_id": vendor, "count": 1500}).to_string()));
    }
    let gate_port = free_port();
    let _gate = gate(&config, gate_port);
    wait_for("the gate ready", Duration::from_secs(120), || http_get(gate_port, "/readyz").is_some_and(|r| r.0 == 200));
    produce(&config.kafka.input_topic, &messages);
    let bridge_port = free_port();
    let hook = format!("http://127.0.0.1:{bridge_port}/webhooks/label-studio");
    let _bridge = bridge(&n, bridge_port, Some(&hook), 10);
    let deliveries = |m: &str| {
        ["steady", "slipping"]
            .iter()
            .flat_map(|v| ["accept", "reject", "review"].map(|d| sample(m, &format!("labelgate_deliveries_total{{decision=\"{d}\",vendor=\"{v}\"}}")).unwrap_or(0.0)))
            .sum::<f64>()
    };
    wait_for("both deliveries gated", Duration::from_secs(600), || deliveries(&metrics(gate_port)) == 2.0);
    let mut suspects: Vec<RereviewMessage> = Vec::new();
    labelgate::service::read_topic(&config, &config.kafka.rereview_topic, |_, v| suspects.push(serde_json::from_slice(v).unwrap())).unwrap();
    assert!(suspects.iter().all(|s| s.image.as_ref().is_some_and(|i| i.shape == [28, 28, 1]) && s.item.is_some()), "suspects carry their pixels and item");
    let mut project = None;
    wait_for("a task per suspect", Duration::from_secs(120), || {
        project = project.or_else(|| studio.project(&n.project));
        project.is_some_and(|p| studio.task_count(p) >= suspects.len())
    });
    let project = project.unwrap();
    let tasks: HashMap<String, i64> = studio.tasks(project).iter().map(|t| (key_of(t), t["id"].as_i64().unwrap())).collect();
    assert_eq!(tasks.len(), suspects.len());
    let index: HashMap<&str, usize> = set.sample_ids.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let slipping: Vec<&RereviewMessage> = suspects.iter().filter(|s| s.vendor_id == "slipping").collect();
    assert!(slipping.len() >= 20, "{} suspects of the slipping vendor", slipping.len());
    let task_of = |s: &RereviewMessage| tasks[&labelgate::review_bridge::task::suspect_key(&s.vendor_id, &s.sample_id)];

    // In the browser: the first slipping suspect shows its pixels and the gate's label selected;
    // the reviewer picks another label and submits.
    let reader = ReviewsReader::start(&n.reviews);
    let first = slipping[0];
    let true_label = set.classes[truth[index[first.sample_id.as_str()]] as usize].clone();
    let chosen = [true_label.clone(), first.label.clone()].into_iter().chain((0..10).map(|c| c.to_string())).find(|c| *c != first.predicted_label).unwrap();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("label-studio");
    std::fs::create_dir_all(&shots).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let submitted = rt.block_on(async {
        let b = Browser::start().await;
        let base = var("LABEL_STUDIO_URL");
        b.client.goto(&format!("{base}/user/login/")).await.unwrap();
        b.wait_css("input[name=email]").await.send_keys(&var("LABEL_STUDIO_ADMIN")).await.unwrap();
        b.wait_css("input[name=password]").await.send_keys(&read(&var("LABEL_STUDIO_PASSWORD_FILE"))).await.unwrap();
        b.wait_css("form button[type=submit], form input[type=submit]").await.click().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while b.client.current_url().await.unwrap().path().starts_with("/user/login") {
            assert!(Instant::now() < deadline, "the login did not go through");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        b.client.goto(&format!("{base}/projects/{project}/data?task={}", task_of(first))).await.unwrap();
        // The item: the suspect's pixels, drawn from the PNG data URI the bridge rendered. The
        // editor re-renders while it loads the prediction, so the checks find their elements
        // afresh each time instead of holding on to one.
        b.wait_css(".labelgate-image").await;
        let size = b
            .until(
                "the item's image decoded",
                "const done = arguments[arguments.length - 1]; const el = document.querySelector('.labelgate-image'); if (!el) { done(null); return; } \
                 const url = getComputedStyle(el).backgroundImage.slice(5, -2); const img = new Image(); \
                 img.onload = () => done([img.naturalWidth, img.naturalHeight]); img.onerror = () => done(null); img.src = url;",
            )
            .await;
        assert_eq!(size, json!([28, 28]), "the item's image decodes to the suspect's 28×28 pixels");
        // The gate's guess: its choice is pre-selected from the prediction.
        let checked = |label: &str| format!("const done = arguments[arguments.length - 1]; const el = document.querySelector('input.ant-radio-input[name=\"{label}\"]'); done(el && el.checked ? true : null);");
        b.until(&format!("the gate's label {} pre-selected", first.predicted_label), &checked(&first.predicted_label)).await;
        let page = b.client.source().await.unwrap();
        assert!(page.contains(&format!("The gate suggests: {}", first.predicted_label)), "the header names the gate's guess");
        std::fs::write(shots.join("review-task.png"), b.client.screenshot().await.unwrap()).unwrap();
        // The reviewer's choice (a click on its label, as a person does), then Submit.
        b.until(
            "the reviewer's choice clicked",
            &format!("const done = arguments[arguments.length - 1]; const el = document.querySelector('input.ant-radio-input[name=\"{chosen}\"]'); if (el) {{ el.closest('label').click(); }} done(el && el.checked ? true : null);"),
        )
        .await;
        let t0 = Instant::now();
        for attempt in 0.. {
            // A re-render between finding the button and clicking it makes the element stale.
            match b.wait_css("button[data-testid=\"bottombar-submit-button\"]").await.click().await {
                Ok(()) => break,
                Err(e) if attempt < 5 => eprintln!("submit click retried: {e}"),
                Err(e) => panic!("cannot click Submit: {e}"),
            }
        }
        let arrived = reader.wait(&first.sample_id, &chosen, Duration::from_secs(20));
        std::fs::write(shots.join("review-submitted.png"), b.client.screenshot().await.unwrap()).unwrap();
        b.client.clone().close().await.unwrap();
        arrived.duration_since(t0)
    });
    eprintln!("UI submit → annotations.reviews in {:.3} s (screenshots in {})", submitted.as_secs_f64(), shots.display());
    assert!(submitted <= Duration::from_secs(2), "webhook path took {submitted:?}");
    let admin = var("LABEL_STUDIO_ADMIN");
    assert!(reader.all().iter().any(|r| r["sample_id"] == first.sample_id.as_str() && r["final_label"] == chosen.as_str() && r["reviewer"] == admin.as_str()));

    // Reviewers answer the rest of the slipping vendor's suspects through the API; the gate counts
    // each once and its realised suspect precision is the share whose label was really wrong.
    let mut finals = vec![(first, chosen.clone())];
    for s in &slipping[1..] {
        let label = set.classes[truth[index[s.sample_id.as_str()]] as usize].clone();
        studio.annotate(task_of(s), &label, false);
        finals.push((s, label));
    }
    let wrong = finals.iter().filter(|(s, f)| *f != s.label).count();
    let counted = format!("labelgate_reviews_total{{result=\"confirmed_wrong\",vendor=\"slipping\"}} {wrong}");
    let mut m = String::new();
    wait_for("every review counted by the gate", Duration::from_secs(120), || {
        m = metrics(gate_port);
        m.lines().any(|l| l == counted) && sample(&m, "labelgate_reviews_total{result=\"label_correct\",vendor=\"slipping\"}").unwrap_or(0.0) == (finals.len() - wrong) as f64
    });
    let precision = sample(&m, "labelgate_vendor_suspect_precision_ratio{vendor=\"slipping\"}").expect("precision gauge");
    eprintln!("slipping: {} suspects reviewed in Label Studio, {wrong} really wrong: realised precision {precision:.4}", finals.len());
    assert!((precision - wrong as f64 / finals.len() as f64).abs() < 1e-9, "precision {precision}");
}
