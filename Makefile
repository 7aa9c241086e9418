# The two commands users need are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test services services-stop build-deps build lint fmt compose-check manifests-check bench unit integration

## Start the local services, build, and run the service with the demo producer.
run: services build-deps
	$(CARGO) build --release --bin analytics
	./target/release/analytics run --demo

## Everything CI checks: format, lints, compose file, unit and integration tests.
test: services build-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(MAKE) compose-check
	$(MAKE) manifests-check
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test -p dataflows --tests
	scripts/install-test-tools.sh
	$(CARGO) test --test integration --test metrics --test dashboard --test web --test auth --test ratelimit --test custom_events --test retention --test trading --test grafana --test tls -- --test-threads=2
	# schemathesis against the OpenAPI document; --nocapture prints its case counts.
	$(CARGO) test --test openapi -- --test-threads=1 --nocapture

## Install what is missing and start PostgreSQL, Redis and Kafka on 127.0.0.1.
services:
	scripts/services.sh start

services-stop:
	scripts/services.sh stop

## System libraries the build links against (OpenSSL via pkg-config).
build-deps:
	scripts/install-build-deps.sh

## Validate docker-compose.yml (builds the compose CLI plugin if it is missing).
compose-check:
	scripts/install-compose.sh
	docker compose -f docker-compose.yml config -q
	@echo "docker-compose.yml: valid"

## Validate deploy/ offline: the Kubernetes manifests with kubeconform -strict
## (built from the Go module proxy; schemas from PyPI's kubernetes-validate)
## and the systemd unit with systemd-analyze verify.
manifests-check:
	scripts/install-kubeconform.sh
	scripts/check-manifests.sh

build: build-deps
	$(CARGO) build --workspace --all-targets

fmt:
	$(CARGO) fmt --all

## Benchmarks (not part of `make test`; see benchmarks/README.md): about 30
## minutes on fresh databases and topics; writes benchmarks/results/*.json
## and benchmarks/RESULTS.md. `make bench BENCH_ARGS=--quick` is a smoke run.
## The default offers 20,000 events/s for 60 s to the ingest phases (above
## what the service sustains today, so it is saturated throughout) and
## waits at most 120 s more; raise --ingest-rate once it keeps up.
BENCH_ARGS ?= --core-events 300000 --ingest-rate 20000 --drain-secs 120
bench: services build-deps
	$(CARGO) build --release -p analytics -p benchmarks
	$${CARGO_TARGET_DIR:-target}/release/bench all --analytics $${CARGO_TARGET_DIR:-target}/release/analytics $(BENCH_ARGS)
