#!/usr/bin/env bash
# `make test` after lint (or `make faults`, with arguments for cargo test): starts moto on a
# free loopback port (IAM enforced), runs the Rust tests (unit tests, and the integration tests
# in tests/, which start their own stacks on it), then, for the whole suite, a bounded
# schemathesis run of docs/openapi.yaml against a local API, `make smoke` against that API,
# the IAM audit (least privilege both ways) and the bench smoke run. Prints one closing line with the totals.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/moto.sh
start_moto "$(free_port)"
mkdir -p .dev
status=0
whole_suite=0
if [ $# -eq 0 ]; then
  whole_suite=1
  set -- --workspace --all-targets
fi
cargo test --no-fail-fast "$@" 2>&1 | tee .dev/test.log || status=$?
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' .dev/test.log | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .*; ([0-9]+) failed' .dev/test.log | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')

if [ "$whole_suite" = 1 ]; then
  # The API against its OpenAPI document: no 5xx, no response outside its schema.
  cargo build --quiet -p local -p bench -p api -p ingest -p deliver
  api_port=$(free_port)
  STACK_PREFIX="schema-$$" API_PORT="$api_port" ADMIN_API_KEY=schemathesis-admin-key \
    CREDENTIALS_FILE=.dev/schemathesis-credentials \
    ./target/debug/popup-local dev >.dev/schemathesis-stack.log 2>&1 &
  stack_pid=$!
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$api_port/event-types" && break
    sleep 0.1
  done
  echo "schemathesis: docs/openapi.yaml against http://127.0.0.1:$api_port"
  if timeout 300 .venv/bin/schemathesis run docs/openapi.yaml \
      --url "http://127.0.0.1:$api_port" \
      -H "Authorization: Bearer schemathesis-admin-key" \
      --checks not_a_server_error,response_schema_conformance,content_type_conformance \
      --max-examples 20 --seed 1 --generation-database none 2>&1 | tee .dev/schemathesis.log | tail -15
  then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    status=1
  fi
  # The credentials file that `popup-local dev` writes, used the way the README says.
  echo "credentials file: .dev/schemathesis-credentials"
  if .venv/bin/python scripts/check_credentials.py .dev/schemathesis-credentials "schema-$$" \
      2>&1 | tee .dev/credentials-check.log; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    status=1
  fi
  # The Guide's steps against this running `popup-local dev` (what `make dev` runs), with the
  # very command that checks a deployed stack.
  echo "smoke: make smoke API_URL=http://127.0.0.1:$api_port"
  if make --no-print-directory smoke API_URL="http://127.0.0.1:$api_port" \
      ADMIN_KEY=schemathesis-admin-key 2>&1 | tee .dev/smoke.log; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    status=1
  fi
  kill -INT "$stack_pid" 2>/dev/null || true
  wait "$stack_pid" 2>/dev/null || true

  # Least privilege both ways: what each function's code can call (its binary) and did call
  # (moto's access log of this whole run) against what its policy in the template grants.
  echo "IAM audit: popup-local iam-audit"
  if ./target/debug/popup-local iam-audit "$MOTO_DIR/access.jsonl" 2>&1 | tee .dev/iam-audit.log; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    status=1
  fi

  # The benchmark suite on tiny inputs, so that `make bench` never rots.
  echo "bench smoke: popup-bench --smoke"
  if ./target/debug/popup-bench --smoke --out .dev/performance-smoke.md >.dev/bench-smoke.log 2>&1; then
    passed=$((passed + 1))
  else
    tail -20 .dev/bench-smoke.log
    failed=$((failed + 1))
    status=1
  fi
fi

echo
echo "${passed} passed, ${failed} failed"
exit $status
