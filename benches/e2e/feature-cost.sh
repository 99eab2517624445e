#!/usr/bin/env bash
# What does one feature cost per request? tidegate alone (one worker pinned
# to core 0), rounds alternating between the benchmark config without the
# feature and the same config with it. Backends and h2load share core 1.
#
# Features (first argument):
#   ratelimit   one [[rate_limit]] rule matching every request (keyed by
#               client address, a rate no request reaches, so every request
#               pays the full check: one shard read lock and one CAS, and
#               none is refused);
#   access_log  the JSON access log written to a file (one line per request,
#               through the bounded channel to the writer thread);
#   cache       the micro-cache's miss path: a cached route, and every
#               request (in both modes) says `Cache-Control: no-cache`, so
#               each one is looked up, fetched from a backend, buffered and
#               stored again (a miss that refreshes the copy), over ONE
#               connection (one stream), since concurrent misses of a key
#               share one fetch; the baseline is the same route uncached;
#   cache_hit   the micro-cache's hit path: the same cached route, plain
#               requests, so all but the first are answered from memory
#               (no backend), against the route uncached;
#   binary      no feature: "with" runs another build of tidegate, B_BIN
#               (an A/B of a code change: build both, point TIDEGATE_BIN at
#               the old one and B_BIN at the new one).
#
# Reports, per mode, the median proxy CPU per request (utime+stime over the
# run divided by the requests served) at a fixed HTTP/1.1 rate, and the
# added cost in per cent. The default run takes about 30 s; CPU ticks are
# 10 ms, so use more rounds or a longer DURATION for a tighter figure. On a
# shared VM rounds of the same mode differ by up to 20 %: a few per cent
# are below what CPU time can resolve. COUNTER=callgrind counts the
# instructions per request instead (all threads, one run per mode of
# REQUESTS requests, repeatable to 0.1 %; about a minute per mode), over
# HTTP/1.1, or over h2c with PROTO=h2c (16 connections x 10 streams).
# With the CPU counter, PROTO=h2c runs h2c flat out instead of the fixed
# HTTP/1.1 rate (64 connections x 10 streams, as compare.sh) and the
# table adds the requests per second.
#
# Usage: benches/e2e/feature-cost.sh ratelimit|access_log|cache|cache_hit|binary
#        (ROUNDS=2 DURATION=6 RATE=8000; COUNTER=cpu|callgrind REQUESTS=20000 PROTO=h1|h2c)
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-6}
RATE=${RATE:-8000}
COUNTER=${COUNTER:-cpu}
REQUESTS=${REQUESTS:-20000}
need h2load taskset curl python3
[[ $COUNTER == callgrind ]] && need valgrind callgrind_control
build
start_backends
FEATURE=${1:-ratelimit}
case "$FEATURE" in
  ratelimit) snippet=$(rate_limit_snippet) ;;
  access_log) snippet=$(access_log_snippet "$WORK/access.log") ;;
  cache|cache_hit) snippet='[[route]]
path_prefix = "/"
pool = "be"
cache = { ttl = "60s" }' ;;
  binary) snippet=""
    [[ -x ${B_BIN:-} ]] || { echo "binary: set B_BIN to the other build of tidegate"; exit 2; } ;;
  *) echo "unknown feature $FEATURE (ratelimit, access_log, cache, cache_hit, binary)"; exit 2 ;;
esac
# The cache's baseline is the same route uncached, and the same request
# bytes in both modes.
none_snippet=""
CONNS=64
if [[ $FEATURE == cache* ]]; then none_snippet=${snippet%$'\n'cache*}; fi
if [[ $FEATURE == cache ]]; then
  LOAD_HEADERS=(-H "cache-control: no-cache")
  CONNS=1 LOAD_CONNECTIONS=1 LOAD_STREAMS=1
