//! Which image URIs the gate may fetch: hosts on the allow-list only, never a private address
//! that is not itself listed, and files only under the configured root. Pure decisions on parsed
//! URIs and addresses; the fetcher applies them before and during each request.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use reqwest::Url;

/// One entry of `image_fetch.allowed_hosts`: a host name or address, with or without a port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostEntry {
    host: String,
    /// `None`: any port of the host.
    port: Option<u16>,
}

/// The hosts (and addresses) image URIs may name.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    hosts: Vec<HostEntry>,
    /// Addresses written on the list: the only private addresses the fetcher connects to.
    listed_addresses: HashSet<IpAddr>,
}

impl AllowList {
    /// Parses `image_fetch.allowed_hosts`; an entry that is no host names itself in the error.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut list = AllowList::default();
        for entry in entries {
            let refused =
                || format!("image_fetch.allowed_hosts: `{entry}` is not a host; write a name or an address, with `:port` to allow one port only (e.g. \"images.example.com\", \"127.0.0.1:8080\")");
            // Parsed as the authority of a URL, as the URIs it is compared with are.
            if entry.is_empty() || entry.contains(['/', '@', '?', '#']) || entry.contains(char::is_whitespace) {
                return Err(refused());
            }
            let url = Url::parse(&format!("http://{entry}/")).map_err(|_| refused())?;
            let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(refused)?.to_ascii_lowercase();
            // The URL elides the scheme's default port; a listed `:80` still means port 80 only.
            let port = url.port().or_else(|| entry.ends_with(":80").then_some(80));
            if let Some(ip) = host_address(&url) {
                list.listed_addresses.insert(ip);
            }
            list.hosts.push(HostEntry { host, port });
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Whether `url`'s host (and port) is listed.
    pub fn allows(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return false };
        self.hosts.iter().any(|e| e.host.eq_ignore_ascii_case(host) && e.port.is_none_or(|p| p == port))
    }

    /// Whether the fetcher may connect to `ip`: a public address, or one written on the list.
    pub fn may_connect(&self, ip: IpAddr) -> bool {
        !is_private(ip) || self.listed_addresses.contains(&canonical(ip))
    }
}

/// The address a URL names directly, if its host is an address.
pub fn host_address(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(canonical(IpAddr::V6(a))),
        url::Host::Domain(_) => None,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, private, link-local (cloud metadata lives there), shared (CGNAT), unspecified,
/// broadcast and documentation ranges, and their IPv6 counterparts: addresses inside a network
/// that a vendor's URI must not reach.
pub fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => is_private_v4(a),
        IpAddr::V6(a) => is_private_v6(a),
    }
}

fn is_private_v4(a: Ipv4Addr) -> bool {
    let [first, second, ..] = a.octets();
    a.is_private()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_documentation()
        || first == 0
        // 100.64.0.0/10: carrier-grade NAT, inside a provider's network.
        || (first == 100 && (64..128).contains(&second))
        // 198.18.0.0/15: benchmarking networks.
        || (first == 198 && (18..20).contains(&second))
        // Multicast and the reserved 240.0.0.0/4.
        || first >= 224
}

fn is_private_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    // IPv4 inside IPv6 (NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16, IPv4-compatible
    // ::/96) reaches that IPv4 address: judged as it.
    let embedded = |hi: u16, lo: u16| is_private_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
    if (s[0], s[1]) == (0x64, 0xff9b) || (s[0] == 0 && s[1..6] == [0; 5]) {
        return embedded(s[6], s[7]);
    }
    if s[0] == 0x2002 {
        return embedded(s[1], s[2]);
    }
    a.is_loopback()
        || a.is_unspecified()
        || a.is_unique_local()
        || a.is_unicast_link_local()
        || a.is_multicast()
        // fec0::/10 (site-local, deprecated but routed inside some networks), 2001:db8::/32.
        || (s[0] & 0xffc0) == 0xfec0
        || (s[0], s[1]) == (0x2001, 0x0db8)
}

/// Why a file URI is refused, or the path to read.
#[derive(Debug, PartialEq, Eq)]
pub enum FilePath {
    /// Under the root, resolved (symbolic links followed).
    Inside(PathBuf),
    /// Outside the root (or through a link that leads out of it).
    Outside,
    /// The path does not exist; `root_present` tells a missing file from a root that is missing
    /// or empty (an unmounted volume is an outage, not a bad record).
    Missing { root_present: bool },
    /// The file system did not say (an I/O error, a stale mount): an outage.
    Unreadable(String),
}

