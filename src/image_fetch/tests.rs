//! The fetcher against a real HTTP server on loopback (axum, in-process) and real files.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use super::*;

/// What the server saw: every path requested, and the most requests in flight at once.
#[derive(Default)]
struct Seen {
    paths: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

async fn serve(State(seen): State<Arc<Seen>>, Path(path): Path<String>) -> Response {
    seen.paths.lock().unwrap().push(path.clone());
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.most_in_flight.fetch_max(now, Ordering::SeqCst);
    let response = match path.as_str() {
        p if p.starts_with("img") => {
            tokio::time::sleep(Duration::from_millis(20)).await;
            p.as_bytes().to_vec().into_response()
        }
        "missing" => StatusCode::NOT_FOUND.into_response(),
        "gone" => StatusCode::GONE.into_response(),
        "secret" => StatusCode::FORBIDDEN.into_response(),
        "bad-request" => StatusCode::BAD_REQUEST.into_response(),
        "broken" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "busy" => StatusCode::TOO_MANY_REQUESTS.into_response(),
        "big" => vec![0u8; 5000].into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "late".into_response()
        }
        "hop" => (StatusCode::FOUND, [(header::LOCATION, "/img-after-hop")]).into_response(),
        "away" => (StatusCode::FOUND, [(header::LOCATION, "http://localhost:1/img-elsewhere")]).into_response(),
        "loop" => (StatusCode::FOUND, [(header::LOCATION, "/loop")]).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    };
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

/// A server on 127.0.0.1 on a thread of its own; its port and what it saw.
fn server() -> (u16, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new().route("/{*path}", get(serve)).with_state(seen.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move { axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await.unwrap() });
    });
    (port, seen)
}

fn fetcher(hosts: &[String], file_root: Option<PathBuf>, concurrency: usize) -> ImageFetcher {
    ImageFetcher::new(&ImageFetchConfig { allowed_hosts: hosts.to_vec(), file_root, max_bytes: 4096, timeout_secs: 1, concurrency }).unwrap()
}

fn reason(f: &Fetched) -> Option<DlqReason> {
    match f {
        Fetched::Refused { reason, .. } => Some(*reason),
        _ => None,
    }
}

#[test]
fn answers_are_sorted_into_bytes_refusals_and_outages() {
    let (port, seen) = server();
    let f = fetcher(&[format!("127.0.0.1:{port}")], None, 4);
    let at = |p: &str| format!("http://127.0.0.1:{port}/{p}");
    let uris: Vec<String> = ["img-a", "missing", "gone", "secret", "bad-request", "broken", "busy", "big", "hop", "away", "loop"].iter().map(|p| at(p)).collect();
    let got = f.fetch_all(&uris, &|| (), &|f| f);
    assert_eq!(got[0], Fetched::Bytes(b"img-a".to_vec()));
    assert_eq!(reason(&got[1]), Some(DlqReason::ImageNotFound));
    assert_eq!(reason(&got[2]), Some(DlqReason::ImageNotFound));
    assert_eq!(reason(&got[3]), Some(DlqReason::ImageForbidden));
    assert_eq!(reason(&got[4]), Some(DlqReason::ImageFetchFailed));
    assert!(matches!(got[5], Fetched::Unavailable(_)), "a 5xx is an outage: {:?}", got[5]);
    assert!(matches!(got[6], Fetched::Unavailable(_)), "throttling is an outage: {:?}", got[6]);
    assert_eq!(reason(&got[7]), Some(DlqReason::ImageTooLarge));
    assert_eq!(got[8], Fetched::Bytes(b"img-after-hop".to_vec()), "a redirect within the host is followed");
    assert_eq!(reason(&got[9]), Some(DlqReason::ImageHostNotAllowed), "a redirect to another host is not");
    assert_eq!(reason(&got[10]), Some(DlqReason::ImageFetchFailed));
    assert!(!seen.paths.lock().unwrap().iter().any(|p| p == "img-elsewhere"));
}

#[test]
fn a_host_not_on_the_list_is_never_requested() {
    let (port, seen) = server();
    let f = fetcher(&[format!("127.0.0.1:{port}")], None, 4);
    // The same server under another name, and the listed address on another port.
    let got = f.fetch_all(&[format!("http://localhost:{port}/img-unlisted"), format!("http://127.0.0.1:{}/img-other-port", port.wrapping_add(1))], &|| (), &|f| f);
    assert!(got.iter().all(|g| reason(g) == Some(DlqReason::ImageHostNotAllowed)), "{got:?}");
    assert!(seen.paths.lock().unwrap().is_empty(), "{:?}", seen.paths.lock().unwrap());
}

