//! Which MCP server addresses a request may make the gateway reach
//! (RELIABILITY.md SSRF-01..04).
//!
//! - `Guard::check` refuses a URL before any connection: not http(s),
//!   credentials in it, or a host that resolves to an internal address.
//! - `Resolver` is the DNS resolver of the MCP HTTP client: every
//!   connection (the first, and each redirect hop) resolves through it,
//!   and it hands back only addresses it has checked. A host is looked up
//!   once: the checked addresses are pinned for `PIN_TTL`, so the
//!   connection goes to the addresses `check` validated, and a DNS answer
//!   that changes in between (rebinding) is never asked for.
//! - `redirects` follows at most `MAX_REDIRECTS` hops, each on the same
//!   origin (scheme, host and port) as the URL before it, so the request's
//!   headers never reach another host and https is never downgraded; its
//!   shape is checked again.
//!
//! Hosts the operator allowlists (`mcp.allowed_hosts`: `host`, any port,
//! or `host:port`), and every host when `mcp.allow_private` is set, skip
//! the address checks. Servers the operator registered are reached by a
//! client of their own that skips them (`McpClient`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::McpError;

/// The most redirects one MCP HTTP request may follow.
pub const MAX_REDIRECTS: usize = 3;

/// How long a host's checked addresses are used without a new lookup.
const PIN_TTL: Duration = Duration::from_secs(60);

/// Checked addresses by host name.
type Pins = Arc<Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>>;

/// Which server addresses may be reached.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Allow loopback and private addresses everywhere (a gateway whose
    /// MCP servers all live on its own network; tests).
    pub allow_private: bool,
    /// `host` (any port) or `host:port` entries, lowercase, reached
    /// whatever they resolve to: internal MCP servers requests may name.
    pub allowed_hosts: Vec<String>,
    /// Addresses already looked up and checked.
    pub pins: Pins,
}

/// An IPv4 address no request may reach: this network, loopback, private,
/// shared (CGNAT), link-local (cloud metadata), IETF protocol assignments,
/// benchmarking, multicast, reserved and broadcast.
fn internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_multicast()
        || v4.is_broadcast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && v4.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b))
}

/// Whether an address is one a request must never make the gateway reach.
/// IPv6 forms that carry an IPv4 address (IPv4-mapped and -compatible,
/// 6to4, NAT64) are judged by the IPv4 address they carry.
pub fn internal(ip: IpAddr) -> bool {
    let v6 = match ip {
        IpAddr::V4(v4) => return internal_v4(v4),
        IpAddr::V6(v6) => v6,
    };
    let s = v6.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    // IPv4-compatible (::a.b.c.d, deprecated), SIIT (::ffff:0:a.b.c.d) and
    // NAT64 (64:ff9b::/96): the IPv4 address is the last 32 bits.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return internal_v4(embedded(s[6], s[7]));
    }
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return internal_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return internal_v4(embedded(s[6], s[7]));
    }
    // Local-use NAT64 (64:ff9b:1::/48) and Teredo (2001::/32) carry an
    // IPv4 address in forms that need not be public: refused whole.
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) || (s[0] == 0x2001 && s[1] == 0) {
        return true;
    }
    // 6to4 (2002::/16): the IPv4 address is bits 16..48.
    if s[0] == 0x2002 {
        return internal_v4(embedded(s[1], s[2]));
    }
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        // unique local (fc00::/7), link-local (fe80::/10), site-local (fec0::/10)
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        // documentation (2001:db8::/32) and discard-only (100::/64)
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] == 0x0100 && s[1..4] == [0; 3])
}

fn refused(message: String) -> McpError {
    McpError::Refused(message)
}