/// Resolves `path` and checks it lies under `root` (itself resolved), so `..` and symbolic links
/// cannot lead out of it.
pub fn file_under_root(root: &Path, path: &Path) -> FilePath {
    let given_root = root;
    let root = match root.canonicalize() {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FilePath::Missing { root_present: false },
        Err(e) => return FilePath::Unreadable(e.to_string()),
    };
    match path.canonicalize() {
        Ok(resolved) if resolved.starts_with(&root) => FilePath::Inside(resolved),
        Ok(_) => FilePath::Outside,
        // A path outside the root is refused whether or not it exists (the root as configured
        // or resolved: either may be a link).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !lexically_under(&root, path) && !lexically_under(given_root, path) {
                FilePath::Outside
            } else {
                let empty = std::fs::read_dir(&root).map(|mut d| d.next().is_none()).unwrap_or(true);
                FilePath::Missing { root_present: !empty }
            }
        }
        Err(e) => FilePath::Unreadable(e.to_string()),
    }
}

/// `path` starts with `root` once `.` and `..` are taken out (no file system access).
fn lexically_under(root: &Path, path: &Path) -> bool {
    let mut parts: Vec<std::path::Component> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::CurDir => {}
            c => parts.push(c),
        }
    }
    parts.iter().collect::<PathBuf>().starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn only_listed_hosts_and_ports_are_allowed() {
        let list = AllowList::parse(&["images.example.com".into(), "127.0.0.1:8080".into(), "[::1]:9000".into()]).unwrap();
        assert!(list.allows(&url("https://images.example.com/a.png")));
        assert!(list.allows(&url("http://IMAGES.example.com:81/a.png")), "a name without a port allows any port");
        assert!(list.allows(&url("http://127.0.0.1:8080/a.png")));
        assert!(!list.allows(&url("http://127.0.0.1:8081/a.png")), "a listed port allows that port only");
        assert!(!list.allows(&url("http://localhost:8080/a.png")), "the same server under another name is not listed");
        assert!(!list.allows(&url("https://images.example.com.evil.net/a.png")));
        assert!(list.allows(&url("http://[::1]:9000/x")));
    }

    #[test]
    fn entries_that_are_no_hosts_are_refused_with_the_key() {
        for bad in ["", "http://x", "a b", "user@host", "host/path"] {
            let e = AllowList::parse(&[bad.to_string()]).unwrap_err();
            assert!(e.starts_with("image_fetch.allowed_hosts"), "{bad}: {e}");
        }
    }

    #[test]
    fn private_addresses_are_refused_unless_listed() {
        let list = AllowList::parse(&["images.example.com".into(), "10.0.0.5".into()]).unwrap();
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::",
            "::10.0.0.1",
        ] {
            assert!(!list.may_connect(private.parse().unwrap()), "{private}");
        }
        assert!(list.may_connect("10.0.0.5".parse().unwrap()), "a listed private address");
        assert!(list.may_connect("93.184.216.34".parse().unwrap()));
        assert!(list.may_connect("2606:2800:220:1:248:1893:25c8:1946".parse().unwrap()));
        assert!(list.may_connect("64:ff9b::5db8:d822".parse().unwrap()), "NAT64 of a public address");
    }

    #[test]
    fn files_must_lie_under_the_root() {
        let dir = std::env::temp_dir().join(format!("labelgate-policy-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("a.png"), b"x").unwrap();
        std::fs::write(dir.join("secret"), b"x").unwrap();
        assert!(matches!(file_under_root(&root, &root.join("a.png")), FilePath::Inside(_)));
        assert_eq!(file_under_root(&root, &root.join("../secret")), FilePath::Outside);
        assert_eq!(file_under_root(&root, &root.join("../missing")), FilePath::Outside);
        assert_eq!(file_under_root(&root, &root.join("missing.png")), FilePath::Missing { root_present: true });
        assert_eq!(file_under_root(&dir.join("unmounted"), &dir.join("unmounted/a.png")), FilePath::Missing { root_present: false });
        // An empty mount point is a volume that is not mounted, not a root without the file.
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        assert_eq!(file_under_root(&dir.join("empty"), &dir.join("empty/a.png")), FilePath::Missing { root_present: false });
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.join("secret"), root.join("link")).unwrap();
            assert_eq!(file_under_root(&root, &root.join("link")), FilePath::Outside, "a link out of the root");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
