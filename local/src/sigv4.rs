//! Signing a request again (SigV4) after a proxy changed its body: the local stand-ins that
//! answer part of a batch themselves (the capacity meter, the tests' fault proxy) forward the
//! rest to moto, which checks every signature.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Secret keys by access key id: the identities whose requests may be signed again.
#[derive(Clone, Default)]
pub struct Keys(Arc<Mutex<HashMap<String, String>>>);

impl Keys {
    pub fn trust(&self, access_key_id: &str, secret: &str) {
        if let Ok(mut keys) = self.0.lock() {
            keys.insert(access_key_id.to_owned(), secret.to_owned());
        }
    }

    /// The keys of this process's environment (`AWS_ACCESS_KEY_ID`, the operator) and of
    /// every identity given.
    pub fn of<'a>(identities: impl IntoIterator<Item = &'a crate::iam::Identity>) -> Self {
        let keys = Self::default();
        if let (Ok(id), Ok(secret)) = (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            keys.trust(&id, &secret);
        }
        for identity in identities {
            keys.trust(&identity.access_key_id, &identity.secret_access_key);
        }
        keys
    }

    fn secret(&self, access_key_id: &str) -> Option<String> {
        self.0.lock().ok()?.get(access_key_id).cloned()
    }
}

/// The access key id a request is signed with.
pub fn caller_of(headers: &http::HeaderMap) -> String {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').next())
        .unwrap_or_default()
        .to_owned()
}

/// Signs a request again for a new body, with the key that signed it.
pub fn resign(keys: &Keys, parts: &mut http::request::Parts, body: &[u8]) -> Result<(), String> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let auth = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("no authorization")?
        .to_owned();
    let scope = auth
        .split("Credential=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .ok_or("no credential")?;
    let fields: Vec<&str> = scope.split('/').collect();
    let [key_id, _, region, service, ..] = fields.as_slice() else {
        return Err(format!("credential scope {scope}"));
    };
    let secret = keys
        .secret(key_id)
        .ok_or_else(|| format!("unknown key {key_id}"))?;
    parts.headers.remove(http::header::AUTHORIZATION);
    parts.headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    let identity = aws_smithy_runtime_api::client::identity::Identity::from(
        aws_credential_types::Credentials::new(*key_id, secret, None, None, "proxy"),
    );
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let uri = format!(
        "http://{host}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(k, _)| *k != "x-amz-date")
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let signable = SignableRequest::new(
        parts.method.as_str(),
        &uri,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let (new_headers, _) = instructions.into_parts();
    for header in new_headers {
        let value = http::HeaderValue::from_str(header.value()).map_err(|e| e.to_string())?;
        let name =
            http::HeaderName::from_bytes(header.name().as_bytes()).map_err(|e| e.to_string())?;
        parts.headers.insert(name, value);
    }
    Ok(())
}
