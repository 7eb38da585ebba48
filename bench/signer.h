// signer.h: requests made ahead of use by their own threads.
//
// Some requests cannot be built before the run: a verification needs a
// fresh challenge signed by the phone within 30 s of the server's clock, a
// session call a new counter. A signer thread builds them into a ring (one
// producer, the signer; one consumer, the event loop) and keeps it filled
// up to a limit, so the loop never signs and a burst never waits for a
// signature. The thread's CPU is the load generator's: vkey-bench reports
// it with its own (getrusage counts every thread of the process).
#ifndef VK_BENCH_SIGNER_H
#define VK_BENCH_SIGNER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Room for one request: the framed body, then its own metadata value.
#define VK_BENCH_SLOT_DATA 1024

typedef struct vk_bench_slot_s {
  uint64_t made_ns;      // CLOCK_MONOTONIC (uv_hrtime) when it was built
  const char *path;      // method path, static
  const char *hdr_name;  // its metadata's name (static), or NULL
  uint32_t body_len;     // gRPC prefix + message, at data[0]
  uint32_t hdr_len;      // the metadata value, at data[body_len]
  uint64_t tag;          // for the scenario (connect: the vehicle index)
  // 1 + the index of the vehicle whose session the request is in, 0 for
  // none. A car sends its session's calls on its one connection; the run
  // does the same (vehicle i on connection i mod -c), so that a server
  // spreading connections over threads or instances sees what it would.
  uint32_t vehicle;
  int consumed;  // taken out of order (vk_bench_ring_consume); reserve clears
  uint8_t data[VK_BENCH_SLOT_DATA];
} vk_bench_slot_t;

// --- the ring: single producer, single consumer ----------------------------

typedef struct vk_bench_ring_s vk_bench_ring_t;

// vk_bench_ring_new makes a ring of at least `cap` slots (rounded up to a
// power of two, at least 2). Returns 0 or VK_ENOMEM / VK_EINVAL (cap over
// 2^24). Free with vk_bench_ring_free (NULL is a no-op).
int vk_bench_ring_new(vk_bench_ring_t **out, uint32_t cap);
void vk_bench_ring_free(vk_bench_ring_t *r);

// Producer: vk_bench_ring_reserve returns the next free slot, or NULL when
// `limit` (at most the capacity) slots are filled; vk_bench_ring_commit
// publishes it.
vk_bench_slot_t *vk_bench_ring_reserve(vk_bench_ring_t *r, uint32_t limit);
void vk_bench_ring_commit(vk_bench_ring_t *r);

// Consumer: vk_bench_ring_front returns the oldest filled slot or NULL;
// vk_bench_ring_pop releases it (the slot must not be used after).
const vk_bench_slot_t *vk_bench_ring_front(vk_bench_ring_t *r);
void vk_bench_ring_pop(vk_bench_ring_t *r);

// Out of order, for a consumer that sends each vehicle's requests on its
// own connection: vk_bench_ring_at returns slot `i` (an absolute position,
// from vk_bench_ring_tail on) while it is filled, NULL from the first
// unfilled one; vk_bench_ring_consume marks it taken (the slot must not be
// used after) and releases the taken slots at the front.
uint64_t vk_bench_ring_tail(const vk_bench_ring_t *r);
const vk_bench_slot_t *vk_bench_ring_at(const vk_bench_ring_t *r, uint64_t i);
void vk_bench_ring_consume(vk_bench_ring_t *r, uint64_t i);

// Slots filled now (either side may ask), and the capacity.
uint32_t vk_bench_ring_level(const vk_bench_ring_t *r);
uint32_t vk_bench_ring_capacity(const vk_bench_ring_t *r);

// --- signer threads --------------------------------------------------------

// A scenario's builder: fills `slot` with the next request. Returns 0;
// VK_ENOTFOUND when there is nothing more to build (the thread ends
// quietly); any other code ends the thread and is reported.
typedef int (*vk_bench_make_fn)(void *ctx, vk_bench_slot_t *slot);
typedef struct vk_bench_signer_s vk_bench_signer_t;

// How a signer thread works (vk_bench_signer_start).
typedef struct vk_bench_signer_opts_s {
  uint32_t cap;    // ring slots
  uint32_t limit;  // ready requests kept, at most `cap`
  // Requests to build in all, then the thread ends as if make had said
  // VK_ENOTFOUND; 0: no end. A prebuilt run sets it to `limit`: every
  // request is made before the window, none in it.
  uint64_t total;
  // Runs at nice 10: an open loop's signers build seconds ahead and must
  // not preempt the server under test.
  int background;
} vk_bench_signer_opts_t;

// vk_bench_signer_start starts a thread that keeps a ring filled with
// make(ctx, slot) as `opts` says. `ctx` is the thread's alone until
// vk_bench_signer_stop. Returns 0, VK_ENOMEM or VK_EIO.
int vk_bench_signer_start(vk_bench_signer_t **out,
                          const vk_bench_signer_opts_t *opts,
                          vk_bench_make_fn make, void *ctx);

vk_bench_ring_t *vk_bench_signer_ring(vk_bench_signer_t *s);

typedef struct vk_bench_signer_stats_s {
  uint64_t made;  // requests built so far
  double cpu_s;   // the thread's CPU time so far
  int error;      // the make error that ended it, 0 if none
  int finished;   // make said there is nothing more, or `total` is built
} vk_bench_signer_stats_t;
void vk_bench_signer_stats(vk_bench_signer_t *s, vk_bench_signer_stats_t *out);

// vk_bench_signer_stop ends and joins the thread and frees everything.
// NULL is a no-op.
void vk_bench_signer_stop(vk_bench_signer_t *s);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_SIGNER_H
