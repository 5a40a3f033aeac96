#!/usr/bin/env bash
# Installs every Debian package signet needs to build, run and test.
# Used by the README, .ci/run and docker/Dockerfile: the one list.
set -euo pipefail
PACKAGES=(
  build-essential cmake pkg-config
  libssl-dev openssl
  libp11-dev libp11-kit-dev softhsm2 opensc
  libmicrohttpd-dev libjansson-dev libsqlite3-dev sqlite3 libcurl4-openssl-dev
  libcmocka-dev libconfig-dev valgrind
  swupdate cpio
  python3 python3-cryptography python3-yaml curl
  clang libclang-rt-dev
)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# npm, for scripts/lint-openapi.sh (swagger-cli). Only when there is none:
# a nodejs from another source (NodeSource) carries its own npm and
# conflicts with Debian's npm package.
if ! command -v npm >/dev/null; then
  echo "deps: installing npm" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >&2
fi
