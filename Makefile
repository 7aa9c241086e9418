# The two commands users need are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test services services-stop build lint fmt compose-check bench unit integration

## Start the local services, build, and run the service with the demo producer.
run: services
	$(CARGO) build --release --bin analytics
	./target/release/analytics run --demo

## Everything CI checks: format, lints, compose file, unit and integration tests.
test: services
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(MAKE) compose-check
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test -p dataflows --tests
	scripts/install-test-tools.sh
	$(CARGO) test --test integration --test metrics --test dashboard --test web --test auth --test ratelimit --test custom_events --test retention --test trading -- --test-threads=2

## Install what is missing and start PostgreSQL, Redis and Kafka on 127.0.0.1.
services:
	scripts/services.sh start

services-stop:
	scripts/services.sh stop

## Validate docker-compose.yml (builds the compose CLI plugin if it is missing).
compose-check:
	scripts/install-compose.sh
	docker compose -f docker-compose.yml config -q
	@echo "docker-compose.yml: valid"

build:
	$(CARGO) build --workspace --all-targets

fmt:
	$(CARGO) fmt --all

bench:
	@echo "benchmarks are not written yet (issue 6)" >&2; exit 1
