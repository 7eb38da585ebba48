#!/usr/bin/env bash
# bench/run.sh: measure vkeyd against the machine's own limits, in one run.
#
#   bench/run.sh [--quick] [--scenarios a,b] [--no-append] [--build-dir D]
#
# Builds Release in build-release/, starts vkeyd (embedded Redis, rate
# limits off) on a free port, measures the limits (bssl-tool speed, nghttpd
# + h2load), runs every available scenario with vkey-bench (3 repeats,
# medians), cross-checks the health scenario with h2load on the same request
# bytes, runs the connection-scale scenario on fresh vkeyd instances, prints
# a table and appends it, with the exact commands, to bench/RESULTS.md.
# Every process it starts is stopped on exit. See bench/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build-release
RESULTS=$ROOT/bench/RESULTS.md

QUICK=0
APPEND=1
SCENARIOS=""
CONNECT_VEHICLES=""
usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  echo
  echo "  --quick          short runs: a smoke test, not reference figures"
  echo "  --scenarios a,b  only these vkey-bench scenarios (default: all"
  echo "                   available ones)"
  echo "  --no-append      do not append to bench/RESULTS.md"
  echo "  --build-dir DIR  build (Release) there instead of build-release/"
  echo "  --connect-vehicles N  vehicles of the one-per-connection connect"
  echo "                   run (default 19000; the open-file limit is 20000)"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-append) APPEND=0 ;;
    --scenarios)
      [ $# -ge 2 ] || { echo "run.sh: --scenarios needs a list" >&2; exit 2; }
      SCENARIOS=$2
      shift
      ;;
    --scenarios=*) SCENARIOS=${1#--scenarios=} ;;
    --build-dir)
      [ $# -ge 2 ] || { echo "run.sh: --build-dir needs a directory" >&2; exit 2; }
      BUILD=$(realpath -m "$2")
      shift
      ;;
    --connect-vehicles)
      [ $# -ge 2 ] || { echo "run.sh: --connect-vehicles needs a number" >&2; exit 2; }
      CONNECT_VEHICLES=$2
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# Run lengths. Connections and streams are the same for h2load and
# vkey-bench so that their figures compare (BENCHMARKING.md).
CONNS=8
STREAMS=32
REPEATS=3
XC_PAIRS=5
if [ "$QUICK" = 1 ]; then
  XC_PAIRS=3
  BSSL_TIMEOUT=1
  RAW_N=100000
  DURATION=2
  WARMUP=0.5
  CONNECT_VEHICLES=${CONNECT_VEHICLES:-2000}
  CONNECT_M_VEHICLES=2000
else
  BSSL_TIMEOUT=2
  RAW_N=200000
  DURATION=10
  WARMUP=2
  CONNECT_VEHICLES=${CONNECT_VEHICLES:-19000}
  CONNECT_M_VEHICLES=20000
fi
# The connect scenario's second shape: many vehicles per connection (vkeyd
# allows 100 concurrent streams per connection by default).
CONNECT_M=100
# verify-cold makes fresh keys for every run (each used once); its signers
# keep fewer requests ready, since every ready request holds a key.
COLD_RING=4096
# A run during which other processes used more CPU than this is repeated
# (at most twice) and flagged.
OTHER_CPU_MAX=0.30

NCPU=$(getconf _NPROCESSORS_ONLN)
T=$(mktemp -d /tmp/vkbench-run.XXXXXX)
# A command prefix for the load generator: empty, or taskset during the
# pinned cross-check.
PIN=()
PIDS=()
REDIS_PID=""
COMMANDS=$T/commands.txt
TABLE=$T/table.tsv
: >"$COMMANDS"
: >"$TABLE"

log() { printf 'run.sh: %s\n' "$*" >&2; }
warn() { printf 'run.sh: WARNING: %s\n' "$*" >&2; }

cleanup() {
  local rc=$?
  set +e
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    local p=${PIDS[$i]}
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null
      for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$p" 2>/dev/null
      wait "$p" 2>/dev/null
    fi
  done
  # vkeyd stops its redis-server child on SIGTERM; if vkeyd had to be
  # killed, stop the child ourselves.
  if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill -TERM "$REDIS_PID" 2>/dev/null
  fi
  rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# record_cmd keeps the exact command for RESULTS.md, quoted for a shell.
quote() {
  case $1 in
    '' | *[!A-Za-z0-9_./:=,@+%-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}
record_cmd() {
  local line="" a
  for a in "$@"; do line+="$(quote "$a") "; done
  printf '%s\n' "${line% }" >>"$COMMANDS"
}

free_port() {
  /usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

wait_port() {  # wait_port PORT PID
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      return 0
    fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# jget FILE KEY.PATH prints one field of a vkey-bench JSON report.
jget() {
  /usr/bin/python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    d = d[k] if d is not None else None
print("" if d is None else d)' "$1" "$2"
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }

# proc_cpu PID prints utime + stime in seconds.
proc_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

# The most CPU other processes used, as a median over one row's runs.
OTHER_WORST=0
row() {  # figure value limit ratio gen_cpu other_cpu
  local gen=$5 other=$6
  if [[ $other =~ ^[0-9.]+$ ]] &&
    awk -v o="$other" -v w="$OTHER_WORST" 'BEGIN { exit !(o > w) }'; then
    OTHER_WORST=$other
  fi
  [[ $gen =~ ^[0-9.]+$ ]] && gen=$(calc "$gen" 2)
  [[ $other =~ ^[0-9.]+$ ]] && other=$(calc "$other" 2)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$gen" "$other" >>"$TABLE"
}

# --- the machine must be idle ------------------------------------------------
idle_check() {
  local a b
  read -r -a a </proc/stat
  sleep 0.5
  read -r -a b </proc/stat
  local total=0 idle
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  idle=$((b[4] - a[4] + b[5] - a[5]))
  BUSY_PCT=$(calc "100 * ($total - $idle) / ($total > 0 ? $total : 1)" 0)
  if [ "$BUSY_PCT" -gt 10 ]; then
    warn "the machine is ${BUSY_PCT}% busy before the run: figures will be" \
      "disturbed (see 'other CPU' in the table)"
  else
    log "machine idle check: ${BUSY_PCT}% busy over 0.5 s"
  fi
}

# --- build ---------------------------------------------------------------------
log "installing dependencies (deploy/install-deps.sh)"
"$ROOT/deploy/install-deps.sh"
log "building Release in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DVK_BUILD_TESTS=OFF \
  >"$T/cmake.log" 2>&1 || { cat "$T/cmake.log" >&2; exit 1; }
cmake --build "$BUILD" -j2 --target vkeyd vkey-bench >"$T/build.log" 2>&1 ||
  { tail -40 "$T/build.log" >&2; exit 1; }
VKEYD=$BUILD/server/vkeyd
BENCH=$BUILD/bench/vkey-bench

idle_check

# --- limit 1: signature speed, one core -------------------------------------
bssl_rate() {  # bssl_rate FILE "Ed25519 verify"
  sed -n "s/^Did [0-9]* $2 operations in [0-9]*us (\([0-9.]*\) ops\/sec)$/\1/p" "$1" | head -1
}
log "measuring signature speed (bssl-tool speed)"
record_cmd bssl-tool speed -timeout "$BSSL_TIMEOUT" -filter Ed25519
bssl-tool speed -timeout "$BSSL_TIMEOUT" -filter Ed25519 >"$T/ed.txt"
record_cmd bssl-tool speed -timeout "$BSSL_TIMEOUT" -filter "ECDSA P-256"
bssl-tool speed -timeout "$BSSL_TIMEOUT" -filter "ECDSA P-256" >"$T/p256.txt"
ED_VERIFY=$(bssl_rate "$T/ed.txt" "Ed25519 verify")
ED_SIGN=$(bssl_rate "$T/ed.txt" "Ed25519 signing")
P256_VERIFY=$(bssl_rate "$T/p256.txt" "ECDSA P-256 verify")
P256_SIGN=$(bssl_rate "$T/p256.txt" "ECDSA P-256 signing")
[ -n "$ED_VERIFY" ] && [ -n "$P256_VERIFY" ] ||
  { cat "$T/ed.txt" "$T/p256.txt" >&2; echo "run.sh: cannot parse bssl-tool" >&2; exit 1; }

# bssl-tool's -filter selects a whole group ("Ed25519", "ECDSA P-256"), so
# an operation's rate is read from its group's output.
bssl_group() {
  case "$1" in
    Ed25519*) echo Ed25519 ;;
    "ECDSA P-256"*) echo "ECDSA P-256" ;;
  esac
}

# all_cores_rate "Ed25519 verify": the same operation on every CPU at once,
# each copy pinned to its CPU, rates summed. BENCHMARKING.md's signature
# limit assumes the cores are independent (N x the one-core rate); on these
# VMs they may not be (shared physical cores, a busy host), and this says
# by how much.
all_cores_rate() {
  local i total=0 r g
  g=$(bssl_group "$1")
  record_cmd taskset -c "0..$((NCPU - 1))" bssl-tool speed -timeout "$BSSL_TIMEOUT" -filter "$g"
  for ((i = 0; i < NCPU; i++)); do
    taskset -c "$i" bssl-tool speed -timeout "$BSSL_TIMEOUT" -filter "$g" >"$T/all.$i.txt" &
  done
  wait
  for ((i = 0; i < NCPU; i++)); do
    r=$(bssl_rate "$T/all.$i.txt" "$1")
    [ -n "$r" ] || { cat "$T/all.$i.txt" >&2; echo "run.sh: cannot parse bssl-tool" >&2; exit 1; }
    total=$(calc "$total + $r" 1)
  done
  echo "$total"
}

# rate_now "Ed25519 verify": the one-core rate again, at this moment (1 s
# per operation of the group).
rate_now() {
  local g r
  g=$(bssl_group "$1")
  record_cmd bssl-tool speed -timeout 1 -filter "$g"
  bssl-tool speed -timeout 1 -filter "$g" >"$T/now.txt"
  r=$(bssl_rate "$T/now.txt" "$1")
  [ -n "$r" ] || { cat "$T/now.txt" >&2; echo "run.sh: cannot parse bssl-tool" >&2; exit 1; }
  echo "$r"
}
ED_VERIFY_ALL=$(all_cores_rate "Ed25519 verify")
P256_VERIFY_ALL=$(all_cores_rate "ECDSA P-256 verify")

# --- limit 2: raw HTTP/2 request rate (nghttpd + h2load) ---------------------
# busy_ticks prints the machine's "busy idle+busy" jiffies from /proc/stat.
busy_ticks() {
  awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}

# h2load_run OUT SERVER_PID ARGS...: runs h2load and sets H2_RPS, H2_CPU
# (h2load's CPU share, cores), H2_SRV_S (the server's CPU seconds) and
# H2_OTHER (cores used by every other process meanwhile).
h2load_run() {
  local out=$1 srv=$2
  shift 2
  record_cmd "${PIN[@]}" h2load "$@"
  local b0 t0 b1 t1 c0 c1
  read -r b0 t0 < <(busy_ticks)
  c0=$(proc_cpu "$srv")
  "${PIN[@]}" /usr/bin/time -f '%U %S %e' -o "$out.time" h2load "$@" >"$out" 2>&1 || true
  c1=$(proc_cpu "$srv")
  read -r b1 t1 < <(busy_ticks)
  H2_RPS=$(sed -n 's/^finished in [0-9.]*m\{0,1\}s, \([0-9.]*\) req\/s.*/\1/p' "$out")
  local u s e
  # The last line: /usr/bin/time puts a note first if h2load failed.
  read -r u s e < <(tail -1 "$out.time")
  H2_CPU=$(calc "($u + $s) / $e" 2)
  H2_SRV_S=$(calc "$c1 - $c0" 3)
  H2_OTHER=$(calc "$NCPU * ($b1 - $b0) / ($t1 > $t0 ? $t1 - $t0 : 1) - $H2_CPU - ($c1 - $c0) / $e" 2)
  case $H2_OTHER in -*) H2_OTHER=0.00 ;; esac
  local total ok
  total=$(sed -n 's/^requests: \([0-9]*\) total.*/\1/p' "$out")
  ok=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$out")
  if [ -z "$H2_RPS" ] || [ "$total" != "$ok" ]; then
    warn "h2load: $(grep -E '^requests:' "$out" || tail -3 "$out")"
    H2_RPS=${H2_RPS:-0}
  fi
}

log "measuring the raw HTTP/2 request rate (nghttpd + h2load)"
mkdir -p "$T/www"
printf '0123456789abcdef' >"$T/www/16"
NGPORT=$(free_port)
record_cmd nghttpd --no-tls -d "$T/www" "$NGPORT"
nghttpd --no-tls -d "$T/www" "$NGPORT" >"$T/nghttpd.log" 2>&1 &
NGPID=$!
PIDS+=("$NGPID")
wait_port "$NGPORT" "$NGPID" || { cat "$T/nghttpd.log" >&2; exit 1; }
RAW_RPS=()
RAW_CPU=()
RAW_SRV_US=()
RAW_OTHER=()
for r in $(seq $REPEATS); do
  h2load_run "$T/raw.$r" "$NGPID" -n "$RAW_N" -c $CONNS -m $STREAMS -t 1 \
    "http://127.0.0.1:$NGPORT/16"
  RAW_RPS+=("$H2_RPS")
  RAW_CPU+=("$H2_CPU")
  RAW_SRV_US+=("$(calc "$H2_SRV_S * 1e6 / $RAW_N" 2)")
  RAW_OTHER+=("$H2_OTHER")
done
kill -TERM "$NGPID"
wait "$NGPID" 2>/dev/null || true
RAW=$(median "${RAW_RPS[@]}")
RAW_GEN=$(median "${RAW_CPU[@]}")
RAW_US=$(median "${RAW_SRV_US[@]}")
RAW_OTH=$(median "${RAW_OTHER[@]}")

row "raw HTTP/2 rate, nghttpd 16 B (req/s)" "$(calc "$RAW" 0)" "-" "-" "$RAW_GEN" "$RAW_OTH"
row "nghttpd CPU per request (us)" "$RAW_US" "-" "-" "$RAW_GEN" "$RAW_OTH"
row "Ed25519 verify, 1 core (/s)" "$(calc "$ED_VERIFY" 0)" "-" "-" "-" "-"
row "Ed25519 sign, 1 core (/s)" "$(calc "$ED_SIGN" 0)" "-" "-" "-" "-"
row "ECDSA P-256 verify, 1 core (/s)" "$(calc "$P256_VERIFY" 0)" "-" "-" "-" "-"
row "ECDSA P-256 sign, 1 core (/s)" "$(calc "$P256_SIGN" 0)" "-" "-" "-" "-"
row "Ed25519 verify, all $NCPU cores at once, pinned (/s)" "$(calc "$ED_VERIFY_ALL" 0)" \
  "$(calc "$NCPU * $ED_VERIFY" 0) ($NCPU x 1 core)" "$(calc "$ED_VERIFY_ALL / ($NCPU * $ED_VERIFY)" 3)" "-" "-"
row "ECDSA P-256 verify, all $NCPU cores at once, pinned (/s)" "$(calc "$P256_VERIFY_ALL" 0)" \
  "$(calc "$NCPU * $P256_VERIFY" 0) ($NCPU x 1 core)" "$(calc "$P256_VERIFY_ALL / ($NCPU * $P256_VERIFY)" 3)" "-" "-"

# --- vkeyd ---------------------------------------------------------------------
# start_vkeyd NAME: a vkeyd with its own embedded Redis in $T/NAME-data on a
# free port, rate limits off (--rate-vehicle 0 --rate-caller 0: the load
# comes from few vehicles and one caller), every open file the hard limit
# allows and room for the connect scenario's connections. Sets VKPID, PORT,
# DATA and REDIS_PID.
VKEYD_FLAGS=(--rate-vehicle 0 --rate-caller 0 --max-connections 19500 --log-level warn)
start_vkeyd() {
  PORT=$(free_port)
  DATA=$T/$1-data
  mkdir -m 700 "$DATA"
  record_cmd ulimit -n "$(ulimit -Hn)"
  record_cmd vkeyd --listen "127.0.0.1:$PORT" --data-dir "$DATA" "${VKEYD_FLAGS[@]}"
  (ulimit -n "$(ulimit -Hn)" && exec "$VKEYD" --listen "127.0.0.1:$PORT" \
    --data-dir "$DATA" "${VKEYD_FLAGS[@]}") >"$T/$1.log" 2>&1 &
  VKPID=$!
  PIDS+=("$VKPID")
  local ready=0
  for _ in $(seq 150); do
    if "$BENCH" -q -c 1 -m 1 -n 1 --warmup 0 "127.0.0.1:$PORT" >/dev/null 2>&1; then
      ready=1
      break
    fi
    kill -0 "$VKPID" 2>/dev/null || break
    sleep 0.1
  done
  REDIS_PID=$(cat "$DATA/redis.pid" 2>/dev/null || true)
  if [ "$ready" != 1 ]; then
    tail -20 "$T/$1.log" >&2
    echo "run.sh: vkeyd did not answer a health check within 15 s" >&2
    exit 1
  fi
  log "vkeyd $1 (pid $VKPID, redis-server $REDIS_PID) serving on 127.0.0.1:$PORT"
}

# stop_vkeyd: SIGTERM; vkeyd drains and stops its redis-server.
stop_vkeyd() {
  kill -TERM "$VKPID" 2>/dev/null || true
  wait "$VKPID" 2>/dev/null || true
  for _ in $(seq 50); do
    [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.1
  done
}

start_vkeyd vkeyd

# bench_run OUT ARGS...: one vkey-bench run against vkeyd, repeated (at most
# twice) if other processes disturbed it. Sets DISTURBED=1 if the last try
# was still disturbed.
bench_run() {
  local out=$1
  shift
  local redis=()
  [ -n "$REDIS_PID" ] && redis=(--redis-pid "$REDIS_PID")
  local cmd=("${PIN[@]}" "$BENCH" --json -q --server-pid "$VKPID" "${redis[@]}" "$@" "127.0.0.1:$PORT")
  for try in 1 2 3; do
    "${cmd[@]}" >"$out" 2>"$out.err" || true
    if ! [ -s "$out" ]; then
      cat "$out.err" >&2
      echo "run.sh: vkey-bench failed: ${cmd[*]}" >&2
      exit 1
    fi
    local other
    other=$(jget "$out" other_cpu_cores)
    DISTURBED=$(awk -v o="$other" -v m="$OTHER_CPU_MAX" 'BEGIN { print (o > m) ? 1 : 0 }')
    [ "$DISTURBED" = 0 ] && break
    warn "other processes used $other cores during a run (try $try)"
  done
  record_cmd "${PIN[@]}" vkey-bench "${cmd[@]:$((${#PIN[@]} + 1))}"
  local failed
  failed=$(jget "$out" failed)
  if [ "$failed" != 0 ]; then
    warn "$failed calls failed: $(jget "$out" first_error)"
  fi
}

# scenario_limit NAME GEN_CPU: the limit a scenario's throughput is judged
# against. Verification is bounded by the signature limit available to the
# server: (cores - load generator's share) x one-core verify rate; the rest
# by the raw HTTP/2 rate.
scenario_limit() {
  case "$1" in
    verify) calc "($NCPU - $2) * ${RATE_ED:-$ED_VERIFY}" 0 ;;
    verify-p256) calc "($NCPU - $2) * ${RATE_P256:-$P256_VERIFY}" 0 ;;
    # Two Ed25519 verifications per request: the key's token, the proof.
    verify-cold) calc "($NCPU - $2) * ${RATE_ED:-$ED_VERIFY} / 2" 0 ;;
    *) calc "$RAW" 0 ;;
  esac
}

