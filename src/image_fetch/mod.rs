//! Fetching the images that records name by URI (`image.uri`): http(s) from allow-listed hosts,
//! `file://` under a root. Each answer is sorted into the file's bytes, a permanent refusal with
//! its dead-letter reason, or an outage that the gate waits out (never a dead letter).

mod policy;
#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use futures_util::{stream, StreamExt as _};
use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    redirect, StatusCode, Url,
};
use serde::{Deserialize, Serialize};

use crate::wire::DlqReason;
pub use policy::{is_private, AllowList};

/// How the gate fetches the images records name by URI (`image.uri`): an allow-list of hosts,
/// a root for `file://`, and bounds on size, time and concurrency.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFetchConfig {
    /// Hosts whose http(s) URIs are fetched: a name or an address, with `:port` for one port
    /// only. Any other host is never requested (DLQ `image_host_not_allowed`). A name that
    /// resolves to a private, loopback or link-local address is refused unless that address is
    /// listed too.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// `file://` URIs are read only under this directory; unset = refused.
    #[serde(default)]
    pub file_root: Option<PathBuf>,
    /// Largest image file, in bytes; larger: DLQ `image_too_large`.
    pub max_bytes: u64,
    /// How long one request may take before the host counts as away (and is retried).
    pub timeout_secs: u64,
    /// Requests in flight at once (over all hosts).
    pub concurrency: usize,
}

/// What fetching one URI came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Bytes(Vec<u8>),
    /// A failure no retry fixes: the record goes to the DLQ with this reason.
    Refused {
        reason: DlqReason,
        message: String,
    },
    /// The host (or the file root) is away, or answered this URI with an error a later try may
    /// pass (5xx, 429): the gate holds the record and retries.
    Unavailable(String),
}

/// Where a URI is fetched from (scheme, host and port; `file` for files): the unit that is up
/// or away.
pub fn origin(uri: &str) -> String {
    match Url::parse(uri) {
        Ok(url) if url.scheme() == "file" => "file".into(),
        Ok(url) => format!("{}://{}:{}", url.scheme(), url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(0)),
        Err(_) => String::new(),
    }
}

fn refused(reason: DlqReason, message: impl Into<String>) -> Fetched {
    Fetched::Refused { reason, message: message.into() }
}

/// Redirects followed within one URI, all to its own host.
const MAX_REDIRECTS: usize = 5;

/// Fetches image URIs under [`ImageFetchConfig`]'s rules, a bounded number at a time, on a
/// runtime of its own (the gate loop and the offline commands are blocking code).
pub struct ImageFetcher {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    allowed: Arc<AllowList>,
    file_root: Option<PathBuf>,
    max_bytes: u64,
    timeout: Duration,
    concurrency: usize,
}

