#!/usr/bin/env bash
# `make lambda-arm64`: the functions as `sam build` made them (Linux arm64) started under
# qemu-aarch64 (Debian's qemu-user, with libc6-arm64-cross's loader and libraries) against a
# stand-in of Lambda's runtime API (scripts/lambda_arm64.py), each answering one event of each
# kind, against a moto of its own with the stack provisioned (IAM enforced; the operator's keys).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qemu-aarch64 >/dev/null || [ ! -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]; then
  echo "needs qemu-aarch64 and the arm64 C library: apt-get install qemu-user libc6-arm64-cross" >&2
  exit 1
fi
source scripts/moto.sh
start_moto "$(free_port)"
mkdir -p .dev
{
  STACK_PREFIX=lambda-arm64 CAPACITY_SCALE=off ./target/debug/popup-local env
  echo "AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL"
  echo "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID"
  echo "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY"
  echo "AWS_REGION=us-east-1"
  echo "RUST_LOG=info"
} > .dev/lambda-arm64.env
.venv/bin/python scripts/lambda_arm64.py .dev/lambda-arm64.env
