//! `GET /venues/{venue_id}/endpoints/{endpoint_id}/stats?window=`: the endpoint's health over a
//! window (24 h by default, up to the history's retention), from its own history only
//! ([`shared::storage::store::EndpointStats`]).

use chrono::{Duration, Utc};
use http::StatusCode;
use shared::storage::store::Tenant;

use crate::endpoints::load;
use crate::error::ApiError;
use crate::{to_json, Api, ApiResult, Call};

/// `90m`, `24h`, `7d` or a number of seconds.
pub fn parse_window(raw: &str, retention_days: i64) -> Result<Duration, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "window",
            format!("`{raw}` is not a window: use minutes, hours or days such as 90m, 24h or 7d (at most {retention_days}d, the history's retention)"),
        )
    };
    let raw = raw.trim();
    let (digits, unit) = match raw.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&raw[..i], c),
        _ => (raw, 's'),
    };
    let n: i64 = digits.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        's' => Some(n),
        'm' => n.checked_mul(60),
        'h' => n.checked_mul(3600),
        'd' => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(invalid)?;
    if seconds < 60 || seconds > retention_days * 86_400 {
        return Err(invalid());
    }
    Ok(Duration::seconds(seconds))
}

pub async fn get(api: &Api, tenant: &Tenant, raw_endpoint: &str, call: &Call<'_>) -> ApiResult {
    let window_text = call.param("window").unwrap_or("24h");
    let window = parse_window(window_text, api.retention_days)?;
    let endpoint = load(api, tenant, raw_endpoint).await?;
    let until = Utc::now();
    let stats = api
        .store
        .endpoint_stats(tenant, &endpoint.endpoint_id, (until - window, until))
        .await?;
    let mut body = to_json(&stats);
    body["endpoint_id"] = to_json(&endpoint.endpoint_id);
    body["window"] = window_text.into();
    Ok((StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_minutes_hours_days_or_seconds() {
        let w = |raw| parse_window(raw, 30).map(|d| d.num_seconds());
        assert_eq!(w("24h").unwrap(), 86_400);
        assert_eq!(w("90m").unwrap(), 5_400);
        assert_eq!(w("7d").unwrap(), 604_800);
        assert_eq!(w("3600").unwrap(), 3_600);
        assert_eq!(w("30d").unwrap(), 30 * 86_400);
        for bad in [
            "31d",
            "0h",
            "59",
            "",
            "h",
            "1w",
            "-1h",
            "1.5h",
            "99999999999999999d",
        ] {
            let err = w(bad).unwrap_err();
            assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
    }
}
