//! One delivery attempt and what follows it: the payload a receiver gets ([`envelope`],
//! [`template`]), its signature ([`signing`]), where it may go and how it is sent
//! ([`destination`], [`http_client`]), when it is tried again ([`retry`], [`backoff`]) and when
//! an endpoint's deliveries wait unattempted ([`breaker`]). Imports the model only.

pub mod backoff;
pub mod breaker;
pub mod destination;
pub mod envelope;
pub mod host_breaker;
pub mod http_client;
pub mod retry;
pub mod signing;
pub mod template;
