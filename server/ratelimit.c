// ratelimit.c: see ratelimit.h.
#include "ratelimit.h"

#include <math.h>
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
  if (r->slots == NULL) {
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
    free(r->slots);
    free(r);
  }
}

static size_t slot_of(const vk_ratelimit_t *r, const char *key) {
  return (size_t)(vk_table_hash(key, strlen(key)) % r->n);
}

bool vk_ratelimit_take(vk_ratelimit_t *r, const char *key, double n,
                       uint64_t now_ms, uint64_t *out_retry_ms) {
  if (r == NULL || r->rate <= 0) {
    return true;
  }
  bucket_t *b = &r->slots[slot_of(r, key)];
  if (strncmp(b->key, key, KEY_MAX) != 0) {
    strncpy(b->key, key, KEY_MAX);
    b->key[KEY_MAX] = '\0';
    b->tokens = r->burst;
    b->updated_ms = now_ms;
  }
  double elapsed =
      now_ms > b->updated_ms ? (double)(now_ms - b->updated_ms) : 0.0;
  b->tokens = fmin(r->burst, b->tokens + elapsed * r->rate);
  b->updated_ms = now_ms;
  if (b->tokens >= n) {
    b->tokens -= n;
    return true;
  }
  *out_retry_ms = (uint64_t)ceil((n - b->tokens) / r->rate);
  return false;
}
