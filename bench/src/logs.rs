//! What the functions log, counted as CloudWatch Logs bills its ingestion: each line's bytes
//! plus 26 bytes of metadata per log event. The functions' own subscriber and format
//! (`shared::runtime::logging`, JSON lines at INFO, as the template sets `LogFormat: JSON` and
//! `ApplicationLogLevel: INFO`), for their targets only (not the local stack's or the bench's
//! own lines), and their metric (EMF) lines, which are log events too. Platform lines
//! (`SystemLogLevel: WARN`) are not written on a normal invocation.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// CloudWatch Logs' metadata per log event, billed as ingested bytes.
pub const EVENT_OVERHEAD_BYTES: u64 = 26;

static BYTES: AtomicU64 = AtomicU64::new(0);
static LINES: AtomicU64 = AtomicU64::new(0);

fn count(text: &[u8]) {
    let lines = text.iter().filter(|b| **b == b'\n').count() as u64;
    BYTES.fetch_add(text.len() as u64 - lines, Ordering::Relaxed);
    LINES.fetch_add(lines, Ordering::Relaxed);
}

struct Counting;

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        count(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts the functions' log and metric lines from here on (once, before any stack starts).
pub fn install() {
    shared::runtime::logging::set_metric_sink(|line| count(format!("{line}\n").as_bytes()));
    let functions = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("local", LevelFilter::OFF)
        .with_target("popup_bench", LevelFilter::OFF)
        .with_target("bench", LevelFilter::OFF);
    let layer = tracing_subscriber::fmt::layer()
        .event_format(shared::runtime::logging::JsonLines)
        .with_ansi(false)
        .with_writer(|| Counting)
        .with_filter(functions);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Starts counting again.
pub fn reset() {
    BYTES.store(0, Ordering::Relaxed);
    LINES.store(0, Ordering::Relaxed);
}

/// Lines and billed bytes (metadata included) since the last [`reset`].
pub fn taken() -> (u64, u64) {
    let lines = LINES.load(Ordering::Relaxed);
    (
        lines,
        BYTES.load(Ordering::Relaxed) + lines * EVENT_OVERHEAD_BYTES,
    )
}
