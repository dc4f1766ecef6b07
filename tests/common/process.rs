//! Processes the tests start and talk to: reserved ports, HTTP GET, the metrics text format,
//! waiting on a condition, a Redis of a test's own, children that die with the test.

use std::{
    io::Write,
    process::{Command, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A port on 127.0.0.1 for a server the test starts. Binding port 0 and releasing it races with
/// every other port-0 bind on the machine (the kernel may hand the same port out again); these
/// come from below the kernel's ephemeral range (32768+), in a block of 32 of this process's own,
/// and are checked free, so neither another test process nor an outgoing connection takes them.
pub fn reserve_port() -> u16 {
    let block = 20_000 + (std::process::id() % 300) as u16 * 32;
    for _ in 0..32 {
        let port = block + NEXT_PORT.fetch_add(1, Ordering::SeqCst) % 32;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{block}..{}", block + 32);
}

/// GET over plain HTTP/1.1: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string())))
}

/// The value of one sample line `name{labels} value` in the text format.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// The value of `series` on the gate's `/metrics` at `port` (None while it does not answer).
pub fn scrape(port: u16, series: &str) -> Option<f64> {
    sample(&http_get(port, "/metrics")?.1, series)
}

pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A redis-server of this test's own, so stopping it does not disturb the other tests.
pub fn own_redis(port: u16) -> std::process::Child {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (Debian package redis-server) on the PATH");
    wait_for("redis-server to listen", Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    child
}

/// A child process that does not outlive a failed test.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output {
        let mut child = self.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the program on the PATH");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }
}
