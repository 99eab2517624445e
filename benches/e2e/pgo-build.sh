#!/usr/bin/env bash
# A profile-guided release build of tidegate: an instrumented build, the
# training run (pgo-train.sh), the profile merged, and the release build
# again with it. Prints the path of the optimised binary; the profile is
# kept beside it (TARGET/tidegate.profdata) for docker/build-local.sh
# (`PROFDATA=TARGET/tidegate.profdata docker/build-local.sh`).
#
# Both builds name the host triple (`--target`), as build-local.sh does:
# cargo mixes the compile kind into every symbol's hash, and a profile
# only applies to the symbols it was recorded under. It also keeps
# RUSTFLAGS off build scripts and proc macros.
#
# Needs the `llvm-profdata` of rustc's own LLVM (`rustup component add
# llvm-tools`; Debian's is older than the profile format rustc writes),
# h2load and curl. Takes about 11 min on 2 cores. Why and what it gains:
# benches/README.md, "Profile-guided build".
#
# Usage: benches/e2e/pgo-build.sh   (TARGET: PGO_TARGET_DIR, default
#        ${CARGO_TARGET_DIR:-target}/pgo; BACKEND_BIN: the backends'
#        plain build for the training run, default the release build,
#        brought up to date first; PROFILE_ONLY=1 stops once the profile is
#        merged and prints its path instead, for docker/build-local.sh,
#        which builds its own static binary with it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
target=$(realpath -m "${PGO_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/pgo}")
triple=$(rustc -vV | awk '/^host:/ {print $2}')
profdata=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f | head -1)
[[ -x $profdata ]] || { echo "pgo-build: no llvm-profdata (rustup component add llvm-tools)" >&2; exit 1; }
if [[ -z ${BACKEND_BIN:-} ]]; then
  BACKEND_BIN=${CARGO_TARGET_DIR:-target}/release/tidegate
  # Always asked for: a stale release binary would answer with old code.
  cargo build --release --locked --quiet --bin tidegate
fi
[[ -x $BACKEND_BIN ]] || { echo "pgo-build: BACKEND_BIN $BACKEND_BIN is not a binary" >&2; exit 1; }

# A fixed path in the flags, so a second run rebuilds only what changed.
raw=$target/raw
RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR=$target/instrumented \
  cargo build --release --locked --quiet --target "$triple" --bin tidegate
rm -rf "$raw"
LLVM_PROFILE_FILE="$raw/tidegate-%p.profraw" TIDEGATE_BIN=$target/instrumented/$triple/release/tidegate \
  BACKEND_BIN=$BACKEND_BIN benches/e2e/pgo-train.sh >&2
"$profdata" merge -o "$target/tidegate.profdata" "$raw"
if [[ -n ${PROFILE_ONLY:-} ]]; then
  echo "$target/tidegate.profdata"
  exit 0
fi
RUSTFLAGS="-Cprofile-use=$target/tidegate.profdata" CARGO_TARGET_DIR=$target/optimised \
  cargo build --release --locked --quiet --target "$triple" --bin tidegate
echo "$target/optimised/$triple/release/tidegate"
