// verify_cache.c: see verify_cache.h. A key status entry is valid only if
// it was filled at the current generation or later invalidations did not
// touch it: every invalidation clears its slot, and a fill carries the
// generation seen before its Redis read, so a reply that raced with an
// invalidation (or a feed outage) is dropped instead of cached.
#include "verify_cache.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#include "common.h"

#define MAX_ISSUERS 16

typedef struct {
  uint8_t digest[32];
  int64_t expires_ms;
} token_entry_t;

typedef struct {
  char key_id[VK_KEY_ID_LEN + 1];
  vk_key_state_t state;
  bool valid;
} status_entry_t;

struct vk_verify_cache_s {
  token_entry_t *tokens;
  size_t n_tokens;
  status_entry_t *status;
  size_t n_status;
  uint64_t generation;
  uint64_t last_invalidation_gen;  // generation of the newest invalidation
  bool feed_up;
  char issuer_ids[MAX_ISSUERS][17];
  uint8_t issuer_keys[MAX_ISSUERS][32];
  size_t n_issuers;
};

int vk_verify_cache_new(vk_verify_cache_t **out, size_t token_slots,
                        size_t status_slots) {
  vk_verify_cache_t *c = calloc(1, sizeof(*c));
  if (c == NULL || token_slots == 0 || status_slots == 0) {
    free(c);
    return VK_ENOMEM;
  }
  c->tokens = calloc(token_slots, sizeof(*c->tokens));
  c->status = calloc(status_slots, sizeof(*c->status));
  if (c->tokens == NULL || c->status == NULL) {
    vk_verify_cache_free(c);
    return VK_ENOMEM;
  }
  c->n_tokens = token_slots;
  c->n_status = status_slots;
  c->generation = 1;
  *out = c;
  return VK_OK;
}

void vk_verify_cache_free(vk_verify_cache_t *c) {
  if (c != NULL) {
    free(c->tokens);
    free(c->status);
    free(c);
  }
}

static uint64_t hash_bytes(const void *p, size_t len) {
  uint8_t d[SHA256_DIGEST_LENGTH];
  SHA256(p, len, d);
  uint64_t h;
  memcpy(&h, d, sizeof(h));
  return h;
}

static token_entry_t *token_slot(vk_verify_cache_t *c, const uint8_t d[32]) {
  uint64_t h;
  memcpy(&h, d, sizeof(h));  // already a digest: no need to hash again
  return &c->tokens[h % c->n_tokens];
}

bool vk_verify_cache_token_ok(vk_verify_cache_t *c, const uint8_t digest[32],
                              int64_t now_ms) {
  token_entry_t *e = token_slot(c, digest);
  return e->expires_ms > now_ms && CRYPTO_memcmp(e->digest, digest, 32) == 0;
}

void vk_verify_cache_token_put(vk_verify_cache_t *c, const uint8_t digest[32],
                               int64_t now_ms) {
  token_entry_t *e = token_slot(c, digest);
  memcpy(e->digest, digest, 32);
  e->expires_ms = now_ms + VK_TOKEN_SIG_TTL_MS;
}

static status_entry_t *status_slot(vk_verify_cache_t *c, const char *key_id) {
  return &c->status[hash_bytes(key_id, strlen(key_id)) % c->n_status];
}

bool vk_verify_cache_status_get(vk_verify_cache_t *c, const char *key_id,
                                vk_key_state_t *out) {
  if (!c->feed_up) {
    return false;
  }
  status_entry_t *e = status_slot(c, key_id);
  if (!e->valid || strcmp(e->key_id, key_id) != 0) {
    return false;
  }
  *out = e->state;
  return true;
}

void vk_verify_cache_status_put(vk_verify_cache_t *c, const char *key_id,
                                const vk_key_state_t *state,
                                uint64_t feed_gen) {
  // Any invalidation or feed change since the read was sent may concern
  // this key: then the value read is not known to be current.
  if (!c->feed_up || feed_gen < c->last_invalidation_gen ||
      strlen(key_id) > VK_KEY_ID_LEN) {
    return;
  }
  status_entry_t *e = status_slot(c, key_id);
  strcpy(e->key_id, key_id);
  e->state = *state;
  e->valid = true;
}

uint64_t vk_verify_cache_generation(const vk_verify_cache_t *c) {
  return c->generation;
}

void vk_verify_cache_invalidate(vk_verify_cache_t *c, const char *key_id) {
  c->last_invalidation_gen = ++c->generation;
  status_entry_t *e = status_slot(c, key_id);
  if (strcmp(e->key_id, key_id) == 0) {
    e->valid = false;
  }
}

void vk_verify_cache_feed_state(vk_verify_cache_t *c, bool up) {
  c->feed_up = up;
  c->last_invalidation_gen = ++c->generation;
  for (size_t i = 0; i < c->n_status; i++) {
    c->status[i].valid = false;
  }
}

const uint8_t *vk_verify_cache_issuer(const vk_verify_cache_t *c,
                                      const char *key_id) {
  for (size_t i = 0; i < c->n_issuers; i++) {
    if (strcmp(c->issuer_ids[i], key_id) == 0) {
      return c->issuer_keys[i];
    }
  }
  return NULL;
}

void vk_verify_cache_issuer_put(vk_verify_cache_t *c, const char *key_id,
                                const uint8_t public_key[32]) {
  if (strlen(key_id) != 16 || vk_verify_cache_issuer(c, key_id) != NULL) {
    return;
  }
  // Keys rotate rarely; when the table is full the oldest goes.
  if (c->n_issuers == MAX_ISSUERS) {
    memmove(c->issuer_ids[0], c->issuer_ids[1],
            (MAX_ISSUERS - 1) * sizeof(c->issuer_ids[0]));
    memmove(c->issuer_keys[0], c->issuer_keys[1],
            (MAX_ISSUERS - 1) * sizeof(c->issuer_keys[0]));
    c->n_issuers--;
  }
  size_t i = c->n_issuers++;
  memcpy(c->issuer_ids[i], key_id, 17);
  memcpy(c->issuer_keys[i], public_key, 32);
}
