//! The Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
//! Knows nothing of HTTP; the caller puts the result in the `webhook-signature` header.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// One signature, `v1,<base64>`.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one space-separated entry per key, in the order given
/// (newest first during a rotation grace period).
pub fn signature_header<'a>(
    keys: impl IntoIterator<Item = &'a [u8]>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    keys.into_iter()
        .map(|key| sign(key, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// The example of the Standard Webhooks specification (and its reference libraries' tests).
    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        let secret: Secret =
            serde_json::from_str("\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"").unwrap();
        let key = secret.signing_key().unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn header_lists_every_key_in_order() {
        let header = signature_header([&b"new"[..], &b"old"[..]], "evt_1", 1, b"{}");
        let parts: Vec<_> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(b"new", "evt_1", 1, b"{}"));
        assert_eq!(parts[1], sign(b"old", "evt_1", 1, b"{}"));
    }
}