impl Guard {
    /// Whether the operator allowlisted this host (or every host): on
    /// `port`, or on any port when `port` is `None` (the resolver, which
    /// sees no port, for a URL whose port `check` already judged).
    pub fn trusted(&self, host: &str, port: Option<u16>) -> bool {
        if self.allow_private {
            return true;
        }
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.allowed_hosts.iter().any(|entry| {
            let (h, p) = match entry.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                    (h.trim_matches(['[', ']']), p.parse::<u16>().ok())
                }
                _ => (entry.trim_matches(['[', ']']), None),
            };
            h == host && (p.is_none() || port.is_none() || p == port)
        })
    }

    /// The URL's scheme and credentials, and its host if the host is a
    /// literal address (checked at once).
    pub fn check_shape(&self, url: &reqwest_mcp::Url) -> Result<(), McpError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused(format!("{url} is not an http(s) URL")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refused(
                "credentials in the URL are not accepted; use `authorization` or `headers`".into(),
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| refused(format!("{url} has no host")))?;
        if self.trusted(host, url.port_or_known_default()) {
            return Ok(());
        }
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            if internal(ip) {
                return Err(refused(format!(
                    "{ip} is an internal address the gateway does not reach"
                )));
            }
        }
        Ok(())
    }

    /// Checks a server URL before any connection: its shape, and every
    /// address its host resolves to.
    pub async fn check(&self, url: &str) -> Result<(), McpError> {
        let parsed = reqwest_mcp::Url::parse(url)
            .map_err(|e| refused(format!("{url:?} is not a URL ({e})")))?;
        self.check_shape(&parsed)?;
        let host = parsed.host_str().unwrap_or_default();
        if self.trusted(host, parsed.port_or_known_default()) {
            return Ok(());
        }
        self.resolve(
            host.trim_matches(['[', ']']),
            Some(parsed.port_or_known_default().unwrap_or(443)),
        )
        .await
        .map(drop)
    }

    /// The addresses of `host`, every one of them public: pinned ones, or
    /// looked up, checked and pinned. `port` is the URL's when `check`
    /// asks, so that a host allowlisted on one port is trusted on that
    /// port only; `None` for the client's resolver, which sees no port, for
    /// a URL that `check` has judged.
    async fn resolve(&self, host: &str, port: Option<u16>) -> Result<Vec<SocketAddr>, McpError> {
        let at = port.unwrap_or(0);
        let key = host.to_ascii_lowercase();
        let pinned = {
            let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
            pins.retain(|_, (at, _)| at.elapsed() < PIN_TTL);
            pins.get(&key).map(|(_, ips)| ips.clone())
        };
        if let Some(ips) = pinned {
            return Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, at)).collect());
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, at))
            .await
            .map_err(|e| refused(format!("{host} does not resolve ({e})")))?
            .collect();
        if addrs.is_empty() {
            return Err(refused(format!("{host} does not resolve")));
        }
        if self.trusted(host, port) {
            return Ok(addrs);
        }
        if let Some(a) = addrs.iter().find(|a| internal(a.ip())) {
            return Err(refused(format!(
                "{host} resolves to {}, an internal address the gateway does not reach",
                a.ip()
            )));
        }
        self.pins.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key,
            (Instant::now(), addrs.iter().map(SocketAddr::ip).collect()),
        );
        Ok(addrs)
    }

    /// The redirect policy of the MCP HTTP clients: same origin only, at
    /// most `MAX_REDIRECTS` hops, each checked (unless `trusting`: the
    /// client of the operator's registered servers).
    pub fn redirects(&self, trusting: bool) -> reqwest_mcp::redirect::Policy {
        let guard = self.clone();
        reqwest_mcp::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            let from = attempt.previous().last().map(reqwest_mcp::Url::origin);
            let to = attempt.url().origin();
            if from.is_some_and(|o| o != to) {
                let to = to.ascii_serialization();
                return attempt.error(format!(
                    "a redirect to another origin ({to}) is not followed"
                ));
            }
            if trusting {
                return attempt.follow();
            }
            match guard.check_shape(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e.to_string()),
            }
        })
    }
}

/// The MCP HTTP client's resolver: only checked addresses come out.
pub struct Resolver(pub Guard);

impl reqwest_mcp::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest_mcp::dns::Name) -> reqwest_mcp::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // The port is the connector's business; 0 here.
            let addrs = guard.resolve(&host, None).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest_mcp::dns::Addrs)
        })
    }
}

impl Resolver {
    pub fn shared(guard: Guard) -> Arc<Self> {
        Arc::new(Self(guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_in_every_form() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1::5db8:d822",
            "::ffff:0:7f00:1",
            "2001::1",
        ] {
            assert!(internal(ip.parse().unwrap()), "{ip} is internal");
        }
        for ip in [
            "93.184.216.34",
            "2606:4700::1111",
            "2002:5db8:d822::",
            "64:ff9b::5db8:d822",
        ] {
            assert!(!internal(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn a_checked_host_is_pinned_to_the_addresses_checked() {
        let guard = Guard::default();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        guard
            .pins
            .lock()
            .unwrap()
            .insert("mcp.example".into(), (Instant::now(), vec![public]));
        let addrs = guard.resolve("mcp.example", Some(443)).await.unwrap();
        assert_eq!(addrs, [SocketAddr::new(public, 443)], "no second lookup");
        assert!(guard.resolve("localhost", Some(80)).await.is_err());
        assert!(
            !guard.pins.lock().unwrap().contains_key("localhost"),
            "refused hosts are not pinned"
        );
    }

    #[tokio::test]
    async fn urls_are_refused_before_any_connection() {
        let guard = Guard::default();
        for url in [
            "http://127.0.0.1:8080/mcp",
            "http://10.1.2.3/mcp",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/mcp",
            "http://[::ffff:127.0.0.1]/mcp",
            "http://[64:ff9b::7f00:1]/",
            "http://localhost/mcp",
            "file:///etc/passwd",
            "gopher://example.com/",
            "http://user:pass@example.com/",
            "not a url",
        ] {
            assert!(guard.check(url).await.is_err(), "{url}");
        }
        let allowed = Guard {
            allowed_hosts: vec![
                "127.0.0.1".into(),
                "127.0.0.3:8000".into(),
                "[::1]:9".into(),
            ],
            ..Guard::default()
        };
        assert!(allowed.check("http://127.0.0.1:1/mcp").await.is_ok());
        assert!(allowed.check("http://127.0.0.2:1/mcp").await.is_err());
        assert!(allowed.check("http://127.0.0.3:8000/mcp").await.is_ok());
        assert!(allowed.check("http://127.0.0.3:8001/mcp").await.is_err());
        assert!(allowed.check("http://[::1]:9/mcp").await.is_ok());
        assert!(allowed.check("http://[::1]:10/mcp").await.is_err());
        // A host name allowlisted on one port (`localhost` resolves to
        // loopback addresses) is trusted on that port only: on another, its
        // addresses are checked like any host's.
        let by_name = Guard {
            allowed_hosts: vec!["localhost:8000".into()],
            ..Guard::default()
        };
        assert!(by_name.check("http://localhost:8000/mcp").await.is_ok());
        assert!(by_name.check("http://localhost:6379/").await.is_err());
        assert!(by_name.check("http://localhost/").await.is_err());
        let open = Guard {
            allow_private: true,
            ..Guard::default()
        };
        assert!(open.check("http://127.0.0.1:1/mcp").await.is_ok());
        assert!(open.check("ftp://127.0.0.1:1/mcp").await.is_err());
    }
}
