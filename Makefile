# sluice — one entry point for running, testing and benchmarking. `make help` lists targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Services built so far: directory under services/ = package sluice-<name> (see scripts/run.sh).
SERVICES := aggregator analytics dashboard
# Arguments for `make dev-<service>`, e.g. make dev-producer ARGS="run --source synthetic --sink redis"
ARGS ?=
LOG := .deps/make-test.log
# Where `make run` and `make dev-<service>` point the services (the servers of scripts/deps.sh).
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/sluice
export REDIS_URL ?= redis://127.0.0.1:6379

.PHONY: help up down deps deps-down deps-up dev-db run stop test lint lint-deploy fmt bench doc schemathesis compose-check

help: ## list the targets
	@grep -E '^[a-z%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

up: ## the whole stack in containers (docker compose up)
	docker compose up -d
	docker compose ps

down: ## stop the containers
	docker compose down

deps: ## install and start the local dependency servers (no Docker needed)
	@scripts/deps.sh

deps-down: ## stop the dependency servers that scripts/deps.sh started (and nothing else)
	@scripts/deps.sh down

deps-up: ## dependencies only, in containers, for `cargo run -p …`
	docker compose up -d postgres redis rabbitmq kafka mongo

run: deps dev-db ## the stack without Docker: dependency servers + every service as a process
	@scripts/run.sh start $(SERVICES)

stop: ## stop what `make run` started
	@scripts/run.sh stop

dev-%: deps dev-db ## run one service from source against local dependencies (make dev-aggregator)
	$(CARGO) run -p sluice-$* --bin sluice-$* -- $(ARGS)

dev-db:
	@psql "$${DATABASE_URL%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$${DATABASE_URL##*/}'" | grep -q 1 \
	  || psql "$${DATABASE_URL%/*}/postgres" -qc 'CREATE DATABASE "'"$${DATABASE_URL##*/}"'"'

# Quiet on success, loud on failure: each step's output goes to $(LOG) and is shown when it fails.
test: deps ## deps + fmt check + clippy -D warnings + compose/alerts checks + all tests + compose-check
	@mkdir -p .deps; : > $(LOG)
	@step() { echo "== $$1" >> $(LOG); shift; if ! "$$@" >> $(LOG) 2>&1; then cat $(LOG); echo "FAILED: $$*"; exit 1; fi; }; \
	step "format" $(CARGO) fmt --all --check; \
	step "clippy" $(CARGO) clippy --workspace --all-targets --locked -- -D warnings; \
	step "deploy files" $(MAKE) --no-print-directory lint-deploy; \
	step "doc tests" $(CARGO) test --workspace --doc --locked; \
	echo "format, clippy, deploy files, doc tests: ok"
	@if command -v cargo-nextest >/dev/null; then \
	  $(CARGO) nextest run --workspace --locked --status-level fail --final-status-level slow --no-fail-fast \
	    2>&1 | tee .deps/nextest.log; \
	else \
	  $(CARGO) test --workspace --locked 2>&1 | tee .deps/nextest.log; \
	fi
	@$(MAKE) --no-print-directory schemathesis
	@scripts/compose-check.sh --if-possible > .deps/compose-check.log 2>&1 \
	  || { cat .deps/compose-check.log; echo "FAILED: scripts/compose-check.sh (make compose-check)"; exit 1; }
	@tail -n1 .deps/compose-check.log
	@# The test runner's own summary closes the output, as CI reads it.
	@{ grep -E '^ +Summary .* tests? run|^test result:' .deps/nextest.log || true; } | tail -n1

schemathesis: ## requests generated from the aggregator's OpenAPI document against a live aggregator
	@$(CARGO) build -q -p sluice-aggregator --bin sluice-aggregator --locked
	@scripts/schemathesis.sh > .deps/schemathesis.log 2>&1 \
	  || { cat .deps/schemathesis.log; echo "FAILED: scripts/schemathesis.sh"; exit 1; }
	@grep -E "^(after the run|schemathesis: ok)" .deps/schemathesis.log

compose-check: deps ## docker compose up checked end to end under a real Docker engine
	@scripts/compose-check.sh

lint: lint-deploy ## format check, clippy -D warnings, compose and alert rules
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

lint-deploy:
	docker-compose -f compose.yaml config -q
	promtool check config deploy/prometheus/prometheus.yml >/dev/null
	promtool check rules deploy/prometheus/alerts.yml >/dev/null
	promtool test rules deploy/prometheus/alerts.test.yml >/dev/null

fmt: ## format the code
	$(CARGO) fmt --all

bench: deps ## benchmarks; figures go to docs/benchmarks.md
	$(CARGO) bench -p sluice-resilience
	scripts/bench/aggregator.sh
	scripts/bench/producer.sh
	scripts/bench/analytics.sh
	scripts/bench/dashboard.sh

doc: ## API documentation
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps
