#!/usr/bin/env bash
# Builds the tidegate image on a machine with no registry: a static binary
# (glibc, +crt-static) copied with CA certificates, passwd/group entries for
# an unprivileged user and the default config into an image FROM scratch,
# tagged tidegate:local. Same contents and defaults as docker/Dockerfile
# (which needs the official rust and distroless images).
#
#   docker/build-local.sh            # then: docker run --rm -p 8080:8080 -e TIDEGATE_ADMIN_TOKEN=x tidegate:local
#   TAG=tidegate:dev docker/build-local.sh
#   PROFDATA=target/pgo/tidegate.profdata docker/build-local.sh   # reuse a profile
#   PGO=off docker/build-local.sh    # a plain build (minutes faster)
#
# The binary is profile-guided: unless PROFDATA names a profile, the
# profile is made first by benches/e2e/pgo-build.sh (an instrumented build
# and a training run through the proxy, about 7 min on 2 cores; a fifth
# fewer instructions per request, benches/README.md, "Profile-guided
# build"). PGO=auto (the default) falls back to a plain build, loudly,
# when the profile cannot be made (no `rustup component add llvm-tools`,
# no h2load, a training run that fails); PGO=on fails instead (CI sets it
# once llvm-tools is there); PGO=off builds plain, PROFDATA or not.
#
# Honours CARGO_TARGET_DIR. Needs cargo, docker, and the host's CA bundle
# (/etc/ssl/certs/ca-certificates.crt, Debian's ca-certificates).
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${TAG:-tidegate:local}"
# The host's, as benches/e2e/pgo-build.sh's: a profile applies only to
# the symbols of the compile kind it was recorded under.
triple=$(rustc -vV | awk '/^host:/ {print $2}')
target_dir="${CARGO_TARGET_DIR:-target}"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
uid=65532 # distroless's `nonroot`, so both images run as the same user

# --target keeps RUSTFLAGS off build scripts and proc macros (which must
# stay dynamic); only the tidegate binary is linked statically.
mode="${PGO:-auto}"
case "$mode" in
  off) PROFDATA= ;;
  auto | on)
    if [[ -z ${PROFDATA:-} ]]; then
      echo "build-local: making the profile (benches/e2e/pgo-build.sh)" >&2
      if ! PROFDATA="$(PROFILE_ONLY=1 benches/e2e/pgo-build.sh)"; then
        [[ $mode == auto ]] || { echo "build-local: no profile and PGO=on" >&2; exit 1; }
        echo "build-local: WARNING: no profile could be made; this image's binary is a plain build" >&2
        PROFDATA=
      fi
    fi ;;
  *) echo "build-local: PGO=$mode (auto, on or off)" >&2; exit 2 ;;
esac
flags="-C target-feature=+crt-static"
kind=plain
if [[ -n ${PROFDATA:-} ]]; then
  flags+=" -Cprofile-use=$(realpath "$PROFDATA")"
  kind=profile-guided
fi
RUSTFLAGS="$flags" cargo build --release --locked --target "$triple" --bin tidegate
bin="$target_dir/$triple/release/tidegate"
if ! ldd "$bin" 2>&1 | grep -qE 'not a dynamic executable|statically linked'; then
  echo "build-local: $bin is not static" >&2
  exit 1
fi
# The same check as the Dockerfile's build step: the shipped config is valid.
TIDEGATE_ADMIN_TOKEN=build-check "$bin" check --config docker/tidegate.toml

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/etc/tidegate" "$root/var/lib/tidegate" "$root/tmp"
install -m 0755 "$bin" "$root/usr/local/bin/tidegate"
# The release profile keeps line tables for profiling; the image does not need them.
if command -v strip >/dev/null 2>&1; then strip --strip-debug "$root/usr/local/bin/tidegate"; fi
install -m 0644 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
install -m 0644 docker/tidegate.toml "$root/etc/tidegate/tidegate.toml"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' "$uid" "$uid" >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$uid" >"$root/etc/group"
# Static glibc resolves names with its built-in files and dns sources.
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"

cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
COPY --chown=$uid:$uid rootfs/var/lib/tidegate /var/lib/tidegate
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt NO_COLOR=1
USER $uid:$uid
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \\
  CMD ["/usr/local/bin/tidegate", "probe", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/tidegate"]
CMD ["run", "--config", "/etc/tidegate/tidegate.toml"]
DOCKERFILE

docker build --quiet -t "$tag" "$ctx" >/dev/null
echo "build-local: built $tag ($(du -h "$root/usr/local/bin/tidegate" | cut -f1) $kind binary, FROM scratch)"
