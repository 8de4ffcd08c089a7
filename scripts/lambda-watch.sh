#!/usr/bin/env bash
# `make lambda-watch`: the three functions under `cargo lambda watch` (the Lambda runtime
# emulator), against the moto that `make dev` runs, so `cargo lambda invoke --data-file`
# can send them the fixture events in functions/*/fixtures/. Port: WATCH_PORT (9100).
set -euo pipefail
cd "$(dirname "$0")/.."
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:${MOTO_PORT:-4566}}"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
curl -fsS "$AWS_ENDPOINT_URL/moto-api/" >/dev/null || { echo "start 'make dev' first (it runs moto)"; exit 1; }
mkdir -p .dev
{
  ./target/debug/popup-local env
  echo "AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL"
  echo "AWS_ACCESS_KEY_ID=test"
  echo "AWS_SECRET_ACCESS_KEY=test"
  echo "AWS_REGION=us-east-1"
} > .dev/functions.env
export PATH="$PWD/.venv/bin:$PATH"
exec cargo lambda watch -P "${WATCH_PORT:-9100}" --env-file .dev/functions.env
