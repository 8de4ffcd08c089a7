//! The library every Popup Webhooks function uses, in five rooms; each imports only the
//! rooms listed before it:
//!
//! - [`model`]: what endpoints, events, deliveries and keys are, and their rules.
//! - [`delivery`]: one attempt and what follows it: the payload, the signature, where it may go,
//!   the HTTP client, retries and the circuit breaker.
//! - [`runtime`]: configuration, logs and metrics, the invocation's deadline.
//! - [`storage`]: DynamoDB, SQS and KMS: the tables, the delivery queue, sealed secrets, and
//!   the clients a function holds.
//! - [`pipeline`]: accepting an event, attempting its deliveries, waits, replays, removals and
//!   operational events.

// Release builds abort on panic (see the workspace's release profile): no panicking shortcuts.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod model;

pub mod delivery;

pub mod runtime;

pub mod storage;

pub mod pipeline;

pub use model::error::{Error, Result, ValidationError};

#[cfg(test)]
mod layout {
    use std::path::Path;

    /// The rooms, each importing only the ones before it.
    const ROOMS: [&str; 5] = ["model", "delivery", "runtime", "storage", "pipeline"];

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// What a file's code names of another room (`crate::room::…`), comments left out.
    fn rooms_named(code: &str) -> Vec<&'static str> {
        code.lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .flat_map(|line| {
                ROOMS
                    .iter()
                    .filter(move |room| line.contains(&format!("crate::{room}::")))
                    .copied()
            })
            .collect()
    }

    #[test]
    fn every_room_imports_only_the_rooms_before_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut upward = Vec::new();
        for (rank, room) in ROOMS.iter().enumerate() {
            let mut files = Vec::new();
            sources(&src.join(room), &mut files);
            assert!(!files.is_empty(), "{room}");
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                for named in rooms_named(&text) {
                    if ROOMS.iter().position(|r| *r == named).unwrap() > rank {
                        upward.push(format!("{} names {named}", file.display()));
                    }
                }
            }
        }
        assert!(upward.is_empty(), "{upward:#?}");
        assert_eq!(
            rooms_named("use crate::storage::store::Store;"),
            ["storage"]
        );
        assert!(rooms_named("/// [`crate::pipeline::ingest`]").is_empty());
    }
}
