#!/usr/bin/env bash
# The simulator's comparison table: every scenario at provisioning delays of
# 5, 30 and 120 s, 5 seeds each, 1000 req/s mean, 8 slots per backend, 20 ms
# service, SLO = queue wait under 100 ms. Writes docs/SIMULATION.md's table
# to stdout and the 14-day chart to docs/sim-shop-14d.svg; then shop-14d
# at other `max` guards.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/tidegate
first=1
for scenario in step spike diurnal flash-sale shop-14d; do
  for delay in 5s 30s 120s; do
    svg=()
    [ "$scenario" = shop-14d ] && [ "$delay" = 30s ] && svg=(--svg docs/sim-shop-14d.svg)
    out=$("$BIN" simulate --scenario "$scenario" --delay "$delay" --seeds 5 --rate 1000 "${svg[@]}")
    if [ $first = 1 ]; then echo "$out"; first=0; else echo "$out" | tail -n +3; fi
  done
done
# The operator's `max` (same for every policy) bounds how fast a surprise's
# backlog drains: shop-14d at 30 s with `max` at 4x the oracle's peak and
# with no practical limit, after the table above (2x).
echo
echo "shop-14d, 30 s delay, by the operator's max (x the oracle's peak):"
echo
for factor in 4 0; do
  echo "max factor $factor:"
  "$BIN" simulate --scenario shop-14d --delay 30s --seeds 5 --rate 1000 --max-factor "$factor"
done