# scenario_limit_all NAME GEN_CPU: the signature limit again, from the rate
# all cores reach at once: (cores - load generator) / cores x that rate.
scenario_limit_all() {
  case "$1" in
    verify) calc "($NCPU - $2) / $NCPU * $ED_VERIFY_ALL" 0 ;;
    verify-p256) calc "($NCPU - $2) / $NCPU * $P256_VERIFY_ALL" 0 ;;
    verify-cold) calc "($NCPU - $2) / $NCPU * $ED_VERIFY_ALL / 2" 0 ;;
    *) echo "" ;;
  esac
}

# scenario_floor NAME: the public-key work of one request in us (one core),
# the floor of its server CPU per request; empty for the others.
scenario_floor() {
  case "$1" in
    verify) calc "1e6 / ${RATE_ED:-$ED_VERIFY}" 1 ;;
    verify-p256) calc "1e6 / ${RATE_P256:-$P256_VERIFY}" 1 ;;
    verify-cold) calc "2e6 / ${RATE_ED:-$ED_VERIFY}" 1 ;;
    *) echo "" ;;
  esac
}

# scenario_args NAME [RATE]: the scenario's own vkey-bench options.
# verify-cold gets enough fresh keys for the run: those its signers keep
# ready plus the requests of the warm-up and the window at the verify rate
# measured earlier in this run (an upper bound: cold costs two verifies),
# with a margin; vkey-bench warns if any key was still used twice.
scenario_args() {
  case "$1" in
    health) ;;
    verify-cold)
      local r=${2:-${VERIFY_TP:-20000}} ready
      ready=$COLD_RING
      [ -n "${2:-}" ] && ready=$(calc "$2 * 2 + 256" 0)
      echo --data-dir "$DATA" --ring "$COLD_RING" --cold-keys \
        "$(calc "$ready + $r * ($WARMUP + $DURATION) * 1.3 + 1000" 0)"
      ;;
    *) echo --data-dir "$DATA" ;;
  esac
}

