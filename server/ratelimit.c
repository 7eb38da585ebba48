// ratelimit.c: see ratelimit.h.
#include "ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define KEY_MAX 64

typedef struct {
  char key[KEY_MAX + 1];
  double tokens;
  uint64_t updated_ms;
} bucket_t;

struct vk_ratelimit_s {
  // vkeyd's event loops share one limiter, so that a limit is the
  // instance's whichever loop a call lands on. Taking a token is a few
  // loads and stores: the lock is held for nanoseconds.
  pthread_mutex_t lock;
  double rate;  // tokens per ms
  double burst;
  bucket_t *slots;
  size_t n;
};

int vk_ratelimit_new(vk_ratelimit_t **out, double rate, double burst,
                     size_t slots) {
  vk_ratelimit_t *r = calloc(1, sizeof(*r));
  if (r == NULL || slots == 0) {
    free(r);
    return VK_ENOMEM;
  }
  r->slots = calloc(slots, sizeof(*r->slots));
  if (r->slots == NULL || pthread_mutex_init(&r->lock, NULL) != 0) {
    free(r->slots);
    free(r);
    return VK_ENOMEM;
  }
  r->rate = rate / 1000.0;
  r->burst = burst > 1 ? burst : 1;
  r->n = slots;
  *out = r;
  return VK_OK;
}

void vk_ratelimit_free(vk_ratelimit_t *r) {
  if (r != NULL) {
    pthread_mutex_destroy(&r->lock);
    free(r->slots);
    free(r);
  }
}

static size_t slot_of(const vk_ratelimit_t *r, const char *key) {
  return (size_t)(vk_table_hash(key, strlen(key)) % r->n);
}

static bool take_locked(const vk_ratelimit_t *r, bucket_t *b, const char *key,
                        double n, uint64_t now_ms, uint64_t *out_retry_ms) {
  if (strncmp(b->key, key, KEY_MAX) != 0) {
    strncpy(b->key, key, KEY_MAX);
    b->key[KEY_MAX] = '\0';
    b->tokens = r->burst;
    b->updated_ms = now_ms;
  }
  // Each loop has its own clock, a millisecond or so apart: time that
  // runs backwards earns nothing and does not rewind the bucket.
  if (now_ms > b->updated_ms) {
    double elapsed = (double)(now_ms - b->updated_ms);
    b->tokens = fmin(r->burst, b->tokens + elapsed * r->rate);
    b->updated_ms = now_ms;
  }
  if (b->tokens >= n) {
    b->tokens -= n;
    return true;
  }
  *out_retry_ms = (uint64_t)ceil((n - b->tokens) / r->rate);
  return false;
}

bool vk_ratelimit_take(vk_ratelimit_t *r, const char *key, double n,
                       uint64_t now_ms, uint64_t *out_retry_ms) {
  if (r == NULL || r->rate <= 0) {
    return true;
  }
  size_t slot = slot_of(r, key);
  pthread_mutex_lock(&r->lock);
  bool admitted = take_locked(r, &r->slots[slot], key, n, now_ms, out_retry_ms);
  pthread_mutex_unlock(&r->lock);
  return admitted;
}
