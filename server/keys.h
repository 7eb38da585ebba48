// keys.h: vkey.v1.KeyService (proto/vkey/v1/keys.proto), the phone's API
// for virtual keys: apply for one (seed 000 S210-S240) and manage it
// (S270-S280).
//
//   ApplyKey       a user applies for a key for themselves on a vehicle they
//                  own (user credential; user_id must be the caller). The
//                  user and the vehicle must exist and be active and the
//                  vehicle's key policy must allow the key (max keys per
//                  type, where the per-function keys of one grant from
//                  AuthorizationService count once; grantable functions
//                  for non-owner types). The key
//                  is signed (keytoken.h), stored, and queued in the
//                  vehicle's outbox in one Redis script; request_id makes a
//                  retry return the first result.
//   GetKey         the key's holder, the vehicle's owner or an operator.
//                  Deleted keys are still readable (status DELETED).
//   ListKeys       a vehicle's keys (its owner or an operator) or a user's
//                  (that user or an operator), oldest first, deleted keys
//                  left out, in pages (default 50, at most 500).
//   ManageKey      REVOKE, SUSPEND, RESUME, SET_FUNCTIONS, SET_VALIDITY,
//                  DELETE by the vehicle's owner; REVOKE by an operator;
//                  REVOKE or DELETE of their own key by the holder when the
//                  vehicle's policy has holder_may_revoke_own. REVOKED and
//                  DELETED are final. A change of claims bumps the version
//                  and re-signs. Every change goes to the vehicle's outbox.
//   GetIssuerKeys  the key-signing public keys, without credential.
//
// Refusals of ApplyKey and ManageKey, and every PERMISSION_DENIED, are
// audited (audit.h); successful changes are audited inside their script.
// The key holder learns of a change through GetKey/ListKeys: there is no
// phone push channel.
#ifndef VK_KEYS_H
#define VK_KEYS_H

#include "app.h"
#include "grpc.h"

#ifdef __cplusplus
extern "C" {
#endif

// vk_keys_service returns the service over `app`, for vk_server_add_service.
// It lives as long as `app`. Call it once, on the loop thread, before the
// server starts (it also hashes the service's Lua scripts).
const vk_service_t *vk_keys_service(vk_app_t *app);

#ifdef __cplusplus
}
#endif

#endif
