// ratelimit.h: token buckets per vehicle and per caller, in process. One
// limiter serves all of vkeyd's event loops (it is thread-safe). Each
// instance enforces its own share: behind a load balancer that spreads a
// vehicle's calls over N instances the fleet-wide limit is N times the
// configured one. Bounded memory: a direct-mapped table where a collision
// hands the slot to the newcomer with a full bucket (a limiter must never
// refuse a caller because of someone else).
#ifndef VK_RATELIMIT_H
#define VK_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_ratelimit_s vk_ratelimit_t;

// vk_ratelimit_new: `rate` tokens per second, bursts of `burst`, `slots`
// buckets. rate 0 disables the limiter (vk_ratelimit_take always admits).
int vk_ratelimit_new(vk_ratelimit_t **out, double rate, double burst,
                     size_t slots);
void vk_ratelimit_free(vk_ratelimit_t *r);

// vk_ratelimit_take takes `n` tokens from `key`'s bucket at time `now_ms`.
// Returns true if admitted; otherwise false and *out_retry_ms says when
// enough tokens will be there.
bool vk_ratelimit_take(vk_ratelimit_t *r, const char *key, double n,
                       uint64_t now_ms, uint64_t *out_retry_ms);

#ifdef __cplusplus
}
#endif

#endif  // VK_RATELIMIT_H