impl ImageFetcher {
    pub fn new(config: &ImageFetchConfig) -> Result<Self> {
        let allowed = Arc::new(AllowList::parse(&config.allowed_hosts).map_err(anyhow::Error::msg)?);
        let client = reqwest::Client::builder()
            // The addresses checked must be the addresses connected to: no proxy in between.
            .no_proxy()
            .dns_resolver(Arc::new(ListedOrPublic(allowed.clone())))
            .redirect(redirect::Policy::custom(|attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
                } else if attempt.previous().first().is_some_and(|first| same_origin(first, attempt.url())) {
                    attempt.follow()
                } else {
                    // Answered as the redirect itself, which `fetch_http` refuses.
                    attempt.stop()
                }
            }))
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(Duration::from_secs(config.timeout_secs))
            .user_agent(concat!("labelgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the image fetcher's HTTP client")?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("labelgate-fetch").enable_all().build()?;
        Ok(Self {
            runtime,
            client,
            allowed,
            file_root: config.file_root.clone(),
            max_bytes: config.max_bytes,
            timeout: Duration::from_secs(config.timeout_secs),
            concurrency: config.concurrency.max(1),
        })
    }

    /// Fetches every URI, at most `image_fetch.concurrency` at once, and hands each answer to
    /// `convert` as it comes (so only the files in flight are held, not every body of a batch);
    /// results in the URIs' order. Once an origin does not answer (no connection, or a timeout),
    /// its remaining URIs are not requested in this call: they are `Unavailable` at once, so a
    /// host that is away costs one timeout, not one per image. `alive` is called every second
    /// meanwhile (the gate loop is working, not stuck).
    pub fn fetch_all<T: Send>(&self, uris: &[String], alive: &dyn Fn(), convert: &(dyn Fn(Fetched) -> T + Sync)) -> Vec<T> {
        let away = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
        self.runtime.block_on(async {
            let fetches = stream::iter(uris).map(|uri| self.fetch_unless_away(uri, &away, convert)).buffered(self.concurrency).collect::<Vec<_>>();
            tokio::pin!(fetches);
            let mut second = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    answers = &mut fetches => return answers,
                    _ = second.tick() => alive(),
                }
            }
        })
    }

    /// One URI's answer through `convert`, unless its origin is in `away` already; an origin that
    /// does not answer joins `away`.
    async fn fetch_unless_away<T>(&self, uri: &str, away: &std::sync::Mutex<std::collections::HashSet<String>>, convert: &(dyn Fn(Fetched) -> T + Sync)) -> T {
        let origin = origin(uri);
        if away.lock().unwrap().contains(&origin) {
            return convert(Fetched::Unavailable(format!("{origin} did not answer an earlier request; not asked again until the next try")));
        }
        let (answer, host_away) = self.fetch(uri).await;
        if host_away {
            away.lock().unwrap().insert(origin);
        }
        convert(answer)
    }

    /// One URI's answer, and whether its origin did not answer at all.
    async fn fetch(&self, uri: &str) -> (Fetched, bool) {
        let Ok(url) = Url::parse(uri) else { return (refused(DlqReason::InvalidImage, "`image.uri` is not a URI"), false) };
        match url.scheme() {
            "http" | "https" => self.fetch_http(url).await,
            "file" => (self.read_file(&url).await, false),
            other => (refused(DlqReason::InvalidImage, format!("`image.uri` scheme `{other}`: use https, http or file")), false),
        }
    }

    async fn fetch_http(&self, url: Url) -> (Fetched, bool) {
        if !self.allowed.allows(&url) {
            return (refused(DlqReason::ImageHostNotAllowed, format!("host `{}` is not on image_fetch.allowed_hosts", host_port(&url))), false);
        }
        let mut response = match self.client.get(url.clone()).send().await {
            Ok(r) => r,
            Err(e) => return from_error(&e),
        };
        let status = response.status();
        if status.is_redirection() {
            let to = response.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()).and_then(|l| url.join(l).ok());
            return match to {
                Some(to) => {
                    (refused(DlqReason::ImageHostNotAllowed, format!("HTTP {} redirects to `{}`: redirects are followed within the URI's own host only", status.as_u16(), host_port(&to))), false)
                }
                None => (refused(DlqReason::ImageFetchFailed, format!("HTTP {} without a usable Location", status.as_u16())), false),
            };
        }
        if let Some(failed) = from_status(status) {
            return (failed, false);
        }
        if let Some(length) = response.content_length().filter(|&n| n > self.max_bytes) {
            return (refused(DlqReason::ImageTooLarge, format!("{length} bytes, limit {} (image_fetch.max_bytes)", self.max_bytes)), false);
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if (body.len() + chunk.len()) as u64 > self.max_bytes => {
                    return (refused(DlqReason::ImageTooLarge, format!("over {} bytes (image_fetch.max_bytes)", self.max_bytes)), false);
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return (Fetched::Bytes(body), false),
                Err(e) => return from_error(&e),
            }
        }
    }

    async fn read_file(&self, url: &Url) -> Fetched {
        let Some(root) = self.file_root.clone() else {
            return refused(DlqReason::ImageHostNotAllowed, "file URIs are read only under image_fetch.file_root, which is not set");
        };
        let Ok(path) = url.to_file_path() else { return refused(DlqReason::ImageHostNotAllowed, "a file URI names a path on this machine (file:///…), not on another host") };
        let (max_bytes, timeout) = (self.max_bytes, self.timeout);
        // A hung network mount never answers a read: bounded like a request.
        match tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || read_under_root(&root, &path, max_bytes))).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => Fetched::Unavailable(format!("reading the file: {e}")),
            Err(_) => Fetched::Unavailable(format!("reading the file took over {} s (image_fetch.timeout_secs)", timeout.as_secs())),
        }
    }
}

/// Where a redirect may lead: the same host and port, or the same host upgraded from http to
/// https on its default port.
fn same_origin(a: &Url, b: &Url) -> bool {
    let same = a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default();
    let upgraded = a.scheme() == "http" && b.scheme() == "https" && a.host_str() == b.host_str() && a.port().is_none() && b.port().is_none();
    same || upgraded
}

/// `host` or `host:port` of a URL, for messages.
fn host_port(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    }
}

