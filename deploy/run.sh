#!/bin/sh
# run.sh: build vkeyd (Release) and run it with the embedded defaults:
# h2c on 127.0.0.1:50051, TLS on 127.0.0.1:50052 with a development
# certificate made on first use, and its own redis-server in ./vkey-data.
# Extra arguments go to vkeyd (see `build-release/server/vkeyd --help`).
set -eu
cd "$(dirname "$0")/.."

./deploy/install-deps.sh
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DVK_BUILD_TESTS=OFF \
  >/dev/null
cmake --build build-release --target vkeyd -j"$(nproc)" >/dev/null

dev=deploy/dev
if [ ! -f "$dev/cert.pem" ] || [ ! -f "$dev/key.pem" ]; then
  mkdir -p "$dev"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -days 365 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dev/key.pem" -out "$dev/cert.pem" 2>/dev/null
  chmod 600 "$dev/key.pem"
  echo "made a development certificate: $dev/cert.pem"
fi

exec build-release/server/vkeyd \
  --listen 127.0.0.1:50051 \
  --tls-listen 127.0.0.1:50052 \
  --tls-cert "$dev/cert.pem" --tls-key "$dev/key.pem" \
  --data-dir ./vkey-data \
  "$@"
