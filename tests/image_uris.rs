//! Images named by URI, on the real broker and Redis, from a real HTTP server (Python's
//! `http.server`, its access log kept): 10,000 MNIST images as PNG files. The server is SIGKILLed
//! for 30 s mid-stream: the gate holds its input (not ready, still live) and goes on when the
//! server is back, so no record is lost or dead-lettered for the outage and each delivery gets
//! one verdict. URIs to missing files go to the DLQ with the URI in a header; URIs to a host not
//! on the allow-list are never requested, as the server's log shows.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    kafka::{gate_command, produce, routed, test_config},
    process::{http_get, reserve_port, sample, wait_for, KillOnDrop},
};
use labelgate::{data::mnist, noise::NoiseModel, service, wire::VerdictMessage};
use rdkafka::{message::Headers, Message};
use serde_json::json;

const IMAGES: usize = 10_000;
const PER_DELIVERY: usize = 1_000;
const VENDORS: [(&str, f64); 3] = [("acme-labels", 0.05), ("bolt-annotate", 0.15), ("crux-crowd", 0.30)];
const MISSING: usize = 20;
const UNLISTED: usize = 5;
const OUTAGE: Duration = Duration::from_secs(30);

fn write_png(path: &Path, pixels: &[u8]) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(file, 28, 28);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(pixels).unwrap();
}

/// Python's `http.server` (threaded) on `port` serving `dir`, its access log appended to `log`.
/// Its listen backlog is raised from 5 to what a web server has: with 5, connections the gate
/// opens side by side are dropped and retried a second later by the kernel.
const SERVER: &str = "import functools, http.server, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
Server(('127.0.0.1', int(sys.argv[1])), handler).serve_forever()";