# core_ticks N prints "busy total" jiffies of CPU N from /proc/stat.
core_ticks() {
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}
# core_busy "B0 T0" "B1 T1" prints the busy fraction between two samples.
core_busy() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.2f", (y[2] > x[2]) ? (y[1] - x[1]) / (y[2] - x[2]) : 0 }'; }

# cross_check CLOSED_LOOP_RPS: vkey-bench and h2load on the same request
# bytes and the same -c/-m, in interleaved pairs so both see the same
# machine. On 2+ CPUs the pairs run pinned: vkeyd on CPU 0, the load
# generator on CPU 1. Unpinned, the two clients' own CPU costs differ (h2load
# -d reads the body file once per request) and the cheaper client leaves
# more CPU to the server; pinned, each has its own core. Per-request costs
# on these VMs drift by 20% from run to run, so a full run takes 5 pairs.
# Sets AGREEMENT and AGREE_FAIL.
cross_check() {
  local n r f pairs=$XC_PAIRS pinned=0
  local vb=() vbother=() vbcore=() h2=() h2other=() h2core=() srv=()
  n=$(awk -v t="$1" -v d=$DURATION 'BEGIN { n = int(t * d); print (n < 20000) ? 20000 : n }')
  if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    pinned=1
  fi
  local s0 s1 c0 c1
  for r in $(seq "$pairs"); do
    if [ "$pinned" = 1 ]; then
      taskset -a -p -c 0 "$VKPID" >/dev/null
      PIN=(taskset -c 1)
    fi
    s0=$(core_ticks 0)
    c0=$(core_ticks 1)
    bench_run "$T/xc.$r.json" -s health -c $CONNS -m $STREAMS -d $DURATION --warmup $WARMUP
    s1=$(core_ticks 0)
    c1=$(core_ticks 1)
    srv+=("$(core_busy "$s0" "$s1")")
    vbcore+=("$(core_busy "$c0" "$c1")")
    f=$T/xc.$r.json
    vb+=("$(jget "$f" throughput_rps)")
    vbother+=("$(jget "$f" other_cpu_cores)")
    s0=$(core_ticks 0)
    c0=$(core_ticks 1)
    h2load_run "$T/h2.$r" "$VKPID" -n "$n" -c $CONNS -m $STREAMS -t 1 -d "$T/req.bin" \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      "http://127.0.0.1:$PORT/grpc.health.v1.Health/Check"
    s1=$(core_ticks 0)
    c1=$(core_ticks 1)
    srv+=("$(core_busy "$s0" "$s1")")
    h2core+=("$(core_busy "$c0" "$c1")")
    h2+=("$H2_RPS")
    h2other+=("$H2_OTHER")
    PIN=()
    if [ "$pinned" = 1 ]; then
      taskset -a -p -c "0-$((NCPU - 1))" "$VKPID" >/dev/null
    fi
  done
  local how="unpinned" a b ao bo ac bc sc diff verdict
  [ "$pinned" = 1 ] && how="pinned: vkeyd CPU 0, client CPU 1"
  a=$(median "${vb[@]}")
  b=$(median "${h2[@]}")
  ao=$(median "${vbother[@]}")
  bo=$(median "${h2other[@]}")
  ac=$(median "${vbcore[@]}")
  bc=$(median "${h2core[@]}")
  sc=$(median "${srv[@]}")
  row "health cross-check ($how, $pairs pairs), vkey-bench (req/s)" "$(calc "$a" 0)" \
    "$(calc "$RAW" 0)" "$(calc "$a / $RAW" 3)" "$ac (its core busy)" "$ao"
  row "health cross-check ($how, $pairs pairs), h2load same bytes (req/s)" "$(calc "$b" 0)" \
    "$(calc "$RAW" 0)" "$(calc "$b / $RAW" 3)" "$bc (its core busy)" "$bo"
  diff=$(calc "100 * ($a - $b) / $b" 1)
  # The check means something only when the server is the bottleneck. On a
  # disturbed machine the medians differ by noise alone, and a client whose
  # pinned core was 85% busy or more (interrupts included) measured itself
  # (h2load at 0.86-0.87 of its core was 15% slower than vkey-bench on
  # idle runs).
  # Only a disagreement with neither excuse fails the run.
  local slow_core=$bc slow=h2load
  if awk -v a="$a" -v b="$b" 'BEGIN { exit !(a < b) }'; then
    slow_core=$ac
    slow=vkey-bench
  fi
  if ! awk -v d="$diff" 'BEGIN { exit !(d < -10 || d > 10) }'; then
    verdict="agree within 10%"
  elif awk -v a="$ao" -v b="$bo" -v m="$OTHER_CPU_MAX" \
    'BEGIN { exit !(a > m || b > m) }'; then
    verdict="more than 10% apart, INCONCLUSIVE: disturbed by other processes"
  elif [ "$pinned" = 1 ] && awk -v g="$slow_core" 'BEGIN { exit !(g >= 0.85) }'; then
    verdict="more than 10% apart, INCONCLUSIVE: client-bound, $slow's core was $slow_core busy"
  else
    AGREE_FAIL=1
    verdict="DISAGREE (more than 10%)"
  fi
  AGREEMENT="vkey-bench vs h2load, health, -c $CONNS -m $STREAMS, $how: $(calc "$a" 0) vs $(calc "$b" 0) req/s, ${diff}%: $verdict (server core busy $sc; client cores $ac / $bc; other processes $(calc "$ao" 2) / $(calc "$bo" 2) cores)"
  log "$AGREEMENT"
}

