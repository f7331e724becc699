//! Images given as `http(s)` URLs, fetched by the server: off unless configured.
//!
//! A server that fetches URLs for its clients can be pointed at what only it can reach
//! (server-side request forgery). So: only when `inputs.fetch_urls` is on, only from hosts
//! in `inputs.allowed_hosts`, never from loopback, private, link-local or other non-public
//! addresses unless `inputs.allow_private_addresses` is set (the address checked is the
//! one connected to, after name resolution), at most `limits.max_body_bytes` per image,
//! within `inputs.fetch_timeout_s` for all hops together. Every refusal names the URL and
//! the reason.
//!
//! Redirects are followed here, not by the HTTP client: each `Location` is checked before
//! anything is sent to it (http or https, a host, on the allowlist; then the address
//! rules when it is resolved). ureq 2 panics on a redirect to a URL without a host
//! (`file:`, `data:`), so it is never asked to follow one.

use crate::config::InputsConfig;
use crate::error::ApiError;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};
use url::{Host, Url};

/// Redirects followed at most.
const REDIRECTS: u32 = 5;

pub struct Fetcher {
    agent: ureq::Agent,
    max_bytes: usize,
    /// `inputs.allowed_hosts`, lower case.
    hosts: Vec<String>,
    timeout: Duration,
}

impl Fetcher {
    /// A fetcher for the configured hosts; `None` when fetching is off.
    pub fn new(cfg: &InputsConfig, max_bytes: usize) -> Option<Self> {
        if !cfg.fetch_urls {
            return None;
        }
        let hosts: Vec<String> = cfg
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let allow_private = cfg.allow_private_addresses;
        let allowed = hosts.clone();
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .max_idle_connections(0)
            .resolver(move |netloc: &str| resolve(netloc, &allowed, allow_private))
            .build();
        Some(Self {
            agent,
            max_bytes,
            hosts,
            timeout: Duration::from_secs(cfg.fetch_timeout_s),
        })
    }

    /// The bytes at `url` (image `index` of the request), following at most
    /// [`REDIRECTS`] redirects, each checked first. Blocking: call it on the blocking pool.
    pub fn fetch(&self, url: &str, index: usize) -> Result<Vec<u8>, ApiError> {
        let fail = |why: String| ApiError::BadRequest(cannot_fetch(index, url, &why));
        let deadline = Instant::now() + self.timeout;
        let mut at = Url::parse(url.trim()).map_err(|e| fail(format!("not a URL: {e}")))?;
        self.check_target(&at).map_err(fail)?;
        for _ in 0..=REDIRECTS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail(format!(
                    "no answer within inputs.fetch_timeout_s ({} s)",
                    self.timeout.as_secs()
                )));
            }
            let response = self
                .agent
                .request_url("GET", &at)
                .timeout(left)
                .call()
                .map_err(|e| match e {
                    ureq::Error::Status(code, _) => fail(format!("the server answered {code}")),
                    ureq::Error::Transport(t) => fail(transport_reason(&t)),
                })?;
            if !(300..400).contains(&response.status()) {
                return self.body(response, url, index);
            }
            at = self
                .redirect(&at, &response)
                .map_err(|why| ApiError::BadRedirect(cannot_fetch(index, url, &why)))?;
        }
        Err(ApiError::BadRedirect(cannot_fetch(
            index,
            url,
            &format!("more than {REDIRECTS} redirects"),
        )))
    }

    /// Where a 3xx answer from `from` points, if it may be followed.
    fn redirect(&self, from: &Url, response: &ureq::Response) -> Result<Url, String> {
        let status = response.status();
        let location = response
            .header("location")
            .filter(|l| !l.trim().is_empty())
            .ok_or_else(|| format!("{from} answered {status} without a Location to go to"))?;
        let next = from
            .join(location.trim())
            .map_err(|e| format!("redirected to {location:?}, not a URL: {e}"))?;
        self.check_target(&next)
            .map_err(|why| format!("redirected to {next}: {why}"))?;
        Ok(next)
    }

    /// Whether a URL may be asked for at all: http or https, a host on the allowlist. The
    /// address rules apply when the host is resolved.
    fn check_target(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "the scheme {:?} is not fetched (only http and https)",
                url.scheme()
            ));
        }
        let host = match url.host() {
            Some(Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("the URL has no host".into()),
        };
        if !self.hosts.iter().any(|h| host_matches(h, &host)) {
            return Err(format!("host {host} is not in inputs.allowed_hosts"));
        }
        Ok(())
    }

    /// The body of the final answer, at most `max_bytes`.
    fn body(&self, response: ureq::Response, url: &str, index: usize) -> Result<Vec<u8>, ApiError> {
        let fail = |why: String| ApiError::BadRequest(cannot_fetch(index, url, &why));
        let declared = response
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        let too_large = || {
            ApiError::TooLarge(format!(
                "image {index}: {url} is larger than {} bytes",
                self.max_bytes
            ))
        };
        if declared.is_some_and(|n| n > self.max_bytes) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(self.max_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(format!("reading the body: {e}")))?;
        if bytes.len() > self.max_bytes {
            return Err(too_large());
        }
        Ok(bytes)
    }
}

