#!/usr/bin/env bash
# Side-by-side: tidegate vs HAProxy vs nginx, same machine, same backends.
#
# Method (wall-clock figures on a shared 2-core box swing 10-40 %, so the
# headline is CPU per request, normalised by the backends' CPU per request in
# the same run, which varies by ~2 %):
#   - each proxy runs one worker pinned to core 0 (taskset); the 4 backends
#     (`tidegate backend`, one thread each) and h2load share core 1;
#   - HTTP/1.1 at a fixed rate (RATE req/s over 64 connections, h2load --rps),
#     then h2c flat out (64 connections x 10 streams);
#   - proxy CPU = utime+stime from /proc/PID/stat before/after, divided by the
#     backends' CPU over the same window;
#   - proxies alternate order round by round (A B C, C B A, ...); medians of
#     ROUNDS rounds; plus req/s, p50/p99 (from h2load --log-file) and peak RSS;
#   - finally one 1 GiB download through each proxy, for peak RSS while
#     streaming.
# Everything goes to 127.0.0.1 only and every process started here is ended
# by its PID. Needs: haproxy nginx-light nghttp2-client (Debian packages).
#
# LOGS=1 turns every proxy's access log on, each writing one line per
# request to a file in its own way: tidegate's JSON log, nginx's combined
# format (buffered, 64 KiB), HAProxy's httplog to stdout (redirected to a
# file).
#
# COUNTER=callgrind counts each proxy's instructions per request instead.
#
# Usage: benches/e2e/compare.sh            (ROUNDS=5 DURATION=10 RATE=10000 LOGS=0 SAME_HEADERS=0
#                                           COUNTER=cpu|callgrind|syscalls|segments|perf REQUESTS=20000)
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
RATE=${RATE:-10000}
CONNS=64
PROXIES=${PROXIES:-"tidegate haproxy nginx"}
need haproxy nginx h2load taskset curl
build
start_backends

# --- proxy configs ------------------------------------------------------------
servers_haproxy=""; servers_nginx=""
i=0
for port in $BACKEND_PORTS; do
  i=$((i+1))
  servers_haproxy+="    server s$i 127.0.0.1:$port maxconn 1024"$'\n'
  servers_nginx+="    server 127.0.0.1:$port;"$'\n'
done

LOGS=${LOGS:-0}
if [[ $LOGS == 1 ]]; then
  write_tidegate_config "$WORK/tidegate.toml" "$(access_log_snippet "$WORK/tidegate-access.log")"
  haproxy_log="    log stdout format raw local0"; haproxy_httplog="    log global"$'\n'"    option httplog"
  nginx_log="access_log $WORK/nginx-access.log combined buffer=64k;"
  haproxy_out="$WORK/haproxy-access.log"
else
  write_tidegate_config "$WORK/tidegate.toml"
  haproxy_log=""; haproxy_httplog=""; nginx_log="access_log off;"; haproxy_out=/dev/null
fi

# SAME_HEADERS=1: HAProxy and nginx add to each request what tidegate adds
# by default, so all three send the backends the same work: a request ID
# (also returned to the client), X-Forwarded-For, -Proto and -Host, and
# Via. By default they add only X-Forwarded-For, and tidegate's upstream
# requests are about twice as long (241 vs 114 bytes for h2load's). The
# IDs are random, as tidegate's: HAProxy's `uuid`, nginx's `$request_id`.
haproxy_same=""; nginx_same=""
if [[ ${SAME_HEADERS:-0} == 1 ]]; then
  haproxy_same='    unique-id-format %[uuid]
    unique-id-header X-Request-ID
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request add-header Via "1.1 haproxy"
    http-response set-header X-Request-ID %[unique-id]'
  nginx_same='proxy_set_header X-Request-ID $request_id;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header Via "1.1 nginx";
            add_header X-Request-ID $request_id;'
fi

cat > "$WORK/haproxy.cfg" <<CONF
global
    nbthread 1
