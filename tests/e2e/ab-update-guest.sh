#!/bin/sh
# Guest half of tests/e2e/ab-update.sh, installed as /usr/lib/trident-e2e/ab-step and
# run by trident-e2e-ab.service on every boot of the installed system, after
# multi-user.target, boot-complete.target and Trident's own per-boot units (commit,
# record-rollback), before the harness's report unit.
#
# 1. Reports what booted and what the datastore says, one "TRIDENT-E2E: ab KEY VALUE"
#    line each, on the serial console (the host asserts on them).
# 2. Does the step the host left in the file "step" on the images disk (an ext4
#    filesystem labelled e2e-images on the second virtio disk, holding the update
#    COSI files and their Host Configurations):
#      none        nothing (the report unit then powers the guest off)
#      update VER  /etc/trident/config.yaml := hc-VER.yaml, start trident-stage.service
#                  (the real unit), then Finalize over D-Bus (tridentd, activated by the
#                  call, starts trident-finalize.service, which reboots)
#      rollback    `trident rollback --ab` (manual A/B rollback; reboots)
#      power-cut VER  config := hc-VER.yaml, start trident-stage.service without
#                  waiting, and once it reports writing the root volume (its STATUS=,
#                  at 5% or more) say "power-cut-now": the host then kills QEMU
#      timers VER  config := hc-VER.yaml, unmask and enable the schedule timers with
#                  drop-ins that shorten them (staging 10 s after start, a finalize
#                  window every 15 s), then only watch: the timers stage, finalize and
#                  reboot on their own
#    A step that reboots never returns: the reboot stops this unit, and the report unit
#    (ordered after it) never runs. A step that fails reports "ab failed ..." and
#    returns, so the report unit powers off and the host sees the failure.
set -u

console=/dev/ttyS0
say() { echo "TRIDENT-E2E: ab $*" > "$console"; }
# Every line of a command's output (stdout and stderr), prefixed.
say_lines() { # KEY CMD...
    key=$1
    shift
    "$@" 2>&1 | while IFS= read -r line; do say "$key $line"; done
}
efivar() { # a systemd-boot string variable, "-" when unset
    f=/sys/firmware/efi/efivars/$1-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
    # efivarfs files cannot seek: read them whole.
    # shellcheck disable=SC2002
    if [ -r "$f" ]; then cat "$f" | tail -c +5 | tr -d '\000'; else echo "-"; fi
}
unit() { # UNIT: whether it was started at all this boot, state, result, exit status
    ran=no
    [ "$(systemctl show -P InactiveExitTimestampMonotonic "$1")" = 0 ] || ran=yes
    say "unit $1 ran=$ran active=$(systemctl show -P ActiveState "$1") result=$(systemctl show -P Result "$1") status=$(systemctl show -P ExecMainStatus "$1")"
}
fail() {
    say "failed $*"
    exit 1
}

images=/run/trident-e2e/images
mkdir -p "$images"
mountpoint -q "$images" || mount -o ro -L e2e-images "$images" || fail "mounting the images disk"
step=$(cat "$images/step")
say "step $step"

# --- what booted ----------------------------------------------------------------------
say "os $(cat /etc/os-version)"
say "root $(findmnt -no SOURCE /)"
say "cmdline-root $(tr ' ' '\n' < /proc/cmdline | sed -n 's/^root=//p')"
say "entry-selected $(efivar LoaderEntrySelected)"
say "entry-default $(efivar LoaderEntryDefault)"
say "entry-oneshot $(efivar LoaderEntryOneShot)"
say "markers trial=$([ -e /etc/trident/boot/trial ] && echo yes || echo no) pending=$([ -e /etc/trident/boot/pending ] && echo yes || echo no)"
entries() { find /boot/efi/loader/entries -name '*.conf' -printf '%f ' | tr -s ' '; }
say "esp $(findmnt -no SOURCE /boot/efi) $(entries)"
say "var-lib-trident $(findmnt -no SOURCE /var/lib/trident)"
say "staged-now $([ -e /var/lib/trident/staged ] && echo yes || echo no)"
say "failed-units $(systemctl list-units --state=failed --no-legend --plain | awk '{printf "%s ", $1}')"
for u in trident-commit.service trident-record-rollback.service trident-rollback.service \
    trident-health.target; do
    unit "$u"
done
# Milestones of this boot (docs/units.md): COMMITTED, ROLLED_BACK.
say "journal committed=$(journalctl -b -o cat MESSAGE_ID=4f6e0c1a8b2d4c3e9a7f1b2c3d4e5f62 | wc -l) rolled-back=$(journalctl -b -o cat MESSAGE_ID=4f6e0c1a8b2d4c3e9a7f1b2c3d4e5f63 | wc -l)"
say_lines status trident get status
say_lines last-error trident get last-error
# The newest history rows, one "OPERATION BEFORE->AFTER" each (top-level keys of the
# JSON array's objects are indented by four spaces).
say_lines history sh -c 'trident get history --limit 4 --format json \
    | sed -n "s/^    \"\(operation\|stateBefore\|stateAfter\)\": \"\(.*\)\",*\$/\2/p" \
    | paste -d" " - - - | sed "s/ /->/2"'
say_lines image-url sh -c 'trident get configuration | sed -n "/^image:/,/^[a-z]/s/^ *url: //p"'
health_failed=no
if systemctl list-units --state=failed --no-legend 'trident-health-check@*' | grep -q .; then
    health_failed=yes
    say "health-check-failed waiting for trident-rollback.service to reboot"
fi
say "report-done"

