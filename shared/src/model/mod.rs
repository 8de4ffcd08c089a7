//! The model: what endpoints, events, deliveries and keys are, and their rules. Imports
//! nothing else of this crate.

pub mod api_key;
pub mod catalog;
pub mod domain;
pub mod error;
pub mod headers;
pub mod ids;
pub mod secret;