$haproxy_log
    maxconn 8000
defaults
    mode http
$haproxy_httplog
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:18081
    bind 127.0.0.1:18083 proto h2
$haproxy_same
    default_backend be
backend be
    balance leastconn
$servers_haproxy
CONF

cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log crit;
events { worker_connections 8000; }
http {
    $nginx_log
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx-body;
    proxy_temp_path $WORK/nginx-proxy;
    upstream be {
        least_conn;
$servers_nginx
        keepalive 1024;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:18082;
        listen 127.0.0.1:18084 http2;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            $nginx_same
            proxy_buffering off;
        }
    }
}
CONF

h1_port() { case $1 in tidegate) echo 18080;; haproxy) echo 18081;; nginx) echo 18082;; esac; }
h2_port() { case $1 in tidegate) echo 18080;; haproxy) echo 18083;; nginx) echo 18084;; esac; }
# A proxy's port for a protocol (h1 or h2c).
port_for() { if [[ $2 == h2c ]]; then h2_port "$1"; else h1_port "$1"; fi; }

# The command line that runs a proxy on its config above.
proxy_command() {
  case $1 in
    tidegate) echo "$BIN run --config $WORK/tidegate.toml" ;;
    haproxy) echo "haproxy -f $WORK/haproxy.cfg" ;;
    nginx) echo "nginx -c $WORK/nginx.conf" ;;
  esac
}

start_proxy() {
  local out=/dev/null
  [[ $1 == haproxy ]] && out=$haproxy_out
  # shellcheck disable=SC2046 # the command line is split into words
  TIDEGATE_LOG=warn taskset -c 0 $(proxy_command "$1") >>"$out" 2>&1 &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_http "http://127.0.0.1:$(h1_port "$1")/healthz"
}

stop_proxy() { kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; }

# The counter modes below: start proxy $1 for protocol $2 (h1 or h2c, 64
# connections, h2c with 10 streams each) and warm it up; LOAD and URL are
# then what send_requests sends.
start_warm() {
  read -ra LOAD <<< "$(load_args "$2" "$CONNS" 10)"
  start_proxy "$1"
  URL="http://127.0.0.1:$(port_for "$1" "$2")/products/1"
  taskset -c 1 h2load "${LOAD[@]}" -n 5000 "$URL" >/dev/null 2>&1
}
# REQUESTS requests to the proxy start_warm started; prints how many were served.
send_requests() { served "${LOAD[@]}" -n "${REQUESTS:-20000}" "$URL"; }

# COUNTER=callgrind: instructions per request instead (all of a proxy's
# threads, REQUESTS requests over HTTP/1.1 and over h2c, 16 connections,
# as fast as callgrind lets them; see count_instructions in lib.sh).
if [[ ${COUNTER:-cpu} == callgrind ]]; then
  need valgrind callgrind_control
  echo "| proxy | HTTP/1.1 instructions per request | h2c |"
  echo "| --- | --- | --- |"
  for proxy in $PROXIES; do
    row="| $proxy"
    for proto in h1 h2c; do
      port=$(port_for "$proxy" "$proto")
      # shellcheck disable=SC2046 # the command line is split into words
      read -r total done < <(PROTO=$proto count_instructions "http://127.0.0.1:$(h1_port "$proxy")/healthz" \
        "http://127.0.0.1:$port/products/1" "${REQUESTS:-20000}" $(proxy_command "$proxy"))
      row+=" | $((total / done))"
    done
    echo "$row |"
  done
  exit 0
fi

