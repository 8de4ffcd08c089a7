//! Which addresses a webhook may reach. Only public unicast addresses, unless the configured
//! allow-list (local development) names them. Checked when an endpoint is saved and again on
//! the address actually dialled, since DNS can change between the two.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use ipnet::IpNet;
use url::{Host, Url};

use crate::model::domain::MAX_URL_LEN;
use crate::model::error::ValidationError;

/// One message for "does not resolve" and "resolves to an internal address", so that the
/// answer never tells a caller whether an internal name exists.
pub const NOT_PUBLIC: &str =
    "the host must resolve to a public internet address (private, loopback, link-local and \
     reserved addresses cannot receive webhooks)";

/// Which destinations may be dialled in spite of the public-address rule, and which may use
/// plain `http`. Empty in production; loopback locally.
#[derive(Clone, Debug, Default)]
pub struct DestinationPolicy {
    pub allow_cidrs: Vec<IpNet>,
}

impl DestinationPolicy {
    pub fn allow_listed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow_cidrs.iter().any(|net| net.contains(&ip))
    }

    /// May a request be dialled to this address?
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_listed(ip) || is_public(ip)
    }

    /// Checks an endpoint URL when it is saved: absolute, `https` (or `http` to an allow-listed
    /// address), no credentials, and every address it resolves to permitted.
    pub async fn check_url(&self, raw: &str) -> Result<Url, ValidationError> {
        let url = parse_destination(raw)?;
        let host = url
            .host()
            .ok_or_else(|| ValidationError::new("url", "the URL needs a host"))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<IpAddr> = match host {
            Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
            Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
            Host::Domain(name) => match tokio::net::lookup_host((name, port)).await {
                Ok(found) => found.map(|a| a.ip()).collect(),
                Err(_) => Vec::new(),
            },
        };
        if addrs.is_empty() || !addrs.iter().all(|ip| self.permits(*ip)) {
            return Err(ValidationError::new("url", NOT_PUBLIC));
        }
        if url.scheme() == "http" && !addrs.iter().all(|ip| self.allow_listed(*ip)) {
            return Err(ValidationError::new(
                "url",
                "the URL must use https (plain http is only allowed for allow-listed development hosts)",
            ));
        }
        Ok(url)
    }

    /// The addresses of `resolved` that may be dialled.
    pub fn filter(&self, resolved: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
        resolved
            .into_iter()
            .filter(|a| self.permits(a.ip()))
            .collect()
    }
}

/// Syntax of an endpoint URL, before any address check.
pub fn parse_destination(raw: &str) -> Result<Url, ValidationError> {
    if raw.len() > MAX_URL_LEN {
        return Err(ValidationError::new(
            "url",
            format!("at most {MAX_URL_LEN} characters"),
        ));
    }
    let url = Url::parse(raw).map_err(|e| {
        ValidationError::new(
            "url",
            format!("`{raw}` is not an absolute URL ({e}); use e.g. https://example.com/webhooks"),
        )
    })?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(ValidationError::new(
            "url",
            format!("the scheme must be https, not `{}`", url.scheme()),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ValidationError::new(
            "url",
            "credentials in the URL are not allowed; use the endpoint's auth instead",
        ));
    }
    if url.host().is_none() {
        return Err(ValidationError::new("url", "the URL needs a host"));
    }
    Ok(url)
}

/// IPv4 addresses hidden inside IPv6 ones (mapped, compatible, NAT64, 6to4) are judged as the
/// IPv4 address they reach.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let seg = v6.segments();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // ::a.b.c.d (deprecated IPv4-compatible) and NAT64 64:ff9b::/96, 64:ff9b:1::/48.
    if seg[..6] == [0, 0, 0, 0, 0, 0] && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST {
        return Some(tail);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || seg[..3] == [0x64, 0xff9b, 1] {
        return Some(tail);
    }
    // 6to4: 2002:AABB:CCDD::/48 carries a.b.c.d in bits 16..48.
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

const BLOCKED_V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local and cloud metadata"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast"),
];

