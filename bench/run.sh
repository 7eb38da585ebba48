#!/usr/bin/env bash
# bench/run.sh: measure vkeyd against the machine's own limits, in one run.
#
#   bench/run.sh [--quick] [--scenarios a,b] [--no-append] [--build-dir D]
#
# Builds Release in build-release/, starts vkeyd (embedded Redis, rate
# limits off) on a free port, measures the limits (bssl-tool speed, nghttpd
# + h2load), cross-checks vkey-bench with h2load on the same request bytes
# (the issuers scenario, pinned), runs every available scenario with
# vkey-bench (3 repeats, medians), latency against load for verify and
# check (a gnuplot PNG), the connection-scale scenario on fresh vkeyd
# instances, prints a table and appends it, with the exact commands, to
# bench/RESULTS.md. Every process it starts is stopped on exit. See
# bench/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build-release
RESULTS=$ROOT/bench/RESULTS.md

QUICK=0
APPEND=1
SCENARIOS=""
CONNECT_VEHICLES=""
usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
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
# Pairs of the h2load cross-check (vkey-bench and h2load each once a pair,
# one right after the other) and their runs' length: the host's speed
# drifts by 10-30% within seconds, so many short pairs, each compared
# within itself, tell 10% apart where a few long runs cannot.
XC_PAIRS=30
XC_DURATION=1
XC_WARMUP=0.3
if [ "$QUICK" = 1 ]; then
  XC_PAIRS=20
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

# jget FILE KEY.PATH prints one field of a vkey-bench JSON report (a
# number in the path indexes a list: steps.0.path).
jget() {
  /usr/bin/python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    if isinstance(d, list):
        d = d[int(k)] if int(k) < len(d) else None
    else:
        d = d[k] if d is not None else None
print("" if d is None else d)' "$1" "$2"
}

# calc, median, ms, paired_ratio, xc_verdict, curve_point, curve_blocks and
# plot_script: the pure helpers, tested by tests/bench_lib_test.sh.
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# proc_cpu PID prints utime + stime in seconds.
proc_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

# The most CPU other processes used, as a median over one row's runs, and
# the most the hypervisor took (steal) in any one vkey-bench run: on a
# shared host, "other" is often the host's and not this machine's.
OTHER_WORST=0
STEAL_WORST=0
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

# h2load_run OUT "SERVER_PID [MORE_PIDS]" ARGS...: runs h2load and sets
# H2_RPS, H2_CPU (h2load's CPU share, cores), H2_SRV_S (the first pid's CPU
# seconds) and H2_OTHER (cores used by every process but h2load and those
# pids meanwhile: vkeyd's redis-server is the server's too).
h2load_run() {
  local out=$1 srv=${2%% *} pids=$2
  shift 2
  record_cmd "${PIN[@]}" h2load "$@"
  local b0 t0 b1 t1 c0 c1 p all0=0 all1=0
  read -r b0 t0 < <(busy_ticks)
  c0=$(proc_cpu "$srv")
  for p in $pids; do all0=$(calc "$all0 + $(proc_cpu "$p")" 3); done
  "${PIN[@]}" /usr/bin/time -f '%U %S %e' -o "$out.time" h2load "$@" >"$out" 2>&1 || true
  c1=$(proc_cpu "$srv")
  for p in $pids; do all1=$(calc "$all1 + $(proc_cpu "$p")" 3); done
  read -r b1 t1 < <(busy_ticks)
  H2_RPS=$(sed -n 's/^finished in [0-9.]*m\{0,1\}s, \([0-9.]*\) req\/s.*/\1/p' "$out")
  local u s e
  # The last line: /usr/bin/time puts a note first if h2load failed.
  read -r u s e < <(tail -1 "$out.time")
  H2_CPU=$(calc "($u + $s) / $e" 2)
  H2_SRV_S=$(calc "$c1 - $c0" 3)
  H2_OTHER=$(calc "$NCPU * ($b1 - $b0) / ($t1 > $t0 ? $t1 - $t0 : 1) - $H2_CPU - ($all1 - $all0) / $e" 2)
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
    local other steal
    other=$(jget "$out" other_cpu_cores)
    steal=$(jget "$out" steal_cpu_cores)
    STEAL_WORST=$(awk -v s="$steal" -v w="$STEAL_WORST" 'BEGIN { print (s > w) ? s : w }')
    DISTURBED=$(awk -v o="$other" -v m="$OTHER_CPU_MAX" 'BEGIN { print (o > m) ? 1 : 0 }')
    [ "$DISTURBED" = 0 ] && break
    warn "other processes used $other cores during a run (try $try); the hypervisor took $steal cores (steal)"
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
# run_against_rates NAME RUN TP GEN US: judges closed-loop run RUN (1-based)
# of a signature scenario by the one-core rates measured just before and
# just after it (RATES, SIGNS: their means), appending its limit, ratio,
# signature floor and efficiency to LIMITS, RATIOS, FLOORS and EFFS.
run_against_rates() {
  local s=$1 r=$2 tp=$3 gen=$4 us=$5 rate sign
  rate=$(calc "(${RATES[r - 1]} + ${RATES[r]}) / 2" 1)
  sign=$(calc "(${SIGNS[r - 1]:-$ED_SIGN} + ${SIGNS[r]:-$ED_SIGN}) / 2" 1)
  if [ "$s" = verify-p256 ]; then
    RATE_P256=$rate
  else
    RATE_ED=$rate
    RATE_SIGN=$sign
  fi
  LIMITS+=("$(scenario_limit "$s" "$gen")")
  RATIOS+=("$(calc "$tp / ${LIMITS[-1]}" 3)")
  FLOORS+=("$(scenario_floor "$s")")
  EFFS+=("$(calc "${FLOORS[-1]} / $us" 3)")
}

scenario_limit() {
  case "$1" in
    verify) calc "($NCPU - $2) * ${RATE_ED:-$ED_VERIFY}" 0 ;;
    verify-p256) calc "($NCPU - $2) * ${RATE_P256:-$P256_VERIFY}" 0 ;;
    # Two Ed25519 verifications per request: the key's token, the proof.
    verify-cold) calc "($NCPU - $2) * ${RATE_ED:-$ED_VERIFY} / 2" 0 ;;
    # Per operation: the code set signed (Authorize), verified and one key
    # signed (Redeem).
    share) calc "($NCPU - $2) / (2 / ${RATE_SIGN:-$ED_SIGN} + 1 / ${RATE_ED:-$ED_VERIFY})" 0 ;;
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
    share) calc "2e6 / ${RATE_SIGN:-$ED_SIGN} + 1e6 / ${RATE_ED:-$ED_VERIFY}" 1 ;;
    *) echo "" ;;
  esac
}