AVAILABLE=$("$BENCH" --help | awk '/^Scenarios:/ { on = 1; next }
  on && /^  [a-z]/ && !/not yet available/ { print $1 }')
if [ -z "$SCENARIOS" ]; then
  SCENARIOS=$(echo "$AVAILABLE" | paste -sd, -)
fi
# Order: verify-cold after verify (it sizes its keys from verify's rate)
# and after everything that a Redis swollen by its keys would disturb;
# connect last, on fresh vkeyd instances.
ORDER="health verify verify-p256 check verify-cold"
IFS=, read -r -a WANTED <<<"$SCENARIOS"
SCEN_LIST=()
for S in $ORDER; do
  for w in "${WANTED[@]}"; do [ "$w" = "$S" ] && SCEN_LIST+=("$S"); done
done
CONNECT_WANTED=0
for w in "${WANTED[@]}"; do
  case " $ORDER " in *" $w "*) continue ;; esac
  if [ "$w" = connect ]; then CONNECT_WANTED=1; else SCEN_LIST+=("$w"); fi
done

AGREEMENT=""
AGREE_FAIL=0
for S in "${SCEN_LIST[@]}"; do
  if ! echo "$AVAILABLE" | grep -qx "$S"; then
    msg=$("$BENCH" -s "$S" 127.0.0.1:1 2>&1 | head -1 || true)
    msg=${msg#vkey-bench: }
    warn "skipping scenario $S: $msg"
    row "$S" "skipped: ${msg%%:*}" "-" "-" "-" "-"
    continue
  fi
  if [ "$S" = health ]; then
    "$BENCH" -s health --dump-request "$T/req.bin" 2>/dev/null
    record_cmd vkey-bench -s health --dump-request "$T/req.bin"
  fi
  # verify-cold makes a key per request: shorter runs keep it affordable.
  D=$DURATION
  W=$WARMUP
  if [ "$S" = verify-cold ]; then
    D=$(calc "$DURATION / 2" 1)
    W=$(calc "$WARMUP / 2" 1)
  fi
  read -r -a SARGS <<<"$(scenario_args "$S")"
  # The verify rate on one core drifts with the host's load (by 2x within
  # an hour on these VMs): measure it again just before and after this
  # scenario's closed-loop runs, and judge them by the median of the three
  # measurements.
  RATE_ED="" RATE_P256="" rate_op=""
  case "$S" in
    verify | verify-cold) rate_op="Ed25519 verify" ;;
    verify-p256) rate_op="ECDSA P-256 verify" ;;
  esac
  [ -n "$rate_op" ] && rate_before=$(rate_now "$rate_op")
  log "scenario $S: $REPEATS x ${D}s closed loop, -c $CONNS -m $STREAMS"
  TP=() P50=() P99=() P999=() MAXL=() GEN=() SIG=() US=() RUS=() RSS=() OTHER=()
  for r in $(seq $REPEATS); do
    bench_run "$T/$S.$r.json" -s "$S" "${SARGS[@]}" -c $CONNS -m $STREAMS -d "$D" --warmup "$W"
    f=$T/$S.$r.json
    TP+=("$(jget "$f" throughput_rps)")
    P50+=("$(jget "$f" latency_us.p50)")
    P99+=("$(jget "$f" latency_us.p99)")
    P999+=("$(jget "$f" latency_us.p999)")
    MAXL+=("$(jget "$f" latency_us.max)")
    GEN+=("$(jget "$f" client_cpu_cores)")
    SIG+=("$(jget "$f" signers.cpu_cores)")
    US+=("$(jget "$f" server.cpu_us_per_request)")
    RUS+=("$(jget "$f" redis.cpu_us_per_request)")
    RSS+=("$(jget "$f" server.rss_kb_after)")
    OTHER+=("$(jget "$f" other_cpu_cores)")
    reused=$(jget "$f" signers.keys_reused)
    if [ -n "$reused" ] && [ "$reused" != 0 ]; then
      warn "$S: $reused requests reused a key (not cold)"
    fi
  done
  if [ -n "$rate_op" ]; then
    rate_after=$(rate_now "$rate_op")
    # One-second samples catch passing noise: the limit takes the median of
    # the run's first measurement and these two.
    if [ "$rate_op" = "Ed25519 verify" ]; then
      RATE_ED=$(median "$ED_VERIFY" "$rate_before" "$rate_after")
      rate_used=$RATE_ED
    else
      RATE_P256=$(median "$P256_VERIFY" "$rate_before" "$rate_after")
      rate_used=$RATE_P256
    fi
    row "$S: $rate_op, 1 core, just before / after its runs; used (/s)" \
      "$(calc "$rate_before" 0) / $(calc "$rate_after" 0); $(calc "$rate_used" 0)" \
      "-" "-" "-" "-"
  fi
  tp=$(median "${TP[@]}")
  gen=$(median "${GEN[@]}")
  GEN0=${GEN0:-$gen}
  other=$(median "${OTHER[@]}")
  limit=$(scenario_limit "$S" "$gen")
  [ "$S" = verify ] && VERIFY_TP=$tp
  what="nghttpd rate"
  case "$S" in
    verify | verify-cold) what="signature limit, Ed25519" ;;
    verify-p256) what="signature limit, P-256" ;;
  esac
  row "$S throughput, vkey-bench (req/s) / $what" "$(calc "$tp" 0)" "$limit" \
    "$(calc "$tp / $limit" 3)" "$gen" "$other"
  limit_all=$(scenario_limit_all "$S" "$gen")
  if [ -n "$limit_all" ]; then
    row "$S throughput / the same limit from the all-cores verify rate" \
      "$(calc "$tp" 0)" "$limit_all" "$(calc "$tp / $limit_all" 3)" "$gen" "$other"
  fi
  if [ -n "${SIG[0]}" ]; then
    row "$S load generator: of which signer threads (cores)" \
      "$(median "${SIG[@]}")" "-" "-" "$gen" "$other"
  fi
  row "$S latency p50/p99/p99.9/max (us)" \
    "$(median "${P50[@]}")/$(median "${P99[@]}")/$(median "${P999[@]}")/$(median "${MAXL[@]}")" \
    "-" "-" "$gen" "$other"
  us=$(median "${US[@]}")
  floor=$(scenario_floor "$S")
  if [ -n "$floor" ]; then
    # The request's public-key work is the floor of its CPU cost; the
    # ratio is the efficiency.
    row "$S vkeyd CPU per request (us)" "$(calc "$us" 1)" "$floor (signatures)" \
      "$(calc "$floor / $us" 3)" "$gen" "$other"
  else
    row "$S vkeyd CPU per request (us)" "$(calc "$us" 2)" "$RAW_US (nghttpd)" \
      "$(calc "$us / $RAW_US" 2)" "$gen" "$other"
  fi
  if [ -n "${RUS[0]}" ]; then
    row "$S redis-server CPU per request (us)" "$(calc "$(median "${RUS[@]}")" 2)" \
      "-" "-" "$gen" "$other"
  fi
  row "$S vkeyd RSS after the window (kB)" "$(median "${RSS[@]}")" "-" "-" "-" "-"
  if [ "$S" = health ]; then
    cross_check "$tp"
  fi
  # Latency at a moderate load: open loop at half the closed-loop rate,
  # timed from each request's intended send time.
  rate=$(calc "$tp / 2" 0)
  read -r -a SARGS <<<"$(scenario_args "$S" "$rate")"
  OP50=() OP99=() OP999=() OMAX=() OGEN=() OOTHER=()
  for r in $(seq $REPEATS); do
    bench_run "$T/$S.open.$r.json" -s "$S" "${SARGS[@]}" -c $CONNS -m $STREAMS -d "$D" \
      --warmup "$W" --rate "$rate"
    f=$T/$S.open.$r.json
    OP50+=("$(jget "$f" latency_us.p50)")
    OP99+=("$(jget "$f" latency_us.p99)")
    OP999+=("$(jget "$f" latency_us.p999)")
    OMAX+=("$(jget "$f" latency_us.max)")
    OGEN+=("$(jget "$f" client_cpu_cores)")
    OOTHER+=("$(jget "$f" other_cpu_cores)")
  done
  row "$S latency at $rate req/s open loop p50/p99/p99.9/max (us)" \
    "$(median "${OP50[@]}")/$(median "${OP99[@]}")/$(median "${OP999[@]}")/$(median "${OMAX[@]}")" \
    "-" "-" "$(median "${OGEN[@]}")" "$(median "${OOTHER[@]}")"
