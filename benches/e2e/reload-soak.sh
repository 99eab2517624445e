#!/usr/bin/env bash
# Reload soak: wrk drives keep-alive HTTP/1.1 load through tidegate while the
# config is reloaded 100 times (backends added and removed, policy switched,
# a route added; every 10th file is invalid and must be refused). Reports
# wrk's error counts and latency over the whole run, and tidegate's reload
# totals. Bounded: DURATION seconds (default 30), loopback only.
#
# Usage: benches/e2e/reload-soak.sh
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-30}
RELOADS=${RELOADS:-100}
need wrk curl taskset python3
build
start_backends
ports=($BACKEND_PORTS)
conf="$WORK/tidegate.toml"

variant() {  # $1 = round
  local subset balance route=""
  case $(( $1 % 4 )) in
    0) subset="${ports[0]} ${ports[1]}"; balance=least_conn ;;
    1) subset="${ports[0]} ${ports[1]} ${ports[2]}"; balance=p2c ;;
    2) subset="${ports[1]} ${ports[2]} ${ports[3]}"; balance=round_robin
       route=$'[[route]]\npath_prefix = "/products/9"\npool = "api"\n[pools.api]\nbackends = [ { address = "127.0.0.1:'"${ports[3]}"'" } ]' ;;
    3) subset="${ports[3]} ${ports[0]}"; balance=peak_ewma ;;
  esac
  cat <<CONF
[runtime]
worker_threads = 1
[admin]
listen = "127.0.0.1:19190"
[[listener]]
name = "web"
listen = "127.0.0.1:18080"
[[route]]
path_prefix = "/"
pool = "shop"
$route
[pools.shop]
balance = "$balance"
backends = [ $(tidegate_backends $subset) ]
CONF
}

write_config() { echo "$1" > "$conf.tmp"; mv "$conf.tmp" "$conf"; }

write_config "$(variant 0)"
TIDEGATE_LOG=warn taskset -c 0 "$BIN" run --no-watch --config "$conf" >"$WORK/tidegate.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:18080/healthz"

taskset -c 1 wrk -t1 -c32 -d"${DURATION}s" --latency http://127.0.0.1:18080/products/1 > "$WORK/wrk.txt" 2>&1 &
WRK=$!; PIDS+=($WRK)
pause=$(python3 -c "print($DURATION / ($RELOADS + 5))")
refused=0; applied=0
for round in $(seq 1 "$RELOADS"); do
  sleep "$pause"
  if (( round % 10 == 0 )); then
    write_config "$(variant "$round" | sed 's/balance = .*/balance = "fastest"/')"
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:19190/reload)
    [ "$code" = 400 ] && refused=$((refused + 1))
  else
    write_config "$(variant "$round")"
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:19190/reload)
    [ "$code" = 200 ] && applied=$((applied + 1))
  fi
done
wait "$WRK"
cat "$WORK/wrk.txt"
echo "reloads applied: $applied, invalid refused: $refused (of $RELOADS)"
curl -s http://127.0.0.1:19190/stats | python3 -c '
import json, sys
s = json.load(sys.stdin)
c = s["config"]
r = c["reloads"]
print("tidegate: generation %d, reloads ok %d, refused %d" % (c["generation"], r["ok_total"], r["error_total"]))
for p in s["pools"]:
    print("  pool %s: %d requests, %d 5xx/errors" % (p["name"], p["requests_total"], p["errors_total"]))
'
echo "(wrk prints 'Non-2xx or 3xx responses' and 'Socket errors' lines only when there were any)"
