#!/usr/bin/env bash
# `make lambda-watch`: the three functions under `cargo lambda watch` (the Lambda runtime
# emulator), against the moto that `make dev` runs, so `cargo lambda invoke --data-file`
# can send them the fixture events in functions/*/fixtures/. Port: WATCH_PORT (9100).
set -euo pipefail
cd "$(dirname "$0")/.."
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:${MOTO_PORT:-4566}}"
curl -fsS "$AWS_ENDPOINT_URL/moto-api/" >/dev/null || { echo "start 'make dev' first (it runs moto)"; exit 1; }
# moto enforces IAM: the watched functions share one environment, so they use the operator's
# keys that `make dev` wrote (each function's own identity is used by `make dev` itself).
source scripts/moto.sh
use_operator ".dev/moto-${MOTO_PORT:-4566}"
mkdir -p .dev
{
  ./target/debug/popup-local env
  echo "AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL"
  echo "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID"
  echo "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY"
  echo "AWS_REGION=us-east-1"
} > .dev/functions.env
export PATH="$PWD/.venv/bin:$PATH"
exec cargo lambda watch -P "${WATCH_PORT:-9100}" --env-file .dev/functions.env
