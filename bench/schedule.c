// schedule.c: intended send times from the request index. The product k*1e9
// is computed in long double (64-bit mantissa on x86-64, 53 bits elsewhere)
// so that even after 10^12 requests the time is exact to the nanosecond on
// x86-64, and never accumulates error anywhere.
#include "schedule.h"

#include <math.h>

#include "common.h"

int vk_sched_init(vk_sched_t *s, uint64_t start_ns, double rate,
                  uint64_t limit) {
  if (!isfinite(rate) || rate <= 0) {
    return VK_EINVAL;
  }
  s->start_ns = start_ns;
  s->rate = rate;
  s->next = 0;
  s->limit = limit;
  return VK_OK;
}

uint64_t vk_sched_intended(const vk_sched_t *s, uint64_t k) {
  long double offset = (long double)k * 1e9L / (long double)s->rate;
  if (offset >= 1.8e19L) {  // beyond uint64_t: never due
    return UINT64_MAX;
  }
  return s->start_ns + (uint64_t)offset;
}

int vk_sched_take(vk_sched_t *s, uint64_t *out_intended, uint64_t now_ns) {
  if (s->next >= s->limit) {
    return 0;
  }
  uint64_t t = vk_sched_intended(s, s->next);
  if (t > now_ns) {
    return 0;
  }
  *out_intended = t;
  s->next++;
  return 1;
}

uint64_t vk_sched_next_due(const vk_sched_t *s) {
  if (s->next >= s->limit) {
    return UINT64_MAX;
  }
  return vk_sched_intended(s, s->next);
}

uint64_t vk_sched_overdue(const vk_sched_t *s, uint64_t now_ns) {
  if (now_ns < s->start_ns || s->next >= s->limit) {
    return 0;
  }
  // Requests 0..n-1 are due, where n is the first k with intended(k) > now.
  // Estimate n from the rate, then correct for rounding.
  long double est =
      (long double)(now_ns - s->start_ns) * (long double)s->rate / 1e9L;
  uint64_t n = est >= 1.8e19L ? UINT64_MAX - 1 : (uint64_t)est + 1;
  while (n > 0 && vk_sched_intended(s, n - 1) > now_ns) {
    n--;
  }
  while (n < UINT64_MAX && vk_sched_intended(s, n) <= now_ns) {
    n++;
  }
  if (n > s->limit) {
    n = s->limit;
  }
  return n > s->next ? n - s->next : 0;
}
