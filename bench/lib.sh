# bench/lib.sh: run.sh's pure helpers, sourced by run.sh and by
# tests/bench_lib_test.sh. Each one is a function of its arguments (and of
# the files it is given): no processes started, no clocks read, nothing
# measured.

# calc EXPR [DECIMALS] prints an awk expression rounded (default 1 decimal).
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }

# median prints the median of its arguments (the lower middle one of an
# even count).
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# spread prints (max - min) / median of its arguments: how far repeated
# measurements of one thing disagree.
spread() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    m = v[int((NR + 1) / 2)]; printf "%.3f", (m > 0) ? (v[NR] - v[1]) / m : 0 }'
}

# ms S prints S seconds as h2load's durations want them ("2.5" is refused,
# "2500ms" is not).
ms() { awk -v s="$1" 'BEGIN { printf "%dms", s * 1000 + 0.5 }'; }

# xc_verdict RATIO GEN_A GEN_B OTHER_A OTHER_B SPREAD_A SPREAD_B
#            CLIENT_MAX OTHER_MAX SPREAD_MAX
# judges the h2load cross-check from the medians of its pairs: RATIO is
# vkey-bench's throughput over h2load's, GEN_* each client's CPU share
# (cores), OTHER_* the CPU other processes used, SPREAD_* how far each
# client's own runs spread (see spread). In this order: a client that used
# more than CLIENT_MAX of a core measured itself; other processes over
# OTHER_MAX disturbed the runs; a spread over SPREAD_MAX means the server's
# speed drifted; each makes the check INCONCLUSIVE. Otherwise the clients
# agree within 10% or DISAGREE. Prints the verdict; its first word is
# INCONCLUSIVE:, agree or DISAGREE.
xc_verdict() {
  if awk -v a="$2" -v b="$3" -v m="$8" 'BEGIN { exit !(a > m || b > m) }'; then
    echo "INCONCLUSIVE: client-bound (a client used more than $8 of a core)"
  elif awk -v a="$4" -v b="$5" -v m="$9" 'BEGIN { exit !(a > m || b > m) }'; then
    echo "INCONCLUSIVE: disturbed by other processes"
  elif awk -v a="$6" -v b="$7" -v m="${10}" 'BEGIN { exit !(a > m || b > m) }'; then
    echo "INCONCLUSIVE: the server's speed drifted (a client's runs spread by more than ${10} of their median)"
  elif awk -v q="$1" 'BEGIN { exit !(q >= 0.9 && q <= 1.1) }'; then
    echo "agree within 10%"
  else
    echo "DISAGREE (more than 10% apart)"
  fi
}

# curve_point FILE SCENARIO FRACTION PEAK ACHIEVED P50 P99 P999 appends one
# point of a latency-against-load curve to FILE, tab-separated: scenario,
# fraction of the peak, offered req/s (PEAK x FRACTION), achieved req/s,
# the latency percentiles (us), the peak (req/s).
curve_point() {
  awk -v s="$2" -v fr="$3" -v peak="$4" -v got="$5" -v a="$6" -v b="$7" -v c="$8" \
    'BEGIN { printf "%s\t%s\t%.0f\t%.0f\t%s\t%s\t%s\t%.0f\n", s, fr, peak * fr, got, a, b, c, peak }' >>"$1"
}

# curve_blocks TSV prints curve_point's lines as gnuplot data blocks, one
# per scenario (two blank lines apart, so that `index N` selects one).
curve_blocks() {
  awk -F'\t' 'prev != "" && $1 != prev { print ""; print "" } { print; prev = $1 }' "$1"
}

# plot_script TSV DAT PNG TITLE TERMINAL prints the gnuplot script that
# draws, from DAT (curve_blocks of TSV), p50 and p99 against the offered
# load as a fraction of each scenario's peak (so that scenarios share the
# axis), latency on a log axis, into PNG.
plot_script() {
  local tsv=$1 dat=$2 png=$3 title=$4 term=$5 plot="" i=0 name peak
  while IFS=$'\t' read -r name peak; do
    plot+="${plot:+, }'$dat' index $i using 2:5 with linespoints lw 2 pt 7 title '$name p50 (peak $peak req/s)'"
    plot+=", '' index $i using 2:6 with linespoints lw 2 pt 5 dt 2 title '$name p99'"
    i=$((i + 1))
  done < <(awk -F'\t' '!seen[$1]++ { print $1 "\t" $8 }' "$tsv")
  cat <<GNUPLOT
set terminal $term
set output '$png'
set title "$title"
set xlabel 'offered load, fraction of the closed-loop peak (open loop; latency from each intended send time)'
set ylabel 'latency (us)'
set logscale y
set format y '%.0f'
set grid xtics ytics mytics
set key top left
set xrange [0:1]
plot $plot
GNUPLOT
}
