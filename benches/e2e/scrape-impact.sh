#!/usr/bin/env bash
# Does scraping /metrics and /stats slow the hot path? tidegate alone (one
# worker on core 0), rounds alternating without and with a scraper that
# polls /metrics and /stats 10 times a second over keep-alive (on core 1,
# with the backends and h2load). Reports, per mode, the median proxy CPU per
# request at a fixed HTTP/1.1 rate and the flat-out h2c throughput.
#
# Usage: benches/e2e/scrape-impact.sh      (ROUNDS=5 DURATION=10 RATE=10000)
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
RATE=${RATE:-10000}
need h2load taskset curl python3
build
start_backends
write_tidegate_config "$WORK/tidegate.toml" $'[admin]\nlisten = "127.0.0.1:19190"'
TIDEGATE_LOG=warn taskset -c 0 "$BIN" run --no-watch --config "$WORK/tidegate.toml" >/dev/null 2>&1 &
TG=$!; PIDS+=($TG)
wait_http "http://127.0.0.1:18080/healthz"
url="http://127.0.0.1:18080/products/1"
taskset -c 1 h2load --h1 -c 64 -D 2 "$url" >/dev/null 2>&1

scraper() {
  taskset -c 1 python3 - <<'PY' &
import http.client, time
c = http.client.HTTPConnection("127.0.0.1", 19190)
while True:
    for path in ("/metrics", "/stats"):
        c.request("GET", path)
        c.getresponse().read()
    time.sleep(0.1)
PY
  SCRAPER=$!; PIDS+=($SCRAPER)
}

echo -e "round\tmode\tcpu_us_per_req\th2c_req_per_s" > "$WORK/scrape.tsv"
for round in $(seq "$ROUNDS"); do
  for mode in $(alternate "$round" off on); do
    [ "$mode" = on ] && scraper
    read -r pt _ n _ < <(measure "$TG" --h1 -c 64 --rps $((RATE / 64)) -D "$DURATION" "$url")
    read -r _ _ _ rps < <(measure "$TG" -c 64 -m 10 -D "$DURATION" "$url")
    [ "$mode" = on ] && { kill "$SCRAPER"; wait "$SCRAPER" 2>/dev/null || true; }
    echo -e "$round\t$mode\t$(python3 -c "print(round($pt * 10000 / $n, 1))")\t$rps" >> "$WORK/scrape.tsv"
    echo "round $round scraper $mode done" >&2
  done
done
python3 - "$WORK/scrape.tsv" <<'PY'
import sys, statistics as st
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])][1:]
print("| scraper | proxy CPU per request (µs, median) | h2c req/s (median) | rounds |")
print("| --- | --- | --- | --- |")
for mode in ("off", "on"):
    rs = [r for r in rows if r[1] == mode]
    print(f"| {mode} | {st.median(float(r[2]) for r in rs):.1f} | {st.median(float(r[3]) for r in rs):.0f} | {len(rs)} |")
PY
