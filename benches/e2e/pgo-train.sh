#!/usr/bin/env bash
# The training run of a profile-guided build: drives an instrumented
# tidegate (built with `-Cprofile-generate=DIR`, TIDEGATE_BIN) through the
# proxy's everyday paths, then stops it cleanly so that it writes its
# profile into DIR.
#
# The shapes here are deliberately not the ones the benchmarks judge the
# build on (compare.sh: 64 HTTP/1.1 connections at a fixed rate, 64 h2c
# connections x 10 streams; callgrind: 16 x 10): 32 and 8 HTTP/1.1
# connections, h2c at 4 x 50 and 32 x 4 streams, several paths and
# request sizes, and the features an operator turns on (an access log, a
# rate-limit rule, a cached route, a header rule) in the same run.
#
# Backends run the plain build (BACKEND_BIN, default: TIDEGATE_BIN), so the
# profile is the proxy's.
#
# Usage: TIDEGATE_BIN=instrumented BACKEND_BIN=plain benches/e2e/pgo-train.sh
#        (REQUESTS=40000 per load)
source "$(dirname "$0")/lib.sh"
need h2load curl
REQUESTS=${REQUESTS:-40000}
start_backends
config=$WORK/train.toml
write_tidegate_config "$config" "[access_log]
format = \"json\"
path = \"$WORK/access.log\"

[[rate_limit]]
name = \"train\"
rate = \"1000000/s\"
burst = 1000000"
cat >> "$config" <<'CONF'

[[route]]
path_prefix = "/cached/"
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

urls=(http://127.0.0.1:18080/products/7 http://127.0.0.1:18080/cart http://127.0.0.1:18080/cached/home)
for shape in "--h1 -c 32" "--h1 -c 8" "-c 4 -m 50" "-c 32 -m 4"; do
  # shellcheck disable=SC2086
  h2load $shape -n "$REQUESTS" "${urls[@]}" >/dev/null 2>&1
  # A request body and a larger request head.
  # shellcheck disable=SC2086
  h2load $shape -n $((REQUESTS / 4)) -d "$0" -H 'cookie: session=0123456789abcdef0123456789abcdef' \
    -H 'accept-language: en-GB,en;q=0.8' http://127.0.0.1:18080/checkout >/dev/null 2>&1
done

# SIGINT: a clean shutdown, which writes the profile.
kill -INT "$proxy"
wait "$proxy" 2>/dev/null || true
echo "trained: $(grep -c . "$WORK/access.log") requests logged"
