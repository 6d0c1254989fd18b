# Install and container-test targets (included from the Makefile; also usable alone:
# `make -f mk/install.mk install DESTDIR=/tmp/stage`).
#
#   make install [DESTDIR=...] [PREFIX=/usr] [PROFILE=release|debug] [NO_BUILD=1]
#   make test-container        boots Debian 12 under systemd-nspawn (root; see docs/units.md)

CARGO ?= cargo
PREFIX ?= /usr
DESTDIR ?=
PROFILE ?= release
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
BINDIR ?= $(PREFIX)/bin
# systemd looks for these under /usr whatever PREFIX is; the units name /usr/bin/trident.
SYSTEMD_UNITDIR ?= /usr/lib/systemd/system
SYSTEMD_GENERATORDIR ?= /usr/lib/systemd/system-generators
DOCDIR ?= $(PREFIX)/share/doc/trident
TRIDENT_BIN ?= $(TARGET_DIR)/$(PROFILE)/trident
GENERATOR_BIN ?= $(TARGET_DIR)/$(PROFILE)/trident-generator

UNIT_FILES := $(wildcard units/trident*.service units/trident*.target units/trident*.timer)

.PHONY: install install-build install-files test-container

install: install-build install-files

install-build:
ifneq ($(NO_BUILD),1)
	$(CARGO) build $(if $(filter release,$(PROFILE)),--release) --bin trident --bin trident-generator
endif

install-files:
	install -D -m 0755 $(TRIDENT_BIN) $(DESTDIR)$(BINDIR)/trident
	install -D -m 0755 $(GENERATOR_BIN) $(DESTDIR)$(SYSTEMD_GENERATORDIR)/trident-generator
	install -d -m 0755 $(DESTDIR)$(SYSTEMD_UNITDIR)
	install -m 0644 $(UNIT_FILES) $(DESTDIR)$(SYSTEMD_UNITDIR)/
	install -D -m 0644 docs/units.md $(DESTDIR)$(DOCDIR)/units.md

## test-container: units + generator under a real systemd PID 1 (systemd-nspawn)
test-container:
	TRIDENT_CONTAINER_TESTS=1 $(CARGO) test --test units_container -- --test-threads=1