# COUNTER=syscalls: system calls per request instead, by name (strace -c
# attached to the proxy while REQUESTS requests go through it, over
# HTTP/1.1 and over h2c, 64 connections, h2c with 10 streams each). About
# half of a proxy's CPU is in the kernel, so fewer calls is the first
# place to look when CPU per request differs and instructions do not.
if [[ ${COUNTER:-cpu} == syscalls ]]; then
  need strace
  for proxy in $PROXIES; do
    for proto in h1 h2c; do
      start_warm "$proxy" "$proto"
      strace -c -f -p "$PROXY_PID" -o "$WORK/strace-$proxy-$proto" &
      tracer=$!; sleep 0.5
      done=$(send_requests)
      kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
      stop_proxy
      echo "### $proxy $proto: system calls per request ($done requests)"
      awk -v n="$done" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "%s %.3f\n", $NF, $4 / n }' "$WORK/strace-$proxy-$proto" | sort -k2 -rn | head -8
    done
  done
  exit 0
fi

# COUNTER=perf: where each proxy's CPU goes, by function, kernel and user
# alike: `perf record` on the proxy's PID (all threads, 4 kHz) while
# REQUESTS requests go through it flat out (64 connections; h2c with 10
# streams each), then the hottest symbols by their own samples, in per
# cent of the proxy's samples and in samples per 1,000 requests (so two
# proxies' rows compare in absolute terms). PERF_ARGS adds `perf record`
# options (-g for call graphs), PERF_DIR keeps the recordings. Needs
# linux-perf.
if [[ ${COUNTER:-cpu} == perf ]]; then
  need perf
  for proxy in $PROXIES; do
    for proto in h1 h2c; do
      start_warm "$proxy" "$proto"
      # shellcheck disable=SC2086 # PERF_ARGS: more `perf record` options, e.g. -g
      perf record -q -F 4000 ${PERF_ARGS:-} -p "$PROXY_PID" -o "$WORK/perf-$proxy-$proto.data" >/dev/null 2>"$WORK/perf.err" &
      rec=$!
      PIDS+=("$rec")
      sleep 0.5
      done=$(send_requests)
      kill -INT "$rec" 2>/dev/null || true
      wait "$rec" 2>/dev/null || true
      stop_proxy
      if [[ ! -s $WORK/perf-$proxy-$proto.data ]]; then
        echo "perf record made no recording of $proxy:" >&2
        cat "$WORK/perf.err" >&2
        exit 1
      fi
      perf report -i "$WORK/perf-$proxy-$proto.data" --stdio --no-children -n --sort sym >"$WORK/perf-report" 2>/dev/null
      echo "### $proxy $proto: $done requests; top symbols (% of the proxy's samples, samples per 1,000 requests)"
      # Two passes over the report: the total of every symbol's samples, then the top rows.
      awk -v n="$done" -v top="${TOP:-25}" '
        !/^ +[0-9.]+%/ { next }
        FNR == NR { all += $2; next }
        !shown++ { printf "all: %d samples, %.1f per 1,000 requests\n", all, all * 1000 / n }
        ++k <= top { c = $2; $1 = ""; $2 = ""; printf "%6.2f %% %8.1f %s\n", 100 * c / all, c * 1000 / n, $0 }
      ' "$WORK/perf-report" "$WORK/perf-report"
      # PERF_DIR: keep the recordings there (`perf report -i FILE`).
      if [[ -n ${PERF_DIR:-} ]]; then mkdir -p "$PERF_DIR"; cp "$WORK/perf-$proxy-$proto.data" "$PERF_DIR/"; fi
    done
  done
  exit 0
fi

