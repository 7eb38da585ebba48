// keytoken.h: virtual keys as signed tokens (common.proto KeyClaims and
// SignedKey). A SignedKey carries the serialized KeyClaims and an Ed25519
// signature by one of the service's key-signing keys over
//
//   "vkey-key-v1" || 0x00 || claims
//
// so that a vehicle or a phone checks it offline with the public key that
// GetIssuerKeys publishes under the claims' issuer_key_id. This module also
// holds the rules every issued claim set obeys (function sets, validity
// windows, use limits), so ApplyKey, ManageKey and the Authorize flow apply
// the same ones.
//
// Threading: everything here is pure and thread-safe. Signing and verifying
// are CPU-bound: the loop thread uses vk_keytoken_sign_op() inside a
// vk_crypto_job_t; vk_keytoken_sign() and vk_keytoken_verify() are for
// worker threads and tests.
#ifndef VK_KEYTOKEN_H
#define VK_KEYTOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "common.h"
#include "crypto.h"
#include "store.h"
#include "vkey/v1/common.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

// The claims format this module writes and accepts.
#define VK_KEYTOKEN_FORMAT 1u
// The signing context, without its 0x00 terminator.
#define VK_KEYTOKEN_CONTEXT "vkey-key-v1"
// Length of the context including the 0x00 that separates it from claims.
#define VK_KEYTOKEN_CONTEXT_LEN (sizeof(VK_KEYTOKEN_CONTEXT))
// Most functions one key may name.
#define VK_KEYTOKEN_MAX_FUNCTIONS 16u
// The highest VehicleFunction number this build knows.
#define VK_KEYTOKEN_FUNCTION_MAX 11
// A validity window ends at most this far in the future (10 years).
#define VK_KEYTOKEN_MAX_VALIDITY_S ((int64_t)10 * 365 * 86400 + 3 * 86400)
// Most uses a use-limited key may allow.
#define VK_KEYTOKEN_MAX_USES 1000000u
// Upper bound of a serialized KeyClaims this service ever signs or accepts:
// ids, a 65-byte public key, 16 functions and integers stay far below it.
#define VK_KEYTOKEN_MAX_CLAIMS 1024u

// A set of VehicleFunctions as a bit mask: bit n is function n.
typedef uint32_t vk_function_mask_t;

// vk_keytoken_new_key_id writes a fresh key id "<VIN>.<16 lowercase hex>"
// (VK_KEY_ID_LEN characters and a NUL) for the valid `vin`, with 64 random
// bits from BoringSSL's RAND_bytes. Returns 0, or VK_EINVAL for a bad VIN.
int vk_keytoken_new_key_id(char out[VK_KEY_ID_LEN + 1], const char *vin);

// vk_keytoken_type_valid tells whether `type` is a KeyType this build knows
// (not UNSPECIFIED).
bool vk_keytoken_type_valid(int type);

// vk_keytoken_default_functions returns what a key of `type` may do when
// its request names no function: an owner key everything; a valet key
// unlock, lock and drive; every other type unlock and lock.
vk_function_mask_t vk_keytoken_default_functions(Vkey__V1__KeyType type);

// vk_keytoken_check_functions validates a requested function list: at most
// VK_KEYTOKEN_MAX_FUNCTIONS entries, each a known VehicleFunction, none
// twice. On success returns 0 and sets *out_mask (0 for an empty list); on
// failure returns VK_EINVAL and points *out_err to a static message.
int vk_keytoken_check_functions(vk_function_mask_t *out_mask,
                                const char **out_err,
                                const Vkey__V1__VehicleFunction *functions,
                                size_t n);

// vk_keytoken_mask_functions converts a mask to functions in ascending
// order into `out` (room for VK_KEYTOKEN_FUNCTION_MAX entries) and returns
// how many it wrote.
size_t vk_keytoken_mask_functions(Vkey__V1__VehicleFunction *out,
                                  vk_function_mask_t mask);

// vk_keytoken_check_validity validates a window for a key of `type` at
// `now_s`: no negative bound; not_after after not_before when both are set;
// not_after in the future and at most VK_KEYTOKEN_MAX_VALIDITY_S ahead (as
// is not_before); a temporary key must have a not_after. `v` may be NULL
// (open on both sides). Returns 0, or VK_EINVAL with *out_err set.
int vk_keytoken_check_validity(const char **out_err,
                               const Vkey__V1__Validity *v,
                               Vkey__V1__KeyType type, int64_t now_s);

// vk_keytoken_check_max_uses validates a use limit for `type` and sets
// *out_uses to the one to sign: a one-time key allows exactly one use (0 and
// 1 both mean 1); others allow `max_uses` (0: unlimited) up to
// VK_KEYTOKEN_MAX_USES. Returns 0, or VK_EINVAL with *out_err set.
int vk_keytoken_check_max_uses(uint32_t *out_uses, const char **out_err,
                               Vkey__V1__KeyType type, uint32_t max_uses);

// vk_keytoken_message builds the signed message, context || 0x00 ||
// claims, in memory from `alloc` (a call's arena allocator), or from
// malloc() when `alloc` is NULL (the caller then frees it with free()).
// Returns the buffer and sets *out_len, or NULL when out of memory.
uint8_t *vk_keytoken_message(ProtobufCAllocator *alloc, const uint8_t *claims,
                             size_t claims_len, size_t *out_len);

// vk_keytoken_sign_op prepares `op` to sign `msg` (from vk_keytoken_message)
// with `key` on the worker pool: the signature lands in op->out_sig and
// op->ok tells success. `key` and `msg` must stay valid until the job is done.
void vk_keytoken_sign_op(vk_crypto_op_t *op, const vk_ed25519_key_t *key,
                         const uint8_t *msg, size_t msg_len);

// vk_keytoken_sign signs `claims` with `key` synchronously (worker threads
// and tests). Returns 0, VK_EINVAL for claims over VK_KEYTOKEN_MAX_CLAIMS,
// VK_ENOMEM.
int vk_keytoken_sign(uint8_t out_sig[64], const vk_ed25519_key_t *key,
                     const uint8_t *claims, size_t claims_len);

// vk_keytoken_verify checks a SignedKey offline, as a vehicle does, against
// the issuer key `issuer_key_id` / `issuer_public`. Returns:
//   0             the signature verifies, the claims parse, their format is
//                 VK_KEYTOKEN_FORMAT and they name `issuer_key_id`;
//   VK_EINVAL     malformed: sizes, claims that do not parse, another format;
//   VK_ENOTFOUND  the claims name another issuer key (look that one up);
//   VK_EPROTO     the signature does not verify.
// Synchronous: for worker threads and tests.
int vk_keytoken_verify(const uint8_t *claims, size_t claims_len,
                       const uint8_t *sig, size_t sig_len,
                       const char *issuer_key_id,
                       const uint8_t issuer_public[32]);

#ifdef __cplusplus
}
#endif

#endif  // VK_KEYTOKEN_H
