//! Venue API keys: `pwk_<26-char id>_<43-char secret>`. The id part names the stored record;
//! only the SHA-256 of the whole key is stored, and compared in constant time. 32 random bytes
//! make a plain hash enough (no password stretching is needed for a key nobody chose).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::ApiKeyId;
use crate::secret::Secret;

const PREFIX: &str = "pwk_";
const ULID_LEN: usize = 26;

/// A newly issued key: shown once, then only its hash is kept.
pub struct IssuedKey {
    pub id: ApiKeyId,
    pub key: Secret,
    pub sha256: String,
}

pub fn issue() -> IssuedKey {
    let id = ApiKeyId::generate();
    let ulid = &id.as_str()[ApiKeyId::PREFIX.len() + 1..];
    let random = Secret::generate_token();
    let key = Secret::from_config(format!("{PREFIX}{ulid}_{}", random.expose()));
    let sha256 = sha256_hex(key.expose());
    IssuedKey { id, key, sha256 }
}

/// The record id a presented key claims, if it has the shape of one of ours.
pub fn claimed_id(presented: &str) -> Option<ApiKeyId> {
    let rest = presented.strip_prefix(PREFIX)?;
    let ulid = rest.get(..ULID_LEN)?;
    if rest.as_bytes().get(ULID_LEN) != Some(&b'_') {
        return None;
    }
    ApiKeyId::parse(&format!("{}_{ulid}", ApiKeyId::PREFIX)).ok()
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
    }
}
