#!/usr/bin/env bash
# Where tidegate's memory goes under the h2c test of compare.sh: 64
# connections x 10 streams (640 requests in flight, each on its own
# upstream HTTP/1.1 connection), flat out for DURATION seconds against the
# benchmark config. Prints the upstream connections open at the end and the
# peak RSS; with HEAPTRACK=1 the proxy runs under heaptrack and the script
# also prints the heap at its peak, grouped by the innermost tidegate,
# hyper, h2, tokio, bytes or http frame that asked for it.
#
# heaptrack sees glibc's malloc only, not jemalloc (the default build's
# allocator): HEAPTRACK=1 takes TIDEGATE_BIN built with
# `cargo build --release --no-default-features`.
#
# Usage: benches/e2e/h2-memory.sh   (DURATION=6; HEAPTRACK=1 needs the
#        Debian package heaptrack)
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-6}
need h2load taskset ss
build
start_backends
write_tidegate_config "$WORK/tidegate.toml"
wrap=()
if [[ -n ${HEAPTRACK:-} ]]; then
  need heaptrack heaptrack_print
  if grep -q _rjem_malloc "$BIN"; then
    echo "h2-memory: $BIN allocates through jemalloc, which heaptrack cannot see;" >&2
    echo "  build it with: cargo build --release --no-default-features" >&2
    exit 1
  fi
  wrap=(heaptrack -o "$WORK/heap")
fi
TIDEGATE_LOG=warn taskset -c 0 "${wrap[@]}" "$BIN" run --no-watch --config "$WORK/tidegate.toml" >/dev/null 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:18080/healthz"
# Under heaptrack the proxy is a child of its wrapper: the newest process
# running this config is the proxy itself.
TG=$(pgrep -n -f -- "run --no-watch --config $WORK/tidegate.toml")
PIDS+=("$TG")
echo "idle: peak RSS $(hwm_kib "$TG") KiB"
taskset -c 1 h2load -c 64 -m 10 -D "$DURATION" http://127.0.0.1:18080/products/1 | grep -E '^(finished|requests:)'
upstream=$(ss -tn state established '( dport >= :19101 and dport <= :19104 )' | tail -n +2 | wc -l)
echo "upstream connections open: $upstream"
echo "after: peak RSS $(hwm_kib "$TG") KiB"
kill -INT "$TG"
while kill -0 "$TG" 2>/dev/null; do sleep 0.2; done
if [[ -n ${HEAPTRACK:-} ]]; then
  sleep 1
  heaptrack_print -f "$WORK"/heap.*zst --flamegraph-cost-type peak -F "$WORK/stacks.txt" >/dev/null 2>&1
  python3 - "$WORK/stacks.txt" <<'PY'
import collections, re, sys
total, by_site = 0, collections.Counter()
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    total += int(n)
    site = next((re.sub(r"::h[0-9a-f]{16}", "", f)[:110] for f in reversed(stack.split(";"))
                 if re.search(r"(tidegate|hyper|h2|tokio|bytes|http)::", f)), "other")
    by_site[site] += int(n)
print(f"heap at its peak: {total / 2**20:.1f} MiB")
for site, n in by_site.most_common(12):
    print(f"{n / 2**20:7.2f} MiB  {site}")
PY
fi
