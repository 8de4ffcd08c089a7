//! Secret material: signing secrets and bearer tokens. The type never prints its value, so a
//! secret cannot reach a log line or a `Debug` dump by accident.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::model::error::ValidationError;

pub const SIGNING_SECRET_PREFIX: &str = "whsec_";

/// A secret as stored, sealed by [`crate::storage::sealing`]: the data key encrypted by KMS, and the
/// secret encrypted under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The data key, encrypted by KMS (base64).
    pub data_key: String,
    /// AES-GCM nonce (base64, 12 bytes).
    pub nonce: String,
    /// AES-GCM ciphertext with its tag (base64).
    pub ciphertext: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes.
    pub fn generate_signing() -> Self {
        Self(format!(
            "{SIGNING_SECRET_PREFIX}{}",
            STANDARD.encode(random_bytes::<32>())
        ))
    }

    /// A bearer token for endpoints that authenticate by `Authorization: Bearer`.
    pub fn generate_token() -> Self {
        Self(URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
    }

    /// A token the venue pasted: 16 to 256 printable ASCII characters, no spaces.
    pub fn bearer_token(raw: String) -> Result<Self, ValidationError> {
        let printable = raw.bytes().all(|b| b.is_ascii_graphic());
        if (16..=256).contains(&raw.len()) && printable {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new(
                "auth.token",
                "a bearer token must be 16 to 256 printable ASCII characters without spaces",
            ))
        }
    }

    /// A secret that comes from configuration (the admin API key).
    pub fn from_config(value: String) -> Self {
        Self(value)
    }

    /// Only for code that must send or sign with the value.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What reads show instead of the value: the kind and the last four characters.
    pub fn hint(&self) -> String {
        let tail: String = {
            let chars: Vec<char> = self.0.chars().collect();
            chars[chars.len().saturating_sub(4)..].iter().collect()
        };
        if self.0.starts_with(SIGNING_SECRET_PREFIX) {
            format!("{SIGNING_SECRET_PREFIX}…{tail}")
        } else {
            format!("…{tail}")
        }
    }

    /// The HMAC key of a `whsec_` secret: the decoded bytes after the prefix.
    pub fn signing_key(&self) -> Option<Vec<u8>> {
        let encoded = self.0.strip_prefix(SIGNING_SECRET_PREFIX)?;
        STANDARD.decode(encoded).ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.hint())
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_signing_secret_decodes_to_32_bytes_and_never_debug_prints() {
        let secret = Secret::generate_signing();
        assert!(secret.expose().starts_with("whsec_"));
        assert_eq!(secret.signing_key().map(|k| k.len()), Some(32));
        let debug = format!("{secret:?}");
        assert!(!debug.contains(&secret.expose()[6..]), "{debug}");
        assert!(debug.contains("whsec_…"));
    }

    #[test]
    fn pasted_tokens_are_checked() {
        assert!(Secret::bearer_token("short".into()).is_err());
        assert!(Secret::bearer_token("has a space in it ok".into()).is_err());
        assert!(Secret::bearer_token("x".repeat(257)).is_err());
        let token = Secret::bearer_token("abcdefghijklmnop".into()).unwrap();
        assert_eq!(token.hint(), "…mnop");
    }
}
