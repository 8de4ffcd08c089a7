//! Custom headers of an endpoint (an `X-Api-Key` a receiver insists on): sent with every
//! request, validated when set, sealed at rest like the secrets (one sealed blob per endpoint,
//! bound to it), shown afterwards only as hints.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::model::error::ValidationError;
use crate::model::secret::Sealed;

/// At most this many custom headers per endpoint.
pub const MAX_HEADERS: usize = 10;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_VALUE_LEN: usize = 1024;
/// Names and values of one endpoint's headers together, at most.
pub const MAX_TOTAL_BYTES: usize = 4096;

/// Names the system sets itself, or that belong to the connection rather than the request.
const RESERVED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "user-agent",
];
/// Prefixes of reserved names: Standard Webhooks' own, proxies', browsers'.
const RESERVED_PREFIXES: &[&str] = &["webhook-", "proxy-", "sec-"];

/// An endpoint's custom headers as stored: names with the hints of their values, and the
/// values sealed together (a JSON object of name to value).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealedHeaders {
    /// Lower-case name → hint of its value.
    pub hints: BTreeMap<String, String>,
    pub sealed: Sealed,
}

fn invalid(message: String) -> ValidationError {
    ValidationError::new("headers", message)
}

/// A header name as sent: an HTTP token, lower case.
pub fn normalize_name(raw: &str) -> Result<String, ValidationError> {
    let name = raw.to_ascii_lowercase();
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "a header name has 1 to {MAX_NAME_LEN} characters; `{}` does not",
            raw.escape_default()
        )));
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(token) {
        return Err(invalid(format!(
            "`{}` is not a header name: letters, digits and `-` (no spaces, colons or control characters)",
            raw.escape_default()
        )));
    }
    if RESERVED.contains(&name.as_str()) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(invalid(format!(
            "`{name}` is reserved: the system sets it (authentication, signature, body) or it belongs to the connection"
        )));
    }
    Ok(name)
}

/// A value: printable ASCII and spaces, no line breaks or other control characters (which
/// would start another header), not blank, bounded.
pub fn check_value(name: &str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() || value.len() > MAX_VALUE_LEN {
        return Err(invalid(format!(
            "the value of `{name}` has 1 to {MAX_VALUE_LEN} characters, not blank"
        )));
    }
    if !value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
    {
        return Err(invalid(format!(
            "the value of `{name}` may hold printable ASCII only: no line breaks or control characters"
        )));
    }
    if value.trim() != value {
        return Err(invalid(format!(
            "the value of `{name}` starts or ends with whitespace"
        )));
    }
    Ok(())
}

/// Checks a whole set (after normalizing its names): count, names, values, size.
pub fn validate(headers: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if headers.len() > MAX_HEADERS {
        return Err(invalid(format!(
            "at most {MAX_HEADERS} custom headers, not {}",
            headers.len()
        )));
    }
    for (name, value) in headers {
        check_value(name, value)?;
    }
    let total: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if total > MAX_TOTAL_BYTES {
        return Err(invalid(format!(
            "the custom headers take {total} bytes; at most {MAX_TOTAL_BYTES}"
        )));
    }
    Ok(())
}

/// The raw `{"name": "value"}` of a request: names normalized, duplicates (in any case)
/// refused, everything validated.
pub fn parse(raw: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ValidationError> {
    let mut headers = BTreeMap::new();
    for (name, value) in raw {
        let name = normalize_name(name)?;
        if headers.insert(name.clone(), value.clone()).is_some() {
            return Err(invalid(format!("`{name}` is given twice")));
        }
    }
    validate(&headers)?;
    Ok(headers)
}

/// What reads show of a value: its last 4 characters when it is long enough for that to
/// give nothing away, else nothing.
pub fn hint(value: &str) -> String {
    if value.len() >= 16 {
        format!("…{}", &value[value.len() - 4..])
    } else {
        "…".to_owned()
    }
}

/// Adds opened headers to a request's. Validated when saved; a value that no longer parses
/// (it cannot) is left out rather than sent broken.
pub fn apply(opened: &BTreeMap<String, String>, headers: &mut HeaderMap) {
    for (name, value) in opened {
        if let (Ok(name), Ok(mut value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            value.set_sensitive(true);
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_are_lower_cased_and_values_kept() {
        let parsed = parse(&set(&[("X-Api-Key", "abc 123"), ("X-Team", "ops")])).unwrap();
        assert_eq!(parsed, set(&[("x-api-key", "abc 123"), ("x-team", "ops")]));
    }

    #[test]
    fn reserved_names_are_refused_in_any_case() {
        for name in [
            "Authorization",
            "content-type",
            "Content-Length",
            "HOST",
            "webhook-signature",
            "Webhook-Id",
            "webhook-timestamp",
            "transfer-encoding",
            "connection",
            "proxy-authorization",
            "user-agent",
        ] {
            let err = parse(&set(&[(name, "x")])).unwrap_err();
            assert_eq!(err.field, "headers");
            assert!(err.message.contains("reserved"), "{name}: {}", err.message);
        }
    }

    #[test]
    fn injection_and_bad_names_are_refused() {
        for value in [
            "a\r\nx-injected: 1",
            "a\nb",
            "a\0b",
            "ünïcode",
            " padded",
            "",
        ] {
            assert!(parse(&set(&[("x-api-key", value)])).is_err(), "{value:?}");
        }
        for name in ["x api", "x:api", "x-api\r\nx-b", "", &"x".repeat(65)] {
            assert!(parse(&set(&[(name, "v")])).is_err(), "{name:?}");
        }
        let err = parse(&set(&[("X-A", "1"), ("x-a", "2")])).unwrap_err();
        assert!(err.message.contains("twice"), "{}", err.message);
    }

    #[test]
    fn counts_and_sizes_are_bounded() {
        let eleven: Vec<(String, String)> =
            (0..11).map(|i| (format!("x-h{i}"), "v".into())).collect();
        assert!(parse(&eleven.iter().cloned().collect()).is_err());
        let ten: BTreeMap<_, _> = eleven.into_iter().take(10).collect();
        assert!(parse(&ten).is_ok());
        assert!(parse(&set(&[("x-a", &"v".repeat(MAX_VALUE_LEN + 1))])).is_err());
        let big: BTreeMap<_, _> = (0..5)
            .map(|i| (format!("x-h{i}"), "v".repeat(1000)))
            .collect();
        assert!(parse(&big).unwrap_err().message.contains("bytes"));
    }

    #[test]
    fn hints_give_short_values_nothing_away() {
        assert_eq!(hint("short"), "…");
        assert_eq!(hint("0123456789abcdefWXYZ"), "…WXYZ");
    }

    #[test]
    fn applied_headers_join_the_request() {
        let mut headers = HeaderMap::new();
        apply(&set(&[("x-api-key", "k-1")]), &mut headers);
        assert_eq!(headers.get("x-api-key").unwrap(), "k-1");
        assert!(headers.get("x-api-key").unwrap().is_sensitive());
    }
}
