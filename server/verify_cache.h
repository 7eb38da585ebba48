// verify_cache.h: the in-process caches in front of Redis on the
// verification hot path:
//  - token signatures: SHA-256(claims || signature) -> verified, until a TTL;
//  - key status: key id -> (status, version), invalidated for one key as
//    soon as Redis reports a write to that key's hash (keyspace
//    notifications), and trusted only while that feed is connected;
//  - issuer public keys: key id -> Ed25519 public key (they never change).
// All are fixed-size and direct-mapped: bounded memory, O(1), and a
// collision costs only a refill. Loop thread only.
#ifndef VK_VERIFY_CACHE_H
#define VK_VERIFY_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VK_TOKEN_SIG_TTL_MS (3600 * 1000)

typedef struct {
  int status;  // KeyStatus; 0: no such key
  uint64_t version;
} vk_key_state_t;

// vk_verify_cache_new sizes the caches (entries each).
int vk_verify_cache_new(vk_verify_cache_t **out, size_t token_slots,
                        size_t status_slots);
void vk_verify_cache_free(vk_verify_cache_t *c);

// Token signatures already verified.
bool vk_verify_cache_token_ok(vk_verify_cache_t *c, const uint8_t digest[32],
                              int64_t now_ms);
void vk_verify_cache_token_put(vk_verify_cache_t *c, const uint8_t digest[32],
                               int64_t now_ms);

// Key status. `get` returns false on a miss, and always while the
// invalidation feed is down (fail closed: the caller re-reads Redis).
bool vk_verify_cache_status_get(vk_verify_cache_t *c, const char *key_id,
                                vk_key_state_t *out);
// `put` records a state read from Redis. `feed_gen` is the feed generation
// read BEFORE the Redis read was sent, so a state read across a feed outage
// or an invalidation is never stored as fresh.
void vk_verify_cache_status_put(vk_verify_cache_t *c, const char *key_id,
                                const vk_key_state_t *state, uint64_t feed_gen);
// The generation to pass to `put`; bumps on every invalidation of any key
// and on every change of the feed's state.
uint64_t vk_verify_cache_generation(const vk_verify_cache_t *c);
// Drops the cached status of `key_id`.
void vk_verify_cache_invalidate(vk_verify_cache_t *c, const char *key_id);
// The feed connected (true) or was lost (false): either way every cached
// status is dropped, since invalidations may have been missed.
void vk_verify_cache_feed_state(vk_verify_cache_t *c, bool up);

// Issuer public keys (the service's key-signing keys).
const uint8_t *vk_verify_cache_issuer(const vk_verify_cache_t *c,
                                      const char *key_id);
void vk_verify_cache_issuer_put(vk_verify_cache_t *c, const char *key_id,
                                const uint8_t public_key[32]);

#ifdef __cplusplus
}
#endif

#endif  // VK_VERIFY_CACHE_H
