// creds.c: see creds.h. Messages are built with CBB (fixed buffers) and
// protobuf-c, signatures with BoringSSL.
#include "creds.h"

#include <stdio.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/curve25519.h>
#include <openssl/digest.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/hkdf.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/sha.h>

#include "common.h"
#include "vkey/v1/identity.pb-c.h"
#include "vkey/v1/verify.pb-c.h"

// The contexts include their terminating 0x00 (sizeof counts it).
static const char kIdentityContext[] = "vkey-identity-v1";
static const char kVehicleContext[] = "vkey-vehicle-v1";
static const char kProofContext[] = "vkey-proof-v1";
static const char kBoundChallengePrefix[] = "vkey-challenge-v1";
_Static_assert(sizeof(kBoundChallengePrefix) - 1 + VK_BENCH_EPOCH_LEN + 8 + 1 ==
                   VK_BENCH_BOUND_CHALLENGE_LEN,
               "the bound challenge's layout");
static const char kSessionContext[] = "vkey-session-v1";
static const char kRequestContext[] = "vkey-req-v1";
static const char kDeriveContext[] = "vkey-bench-v1";

size_t vk_bench_b64(char *out, size_t cap, const uint8_t *in, size_t len,
                    int url) {
  static const char kStd[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  static const char kUrl[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const char *alpha = url ? kUrl : kStd;
  size_t full = len / 3;
  size_t rest = len % 3;
  size_t need = full * 4 + (rest == 0 ? 0 : (url ? rest + 1 : 4));
  if (len > SIZE_MAX / 2 || need + 1 > cap) {
    return 0;
  }
  size_t o = 0;
  for (size_t i = 0; i < full; i++) {
    uint32_t v = (uint32_t)in[3 * i] << 16 | (uint32_t)in[3 * i + 1] << 8 |
                 in[3 * i + 2];
    out[o++] = alpha[v >> 18];
    out[o++] = alpha[(v >> 12) & 63];
    out[o++] = alpha[(v >> 6) & 63];
    out[o++] = alpha[v & 63];
  }
  if (rest > 0) {
    uint32_t v = (uint32_t)in[3 * full] << 16;
    if (rest == 2) {
      v |= (uint32_t)in[3 * full + 1] << 8;
    }
    out[o++] = alpha[v >> 18];
    out[o++] = alpha[(v >> 12) & 63];
    if (rest == 2) {
      out[o++] = alpha[(v >> 6) & 63];
    }
    if (!url) {
      while (o % 4 != 0) {
        out[o++] = '=';
      }
    }
  }
  out[o] = '\0';
  return o;
}

void vk_bench_ed25519_from_seed(vk_bench_ed25519_t *k, const uint8_t seed[32]) {
  ED25519_keypair_from_seed(k->pub, k->priv, seed);
  uint8_t d[SHA256_DIGEST_LENGTH];
  SHA256(k->pub, sizeof(k->pub), d);
  for (size_t i = 0; i < 8; i++) {
    snprintf(k->key_id + 2 * i, 3, "%02x", d[i]);
  }
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

int vk_bench_seed_load(uint8_t seed[32], const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    return VK_ENOTFOUND;
  }
  char text[80];
  size_t n = fread(text, 1, sizeof(text), f);
  fclose(f);
  // 64 hex digits, optionally followed by a newline, as vkeyd writes it.
  if (!(n == 64 || (n == 65 && text[64] == '\n'))) {
    return VK_EPROTO;
  }
  for (size_t i = 0; i < 32; i++) {
    int hi = hex_value(text[2 * i]);
    int lo = hex_value(text[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      OPENSSL_cleanse(seed, 32);
      return VK_EPROTO;
    }
    seed[i] = (uint8_t)(hi << 4 | lo);
  }
  OPENSSL_cleanse(text, sizeof(text));
  return VK_OK;
}

void vk_bench_derive(uint8_t out[32], const char *label, uint32_t seed,
                     uint32_t index) {
  SHA256_CTX sha;
  uint8_t be[8];
  for (int i = 0; i < 4; i++) {
    be[i] = (uint8_t)(seed >> (24 - 8 * i));
    be[4 + i] = (uint8_t)(index >> (24 - 8 * i));
  }
  SHA256_Init(&sha);
  SHA256_Update(&sha, kDeriveContext, sizeof(kDeriveContext));
  SHA256_Update(&sha, label, strlen(label) + 1);
  SHA256_Update(&sha, be, sizeof(be));
  SHA256_Final(out, &sha);
}

void vk_bench_vin(char out[VK_BENCH_VIN_LEN + 1], uint32_t seed,
                  uint32_t index) {
  // 23 capitals valid in a VIN: the seed names itself in two of them.
  static const char kLetters[] = "ABCDEFGHJKLMNPRSTUVWXYZ";
  const uint32_t n = (uint32_t)(sizeof(kLetters) - 1);
  snprintf(out, VK_BENCH_VIN_LEN + 1, "VKBENCH%c%c%08u",
           kLetters[(seed / n) % n], kLetters[seed % n],
           (unsigned)(index % 100000000u));
}

int vk_bench_token_mint(char *out, size_t cap, size_t *out_len,
                        const vk_bench_ed25519_t *issuer, const char *subject,
                        int role, int64_t now_s, int64_t lifetime_s) {
  if ((role != VK_BENCH_ROLE_USER && role != VK_BENCH_ROLE_OPERATOR) ||
      subject == NULL || strlen(subject) == 0 || strlen(subject) > 128) {
    return VK_EINVAL;
  }
  Vkey__V1__IdentityClaims c = VKEY__V1__IDENTITY_CLAIMS__INIT;
  // protobuf-c's fields are `char *`; pack only reads them.
  c.subject = (char *)subject;
  c.role = (Vkey__V1__Role)role;
  c.issued_at = now_s;
  c.expires_at = now_s + lifetime_s;
  c.issuer_key_id = (char *)issuer->key_id;
  uint8_t msg[sizeof(kIdentityContext) + 256];
  size_t claims_len = vkey__v1__identity_claims__get_packed_size(&c);
  if (claims_len > sizeof(msg) - sizeof(kIdentityContext)) {
    return VK_ETOOBIG;
  }
  memcpy(msg, kIdentityContext, sizeof(kIdentityContext));
  uint8_t *claims = msg + sizeof(kIdentityContext);
  vkey__v1__identity_claims__pack(&c, claims);
  uint8_t sig[64];
  ED25519_sign(sig, msg, sizeof(kIdentityContext) + claims_len, issuer->priv);
  size_t a = vk_bench_b64(out, cap, claims, claims_len, 1);
  if (a == 0 || a + 2 > cap) {
    return VK_ETOOBIG;
  }
  out[a] = '.';
  size_t b = vk_bench_b64(out + a + 1, cap - a - 1, sig, sizeof(sig), 1);
  if (b == 0) {
    return VK_ETOOBIG;
  }
  *out_len = a + 1 + b;
  return VK_OK;
}

size_t vk_bench_bound_challenge(uint8_t *out, size_t cap,
                                const uint8_t epoch[VK_BENCH_EPOCH_LEN],
                                uint64_t counter, uint8_t index) {
  CBB cbb;
  size_t len;
  if (!CBB_init_fixed(&cbb, out, cap) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)kBoundChallengePrefix,
                     sizeof(kBoundChallengePrefix) - 1) ||
      !CBB_add_bytes(&cbb, epoch, VK_BENCH_EPOCH_LEN) ||
      !CBB_add_u64(&cbb, counter) || !CBB_add_u8(&cbb, index) ||
      !CBB_finish(&cbb, NULL, &len)) {
    CBB_cleanup(&cbb);
    return 0;
  }
  return len;
}

size_t vk_bench_proof_message(uint8_t *out, size_t cap,
                              const uint8_t *challenge, size_t challenge_len,
                              const char *vin, uint32_t function,
                              uint64_t timestamp_ms) {
  CBB cbb;
  size_t len;
  if (!CBB_init_fixed(&cbb, out, cap) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)kProofContext,
                     sizeof(kProofContext)) ||
      !CBB_add_bytes(&cbb, challenge, challenge_len) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)vin, strlen(vin) + 1) ||
      !CBB_add_u32(&cbb, function) || !CBB_add_u64(&cbb, timestamp_ms) ||
      !CBB_finish(&cbb, NULL, &len)) {
    CBB_cleanup(&cbb);
    return 0;
  }
  return len;
}

