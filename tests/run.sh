#!/bin/sh
# run.sh: build and run every test, as CI does. Installs what it needs,
# builds under ASan+UBSan with warnings as errors, checks formatting, runs
# the whole suite with ctest, then the thread tests, and vkeyd's event
# loops, again under TSan.
set -eu
cd "$(dirname "$0")/.."

./deploy/install-deps.sh

jobs=$(nproc)

echo "== format"
files=$(git ls-files '*.c' '*.h' '*.cc' 2>/dev/null || find server cache bench tests -name '*.[ch]' -o -name '*.cc')
# shellcheck disable=SC2086
clang-format --dry-run --Werror $files

echo "== build (ASan+UBSan)"
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Debug -DVK_SANITIZE=ON \
  -DVK_WERROR=ON >/dev/null
cmake --build build-test -j"$jobs"

echo "== tests (ASan+UBSan)"
(cd build-test && ctest --output-on-failure -j"$jobs" --timeout 900)

echo "== thread tests (TSan)"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DVK_TSAN=ON \
  -DVK_WERROR=ON >/dev/null
cmake --build build-tsan -j"$jobs" \
  --target worker_test ratelimit_test vkeyd vk_proto_python
(cd build-tsan && ctest --output-on-failure -R '^(worker|ratelimit)_test$')
# vkeyd's event loops (--loops) under TSan: connections dealt across
# threads, the shared limiter, connection budget and health, drain and
# shutdown.
tsan_py() {
  (cd tests/integration &&
    VK_BUILD_DIR="$PWD/../../build-tsan" VK_SOURCE_DIR="$PWD/../.." \
      PYTHONPATH="$PWD/../../build-tsan/gen/python:$PWD" \
      PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 "$@")
}
tsan_py test_server.py LoopsTest ConnectionLimitTest
tsan_py test_verify.py TwoLoopTest RateLimitTest

echo "== fuzz (libFuzzer, a few seconds per target)"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug \
  -DVK_FUZZ=ON -DVK_FUZZ_SECONDS=5 -DVK_WERROR=ON >/dev/null
fuzzers=$(sed -n 's/^set(VK_FUZZ_TARGETS \(.*\))$/\1/p' tests/fuzz/targets.cmake)
for f in $fuzzers; do
  cmake --build build-fuzz --target "fuzz_$f" -j"$jobs"
done
(cd build-fuzz && ctest --output-on-failure -R '^fuzz_run_')

echo "== all tests passed"