fn http_server(port: u16, dir: &Path, log: &Path) -> KillOnDrop {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new("python3").args(["-u", "-c", SERVER, &port.to_string()]).arg(dir).stdout(Stdio::null()).stderr(log).spawn().expect("python3 (Debian package python3) on the PATH");
    wait_for("the image server to listen", Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    KillOnDrop(child)
}

fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[test]
fn ten_thousand_image_uris_survive_their_server_being_killed_for_30_s() {
    let dir: PathBuf = std::env::temp_dir().join(format!("labelgate-image-uris-{}", std::process::id()));
    let root = dir.join("images");
    std::fs::create_dir_all(&root).unwrap();
    let mut set = mnist::load(&common::data_dir(), "train").unwrap();
    set.truncate(IMAGES);
    for i in 0..IMAGES {
        let pixels: Vec<u8> = set.features[i * 784..(i + 1) * 784].iter().map(|v| (v * 255.0).round() as u8).collect();
        write_png(&root.join(format!("m{i}.png")), &pixels);
    }
    for i in 0..UNLISTED {
        std::fs::copy(root.join("m0.png"), root.join(format!("unlisted-{i}.png"))).unwrap();
    }
    let port = reserve_port();
    let log = dir.join("server.log");
    let mut server = http_server(port, &root, &log);

    // Ten deliveries from three vendors, each vendor's labels flipped at its rate.
    let truth = set.truth.clone().unwrap();
    let mut messages = Vec::new();
    let mut deliveries = Vec::new();
    for d in 0..IMAGES / PER_DELIVERY {
        let (vendor, rate) = VENDORS[d % VENDORS.len()];
        let batch = format!("{vendor}-{d}");
        let idx: Vec<usize> = (d * PER_DELIVERY..(d + 1) * PER_DELIVERY).collect();
        let slice: Vec<u32> = idx.iter().map(|&i| truth[i]).collect();
        for (&i, label) in idx.iter().zip(NoiseModel::Symmetric(rate).apply(&slice, 10, d as u64)) {
            let uri = format!("http://127.0.0.1:{port}/m{i}.png");
            messages.push((batch.clone(), json!({"sample_id": format!("m{i}"), "batch_id": batch, "vendor_id": vendor, "label": label.to_string(), "image": {"uri": uri}}).to_string()));
        }
        messages.push((batch.clone(), json!({"type": "batch_end", "batch_id": batch, "vendor_id": vendor, "count": PER_DELIVERY}).to_string()));
        deliveries.push(batch);
    }
    // Records whose image is not there, and records naming a host not on the list (the same
    // server under another name).
    let missing: Vec<String> = (0..MISSING).map(|i| format!("http://127.0.0.1:{port}/missing-{i}.png")).collect();
    let unlisted: Vec<String> = (0..UNLISTED).map(|i| format!("http://localhost:{port}/unlisted-{i}.png")).collect();
    for (i, uri) in missing.iter().chain(&unlisted).enumerate() {
        messages.push(("bad-1".into(), json!({"sample_id": format!("bad{i}"), "batch_id": "bad-1", "vendor_id": "v", "label": "3", "image": {"uri": uri}}).to_string()));
    }

    let config = test_config("image-uris", 784);
    tokio::runtime::Runtime::new().unwrap().block_on(service::ensure_topics(&config, 2)).unwrap();
    produce(&config, &messages);
    let http_port = reserve_port();
    let _gate = KillOnDrop(
        gate_command(&config)
            .env("LABELGATE__GATE__CLASSES", r#"["0","1","2","3","4","5","6","7","8","9"]"#)
            .env("LABELGATE__GATE__FEATURE_DIM", "784")
            .env("LABELGATE__GATE__IMAGE_SHAPE", "[28, 28, 1]")
            // A buffer little over a window: the input follows the windows, so the outage falls
            // mid-stream.
            .env("LABELGATE__GATE__MAX_BUFFERED_RECORDS", "4000")
            .env("LABELGATE__IMAGE_FETCH__ALLOWED_HOSTS", format!(r#"["127.0.0.1:{port}"]"#))
            .env("LABELGATE__IMAGE_FETCH__TIMEOUT_SECS", "5")
            .env("LABELGATE__METRICS__LISTEN", format!("127.0.0.1:{http_port}"))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let metrics = || http_get(http_port, "/metrics").map(|r| r.1).unwrap_or_default();
    let fetched = |m: &str| sample(m, "labelgate_image_fetches_total{outcome=\"fetched\"}").unwrap_or(0.0);

    // Mid-stream: kill the server for 30 s.
    wait_for("the first images fetched", Duration::from_secs(300), || fetched(&metrics()) >= 2000.0);
    let before = fetched(&metrics());
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let killed = Instant::now();
    let (mut not_ready, mut unhealthy) = (0, 0);
    while killed.elapsed() < OUTAGE {
        not_ready += (http_get(http_port, "/readyz").map(|r| r.0) == Some(503)) as usize;
        unhealthy += (http_get(http_port, "/healthz").map(|r| r.0) != Some(200)) as usize;
        std::thread::sleep(Duration::from_millis(500));
    }
    let during = metrics();
    eprintln!("{before} images fetched before the kill, {} at its end; {not_ready} of ~60 readiness probes said 503, {unhealthy} liveness probes failed", fetched(&during));
    assert!(fetched(&during) < IMAGES as f64, "the stream ended before the outage");
    assert!(sample(&during, "labelgate_image_fetches_total{outcome=\"unavailable\"}").unwrap_or(0.0) > 0.0, "the outage was met");
    assert!(not_ready > 0, "not ready while the image host is away");
    assert_eq!(unhealthy, 0, "waiting out a dependency is not a stuck gate");
    let _server = http_server(port, &root, &log);

    let mut last = String::new();
    wait_for("every verdict", Duration::from_secs(600), || {
        last = metrics();
        metric_sum(&last, "labelgate_deliveries_total{") == deliveries.len() as f64
    });
    assert_eq!(http_get(http_port, "/readyz").map(|r| r.0), Some(200), "ready again");

    // Every record in exactly one place: accepted, re-review, or the DLQ for a reason of its own.
    let (routed, suspects) = routed(&config);
    for s in &suspects {
        assert_eq!(s.image_uri.as_deref(), Some(format!("http://127.0.0.1:{port}/{}.png", s.sample_id).as_str()), "re-review links the image's URI");
        assert_eq!(s.image.as_ref().map(|i| i.shape), Some([28, 28, 1]), "and shows the pixels that were scored");
    }
    assert_eq!(routed.len(), IMAGES, "no record lost");
    assert!(routed.values().all(|&n| n == 1), "a record routed twice");
    let mut dead: Vec<(String, String)> = Vec::new();
    service::read_topic_messages(&config, &config.kafka.dlq_topic, |m| {
        let header = |name: &str| m.headers().unwrap().iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        dead.push((header("labelgate-error-class"), header("labelgate-image-uri")));
    })
    .unwrap();
    dead.sort();
    let mut want: Vec<(String, String)> =
        missing.iter().map(|u| ("image_not_found".to_string(), u.clone())).chain(unlisted.iter().map(|u| ("image_host_not_allowed".to_string(), u.clone()))).collect();
    want.sort();
    assert_eq!(dead, want, "only the missing files and the unlisted host in the DLQ, each with its URI; none for the outage");

    // One verdict per delivery.
    let mut verdicts: Vec<VerdictMessage> = Vec::new();
    service::read_topic(&config, &config.kafka.verdicts_topic, |_, v| verdicts.push(serde_json::from_slice(v).unwrap())).unwrap();
    let mut per_batch: HashMap<&str, usize> = HashMap::new();
    for v in &verdicts {
        *per_batch.entry(v.batch_id.as_str()).or_default() += 1;
        eprintln!("{}: estimated {:?} [{:?}, {:?}], {:?}", v.batch_id, v.estimated_accuracy, v.accuracy_ci_low, v.accuracy_ci_high, v.decision);
    }
    assert_eq!(per_batch.len(), deliveries.len());
    assert!(per_batch.values().all(|&n| n == 1), "{per_batch:?}");

    // The server never saw the unlisted host's paths, and did see the others.
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("GET /m0.png") && log.contains("GET /missing-0.png"), "the server's log records requests");
    assert!(!log.contains("unlisted-"), "a host not on the list was requested");
    std::fs::remove_dir_all(&dir).unwrap();
}
