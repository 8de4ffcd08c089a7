#!/usr/bin/env bash
# `make bench`: starts moto on a free loopback port and runs the benchmark suite in release
# mode; it writes docs/PERFORMANCE.md. Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/moto.sh
start_moto "$(free_port)"
cargo build --release -p bench -p api -p ingest -p deliver
./target/release/popup-bench --out docs/PERFORMANCE.md "$@"