#[test]
fn a_listed_name_that_resolves_to_an_unlisted_private_address_is_not_connected_to() {
    let (port, seen) = server();
    // `localhost` is listed, but its address (loopback) is not.
    let f = fetcher(&["localhost".into()], None, 4);
    let got = f.fetch_all(&[format!("http://localhost:{port}/img-private")], &|| (), &|f| f);
    assert_eq!(reason(&got[0]), Some(DlqReason::ImageHostNotAllowed), "{got:?}");
    assert!(matches!(&got[0], Fetched::Refused { message, .. } if message.contains("private")));
    assert!(seen.paths.lock().unwrap().is_empty());
    // Listing the address lets the name through.
    let f = fetcher(&["localhost".into(), "127.0.0.1".into()], None, 4);
    assert_eq!(f.fetch_all(&[format!("http://localhost:{port}/img-listed")], &|| (), &|f| f)[0], Fetched::Bytes(b"img-listed".to_vec()));
}

#[test]
fn a_host_that_is_away_or_slow_is_an_outage() {
    let (port, _) = server();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let f = fetcher(&[format!("127.0.0.1:{port}"), format!("127.0.0.1:{closed}")], None, 4);
    let got = f.fetch_all(&[format!("http://127.0.0.1:{port}/slow"), format!("http://127.0.0.1:{closed}/img")], &|| (), &|f| f);
    assert!(got.iter().all(|g| matches!(g, Fetched::Unavailable(_))), "{got:?}");
}

#[test]
fn an_origin_that_does_not_answer_is_asked_once_per_call() {
    let (port, seen) = server();
    let f = fetcher(&[format!("127.0.0.1:{port}")], None, 1);
    let uris: Vec<String> = (0..8).map(|_| format!("http://127.0.0.1:{port}/slow")).collect();
    let started = std::time::Instant::now();
    let got = f.fetch_all(&uris, &|| (), &|f| f);
    assert!(got.iter().all(|g| matches!(g, Fetched::Unavailable(_))), "{got:?}");
    assert_eq!(seen.paths.lock().unwrap().len(), 1, "the others wait for the next try");
    assert!(started.elapsed() < Duration::from_secs(3), "one timeout, not eight: {:?}", started.elapsed());
}

#[test]
fn requests_in_flight_stay_within_the_bound_and_answers_keep_their_order() {
    let (port, seen) = server();
    let f = fetcher(&[format!("127.0.0.1:{port}")], None, 3);
    let uris: Vec<String> = (0..24).map(|i| format!("http://127.0.0.1:{port}/img-{i}")).collect();
    let got = f.fetch_all(&uris, &|| (), &|f| f);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, &Fetched::Bytes(format!("img-{i}").into_bytes()));
    }
    let most = seen.most_in_flight.load(Ordering::SeqCst);
    assert!((2..=3).contains(&most), "{most} requests in flight at once, bound 3");
}

#[test]
fn files_are_read_under_the_root_only() {
    let dir = std::env::temp_dir().join(format!("labelgate-fetch-{}", std::process::id()));
    let root = dir.join("images");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.png"), b"png bytes").unwrap();
    std::fs::write(root.join("big.png"), vec![1u8; 5000]).unwrap();
    std::fs::write(dir.join("outside.png"), b"secret").unwrap();
    let file = |p: &std::path::Path| Url::from_file_path(p).unwrap().to_string();
    let f = fetcher(&[], Some(root.clone()), 2);
    let got = f.fetch_all(&[file(&root.join("a.png")), file(&root.join("nope.png")), file(&root.join("big.png")), format!("file://{}/../outside.png", root.display()), file(&root)], &|| (), &|f| f);
    assert_eq!(got[0], Fetched::Bytes(b"png bytes".to_vec()));
    assert_eq!(reason(&got[1]), Some(DlqReason::ImageNotFound));
    assert_eq!(reason(&got[2]), Some(DlqReason::ImageTooLarge));
    assert_eq!(reason(&got[3]), Some(DlqReason::ImageHostNotAllowed));
    assert_eq!(reason(&got[4]), Some(DlqReason::ImageNotFound), "a directory is no image file");
    // A FIFO (or any file that is not regular) is refused before it is opened.
    if std::process::Command::new("mkfifo").arg(root.join("pipe.png")).status().is_ok_and(|s| s.success()) {
        assert_eq!(reason(&f.fetch_all(&[file(&root.join("pipe.png"))], &|| (), &|f| f)[0]), Some(DlqReason::ImageNotFound));
    }
    // No root configured: file URIs are refused; a root that is not mounted is an outage.
    assert_eq!(reason(&fetcher(&[], None, 2).fetch_all(&[file(&root.join("a.png"))], &|| (), &|f| f)[0]), Some(DlqReason::ImageHostNotAllowed));
    let unmounted = fetcher(&[], Some(dir.join("unmounted")), 2).fetch_all(&[file(&dir.join("unmounted/a.png"))], &|| (), &|f| f);
    assert!(matches!(unmounted[0], Fetched::Unavailable(_)), "{unmounted:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
