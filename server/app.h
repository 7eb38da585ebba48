// app.h: what vkey's services share: the loop, the worker pool, Redis, the
// service's signing key and the identity issuers it trusts. One per vkeyd,
// owned by main.c; services get it as their vk_service_t ctx.
#ifndef VK_APP_H
#define VK_APP_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "crypto.h"
#include "grpc.h"
#include "redis.h"
#include "worker.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VK_MAX_TRUSTED_ISSUERS 8

typedef struct vk_token_cache_s vk_token_cache_t;
typedef struct vk_hub_s vk_hub_t;
typedef struct vk_sessions_s vk_sessions_t;
typedef struct vk_verify_cache_s vk_verify_cache_t;
typedef struct vk_ratelimit_s vk_ratelimit_t;

typedef struct vk_app_s {
  uv_loop_t *loop;
  vk_worker_pool_t *workers;
  vk_redis_t *redis;
  // Signs virtual keys. Its public key is published in Redis under
  // VK_REDIS_ISSUERS so any instance (and vehicles) can check old keys.
  vk_ed25519_key_t signing_key;
  // Identity issuers whose user and operator tokens we accept.
  uint8_t trusted_issuers[VK_MAX_TRUSTED_ISSUERS][32];
  char trusted_issuer_ids[VK_MAX_TRUSTED_ISSUERS][17];
  size_t n_trusted_issuers;
  vk_token_cache_t *token_cache;
  vk_hub_t *hub;            // vehicles with an open channel on this instance
  vk_sessions_t *sessions;  // vehicle sessions (session.c)
  vk_verify_cache_t *verify_cache;  // token signatures, key status (verify)
  vk_ratelimit_t *vehicle_limit;    // verifications per vehicle
  vk_ratelimit_t *caller_limit;     // verifications per caller
  // The services over this app, each with ctx == this app: one set per
  // event loop, so nothing a call reaches is shared between loops.
  vk_service_t registry_service;
  vk_service_t keys_service;
  vk_service_t vehicle_service;
  vk_service_t verify_service;
  vk_service_t authorization_service;
} vk_app_t;

#ifdef __cplusplus
}
#endif

#endif  // VK_APP_H
