#!/bin/sh
# An example exec provisioner (docs/HOOKS.md): tidegate writes one JSON request
# on stdin ({"version":1,"pool":"shop","seq":7,"desired":3,"current":2,
# "ready":2,"members":[...],"remove":[...]}) and reads one JSON answer on stdout:
# {"members": ["10.0.0.5:8080", ...]}. Exit non-zero to report a failure.
#
# This one keeps `desired` shop backends on 127.0.0.1:9001.. as local
# `tidegate backend` processes: a stand-in for a cloud API call. Replace the
# body with your provider's CLI (aws autoscaling set-desired-capacity ...,
# gcloud compute instance-groups managed resize ..., kubectl scale ...).
set -eu
request=$(cat)
desired=$(printf '%s' "$request" | sed -n 's/.*"desired":\([0-9]*\).*/\1/p')
state=${TIDEGATE_HOOK_STATE:-/tmp/tidegate-hook}
mkdir -p "$state"
members=""
i=1
while [ "$i" -le "$desired" ]; do
  port=$((9000 + i))
  if [ ! -f "$state/$port.pid" ] || ! kill -0 "$(cat "$state/$port.pid")" 2>/dev/null; then
    tidegate backend --listen "127.0.0.1:$port" --service-time 20ms --concurrency 8 >/dev/null 2>&1 &
    echo $! > "$state/$port.pid"
  fi
  members="$members${members:+,}\"127.0.0.1:$port\""
  i=$((i + 1))
done
# Stop the ones beyond `desired` (tidegate has drained them: they are in "remove").
for pidfile in "$state"/*.pid; do
  [ -e "$pidfile" ] || continue
  port=$(basename "$pidfile" .pid)
  if [ "$port" -gt $((9000 + desired)) ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
done
printf '{"members":[%s]}\n' "$members"