done

# The signature limits available to the server, with the load generator's
# share in the first scenario's runs (BENCHMARKING.md).
if [ -n "${GEN0:-}" ]; then
  row "signature limit for the server, Ed25519 (verify/s)" \
    "$(calc "($NCPU - $GEN0) * $ED_VERIFY" 0)" "-" "-" "$GEN0" "-"
else
  row "signature limit for the server, Ed25519 (verify/s)" \
    "$(calc "$NCPU * $ED_VERIFY" 0) (no load generator ran)" "-" "-" "-" "-"
fi
stop_vkeyd

# --- connection scale -------------------------------------------------------------
# connect_shape NAME VEHICLES PER_CONN: REPEATS runs, each on a fresh vkeyd
# (a vkeyd that held connections before keeps the memory its allocator got
# back, which would hide the cost of the next ones), and the medians.
connect_shape() {
  local name=$1 n=$2 m=$3
  local BPV=() RPV=() PPV=() CUS=() P50=() P99=() PMAX=() A50=() CONF=() SECS=()
  log "scenario connect: $REPEATS x $n vehicles, $m per connection"
  for r in $(seq $REPEATS); do
    start_vkeyd "connect-$name-$r"
    local f=$T/connect.$name.$r.json
    local redis=()
    [ -n "$REDIS_PID" ] && redis=(--redis-pid "$REDIS_PID")
    local cmd=("$BENCH" --json -q -s connect --data-dir "$DATA" --vehicles "$n" -m "$m"
      --push 200 --push-rate 100 --hold 2 --server-pid "$VKPID" "${redis[@]}" "127.0.0.1:$PORT")
    "${cmd[@]}" >"$f" 2>"$f.err" || warn "connect: $(tail -1 "$f.err")"
    record_cmd vkey-bench "${cmd[@]:1}"
    [ -s "$f" ] || { cat "$f.err" >&2; echo "run.sh: vkey-bench connect failed" >&2; exit 1; }
    CONF+=("$(jget "$f" confirmed)")
    SECS+=("$(jget "$f" connect_s)")
    BPV+=("$(jget "$f" server.bytes_per_vehicle)")
    CUS+=("$(jget "$f" server.cpu_us_per_vehicle)")
    RPV+=("$(jget "$f" redis.bytes_per_vehicle)")
    PPV+=("$(jget "$f" redis.provisioned_bytes_per_vehicle)")
    P50+=("$(jget "$f" push.latency_us.p50)")
    P99+=("$(jget "$f" push.latency_us.p99)")
    PMAX+=("$(jget "$f" push.latency_us.max)")
    A50+=("$(jget "$f" push.apply_latency_us.p50)")
    local fl
    fl=$(jget "$f" failed)
    if [ "$fl" != 0 ]; then
      # Keep what explains it: the run's own logs go with $T.
      warn "connect: $fl channels failed: $(jget "$f" first_error)"
      tail -5 "$T/connect-$name-$r.log" "$DATA/redis.log" >&2 || true
    fi
    stop_vkeyd
  done
  local label="connect $n vehicles, $m per connection"
  row "$label: channels confirmed / vehicles, seconds to open all" \
    "$(median "${CONF[@]}") in $(calc "$(median "${SECS[@]}")" 1) s" "$n" \
    "$(calc "$(median "${CONF[@]}") / $n" 3)" "-" "-"
  row "$label: vkeyd RSS per connected vehicle (bytes)" \
    "$(calc "$(median "${BPV[@]}")" 0)" "10240 (target)" \
    "$(calc "$(median "${BPV[@]}") / 10240" 2)" "-" "-"
  row "$label: vkeyd CPU per channel opened (us)" \
    "$(calc "$(median "${CUS[@]}")" 0)" "$(calc "1e6 / $ED_VERIFY" 1) (1 verify)" \
    "-" "-" "-"
  row "$label: Redis used_memory per connected vehicle (bytes)" \
    "$(calc "$(median "${RPV[@]}")" 0)" "-" "-" "-" "-"
  row "$label: Redis used_memory per provisioned vehicle, owner + 1 key (bytes)" \
    "$(calc "$(median "${PPV[@]}")" 0)" "-" "-" "-" "-"
  row "$label: key event ApplyKey -> channel p50/p99/max (us); ApplyKey p50" \
    "$(median "${P50[@]}")/$(median "${P99[@]}")/$(median "${PMAX[@]}"); $(median "${A50[@]}")" \
    "-" "-" "-" "-"
}