const BLOCKED_V6: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("100::/64", "discard"),
    ("2001::/23", "IETF protocol assignments (Teredo, ORCHID…)"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing"),
    (
        "fc00::/7",
        "unique local (includes the EC2 metadata fd00:ec2::254)",
    ),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

/// Parsed once: the ranges that no webhook may reach.
static BLOCKED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    BLOCKED_V4
        .iter()
        .chain(BLOCKED_V6)
        .filter_map(|(net, _)| net.parse().ok())
        .collect()
});

/// Is this a public unicast address?
pub fn is_public(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    !BLOCKED.iter().any(|net| net.contains(&ip))
}

/// A policy for tests and local development that allows loopback.
pub fn loopback_policy() -> DestinationPolicy {
    DestinationPolicy {
        allow_cidrs: ["127.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|s| s.parse::<IpNet>().ok())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_in_every_spelling_are_not_public() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:0001::",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip(s)), "{s} must not be public");
        }
        for s in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(ip(s)), "{s} is public");
        }
    }

    /// Every way of writing an internal address in a URL, as a table: all refused with the
    /// same message, whether the host is a literal or a name.
    #[tokio::test]
    async fn every_spelling_of_an_internal_destination_is_refused() {
        let policy = DestinationPolicy::default();
        for url in [
            "https://127.0.0.1/",
            "https://2130706433/",   // decimal
            "https://0x7f000001/",   // hex
            "https://0x7f.0.0.1/",   // hex octet
            "https://0177.0.0.1/",   // octal
            "https://017700000001/", // octal, whole
            "https://127.1/",        // short form
            "https://127.0.1/",      // short form
            "https://0/",            // 0.0.0.0
            "https://10.0.0.1/",
            "https://172.16.5.4/",
            "https://192.168.1.1/",
            "https://100.64.0.1/",      // CGNAT
            "https://100.100.100.200/", // CGNAT (a cloud metadata address)
            "https://169.254.169.254/latest/meta-data",
            "https://192.0.2.10/", // documentation
            "https://198.51.100.7/",
            "https://203.0.113.9/",
            "https://198.18.0.1/",      // benchmarking
            "https://224.0.0.251/",     // multicast
            "https://255.255.255.255/", // broadcast
            "https://240.0.0.1/",       // reserved
            "https://[::1]/",
            "https://[::]/",
            "https://[::ffff:127.0.0.1]/", // IPv4-mapped
            "https://[::ffff:7f00:1]/",
            "https://[::ffff:a9fe:a9fe]/",   // mapped metadata
            "https://[::127.0.0.1]/",        // IPv4-compatible
            "https://[64:ff9b::a9fe:a9fe]/", // NAT64 of the metadata address
            "https://[64:ff9b:1::a00:1]/",   // local-use NAT64
            "https://[2002:a9fe:a9fe::1]/",  // 6to4 of the metadata address
            "https://[fd00:ec2::254]/",      // EC2 IPv6 metadata
            "https://[fc00::1]/",            // ULA
            "https://[fe80::1]/",            // link-local
            "https://[fec0::1]/",            // site-local
            "https://[ff02::1]/",            // multicast
            "https://[2001:db8::1]/",        // documentation
            "https://[2001::1]/",            // Teredo
            "https://localhost/",            // a name that resolves to loopback
        ] {
            let err = policy.check_url(url).await.unwrap_err();
            assert_eq!(err.message, NOT_PUBLIC, "{url}");
        }
        assert_eq!(
            BLOCKED.len(),
            BLOCKED_V4.len() + BLOCKED_V6.len(),
            "every range parses"
        );
    }

    #[tokio::test]
    async fn http_needs_an_allow_listed_host() {
        let dev = loopback_policy();
        assert!(dev.check_url("http://127.0.0.1:8080/hook").await.is_ok());
        assert!(dev.check_url("ftp://127.0.0.1/").await.is_err());
        assert!(dev.check_url("https://user:pw@127.0.0.1/").await.is_err());
        assert!(dev.check_url("not a url").await.is_err());
        let prod = DestinationPolicy::default();
        assert!(prod.check_url("http://127.0.0.1:8080/hook").await.is_err());
    }
}