fi
# The build a mode runs.
bin_of() { if [[ $FEATURE == binary && $1 == with ]]; then echo "$B_BIN"; else echo "$BIN"; fi; }
write_tidegate_config "$WORK/none.toml" "$none_snippet"
write_tidegate_config "$WORK/with.toml" "$snippet"
url="http://127.0.0.1:18080/products/1"

if [[ $COUNTER == callgrind ]]; then
  read -r none_i none_n < <(instructions_per_request "$WORK/none.toml" "$REQUESTS" "$(bin_of none)")
  read -r with_i with_n < <(instructions_per_request "$WORK/with.toml" "$REQUESTS" "$(bin_of with)")
  python3 - "$FEATURE" "$none_i" "$none_n" "$with_i" "$with_n" <<'PY'
import sys
f, ni, nn, wi, wn = sys.argv[1], *map(int, sys.argv[2:])
none, with_ = ni / nn, wi / wn
print(f"| {f} | instructions per request (callgrind, all threads) | requests |")
print("| --- | --- | --- |")
print(f"| none | {none:,.0f} | {nn} |")
print(f"| with | {with_:,.0f} | {wn} |")
print(f"\nadded by {f}: {(with_ / none - 1) * 100:+.2f} %")
PY
  exit 0
fi

echo -e "round\tmode\tcpu_us_per_req\trequests\tstatus\treq_per_s" > "$WORK/feature.tsv"
for round in $(seq "$ROUNDS"); do
  for mode in $(alternate "$round" none with); do
    TIDEGATE_LOG=warn taskset -c 0 "$(bin_of "$mode")" run --no-watch --config "$WORK/$mode.toml" >/dev/null 2>&1 &
    TG=$!; PIDS+=($TG)
    wait_http "http://127.0.0.1:18080/healthz"
    taskset -c 1 h2load --h1 -c "$CONNS" -D 1 ${LOAD_HEADERS[@]+"${LOAD_HEADERS[@]}"} "$url" >/dev/null 2>&1   # warm-up
    if [[ ${PROTO:-h1} == h2c ]]; then
      # h2c flat out, as compare.sh's h2c test: 64 connections x 10 streams.
      read -r pt _ n rps < <(measure "$TG" -c "$CONNS" -m 10 -D "$DURATION" ${LOAD_HEADERS[@]+"${LOAD_HEADERS[@]}"} "$url")
    else
      read -r pt _ n rps < <(measure "$TG" --h1 -c "$CONNS" --rps $((RATE / CONNS)) -D "$DURATION" ${LOAD_HEADERS[@]+"${LOAD_HEADERS[@]}"} "$url")
    fi
    # A request refused would not be a fair comparison: check one.
    limited=$(curl -s -o /dev/null -w '%{http_code}' "$url")
    kill "$TG"; wait "$TG" 2>/dev/null || true
    echo -e "$round\t$mode\t$(python3 -c "print(round($pt * 10000 / max(1, $n), 2))")\t$n\t$limited\t$rps" >> "$WORK/feature.tsv"
    echo "round $round $mode done" >&2
  done
done
python3 - "$WORK/feature.tsv" "$FEATURE" <<'PY'
import sys, statistics as st
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])][1:]
med = {}
print(f"| {sys.argv[2]} | proxy CPU per request (µs, median) | rounds (µs) | requests per round | req/s (median) |")
print("| --- | --- | --- | --- | --- |")
for mode in ("none", "with"):
    rs = [r for r in rows if r[1] == mode]
    med[mode] = st.median(float(r[2]) for r in rs)
    rps = st.median(float(r[5]) for r in rs)
    print(f"| {mode} | {med[mode]:.2f} | {', '.join(r[2] for r in rs)} | {', '.join(r[3] for r in rs)} | {rps:,.0f} |")
bad = [r for r in rows if r[4] != "200"]
print(f"\nadded by {sys.argv[2]}: {(med['with'] / med['none'] - 1) * 100:+.1f} %"
      + (" (a request was refused: not comparable)" if bad else ""))
PY
echo "raw rows: $WORK/feature.tsv" >&2
