//! Pagination cursors: opaque to clients (base64url), stable (the last id of a page; ids sort
//! by creation time, so a cursor stays valid while items are added).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::error::ApiError;

pub fn encode(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_id)
}

pub fn decode(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid)
}

pub fn invalid() -> ApiError {
    ApiError::invalid("cursor", "not a cursor from a previous page")
}
