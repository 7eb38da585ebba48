// creds.h: the credentials and signed messages vkey-bench builds, byte for
// byte as tests/integration/vkcreds.py builds them (the reference):
//
//   bearer token   b64url(IdentityClaims) "." b64url(Ed25519(
//                  "vkey-identity-v1\0" || claims))            identity.proto
//   assertion      VehicleAssertion, Ed25519 over "vkey-vehicle-v1\0" || VIN
//                  || 0 || :path || 0 || u64be(ts) || nonce     identity.proto
//   phone proof    "vkey-proof-v1\0" || challenge || VIN || 0 || u32be(fn)
//                  || u64be(ts_ms)                              verify.proto
//   session key    HKDF-SHA256(X25519 shared, salt = epoch,
//                  info = "vkey-session-v1\0" || VIN)           SESSIONS.md
//   session tag    HMAC-SHA256(key, "vkey-req-v1\0" || VIN || 0 || :path ||
//                  0 || epoch || u64be(counter) || u64be(expires_at_ms) ||
//                  SHA-256(request))                            SESSIONS.md
//
// Everything here is a pure function of its inputs (the P-256 signature
// aside, whose nonce is random), so tests compare it with the reference for
// fixed inputs. Keys vkey-bench makes for vehicles and phones are derived
// from a seed and an index, so a second run against the same vkeyd data
// finds the vehicles it registered before with the same keys.
#ifndef VK_BENCH_CREDS_H
#define VK_BENCH_CREDS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>
#include <openssl/hmac.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VK_BENCH_VIN_LEN 17
// "<VIN>.<16 hex digits>"
#define VK_BENCH_KEY_ID_LEN (VK_BENCH_VIN_LEN + 1 + 16)
#define VK_BENCH_EPOCH_LEN 16
// A DER ECDSA P-256 signature is at most 72 bytes.
#define VK_BENCH_MAX_SIG 72

// IdentityClaims.role values (identity.proto Role).
enum { VK_BENCH_ROLE_USER = 1, VK_BENCH_ROLE_OPERATOR = 2 };

// vk_bench_b64 writes the base64 of `in` to `out` (NUL-terminated): standard
// with '=' padding (gRPC "-bin" metadata), or base64url without padding
// when `url` (bearer tokens). Returns the length written, or 0 if `cap` is
// too small (`cap` must hold the text and the NUL).
size_t vk_bench_b64(char *out, size_t cap, const uint8_t *in, size_t len,
                    int url);

// An Ed25519 key pair from its 32-byte seed, as vkeyd's key files hold it.
typedef struct vk_bench_ed25519_s {
  uint8_t priv[64];  // BoringSSL's form: seed || public key
  uint8_t pub[32];
  char key_id[17];  // vkeyd's key id: SHA-256(pub)[0..8] in hex
} vk_bench_ed25519_t;

// vk_bench_ed25519_from_seed derives the key pair of `seed`.
void vk_bench_ed25519_from_seed(vk_bench_ed25519_t *k, const uint8_t seed[32]);

// vk_bench_seed_load reads a key file: 64 hex digits, optionally followed
// by a newline (vkeyd's identity-issuer.key). Returns 0, VK_ENOTFOUND when
// the file cannot be opened, or VK_EPROTO when it does not hold a seed.
int vk_bench_seed_load(uint8_t seed[32], const char *path);

// vk_bench_derive makes the 32-byte seed of key `index` of kind `label`
// for run seed `seed`: SHA-256("vkey-bench-v1\0" || label || 0 ||
// u32be(seed) || u32be(index)). Deterministic, so re-runs reuse keys.
void vk_bench_derive(uint8_t out[32], const char *label, uint32_t seed,
                     uint32_t index);

// vk_bench_vin writes the VIN of vehicle `index` for run seed `seed` (both
// below 10^8): "VKBENCH" + two letters naming the seed + 8 digits. Every
// character is valid in ISO 3779 (no I, O, Q). `out` holds 18 bytes.
void vk_bench_vin(char out[VK_BENCH_VIN_LEN + 1], uint32_t seed,
                  uint32_t index);

// vk_bench_token_mint writes a bearer token (without "Bearer ") for
// `subject` with `role`, issued at `now_s` for `lifetime_s` seconds, signed
// by `issuer`. Returns 0, VK_EINVAL for a bad role or subject, or
// VK_ETOOBIG if `cap` is too small. `*out_len` excludes the NUL.
int vk_bench_token_mint(char *out, size_t cap, size_t *out_len,
                        const vk_bench_ed25519_t *issuer, const char *subject,
                        int role, int64_t now_s, int64_t lifetime_s);

// vk_bench_proof_message writes the message a phone signs (verify.proto
// VerifyKeyItem) to `out`. Returns its length, or 0 if `cap` is too small.
size_t vk_bench_proof_message(uint8_t *out, size_t cap,
                              const uint8_t *challenge, size_t challenge_len,
                              const char *vin, uint32_t function,
                              uint64_t timestamp_ms);

