# Trident — developer entry points. See README.md and docs/testing.md.

CARGO ?= cargo
PREFIX ?= /usr
DESTDIR ?=
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
DEMO_DIR ?= $(TARGET_DIR)/demo

.PHONY: all deps build release demo test test-unit lint fmt clippy bench-stream clean-demo ci

all: build

## deps: Debian packages needed by the build, demo and tests (idempotent)
deps:
	./scripts/install-deps.sh

build:
	$(CARGO) build --all-targets

release:
	$(CARGO) build --release

## demo: build and run the main job on the built-in demo (no real disk needed)
demo: deps release
	DEMO_DIR=$(DEMO_DIR) TRIDENT=$(TARGET_DIR)/release/trident ./scripts/demo.sh

## test: everything CI runs (lint, unit tests, privileged tests when root)
test: deps lint
	$(CARGO) test --all-targets -- --test-threads=2

test-unit:
	$(CARGO) test --lib

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

## bench-stream: streaming throughput vs. zstd baselines (not a test)
bench-stream:
	./scripts/bench-stream.sh

## ci: what .ci/run runs: the tests, then the container tier (real systemd PID 1)
ci: test test-container

clean-demo:
	rm -rf $(DEMO_DIR)

include mk/install.mk
include mk/e2e.mk
include mk/dbus.mk

# `make install` also installs tridentd, its bus policy, activation file and polkit actions.
install: install-dbus-build install-dbus-files
