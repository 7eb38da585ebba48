// signer.c: see signer.h. The ring is the classic Lamport queue: the
// producer owns `head`, the consumer `tail`; each publishes its index with
// a release store and reads the other's with an acquire load, so a slot's
// bytes are visible before its index is.
#include "signer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

struct vk_bench_ring_s {
  vk_bench_slot_t *slots;
  uint32_t mask;
  // Apart, so the two threads do not share a cache line.
  _Alignas(64) _Atomic uint64_t head;  // next slot to fill
  _Alignas(64) _Atomic uint64_t tail;  // next slot to consume
};

int vk_bench_ring_new(vk_bench_ring_t **out, uint32_t cap) {
  if (cap > (1u << 24)) {
    return VK_EINVAL;
  }
  uint32_t n = 2;
  while (n < cap) {
    n *= 2;
  }
  vk_bench_ring_t *r = aligned_alloc(64, sizeof(*r));
  if (r == NULL) {
    return VK_ENOMEM;
  }
  memset(r, 0, sizeof(*r));
  r->slots = calloc(n, sizeof(*r->slots));
  if (r->slots == NULL) {
    free(r);
    return VK_ENOMEM;
  }
  r->mask = n - 1;
  atomic_init(&r->head, 0);
  atomic_init(&r->tail, 0);
  *out = r;
  return VK_OK;
}

void vk_bench_ring_free(vk_bench_ring_t *r) {
  if (r != NULL) {
    free(r->slots);
    free(r);
  }
}

vk_bench_slot_t *vk_bench_ring_reserve(vk_bench_ring_t *r, uint32_t limit) {
  uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
  uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
  if (limit > r->mask + 1) {
    limit = r->mask + 1;
  }
  if (head - tail >= limit) {
    return NULL;
  }
  vk_bench_slot_t *slot = &r->slots[head & r->mask];
  slot->consumed = 0;
  return slot;
}

void vk_bench_ring_commit(vk_bench_ring_t *r) {
  uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
  atomic_store_explicit(&r->head, head + 1, memory_order_release);
}

const vk_bench_slot_t *vk_bench_ring_front(vk_bench_ring_t *r) {
  uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
  uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
  return head == tail ? NULL : &r->slots[tail & r->mask];
}

void vk_bench_ring_pop(vk_bench_ring_t *r) {
  uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
  atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
}

uint64_t vk_bench_ring_tail(const vk_bench_ring_t *r) {
  return atomic_load_explicit(&r->tail, memory_order_relaxed);
}

const vk_bench_slot_t *vk_bench_ring_at(const vk_bench_ring_t *r, uint64_t i) {
  uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
  uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
  return i < tail || i >= head ? NULL : &r->slots[i & r->mask];
}

void vk_bench_ring_consume(vk_bench_ring_t *r, uint64_t i) {
  uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
  uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
  if (i < tail || i >= head) {
    return;
  }
  r->slots[i & r->mask].consumed = 1;
  while (tail < head && r->slots[tail & r->mask].consumed) {
    tail++;
  }
  atomic_store_explicit(&r->tail, tail, memory_order_release);
}

uint32_t vk_bench_ring_level(const vk_bench_ring_t *r) {
  uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
  uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
  return (uint32_t)(head - tail);
}

uint32_t vk_bench_ring_capacity(const vk_bench_ring_t *r) {
  return r->mask + 1;
}

// --- the thread ------------------------------------------------------------

struct vk_bench_signer_s {
  vk_bench_ring_t *ring;
  uint32_t limit;
  uint64_t total;  // 0: no end
  int background;  // runs at nice 10
  vk_bench_make_fn make;
  void *ctx;
  pthread_t thread;
  clockid_t cpu_clock;
  int has_clock;
  _Atomic int stop;
  _Atomic int error;
  _Atomic int finished;
  _Atomic uint64_t made;
  _Atomic uint64_t final_cpu_ns;  // written as the thread ends
  _Atomic int exited;
};

static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *signer_main(void *arg) {
  vk_bench_signer_t *s = arg;
  if (s->background) {
    // Linux's nice is per thread: this one alone.
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
  }
  // The ring is full most of the time: nap until the consumer has made
  // room for a batch. 1 ms at 20k requests/s is 20 requests, far inside
  // the ring's limit; a shorter nap only wakes a core, and may preempt the
  // server, for nothing.
  const struct timespec nap = {0, 1000 * 1000};
  uint64_t made = 0;
  while (!atomic_load_explicit(&s->stop, memory_order_relaxed)) {
    if (s->total != 0 && made == s->total) {
      atomic_store(&s->finished, 1);
      break;
    }
    vk_bench_slot_t *slot = vk_bench_ring_reserve(s->ring, s->limit);
    if (slot == NULL) {
      nanosleep(&nap, NULL);
      continue;
    }
    int rv = s->make(s->ctx, slot);
    if (rv == VK_ENOTFOUND) {
      atomic_store(&s->finished, 1);
      break;
    }
    if (rv != VK_OK) {
      atomic_store(&s->error, rv);
      break;
    }
    vk_bench_ring_commit(s->ring);
    atomic_fetch_add_explicit(&s->made, 1, memory_order_relaxed);
    made++;
  }
  atomic_store(&s->final_cpu_ns, thread_cpu_ns());
  atomic_store(&s->exited, 1);
  return NULL;
}

int vk_bench_signer_start(vk_bench_signer_t **out,
                          const vk_bench_signer_opts_t *opts,
                          vk_bench_make_fn make, void *ctx) {
  vk_bench_signer_t *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    return VK_ENOMEM;
  }
  int rv = vk_bench_ring_new(&s->ring, opts->cap);
  if (rv != VK_OK) {
    free(s);
    return rv;
  }
  s->limit = opts->limit;
  s->total = opts->total;
  s->background = opts->background;
  s->make = make;
  s->ctx = ctx;
  if (pthread_create(&s->thread, NULL, signer_main, s) != 0) {
    vk_bench_ring_free(s->ring);
    free(s);
    return VK_EIO;
  }
  s->has_clock = pthread_getcpuclockid(s->thread, &s->cpu_clock) == 0;
  *out = s;
  return VK_OK;
}

vk_bench_ring_t *vk_bench_signer_ring(vk_bench_signer_t *s) {
  return s->ring;
}

void vk_bench_signer_stats(vk_bench_signer_t *s, vk_bench_signer_stats_t *out) {
  // `finished` and `error` first: the thread counts every request before
  // it sets them, so a caller that sees the thread done also sees all it
  // made (read the other way round, a finish between the loads could
  // report fewer).
  out->error = atomic_load(&s->error);
  out->finished = atomic_load(&s->finished);
  out->made = atomic_load(&s->made);
  uint64_t ns = 0;
  struct timespec ts;
  if (!atomic_load(&s->exited) && s->has_clock &&
      clock_gettime(s->cpu_clock, &ts) == 0) {
    ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  } else {
    ns = atomic_load(&s->final_cpu_ns);  // ended: its last reading
  }
  out->cpu_s = (double)ns / 1e9;
}

void vk_bench_signer_stop(vk_bench_signer_t *s) {
  if (s == NULL) {
    return;
  }
  atomic_store(&s->stop, 1);
  pthread_join(s->thread, NULL);
  vk_bench_ring_free(s->ring);
  free(s);
}