# COUNTER=segments: where the kernel half of the CPU goes, per request: the
# proxy's user and system CPU (µs, from /proc/PID/stat) and the TCP
# segments every socket on the machine sent (Tcp OutSegs in /proc/net/snmp:
# client, proxy and backends, all on loopback, each segment counted once),
# over REQUESTS requests, HTTP/1.1 and h2c, 64 connections (h2c with 10
# streams each), flat out, ROUNDS runs alternating between the proxies.
# Equal system calls can still cost different kernel time when they send
# more segments (pure ACKs, a head and a body in two packets), take more
# page faults (an allocator returning memory to the kernel and touching it
# again) or sleep and wake more often (context switches, all threads).
if [[ ${COUNTER:-cpu} == segments ]]; then
  out_segs() { awk '/^Tcp:/ { if (h) { print $12; exit } h = 1 }' /proc/net/snmp; }
  minor_faults() { local f; read -r -a f < "/proc/$1/stat"; echo "${f[9]}"; }
  # Threads alive at the reading (a thread that ends between two readings
  # takes its switches with it).
  switches() { awk '/ctxt_switches/ { n += $2 } END { print n + 0 }' /proc/"$1"/task/*/status 2>/dev/null || echo 0; }
  echo -e "proxy\tproto\tuser_us\tsys_us\tsegments\tfaults\tswitches" > "$WORK/segments.tsv"
  for round in $(seq "$ROUNDS"); do
    for proxy in $(alternate "$round" $PROXIES); do
      for proto in h1 h2c; do
        start_warm "$proxy" "$proto"
        read -r u0 s0 < <(user_system_ticks "$PROXY_PID"); g0=$(out_segs); f0=$(minor_faults "$PROXY_PID"); c0=$(switches "$PROXY_PID")
        done=$(send_requests)
        read -r u1 s1 < <(user_system_ticks "$PROXY_PID"); g1=$(out_segs); f1=$(minor_faults "$PROXY_PID"); c1=$(switches "$PROXY_PID")
        stop_proxy
        # Clock ticks are 10 ms: 10,000 µs each (kept in hundredths of a µs,
        # and hundredths of a segment, fault or switch).
        echo -e "$proxy\t$proto\t$(( (u1 - u0) * 1000000 / done ))\t$(( (s1 - s0) * 1000000 / done ))\t$(( (g1 - g0) * 100 / done ))\t$(( (f1 - f0) * 100 / done ))\t$(( (c1 - c0) * 100 / done ))" >> "$WORK/segments.tsv"
      done
    done
    echo "round $round done" >&2
  done
  python3 - "$WORK/segments.tsv" <<'PY'
import sys, statistics as st
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])][1:]
print("| proxy | protocol | user µs/request | system µs/request | TCP segments/request | page faults/request | context switches/request |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for proxy in dict.fromkeys(r[0] for r in rows):
    for proto in ("h1", "h2c"):
        rs = [r for r in rows if r[0] == proxy and r[1] == proto]
        med = lambda i: st.median(int(r[i]) for r in rs)
        print(f"| {proxy} | {proto} | {med(2) / 100:.2f} | {med(3) / 100:.2f} | {med(4) / 100:.2f} | {med(5) / 100:.2f} | {med(6) / 100:.2f} |")
PY
  echo "raw rows: $WORK/segments.tsv" >&2
  exit 0
fi

RESULTS="$WORK/results.tsv"
echo -e "round\tproxy\ttest\tproxy_ticks\tbackend_ticks\trequests\treq_per_s\tp50_us\tp99_us\thwm_kib" > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  for proxy in $(alternate "$round" $PROXIES); do
    start_proxy "$proxy"
    url1="http://127.0.0.1:$(h1_port "$proxy")/products/1"
    url2="http://127.0.0.1:$(h2_port "$proxy")/products/1"
    taskset -c 1 h2load --h1 -c "$CONNS" -D 2 "$url1" >/dev/null 2>&1   # warm-up
    rps_per_client=$((RATE / CONNS))
    read -r pt bt n rps < <(measure "$PROXY_PID" --h1 -c "$CONNS" --rps "$rps_per_client" -D "$DURATION" --log-file "$WORK/lat.log" "$url1")
    read -r p50 p99 < <(latency_p50_p99 "$WORK/lat.log")
    echo -e "$round\t$proxy\th1-fixed\t$pt\t$bt\t$n\t$rps\t$p50\t$p99\t$(hwm_kib "$PROXY_PID")" >> "$RESULTS"
    read -r pt bt n rps < <(measure "$PROXY_PID" -c "$CONNS" -m 10 -D "$DURATION" "$url2")
    echo -e "$round\t$proxy\th2c-max\t$pt\t$bt\t$n\t$rps\t-\t-\t$(hwm_kib "$PROXY_PID")" >> "$RESULTS"
    stop_proxy
    echo "round $round: $proxy done" >&2
  done
done

# Peak RSS while streaming 1 GiB through each proxy.
for proxy in $PROXIES; do
  start_proxy "$proxy"
  curl -s -o /dev/null "http://127.0.0.1:$(h1_port "$proxy")/bytes/1073741824"
  echo -e "-\t$proxy\tstream-1GiB\t-\t-\t-\t-\t-\t-\t$(hwm_kib "$PROXY_PID")" >> "$RESULTS"
  stop_proxy
done

python3 - "$RESULTS" <<'PY'
import sys, statistics as st
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])][1:]
def med(xs): return st.median(xs) if xs else float('nan')
# Proxy CPU over the backends' CPU in the same window; proxy CPU per request.
normalised = lambda r: int(r[3]) / max(1, int(r[4]))
raw = lambda r: int(r[3]) / max(1, int(r[5]))
print("| proxy | test | CPU/request vs backend (median) | spread | req/s | p50 ms | p99 ms | peak RSS MiB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for test in ("h1-fixed", "h2c-max", "stream-1GiB"):
    for proxy in dict.fromkeys(r[1] for r in rows):
        rs = [r for r in rows if r[1] == proxy and r[2] == test]
        if not rs: continue
        if test == "stream-1GiB":
            print(f"| {proxy} | {test} | - | - | - | - | - | {int(rs[0][9])/1024:.1f} |"); continue
        ratios = [normalised(r) for r in rs]
        rps = med([float(r[6]) for r in rs])
        p50 = med([int(r[7]) for r in rs]) / 1000 if rs[0][7] != '-' else None
        p99 = med([int(r[8]) for r in rs]) / 1000 if rs[0][8] != '-' else None
        hwm = max(int(r[9]) for r in rs) / 1024
        fmt = lambda x: f"{x:.2f}" if x is not None else "-"
        print(f"| {proxy} | {test} | {med(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f} | {rps:.0f} | {fmt(p50)} | {fmt(p99)} | {hwm:.1f} |")

# Paired by round: tidegate over each other proxy, the median of the
# rounds' ratios (and their range), which the machine's drift between
# rounds moves less than the ratio of the two medians above.
by = {}
for r in rows:
    if r[0] != '-': by.setdefault((r[0], r[2]), {})[r[1]] = r
def paired(other, test, f):
    xs = [f(d["tidegate"]) / f(d[other]) for (_, t), d in by.items()
          if t == test and "tidegate" in d and other in d and f(d[other]) > 0]
    return f"{med(xs):.3f} ({min(xs):.2f}-{max(xs):.2f})" if xs else "-"
others = [p for p in dict.fromkeys(r[1] for r in rows) if p != "tidegate"]
if others and any(r[1] == "tidegate" for r in rows):
    print()
    print("| tidegate / | normalised CPU, HTTP/1.1 | h2c | raw CPU, HTTP/1.1 | h2c | h2c req/s | p99 at the fixed rate |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for o in others:
        print(f"| {o} | {paired(o, 'h1-fixed', normalised)} | {paired(o, 'h2c-max', normalised)} | {paired(o, 'h1-fixed', raw)} "
              f"| {paired(o, 'h2c-max', raw)} | {paired(o, 'h2c-max', lambda r: float(r[6]))} | {paired(o, 'h1-fixed', lambda r: int(r[8]))} |")
PY
echo "raw rows: $RESULTS" >&2
if [[ $LOGS == 1 ]]; then
  for f in tidegate-access.log haproxy-access.log nginx-access.log; do
    echo "$f: $(wc -l < "$WORK/$f" 2>/dev/null || echo 0) lines" >&2
  done
fi
