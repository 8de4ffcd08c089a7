# Popup Webhooks — the two commands: `make dev` (the whole system locally) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
VERIFIERS := tests/verifiers
export CARGO_BUILD_JOBS ?= 2

.PHONY: help dev test faults soak bench lint venv sam-venv verifiers browser build lambda-target lambda-build sam-build lambda-arm64 lambda-watch redrive smoke clean

help:
	@echo "make dev    - run the whole system locally (moto + API on :9000 + ingest/deliver on their queues)"
	@echo "make test   - fmt, clippy, cfn-lint, unit and integration tests (starts what it needs)"
	@echo "make bench  - performance and cost figures, written to docs/PERFORMANCE.md"
	@echo "make faults - only the fault-injection suite (docs/FAULTS.md)"
	@echo "make soak   - the chaos soak for 10 minutes (SOAK_SECONDS, SOAK_SEED; docs/FAULTS.md)"
	@echo "make smoke API_URL=… ADMIN_KEY=… [RECEIVER_URL=…] - the Guide's steps against a running API (deployed, or make dev)"
	@echo "make redrive - (beside make dev) put the messages of both DLQs back on their queues"
	@echo "make lambda-watch - (beside make dev) the functions under cargo lambda watch on :9100, for cargo lambda invoke"
	@echo "make lambda-build - build the three functions for Lambda (arm64) with cargo-lambda"
	@echo "make sam-build - sam build (for sam deploy), the arm64 target installed first"
	@echo "make lambda-arm64 - sam build's artifacts started under qemu-aarch64, one event of each kind each"

# A pinned Python venv: moto (local DynamoDB/SQS), cfn-lint, cargo-lambda, standardwebhooks.
$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# The SAM CLI (sam validate --lint here; sam build and sam deploy to deploy): a venv of its own,
# since its pins and moto's differ.
SAM_VENV := .venv-sam
$(SAM_VENV)/.installed: requirements-sam.txt
	python3 -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-sam.txt
	touch $@

sam-venv: $(SAM_VENV)/.installed

# The npm Standard Webhooks verifiers (standardwebhooks, svix) the tests check signatures with.
$(VERIFIERS)/node_modules/.installed: $(VERIFIERS)/package.json $(VERIFIERS)/package-lock.json
	cd $(VERIFIERS) && npm ci --no-audit --no-fund --silent
	touch $@

verifiers: $(VERIFIERS)/node_modules/.installed

# Debian's Chromium, which the portal page's browser tests drive with Playwright (from the venv,
# launched with this executable: never `playwright install`, which downloads a browser).
browser:
	scripts/browser.sh

build:
	cargo build --workspace

dev: venv build
	scripts/dev.sh

lint: venv sam-venv
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/cfn-lint infra/template.yaml
	SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(SAM_VENV)/bin/sam validate --lint

test: venv verifiers browser lint
	scripts/test.sh

# Performance and cost figures, written to docs/PERFORMANCE.md (release build, minutes).
bench: venv
	scripts/bench.sh

# Only the fault suite (tests/faults.rs), the table in docs/FAULTS.md.
faults: venv verifiers
	scripts/test.sh -p integration-tests --test faults

# The chaos soak (tests/soak.rs): mixed traffic under a seeded schedule of faults, then a
# ledger of every accepted event. 10 minutes by default (SOAK_SECONDS=30 for a short run).
SOAK_SECONDS ?= 600
SOAK_SEED ?= 7
soak: venv verifiers
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_SEED=$(SOAK_SEED) scripts/test.sh -p integration-tests --test soak -- --nocapture

# The Guide's steps against a running API (scripts/smoke.py): a deployed stack
# (API_URL=https://…, ADMIN_KEY=…, RECEIVER_URL=an https URL of yours that answers 2xx), or
# `make dev` (API_URL=http://127.0.0.1:9000 ADMIN_KEY=dev-admin-key; a receiver of its own).
smoke: venv
	@API_URL="$(API_URL)" ADMIN_KEY="$(ADMIN_KEY)" RECEIVER_URL="$(RECEIVER_URL)" $(VENV)/bin/python scripts/smoke.py

redrive: build
	scripts/redrive.sh

lambda-watch: venv build
	scripts/lambda-watch.sh

# The arm64 standard library, once, before any build: `sam build` (parallel in samconfig.toml)
# starts three cargo-lambda builds that would each try to install it and race.
lambda-target:
	rustup target add aarch64-unknown-linux-gnu

lambda-build: venv lambda-target
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cargo lambda build --release --arm64 -p api -p ingest -p deliver

# `sam build` as samconfig.toml sets it, once the target is there.
sam-build: venv sam-venv lambda-target
	PATH="$(CURDIR)/$(VENV)/bin:$(CURDIR)/$(SAM_VENV)/bin:$$PATH" SAM_CLI_TELEMETRY=0 sam build

# The artifacts `sam build` made, started under qemu-aarch64 (apt-get install qemu-user
# libc6-arm64-cross) against a stand-in of Lambda's runtime API, each answering one event of
# each kind it takes (scripts/lambda_arm64.py).
lambda-arm64: venv build sam-build
	scripts/lambda-arm64.sh

clean:
	cargo clean
	rm -rf $(VENV) $(SAM_VENV) $(VERIFIERS)/node_modules .dev
