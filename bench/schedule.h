// schedule.h: the open-loop send schedule of vkey-bench.
//
// At a rate of R requests per second, request k (0-based) is intended to be
// sent at start + k/R. Its latency is measured from that intended time, not
// from when it was actually sent, so a server stall that delays sending is
// charged to every request it delayed (no "coordinated omission", as in
// wrk2). Each intended time is computed from k directly, never by adding
// 1/R repeatedly, so the schedule does not drift. After a stall the
// schedule hands out every overdue request, in order, none skipped.
#ifndef VK_BENCH_SCHEDULE_H
#define VK_BENCH_SCHEDULE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_sched_s {
  uint64_t start_ns;  // intended send time of request 0
  double rate;        // requests per second, > 0
  uint64_t next;      // index of the next request to hand out
  uint64_t limit;     // requests to hand out in all; UINT64_MAX: no limit
} vk_sched_t;

// vk_sched_init starts a schedule at `start_ns` (any monotonic clock in
// nanoseconds) for `rate` requests per second, handing out at most `limit`
// requests (UINT64_MAX for no limit). Returns 0, or VK_EINVAL if `rate` is
// not a finite number > 0.
int vk_sched_init(vk_sched_t *s, uint64_t start_ns, double rate,
                  uint64_t limit);

// vk_sched_intended returns the intended send time of request `k`:
// start_ns + k * 1e9 / rate, rounded down to a nanosecond.
uint64_t vk_sched_intended(const vk_sched_t *s, uint64_t k);

// vk_sched_take hands out the next request if it is due at `now_ns`: sets
// `*out_intended` to its intended time, advances and returns 1. Returns 0 if
// the next request is not due yet or the limit is reached. Calling it in a
// loop after a stall returns every overdue request, each exactly once.
int vk_sched_take(vk_sched_t *s, uint64_t *out_intended, uint64_t now_ns);

// vk_sched_next_due returns the intended time of the next request, or
// UINT64_MAX if the limit is reached: when to wake up next.
uint64_t vk_sched_next_due(const vk_sched_t *s);

// vk_sched_overdue returns how many requests are due at `now_ns` and not yet
// handed out: the client's backlog.
uint64_t vk_sched_overdue(const vk_sched_t *s, uint64_t now_ns);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_SCHEDULE_H
