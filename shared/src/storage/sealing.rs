//! Secrets at rest: envelope encryption. A data key from KMS (`GenerateDataKey`, AES-256)
//! encrypts each secret with AES-256-GCM; the item keeps the KMS-encrypted data key, the nonce
//! and the ciphertext. The associated data binds a ciphertext to its venue and endpoint, so a
//! sealed secret moved to another item does not open.
//!
//! Each process makes one data key, the first time it seals, and keeps every data key it has
//! opened, so KMS is called once per data key per warm Lambda, not once per delivery.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use tokio::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::model::domain::{AuthMode, Credential, Endpoint, EndpointAuth, SealedSecret};
use crate::model::error::{Error, Result};
use crate::model::headers::SealedHeaders;
use crate::model::ids::{EndpointId, VenueId};
use crate::model::secret::{Sealed, Secret};

/// A data key ready to use: its KMS-encrypted form (as stored) and the cipher.
type DataKey = (String, Arc<Aes256Gcm>);

#[derive(Clone)]
pub struct Sealer {
    kms: aws_sdk_kms::Client,
    key_id: String,
    /// The data key this process seals with: (encrypted form, cipher).
    current: Arc<Mutex<Option<DataKey>>>,
    /// Data keys opened so far, by their encrypted form.
    opened: Arc<Mutex<HashMap<String, Arc<Aes256Gcm>>>>,
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("sealed secret: {what}"))
}

impl Sealer {
    pub fn new(kms: aws_sdk_kms::Client, key_id: String) -> Self {
        Self {
            kms,
            key_id,
            current: Arc::default(),
            opened: Arc::default(),
        }
    }

    pub async fn seal(&self, secret: &Secret, context: &str) -> Result<Sealed> {
        let (data_key, cipher) = self.current_key().await?;
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| corrupt("encryption failed"))?;
        Ok(Sealed {
            data_key,
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        })
    }

    pub async fn open(&self, sealed: &Sealed, context: &str) -> Result<Secret> {
        let cipher = self.data_key(&sealed.data_key).await?;
        let nonce = STANDARD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| Nonce::try_from(n.as_slice()).ok())
            .ok_or_else(|| corrupt("bad nonce"))?;
        let ciphertext = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|_| corrupt("bad ciphertext"))?;
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| corrupt("does not open (wrong item or tampered)"))?;
        String::from_utf8(plain)
            .map(Secret::from_config)
            .map_err(|_| corrupt("not text"))
    }

    async fn current_key(&self) -> Result<DataKey> {
        let mut current = self.current.lock().await;
        if let Some(found) = current.as_ref() {
            return Ok(found.clone());
        }
        let out = self
            .kms
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .send()
            .await
            .map_err(|e| Error::aws("kms", e))?;
        let cipher = cipher_of(out.plaintext)?;
        let blob = out
            .ciphertext_blob
            .ok_or_else(|| corrupt("KMS returned no encrypted key"))?;
        let encoded = STANDARD.encode(blob.as_ref());
        self.opened
            .lock()
            .await
            .insert(encoded.clone(), cipher.clone());
        *current = Some((encoded.clone(), cipher.clone()));
        Ok((encoded, cipher))
    }

    async fn data_key(&self, encoded: &str) -> Result<Arc<Aes256Gcm>> {
        // Held across the KMS call, so that the records of a cold batch that all need the
        // same data key make one Decrypt between them, not one each.
        let mut opened = self.opened.lock().await;
        if let Some(found) = opened.get(encoded) {
            return Ok(found.clone());
        }
        let blob = STANDARD
            .decode(encoded)
            .map_err(|_| corrupt("bad data key"))?;
        let out = self
            .kms
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob))
            .send()
            .await
            .map_err(|e| {
                // A damaged data key never opens; anything else (throttling, an outage) may.
                let damaged = e.as_service_error().is_some_and(|s| {
                    s.is_invalid_ciphertext_exception() || s.is_incorrect_key_exception()
                });
                if damaged {
                    corrupt("the data key does not open")
                } else {
                    Error::aws("kms", e)
                }
            })?;
        let cipher = cipher_of(out.plaintext)?;
        opened.insert(encoded.to_owned(), cipher.clone());
        Ok(cipher)
    }
}

