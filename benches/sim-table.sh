#!/usr/bin/env bash
# The simulator's tables in docs/SIMULATION.md.
#
# 1. The corpus verdict tables: `train`, then `validation`, at provisioning
#    delays of 5, 30 and 120 s, 8 slots per backend, 50 ms mean service,
#    SLO = queue wait under 100 ms, fluid model (about 5 + 3 minutes on
#    2 cores).
# 2. Unless SCENARIOS=0: the built-in scenarios at 5, 30 and 120 s (5 seeds,
#    1000 req/s mean, 20 ms service), the 14-day chart written to
#    docs/sim-shop-14d.svg, and then shop-14d at other `max` guards.
#
# NASA=FILE sets the NASA per-minute trace. The default is
# ../shared/traces/nasa-ksc-1995.minutes.csv, relative to the repository root.
# Runs from any directory.
set -euo pipefail
if [ -n "${NASA:-}" ]; then
  case "$NASA" in /*) ;; *) NASA="$PWD/$NASA" ;; esac
fi
cd "$(dirname "$0")/.."
NASA=${NASA:-$PWD/../shared/traces/nasa-ksc-1995.minutes.csv}
if [ ! -r "$NASA" ]; then
  echo "sim-table.sh: no NASA trace at $NASA (set NASA=FILE)" >&2
  exit 1
fi
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/tidegate

for split in train validation; do
  echo "## corpus: $split"
  echo
  "$BIN" simulate --corpus "$split" --nasa "$NASA" --delays 5s,30s,120s --slots 8 --service-time 50ms
  echo
done

[ "${SCENARIOS:-1}" = 0 ] && exit 0

echo "## built-in scenarios"
echo
first=1
for scenario in step spike diurnal flash-sale shop-14d; do
  for delay in 5s 30s 120s; do
    svg=()
    [ "$scenario" = shop-14d ] && [ "$delay" = 30s ] && svg=(--svg docs/sim-shop-14d.svg)
    out=$("$BIN" simulate --scenario "$scenario" --delay "$delay" --seeds 5 --rate 1000 ${svg[@]+"${svg[@]}"})
    if [ $first = 1 ]; then echo "$out"; first=0; else echo "$out" | tail -n +3; fi
  done
done
# The operator's `max` (the same for every policy) bounds how fast a
# surprise's backlog drains: shop-14d at 30 s with `max` at 4x the oracle's
# peak and with no practical limit, after the table above (2x).
echo
echo "shop-14d, 30 s delay, by the operator's max (x the oracle's peak):"
echo
for factor in 4 0; do
  echo "max factor $factor:"
  "$BIN" simulate --scenario shop-14d --delay 30s --seeds 5 --rate 1000 --max-factor "$factor"
done
