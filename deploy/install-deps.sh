#!/bin/sh
# install-deps.sh installs the Debian 12 packages vkey builds, runs and tests
# with. Idempotent: it does nothing when every package is already present.
set -eu

PACKAGES="
  build-essential cmake pkg-config clang clang-format libclang-rt-14-dev
  libuv1-dev libnghttp2-dev zlib1g-dev
  libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev openssl
  android-libboringssl-dev android-boringssl
  libhiredis-dev redis-server redis-tools
  libgtest-dev libgmock-dev
  grpc-proto python3-grpcio python3-protobuf protobuf-compiler-grpc ruby-grpc
  python3-cryptography
  nghttp2-client nghttp2-server gnuplot-nox
  qrencode
"

missing=""
for p in $PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing="$missing $p"
  fi
done

if [ -z "$missing" ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "vkey: installing Debian packages:$missing" >&2
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
