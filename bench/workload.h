// workload.h: the fleet vkey-bench provisions (vehicles, their keys, phone
// keys, sessions) and the builders of the requests its scenarios send.
//
// The request builders are pure functions of their inputs (tests compare
// them with the reference in tests/integration/vkcreds.py); the `make`
// function runs in a signer thread (signer.h) and adds what must be fresh:
// the challenge, the phone's signature, the time, the session counter.
#ifndef VK_BENCH_WORKLOAD_H
#define VK_BENCH_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "creds.h"
#include "scenario.h"
#include "signer.h"

#ifdef __cplusplus
extern "C" {
#endif

// Method paths.
#define VK_BENCH_PATH_VERIFY "/vkey.v1.VerifyService/VerifyKey"
#define VK_BENCH_PATH_CHECK "/vkey.v1.VerifyService/CheckKeyStatus"
#define VK_BENCH_PATH_OPEN_SESSION "/vkey.v1.VerifyService/OpenSession"
#define VK_BENCH_PATH_OPEN_CHANNEL "/vkey.v1.VehicleService/OpenChannel"
#define VK_BENCH_PATH_APPLY "/vkey.v1.KeyService/ApplyKey"
#define VK_BENCH_PATH_AUTHORIZE "/vkey.v1.AuthorizationService/Authorize"
#define VK_BENCH_PATH_REDEEM "/vkey.v1.AuthorizationService/Redeem"

// The share scenario: the owner grants UNLOCK as a SHARED key, valid for a
// day, to one named recipient, who must redeem the code set within
// VK_BENCH_SHARE_TTL_S. One function: the service signs the code set and
// one key, and verifies the code set once (2 signatures, 1 verification
// per operation).
#define VK_BENCH_SHARE_VALIDITY_S (24 * 3600)
#define VK_BENCH_SHARE_TTL_S 600

// The mix of the `mixed` scenario, in requests per 100: verifications
// dominate (every unlock), session status checks are periodic, new keys
// rare. Each request carries its own credential.
#define VK_BENCH_MIX_VERIFY 90
#define VK_BENCH_MIX_CHECK 9
#define VK_BENCH_MIX_APPLY 1

// KeyAlgorithm values (common.proto).
enum { VK_BENCH_ALG_ED25519 = 1, VK_BENCH_ALG_P256 = 2 };

// A virtual key as the service signed it (SignedKey) and its id.
typedef struct vk_bench_key_s {
  uint32_t vehicle;  // index in the fleet
  char key_id[VK_BENCH_KEY_ID_LEN + 1];
  uint8_t *claims;  // SignedKey.claims, owned
  size_t claims_len;
  uint8_t sig[64];  // SignedKey.signature
} vk_bench_key_t;

typedef struct vk_bench_vehicle_s {
  char vin[VK_BENCH_VIN_LEN + 1];
  vk_bench_ed25519_t key;      // its registered key (assertions)
  vk_bench_ed25519_t phone;    // the owner's phone, Ed25519
  vk_bench_p256_t phone_p256;  // the owner's phone, P-256 (if used)
  vk_bench_key_t owner_key;    // for the fleet's phone algorithm
  // The session (check): MAC key, epoch, last counter used; the offset
  // of the service's clock from ours. `mac` is keyed with mac_key on the
  // first check (mac_keyed), by the signer thread that owns the vehicle.
  int has_session;
  uint8_t epoch[VK_BENCH_EPOCH_LEN];
  uint8_t mac_key[32];
  HMAC_CTX mac;
  int mac_keyed;
  uint64_t counter;
  int64_t clock_offset_ms;
} vk_bench_vehicle_t;

typedef struct vk_bench_fleet_s {
  uint32_t seed;
  uint32_t n;  // vehicles
  vk_bench_vehicle_t *vehicles;
  int phone_alg;         // VK_BENCH_ALG_*: whose public key the owner keys hold
  vk_bench_key_t *cold;  // verify-cold: keys made for this run only
  uint32_t n_cold;
  char user_id[64];
  // "Bearer <token>" for the operator (verify) and the owner (keys).
  char operator_auth[512];
  size_t operator_auth_len;
  char user_auth[512];
  size_t user_auth_len;
  // share: the user the owner shares with, their token ("Bearer ...") and
  // their phone's key (the holder of the redeemed keys).
  char recipient_id[64];
  char recipient_auth[512];
  size_t recipient_auth_len;
  vk_bench_ed25519_t recipient_phone;
  uint8_t signing_pub[32];  // the service's key-signing key
  char run_id[17];          // random, names what this run creates
} vk_bench_fleet_t;

// vk_bench_fleet_cleanup frees everything, wiping session keys. Safe on a
// zeroed fleet.
void vk_bench_fleet_cleanup(vk_bench_fleet_t *f);

// vk_bench_build_verify writes a VerifyKeyRequest for `key` on `vin`.
// Returns 0 or VK_ETOOBIG / VK_ENOMEM.
int vk_bench_build_verify(vk_bench_buf_t *out, const char *vin,
                          const vk_bench_key_t *key, uint32_t function,
                          const uint8_t *challenge, size_t challenge_len,
                          int64_t timestamp_ms, const uint8_t *phone_sig,
                          size_t phone_sig_len);

// vk_bench_sign_session_call writes the x-vkey-session-bin value (base64,
// NUL-terminated) for the message in `body`, a call of `path` in session
// `v` at `counter`, void after `expires_at_ms`. Returns 0, VK_EIO or
// VK_ETOOBIG.
int vk_bench_sign_session_call(char *hdr, size_t hdr_cap, size_t *out_hdr_len,
                               vk_bench_vehicle_t *v, const char *path,
                               const vk_bench_buf_t *body, uint64_t counter,
                               int64_t expires_at_ms);

// vk_bench_build_check writes a CheckKeyStatusRequest for one key and the
// value of its x-vkey-session-bin metadata (base64, NUL-terminated) for
// session `v` at `counter`, void after `expires_at_ms`. Returns 0 or
// VK_ETOOBIG.
int vk_bench_build_check(vk_bench_buf_t *out, char *hdr, size_t hdr_cap,
                         size_t *out_hdr_len, vk_bench_vehicle_t *v,
                         const char *key_id, uint64_t counter,
                         int64_t expires_at_ms);

// vk_bench_build_authorize writes an AuthorizeRequest: the owner grants
// VEHICLE_FUNCTION_UNLOCK on `vin` as a SHARED key to `recipient`, valid
// until `now_s` + VK_BENCH_SHARE_VALIDITY_S, the code set redeemable for
// VK_BENCH_SHARE_TTL_S. Returns 0 or VK_ETOOBIG / VK_ENOMEM.
int vk_bench_build_authorize(vk_bench_buf_t *out, const char *request_id,
                             const char *vin, const char *recipient,
                             int64_t now_s);

// vk_bench_build_redeem writes the framed RedeemRequest (5-byte gRPC prefix
// and message) that redeems the code set of AuthorizeResponse `resp` for
// a phone holding Ed25519 key `holder_pub`, with request id
// "vkb<seed>-r-<grant id>" (one per grant: a retry is idempotent). Returns
// 0; VK_EPROTO with a static `*out_why` when the response has no code set
// or grant id; VK_ETOOBIG or VK_ENOMEM.
int vk_bench_build_redeem(vk_bench_buf_t *out, const char **out_why,
                          const uint8_t *resp, size_t resp_len, uint32_t seed,
                          const uint8_t holder_pub[32]);

// vk_bench_share_next is the vk_bench_next_fn of share; `ctx` is the fleet
// (read only). After Authorize: the recipient's Redeem of the code set,
// with the recipient's token. After Redeem: VK_ENOTFOUND (done).
int vk_bench_share_next(void *ctx, vk_bench_buf_t *out, vk_bench_req_t *out_req,
                        const char **out_why, const char *path,
                        const uint8_t *msg, size_t len);

// One signer thread's share of the work: vehicles (or verify-cold keys)
// first, first + stride, ... and its scratch space. The thread owns the
// session counters of its vehicles.
typedef struct vk_bench_work_ctx_s {
  vk_bench_fleet_t *fleet;
  vk_bench_work_t work;
  uint32_t first;
  uint32_t stride;
  uint64_t made;    // requests built
  uint64_t wraps;   // verify-cold: times this share of keys ran out
  uint32_t cursor;  // position in the share
  vk_bench_buf_t buf;
} vk_bench_work_ctx_t;

// vk_bench_work_make is a vk_bench_make_fn for every signed workload. For
// CONNECT it builds one OpenChannel per vehicle of the share, then returns
// VK_ENOTFOUND. APPLY and SHARE (the Authorize) requests carry the owner's
// token, MIXED ones each their own credential (operator token, session, owner
// token); the others rely on the source's common metadata (verify*: the
// operator's token).
int vk_bench_work_make(void *ctx, vk_bench_slot_t *slot);

// vk_bench_work_ctx_cleanup frees the scratch space.
void vk_bench_work_ctx_cleanup(vk_bench_work_ctx_t *w);

// vk_bench_slot_set fills a slot's body (framing `msg`) and metadata.
// Returns 0 or VK_ETOOBIG.
int vk_bench_slot_set(vk_bench_slot_t *slot, const char *path,
                      const uint8_t *msg, size_t msg_len, const char *hdr_name,
                      const char *hdr, size_t hdr_len);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_WORKLOAD_H