if [ "$CONNECT_WANTED" = 1 ]; then
  if echo "$AVAILABLE" | grep -qx connect; then
    connect_shape one "$CONNECT_VEHICLES" 1
    connect_shape many "$CONNECT_M_VEHICLES" "$CONNECT_M"
  else
    row connect "skipped: not available" "-" "-" "-" "-"
  fi
fi

# --- report --------------------------------------------------------------------
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" --no-optional-locks status --porcelain 2>/dev/null | head -1)" ]; then
  COMMIT="$COMMIT (work tree modified)"
fi
MODEL=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
HYPER=$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
KIND=$([ "$QUICK" = 1 ] && echo "quick smoke run, not reference figures" || echo "full run")
if awk -v o="$OTHER_WORST" -v m="$OTHER_CPU_MAX" 'BEGIN { exit !(o > m) }'; then
  KIND="$KIND; DISTURBED: other processes used up to $(calc "$OTHER_WORST" 2) cores, repeat on an idle machine"
  warn "the run was disturbed by other processes ($(calc "$OTHER_WORST" 2) cores)"
fi

{
  echo "| figure | value | limit | ratio | load gen CPU (cores) | other CPU (cores) |"
  echo "|---|---|---|---|---|---|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6 }' "$TABLE"
} >"$T/table.md"

