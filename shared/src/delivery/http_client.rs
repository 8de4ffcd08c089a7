//! The delivery HTTP client: one keep-alive pool per process, no redirects, no proxies, a total
//! timeout, bounded response reads, and DNS answers filtered by the destination policy so the
//! address actually dialled is the one that was checked. Knows nothing of DynamoDB or signing.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::delivery::destination::{parse_destination, DestinationPolicy, NOT_PUBLIC};
use crate::model::error::error_chain;

/// The client could not be built (TLS set-up).
pub type BuildError = reqwest::Error;

/// Why a request failed, for history and for the retry policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    Dns,
    Connect,
    Tls,
    Timeout,
    Redirect,
    BlockedAddress,
    Http4xx,
    Http5xx,
    /// The endpoint's template failed on this event; nothing was sent.
    Template,
    /// The endpoint's stored secret or token does not open (damaged); nothing was sent.
    Secret,
    Other,
}

impl ErrorClass {
    /// The class [`ErrorClass::as_str`] named.
    pub fn parse(name: &str) -> Option<Self> {
        [
            ErrorClass::Dns,
            ErrorClass::Connect,
            ErrorClass::Tls,
            ErrorClass::Timeout,
            ErrorClass::Redirect,
            ErrorClass::BlockedAddress,
            ErrorClass::Http4xx,
            ErrorClass::Http5xx,
            ErrorClass::Template,
            ErrorClass::Secret,
            ErrorClass::Other,
        ]
        .into_iter()
        .find(|class| class.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Dns => "dns",
            ErrorClass::Connect => "connect",
            ErrorClass::Tls => "tls",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Redirect => "redirect",
            ErrorClass::BlockedAddress => "blocked_address",
            ErrorClass::Http4xx => "http_4xx",
            ErrorClass::Http5xx => "http_5xx",
            ErrorClass::Template => "template",
            ErrorClass::Secret => "secret",
            ErrorClass::Other => "other",
        }
    }
}

impl ErrorClass {
    /// One line that points a venue admin at the fix.
    pub fn hint(self, status: Option<u16>) -> &'static str {
        match (self, status) {
            (ErrorClass::Http4xx, Some(401 | 403)) => {
                "the receiver refused our credentials: check that it uses this endpoint's current signing secret or token"
            }
            (ErrorClass::Http4xx, Some(404)) => "the receiver has no such path: check the endpoint URL",
            (ErrorClass::Http4xx, Some(410)) => {
                "the receiver says this endpoint is gone, so it was disabled: fix the URL and re-enable it"
            }
            (ErrorClass::Http4xx, Some(413)) => "the receiver refused the body size: raise its limit",
            (ErrorClass::Http4xx, Some(429)) => {
                "the receiver is rate-limiting us: we slow down; raise its limit if this persists"
            }
            (ErrorClass::Http4xx, _) => "the receiver rejected the request: check its logs for the reason",
            (ErrorClass::Http5xx, _) => "the receiver failed: check its availability and logs",
            (ErrorClass::Dns, _) => "the host name does not resolve: check the endpoint URL",
            (ErrorClass::Connect, _) => {
                "could not connect: check the endpoint URL and that the receiver is running"
            }
            (ErrorClass::Tls, _) => "the TLS handshake failed: check the receiver's certificate",
            (ErrorClass::Timeout, _) => {
                "no answer in time: check the receiver's availability, and answer before doing slow work"
            }
            (ErrorClass::Redirect, _) => "the receiver redirects: set the endpoint URL to the final address",
            (ErrorClass::BlockedAddress, _) => {
                "the URL leads to an address that may not receive webhooks: use a public address"
            }
            (ErrorClass::Template, _) => {
                "the endpoint's template failed on this event: fix the template, then retry"
            }
            (ErrorClass::Secret, _) => {
                "the endpoint's stored secret or token could not be opened: rotate the secret (or set a new token), then retry"
            }
            (ErrorClass::Other, _) => "the request failed: check the endpoint URL and the receiver",
        }
    }
}

/// What came of one POST.
#[derive(Clone, Debug)]
pub struct Response {
    pub status_code: Option<u16>,
    pub duration: Duration,
    pub error: Option<(ErrorClass, String)>,
    /// The first bytes of the body, up to the configured excerpt size.
    pub body_excerpt: Option<String>,
    /// The raw `Retry-After` header, if the receiver sent one.
    pub retry_after: Option<String>,
}