int vk_bench_vehicle_assertion(uint8_t *out, size_t cap, size_t *out_len,
                               const vk_bench_ed25519_t *vehicle,
                               const char *vin, const char *path,
                               int64_t timestamp_s, const uint8_t *nonce,
                               size_t nonce_len) {
  uint8_t msg[512];
  CBB cbb;
  size_t msg_len;
  if (!CBB_init_fixed(&cbb, msg, sizeof(msg)) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)kVehicleContext,
                     sizeof(kVehicleContext)) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)vin, strlen(vin) + 1) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)path, strlen(path) + 1) ||
      !CBB_add_u64(&cbb, (uint64_t)timestamp_s) ||
      !CBB_add_bytes(&cbb, nonce, nonce_len) ||
      !CBB_finish(&cbb, NULL, &msg_len)) {
    CBB_cleanup(&cbb);
    return VK_ETOOBIG;
  }
  uint8_t sig[64];
  ED25519_sign(sig, msg, msg_len, vehicle->priv);
  Vkey__V1__VehicleAssertion a = VKEY__V1__VEHICLE_ASSERTION__INIT;
  a.vin = (char *)vin;
  a.timestamp = timestamp_s;
  a.nonce = (ProtobufCBinaryData){nonce_len, (uint8_t *)nonce};
  a.signature = (ProtobufCBinaryData){sizeof(sig), sig};
  size_t len = vkey__v1__vehicle_assertion__get_packed_size(&a);
  if (len > cap) {
    return VK_ETOOBIG;
  }
  *out_len = vkey__v1__vehicle_assertion__pack(&a, out);
  return VK_OK;
}

