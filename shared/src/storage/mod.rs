//! Where things are kept, on AWS: the tables ([`store`]), the delivery queue ([`queue`]),
//! secrets sealed with KMS ([`sealing`]), and the clients a function holds ([`services`]).
//! Imports the rooms above it in `lib.rs`, never the pipeline.

pub mod queue;
pub mod sealing;
pub mod services;
pub mod store;