# prebuild_count NAME [RATE]: how many requests a signed scenario builds
# before its run (--prebuild): the phones' signatures and the vehicles'
# session tags are the clients' work, not the server's, so none is made in
# the window (bench/README.md). An open loop at RATE needs RATE x (warm-up
# + window), with a margin; a closed loop at most what the machine's
# signature limit allows (the larger of NCPU x the one-core rate and the
# all-cores rate; verify-cold verifies two signatures a request), or for
# check 60% of nghttpd's rate, with a margin, at most 2 million (1 KiB
# each). A run that outpaces the estimate ends its window where the
# requests ran out, and its rate still counts.
# larger A B: the larger of two awk expressions, rounded.
larger() { calc "(($1) > ($2) ? ($1) : ($2))" 0; }

prebuild_count() {
  local d=${D:-$DURATION} w=${W:-$WARMUP} r
  if [ -n "${2:-}" ]; then
    r=$2
  else
    case "$1" in
      verify) r=$(larger "$NCPU * $ED_VERIFY" "$ED_VERIFY_ALL") ;;
      verify-p256) r=$(larger "$NCPU * $P256_VERIFY" "$P256_VERIFY_ALL") ;;
      verify-cold) r=$(calc "$(larger "$NCPU * $ED_VERIFY" "$ED_VERIFY_ALL") / 2" 0) ;;
      check) r=$(calc "$RAW * 0.6" 0) ;;
    esac
  fi
  r=$(calc "$r * ($w + $d) * 1.15 + 500" 0)
  echo $((r < 2000000 ? r : 2000000))
}

# scenario_args NAME [RATE]: the scenario's own vkey-bench options. The
# signature scenarios and check prebuild their requests on every core;
# verify-cold gets a fresh key for each (each used once).
scenario_args() {
  local n
  case "$1" in
    health) ;;
    verify | verify-p256 | check)
      echo --data-dir "$DATA" --signers "$NCPU" --prebuild "$(prebuild_count "$@")"
      ;;
    verify-cold)
      n=$(prebuild_count "$@")
      echo --data-dir "$DATA" --signers "$NCPU" --prebuild "$n" --cold-keys \
        "$(calc "$n + 1000" 0)"
      ;;
    *) echo --data-dir "$DATA" ;;
  esac
}

