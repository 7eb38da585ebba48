#!/usr/bin/env bash
# Tests for bench/lib.sh, run.sh's pure helpers: medians, paired ratios, the
# h2load cross-check's verdict, and the latency plot's data and gnuplot
# script. Nothing is measured and no timing is asserted.
#
#   tests/bench_lib_test.sh [bench/lib.sh]
set -euo pipefail

LIB=${1:-$(dirname "$0")/../bench/lib.sh}
# shellcheck source=bench/lib.sh
. "$LIB"

FAILED=0
CHECKS=0
expect_eq() {  # expect_eq WHAT WANT GOT
  CHECKS=$((CHECKS + 1))
  if [ "$2" != "$3" ]; then
    printf 'FAIL %s:\n  want: %s\n  got:  %s\n' "$1" "$2" "$3" >&2
    FAILED=$((FAILED + 1))
  fi
}
expect_has() {  # expect_has WHAT NEEDLE HAYSTACK
  CHECKS=$((CHECKS + 1))
  case "$3" in
    *"$2"*) ;;
    *)
      printf 'FAIL %s: no "%s" in:\n%s\n' "$1" "$2" "$3" >&2
      FAILED=$((FAILED + 1))
      ;;
  esac
}

TMP=$(mktemp -d /tmp/bench_lib_test.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# --- numbers -----------------------------------------------------------------
expect_eq "calc rounds" "0.333" "$(calc "1 / 3" 3)"
expect_eq "calc default decimals" "2.5" "$(calc "5 / 2")"
expect_eq "median of an odd count" "5" "$(median 9 1 5)"
expect_eq "median of an even count is the lower middle" "2" "$(median 4 1 2 3)"
expect_eq "median sorts numerically" "10" "$(median 9 100 10)"
expect_eq "ms" "2500ms" "$(ms 2.5)"
expect_eq "ms of whole seconds" "10000ms" "$(ms 10)"

# --- the cross-check's ratio and verdict --------------------------------------
# Pairs A/B of 1.1 and 1/1.1 around a drifting machine: geometric mean 1.
expect_eq "paired ratio cancels drift" "1.000 0.055" \
  "$(paired_ratio 110 100 50 55 220 200 100 110)"
expect_eq "paired ratio of equal pairs" "1.200 0.000" "$(paired_ratio 120 100 60 50 240 200)"
expect_eq "paired ratio skips a pair with a zero" "1.200 0.000" \
  "$(paired_ratio 120 100 0 50 240 200)"
expect_eq "paired ratio of one pair has no error estimate" "2.000 1.000" "$(paired_ratio 2 1)"
expect_eq "paired ratio of nothing" "0 1" "$(paired_ratio 0 0)"
v() { xc_verdict "$@" 0.90 0.30 0.04; }
expect_eq "agree" "agree within 10%" "$(v 1.05 0.02 0.35 0.38 0.02 0.05)"
expect_eq "agree at the edge" "agree within 10%" "$(v 0.900 0.04 0.35 0.38 0 0)"
expect_has "disagree above" "DISAGREE" "$(v 1.15 0.02 0.35 0.38 0.02 0.05)"
expect_has "disagree below" "DISAGREE" "$(v 0.85 0.02 0.35 0.38 0.02 0.05)"
# A client over 0.9 of a core measured itself: inconclusive whatever the
# ratio, and before anything else.
expect_has "client-bound h2load" "INCONCLUSIVE: client-bound" \
  "$(v 1.30 0.10 0.60 0.91 0.50 0.05)"
expect_has "client-bound vkey-bench" "INCONCLUSIVE: client-bound" \
  "$(v 1.00 0.01 0.95 0.40 0 0)"
expect_eq "0.9 of a core is not client-bound" "agree within 10%" \
  "$(v 1.00 0.01 0.90 0.90 0 0)"
expect_has "disturbed" "INCONCLUSIVE: disturbed" "$(v 1.40 0.10 0.35 0.38 0.02 0.45)"
expect_has "drifted" "INCONCLUSIVE: the server's speed drifted" \
  "$(v 1.40 0.05 0.35 0.38 0.02 0.05)"

# --- the latency curve ---------------------------------------------------------
TSV=$TMP/curve.tsv
: >"$TSV"
curve_point "$TSV" verify 0.1 14000 1399.6 350 900 1500
curve_point "$TSV" verify 0.9 14000 12500 4000 21000 30000
curve_point "$TSV" check 0.25 30000 7500 80 300 700
expect_eq "curve points" \
  "$(printf 'verify\t0.1\t1400\t1400\t350\t900\t1500\t14000\nverify\t0.9\t12600\t12500\t4000\t21000\t30000\t14000\ncheck\t0.25\t7500\t7500\t80\t300\t700\t30000')" \
  "$(cat "$TSV")"
# gnuplot's `index` counts blocks two blank lines apart: one per scenario.
expect_eq "curve blocks" \
  "$(printf 'verify\t0.1\t1400\t1400\t350\t900\t1500\t14000\nverify\t0.9\t12600\t12500\t4000\t21000\t30000\t14000\n\n\ncheck\t0.25\t7500\t7500\t80\t300\t700\t30000')" \
  "$(curve_blocks "$TSV")"
SCRIPT=$(plot_script "$TSV" /d/curve.dat /r/latency.png "a title" "png size 960,600")
expect_has "terminal" "set terminal png size 960,600" "$SCRIPT"
expect_has "output" "set output '/r/latency.png'" "$SCRIPT"
expect_has "log latency axis" "set logscale y" "$SCRIPT"
expect_has "verify p50" "'/d/curve.dat' index 0 using 2:5 with linespoints lw 2 pt 7 title 'verify p50 (peak 14000 req/s)'" "$SCRIPT"
expect_has "verify p99" "'' index 0 using 2:6 with linespoints lw 2 pt 5 dt 2 title 'verify p99'" "$SCRIPT"
expect_has "check, the second block" "index 1 using 2:5 with linespoints lw 2 pt 7 title 'check p50 (peak 30000 req/s)'" "$SCRIPT"
expect_eq "one plot line" "1" "$(grep -c '^plot ' <<<"$SCRIPT")"

if [ "$FAILED" -gt 0 ]; then
  echo "bench_lib_test: $FAILED of $CHECKS checks failed" >&2
  exit 1
fi
echo "bench_lib_test: $CHECKS checks passed"
