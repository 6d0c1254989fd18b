#!/usr/bin/env bash
# The built-in demo: no real disk needed. Run through `make demo`.
# Today: validate every example Host Configuration and print its servicing plan.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIDENT=${TRIDENT:-target/release/trident}
DEMO_DIR=${DEMO_DIR:-target/demo}
mkdir -p "$DEMO_DIR"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

for hc in examples/*.yaml; do
  say "trident validate $hc"
  "$TRIDENT" validate "$hc" && echo "valid"
  say "trident plan $hc"
  "$TRIDENT" plan "$hc"
done

say "trident get status (a host Trident has never touched)"
"$TRIDENT" get status --datastore "$DEMO_DIR/none.sqlite"