# --- latency against load ----------------------------------------------------
# For each of CURVE_SCENARIOS, open-loop runs at CURVE_FRACTIONS of the
# scenario's closed-loop throughput in this run (its peak) give latency
# against offered load, timed from each request's intended send time. One
# run per point (disturbed runs are repeated); the 0.5 point is the median
# of the three open-loop runs every scenario gets. The points go to $CURVE
# and to a row; plot_curve draws them.
CURVE_SCENARIOS="verify check"
CURVE_FRACTIONS="0.1 0.25 0.5 0.75 0.9"
CURVE=$T/curve.tsv
: >"$CURVE"
# latency_curve S PEAK D W then, for the 0.5 point, THROUGHPUT P50 P99 P999.
latency_curve() {
  local s=$1 peak=$2 d=$3 w=$4 fr rate f got p50 p99 p999 cells="" args
  log "scenario $s: latency against load, open loop at $CURVE_FRACTIONS of $(calc "$peak" 0) req/s"
  for fr in $CURVE_FRACTIONS; do
    rate=$(calc "$peak * $fr" 0)
    if [ "$fr" = 0.5 ]; then
      got=$5 p50=$6 p99=$7 p999=$8
    else
      read -r -a args <<<"$(scenario_args "$s" "$rate")"
      f=$T/$s.curve.$fr.json
      bench_run "$f" -s "$s" "${args[@]}" -c $CONNS -m $STREAMS -d "$d" --warmup "$w" \
        --rate "$rate"
      got=$(jget "$f" throughput_rps)
      p50=$(jget "$f" latency_us.p50)
      p99=$(jget "$f" latency_us.p99)
      p999=$(jget "$f" latency_us.p999)
    fi
    curve_point "$CURVE" "$s" "$fr" "$peak" "$got" "$p50" "$p99" "$p999"
    cells+="${cells:+, }$fr: $p50/$p99"
  done
  row "$s latency against offered load (open loop, 1 run a point): fraction of $(calc "$peak" 0) req/s: p50/p99 (us)" \
    "$cells" "-" "-" "-" "-"
}

# plot_curve TSV PNG TITLE draws the curve with gnuplot (plot_script).
# Returns 1 without gnuplot.
plot_curve() {
  command -v gnuplot >/dev/null || { warn "gnuplot not found: no latency plot"; return 1; }
  local term="pngcairo size 960,600 font ',10'"
  gnuplot -e "set terminal $term" -e 'quit' 2>/dev/null || term="png size 960,600"
  curve_blocks "$1" >"$T/curve.dat"
  plot_script "$1" "$T/curve.dat" "$2" "$3" "$term" | gnuplot
}

# core_ticks N prints "busy total" jiffies of CPU N from /proc/stat.
core_ticks() {
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}
# core_busy "B0 T0" "B1 T1" prints the busy fraction between two samples.
core_busy() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.2f", (y[2] > x[2]) ? (y[1] - x[1]) / (y[2] - x[2]) : 0 }'; }

