// keytoken_test: server/keytoken.c. Signed keys verify offline with the
// issuer's public key and nothing else does: a flipped claims byte, a
// flipped signature byte, another issuer key, claims naming another key id;
// and the claim rules (functions, validity windows, use limits).
#include <gtest/gtest.h>

#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include <openssl/curve25519.h>

extern "C" {
#include "keytoken.h"
#include "store.h"
}

namespace {

const char kVin[] = "1HGCM82633A004352";

vk_ed25519_key_t MakeKey(uint8_t fill) {
  uint8_t seed[32];
  memset(seed, fill, sizeof(seed));
  vk_ed25519_key_t k;
  ED25519_keypair_from_seed(k.public_key, k.private_key, seed);
  vk_ed25519_key_id(k.key_id, k.public_key);
  return k;
}

// Claims as ApplyKey builds them, serialized.
std::vector<uint8_t> PackClaims(const vk_ed25519_key_t &issuer,
                                uint64_t version = 1, uint32_t format = 1) {
  char key_id[VK_KEY_ID_LEN + 1];
  EXPECT_EQ(0, vk_keytoken_new_key_id(key_id, kVin));
  static uint8_t phone[32] = {1, 2, 3};
  Vkey__V1__VehicleFunction fns[2] = {
      VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_UNLOCK,
      VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_LOCK};
  Vkey__V1__KeyClaims c = VKEY__V1__KEY_CLAIMS__INIT;
  c.format = format;
  c.key_id = key_id;
  c.vin = const_cast<char *>(kVin);
  c.holder_user_id = const_cast<char *>("alice");
  c.holder_key_algorithm = VKEY__V1__KEY_ALGORITHM__KEY_ALGORITHM_ED25519;
  c.holder_public_key.data = phone;
  c.holder_public_key.len = sizeof(phone);
  c.key_type = VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER;
  c.n_functions = 2;
  c.functions = fns;
  c.issuer_key_id = const_cast<char *>(issuer.key_id);
  c.version = version;
  c.issued_at = 1700000000;
  std::vector<uint8_t> out(vkey__v1__key_claims__get_packed_size(&c));
  vkey__v1__key_claims__pack(&c, out.data());
  return out;
}

struct Signed {
  std::vector<uint8_t> claims;
  uint8_t sig[64];
};

Signed SignClaims(const vk_ed25519_key_t &issuer) {
  Signed s;
  s.claims = PackClaims(issuer);
  EXPECT_EQ(0,
            vk_keytoken_sign(s.sig, &issuer, s.claims.data(), s.claims.size()));
  return s;
}

int Verify(const Signed &s, const vk_ed25519_key_t &issuer) {
  return vk_keytoken_verify(s.claims.data(), s.claims.size(), s.sig,
                            sizeof(s.sig), issuer.key_id, issuer.public_key);
}

TEST(KeyToken, SignThenVerify) {
  vk_ed25519_key_t issuer = MakeKey(7);
  Signed s = SignClaims(issuer);
  EXPECT_EQ(0, Verify(s, issuer));
}

TEST(KeyToken, SignatureIsOverContextAndClaims) {
  // A vehicle checks Ed25519(public, "vkey-key-v1\0" || claims) itself.
  vk_ed25519_key_t issuer = MakeKey(7);
  Signed s = SignClaims(issuer);
  size_t len = 0;
  uint8_t *msg =
      vk_keytoken_message(nullptr, s.claims.data(), s.claims.size(), &len);
  ASSERT_NE(nullptr, msg);
  ASSERT_EQ(12 + s.claims.size(), len);
  EXPECT_EQ(0, memcmp(msg, "vkey-key-v1\0", 12));
  EXPECT_EQ(1, ED25519_verify(msg, len, s.sig, issuer.public_key));
  free(msg);
}

TEST(KeyToken, SignOpMatchesSynchronousSign) {
  vk_ed25519_key_t issuer = MakeKey(7);
  Signed s = SignClaims(issuer);
  size_t len = 0;
  uint8_t *msg =
      vk_keytoken_message(nullptr, s.claims.data(), s.claims.size(), &len);
  ASSERT_NE(nullptr, msg);
  vk_crypto_op_t op;
  vk_keytoken_sign_op(&op, &issuer, msg, len);
  EXPECT_TRUE(op.sign);
  EXPECT_EQ(&issuer, op.key);
  EXPECT_EQ(msg, op.msg);
  EXPECT_EQ(len, op.msg_len);
  // What the worker does with the op (crypto.c): Ed25519 is deterministic.
  uint8_t sig[64];
  ASSERT_EQ(1, ED25519_sign(sig, op.msg, op.msg_len, op.key->private_key));
  EXPECT_EQ(0, memcmp(sig, s.sig, 64));
  free(msg);
}

TEST(KeyToken, EveryTamperedClaimsByteFails) {
  vk_ed25519_key_t issuer = MakeKey(7);
  Signed s = SignClaims(issuer);
  for (size_t i = 0; i < s.claims.size(); i++) {
    Signed t = s;
    t.claims[i] ^= 0x01;
    EXPECT_NE(0, Verify(t, issuer)) << "byte " << i;
  }
}

TEST(KeyToken, EveryTamperedSignatureByteFails) {
  vk_ed25519_key_t issuer = MakeKey(7);
  Signed s = SignClaims(issuer);
  for (size_t i = 0; i < sizeof(s.sig); i++) {
    Signed t = s;
    t.sig[i] ^= 0x80;
    EXPECT_EQ(VK_EPROTO, Verify(t, issuer)) << "byte " << i;
  }
}

TEST(KeyToken, WrongIssuerKeyIdIsReported) {
  vk_ed25519_key_t issuer = MakeKey(7);
  vk_ed25519_key_t other = MakeKey(8);
  Signed s = SignClaims(issuer);
  // The claims name `issuer`: checking against `other` says so.
  EXPECT_EQ(VK_ENOTFOUND, Verify(s, other));
}

TEST(KeyToken, RightKeyIdButOtherPublicKeyFails) {
  vk_ed25519_key_t issuer = MakeKey(7);
  vk_ed25519_key_t other = MakeKey(8);
  Signed s = SignClaims(issuer);
  EXPECT_EQ(VK_EPROTO,
            vk_keytoken_verify(s.claims.data(), s.claims.size(), s.sig, 64,
                               issuer.key_id, other.public_key));
}

TEST(KeyToken, SignedByAnotherKeyFails) {
  vk_ed25519_key_t issuer = MakeKey(7);
  vk_ed25519_key_t other = MakeKey(8);
  Signed s;
  s.claims = PackClaims(issuer);  // names issuer, signed by other
  ASSERT_EQ(0,
            vk_keytoken_sign(s.sig, &other, s.claims.data(), s.claims.size()));
  EXPECT_EQ(VK_EPROTO, Verify(s, issuer));
}

TEST(KeyToken, MalformedInputs) {
  vk_ed25519_key_t issuer = MakeKey(7);
  Signed s = SignClaims(issuer);
  // Wrong signature length, empty and oversized claims.
  EXPECT_EQ(VK_EINVAL,
            vk_keytoken_verify(s.claims.data(), s.claims.size(), s.sig, 63,
                               issuer.key_id, issuer.public_key));
  EXPECT_EQ(VK_EINVAL, vk_keytoken_verify(s.claims.data(), 0, s.sig, 64,
                                          issuer.key_id, issuer.public_key));
  std::vector<uint8_t> big(VK_KEYTOKEN_MAX_CLAIMS + 1, 0);
  EXPECT_EQ(VK_EINVAL, vk_keytoken_verify(big.data(), big.size(), s.sig, 64,
                                          issuer.key_id, issuer.public_key));
  uint8_t sig[64];
  EXPECT_EQ(VK_EINVAL, vk_keytoken_sign(sig, &issuer, big.data(), big.size()));
  // Bytes that are not a protobuf message.
  uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
  EXPECT_EQ(VK_EINVAL, vk_keytoken_verify(junk, sizeof(junk), s.sig, 64,
                                          issuer.key_id, issuer.public_key));
}

TEST(KeyToken, OtherFormatIsRefusedEvenIfSigned) {
  vk_ed25519_key_t issuer = MakeKey(7);
  Signed s;
  s.claims = PackClaims(issuer, 1, 2);
  ASSERT_EQ(0,
            vk_keytoken_sign(s.sig, &issuer, s.claims.data(), s.claims.size()));
  EXPECT_EQ(VK_EINVAL, Verify(s, issuer));
}

TEST(KeyToken, NewKeyIdsAreValidAndDistinct) {
  char a[VK_KEY_ID_LEN + 1], b[VK_KEY_ID_LEN + 1];
  ASSERT_EQ(0, vk_keytoken_new_key_id(a, kVin));
  ASSERT_EQ(0, vk_keytoken_new_key_id(b, kVin));
  EXPECT_TRUE(vk_key_id_valid(a));
  EXPECT_TRUE(vk_key_id_valid(b));
  EXPECT_EQ(0, strncmp(a, kVin, VK_VIN_LEN));
  EXPECT_STRNE(a, b);
  EXPECT_EQ(VK_EINVAL, vk_keytoken_new_key_id(a, "not-a-vin"));
}

// --- claim rules
// ---------------------------------------------------------------

using Fn = Vkey__V1__VehicleFunction;

vk_function_mask_t Bit(int f) {
  return (vk_function_mask_t)1 << f;
}

TEST(KeyTokenRules, DefaultFunctions) {
  EXPECT_EQ(0xffeu, vk_keytoken_default_functions(
                        VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER));  // 1..11
  EXPECT_EQ(Bit(1) | Bit(2) | Bit(3),
            vk_keytoken_default_functions(VKEY__V1__KEY_TYPE__KEY_TYPE_VALET));
  EXPECT_EQ(Bit(1) | Bit(2),
            vk_keytoken_default_functions(VKEY__V1__KEY_TYPE__KEY_TYPE_SHARED));
  EXPECT_EQ(Bit(1) | Bit(2), vk_keytoken_default_functions(
                                 VKEY__V1__KEY_TYPE__KEY_TYPE_ONE_TIME));
}

TEST(KeyTokenRules, CheckFunctions) {
  const char *err = nullptr;
  vk_function_mask_t m = 99;
  EXPECT_EQ(0, vk_keytoken_check_functions(&m, &err, nullptr, 0));
  EXPECT_EQ(0u, m);
  Fn ok[] = {(Fn)4, (Fn)1, (Fn)11};
  EXPECT_EQ(0, vk_keytoken_check_functions(&m, &err, ok, 3));
  EXPECT_EQ(Bit(1) | Bit(4) | Bit(11), m);
  Fn zero[] = {(Fn)0};
  EXPECT_EQ(VK_EINVAL, vk_keytoken_check_functions(&m, &err, zero, 1));
  Fn unknown[] = {(Fn)1, (Fn)12};
  EXPECT_EQ(VK_EINVAL, vk_keytoken_check_functions(&m, &err, unknown, 2));
  Fn negative[] = {(Fn)-1};
  EXPECT_EQ(VK_EINVAL, vk_keytoken_check_functions(&m, &err, negative, 1));
  Fn dup[] = {(Fn)2, (Fn)3, (Fn)2};
  EXPECT_EQ(VK_EINVAL, vk_keytoken_check_functions(&m, &err, dup, 3));
  std::vector<Fn> many(17, (Fn)1);
  EXPECT_EQ(VK_EINVAL,
            vk_keytoken_check_functions(&m, &err, many.data(), many.size()));
  EXPECT_NE(nullptr, err);
}

TEST(KeyTokenRules, MaskToFunctionsIsAscending) {
  Fn out[VK_KEYTOKEN_FUNCTION_MAX];
  size_t n = vk_keytoken_mask_functions(out, Bit(9) | Bit(2) | Bit(5));
  ASSERT_EQ(3u, n);
  EXPECT_EQ(2, (int)out[0]);
  EXPECT_EQ(5, (int)out[1]);
  EXPECT_EQ(9, (int)out[2]);
}

TEST(KeyTokenRules, Validity) {
  const int64_t now = 1700000000;
  const char *err = nullptr;
  auto check = [&](int64_t nb, int64_t na, Vkey__V1__KeyType t) {
    Vkey__V1__Validity v = VKEY__V1__VALIDITY__INIT;
    v.not_before = nb;
    v.not_after = na;
    return vk_keytoken_check_validity(&err, &v, t, now);
  };
  const auto owner = VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER;
  const auto temp = VKEY__V1__KEY_TYPE__KEY_TYPE_TEMPORARY;
  EXPECT_EQ(0, vk_keytoken_check_validity(&err, nullptr, owner, now));
  EXPECT_EQ(0, check(0, 0, owner));
  EXPECT_EQ(0, check(now - 10, now + 3600, temp));
  EXPECT_EQ(0, check(0, now + 10 * 365 * 86400, owner));
  EXPECT_EQ(VK_EINVAL, check(now + 100, now + 50, owner));  // reversed
  EXPECT_EQ(VK_EINVAL, check(now + 100, now + 100, owner));
  EXPECT_EQ(VK_EINVAL, check(0, now - 1, owner));  // already over
  EXPECT_EQ(VK_EINVAL, check(0, now + 11 * 365 * 86400, owner));
  EXPECT_EQ(VK_EINVAL, check(now + 11 * 365 * 86400, 0, owner));
  EXPECT_EQ(VK_EINVAL, check(-1, 0, owner));
  EXPECT_EQ(VK_EINVAL, check(0, 0, temp));  // temporary needs an end
  EXPECT_EQ(VK_EINVAL, vk_keytoken_check_validity(&err, nullptr, temp, now));
}

TEST(KeyTokenRules, MaxUses) {
  const char *err = nullptr;
  uint32_t uses = 99;
  const auto one = VKEY__V1__KEY_TYPE__KEY_TYPE_ONE_TIME;
  const auto shared = VKEY__V1__KEY_TYPE__KEY_TYPE_SHARED;
  EXPECT_EQ(0, vk_keytoken_check_max_uses(&uses, &err, one, 0));
  EXPECT_EQ(1u, uses);
  EXPECT_EQ(0, vk_keytoken_check_max_uses(&uses, &err, one, 1));
  EXPECT_EQ(1u, uses);
  EXPECT_EQ(VK_EINVAL, vk_keytoken_check_max_uses(&uses, &err, one, 2));
  EXPECT_EQ(0, vk_keytoken_check_max_uses(&uses, &err, shared, 0));
  EXPECT_EQ(0u, uses);
  EXPECT_EQ(0, vk_keytoken_check_max_uses(&uses, &err, shared, 5));
  EXPECT_EQ(5u, uses);
  EXPECT_EQ(VK_EINVAL, vk_keytoken_check_max_uses(&uses, &err, shared,
                                                  VK_KEYTOKEN_MAX_USES + 1));
}

TEST(KeyTokenRules, TypeValid) {
  EXPECT_FALSE(vk_keytoken_type_valid(0));
  for (int t = 1; t <= 5; t++) {
    EXPECT_TRUE(vk_keytoken_type_valid(t));
  }
  EXPECT_FALSE(vk_keytoken_type_valid(6));
  EXPECT_FALSE(vk_keytoken_type_valid(-1));
}

}  // namespace
