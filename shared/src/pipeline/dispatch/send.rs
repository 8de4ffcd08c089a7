//! One request: the endpoint's credential opened, the event rendered in its format, the
//! Standard Webhooks headers and signature (or the bearer token), the POST, and the attempt
//! that describes what happened.

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue};

use super::{Dispatcher, ERROR_BYTES};
use crate::delivery::envelope;
use crate::delivery::http_client::{text_excerpt, ErrorClass, Response};
use crate::delivery::signing;
use crate::model::domain::{Attempt, Credential, Endpoint, Event, Trigger};
use crate::model::error::{Error, Result};
use crate::model::headers;

impl Dispatcher {
    /// Renders, signs and POSTs one event to one endpoint; the attempt describes the outcome.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        event: &Event,
        trigger: Trigger,
        attempt_number: u32,
        now: DateTime<Utc>,
    ) -> Result<(Attempt, Response)> {
        let not_sent = |class: ErrorClass, message: String| Response {
            status_code: None,
            duration: std::time::Duration::ZERO,
            error: Some((class, message)),
            body_excerpt: None,
            retry_after: None,
        };
        let opened = match self.sealer.open_credential(endpoint, now).await {
            Ok(credential) => self
                .sealer
                .open_headers(endpoint)
                .await
                .map(|custom| (credential, custom)),
            Err(e) => Err(e),
        };
        let response = match opened {
            Ok((credential, custom)) => {
                match envelope::render(event, endpoint.payload_format, endpoint.template.as_deref())
                    .await
                {
                    Ok(body) => {
                        let mut headers = request_headers(&credential, event, &body, now);
                        headers::apply(&custom, &mut headers);
                        self.http.post(&endpoint.url, headers, body).await
                    }
                    Err(message) => not_sent(ErrorClass::Template, message),
                }
            }
            // Damaged at rest: this delivery fails with the reason; nothing else is held up.
            Err(Error::Corrupt(reason)) => not_sent(
                ErrorClass::Secret,
                format!("the endpoint's secret or custom headers do not open: {reason}"),
            ),
            Err(e) => return Err(e),
        };
        Ok(self.described(response, trigger, attempt_number, now))
    }

    /// An attempt at a host that is not answering, stopped after `waited` without an answer
    /// (so that it does not hold its invocation for the whole timeout): a timeout.
    pub(super) fn stopped_waiting(
        &self,
        endpoint: &Endpoint,
        attempt_number: u32,
        now: DateTime<Utc>,
        waited: std::time::Duration,
    ) -> (Attempt, Response) {
        let host = crate::delivery::host_breaker::host_of(&endpoint.url).unwrap_or_default();
        let response = Response {
            status_code: None,
            duration: waited,
            error: Some((
                ErrorClass::Timeout,
                format!(
                    "no answer after {:.1} s, and {host} answers none of its other endpoints either: stopped waiting (a timeout; retried once the host answers again)",
                    waited.as_secs_f64()
                ),
            )),
            body_excerpt: None,
            retry_after: None,
        };
        self.described(response, Trigger::Scheduled, attempt_number, now)
    }

    /// The attempt that describes `response`, counted in the metrics.
    fn described(
        &self,
        response: Response,
        trigger: Trigger,
        attempt_number: u32,
        now: DateTime<Utc>,
    ) -> (Attempt, Response) {
        let attempt = Attempt {
            attempt: attempt_number,
            at: now,
            trigger,
            status_code: response.status_code,
            duration_ms: response.duration.as_millis() as u64,
            error: response
                .error
                .as_ref()
                .map(|(_, message)| text_excerpt(message.as_bytes(), ERROR_BYTES)),
            error_class: response
                .error
                .as_ref()
                .map(|(class, _)| class.as_str().to_owned()),
            hint: response
                .error
                .as_ref()
                .map(|(class, _)| class.hint(response.status_code).to_owned()),
            response_body: response.body_excerpt.clone(),
        };
        // Every attempt, whatever started it (schedule, retry, replay, test).
        self.metrics.attempt(&attempt);
        (attempt, response)
    }
}

/// The Standard Webhooks headers, plus the signature or the bearer token.
pub fn request_headers(
    credential: &Credential,
    event: &Event,
    body: &[u8],
    now: DateTime<Utc>,
) -> HeaderMap {
    let timestamp = now.timestamp();
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Ids are `[A-Za-z0-9_-]` and timestamps digits, so both are valid header values.
    if let Ok(id) = HeaderValue::from_str(event.id.as_str()) {
        headers.insert("webhook-id", id);
    }
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    match credential {
        Credential::SignedSecret { .. } => {
            let keys = credential.signing_keys();
            let signature = signing::signature_header(
                keys.iter().map(Vec::as_slice),
                event.id.as_str(),
                timestamp,
                body,
            );
            if let Ok(value) = HeaderValue::from_str(&signature) {
                headers.insert("webhook-signature", value);
            }
        }
        Credential::BearerToken { token } => {
            if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
                value.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, value);
            }
        }
    }
    headers
}