// vk_bench_bound_challenge writes the challenge a vehicle binds to item
// `index` of its session call (`epoch`, `counter`): docs/SESSIONS.md,
// "Challenges bound to a call". Returns its length, or 0 if `cap` is too
// small (VK_BENCH_BOUND_CHALLENGE_LEN bytes are needed).
#define VK_BENCH_BOUND_CHALLENGE_LEN (17 + VK_BENCH_EPOCH_LEN + 8 + 1)
size_t vk_bench_bound_challenge(uint8_t *out, size_t cap,
                                const uint8_t epoch[VK_BENCH_EPOCH_LEN],
                                uint64_t counter, uint8_t index);

// vk_bench_vehicle_assertion writes a serialized VehicleAssertion for one
// call of `path` by vehicle `vin`. Returns 0 or VK_ETOOBIG (`cap`; 160
// bytes are plenty for nonces up to 32 bytes).
int vk_bench_vehicle_assertion(uint8_t *out, size_t cap, size_t *out_len,
                               const vk_bench_ed25519_t *vehicle,
                               const char *vin, const char *path,
                               int64_t timestamp_s, const uint8_t *nonce,
                               size_t nonce_len);

// A phone's ECDSA P-256 key (phones' secure elements do P-256).
typedef struct vk_bench_p256_s {
  EC_KEY *key;
  uint8_t pub[65];  // uncompressed SEC1 point
} vk_bench_p256_t;

// vk_bench_p256_from_seed derives a P-256 key from `seed` (the scalar is
// the seed reduced into [1, n-1]). Returns 0 or VK_ENOMEM. Free with
// vk_bench_p256_cleanup, which is safe on a zeroed key.
int vk_bench_p256_from_seed(vk_bench_p256_t *k, const uint8_t seed[32]);
void vk_bench_p256_cleanup(vk_bench_p256_t *k);

// vk_bench_p256_sign signs SHA-256(msg) and writes the DER signature
// (at most VK_BENCH_MAX_SIG bytes). Returns 0 or VK_EIO. Thread-safe for
// one key used by one thread at a time.
int vk_bench_p256_sign(uint8_t *sig, size_t *sig_len, const vk_bench_p256_t *k,
                       const uint8_t *msg, size_t msg_len);

// vk_bench_session_key derives a session's MAC key from the X25519 shared
// secret. Returns 0 or VK_EIO.
int vk_bench_session_key(uint8_t key[32], const uint8_t shared[32],
                         const uint8_t epoch[VK_BENCH_EPOCH_LEN],
                         const char *vin);

// vk_bench_session_mac keys `mac` with a session key, once per session:
// each tag then rewinds it instead of hashing the key again (as vkeyd's
// session cache does). `mac` must be HMAC_CTX_init'ed or keyed before;
// the caller cleans it up. Returns 0 or VK_EIO.
int vk_bench_session_mac(HMAC_CTX *mac, const uint8_t key[32]);

// vk_bench_session_tag computes a session request's tag over `digest`, the
// SHA-256 of the serialized request message, with `mac` keyed by
// vk_bench_session_mac (and left keyed).
void vk_bench_session_tag(uint8_t tag[32], HMAC_CTX *mac, const char *vin,
                          const char *path,
                          const uint8_t epoch[VK_BENCH_EPOCH_LEN],
                          uint64_t counter, int64_t expires_at_ms,
                          const uint8_t digest[32]);

// vk_bench_session_auth writes the serialized SessionAuth (the value of
// x-vkey-session-bin before base64). Returns 0 or VK_ETOOBIG (`cap`; 96
// bytes are plenty).
int vk_bench_session_auth(uint8_t *out, size_t cap, size_t *out_len,
                          const uint8_t epoch[VK_BENCH_EPOCH_LEN],
                          uint64_t counter, int64_t expires_at_ms,
                          const uint8_t tag[32]);

// vk_bench_session_info_check checks an OpenSession answer as a vehicle
// does: the Ed25519 signature by the service's signing key `issuer_pub`
// over "vkey-session-v1\0" || info, the VIN and the echoed public key.
// On success it fills the epoch, the service's X25519 public key, the
// counter and the service's clock. Returns 0, or VK_EPROTO (and `*out_why`).
int vk_bench_session_info_check(uint8_t epoch[VK_BENCH_EPOCH_LEN],
                                uint8_t server_pub[32], uint64_t *out_counter,
                                int64_t *out_clock_ms, const char **out_why,
                                const uint8_t *info, size_t info_len,
                                const uint8_t *sig, size_t sig_len,
                                const uint8_t issuer_pub[32], const char *vin,
                                const uint8_t vehicle_pub[32]);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_CREDS_H
