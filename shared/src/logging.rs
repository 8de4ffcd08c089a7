//! Logging for the Lambda functions: plain lines to stdout (CloudWatch adds the time), at the
//! level of `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG` (a level name; `INFO` if unset). Only a
//! level, not per-module filters: a filter parser would bring a regex engine into every
//! binary for nothing the functions need.

use tracing::Level;

/// Installs the subscriber; call once at the start of `main`.
pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|raw| level_of(&raw))
        .unwrap_or(Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// A level name in any case (`debug`, `INFO`, `warning`…); `None` for anything else.
fn level_of(raw: &str) -> Option<Level> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "trace" => Some(Level::TRACE),
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" | "warning" => Some(Level::WARN),
        "error" | "fatal" | "critical" => Some(Level::ERROR),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_read_in_any_case() {
        assert_eq!(level_of("DEBUG"), Some(Level::DEBUG));
        assert_eq!(level_of(" warn "), Some(Level::WARN));
        assert_eq!(level_of("shared=debug"), None);
    }
}
