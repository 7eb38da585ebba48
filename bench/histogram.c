// histogram.c: log-linear buckets. For a value v >= 2^(sub_bits+1), let
// e = msb(v) - sub_bits: the top sub_bits+1 bits of v, (v >> e), lie in
// [2^sub_bits, 2^(sub_bits+1)) and pick the bucket inside that power of two.
// Buckets are numbered so that the index grows with the value, which makes
// percentiles one cumulative scan.
#include "histogram.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

static unsigned msb64(uint64_t v) {
  return 63u - (unsigned)__builtin_clzll(v);
}

static size_t bucket_index(const vk_hist_t *h, uint64_t v) {
  const uint64_t sub = UINT64_C(1) << h->sub_bits;
  if (v < 2 * sub) {
    return (size_t)v;
  }
  unsigned e = msb64(v) - h->sub_bits;  // >= 1 here
  return (size_t)(2 * sub + (e - 1) * sub + ((v >> e) - sub));
}

static uint64_t index_lowest(const vk_hist_t *h, size_t idx) {
  const uint64_t sub = UINT64_C(1) << h->sub_bits;
  if (idx < 2 * sub) {
    return idx;
  }
  uint64_t k = idx - 2 * sub;
  unsigned e = (unsigned)(k / sub) + 1;
  return (k % sub + sub) << e;
}

static uint64_t index_highest(const vk_hist_t *h, size_t idx) {
  const uint64_t sub = UINT64_C(1) << h->sub_bits;
  if (idx < 2 * sub) {
    return idx;
  }
  unsigned e = (unsigned)((idx - 2 * sub) / sub) + 1;
  return index_lowest(h, idx) + (UINT64_C(1) << e) - 1;
}

int vk_hist_init(vk_hist_t *h, uint64_t highest, unsigned sub_bits) {
  memset(h, 0, sizeof(*h));
  h->min = UINT64_MAX;
  // 16 sub-bits is 0.002% precision: more would only waste memory, and
  // the shift arithmetic needs highest's msb above sub_bits to stay small.
  if (sub_bits < 1 || sub_bits > 16 || highest < 1 ||
      highest > (UINT64_C(1) << 62)) {
    return VK_EINVAL;
  }
  h->highest = highest;
  h->sub_bits = sub_bits;
  h->nbuckets = bucket_index(h, highest) + 1;
  h->counts = calloc(h->nbuckets, sizeof(*h->counts));
  if (h->counts == NULL) {
    memset(h, 0, sizeof(*h));
    return VK_ENOMEM;
  }
  return VK_OK;
}

void vk_hist_cleanup(vk_hist_t *h) {
  free(h->counts);
  memset(h, 0, sizeof(*h));
}

void vk_hist_reset(vk_hist_t *h) {
  if (h->counts != NULL) {
    memset(h->counts, 0, h->nbuckets * sizeof(*h->counts));
  }
  h->total = 0;
  h->clamped = 0;
  h->min = UINT64_MAX;
  h->max = 0;
  h->sum = 0;
}

void vk_hist_record(vk_hist_t *h, uint64_t value) {
  if (value > h->highest) {
    value = h->highest;
    h->clamped++;
  }
  h->counts[bucket_index(h, value)]++;
  h->total++;
  h->sum += (double)value;
  if (value < h->min) {
    h->min = value;
  }
  if (value > h->max) {
    h->max = value;
  }
}

int vk_hist_merge(vk_hist_t *dst, const vk_hist_t *src) {
  if (dst->highest != src->highest || dst->sub_bits != src->sub_bits) {
    return VK_EINVAL;
  }
  for (size_t i = 0; i < src->nbuckets; i++) {
    dst->counts[i] += src->counts[i];
  }
  dst->total += src->total;
  dst->clamped += src->clamped;
  dst->sum += src->sum;
  if (src->min < dst->min) {
    dst->min = src->min;
  }
  if (src->max > dst->max) {
    dst->max = src->max;
  }
  return VK_OK;
}

uint64_t vk_hist_percentile(const vk_hist_t *h, double p) {
  if (h->total == 0) {
    return 0;
  }
  if (p <= 0) {
    return h->min;
  }
  if (p >= 100) {
    return h->max;
  }
  // The rank of the wanted value, 1-based: ceil(p% of total), at least 1.
  double exact = p / 100.0 * (double)h->total;
  uint64_t rank = (uint64_t)exact;
  if ((double)rank < exact) {
    rank++;
  }
  if (rank < 1) {
    rank = 1;
  }
  uint64_t seen = 0;
  for (size_t i = 0; i < h->nbuckets; i++) {
    seen += h->counts[i];
    if (seen >= rank) {
      uint64_t v = index_highest(h, i);
      return v > h->max ? h->max : v;
    }
  }
  return h->max;  // not reached: the counts add up to total
}

double vk_hist_mean(const vk_hist_t *h) {
  return h->total == 0 ? 0.0 : h->sum / (double)h->total;
}

uint64_t vk_hist_bucket_lowest(const vk_hist_t *h, uint64_t value) {
  if (value > h->highest) {
    value = h->highest;
  }
  return index_lowest(h, bucket_index(h, value));
}

uint64_t vk_hist_bucket_highest(const vk_hist_t *h, uint64_t value) {
  if (value > h->highest) {
    value = h->highest;
  }
  return index_highest(h, bucket_index(h, value));
}