impl Sealer {
    /// Seals an endpoint's secrets (newest first), bound to the endpoint.
    pub async fn seal_auth(
        &self,
        venue: &VenueId,
        endpoint: &EndpointId,
        mode: AuthMode,
        secrets: &[(Secret, Option<DateTime<Utc>>)],
    ) -> Result<EndpointAuth> {
        let context = context(venue, endpoint);
        let mut sealed = Vec::with_capacity(secrets.len());
        for (secret, expires_at) in secrets {
            sealed.push(SealedSecret {
                sealed: self.seal(secret, &context).await?,
                expires_at: *expires_at,
            });
        }
        let hint = secrets.first().map(|(s, _)| s.hint()).unwrap_or_default();
        Ok(EndpointAuth {
            mode,
            hint,
            secrets: sealed,
        })
    }

    /// Opens the secrets of an endpoint that are valid at `now`.
    pub async fn open_credential(
        &self,
        endpoint: &Endpoint,
        now: DateTime<Utc>,
    ) -> Result<Credential> {
        let context = context(&endpoint.venue_id, &endpoint.endpoint_id);
        let mut open = Vec::new();
        for s in &endpoint.auth.secrets {
            if s.expires_at.is_none_or(|at| at > now) {
                open.push(self.open(&s.sealed, &context).await?);
            }
        }
        match endpoint.auth.mode {
            AuthMode::SignedSecret => Ok(Credential::SignedSecret { secrets: open }),
            AuthMode::BearerToken => open
                .into_iter()
                .next()
                .map(|token| Credential::BearerToken { token })
                .ok_or_else(|| corrupt("bearer endpoint without a token")),
        }
    }
}

impl Sealer {
    /// Seals an endpoint's custom headers (validated, names lower case) as one JSON object,
    /// bound to the endpoint; none → `None`.
    pub async fn seal_headers(
        &self,
        venue: &VenueId,
        endpoint: &EndpointId,
        headers: &BTreeMap<String, String>,
    ) -> Result<Option<SealedHeaders>> {
        if headers.is_empty() {
            return Ok(None);
        }
        let json = serde_json::to_string(headers).map_err(|_| corrupt("headers"))?;
        let sealed = self
            .seal(
                &Secret::from_config(json),
                &headers_context(venue, endpoint),
            )
            .await?;
        Ok(Some(SealedHeaders {
            hints: headers
                .iter()
                .map(|(name, value)| (name.clone(), crate::model::headers::hint(value)))
                .collect(),
            sealed,
        }))
    }

    /// An endpoint's custom headers, opened for one request (or for a change to them).
    pub async fn open_headers(&self, endpoint: &Endpoint) -> Result<BTreeMap<String, String>> {
        let Some(headers) = &endpoint.headers else {
            return Ok(BTreeMap::new());
        };
        let opened = self
            .open(
                &headers.sealed,
                &headers_context(&endpoint.venue_id, &endpoint.endpoint_id),
            )
            .await?;
        serde_json::from_str(opened.expose()).map_err(|_| corrupt("headers are not an object"))
    }
}

fn context(venue: &VenueId, endpoint: &EndpointId) -> String {
    format!("popup-webhooks/{venue}/{endpoint}")
}

/// The custom headers' own context: a sealed secret cannot be read as headers, nor back.
fn headers_context(venue: &VenueId, endpoint: &EndpointId) -> String {
    format!("popup-webhooks/{venue}/{endpoint}/headers")
}

/// The cipher of a plaintext data key as KMS returns it.
fn cipher_of(plaintext: Option<aws_sdk_kms::primitives::Blob>) -> Result<Arc<Aes256Gcm>> {
    let key = plaintext.ok_or_else(|| corrupt("KMS returned no key"))?;
    if key.as_ref().len() != 32 {
        return Err(corrupt("data key is not 256 bits"));
    }
    let key = Key::<Aes256Gcm>::try_from(key.as_ref())
        .map_err(|_| corrupt("data key is not 256 bits"))?;
    Ok(Arc::new(Aes256Gcm::new(&key)))
}
