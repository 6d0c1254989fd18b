# VM suite (slow tier; included from the Makefile, also usable alone:
# `make -f mk/e2e.mk e2e-smoke`). Needs root. See docs/testing.md, "VM suite".
#
#   make e2e-guest   build (once per machine) the cached Debian 12 guest root
#   make e2e-smoke   boot A, one-shot B, back to A under OVMF + systemd-boot (2-5.5 min)
#   make e2e-ab      ab-update.sh alone: install, A/B update, manual rollback, failed
#                    health check, kernel panic, power cut mid-stage, timer-driven update
#                    (11 boots, ~12.5-20 min)
#   make e2e         the whole VM suite: smoke, layered, ab-update (~20-30 min)

E2E_DIR ?= tests/e2e
E2E_PACKAGES ?= qemu-system-x86 ovmf debootstrap mtools dosfstools gdisk zstd python3-venv e2fsprogs fdisk binutils
E2E_SCENARIOS ?= $(E2E_DIR)/smoke.sh $(E2E_DIR)/layered.sh $(E2E_DIR)/ab-update.sh

.PHONY: e2e-deps e2e-guest e2e-smoke e2e-ab e2e

e2e-deps:
	@missing=$$(for p in $(E2E_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get install -y $$missing || \
		{ apt-get update && apt-get install -y $$missing; }; fi

e2e-guest: e2e-deps
	$(E2E_DIR)/build-guest.sh

e2e-smoke: e2e-guest
	$(E2E_DIR)/smoke.sh

e2e-ab: e2e-guest
	$(E2E_DIR)/ab-update.sh

e2e: e2e-guest
	@set -e; for s in $(E2E_SCENARIOS); do echo "== $$s"; $$s; done