echo
echo "vkey bench, $DATE, commit $COMMIT ($KIND)"
echo "machine: $MODEL, $NCPU CPUs${HYPER:+ ($HYPER)}; ${BUSY_PCT}% busy before the run"
echo
cat "$T/table.md"
echo
[ -n "$AGREEMENT" ] && echo "$AGREEMENT"
echo "medians of $REPEATS runs; vkey-bench -d $DURATION --warmup $WARMUP; h2load -t 1"

if [ "$APPEND" = 1 ]; then
  [ -f "$RESULTS" ] || printf '# vkey bench results\n\nAppended by bench/run.sh; see bench/README.md for the figures.\n' >"$RESULTS"
  {
    echo
    echo "## $DATE, commit $COMMIT ($KIND)"
    echo
    echo "Machine: $MODEL, $NCPU CPUs${HYPER:+ ($HYPER)}; ${BUSY_PCT}% busy before the run."
    echo "Medians of $REPEATS runs; -c $CONNS -m $STREAMS; vkey-bench -d $DURATION --warmup $WARMUP."
    echo
    cat "$T/table.md"
    echo
    [ -n "$AGREEMENT" ] && { echo "$AGREEMENT"; echo; }
    echo "Commands (ports and temporary paths vary):"
    echo
    echo '```'
    sed "s|$T|\$TMP|g; s|$BUILD/||g" "$COMMANDS" | awk '!seen[$0]++'
    echo '```'
  } >>"$RESULTS"
  log "appended to $RESULTS"
fi

if [ "$AGREE_FAIL" = 1 ]; then
  echo "run.sh: vkey-bench and h2load disagree by more than 10%" >&2
  exit 3
fi
