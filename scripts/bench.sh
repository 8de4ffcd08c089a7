#!/usr/bin/env bash
# `make bench`: starts moto on a free loopback port and runs the benchmark suite in release
# mode; it writes docs/PERFORMANCE.md. Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/moto.sh
start_moto "$(free_port)"
# The functions on their own: built together with the bench, they would share its (larger)
# feature set, e.g. the log filter the local stack uses, and the sizes would not be theirs.
cargo build --release -p api -p ingest -p deliver
cargo build --release -p bench
# Signing throughput with criterion, three runs (both sides in each; criterion times one
# after the other, so one run can catch the machine busy): popup-bench takes the median of
# the three ratios from criterion's saved estimates.
for run in 1 2 3; do
  cargo bench -p bench --bench signing -- --save-baseline "run$run"
done
./target/release/popup-bench --out docs/PERFORMANCE.md "$@"