int vk_bench_p256_from_seed(vk_bench_p256_t *k, const uint8_t seed[32]) {
  memset(k, 0, sizeof(*k));
  int rv = VK_ENOMEM;
  BN_CTX *ctx = BN_CTX_new();
  BIGNUM *d = BN_bin2bn(seed, 32, NULL);
  BIGNUM *n1 = BN_new();
  EC_POINT *pub = NULL;
  k->key = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  if (ctx == NULL || d == NULL || n1 == NULL || k->key == NULL) {
    goto done;
  }
  const EC_GROUP *group = EC_KEY_get0_group(k->key);
  pub = EC_POINT_new(group);
  // d = seed mod (n - 1) + 1: a valid scalar, never zero.
  if (pub == NULL || !BN_copy(n1, EC_GROUP_get0_order(group)) ||
      !BN_sub_word(n1, 1) || !BN_nnmod(d, d, n1, ctx) || !BN_add_word(d, 1) ||
      !EC_KEY_set_private_key(k->key, d) ||
      !EC_POINT_mul(group, pub, d, NULL, NULL, ctx) ||
      !EC_KEY_set_public_key(k->key, pub) ||
      EC_POINT_point2oct(group, pub, POINT_CONVERSION_UNCOMPRESSED, k->pub,
                         sizeof(k->pub), ctx) != sizeof(k->pub)) {
    goto done;
  }
  rv = VK_OK;

done:
  EC_POINT_free(pub);
  BN_clear_free(d);
  BN_free(n1);
  BN_CTX_free(ctx);
  if (rv != VK_OK) {
    vk_bench_p256_cleanup(k);
  }
  return rv;
}

void vk_bench_p256_cleanup(vk_bench_p256_t *k) {
  EC_KEY_free(k->key);
  memset(k, 0, sizeof(*k));
}

int vk_bench_p256_sign(uint8_t *sig, size_t *sig_len, const vk_bench_p256_t *k,
                       const uint8_t *msg, size_t msg_len) {
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(msg, msg_len, digest);
  unsigned len = 0;
  if (ECDSA_size(k->key) > VK_BENCH_MAX_SIG ||
      !ECDSA_sign(0, digest, sizeof(digest), sig, &len, k->key)) {
    return VK_EIO;
  }
  *sig_len = len;
  return VK_OK;
}

int vk_bench_session_key(uint8_t key[32], const uint8_t shared[32],
                         const uint8_t epoch[VK_BENCH_EPOCH_LEN],
                         const char *vin) {
  uint8_t info[sizeof(kSessionContext) + VK_BENCH_VIN_LEN];
  size_t vin_len = strlen(vin);
  if (vin_len > VK_BENCH_VIN_LEN) {
    return VK_EIO;
  }
  memcpy(info, kSessionContext, sizeof(kSessionContext));
  memcpy(info + sizeof(kSessionContext), vin, vin_len);
  return HKDF(key, 32, EVP_sha256(), shared, 32, epoch, VK_BENCH_EPOCH_LEN,
              info, sizeof(kSessionContext) + vin_len) == 1
             ? VK_OK
             : VK_EIO;
}

int vk_bench_session_mac(HMAC_CTX *mac, const uint8_t key[32]) {
  return HMAC_Init_ex(mac, key, 32, EVP_sha256(), NULL) == 1 ? VK_OK : VK_EIO;
}