# cross_check: vkey-bench and h2load on the same request bytes (vkey-bench
# sends a fixed request with content-length, as h2load -d does, so vkeyd
# parses the same fields: callgrind counts the same instructions per call
# under both), the same -c/-m, the same warm-up and window, in XC_PAIRS
# pairs run back to back (the order alternates). The ratio is the geometric
# mean of the pairs' ratios (paired_ratio).
#
# The request is `issuers` (KeyService/GetIssuerKeys: no credential, an
# empty body, a Redis read per call), not `health`: a health call costs
# vkeyd about as much CPU as it costs a client (3-5 us), so on this
# machine's cores h2load is the bottleneck before vkeyd is (RESULTS.md,
# 01:26: h2load at 0.86 of its core measured 228k/s, vkey-bench 263k/s). A
# GetIssuerKeys call costs vkeyd and its redis-server about 8 us. On 2+
# CPUs the pairs run pinned: vkeyd and redis-server (every thread) on CPU
# 0, the client on CPU 1, so each client has a core to itself and the
# server's core is the bottleneck for both.
#
# The verdict (xc_verdict) is INCONCLUSIVE when either client used more
# than XC_CLIENT_MAX of a core (it measured itself), when other processes
# disturbed the runs, or when the ratio's standard error is over XC_SE_MAX
# (the pairs scatter too much to tell 10%); otherwise the two must agree
# within 10%, or run.sh exits 3 after writing its results. Sets AGREEMENT
# and AGREE_FAIL.
XC_CLIENT_MAX=0.90
XC_SE_MAX=0.04
XC_PATH=/vkey.v1.KeyService/GetIssuerKeys
cross_check() {
  local pinned=0 attempt
  if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    pinned=1
  fi
  "$BENCH" -s issuers --dump-request "$T/issuers.bin" 2>/dev/null
  record_cmd vkey-bench -s issuers --dump-request "$T/issuers.bin"
  if [ "$pinned" = 1 ]; then
    record_cmd taskset -a -p -c 0 "$VKPID"
    [ -n "$REDIS_PID" ] && record_cmd taskset -a -p -c 0 "$REDIS_PID"
    taskset -a -p -c 0 "$VKPID" >/dev/null
    [ -n "$REDIS_PID" ] && taskset -a -p -c 0 "$REDIS_PID" >/dev/null
    PIN=(taskset -c 1)
  fi
  # A second set of pairs when the first could not decide because the
  # machine was disturbed or drifted.
  for attempt in 1 2; do
    log "cross-check: $XC_PAIRS pairs of vkey-bench and h2load, -s issuers, ${XC_DURATION}s each (set $attempt)"
    xc_pairs "$pinned"
    case "$XC_VERDICT" in
      *disturbed* | *drifted*) [ "$attempt" = 1 ] && warn "cross-check: $XC_VERDICT; once more" ;;
      *) break ;;
    esac
  done
  row "issuers cross-check ($XC_HOW, -c $CONNS -m $STREAMS, $XC_PAIRS pairs of ${XC_DURATION} s runs): vkey-bench (req/s, median) / h2load, same request bytes (req/s, median); ratio: geometric mean of the pairs' ratios" \
    "$(calc "$XC_A" 0)" "$(calc "$XC_B" 0) (h2load)" "$XC_RATIO ± $XC_SE" \
    "$XC_GEN (vkey-bench / h2load)" "$XC_OTHER"
  xc_count
  PIN=()
  if [ "$pinned" = 1 ]; then
    taskset -a -p -c "0-$((NCPU - 1))" "$VKPID" >/dev/null
    [ -n "$REDIS_PID" ] && taskset -a -p -c "0-$((NCPU - 1))" "$REDIS_PID" >/dev/null
  fi
  [[ $XC_VERDICT == DISAGREE* ]] && AGREE_FAIL=1
  AGREEMENT="vkey-bench vs h2load, issuers (GetIssuerKeys), same request bytes, -c $CONNS -m $STREAMS, $XC_PAIRS pairs of ${XC_DURATION} s runs after ${XC_WARMUP} s, $XC_HOW: medians $(calc "$XC_A" 0) vs $(calc "$XC_B" 0) req/s, paired ratio $XC_RATIO (standard error $XC_SE): $XC_VERDICT ($XC_DETAIL)"
  log "$AGREEMENT"
}

# xc_count: the calls each client counts against the calls the server
# served, which no drift of the machine's speed can blur: a GetIssuerKeys
# call is one HGETALL in vkeyd's Redis, so `-n N` runs of both clients must
# each move Redis's HGETALL count by exactly N. Adds a row; a count that is
# off by more than 0.1% fails the run like a disagreement.
XC_COUNT_N=200000
xc_count() {
  local sock=$DATA/redis.sock c0 c1 c2 vbn h2n
  if ! command -v redis-cli >/dev/null || ! [ -S "$sock" ]; then
    warn "cross-check: no redis-cli or no $sock: calls not counted on the server"
    return 0
  fi
  hgetall_calls() {
    redis-cli -s "$sock" INFO commandstats |
      sed -n 's/^cmdstat_hgetall:calls=\([0-9]*\),.*/\1/p' | tr -d '\r'
  }
  record_cmd redis-cli -s "$sock" INFO commandstats
  c0=$(hgetall_calls)
  record_cmd "${PIN[@]}" vkey-bench -q -s issuers -c $CONNS -m $STREAMS -n $XC_COUNT_N \
    --warmup 0 "127.0.0.1:$PORT"
  "${PIN[@]}" "$BENCH" -q -s issuers -c $CONNS -m $STREAMS -n $XC_COUNT_N --warmup 0 \
    "127.0.0.1:$PORT" >"$T/count.vb" 2>&1 || true
  c1=$(hgetall_calls)
  h2load_run "$T/count.h2" "$VKPID $REDIS_PID" -n $XC_COUNT_N -c $CONNS -m $STREAMS -t 1 \
    -d "$T/issuers.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$PORT$XC_PATH"
  c2=$(hgetall_calls)
  vbn=$(sed -n 's/^requests *\([0-9]*\) ok.*/\1/p' "$T/count.vb")
  h2n=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$T/count.h2")
  row "issuers cross-check, calls served by the server (Redis HGETALL) / calls the client counted, -n $XC_COUNT_N: vkey-bench; h2load" \
    "$((c1 - c0)) / ${vbn:-?}; $((c2 - c1)) / ${h2n:-?}" "-" \
    "$(calc "($c1 - $c0) / ${vbn:-1}" 4); $(calc "($c2 - $c1) / ${h2n:-1}" 4)" "-" "-"
  if ! awk -v a="$((c1 - c0))" -v b="${vbn:-0}" -v c="$((c2 - c1))" -v d="${h2n:-0}" \
    'BEGIN { exit !(b > 0 && d > 0 && a / b >= 0.999 && a / b <= 1.001 && c / d >= 0.999 && c / d <= 1.001) }'; then
    AGREE_FAIL=1
    warn "cross-check: the server served $((c1 - c0)) calls for vkey-bench's ${vbn:-?}, $((c2 - c1)) for h2load's ${h2n:-?}"
  fi
}

