#!/usr/bin/env bash
# `make test` after lint (or `make faults`, with arguments for cargo test): starts moto on a free loopback port and runs every Rust test
# (unit tests and the integration tests in tests/, which start their own stacks on it), then
# prints one closing line with the totals.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/moto.sh
start_moto "$(free_port)"
mkdir -p .dev
status=0
if [ $# -eq 0 ]; then set -- --workspace --all-targets; fi
cargo test --no-fail-fast "$@" 2>&1 | tee .dev/test.log || status=$?
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' .dev/test.log | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .*; ([0-9]+) failed' .dev/test.log | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "${passed} passed, ${failed} failed"
exit $status
