//! The Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
//! Knows nothing of HTTP; the caller puts the result in the `webhook-signature` header.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// One signature, `v1,<base64>`. On the hot path of every delivery: one allocation, for the
/// result.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(SIGNATURE_LEN);
    push_signature(&mut out, key, msg_id, timestamp, body);
    out
}

/// `v1,` + 44 base64 characters.
const SIGNATURE_LEN: usize = 47;

fn push_signature(out: &mut String, key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    let mut digits = [0u8; 20];
    mac.update(decimal(timestamp, &mut digits));
    mac.update(b".");
    mac.update(body);
    out.push_str("v1,");
    STANDARD.encode_string(mac.finalize().into_bytes(), out);
}

/// The decimal digits of `n`, without allocating.
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut v = n.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// The `webhook-signature` header value: one space-separated entry per key, in the order given
/// (newest first during a rotation grace period).
pub fn signature_header<'a>(
    keys: impl IntoIterator<Item = &'a [u8]>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut out = String::with_capacity(SIGNATURE_LEN + 1);
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        push_signature(&mut out, key, msg_id, timestamp, body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::secret::Secret;

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
    fn timestamps_are_written_in_decimal() {
        let mut buf = [0u8; 20];
        for n in [0i64, 7, 1_795_774_500, -42, i64::MAX, i64::MIN] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
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