# xc_pairs PINNED runs one set of pairs and sets XC_A, XC_B (medians,
# req/s), XC_RATIO and XC_SE (paired_ratio), XC_GEN, XC_OTHER, XC_HOW,
# XC_VERDICT and XC_DETAIL.
xc_pairs() {
  local pinned=$1 r f try s0 s1 order
  local vb=() vbgen=() vbother=() h2=() h2gen=() h2other=() srv=()
  for r in $(seq "$XC_PAIRS"); do
    # Odd pairs: vkey-bench first; even ones: h2load first.
    for order in $((r % 2)) $(((r + 1) % 2)); do
      s0=$(core_ticks 0)
      if [ "$order" = 1 ]; then
        f=$T/xc.$r.json
        bench_run "$f" -s issuers -c $CONNS -m $STREAMS -d "$XC_DURATION" \
          --warmup "$XC_WARMUP"
        vb+=("$(jget "$f" throughput_rps)")
        vbgen+=("$(jget "$f" client_cpu_cores)")
        vbother+=("$(jget "$f" other_cpu_cores)")
      else
        for try in 1 2 3; do
          h2load_run "$T/h2.$r" "$VKPID $REDIS_PID" -D "$(ms "$XC_DURATION")" \
            --warm-up-time "$(ms "$XC_WARMUP")" -c $CONNS -m $STREAMS -t 1 \
            -d "$T/issuers.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://127.0.0.1:$PORT$XC_PATH"
          awk -v o="$H2_OTHER" -v m="$OTHER_CPU_MAX" 'BEGIN { exit !(o > m) }' || break
          warn "other processes used $H2_OTHER cores during an h2load run (try $try)"
        done
        h2+=("$H2_RPS")
        h2gen+=("$H2_CPU")
        h2other+=("$H2_OTHER")
      fi
      s1=$(core_ticks 0)
      srv+=("$(core_busy "$s0" "$s1")")
    done
  done
  local ag bg ao bo pairs=()
  XC_HOW="unpinned"
  [ "$pinned" = 1 ] && XC_HOW="pinned: vkeyd+redis CPU 0, client CPU 1"
  XC_A=$(median "${vb[@]}")
  XC_B=$(median "${h2[@]}")
  for r in "${!vb[@]}"; do pairs+=("${vb[$r]}" "${h2[$r]}"); done
  read -r XC_RATIO XC_SE < <(paired_ratio "${pairs[@]}")
  ag=$(median "${vbgen[@]}")
  bg=$(median "${h2gen[@]}")
  ao=$(median "${vbother[@]}")
  bo=$(median "${h2other[@]}")
  XC_GEN="$(calc "$ag" 2) / $(calc "$bg" 2)"
  XC_OTHER=$(awk -v a="$ao" -v b="$bo" 'BEGIN { printf "%.2f", (a + 0 > b + 0) ? a : b }')
  XC_VERDICT=$(xc_verdict "$XC_RATIO" "$XC_SE" "$ag" "$bg" "$ao" "$bo" \
    "$XC_CLIENT_MAX" "$OTHER_CPU_MAX" "$XC_SE_MAX")
  XC_DETAIL="client CPU share $XC_GEN cores (vkey-bench / h2load); server core busy $(median "${srv[@]}"); other processes $(calc "$ao" 2) / $(calc "$bo" 2) cores; runs $(printf '%.0f ' "${vb[@]}")/ $(printf '%.0f ' "${h2[@]}")req/s"
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
XC_WANTED=0
for w in "${WANTED[@]}"; do
  case " $ORDER " in *" $w "*) continue ;; esac
  case "$w" in
    connect) CONNECT_WANTED=1 ;;
    issuers) XC_WANTED=1 ;;  # the h2load cross-check's request, only there
    *) SCEN_LIST+=("$w") ;;
  esac
