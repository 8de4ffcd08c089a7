//! Signing throughput with criterion: `shared::delivery::signing::sign` (HMAC-SHA256, base64, the
//! `v1,` entry) against a bare HMAC-SHA256 with the `hmac`/`sha2` crates over the same
//! `{id}.{timestamp}.{body}` bytes, for 1 KiB and 64 KiB envelopes.
//!
//! `make bench` runs it (`cargo bench -p bench --bench signing`) and `popup-bench` reads
//! criterion's estimates into docs/PERFORMANCE.md; `cargo test` runs each case once.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmac::{Hmac, KeyInit, Mac};

fn raw(key: &[u8], id: &str, ts: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn signing(c: &mut Criterion) {
    let key = shared::model::secret::Secret::generate_signing()
        .signing_key()
        .unwrap_or_default();
    let mut group = c.benchmark_group("signing");
    for (label, size) in [("1KiB", 1024usize), ("64KiB", 64 * 1024)] {
        let body = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("ours", label), &body, |b, body| {
            let mut ts = 1_795_774_500i64;
            b.iter(|| {
                ts += 1;
                shared::delivery::signing::sign(&key, "evt_01KB", ts, std::hint::black_box(body))
            })
        });
        group.bench_with_input(BenchmarkId::new("raw", label), &body, |b, body| {
            let mut ts = 1_795_774_500i64;
            b.iter(|| {
                ts += 1;
                raw(&key, "evt_01KB", ts, std::hint::black_box(body))
            })
        });
    }
    group.finish();
}

fn send_preparation(c: &mut Criterion) {
    let secret = shared::model::secret::Secret::generate_signing();
    let credential = shared::model::domain::Credential::SignedSecret {
        secrets: vec![secret],
    };
    let data = serde_json::json!({"order_id": "ord_1", "note": "x".repeat(1000)}).to_string();
    let event = shared::model::domain::Event {
        id: shared::model::ids::EventId::generate(),
        event_type: "order.created".into(),
        timestamp: "2026-11-27T10:15:00Z".into(),
        data: serde_json::value::RawValue::from_string(data).unwrap_or_else(|_| unreachable!()),
    };
    let body = shared::delivery::envelope::render_plain(
        &event,
        shared::model::domain::PayloadFormat::Envelope,
    );
    let now = chrono::Utc::now();
    let mut group = c.benchmark_group("send_preparation");
    group.bench_function("render", |b| {
        b.iter(|| {
            shared::delivery::envelope::render_plain(
                &event,
                shared::model::domain::PayloadFormat::Envelope,
            )
        })
    });
    group.bench_function("headers", |b| {
        b.iter(|| shared::pipeline::dispatch::request_headers(&credential, &event, &body, now))
    });
    group.bench_function("signing_keys", |b| b.iter(|| credential.signing_keys()));
    group.finish();
}

criterion_group!(benches, signing, send_preparation);
criterion_main!(benches);
