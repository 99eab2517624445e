#!/usr/bin/env bash
# What does waiting in the queue cost the proxy? Admission takes no lock
# while nobody waits; a request that has to wait takes the queue's mutex to
# join its priority lane, is handed a slot through a oneshot channel, and
# leaves its lane. tidegate alone (one worker pinned to core 0), h2load
# flat out over 64 connections (core 1, with the backends), rounds
# alternating between:
#   free:   max_concurrency = 1024: no request ever waits (the fast path);
#   queued: max_concurrency = 1 on each of the 4 backends: 4 slots for 64
#           outstanding requests, so about 60 always wait and every request
#           goes through the queue (enqueue, dispatch, hand-over).
# Reports the median proxy CPU per request of each mode; the difference is
# what the slow path (lock included) adds to a request that waits.
#
# Usage: benches/e2e/queue-cost.sh      (ROUNDS=2 DURATION=5), about 25 s
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
need h2load taskset curl python3
build
start_backends
write_tidegate_config "$WORK/free.toml"
sed 's/^max_concurrency = 1024$/max_concurrency = 1/' "$WORK/free.toml" > "$WORK/queued.toml"
grep -q '^max_concurrency = 1$' "$WORK/queued.toml" || { echo "could not derive the queued config"; exit 1; }
url="http://127.0.0.1:18080/products/1"

echo -e "round\tmode\tcpu_us_per_req\trequests\treq_per_s" > "$WORK/queue.tsv"
for round in $(seq "$ROUNDS"); do
  for mode in $(alternate "$round" free queued); do
    TIDEGATE_LOG=warn taskset -c 0 "$BIN" run --no-watch --config "$WORK/$mode.toml" >/dev/null 2>&1 &
    TG=$!; PIDS+=($TG)
    wait_http "http://127.0.0.1:18080/healthz"
    taskset -c 1 h2load --h1 -c 64 -D 1 "$url" >/dev/null 2>&1   # warm-up
    read -r pt _ n rps < <(measure "$TG" --h1 -c 64 -D "$DURATION" "$url")
    kill "$TG"; wait "$TG" 2>/dev/null || true
    echo -e "$round\t$mode\t$(python3 -c "print(round($pt * 10000 / max(1, $n), 2))")\t$n\t$rps" >> "$WORK/queue.tsv"
    echo "round $round $mode done" >&2
  done
done
python3 - "$WORK/queue.tsv" <<'PY'
import sys, statistics as st
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])][1:]
med = {}
print("| admission | proxy CPU per request (µs, median) | rounds (µs) | req/s |")
print("| --- | --- | --- | --- |")
for mode in ("free", "queued"):
    rs = [r for r in rows if r[1] == mode]
    med[mode] = st.median(float(r[2]) for r in rs)
    print(f"| {mode} | {med[mode]:.2f} | {', '.join(r[2] for r in rs)} | {', '.join(r[4] for r in rs)} |")
print(f"\nwaiting in the queue adds {med['queued'] - med['free']:+.2f} µs of proxy CPU per request")
PY
echo "raw rows: $WORK/queue.tsv" >&2