done

AGREEMENT=""
AGREE_FAIL=0
if [ "$XC_WANTED" = 1 ]; then
  cross_check
fi
for S in "${SCEN_LIST[@]}"; do
  if ! echo "$AVAILABLE" | grep -qx "$S"; then
    msg=$("$BENCH" -s "$S" 127.0.0.1:1 2>&1 | head -1 || true)
    msg=${msg#vkey-bench: }
    warn "skipping scenario $S: $msg"
    row "$S" "skipped: ${msg%%:*}" "-" "-" "-" "-"
    continue
  fi
  # verify-cold makes a key per request: shorter runs keep it affordable.
  D=$DURATION
  W=$WARMUP
  if [ "$S" = verify-cold ]; then
    D=$(calc "$DURATION / 2" 1)
    W=$(calc "$WARMUP / 2" 1)
  fi
  read -r -a SARGS <<<"$(scenario_args "$S")"
  # The verify rate on one core drifts with the host's speed (by 10-30%
  # within seconds, 2x within an hour on these VMs): measure it before each
  # closed-loop run and after the last, and judge each run by the mean of
  # the two measurements around it (pairing, as the cross-check does). The
  # ratios reported are the medians of the runs' own ratios.
  RATE_ED="" RATE_P256="" RATE_SIGN="" rate_op=""
  case "$S" in
    verify | verify-cold | share) rate_op="Ed25519 verify" ;;
    verify-p256) rate_op="ECDSA P-256 verify" ;;
  esac
  RATES=() SIGNS=() LIMITS=() RATIOS=() FLOORS=() EFFS=()
  if [ -n "$rate_op" ]; then
    RATES+=("$(rate_now "$rate_op")")
    # The same bssl-tool run timed Ed25519 signing too (share signs).
    SIGNS+=("$(bssl_rate "$T/now.txt" "Ed25519 signing")")
  fi
  log "scenario $S: $REPEATS x ${D}s closed loop, -c $CONNS -m $STREAMS"
  # share counts operations (Authorize + Redeem), the others calls.
  unit="req/s" per="request"
  if [ "$S" = share ]; then
    unit="operations/s" per="operation"
  fi
  TP=() P50=() P99=() P999=() MAXL=() GEN=() SIG=() US=() RUS=() RSS=() OTHER=()
  PRE=() CUT=() MUS=() OUS=()
  ST1=() ST2=()
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
    PRE+=("$(jget "$f" signers.prebuilt)")
    if [ "$(jget "$f" signers.ran_out)" = True ]; then
      CUT+=("$(jget "$f" elapsed_s)")
    fi
    US+=("$(jget "$f" server.cpu_us_per_request)")
    MUS+=("$(jget "$f" server.loop_threads_cpu_us_per_request)")
    OUS+=("$(jget "$f" server.other_threads_cpu_us_per_request)")
    RUS+=("$(jget "$f" redis.cpu_us_per_request)")
    RSS+=("$(jget "$f" server.rss_kb_after)")
    OTHER+=("$(jget "$f" other_cpu_cores)")
    # Operations of two calls: each call's p50/p99.
    if [ -n "$(jget "$f" steps.1.path)" ]; then
      ST1+=("$(jget "$f" steps.0.latency_us.p50) $(jget "$f" steps.0.latency_us.p99)")
      ST2+=("$(jget "$f" steps.1.latency_us.p50) $(jget "$f" steps.1.latency_us.p99)")
      ST_NAMES="$(jget "$f" steps.0.path) $(jget "$f" steps.1.path)"
    fi
    reused=$(jget "$f" signers.keys_reused)
    if [ -n "$reused" ] && [ "$reused" != 0 ]; then
      warn "$S: $reused requests reused a key (not cold)"
    fi
    if [ -n "$rate_op" ]; then
      RATES+=("$(rate_now "$rate_op")")
      SIGNS+=("$(bssl_rate "$T/now.txt" "Ed25519 signing")")
      run_against_rates "$S" "$r" "${TP[-1]}" "${GEN[-1]}" "${US[-1]}"
    fi
  done
  if [ -n "$rate_op" ]; then
    row "$S: $rate_op, 1 core, before each run and after the last (/s)" \
      "$(printf '%.0f ' "${RATES[@]}")" "-" "-" "-" "-"
    if [ "$S" = share ]; then
      row "$S: Ed25519 signing, 1 core, before each run and after the last (/s)" \
        "$(printf '%.0f ' "${SIGNS[@]}")" "-" "-" "-" "-"
    fi
  fi
  tp=$(median "${TP[@]}")
  gen=$(median "${GEN[@]}")
  GEN0=${GEN0:-$gen}
  other=$(median "${OTHER[@]}")
  if [ -n "$rate_op" ]; then
    limit=$(median "${LIMITS[@]}")
    ratio=$(median "${RATIOS[@]}")
  else
    limit=$(scenario_limit "$S" "$gen")
    ratio=$(calc "$tp / $limit" 3)
  fi
  what="nghttpd rate"
  case "$S" in
    verify | verify-cold) what="signature limit, Ed25519" ;;
    verify-p256) what="signature limit, P-256" ;;
    share) what="signature limit, Ed25519 2 signs + 1 verify per operation" ;;
  esac
  row "$S throughput, vkey-bench ($unit) / $what" "$(calc "$tp" 0)" "$limit" \
    "$ratio" "$gen" "$other"
  limit_all=$(scenario_limit_all "$S" "$gen")
  if [ -n "$limit_all" ]; then
    row "$S throughput / the same limit from the all-cores verify rate" \
      "$(calc "$tp" 0)" "$limit_all" "$(calc "$tp / $limit_all" 3)" "$gen" "$other"
  fi
  if [ -n "${SIG[0]}" ]; then
    row "$S load generator: of which signer threads (cores)" \
      "$(median "${SIG[@]}")" "-" "-" "$gen" "$other"
  fi
  if [ -n "${PRE[0]}" ] && [ "${PRE[0]}" != 0 ]; then
    # A window that outran its prebuilt requests ended there: its rate
    # stands, over a shorter window.
    cut="none ended early"
    [ ${#CUT[@]} -eq 0 ] || cut="${#CUT[@]} ended early, at ${CUT[*]} s"
    row "$S requests built before each run, none in its window (--prebuild); windows" \
      "${PRE[*]}; $cut" "-" "-" "-" "-"
  fi
  row "$S latency p50/p99/p99.9/max (us)" \
    "$(median "${P50[@]}")/$(median "${P99[@]}")/$(median "${P999[@]}")/$(median "${MAXL[@]}")" \
    "-" "-" "$gen" "$other"
  if [ ${#ST1[@]} -gt 0 ]; then
    # Each call of the operation, timed from its own submission (the first
    # from the operation's start): medians of the runs' p50 and p99.
    read -r n1 n2 <<<"$ST_NAMES"
    row "$S latency of each call p50/p99 (us): ${n1##*/}; ${n2##*/}" \
      "$(median "${ST1[@]%% *}")/$(median "${ST1[@]##* }"); $(median "${ST2[@]%% *}")/$(median "${ST2[@]##* }")" \
      "-" "-" "$gen" "$other"
  fi
  us=$(median "${US[@]}")
  if [ -n "$rate_op" ]; then
    # The request's public-key work is the floor of its CPU cost; the
    # ratio is the efficiency (the median of the runs' own).
    row "$S vkeyd CPU per $per (us)" "$(calc "$us" 1)" \
      "$(median "${FLOORS[@]}") (signatures)" "$(median "${EFFS[@]}")" \
      "$gen" "$other"
  else
    row "$S vkeyd CPU per $per (us)" "$(calc "$us" 2)" "$RAW_US (nghttpd)" \
      "$(calc "$us / $RAW_US" 2)" "$gen" "$other"
  fi
  # Where vkeyd's CPU goes: its event loops (main thread, vkeyd-loopN) and the rest
  # (the workers' public-key work), each the median of the runs'. Both are
  # measured in the same window, so their split does not drift with the
  # host as the signature limit does.
  row "$S vkeyd CPU per $per: event loops / other threads (us)" \
    "$(calc "$(median "${MUS[@]}")" 1) / $(calc "$(median "${OUS[@]}")" 1)" \
    "-" "-" "$gen" "$other"
  if [ -n "${RUS[0]}" ]; then
    row "$S redis-server CPU per $per (us)" "$(calc "$(median "${RUS[@]}")" 2)" \
      "-" "-" "$gen" "$other"
  fi
  row "$S vkeyd RSS after the window (kB)" "$(median "${RSS[@]}")" "-" "-" "-" "-"
  # Latency at a moderate load: open loop at half the closed-loop rate,
  # timed from each request's intended send time.
  rate=$(calc "$tp / 2" 0)
  read -r -a SARGS <<<"$(scenario_args "$S" "$rate")"
  OP50=() OP99=() OP999=() OMAX=() OGEN=() OOTHER=() OTP=()
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
    OTP+=("$(jget "$f" throughput_rps)")
  done
  row "$S latency at $rate $unit open loop p50/p99/p99.9/max (us)" \
    "$(median "${OP50[@]}")/$(median "${OP99[@]}")/$(median "${OP999[@]}")/$(median "${OMAX[@]}")" \
    "-" "-" "$(median "${OGEN[@]}")" "$(median "${OOTHER[@]}")"
  if [[ " $CURVE_SCENARIOS " == *" $S "* ]]; then
    latency_curve "$S" "$tp" "$D" "$W" "$(median "${OTP[@]}")" \
      "$(median "${OP50[@]}")" "$(median "${OP99[@]}")" "$(median "${OP999[@]}")"
  fi
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
      tail -n 5 "$T/connect-$name-$r.log" "$DATA/redis.log" >&2 || true
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
STEAL_NOTE="the hypervisor took up to $(calc "$STEAL_WORST" 2) cores in a run (steal)"

{
  echo "| figure | value | limit | ratio | load gen CPU (cores) | other CPU (cores) |"
  echo "|---|---|---|---|---|---|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6 }' "$TABLE"
} >"$T/table.md"

echo
echo "vkey bench, $DATE, commit $COMMIT ($KIND)"
echo "machine: $MODEL, $NCPU CPUs${HYPER:+ ($HYPER)}; ${BUSY_PCT}% busy before the run; $STEAL_NOTE"
echo
cat "$T/table.md"
echo
[ -n "$AGREEMENT" ] && echo "$AGREEMENT"
echo "medians of $REPEATS runs; vkey-bench -d $DURATION --warmup $WARMUP; h2load -t 1"

# The latency-against-load plot goes next to RESULTS.md (bench/results/)
# when the run is appended there, else to /tmp, with its data.
PLOT=""
if [ -s "$CURVE" ]; then
  STAMP=$(date -u '+%Y-%m-%d-%H%M')
  if [ "$APPEND" = 1 ]; then
    PLOT_DIR=$ROOT/bench/results
  else
    PLOT_DIR=${TMPDIR:-/tmp}
  fi
  mkdir -p "$PLOT_DIR"
  PLOT=$PLOT_DIR/latency-$STAMP.png
  {
    printf '# vkey bench %s, commit %s (%s): latency against offered load, open loop\n' \
      "$DATE" "$COMMIT" "$KIND"
    printf '# scenario\tfraction\toffered_rps\tachieved_rps\tp50_us\tp99_us\tp999_us\tpeak_rps\n'
    cat "$CURVE"
  } >"${PLOT%.png}.tsv"
  if plot_curve "$CURVE" "$PLOT" "vkeyd latency against load, $DATE, commit $COMMIT"; then
    log "latency plot: $PLOT (data: ${PLOT%.png}.tsv)"
  else
    warn "no latency plot; its data: ${PLOT%.png}.tsv"
    PLOT=""
  fi
fi

if [ "$APPEND" = 1 ]; then
  [ -f "$RESULTS" ] || printf '# vkey bench results\n\nAppended by bench/run.sh; see bench/README.md for the figures.\n' >"$RESULTS"
  {
    echo
    echo "## $DATE, commit $COMMIT ($KIND)"
    echo
    echo "Machine: $MODEL, $NCPU CPUs${HYPER:+ ($HYPER)}; ${BUSY_PCT}% busy before the run; $STEAL_NOTE."
    echo "Medians of $REPEATS runs; -c $CONNS -m $STREAMS; vkey-bench -d $DURATION --warmup $WARMUP."
    echo
    cat "$T/table.md"
    echo
    [ -n "$AGREEMENT" ] && { echo "$AGREEMENT"; echo; }
    if [ -n "$PLOT" ]; then
      echo "Latency against offered load ($CURVE_SCENARIOS; p50 and p99, open loop at $CURVE_FRACTIONS of each one's closed-loop throughput): [results/${PLOT##*/}](results/${PLOT##*/}), data [results/$(basename "${PLOT%.png}.tsv")](results/$(basename "${PLOT%.png}.tsv"))."
      echo
      echo "![latency against offered load](results/${PLOT##*/})"
      echo
    fi
    echo "Commands (ports and temporary paths vary):"
    echo
    echo '```'
    sed "s|$T|\$TMP|g; s|$BUILD/||g" "$COMMANDS" | awk '!seen[$0]++'
    echo '```'
  } >>"$RESULTS"
  log "appended to $RESULTS"
fi

if [ "$AGREE_FAIL" = 1 ]; then
  echo "run.sh: the h2load cross-check failed: vkey-bench and h2load disagree by more than 10%, or a client's count is not the server's" >&2
  exit 3
fi
