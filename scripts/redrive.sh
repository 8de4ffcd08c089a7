#!/usr/bin/env bash
# `make redrive`: beside `make dev`, moves every message of the ingest and delivery DLQs back
# onto its queue (after the cause is fixed), as the operator. Against AWS, run
# `popup-local redrive --from DLQ_URL --to QUEUE_URL` with your AWS credentials.
set -euo pipefail
cd "$(dirname "$0")/.."
MOTO_DIR=".dev/moto-${MOTO_PORT:-4566}"
[ -f "$MOTO_DIR/operator-credentials" ] || { echo "start 'make dev' first (it runs moto)"; exit 1; }
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:${MOTO_PORT:-4566}}"
source scripts/moto.sh
use_operator "$MOTO_DIR"
exec ./target/debug/popup-local redrive "$@"
