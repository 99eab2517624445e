# Shared by the end-to-end benchmark scripts (sourced, not run).
# Every process started here is recorded in PIDS and ended by its PID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# TIDEGATE_BIN: measure a binary built elsewhere (an A/B against an older
# commit) instead of building this checkout. BACKEND_BIN: the backends'
# build, when it should not be the one measured (a profile-guided build's
# profile holds only the proxy's paths).
BIN=${TIDEGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/tidegate}
BACKEND_PORTS=${BACKEND_PORTS:-"19101 19102 19103 19104"}
PIDS=()
BACKEND_PIDS=()
WORK=$(mktemp -d /tmp/tidegate-bench.XXXXXX)

cleanup() {
  for pid in "${PIDS[@]:-}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install haproxy nginx-light nghttp2-client wrk)"; exit 1; }
  done
}

build() { [[ -n ${TIDEGATE_BIN:-} ]] || cargo build --release --quiet; }

# Four fast backends, one thread each, pinned to core 1 with the load generator.
start_backends() {
  for port in $BACKEND_PORTS; do
    taskset -c 1 "${BACKEND_BIN:-$BIN}" backend --listen "127.0.0.1:$port" --threads 1 >/dev/null 2>&1 &
    PIDS+=($!); BACKEND_PIDS+=($!)
  done
}

# "{ address = ... }, ..." for a tidegate pool over the backend ports given.
tidegate_backends() {
  local out=""
  for port in "$@"; do out+="{ address = \"127.0.0.1:$port\" }, "; done
  echo "$out"
}

# The benchmark config: one worker, one listener on :18080, least
# connections over every backend port. $1 = file; $2 = extra top-level
# tables (e.g. an [admin] table).
write_tidegate_config() {
  cat > "$1" <<CONF
[runtime]
worker_threads = 1
${2:-}
[limits]
max_connections = 20000
[[listener]]
name = "bench"
listen = "127.0.0.1:18080"
[pools.be]
balance = "least_conn"
max_concurrency = 1024
max_idle_per_backend = 1024
backends = [ $(tidegate_backends $BACKEND_PORTS) ]
CONF
}

# Config snippets for write_tidegate_config's second argument.
# The JSON access log, to the file $1.
access_log_snippet() { printf '[access_log]\nformat = "json"\npath = "%s"\n' "$1"; }
# One rate-limit rule every request matches (keyed by client address) at a
# rate none reaches.
rate_limit_snippet() { printf '[[rate_limit]]\nname = "bench"\nrate = "1000000/s"\nburst = 1000000\n'; }

wait_http() {
  for _ in $(seq 100); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.05
  done
  echo "nothing answers at $1"; exit 1
}

# A PID's CPU ticks in user and in system mode: "utime stime".
user_system_ticks() { local f; read -r -a f < "/proc/$1/stat"; echo "${f[13]} ${f[14]}"; }
# CPU ticks (utime+stime) of the given PIDs.
ticks() { local t=0 u s; for p in "$@"; do read -r u s < <(user_system_ticks "$p"); t=$((t + u + s)); done; echo "$t"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# The words after $1 in the order round $1 runs them: as given in odd
# rounds, reversed in even ones (so neither side of an A/B always runs
# first, on a machine warming up or slowing down).
alternate() {
  local round=$1; shift
  if (( round % 2 == 0 )); then printf '%s\n' "$@" | tac | xargs; else echo "$@"; fi
}

# One measured h2load run against a proxy PID:
# prints "proxy_ticks backend_ticks requests req_per_s".
measure() {
  local proxy_pid=$1; shift
  local p0 b0 p1 b1 out done rps
  p0=$(ticks "$proxy_pid"); b0=$(ticks "${BACKEND_PIDS[@]}")
  out=$(taskset -c 1 h2load "$@" 2>&1)
  p1=$(ticks "$proxy_pid"); b1=$(ticks "${BACKEND_PIDS[@]}")
  done=$(echo "$out" | awk '/^requests:/ {print $8}')
  rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  echo "$((p1 - p0)) $((b1 - b0)) $done $rps"
}

# Runs h2load pinned to core 1 with the arguments given; prints how many
# requests were served.
served() { taskset -c 1 h2load "$@" 2>&1 | awk '/^requests:/ {print $8}'; }

# p50 and p99 (µs) from an h2load --log-file.
latency_p50_p99() {
  python3 - "$1" <<'PY'
import sys
v = sorted(int(l.split('\t')[2]) for l in open(sys.argv[1]) if l.strip())
print(v[len(v)//2], v[min(len(v)-1, int(len(v)*0.99))])
PY
}

# Instructions per request of tidegate on config $1 (everything its
# threads execute, under callgrind: the same figure to 0.1 % run after run,
# whatever else the machine does), over $2 requests; $3: another build.
# Prints "instructions requests".
instructions_per_request() {
  local config=$1 n=$2 bin=${3:-$BIN}
  count_instructions http://127.0.0.1:18080/healthz http://127.0.0.1:18080/products/1 "$n" \
    "$bin" run --no-watch --config "$config"
}

# h2load's arguments for a protocol: h1 is HTTP/1.1 over $2 connections,
# h2c is $2 HTTP/2 connections of $3 streams each.
load_args() { if [[ $1 == h2c ]]; then echo "-c $2 -m $3"; else echo "--h1 -c $2"; fi; }

# Instructions per request of any proxy: starts the command after $3
# pinned to core 0 under callgrind, waits until $1 answers, warms up,
# zeroes the counters, sends $3 requests to $2 (h2load over 16
# connections, as fast as callgrind lets it), dumps and stops it. Prints
# "instructions requests".
count_instructions() {
  local ready=$1 url=$2 n=$3 out pid total done
  shift 3
  out=$(mktemp -d "$WORK/cg.XXXXXX")
  # CACHE_SIM=1 also simulates the caches (--cache-sim=yes): the profile's
  # summary line then has misses per level after the instructions.
  local sim=()
  [[ -n ${CACHE_SIM:-} ]] && sim=(--cache-sim=yes)
  TIDEGATE_LOG=warn taskset -c 0 valgrind --tool=callgrind ${sim[@]+"${sim[@]}"} --callgrind-out-file="$out/cg" \
    "$@" >/dev/null 2>"$out/valgrind.err" &
  pid=$!; PIDS+=($pid)
  for _ in $(seq 200); do curl -s -o /dev/null "$ready" && break; sleep 0.1; done
  # PROTO=h2c: 16 HTTP/2 connections of 10 streams each instead.
  # LOAD_CONNECTIONS and LOAD_STREAMS change the 16 and the 10.
  local load
  read -ra load <<< "$(load_args "${PROTO:-h1}" "${LOAD_CONNECTIONS:-16}" "${LOAD_STREAMS:-10}")"
  # LOAD_HEADERS: extra h2load arguments (request fields) for every request.
  load+=(${LOAD_HEADERS[@]+"${LOAD_HEADERS[@]}"})
  taskset -c 1 h2load "${load[@]}" -n 2000 "$url" >/dev/null 2>&1
  callgrind_control -z "$pid" >/dev/null
  done=$(served "${load[@]}" -n "$n" "$url")
  callgrind_control -d "$pid" >/dev/null
  for _ in $(seq 100); do ls "$out"/cg.* >/dev/null 2>&1 && break; sleep 0.1; done
  total=$(awk '/^summary:/ {print $2}' "$out"/cg.*)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$total $done"
}
