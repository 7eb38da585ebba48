// session.h: vehicle sessions (docs/SESSIONS.md): opening one with X25519
// key agreement, and authenticating session calls with an HMAC, a counter
// window over counters leased from Redis (counter_lease.h), and an expiry.
// Sessions live in Redis so any instance serves any vehicle, with a bounded
// in-process cache in front.
#ifndef VK_SESSION_H
#define VK_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "grpc.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VK_SESSION_TTL_MS (3600 * 1000)

// vk_sessions_new makes the session state of `app` (the cache and the key
// that wraps session keys in Redis, derived from app->signing_key).
int vk_sessions_new(vk_sessions_t **out, vk_app_t *app, size_t slots);
void vk_sessions_free(vk_sessions_t *s);

#define VK_SESSION_EPOCH_LEN 16

// An accepted session call: its session's epoch and its counter. No other
// call of any instance is ever accepted with the same pair (counters are
// leased, docs/SESSIONS.md), so a value bound to the pair is used once.
typedef struct {
  const uint8_t *epoch;  // VK_SESSION_EPOCH_LEN bytes, in the call's arena
  uint64_t counter;
} vk_session_call_t;

// Called when vk_session_auth finished: `accepted` is NULL when the call was
// refused and finished with a status; otherwise the call is live.
typedef void (*vk_session_done_fn)(vk_call_t *call,
                                   const vk_session_call_t *accepted,
                                   void *arg);

// vk_session_open runs OpenSession's crypto on the worker pool, stores the
// session and sends the OpenSessionResponse, then finishes the call. The
// caller has authenticated the vehicle already. `vehicle_public` is 32 bytes.
void vk_session_open(vk_app_t *app, vk_call_t *call, const char *vin,
                     const uint8_t vehicle_public[32]);

// vk_session_auth authenticates a session call: `x-vkey-session-bin` over
// the request message's bytes (the method sets keep_request_bytes). On
// success `done` runs with the accepted call; otherwise the call is
// finished with UNAUTHENTICATED (with fresh session info in the trailers
// where the vehicle can resynchronise) or UNAVAILABLE, and `done` runs with
// NULL.
void vk_session_auth(vk_app_t *app, vk_call_t *call, const char *vin,
                     vk_session_done_fn done, void *arg);

// vk_session_has_auth tells whether the call carries session metadata.
bool vk_session_has_auth(vk_call_t *call);

#ifdef __cplusplus
}
#endif

#endif  // VK_SESSION_H