impl Response {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

#[derive(Clone)]
pub struct DeliveryClient {
    client: reqwest::Client,
    policy: Arc<DestinationPolicy>,
    excerpt_bytes: usize,
    timeout: Duration,
}

/// Resolves with the system resolver, then drops every address the policy forbids.
struct GuardedResolver {
    policy: Arc<DestinationPolicy>,
}

#[derive(Debug, thiserror::Error)]
#[error("{NOT_PUBLIC}")]
struct Blocked;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed = policy.filter(found);
            if allowed.is_empty() {
                return Err(Box::new(Blocked) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// What the client is built from (the configuration's [`crate::runtime::config::Config::client`]).
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub destinations: DestinationPolicy,
    pub user_agent: String,
    /// Connect to last byte.
    pub request_timeout: Duration,
    /// How much of a response body is kept.
    pub response_excerpt_bytes: usize,
}

impl DeliveryClient {
    pub fn new(config: &ClientSettings) -> Result<Self, BuildError> {
        let policy = Arc::new(config.destinations.clone());
        let client = reqwest::Client::builder()
            .user_agent(&config.user_agent)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .build()?;
        Ok(Self {
            client,
            policy,
            excerpt_bytes: config.response_excerpt_bytes,
            timeout: config.request_timeout,
        })
    }

    /// The longest a request may take, connect to last byte.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `body` with `headers` and reports the outcome; never returns an error, since every
    /// failure is an outcome to record.
    pub async fn post(&self, url: &str, headers: http::HeaderMap, body: Vec<u8>) -> Response {
        let started = Instant::now();
        let failed = |class, message: String| Response {
            status_code: None,
            duration: started.elapsed(),
            error: Some((class, message)),
            body_excerpt: None,
            retry_after: None,
        };
        let url = match self.check_literal(url) {
            Ok(url) => url,
            Err(class) => return failed(class, NOT_PUBLIC.to_owned()),
        };
        // The request built whole: its headers moved in, not merged one by one.
        let mut request = reqwest::Request::new(http::Method::POST, url);
        *request.headers_mut() = headers;
        *request.body_mut() = Some(body.into());
        let sent = self.client.execute(request).await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                let (class, message) = classify(&e);
                return failed(class, message);
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut excerpt = Vec::new();
        let mut body_error = None;
        while excerpt.len() < self.excerpt_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(classify(&e));
                    break;
                }
            }
        }
        excerpt.truncate(self.excerpt_bytes);
        let error = match status {
            200..=299 => None,
            300..=399 => Some((
                ErrorClass::Redirect,
                format!("the receiver answered {status} (a redirect); redirects are not followed: update the URL to the final address"),
            )),
            400..=499 => Some((ErrorClass::Http4xx, format!("the receiver answered {status}"))),
            _ => Some((ErrorClass::Http5xx, format!("the receiver answered {status}"))),
        };
        // A 2xx whose body then failed is still a success: the receiver accepted it.
        let error = error.or(if (200..300).contains(&status) {
            None
        } else {
            body_error
        });
        Response {
            status_code: Some(status),
            duration: started.elapsed(),
            error,
            body_excerpt: Some(text_excerpt(&excerpt, self.excerpt_bytes)),
            retry_after,
        }
    }

    /// IP-literal hosts never reach the resolver, so they are checked here.
    fn check_literal(&self, raw: &str) -> Result<Url, ErrorClass> {
        let url = parse_destination(raw).map_err(|_| ErrorClass::Other)?;
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        match literal {
            Some(ip) if !self.policy.permits(ip) => Err(ErrorClass::BlockedAddress),
            _ => Ok(url),
        }
    }
}

fn classify(e: &reqwest::Error) -> (ErrorClass, String) {
    let chain = error_chain(e);
    let class = if e.is_timeout() {
        ErrorClass::Timeout
    } else if chain.contains(NOT_PUBLIC) {
        ErrorClass::BlockedAddress
    } else if e.is_connect() {
        if chain.contains("dns error") || chain.contains("failed to lookup") {
            ErrorClass::Dns
        } else if chain.contains("certificate") || chain.contains("tls") || chain.contains("TLS") {
            ErrorClass::Tls
        } else {
            ErrorClass::Connect
        }
    } else {
        ErrorClass::Other
    };
    let message = match class {
        ErrorClass::Timeout => "the receiver did not answer within the request timeout".to_owned(),
        ErrorClass::BlockedAddress => NOT_PUBLIC.to_owned(),
        _ => chain,
    };
    (class, message)
}

/// The start of a response body as text of at most `max` bytes: invalid UTF-8 becomes U+FFFD
/// (three bytes each), so the cap is applied after the conversion, at a character boundary.
pub fn text_excerpt(body: &[u8], max: usize) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod excerpt_tests {
    use super::*;

    #[test]
    fn excerpts_are_capped_in_bytes_after_conversion() {
        let garbage = vec![0xFFu8; 4096];
        let text = text_excerpt(&garbage, 4096);
        assert!(text.len() <= 4096 && text.len() > 4000, "{}", text.len());
        assert!(text.chars().all(|c| c == char::REPLACEMENT_CHARACTER));
        assert_eq!(text_excerpt(b"ok", 4096), "ok");
        assert_eq!(text_excerpt("héllo".as_bytes(), 2), "h");
    }
}