void vk_bench_session_tag(uint8_t tag[32], HMAC_CTX *mac, const char *vin,
                          const char *path,
                          const uint8_t epoch[VK_BENCH_EPOCH_LEN],
                          uint64_t counter, int64_t expires_at_ms,
                          const uint8_t digest[32]) {
  uint8_t be[16];
  for (int i = 0; i < 8; i++) {
    be[i] = (uint8_t)(counter >> (56 - 8 * i));
    be[8 + i] = (uint8_t)((uint64_t)expires_at_ms >> (56 - 8 * i));
  }
  unsigned len = 0;
  // Rewinding a keyed context cannot fail; a failure leaves a zero tag,
  // which the server refuses.
  if (!HMAC_Init_ex(mac, NULL, 0, NULL, NULL) ||
      !HMAC_Update(mac, (const uint8_t *)kRequestContext,
                   sizeof(kRequestContext)) ||
      !HMAC_Update(mac, (const uint8_t *)vin, strlen(vin) + 1) ||
      !HMAC_Update(mac, (const uint8_t *)path, strlen(path) + 1) ||
      !HMAC_Update(mac, epoch, VK_BENCH_EPOCH_LEN) ||
      !HMAC_Update(mac, be, sizeof(be)) || !HMAC_Update(mac, digest, 32) ||
      !HMAC_Final(mac, tag, &len)) {
    memset(tag, 0, 32);
  }
}

int vk_bench_session_auth(uint8_t *out, size_t cap, size_t *out_len,
                          const uint8_t epoch[VK_BENCH_EPOCH_LEN],
                          uint64_t counter, int64_t expires_at_ms,
                          const uint8_t tag[32]) {
  Vkey__V1__SessionAuth a = VKEY__V1__SESSION_AUTH__INIT;
  a.epoch = (ProtobufCBinaryData){VK_BENCH_EPOCH_LEN, (uint8_t *)epoch};
  a.counter = counter;
  a.expires_at_ms = expires_at_ms;
  a.tag = (ProtobufCBinaryData){32, (uint8_t *)tag};
  if (vkey__v1__session_auth__get_packed_size(&a) > cap) {
    return VK_ETOOBIG;
  }
  *out_len = vkey__v1__session_auth__pack(&a, out);
  return VK_OK;
}

int vk_bench_session_info_check(uint8_t epoch[VK_BENCH_EPOCH_LEN],
                                uint8_t server_pub[32], uint64_t *out_counter,
                                int64_t *out_clock_ms, const char **out_why,
                                const uint8_t *info, size_t info_len,
                                const uint8_t *sig, size_t sig_len,
                                const uint8_t issuer_pub[32], const char *vin,
                                const uint8_t vehicle_pub[32]) {
  uint8_t msg[sizeof(kSessionContext) + 512];
  if (info_len > sizeof(msg) - sizeof(kSessionContext) || sig_len != 64) {
    *out_why = "session info too long or signature not 64 bytes";
    return VK_EPROTO;
  }
  memcpy(msg, kSessionContext, sizeof(kSessionContext));
  memcpy(msg + sizeof(kSessionContext), info, info_len);
  if (!ED25519_verify(msg, sizeof(kSessionContext) + info_len, sig,
                      issuer_pub)) {
    *out_why = "session info signature does not verify";
    return VK_EPROTO;
  }
  Vkey__V1__SessionInfo *si =
      vkey__v1__session_info__unpack(NULL, info_len, info);
  if (si == NULL) {
    *out_why = "session info does not parse";
    return VK_EPROTO;
  }
  int rv = VK_EPROTO;
  if (strcmp(si->vin, vin) != 0) {
    *out_why = "session info names another vehicle";
  } else if (si->epoch.len != VK_BENCH_EPOCH_LEN ||
             si->server_public_key.len != 32) {
    *out_why = "session info has a bad epoch or server key";
  } else if (si->vehicle_public_key.len != 32 ||
             CRYPTO_memcmp(si->vehicle_public_key.data, vehicle_pub, 32) != 0) {
    *out_why = "session info does not echo our X25519 key";
  } else {
    memcpy(epoch, si->epoch.data, VK_BENCH_EPOCH_LEN);
    memcpy(server_pub, si->server_public_key.data, 32);
    *out_counter = si->counter;
    *out_clock_ms = si->clock_time_ms;
    rv = VK_OK;
  }
  vkey__v1__session_info__free_unpacked(si, NULL);
  return rv;
}
