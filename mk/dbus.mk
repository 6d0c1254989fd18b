# Install rules for the D-Bus service (included from the Makefile; also usable alone:
# `make -f mk/dbus.mk install-dbus DESTDIR=/tmp/stage`). See docs/dbus.md.
#
#   make install-dbus [DESTDIR=...] [PREFIX=/usr] [PROFILE=release|debug] [NO_BUILD=1]
#   make test-dbus      p2p interface tests + real dbus-daemon tests (root for the latter)

CARGO ?= cargo
PREFIX ?= /usr
DESTDIR ?=
PROFILE ?= release
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
BINDIR ?= $(PREFIX)/bin
SYSTEMD_UNITDIR ?= /usr/lib/systemd/system
DBUS_SYSTEM_POLICYDIR ?= /usr/share/dbus-1/system.d
DBUS_SYSTEM_SERVICEDIR ?= /usr/share/dbus-1/system-services
DBUS_INTERFACEDIR ?= /usr/share/dbus-1/interfaces
POLKIT_ACTIONDIR ?= /usr/share/polkit-1/actions
DOCDIR ?= $(PREFIX)/share/doc/trident
TRIDENTD_BIN ?= $(TARGET_DIR)/$(PROFILE)/tridentd

.PHONY: install-dbus install-dbus-build install-dbus-files test-dbus

install-dbus: install-dbus-build install-dbus-files

install-dbus-build:
ifneq ($(NO_BUILD),1)
	$(CARGO) build $(if $(filter release,$(PROFILE)),--release) --bin tridentd
endif

install-dbus-files:
	install -D -m 0755 $(TRIDENTD_BIN) $(DESTDIR)$(BINDIR)/tridentd
	install -D -m 0644 units/tridentd.service $(DESTDIR)$(SYSTEMD_UNITDIR)/tridentd.service
	install -D -m 0644 dbus/io.trident.Trident1.conf $(DESTDIR)$(DBUS_SYSTEM_POLICYDIR)/io.trident.Trident1.conf
	install -D -m 0644 dbus/io.trident.Trident1.service $(DESTDIR)$(DBUS_SYSTEM_SERVICEDIR)/io.trident.Trident1.service
	install -D -m 0644 dbus/io.trident.Trident1.xml $(DESTDIR)$(DBUS_INTERFACEDIR)/io.trident.Trident1.xml
	install -D -m 0644 dbus/io.trident.Trident1.policy $(DESTDIR)$(POLKIT_ACTIONDIR)/io.trident.Trident1.policy
	install -D -m 0644 docs/dbus.md $(DESTDIR)$(DOCDIR)/dbus.md

test-dbus:
	$(CARGO) test --lib dbus::
	$(CARGO) test --test dbus_p2p --test dbus_daemon --test dbus_systemd
