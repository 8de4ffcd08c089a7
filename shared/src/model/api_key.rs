//! Venue API keys: `pwk_<26-char id>_<43-char secret>`, and portal sessions' tokens of the same
//! shape, `pps_…` ([`issue_portal`]). The id part names the stored record; only the SHA-256 of
//! the whole key is stored, and compared in constant time. 32 random bytes make a plain hash
//! enough (no password stretching is needed for a key nobody chose).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::ids::{ApiKeyId, PortalSessionId};
use crate::model::secret::Secret;

const PREFIX: &str = "pwk_";
const PORTAL_PREFIX: &str = "pps_";
const ULID_LEN: usize = 26;

/// A newly issued key: shown once, then only its hash is kept.
pub struct IssuedKey {
    pub id: ApiKeyId,
    pub key: Secret,
    pub sha256: String,
}

pub fn issue() -> IssuedKey {
    let id = ApiKeyId::generate();
    let (key, sha256) = token(PREFIX, &id.as_str()[ApiKeyId::PREFIX.len() + 1..]);
    IssuedKey { id, key, sha256 }
}

/// A newly issued portal session: its token is shown once (in the portal link), then only
/// its hash is kept.
pub struct IssuedSession {
    pub id: PortalSessionId,
    pub token: Secret,
    pub sha256: String,
}

pub fn issue_portal() -> IssuedSession {
    let id = PortalSessionId::generate();
    let (token, sha256) = token(
        PORTAL_PREFIX,
        &id.as_str()[PortalSessionId::PREFIX.len() + 1..],
    );
    IssuedSession { id, token, sha256 }
}

/// `{prefix}{ulid}_{43 random characters}`, and its hash.
fn token(prefix: &str, ulid: &str) -> (Secret, String) {
    let random = Secret::generate_token();
    let token = Secret::from_config(format!("{prefix}{ulid}_{}", random.expose()));
    let sha256 = sha256_hex(token.expose());
    (token, sha256)
}

/// The ULID part of a presented token of this prefix, if it has the shape of one of ours.
fn claimed_ulid<'a>(presented: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = presented.strip_prefix(prefix)?;
    let ulid = rest.get(..ULID_LEN)?;
    (rest.as_bytes().get(ULID_LEN) == Some(&b'_')).then_some(ulid)
}

/// The record id a presented key claims, if it has the shape of one of ours.
pub fn claimed_id(presented: &str) -> Option<ApiKeyId> {
    let ulid = claimed_ulid(presented, PREFIX)?;
    ApiKeyId::parse(&format!("{}_{ulid}", ApiKeyId::PREFIX)).ok()
}

/// The portal session a presented token claims, if it has the shape of a portal token.
pub fn claimed_session(presented: &str) -> Option<PortalSessionId> {
    let ulid = claimed_ulid(presented, PORTAL_PREFIX)?;
    PortalSessionId::parse(&format!("{}_{ulid}", PortalSessionId::PREFIX)).ok()
}

pub fn sha256_hex(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Does `presented` hash to `stored_sha256`? Constant time in the compared bytes.
pub fn matches(presented: &str, stored_sha256: &str) -> bool {
    sha256_hex(presented)
        .as_bytes()
        .ct_eq(stored_sha256.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_name_their_record_and_match_only_their_hash() {
        let issued = issue();
        let key = issued.key.expose();
        assert!(key.starts_with("pwk_"));
        assert!(key.len() >= 4 + 26 + 1 + 43);
        assert_eq!(claimed_id(key), Some(issued.id.clone()));
        assert!(matches(key, &issued.sha256));
        let mut forged = key.to_owned();
        forged.pop();
        forged.push('A');
        assert!(!matches(&forged, &issued.sha256) || key.ends_with('A'));
        assert_eq!(claimed_id("dev-admin-key"), None);
        assert_eq!(claimed_id("pwk_short"), None);
        assert_eq!(claimed_session(key), None, "a key is no portal token");
    }

    #[test]
    fn portal_tokens_name_their_session_and_are_no_keys() {
        let issued = issue_portal();
        let token = issued.token.expose();
        assert!(token.starts_with("pps_"));
        assert_eq!(claimed_session(token), Some(issued.id.clone()));
        assert_eq!(claimed_id(token), None);
        assert!(matches(token, &issued.sha256));
    }
}
