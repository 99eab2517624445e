#!/usr/bin/env bash
# The training run of a profile-guided build: drives an instrumented
# tidegate (built with `-Cprofile-generate`, TIDEGATE_BIN) through the
# proxy's everyday paths, then stops it cleanly so that it writes its
# profile to LLVM_PROFILE_FILE.
#
# The shapes here are deliberately not the ones the benchmarks judge the
# build on (compare.sh: 64 HTTP/1.1 connections at a fixed rate, 64 h2c
# connections x 10 streams; callgrind: 16 x 10): 32 and 8 HTTP/1.1
# connections, h2c at 4 x 50 and 32 x 4 streams, four paths other than
# `/products/1`, a POST body and a larger request head, and the features
# an operator turns on (an access log, a rate-limit rule, a cached route)
# in the same run.
#
# The backends run BACKEND_BIN, a plain build, so the profile is the
# proxy's alone. Fails unless nearly every training request was answered
# 2xx (a dead backend would train the error path).
#
# Usage: TIDEGATE_BIN=instrumented BACKEND_BIN=plain benches/e2e/pgo-train.sh
#        (REQUESTS=40000 per load)
source "$(dirname "$0")/lib.sh"
need h2load curl python3
[[ -x ${BACKEND_BIN:-} ]] || { echo "pgo-train: set BACKEND_BIN to a plain build of tidegate" >&2; exit 2; }
REQUESTS=${REQUESTS:-40000}
start_backends
config=$WORK/train.toml
write_tidegate_config "$config" "$(access_log_snippet "$WORK/access.log")
$(rate_limit_snippet)"
cat >> "$config" <<'CONF'

[[route]]
path_prefix = "/status/"
pool = "be"
cache = { ttl = "1s" }

[[route]]
path_prefix = "/"
pool = "be"
CONF
TIDEGATE_LOG=warn "$BIN" run --no-watch --config "$config" >"$WORK/proxy.log" 2>&1 &
proxy=$!
PIDS+=($proxy)
wait_http http://127.0.0.1:18080/healthz

head -c 2048 /dev/zero | tr '\0' 'x' > "$WORK/body"
urls=(http://127.0.0.1:18080/products/7 http://127.0.0.1:18080/cart http://127.0.0.1:18080/ http://127.0.0.1:18080/status/200)
for shape in "--h1 -c 32" "--h1 -c 8" "-c 4 -m 50" "-c 32 -m 4"; do
  # shellcheck disable=SC2086
  h2load $shape -n "$REQUESTS" "${urls[@]}" >/dev/null 2>&1
  # A request body (the backend reads it) and a larger request head.
  # shellcheck disable=SC2086
  h2load $shape -n $((REQUESTS / 4)) -d "$WORK/body" -H 'cookie: session=0123456789abcdef0123456789abcdef' \
    -H 'accept-language: en-GB,en;q=0.8' http://127.0.0.1:18080/cart >/dev/null 2>&1
done

# SIGINT: a clean shutdown, which writes the profile.
kill -INT "$proxy"
wait "$proxy" 2>/dev/null || true
python3 - "$WORK/access.log" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = sum(1 for l in lines if 200 <= int(l.get("status", 0)) < 300)
print(f"pgo-train: {len(lines)} requests, {ok} answered 2xx", file=sys.stderr)
sys.exit(0 if lines and ok >= 0.99 * len(lines) else 1)
PY
# 200,000 log lines: not worth keeping once counted.
rm -f "$WORK/access.log"
