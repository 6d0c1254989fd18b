#!/bin/sh
# Runs inside the container as trident-test-report.service (Type=exec, so its own job
# does not keep the boot "starting"): waits for the boot to settle, writes what the
# test asserts on into /results, then powers the container off.
systemctl is-system-running --wait > /results/system-state 2>&1
systemctl list-dependencies --plain --no-pager boot-complete.target > /results/boot-complete-deps.txt 2>&1
systemctl show -p Wants multi-user.target > /results/multi-user-wants.txt 2>&1
for u in boot-complete.target trident-health.target trident-commit.service \
         trident-rollback.service trident-record-rollback.service trident-install.service; do
    systemctl show -p Id -p ActiveState -p SubState -p Result -p LoadState \
        -p ActiveEnterTimestampMonotonic -p ExecMainStartTimestampMonotonic "$u"
    echo
done > /results/show.txt 2>&1
for u in trident-stage.service trident-finalize.service trident-commit.service \
         trident-health-check@probe.service trident-rollback.service \
         trident-record-rollback.service trident-install.service; do
    systemctl show -p Id -p DevicePolicy -p DeviceAllow -p ProtectSystem -p PrivateDevices \
        -p ProtectKernelTunables -p ProtectKernelModules -p PrivateTmp -p ProtectHome \
        -p CPUWeight -p IOWeight -p Nice "$u"
    echo
done > /results/sandbox.txt 2>&1
systemctl list-units --all --plain --no-legend --no-pager 'trident-*' > /results/trident-units.txt 2>&1
systemctl is-enabled trident-update.timer trident-finalize.timer > /results/timers-enabled.txt 2>&1
systemctl list-timers --all --no-pager 'trident-*' > /results/timers.txt 2>&1
systemd-analyze verify --man=no /usr/lib/systemd/system/trident-*.service \
    /usr/lib/systemd/system/trident-*.target /usr/lib/systemd/system/trident-*.timer \
    > /results/verify.txt 2>&1
echo $? > /results/verify.rc
(cd /run/systemd/generator && find . -path '*trident*' | sort) > /results/generator-output.txt 2>&1
echo done > /results/report-done
systemctl poweroff
