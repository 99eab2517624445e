#!/usr/bin/env bash
# A profile-guided release build of tidegate: an instrumented build, the
# training run (pgo-train.sh), the profile merged, and the release build
# again with it. Prints the path of the optimised binary; the profile is
# kept beside it (TARGET/tidegate.profdata) for docker/build-local.sh
# (`PROFDATA=... docker/build-local.sh`).
#
# Needs the `llvm-profdata` of rustc's own LLVM (`rustup component add
# llvm-tools`; Debian's is older than the profile format rustc writes),
# h2load and curl. Takes two release builds' time (about 10 min on 2
# cores). Why and what it gains: benches/README.md, "Profile-guided build".
#
# Usage: benches/e2e/pgo-build.sh   (PGO_TARGET_DIR=/work/target-pgo;
#        BACKEND_BIN: the backends' build for the training run, default
#        the plain release build, built if missing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
target=${PGO_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/pgo}
profdata=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f | head -1)
[[ -x $profdata ]] || { echo "pgo-build: no llvm-profdata (rustup component add llvm-tools)" >&2; exit 1; }
backend=${BACKEND_BIN:-${CARGO_TARGET_DIR:-target}/release/tidegate}
[[ -x $backend ]] || cargo build --release --locked --quiet --bin tidegate

data=$(mktemp -d /tmp/tidegate-pgo.XXXXXX)
trap 'rm -rf "$data"' EXIT
RUSTFLAGS="-Cprofile-generate=$data/raw" CARGO_TARGET_DIR=$target/instrumented \
  cargo build --release --locked --quiet --bin tidegate
# Build scripts and proc macros ran instrumented too: keep only the proxy's.
rm -rf "$data/raw"
TIDEGATE_BIN=$target/instrumented/release/tidegate BACKEND_BIN=$backend \
  benches/e2e/pgo-train.sh >&2
"$profdata" merge -o "$target/tidegate.profdata" "$data/raw"
RUSTFLAGS="-Cprofile-use=$(realpath "$target/tidegate.profdata")" CARGO_TARGET_DIR=$target/optimised \
  cargo build --release --locked --quiet --bin tidegate
echo "$target/optimised/release/tidegate"