# --- the step ---------------------------------------------------------------------------
# A trial boot whose health check failed: trident-rollback.service records it and
# reboots. Wait for that reboot rather than letting the report unit power off first.
if [ "$health_failed" = yes ]; then
    sleep 300
    fail "trident-rollback.service did not reboot within 300 s"
fi

configure() { # VERSION: the Host Configuration the units read
    [ -f "$images/hc-$1.yaml" ] || fail "no hc-$1.yaml on the images disk"
    mkdir -p /etc/trident
    cp "$images/hc-$1.yaml" /etc/trident/config.yaml
}

case $step in
    none) ;;
    update\ *)
        version=${step#update }
        configure "$version"
        say "action stage $version"
        start=$(date +%s)
        systemctl start trident-stage.service || {
            say_lines journal journalctl -b -o cat -u trident-stage.service -n 30
            fail "stage"
        }
        say "stage-seconds $(($(date +%s) - start))"
        # The stage waits for network-online.target only for an image that comes over
        # the network (docs/units.md, "Network"); these are local files.
        say "stage-network-waits $(journalctl -b -o cat -u trident-stage.service | grep -c 'waiting for network-online.target')"
        # (The finished stage unit is unloaded at once: its properties say nothing.)
        say "stage-journal staged=$(journalctl -b -o cat MESSAGE_ID=4f6e0c1a8b2d4c3e9a7f1b2c3d4e5f60 | wc -l)"
        # Where the stage's time went (the engine's log, with monotonic time stamps).
        say_lines stage-log journalctl -b -o short-monotonic --no-hostname -u trident-stage.service
        say "staged-stamp $([ -e /var/lib/trident/staged ] && echo yes || echo no)"
        say "entries $(entries)"
        say_lines staged-status sh -c 'trident get status | grep -E "^(servicingState|activeVolume|targetVolume):"'
        say "action finalize"
        if out=$(busctl call io.trident.Trident1 /io/trident/Trident1 \
            io.trident.Trident1 Finalize 'a{sv}' 0 2>&1); then
            say "finalize-call ok"
        else
            say "finalize-call failed: $out"
            fail "Finalize over D-Bus"
        fi
        # trident-finalize.service reboots when it succeeds; report if it fails instead.
        i=0
        while [ $i -lt 300 ]; do
            if [ "$(systemctl show -P ActiveState trident-finalize.service)" = failed ]; then
                say_lines journal journalctl -b -o cat -u trident-finalize.service -u tridentd.service -n 30
                fail "finalize"
            fi
            sleep 1
            i=$((i + 1))
        done
        fail "finalize did not reboot within 300 s"
        ;;
    power-cut\ *)
        version=${step#power-cut }
        configure "$version"
        say "action stage $version (the power will be cut)"
        systemctl start --no-block trident-stage.service || fail "starting trident-stage.service"
        i=0
        while [ $i -lt 600 ]; do
            text=$(systemctl show -P StatusText trident-stage.service)
            percent=$(printf '%s' "$text" | sed -n 's|^writing / onto .*: \([0-9]*\)% .*|\1|p')
            if [ -n "$percent" ] && [ "$percent" -ge 5 ]; then
                say "power-cut-now $text"
                sleep 600
                fail "the host did not cut the power"
            fi
            if [ -e /var/lib/trident/staged ]; then
                fail "the stage finished before the power cut (last status: $text)"
            fi
            if [ "$(systemctl show -P ActiveState trident-stage.service)" = failed ]; then
                say_lines journal journalctl -b -o cat -u trident-stage.service -n 30
                fail "stage"
            fi
            sleep 0.5
            i=$((i + 1))
        done
        fail "trident-stage.service never reported writing the root volume"
        ;;
    timers\ *)
        version=${step#timers }
        configure "$version"
        # The image masks the timers (the other steps must not be disturbed by them).
        rm -f /etc/systemd/system/trident-update.timer /etc/systemd/system/trident-finalize.timer
        mkdir -p /etc/systemd/system/trident-update.timer.d /etc/systemd/system/trident-finalize.timer.d
        # Drop-ins as docs/units.md describes them, with a schedule a test can wait for.
        printf '%s\n' '[Timer]' 'OnCalendar=' 'OnActiveSec=10s' 'RandomizedDelaySec=0' \
            'AccuracySec=1s' > /etc/systemd/system/trident-update.timer.d/e2e.conf
        printf '%s\n' '[Timer]' 'OnCalendar=' 'OnCalendar=*:*:00/15' 'RandomizedDelaySec=0' \
            'AccuracySec=1s' > /etc/systemd/system/trident-finalize.timer.d/e2e.conf
        systemctl daemon-reload
        systemctl enable --now trident-update.timer trident-finalize.timer > /dev/null 2>&1 \
            || fail "enabling the timers"
        say_lines timers systemctl list-timers --no-legend 'trident-*'
        say "action timers $version"
        # Only watch: report every change of the two services' states until the
        # finalize service reboots the machine.
        last=''
        i=0
        while [ $i -lt 360 ]; do
            now="stage=$(systemctl show -P ActiveState trident-stage.service) finalize=$(systemctl show -P ActiveState trident-finalize.service) staged=$([ -e /var/lib/trident/staged ] && echo yes || echo no)"
            if [ "$now" != "$last" ]; then
                say "timer-watch $now"
                last=$now
            fi
            sleep 1
            i=$((i + 1))
        done
        fail "the timers did not stage, finalize and reboot within 360 s"
        ;;
    rollback)
        say_lines rollback-check trident rollback --ab --check
        say "action rollback"
        trident rollback --ab > "$console" 2>&1 || fail "rollback"
        sleep 300
        fail "rollback did not reboot within 300 s"
        ;;
    *) fail "unknown step '$step'" ;;
esac
