#!/usr/bin/env bash
# The compose demo, for real: build tidegate:local (no registry), bring up
# docker/compose.yaml under its own project name on free ports, send
# requests through tidegate to the three backends, read /demand and
# /stats, and always tear the project down (containers, network) on exit.
#
#   docker/smoke.sh                 # SKIP_BUILD=1 reuses an existing tidegate:local
#
# Uses `docker compose` when the plugin is there, else `docker-compose`.
set -euo pipefail
cd "$(dirname "$0")/.."

project="tidegate-smoke-$$"
token="smoke-$RANDOM$RANDOM"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=(docker-compose)
fi
compose+=(-p "$project" -f docker/compose.yaml)

log() { printf 'smoke: %s\n' "$*" >&2; }
teardown() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    log "failed (exit $rc); the containers said:"
    "${compose[@]}" logs --no-color --tail=40 >&2 || true
  fi
  "${compose[@]}" down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1 || true
  # Nothing of the project may be left behind.
  if [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$project")" ]; then
    log "containers of $project are still there"
    exit 1
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
web_port="$(free_port)"
admin_port="$(free_port)"
export TIDEGATE_WEB_PORT="$web_port" TIDEGATE_ADMIN_PORT="$admin_port" TIDEGATE_ADMIN_TOKEN="$token"
export TIDEGATE_LOAD_RATE="${TIDEGATE_LOAD_RATE:-20}"

if [ -z "${SKIP_BUILD:-}" ]; then
  log "building tidegate:local"
  docker/build-local.sh
fi

log "up: project $project, web 127.0.0.1:$web_port, admin 127.0.0.1:$admin_port"
"${compose[@]}" up -d

# Ready = tidegate's own HEALTHCHECK (/readyz) passes; compose started it
# only once the three backends' checks passed.
deadline=$((SECONDS + 90))
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${compose[@]}" ps -q tidegate)" 2>/dev/null)" = healthy ]; do
  [ "$SECONDS" -lt "$deadline" ] || { log "tidegate never became healthy"; exit 1; }
  sleep 1
done
log "tidegate is healthy"

# /healthz and /readyz need no token; the rest does.
curl -fsS "http://127.0.0.1:$admin_port/healthz" >/dev/null
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/stats")"
[ "$code" = 401 ] || { log "/stats without the token answered $code, expected 401"; exit 1; }

# 60 requests through the proxy: all succeed, all three backends answer.
seen="$(mktemp)"
for i in $(seq 1 60); do
  curl -fsS -D - -o /dev/null "http://127.0.0.1:$web_port/products/$i" | tr -d '\r' |
    awk -F': ' 'tolower($1)=="x-backend" {print $2}' >>"$seen"
done
backends="$(sort -u "$seen" | tr '\n' ' ')"
answered="$(wc -l <"$seen")"
rm -f "$seen"
log "60 requests: $answered answered, by: $backends"
[ "$answered" -eq 60 ] || { log "expected 60 answers"; exit 1; }
for b in backend-1 backend-2 backend-3; do
  case " $backends" in *" $b "*) ;; *) log "$b never answered"; exit 1 ;; esac
done

# The decision tidegate exports (export mode) and what it counted.
auth=(-H "Authorization: Bearer $token")
demand="$(curl -fsS "${auth[@]}" "http://127.0.0.1:$admin_port/demand")"
python3 - "$demand" <<'PY'
import json, sys
shop = json.loads(sys.argv[1])["pools"]["shop"]
assert shop["mode"] == "export", shop
assert shop["ready"] == 3, shop
assert shop["desired"] is not None and shop["desired"] >= 1, shop
print("smoke: /demand: demand %(demand)s, 1m %(demand_1m)s, ready %(ready)s, desired %(desired)s" % shop, file=sys.stderr)
PY
stats="$(curl -fsS "${auth[@]}" "http://127.0.0.1:$admin_port/stats")"
python3 - "$stats" <<'PY'
import json, sys
pool = json.loads(sys.argv[1])["pools"][0]
assert pool["requests_total"] >= 60, pool["requests_total"]
states = sorted(b["state"] for b in pool["backends"])
assert states == ["active"] * 3, states
print("smoke: /stats: %d requests through the pool, backends %s" % (pool["requests_total"], states), file=sys.stderr)
PY

# The flash-sale client ran alongside; it must have got answers too.
load_log="$("${compose[@]}" logs --no-color load 2>/dev/null | tail -n 3)"
log "load: ${load_log##*|}"
case "$load_log" in *"requests ok "*) ;; *) log "the load service printed no progress yet" ;; esac

# A graceful stop: SIGTERM, /readyz fails during shutdown_delay, exit 0.
"${compose[@]}" stop --timeout 30 tidegate >/dev/null
status="$(docker inspect -f '{{.State.ExitCode}}' "$("${compose[@]}" ps -q tidegate)")"
[ "$status" = 0 ] || { log "tidegate exited with $status after SIGTERM"; exit 1; }
log "tidegate stopped cleanly (exit 0)"
log "ok"
