// identity.h: who is calling. Users and operators present a bearer token
// signed by a trusted identity issuer (identity.proto IdentityClaims);
// vehicles sign a fresh assertion with their registered key
// (VehicleAssertion). Signature checks run on the worker pool; verified
// tokens are cached (bounded, until they expire) so a phone's repeated calls
// cost one verification.
#ifndef VK_IDENTITY_H
#define VK_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "grpc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  VK_ROLE_USER = 1,
  VK_ROLE_OPERATOR = 2,
  VK_ROLE_VEHICLE = 3,
} vk_role_t;

#define VK_SUBJECT_MAX 64

typedef struct vk_identity_s {
  vk_role_t role;
  char subject[VK_SUBJECT_MAX + 1];  // user id, operator name, or VIN
} vk_identity_t;

// Called on the loop thread once the caller is known. The call is live.
typedef void (*vk_auth_done_fn)(vk_call_t *call, const vk_identity_t *who,
                                void *arg);

// vk_token_cache_new / _free: the verified-token cache (`slots` entries).
int vk_token_cache_new(vk_token_cache_t **out, size_t slots);
void vk_token_cache_free(vk_token_cache_t *c);

// vk_auth_bearer authenticates the call's `authorization: Bearer` token and
// requires `role` (VK_ROLE_USER accepts operators too only if
// `allow_operator`). On success `done` runs; on failure the call is
// finished with UNAUTHENTICATED (missing, malformed, badly signed, expired)
// or PERMISSION_DENIED (wrong role) and `done` never runs. The function
// holds its own call reference while it works.
void vk_auth_bearer(vk_app_t *app, vk_call_t *call, vk_role_t role,
                    bool allow_operator, vk_auth_done_fn done, void *arg);

// vk_auth_vehicle authenticates a vehicle from `x-vkey-vehicle-bin`: the
// assertion names `vin` (else PERMISSION_DENIED), its timestamp is within
// 60 s, the vehicle is registered and active, the signature over the
// call's method verifies with its key, and the nonce is new (Redis SET NX).
// Failures finish the call as vk_auth_bearer's do; Redis down: UNAVAILABLE.
// The flow's state (the decoded assertion, the signed message, the crypto
// job) is on the heap and freed before `done` runs, so a long-lived call's
// arena keeps none of it; `who` is valid only during `done`.
void vk_auth_vehicle(vk_app_t *app, vk_call_t *call, const char *vin,
                     vk_auth_done_fn done, void *arg);

#ifdef __cplusplus
}
#endif

#endif  // VK_IDENTITY_H
