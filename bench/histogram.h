// histogram.h: a small log-linear (HDR-style) histogram of integer values,
// used by vkey-bench for latencies in microseconds.
//
// Values below 2^(sub_bits+1) have a bucket each; above that, every power of
// two is split into 2^sub_bits equal buckets, so a bucket is never wider than
// 1/2^sub_bits of its lowest value. With sub_bits = 7 that is 0.8%: at least
// two significant digits, as HdrHistogram's "2 significant figures". Recording
// is O(1) and allocation-free; two histograms of the same shape merge by
// adding counts.
#ifndef VK_BENCH_HISTOGRAM_H
#define VK_BENCH_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The shape vkey-bench uses: 1 µs units up to 60 s, 2 significant digits.
#define VK_HIST_LATENCY_HIGHEST UINT64_C(60000000)
#define VK_HIST_LATENCY_SUB_BITS 7

typedef struct vk_hist_s {
  uint64_t highest;   // largest value kept; larger ones are clamped to it
  unsigned sub_bits;  // log2 of the buckets per power of two
  size_t nbuckets;
  uint64_t *counts;  // nbuckets counters, owned
  uint64_t total;    // values recorded, clamped ones included
  uint64_t clamped;  // values that were above `highest`
  uint64_t min;      // exact smallest recorded value (UINT64_MAX if none)
  uint64_t max;      // exact largest recorded value, after clamping
  double sum;        // of recorded values, after clamping, for the mean
} vk_hist_t;

// vk_hist_init prepares an empty histogram for values 0..`highest` with
// 2^`sub_bits` buckets per power of two. `sub_bits` must be 1..16 and
// `highest` at least 1. Returns 0, VK_EINVAL for a bad shape or VK_ENOMEM.
// After a failure `h` is in the zero state, safe for vk_hist_cleanup.
int vk_hist_init(vk_hist_t *h, uint64_t highest, unsigned sub_bits);

// vk_hist_cleanup frees the counters. Safe on a zeroed or cleaned-up `h`.
void vk_hist_cleanup(vk_hist_t *h);

// vk_hist_reset forgets every recorded value and keeps the shape.
void vk_hist_reset(vk_hist_t *h);

// vk_hist_record adds one value. Values above `highest` count as `highest`
// and are counted in `clamped`.
void vk_hist_record(vk_hist_t *h, uint64_t value);

// vk_hist_merge adds every value of `src` into `dst`. Returns 0, or
// VK_EINVAL if the two were initialised with different shapes (`dst` is
// then unchanged).
int vk_hist_merge(vk_hist_t *dst, const vk_hist_t *src);

// vk_hist_percentile returns the value at percentile `p` (0..100): the
// highest value equivalent (same bucket) to the smallest recorded value v
// such that at least p% of values are <= v, limited to the exact max.
// p <= 0 gives the exact min, p >= 100 the exact max. Returns 0 for an empty
// histogram.
uint64_t vk_hist_percentile(const vk_hist_t *h, double p);

// vk_hist_mean returns the mean of the recorded values (0 if empty).
double vk_hist_mean(const vk_hist_t *h);

// vk_hist_bucket_lowest and vk_hist_bucket_highest return the range of
// values that share `value`'s bucket: the histogram's precision at `value`.
uint64_t vk_hist_bucket_lowest(const vk_hist_t *h, uint64_t value);
uint64_t vk_hist_bucket_highest(const vk_hist_t *h, uint64_t value);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_HISTOGRAM_H
