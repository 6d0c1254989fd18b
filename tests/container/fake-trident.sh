#!/bin/sh
# TEST SEAM, not Trident: stands in for /usr/bin/trident inside the container so each
# scenario controls what a verb returns (the real verbs run under systemd in the VM
# suite). It records every call in /results/calls.log and behaves as configured
# by files under /etc/trident-test/:
#   health-<name>.rc   exit status of `internal health-check <name>` (default 0)
# `internal health-check-failed` also snapshots the unit states into
# /results/at-rollback.txt before the rollback service reboots the container.
# One write(2) per call: health checks run in parallel and O_APPEND keeps whole
# lines apart only when each line is written at once.
line=$(cut -d' ' -f1 /proc/uptime)
for a in "$@"; do line="$line [$a]"; done
printf '%s\n' "$line" >> /results/calls.log
[ "$1" = internal ] || exit 0
case "$2" in
    health-check)
        rc=$(cat "/etc/trident-test/health-$3.rc" 2>/dev/null || echo 0)
        exit "$rc" ;;
    health-check-failed)
        systemctl show -p Id -p ActiveState -p SubState \
            boot-complete.target trident-health.target trident-commit.service \
            > /results/at-rollback.txt 2>&1
        exit 0 ;;
    *) exit 0 ;;
esac
