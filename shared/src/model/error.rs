//! The domain error: what can go wrong below the HTTP layer. The API maps it to a status once.

/// Input that breaks a rule; `field` names what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("the payload is {size} bytes; the limit is {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    /// DynamoDB or SQS failed; the text is the SDK's, never a secret.
    #[error("{service}: {message}")]
    Aws {
        service: &'static str,
        message: String,
    },
    #[error("corrupt stored item: {0}")]
    Corrupt(String),
    /// An event was stored, but neither its jobs nor a note to queue them later could be
    /// written: publishing it again with the same id finishes it.
    #[error("the event was stored but its deliveries could not be queued: {0}")]
    StoredNotQueued(String),
}

impl Error {
    pub fn aws(service: &'static str, err: impl std::error::Error + 'static) -> Self {
        Error::Aws {
            service,
            message: error_chain(&err),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources, one line: the SDK puts the useful part (code, message) in a source.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}
