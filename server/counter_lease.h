// counter_lease.h: the session counter window of one instance, over a lease
// of counters that Redis granted to this instance alone (docs/SESSIONS.md,
// "Counters across instances").
//
// Replay protection across instances needs one authority per counter. A
// Redis script per request would be that authority, at the price of a
// round trip and a script on every session call. Instead each instance
// leases a range of counters, (lo, hi], from the session's `floor` in Redis:
// the script moves the floor past the range, so no other instance can ever
// accept a counter in it. Inside its lease an instance keeps the window in
// process. A vehicle that moves to another instance finds its counters below
// the new lease and is resynchronised once, like after any lost step.
//
// Pure logic, no I/O: session.c asks Redis for leases.
#ifndef VK_COUNTER_LEASE_H
#define VK_COUNTER_LEASE_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Counters this far behind the highest one accepted are refused.
#define VK_COUNTER_WINDOW 32
// A lease covers the counter asked for plus this many after it, at most:
// the first lease of a session covers the next request, and each further
// one doubles, so a busy vehicle asks Redis once per 1024 calls while an
// idle one strands few counters when it moves to another instance.
#define VK_COUNTER_LEASE_MAX 1024
// Counters must stay exact in Redis's Lua numbers (doubles).
#define VK_COUNTER_MAX ((UINT64_C(1) << 52) - 1)

typedef struct {
  uint64_t lo, hi;  // the lease: counters lo < c <= hi; hi == 0: none yet
  uint64_t top;     // the highest counter accepted, or lo
  uint32_t seen;    // bit i: counter top - i was accepted
  uint32_t extra;   // counters beyond the asked one the next lease covers
} vk_counter_lease_t;

typedef enum {
  VK_COUNTER_OK,          // accepted and recorded
  VK_COUNTER_REPLAYED,    // accepted before
  VK_COUNTER_TOO_OLD,     // below the lease, or behind the window
  VK_COUNTER_NEED_LEASE,  // above the lease: ask Redis for one first
} vk_counter_verdict_t;

// vk_counter_take decides on counter `c` and records it when accepted.
vk_counter_verdict_t vk_counter_take(vk_counter_lease_t *l, uint64_t c);

// vk_counter_granted applies the lease (from, to] that Redis granted. A
// lease that starts where ours ends extends it and keeps the window; any
// other replaces it (counters below `from` belong to someone else now).
// Returns false for a lease that starts below ours, which Redis never
// grants: the caller treats the session state as inconsistent.
bool vk_counter_granted(vk_counter_lease_t *l, uint64_t from, uint64_t to);

// vk_counter_next_extra returns how many counters beyond the asked one to
// request with the next lease, and doubles it for the one after.
uint64_t vk_counter_next_extra(vk_counter_lease_t *l);

// vk_counter_resync_point is the counter to give a vehicle that fell out of
// step: its next counter, one above, is inside our lease or right above it.
uint64_t vk_counter_resync_point(const vk_counter_lease_t *l);

#ifdef __cplusplus
}
#endif

#endif  // VK_COUNTER_LEASE_H