/// Every refusal's message: which image, which URL, why.
fn cannot_fetch(index: usize, url: &str, why: &str) -> String {
    format!("image {index}: cannot fetch {url}: {why}")
}

/// The reason of a transport error, without ureq's repetition of the URL: its kind and
/// the underlying cause (the resolver's refusal, a timeout, a TLS failure).
fn transport_reason(t: &ureq::Transport) -> String {
    match (std::error::Error::source(t), t.message()) {
        (Some(cause), _) => format!("{}: {cause}", t.kind()),
        (None, Some(m)) => format!("{}: {m}", t.kind()),
        (None, None) => t.kind().to_string(),
    }
}

/// Name resolution that only lets through allowed hosts and public addresses.
fn resolve(
    netloc: &str,
    hosts: &[String],
    allow_private: bool,
) -> std::io::Result<Vec<SocketAddr>> {
    let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    let host = host_of(netloc).to_ascii_lowercase();
    if !hosts.iter().any(|h| host_matches(h, &host)) {
        return Err(refuse(format!(
            "host {host} is not in inputs.allowed_hosts"
        )));
    }
    let addrs: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
    if !allow_private {
        if let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(refuse(format!(
                "{host} resolves to {}, a loopback, private or link-local address (inputs.allow_private_addresses is off)",
                a.ip()
            )));
        }
    }
    Ok(addrs)
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(netloc: &str) -> &str {
    if let Some(rest) = netloc.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    netloc.rsplit_once(':').map_or(netloc, |(h, _)| h)
}

/// An allowed-host entry matches the host itself, or with a leading `*.`, its subdomains;
/// an address matches the same address however it is written (`::ffff:7f00:1` is
/// `::ffff:127.0.0.1`).
fn host_matches(pattern: &str, host: &str) -> bool {
    let ip = |s: &str| {
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
    };
    if let (Ok(a), Ok(b)) = (ip(pattern), ip(host)) {
        return a == b;
    }
    match pattern.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => pattern == host,
    }
}

/// Whether an address is on the public internet: not loopback, private (RFC 1918, IPv6
/// unique local), link-local, shared (100.64/10), unspecified, multicast or broadcast.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Whether a string given as an image is a URL to fetch rather than base64.
pub fn is_url(s: &str) -> bool {
    let s = s.trim_start();
    s.starts_with("http://") || s.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
    }

    #[test]
    fn hosts_match_exactly_or_as_subdomains_of_a_wildcard() {
        assert!(host_matches("images.example.org", "images.example.org"));
        assert!(!host_matches("example.org", "evil-example.org"));
        assert!(host_matches("*.example.org", "cdn.example.org"));
        assert!(!host_matches("*.example.org", "example.org.evil.com"));
        assert!(host_matches("::ffff:127.0.0.1", "::ffff:7f00:1"));
        assert!(!host_matches("127.0.0.1", "::ffff:127.0.0.1"));
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("a.b:443"), "a.b");
    }

    #[test]
    fn a_host_not_allowed_or_a_private_address_is_refused_before_connecting() {
        let hosts = vec!["localhost".to_string()];
        let err = resolve("example.org:80", &hosts, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in inputs.allowed_hosts"), "{err}");
        let err = resolve("localhost:80", &hosts, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback, private or link-local"), "{err}");
        assert!(resolve("localhost:80", &hosts, true).is_ok());
        assert!(is_url("https://x/y.jpg") && !is_url("aGk="));
    }
}
