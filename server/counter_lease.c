// counter_lease.c: see counter_lease.h.
#include "counter_lease.h"

vk_counter_verdict_t vk_counter_take(vk_counter_lease_t *l, uint64_t c) {
  if (l->hi == 0 || c > l->hi) {
    return VK_COUNTER_NEED_LEASE;
  }
  if (c <= l->lo) {
    return VK_COUNTER_TOO_OLD;
  }
  if (c > l->top) {
    uint64_t shift = c - l->top;
    l->seen = shift >= VK_COUNTER_WINDOW ? 1u : (l->seen << shift) | 1u;
    l->top = c;
    return VK_COUNTER_OK;
  }
  uint64_t behind = l->top - c;
  if (behind >= VK_COUNTER_WINDOW) {
    return VK_COUNTER_TOO_OLD;
  }
  uint32_t bit = 1u << behind;
  if (l->seen & bit) {
    return VK_COUNTER_REPLAYED;
  }
  l->seen |= bit;
  return VK_COUNTER_OK;
}

bool vk_counter_granted(vk_counter_lease_t *l, uint64_t from, uint64_t to) {
  if (to <= from) {
    return false;
  }
  if (l->hi != 0 && from == l->hi) {
    l->hi = to;  // right after ours: nobody leased in between
    return true;
  }
  if (l->hi != 0 && from < l->hi) {
    return false;
  }
  l->lo = from;
  l->hi = to;
  l->top = from;
  l->seen = 0;
  return true;
}

uint64_t vk_counter_next_extra(vk_counter_lease_t *l) {
  uint64_t extra = l->extra == 0 ? 1 : l->extra;
  l->extra = extra >= VK_COUNTER_LEASE_MAX ? VK_COUNTER_LEASE_MAX
                                           : (uint32_t)(extra * 2);
  return extra;
}

uint64_t vk_counter_resync_point(const vk_counter_lease_t *l) {
  return l->top;  // never below lo
}
