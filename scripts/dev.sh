#!/usr/bin/env bash
# `make dev`: moto on loopback, the template's tables and queues, the API on 127.0.0.1:9000
# (API_PORT), ingest and deliver on their queues. Ctrl-C stops everything. VENUE_PUBLISH_RATE_LIMIT
# (events a second per venue) sets the stack parameter VenuePublishRateLimit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/moto.sh
start_moto "${MOTO_PORT:-4566}"
export API_PORT="${API_PORT:-9000}" ADMIN_API_KEY="${ADMIN_API_KEY:-dev-admin-key}"
./target/debug/popup-local dev &
LOCAL_PID=$!
trap 'kill -INT $LOCAL_PID 2>/dev/null; wait $LOCAL_PID 2>/dev/null; kill $MOTO_PID 2>/dev/null; wait $MOTO_PID 2>/dev/null' EXIT INT TERM
wait $LOCAL_PID
