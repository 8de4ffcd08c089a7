//! The library every Popup Webhooks function uses.
//!
//! - [`domain`], [`ids`], [`secret`]: what endpoints, events and deliveries are, and their rules.
//! - [`envelope`], [`signing`]: the wire format and the Standard Webhooks signature.
//! - [`store`] (DynamoDB) and [`queue`] (SQS): persistence and jobs.
//! - [`destination`], [`http_client`]: where a webhook may go and how it is sent.
//! - [`ingest`], [`dispatch`], [`replay`]: accepting an event, attempting one delivery, and
//!   re-sending an endpoint's failed deliveries in the background.
//! - [`retry`], [`waits`], [`breaker`]: when a failed delivery is tried again, where it waits,
//!   and when an endpoint's deliveries wait unattempted.

// Release builds abort on panic (see the workspace's release profile): no panicking shortcuts.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod api_key;
pub mod backoff;
pub mod breaker;
pub mod catalog;
pub mod config;
pub mod deadline;
pub mod destination;
pub mod dispatch;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod headers;
pub mod http_client;
pub mod ids;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod operational;
pub mod queue;
pub mod removal;
pub mod replay;
pub mod retry;
pub mod sealing;
pub mod secret;
pub mod services;
pub mod signing;
pub mod store;
pub mod template;
pub mod waits;

pub use error::{Error, Result, ValidationError};