/// A status that ends the fetch: a refusal for client errors a retry cannot fix, an outage for
/// server errors and for timeouts and throttling a later try may pass.
fn from_status(status: StatusCode) -> Option<Fetched> {
    let code = status.as_u16();
    let reason = match code {
        200..=299 => return None,
        404 | 410 => DlqReason::ImageNotFound,
        401 | 403 => DlqReason::ImageForbidden,
        413 => DlqReason::ImageTooLarge,
        408 | 425 | 429 => return Some(Fetched::Unavailable(format!("HTTP {code}"))),
        400..=499 => DlqReason::ImageFetchFailed,
        _ => return Some(Fetched::Unavailable(format!("HTTP {code}"))),
    };
    Some(refused(reason, format!("HTTP {code}")))
}

/// A request that failed without an answer, and whether its host is away: an outage (refused or
/// reset connections, timeouts, names that do not resolve, TLS failures), unless the resolver
/// refused a private address or the redirects looped.
fn from_error(e: &reqwest::Error) -> (Fetched, bool) {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(private) = s.downcast_ref::<PrivateAddress>() {
            return (refused(DlqReason::ImageHostNotAllowed, private.to_string()), false);
        }
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_redirect() {
        return (refused(DlqReason::ImageFetchFailed, chain), false);
    }
    (Fetched::Unavailable(chain), e.is_connect() || e.is_timeout())
}

/// Reads a file under `root`, refusing paths outside it and files over `max_bytes`.
fn read_under_root(root: &Path, path: &Path, max_bytes: u64) -> Fetched {
    use std::io::{ErrorKind, Read as _};
    let path = match policy::file_under_root(root, path) {
        policy::FilePath::Inside(p) => p,
        policy::FilePath::Outside => return refused(DlqReason::ImageHostNotAllowed, "the path is outside image_fetch.file_root"),
        policy::FilePath::Missing { root_present: true } => return refused(DlqReason::ImageNotFound, "no such file under image_fetch.file_root"),
        // A root that is not there, or empty, is a volume that is not mounted: wait for it.
        policy::FilePath::Missing { root_present: false } => return Fetched::Unavailable(format!("image_fetch.file_root {} is not there, or empty (a volume not mounted?)", root.display())),
        policy::FilePath::Unreadable(e) => return Fetched::Unavailable(format!("resolving the path: {e}")),
    };
    let io = |e: std::io::Error| match e.kind() {
        ErrorKind::PermissionDenied => refused(DlqReason::ImageForbidden, "the gate may not read the file"),
        ErrorKind::NotFound => refused(DlqReason::ImageNotFound, "no such file under image_fetch.file_root"),
        _ => Fetched::Unavailable(format!("reading the file: {e}")),
    };
    // Checked before opening: opening a FIFO or a device could block or read forever.
    match std::fs::metadata(&path) {
        Ok(m) if !m.is_file() => return refused(DlqReason::ImageNotFound, "the path is not a regular file"),
        Ok(m) if m.len() > max_bytes => return refused(DlqReason::ImageTooLarge, format!("{} bytes, limit {max_bytes} (image_fetch.max_bytes)", m.len())),
        Ok(_) => {}
        Err(e) => return io(e),
    }
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return io(e),
    };
    let mut bytes = Vec::new();
    match file.take(max_bytes + 1).read_to_end(&mut bytes) {
        Ok(_) if bytes.len() as u64 > max_bytes => refused(DlqReason::ImageTooLarge, format!("over {max_bytes} bytes (image_fetch.max_bytes)")),
        Ok(_) => Fetched::Bytes(bytes),
        Err(e) => io(e),
    }
}

/// A name that resolves to private addresses only, none of them listed.
#[derive(Debug)]
struct PrivateAddress {
    host: String,
    addresses: Vec<std::net::IpAddr>,
}

impl std::fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addresses: Vec<String> = self.addresses.iter().map(|a| a.to_string()).collect();
        write!(f, "`{}` resolves to private addresses only ({}); list the address in image_fetch.allowed_hosts to allow it", self.host, addresses.join(", "))
    }
}

impl std::error::Error for PrivateAddress {}

/// The resolver of the fetcher's client: the addresses a name resolves to, less the private ones
/// that are not listed, so a name cannot lead into the network behind the gate (even one whose
/// DNS answer changes between a check and the connection: this is the answer connected to).
struct ListedOrPublic(Arc<AllowList>);

impl Resolve for ListedOrPublic {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = found.iter().copied().filter(|a| allowed.may_connect(a.ip())).collect();
            if usable.is_empty() && !found.is_empty() {
                return Err(Box::new(PrivateAddress { host, addresses: found.iter().map(|a| a.ip()).collect() }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(usable.into_iter()) as Addrs)
        })
    }
}
