// verify_cache.h: the in-process caches in front of Redis on the
// verification hot path:
//  - token signatures: SHA-256(claims || signature) -> verified, until a TTL
//    (4-way set-associative, LRU within a set);
//  - key status: key id -> (status, version), dropped for a whole vehicle as
//    soon as anything is published on its `vk:veh:{VIN}:notify` channel
//    (every write that changes a key publishes there), and trusted only
//    while that feed is subscribed;
//  - issuer public keys: key id -> Ed25519 public key (they never change).
// All are fixed-size: bounded memory, O(1), and a miss costs only a refill
// (the status cache is direct-mapped). Loop thread only.
#ifndef VK_VERIFY_CACHE_H
#define VK_VERIFY_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

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
// vk_verify_cache_free also closes the feed. NULL is a no-op.
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
// vk_verify_cache_stamp returns the stamp to take BEFORE reading a key's
// status from Redis and to hand to `put`: a state read across an
// invalidation of its vehicle, or across a feed outage, is not stored.
uint64_t vk_verify_cache_stamp(const vk_verify_cache_t *c, const char *key_id);
// vk_verify_cache_vehicle_stamp: the same for anything else cached about
// vehicle `vin` (its session): 0 while the feed is not trusted, and a new
// value after every notification about the vehicle. NULL `c`: 0.
uint64_t vk_verify_cache_vehicle_stamp(const vk_verify_cache_t *c,
                                       const char *vin);
void vk_verify_cache_status_put(vk_verify_cache_t *c, const char *key_id,
                                const vk_key_state_t *state, uint64_t stamp);
// Drops every cached status of vehicle `vin`.
void vk_verify_cache_invalidate_vehicle(vk_verify_cache_t *c, const char *vin,
                                        size_t vin_len);
// The feed was confirmed (true) or lost (false): either way every cached
// status is dropped, since notifications may have been missed.
void vk_verify_cache_feed_state(vk_verify_cache_t *c, bool up);

// vk_verify_cache_feed_start pattern-subscribes `vk:veh:*:notify` on a
// connection of its own to `url`, and every VK_FEED_HEARTBEAT_MS publishes a
// heartbeat of its own through `redis`. Redis delivers a subscriber's
// messages in publish order, so once our heartbeat published at time h comes
// back, every invalidation published before h has been applied. Cached
// statuses are used only while the last heartbeat that came back was
// published less than VK_FEED_FRESH_MS ago: a revoke acknowledged anywhere
// is seen here within that bound, or the cache is not used at all.
// Returns 0, VK_EINVAL (bad url), VK_ENOMEM.
#define VK_FEED_HEARTBEAT_MS 25
#define VK_FEED_FRESH_MS 100
int vk_verify_cache_feed_start(vk_verify_cache_t *c, uv_loop_t *loop,
                               vk_redis_t *redis, const char *url);

// vk_verify_cache_feed_heard records that our heartbeat published at
// `published_ms` (vk_now_ms) came back on the feed: the cache is trusted
// until published_ms + VK_FEED_FRESH_MS.
void vk_verify_cache_feed_heard(vk_verify_cache_t *c, uint64_t published_ms);

// Issuer public keys (the service's key-signing keys).
const uint8_t *vk_verify_cache_issuer(const vk_verify_cache_t *c,
                                      const char *key_id);
void vk_verify_cache_issuer_put(vk_verify_cache_t *c, const char *key_id,
                                const uint8_t public_key[32]);

#ifdef __cplusplus
}
#endif

#endif  // VK_VERIFY_CACHE_H
