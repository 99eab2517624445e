#!/usr/bin/env bash
# The micro-cache beside nginx's: tidegate (`cache = { ttl = "1s" }`) vs
# nginx (`proxy_cache` + `proxy_cache_lock` + `proxy_cache_background_update`,
# `proxy_cache_valid 200 1s`), the same origin and the same key set.
#
# Method: each proxy runs one worker pinned to core 0; the origin (a small
# Python server that answers after ORIGIN_MS and counts requests per path)
# and h2load share core 1. h2load cycles over KEYS product pages on 64
# HTTP/1.1 connections, flat out, for DURATION seconds after a 1 s warm-up.
# Reported per proxy: req/s, proxy CPU per request (utime+stime over the
# run / requests; nearly every request is a hit, so this is CPU per hit),
# the share of answers that came from the cache, and upstream requests per
# key per TTL during the measured run (target: at most 1 + 1 refresh).
# About 25 s in all. Every process started here is ended by its PID.
#
# Usage: benches/e2e/cache.sh       (DURATION=8 KEYS=100 ORIGIN_MS=20)
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-8}
KEYS=${KEYS:-100}
ORIGIN_MS=${ORIGIN_MS:-20}
ORIGIN_PORT=19201
need nginx h2load taskset curl python3
build

# --- origin: counts requests per path, answers after ORIGIN_MS ----------------
cat > "$WORK/origin.py" <<'PY'
import json, sys, time, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
counts, lock, delay = {}, threading.Lock(), int(sys.argv[2]) / 1000
BODY = b"x" * 2048
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == "/__counts":
            with lock: body = json.dumps(counts).encode(); counts.clear()
        else:
            with lock: counts[self.path] = counts.get(self.path, 0) + 1
            time.sleep(delay); body = BODY
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
taskset -c 1 python3 "$WORK/origin.py" "$ORIGIN_PORT" "$ORIGIN_MS" &
PIDS+=($!)
wait_http "http://127.0.0.1:$ORIGIN_PORT/__counts"

for i in $(seq 0 $((KEYS - 1))); do echo "http://127.0.0.1:18080/products/$i"; done > "$WORK/uris-tidegate"
sed 's/18080/18082/' "$WORK/uris-tidegate" > "$WORK/uris-nginx"

cat > "$WORK/tidegate.toml" <<CONF
[runtime]
worker_threads = 1
[limits]
max_connections = 20000
[[listener]]
name = "bench"
listen = "127.0.0.1:18080"
[[route]]
path_prefix = "/"
pool = "be"
cache = { ttl = "1s", grace = "10s" }
[pools.be]
max_concurrency = 1024
backends = [ { address = "127.0.0.1:$ORIGIN_PORT" } ]
CONF

mkdir -p "$WORK/nginx-cache"
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log crit;
events { worker_connections 8000; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx-body;
    proxy_temp_path $WORK/nginx-proxy;
    proxy_cache_path $WORK/nginx-cache keys_zone=micro:16m max_size=256m inactive=60s use_temp_path=off;
    upstream be { server 127.0.0.1:$ORIGIN_PORT; keepalive 256; }
    server {
        listen 127.0.0.1:18082;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache micro;
            proxy_cache_key \$host\$uri\$is_args\$args;
            proxy_cache_valid 200 1s;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 5s;
            proxy_cache_use_stale updating error timeout http_500 http_502 http_503;
            proxy_cache_background_update on;
            add_header x-cache \$upstream_cache_status;
        }
    }
}
CONF

echo -e "proxy\treq_per_s\tcpu_us_per_req\trequests\tupstream\tper_key_per_ttl\tcache_share" > "$WORK/cache.tsv"
for proxy in tidegate nginx; do
  case $proxy in
    tidegate) TIDEGATE_LOG=warn taskset -c 0 "$BIN" run --no-watch --config "$WORK/tidegate.toml" >/dev/null 2>&1 & ;;
    nginx) taskset -c 0 nginx -c "$WORK/nginx.conf" -p "$WORK" >/dev/null 2>&1 & ;;
  esac
  P=$!; PIDS+=($P)
  uris="$WORK/uris-$proxy"
  wait_http "$(head -1 "$uris")"
  taskset -c 1 h2load --h1 -c 64 -D 1 -i "$uris" >/dev/null 2>&1   # warm-up: every key stored
  curl -s "http://127.0.0.1:$ORIGIN_PORT/__counts" >/dev/null    # reset
  read -r pt _ n rps < <(measure "$P" --h1 -c 64 -D "$DURATION" -i "$uris")
  upstream=$(curl -s "http://127.0.0.1:$ORIGIN_PORT/__counts" | python3 -c "import json,sys; print(sum(json.load(sys.stdin).values()))")
  kill "$P"; wait "$P" 2>/dev/null || true
  python3 - "$proxy" "$rps" "$pt" "$n" "$upstream" "$KEYS" "$DURATION" >> "$WORK/cache.tsv" <<'PY'
import sys
proxy, rps, ticks, n, up, keys, dur = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
print("\t".join(map(str, [proxy, round(rps), round(ticks * 10000 / max(1, n), 2), n, up,
                          round(up / (keys * dur / 1.0), 2), f"{(1 - up / max(1, n)) * 100:.2f} %"])))
PY
  echo "$proxy done" >&2
done
python3 - "$WORK/cache.tsv" <<'PY'
import sys
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])][1:]
print("| proxy | req/s | proxy CPU per request (µs) | requests | upstream requests | upstream per key per TTL | answered from cache |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
echo "raw rows: $WORK/cache.tsv" >&2
