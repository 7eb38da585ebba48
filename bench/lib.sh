# bench/lib.sh: run.sh's pure helpers, sourced by run.sh and by
# tests/bench_lib_test.sh. Each one is a function of its arguments (and of
# the files it is given): no processes started, no clocks read, nothing
# measured.

# calc EXPR [DECIMALS] prints an awk expression rounded (default 1 decimal).
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }

# median prints the median of its arguments (the lower middle one of an
# even count).
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# ms S prints S seconds as h2load's durations want them ("2.5" is refused,
# "2500ms" is not).
ms() { awk -v s="$1" 'BEGIN { printf "%dms", s * 1000 + 0.5 }'; }

# paired_ratio A1 B1 A2 B2 ... prints "RATIO SE" for pairs of measurements
# of one thing by two clients, taken one after the other: RATIO is the
# geometric mean of the pairs' A/B, SE the standard error of its log (about
# the relative error of RATIO). Pairing cancels the machine's drift that is
# slower than a pair: on these VMs a core's speed moves by 10-30% within
# seconds, so whole-run medians of 10 s runs can differ by 30% while the
# servers' work per call is the same. A pair with a zero is skipped.
paired_ratio() {
  printf '%s %s\n' "$@" | awk '$1 > 0 && $2 > 0 { l[++n] = log($1 / $2); s += l[n] }
    END {
      if (n == 0) { print "0 1"; exit }
      m = s / n; v = 0
      for (i = 1; i <= n; i++) v += (l[i] - m) ^ 2
      se = (n > 1) ? sqrt(v / (n - 1) / n) : 1
      printf "%.3f %.3f\n", exp(m), se
    }'
}

# xc_verdict RATIO SE GEN_A GEN_B OTHER_A OTHER_B CLIENT_MAX OTHER_MAX SE_MAX
# judges the h2load cross-check: RATIO is vkey-bench's throughput over
# h2load's and SE its standard error (see paired_ratio), GEN_* each
# client's CPU share (cores, medians), OTHER_* the CPU other processes used.
# In this order: a client that used more than CLIENT_MAX of a core measured
# itself; other processes over OTHER_MAX disturbed the runs; an SE over
# SE_MAX means the pairs scatter too much to tell 10% apart (the server's
# speed drifted within pairs); each makes the check INCONCLUSIVE. Otherwise
# the clients agree within 10% or DISAGREE. Prints the verdict; its first
# word is INCONCLUSIVE:, agree or DISAGREE.
xc_verdict() {
  if awk -v a="$3" -v b="$4" -v m="$7" 'BEGIN { exit !(a > m || b > m) }'; then
    echo "INCONCLUSIVE: client-bound (a client used more than $7 of a core)"
  elif awk -v a="$5" -v b="$6" -v m="$8" 'BEGIN { exit !(a > m || b > m) }'; then
    echo "INCONCLUSIVE: disturbed by other processes"
  elif awk -v e="$2" -v m="$9" 'BEGIN { exit !(e > m) }'; then
    echo "INCONCLUSIVE: the server's speed drifted (the ratio's standard error is over $9)"
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
