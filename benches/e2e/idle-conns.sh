#!/usr/bin/env bash
# What an idle keep-alive client connection costs tidegate in memory: RSS
# with N connections open and idle (each has sent one request through the
# proxy and read the answer) minus RSS before, divided by N. One worker,
# the benchmark config; the connections come from one Python process.
#
# TRIM=1 also asks glibc (malloc_trim(0), through gdb) to give back the
# pages it keeps free after the burst: what the connections hold live,
# with the allocator's fragmentation, against what the process still has.
# It tells something only of a build on glibc's malloc
# (`--no-default-features`); the default build's jemalloc gives pages back
# by itself.
#
# SETTLE is how long the connections idle before RSS is read (default 20 s).
# Parking takes 1-2 s of rest, and jemalloc's background thread gives the
# freed pages back after about 10 s of decay; SETTLE=4 reads RSS before it
# has (benches/README.md, "jemalloc").
#
# Usage: benches/e2e/idle-conns.sh   (N=10000, TRIM=0, SETTLE=20)
source "$(dirname "$0")/lib.sh"
N=${N:-10000}
need python3 curl
ulimit -n $((N + 1024))
build
start_backends
write_tidegate_config "$WORK/idle.toml"
TIDEGATE_LOG=warn "$BIN" run --no-watch --config "$WORK/idle.toml" >/dev/null 2>&1 &
TG=$!; PIDS+=($TG)
wait_http "http://127.0.0.1:18080/healthz"
# Warm: one request per backend connection path, so pools and buffers exist.
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18080/products/1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
before=$(rss "$TG")
python3 - "$N" "$WORK/ready" <<'PY' &
import asyncio, sys
n, ready = int(sys.argv[1]), sys.argv[2]
async def one(i):
    r, w = await asyncio.open_connection("127.0.0.1", 18080)
    w.write(f"GET /products/{i % 100} HTTP/1.1\r\nHost: shop\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    await r.readexactly(length)
    return r, w
async def main():
    conns = []
    for start in range(0, n, 500):
        conns += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 500))))
    open(ready, "w").write(str(len(conns)))
    await asyncio.sleep(30)
asyncio.run(main())
PY
CLIENT=$!; PIDS+=($CLIENT)
for _ in $(seq 600); do [[ -s $WORK/ready ]] && break; sleep 0.1; done
[[ -s $WORK/ready ]] || { echo "the client did not open its connections"; exit 1; }
# Idle connections are parked after one to two seconds of rest; freed
# pages go back to the system some seconds later.
sleep "${SETTLE:-20}"
after=$(rss "$TG")
trimmed=""
if [[ ${TRIM:-0} == 1 ]]; then
  need gdb
  gdb -p "$TG" -batch -ex "call (int)malloc_trim(0)" >/dev/null 2>&1
  sleep 1
  trimmed=$(rss "$TG")
fi
open=$(cat "$WORK/ready")
kill "$CLIENT" 2>/dev/null || true
python3 - "$open" "$before" "$after" "$trimmed" <<'PY'
import sys
n, before, after = map(int, sys.argv[1:4])
print("| idle keep-alive connections | RSS before (KiB) | RSS with them (KiB) | per connection (KiB) |")
print("| --- | --- | --- | --- |")
print(f"| {n} | {before} | {after} | {(after - before) / n:.2f} |")
if sys.argv[4]:
    trimmed = int(sys.argv[4])
    print(f"\nafter malloc_trim(0): {trimmed} KiB, {(trimmed - before) / n:.2f} KiB per connection")
PY
