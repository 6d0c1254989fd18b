#!/usr/bin/env bash
# The built-in demo: no real disk needed. Run through `make demo`.
#  1. validate every example Host Configuration and print its servicing plan;
#  2. build two OS images (v1, v2) from fixture disk images into COSI files, inspect and
#     verify them.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIDENT=${TRIDENT:-target/release/trident}
DEMO_DIR=${DEMO_DIR:-target/demo}
mkdir -p "$DEMO_DIR"
DEMO_DIR=$(cd "$DEMO_DIR" && pwd)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

for hc in examples/*.yaml; do
  say "trident validate $hc"
  "$TRIDENT" validate "$hc" && echo "valid"
  say "trident plan $hc"
  "$TRIDENT" plan "$hc"
done

for v in v1 v2; do
  say "build OS image $v: fixture disk image -> COSI"
  tests/fixtures/make-disk-image.sh "$DEMO_DIR/$v.img" "$v" >/dev/null
  "$TRIDENT" cosi build "$DEMO_DIR/$v.img" -o "$DEMO_DIR/$v.cosi" --force
  rm -f "$DEMO_DIR/$v.img"
done

say "trident cosi inspect $DEMO_DIR/v2.cosi"
"$TRIDENT" cosi inspect "$DEMO_DIR/v2.cosi"
say "trident cosi verify $DEMO_DIR/v2.cosi"
"$TRIDENT" cosi verify "$DEMO_DIR/v2.cosi"

say "trident get status (a host Trident has never touched)"
"$TRIDENT" get status --datastore "$DEMO_DIR/none.sqlite"
