// authorization.h: vkey.v1.AuthorizationService
// (proto/vkey/v1/authorization.proto), authorizing another person with
// function authorization codes (seed 001).
//
//   Authorize    the vehicle's owner (the "first terminal") names functions,
//                a key type (shared, temporary, one-time), the keys'
//                validity and use limit, and optionally the recipient. The
//                functions must be grantable under the vehicle's policy.
//                The holder of an active SHARED key may authorize too, when
//                the policy has sharing_allowed, only functions their keys
//                have, for no longer than their keys last, and only while
//                share_depth (theirs + 1) <= policy max_share_depth. The
//                answer is a code set: a CodeSet signed with the service's
//                key-signing key over "vkey-codeset-v1" || 0x00 || bytes,
//                printable as "vkc1.<base64url>", redeemable once until it
//                expires (24 h, or less: the request and the policy's
//                max_code_set_ttl_seconds).
//   Redeem       the recipient's phone (the "second terminal") presents the
//                code set, its user credential and its public key. The
//                signature is checked on the worker pool, then expiry, the
//                named recipient, the grant's state and the policy again.
//                One key per function is issued (KeyClaims.grant_id set),
//                returned and queued to the vehicle, and the grant marked
//                redeemed, in one Redis script: of concurrent redeems on
//                any number of instances exactly one wins; the others get
//                FAILED_PRECONDITION "code set already redeemed".
//   ListGrants   a vehicle's grants, oldest first, paged: all of them for
//                the owner or an operator, the caller's own for others.
//   CancelGrant  an outstanding code set, by the owner or its author.
//   RevokeGrant  a grant by the owner, its author or an operator: every
//                live key issued from it, and recursively from grants
//                shared on from those keys, is revoked and the vehicle
//                told (one REVOKED outbox event each), in one script.
//
// Grants live in Redis as vk:veh:{VIN}:grant:<grant id> hashes indexed by
// vk:veh:{VIN}:grants (docs/ARCHITECTURE.md). Mutations honour request_id
// like KeyService's; every success is audited inside its script and every
// refusal from C.
#ifndef VK_AUTHORIZATION_H
#define VK_AUTHORIZATION_H

#include "app.h"
#include "grpc.h"

#ifdef __cplusplus
extern "C" {
#endif

// The printable code set's prefix, and the signing context (the 0x00 that
// follows it is part of the signed message).
#define VK_CODESET_PREFIX "vkc1."
#define VK_CODESET_CONTEXT "vkey-codeset-v1"

// vk_authorization_service returns the service over `app`, for
// vk_server_add_service. It lives as long as `app`. Call it once, on the
// loop thread, before the server starts (it hashes the Lua scripts).
const vk_service_t *vk_authorization_service(vk_app_t *app);

#ifdef __cplusplus
}
#endif

#endif  // VK_AUTHORIZATION_H
