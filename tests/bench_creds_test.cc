// Tests for bench/creds.c and bench/workload.c: every credential and
// signed message vkey-bench builds equals, byte for byte, what the
// reference tests/integration/vkcreds.py builds for the same inputs, and
// every request parses back with the protobuf-c parsers vkeyd uses.
//
// The expected values were printed by vkcreds.py (PYTHONPATH=<build>/gen/
// python:tests/integration):
//   issuer = vkcreds.Ed25519Key(bytes(range(32)))
//   vkcreds.mint_token(issuer, "alice", role="user", lifetime=3600,
//                      now=1700000000)
//   vkcreds.mint_token(issuer, "ops", role="operator", lifetime=600,
//                      now=1700000000)
//   vkcreds.proof_message(bytes(range(100, 132)), "1HGCM82633A004352", 1,
//                         1700000000123)
//   veh = vkcreds.Ed25519Key(bytes([7] * 32))
//   vkcreds.vehicle_assertion(veh, "1HGCM82633A004352",
//       "/vkey.v1.VehicleService/OpenChannel", now=1700000000,
//       nonce=bytes(range(16)))
//   HKDF(SHA256, 32, salt=bytes(range(200, 216)), info=SESSION_CONTEXT +
//        vin).derive(bytes(range(1, 33)))
//   VehicleSession.auth(verify_pb2, "/vkey.v1.VerifyService/CheckKeyStatus",
//       CheckKeyStatusRequest(vin=vin, key_ids=[vin + ".0123456789abcdef"]),
//       counter=42, expires_at_ms=1700000030000)
#include <gtest/gtest.h>

#include <openssl/curve25519.h>
#include <openssl/ecdsa.h>
#include <openssl/sha.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "common.h"
#include "creds.h"
#include "scenario.h"
#include "signer.h"
#include "vkey/v1/authorization.pb-c.h"
#include "vkey/v1/identity.pb-c.h"
#include "vkey/v1/keys.pb-c.h"
#include "vkey/v1/vehicle.pb-c.h"
#include "vkey/v1/verify.pb-c.h"
#include "workload.h"
}

namespace {

const char kVin[] = "1HGCM82633A004352";

std::string Hex(const uint8_t *p, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; i++) {
    s += kDigits[p[i] >> 4];
    s += kDigits[p[i] & 15];
  }
  return s;
}

std::vector<uint8_t> Unhex(const std::string &h) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(h.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::vector<uint8_t> Range(int from, int to) {
  std::vector<uint8_t> v;
  for (int i = from; i < to; i++) {
    v.push_back(static_cast<uint8_t>(i));
  }
  return v;
}

// Standard base64 decoding (with padding), for checking header values.
std::vector<uint8_t> B64Decode(const std::string &s) {
  static const std::string kAlpha =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::vector<uint8_t> out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    if (c == '=') {
      break;
    }
    size_t v = kAlpha.find(c);
    EXPECT_NE(std::string::npos, v) << s;
    acc = acc << 6 | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>(acc >> bits));
    }
  }
  return out;
}

TEST(BenchCreds, Base64) {
  char out[16];
  const uint8_t foob[] = {'f', 'o', 'o', 'b'};
  EXPECT_EQ(0u, vk_bench_b64(out, sizeof(out), foob, 0, 0));
  EXPECT_STREQ("", out);
  EXPECT_EQ(4u, vk_bench_b64(out, sizeof(out), foob, 1, 0));
  EXPECT_STREQ("Zg==", out);
  EXPECT_EQ(2u, vk_bench_b64(out, sizeof(out), foob, 1, 1));
  EXPECT_STREQ("Zg", out);
  EXPECT_EQ(4u, vk_bench_b64(out, sizeof(out), foob, 2, 0));
  EXPECT_STREQ("Zm8=", out);
  EXPECT_EQ(8u, vk_bench_b64(out, sizeof(out), foob, 4, 0));
  EXPECT_STREQ("Zm9vYg==", out);
  const uint8_t high[] = {0xfb, 0xff};
  vk_bench_b64(out, sizeof(out), high, 2, 0);
  EXPECT_STREQ("+/8=", out);
  vk_bench_b64(out, sizeof(out), high, 2, 1);
  EXPECT_STREQ("-_8", out);
  // The text and its NUL must fit.
  EXPECT_EQ(0u, vk_bench_b64(out, 8, foob, 4, 0));
  EXPECT_EQ(8u, vk_bench_b64(out, 9, foob, 4, 0));
}

TEST(BenchCreds, KeyIdAndTokensMatchTheReference) {
  std::vector<uint8_t> seed = Range(0, 32);
  vk_bench_ed25519_t issuer;
  vk_bench_ed25519_from_seed(&issuer, seed.data());
  EXPECT_EQ("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
            Hex(issuer.pub, 32));
  EXPECT_STREQ("56475aa75463474c", issuer.key_id);
  char tok[512];
  size_t len = 0;
  ASSERT_EQ(VK_OK, vk_bench_token_mint(tok, sizeof(tok), &len, &issuer, "alice",
                                       VK_BENCH_ROLE_USER, 1700000000, 3600));
  EXPECT_EQ(
      "CgVhbGljZRABGIDiz6oGIJD-z6oGKhA1NjQ3NWFhNzU0NjM0NzRj."
      "BAl8e21DrcF1oDIyQDDLbzymajxSYgfsVqfGnZzCMpyI5mYoSUdWfzRimmxk_"
      "sPUj-jXvnADGT3BXY4QyEywDQ",
      std::string(tok, len));
  ASSERT_EQ(VK_OK,
            vk_bench_token_mint(tok, sizeof(tok), &len, &issuer, "ops",
                                VK_BENCH_ROLE_OPERATOR, 1700000000, 600));
  EXPECT_EQ(
      "CgNvcHMQAhiA4s-qBiDY5s-qBioQNTY0NzVhYTc1NDYzNDc0Yw."
      "HLXefibzORrRCYt3tYCVeib17ALynfEGuWvlyPzBSU98uRwKZfZ3oOETL47frnQ486O_"
      "9HqzFDnaLuIbNL_qDQ",
      std::string(tok, len));
  EXPECT_EQ(VK_EINVAL, vk_bench_token_mint(tok, sizeof(tok), &len, &issuer,
                                           "ops", 3, 1700000000, 600));
  EXPECT_EQ(VK_EINVAL, vk_bench_token_mint(tok, sizeof(tok), &len, &issuer, "",
                                           VK_BENCH_ROLE_USER, 0, 600));
  EXPECT_EQ(VK_ETOOBIG, vk_bench_token_mint(tok, 40, &len, &issuer, "ops",
                                            VK_BENCH_ROLE_USER, 0, 600));
}

TEST(BenchCreds, SeedFile) {
  char path[] = "/tmp/vkbench-seed-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const char text[] =
      "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";
  ASSERT_EQ(static_cast<ssize_t>(sizeof(text) - 1),
            write(fd, text, sizeof(text) - 1));
  close(fd);
  uint8_t seed[32];
  ASSERT_EQ(VK_OK, vk_bench_seed_load(seed, path));
  EXPECT_EQ(Range(0, 32), std::vector<uint8_t>(seed, seed + 32));
  FILE *f = fopen(path, "w");
  fputs("not hex", f);
  fclose(f);
  EXPECT_EQ(VK_EPROTO, vk_bench_seed_load(seed, path));
  unlink(path);
  EXPECT_EQ(VK_ENOTFOUND, vk_bench_seed_load(seed, path));
}

TEST(BenchCreds, VinsAreValidDistinctAndStable) {
  char a[18], b[18], c[18];
  vk_bench_vin(a, 1, 0);
  vk_bench_vin(b, 1, 1);
  vk_bench_vin(c, 2, 0);
  EXPECT_STREQ("VKBENCHAB00000000", a);
  EXPECT_STRNE(a, b);
  EXPECT_STRNE(a, c);
  for (const char *v : {a, b, c}) {
    ASSERT_EQ(17u, strlen(v));
    for (const char *p = v; *p != '\0'; p++) {
      bool ok = (*p >= '0' && *p <= '9') ||
                (*p >= 'A' && *p <= 'Z' && *p != 'I' && *p != 'O' && *p != 'Q');
      EXPECT_TRUE(ok) << v;
    }
  }
  uint8_t s1[32], s2[32];
  vk_bench_derive(s1, "phone", 1, 5);
  vk_bench_derive(s2, "phone", 1, 5);
  EXPECT_EQ(0, memcmp(s1, s2, 32));
  vk_bench_derive(s2, "phone", 1, 6);
  EXPECT_NE(0, memcmp(s1, s2, 32));
  vk_bench_derive(s2, "vehicle", 1, 5);
  EXPECT_NE(0, memcmp(s1, s2, 32));
}

TEST(BenchCreds, ProofMessageMatchesTheReference) {
  std::vector<uint8_t> chal = Range(100, 132);
  uint8_t msg[256];
  size_t len = vk_bench_proof_message(msg, sizeof(msg), chal.data(),
                                      chal.size(), kVin, 1, 1700000000123ull);
  EXPECT_EQ(
      "766b65792d70726f6f662d7631006465666768696a6b6c6d6e6f707172737475767778"
      "797a7b7c7d7e7f80818283314847434d38323633334130303433353200000000010000"
      "018bcfe5687b",
      Hex(msg, len));
  EXPECT_EQ(0u, vk_bench_proof_message(msg, 20, chal.data(), chal.size(), kVin,
                                       1, 0));
}

TEST(BenchCreds, VehicleAssertionMatchesTheReference) {
  std::vector<uint8_t> seed(32, 7);
  vk_bench_ed25519_t veh;
  vk_bench_ed25519_from_seed(&veh, seed.data());
  EXPECT_EQ("ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c",
            Hex(veh.pub, 32));
  std::vector<uint8_t> nonce = Range(0, 16);
  uint8_t out[192];
  size_t len = 0;
  ASSERT_EQ(VK_OK,
            vk_bench_vehicle_assertion(out, sizeof(out), &len, &veh, kVin,
                                       "/vkey.v1.VehicleService/OpenChannel",
                                       1700000000, nonce.data(), nonce.size()));
  EXPECT_EQ(
      "0a11314847434d3832363333413030343335321080e2cfaa061a1000010203040506"
      "0708090a0b0c0d0e0f2240c346af784f025d73643092c159bd22287f50dfce0e5c90"
      "32445253109ceeb7339983341f327203b784d897589ba895698d31e799b7ea780e61"
      "47a967c30c1308",
      Hex(out, len));
  EXPECT_EQ(VK_ETOOBIG,
            vk_bench_vehicle_assertion(out, 50, &len, &veh, kVin, "/x", 1,
                                       nonce.data(), nonce.size()));
}

TEST(BenchCreds, SessionKeyTagAndAuthMatchTheReference) {
  std::vector<uint8_t> shared = Range(1, 33);
  std::vector<uint8_t> epoch = Range(200, 216);
  vk_bench_vehicle_t v;
  memset(&v, 0, sizeof(v));
  memcpy(v.vin, kVin, sizeof(kVin));
  memcpy(v.epoch, epoch.data(), 16);
  ASSERT_EQ(VK_OK,
            vk_bench_session_key(v.mac_key, shared.data(), v.epoch, kVin));
  EXPECT_EQ("e7a7e32699ac6c5dabd527ac3cc6927c77872afe48a49b4db7eafc2162eaa8ca",
            Hex(v.mac_key, 32));
  vk_bench_buf_t req = {};
  char hdr[256];
  size_t hdr_len = 0;
  std::string key_id = std::string(kVin) + ".0123456789abcdef";
  ASSERT_EQ(VK_OK, vk_bench_build_check(&req, hdr, sizeof(hdr), &hdr_len, &v,
                                        key_id.c_str(), 42, 1700000030000));
  EXPECT_EQ(
      "0a11314847434d3832363333413030343335321222314847434d383236333341303034"
      "3335322e30313233343536373839616263646566",
      Hex(req.data, req.len));
  std::vector<uint8_t> auth = B64Decode(std::string(hdr, hdr_len));
  EXPECT_EQ(
      "0a10c8c9cacbcccdcecfd0d1d2d3d4d5d6d7102a18b0ba97ffbc312220556a20d3777c"
      "85eb0f47597bd3c2da60fd411ad596213e673296cdd1645bb452",
      Hex(auth.data(), auth.size()));
  // The tag by itself, from the request's digest.
  uint8_t digest[32], tag[32];
  SHA256(req.data, req.len, digest);
  HMAC_CTX mac;
  HMAC_CTX_init(&mac);
  ASSERT_EQ(VK_OK, vk_bench_session_mac(&mac, v.mac_key));
  vk_bench_session_tag(tag, &mac, kVin, "/vkey.v1.VerifyService/CheckKeyStatus",
                       v.epoch, 42, 1700000030000, digest);
  EXPECT_EQ("556a20d3777c85eb0f47597bd3c2da60fd411ad596213e673296cdd1645bb452",
            Hex(tag, 32));
  // The keyed context rewinds: the same request gives the same tag again.
  vk_bench_session_tag(tag, &mac, kVin, "/vkey.v1.VerifyService/CheckKeyStatus",
                       v.epoch, 42, 1700000030000, digest);
  EXPECT_EQ("556a20d3777c85eb0f47597bd3c2da60fd411ad596213e673296cdd1645bb452",
            Hex(tag, 32));
  HMAC_CTX_cleanup(&mac);
  if (v.mac_keyed) {
    HMAC_CTX_cleanup(&v.mac);
  }
  vk_bench_buf_cleanup(&req);
}

// A SessionInfo signed as vkeyd signs it, checked as a vehicle checks it.
TEST(BenchCreds, SessionInfoCheck) {
  std::vector<uint8_t> seed = Range(0, 32);
  vk_bench_ed25519_t signer;
  vk_bench_ed25519_from_seed(&signer, seed.data());
  uint8_t epoch[16], server_pub[32], vehicle_pub[32];
  memset(epoch, 9, sizeof(epoch));
  memset(server_pub, 3, sizeof(server_pub));
  memset(vehicle_pub, 4, sizeof(vehicle_pub));
  Vkey__V1__SessionInfo info = VKEY__V1__SESSION_INFO__INIT;
  info.vin = const_cast<char *>(kVin);
  info.epoch = {16, epoch};
  info.server_public_key = {32, server_pub};
  info.vehicle_public_key = {32, vehicle_pub};
  info.counter = 7;
  info.clock_time_ms = 123456;
  uint8_t msg[300];
  memcpy(msg, "vkey-session-v1", 16);  // with its 0x00
  size_t len = vkey__v1__session_info__pack(&info, msg + 16);
  uint8_t sig[64];
  ED25519_sign(sig, msg, 16 + len, signer.priv);
  uint8_t got_epoch[16], got_server[32];
  uint64_t counter = 0;
  int64_t clock = 0;
  const char *why = nullptr;
  ASSERT_EQ(VK_OK, vk_bench_session_info_check(
                       got_epoch, got_server, &counter, &clock, &why, msg + 16,
                       len, sig, 64, signer.pub, kVin, vehicle_pub));
  EXPECT_EQ(0, memcmp(got_epoch, epoch, 16));
  EXPECT_EQ(0, memcmp(got_server, server_pub, 32));
  EXPECT_EQ(7u, counter);
  EXPECT_EQ(123456, clock);
  EXPECT_EQ(VK_EPROTO,
            vk_bench_session_info_check(
                got_epoch, got_server, &counter, &clock, &why, msg + 16, len,
                sig, 64, signer.pub, "5YJ3E1EA7KF317000", vehicle_pub));
  EXPECT_STREQ("session info names another vehicle", why);
  uint8_t other[32];
  memset(other, 5, sizeof(other));
  EXPECT_EQ(VK_EPROTO, vk_bench_session_info_check(
                           got_epoch, got_server, &counter, &clock, &why,
                           msg + 16, len, sig, 64, signer.pub, kVin, other));
  sig[0] ^= 1;
  EXPECT_EQ(VK_EPROTO,
            vk_bench_session_info_check(got_epoch, got_server, &counter, &clock,
                                        &why, msg + 16, len, sig, 64,
                                        signer.pub, kVin, vehicle_pub));
  EXPECT_STREQ("session info signature does not verify", why);
}

TEST(BenchCreds, P256KeysAreDeterministicAndSign) {
  uint8_t seed[32];
  vk_bench_derive(seed, "phone-p256", 1, 0);
  vk_bench_p256_t a, b;
  ASSERT_EQ(VK_OK, vk_bench_p256_from_seed(&a, seed));
  ASSERT_EQ(VK_OK, vk_bench_p256_from_seed(&b, seed));
  EXPECT_EQ(0x04, a.pub[0]);
  EXPECT_EQ(0, memcmp(a.pub, b.pub, 65));
  const uint8_t msg[] = "vkey";
  uint8_t sig[VK_BENCH_MAX_SIG];
  size_t sig_len = 0;
  ASSERT_EQ(VK_OK, vk_bench_p256_sign(sig, &sig_len, &a, msg, sizeof(msg)));
  uint8_t digest[32];
  SHA256(msg, sizeof(msg), digest);
  EXPECT_EQ(1, ECDSA_verify(0, digest, 32, sig, sig_len, b.key));
  vk_bench_p256_cleanup(&a);
  vk_bench_p256_cleanup(&b);
  vk_bench_p256_cleanup(&b);  // safe twice
}

// --- workload: what the signer threads build ------------------------------

// A fleet of `n` vehicles with made-up keys (no server involved).
struct Fleet {
  vk_bench_fleet_t f;
  explicit Fleet(uint32_t n, int alg = VK_BENCH_ALG_ED25519) {
    memset(&f, 0, sizeof(f));
    f.n = n;
    f.phone_alg = alg;
    f.seed = 3;
    snprintf(f.user_id, sizeof(f.user_id), "owner");
    snprintf(f.run_id, sizeof(f.run_id), "0123456789abcdef");
    f.operator_auth_len = static_cast<size_t>(
        snprintf(f.operator_auth, sizeof(f.operator_auth), "Bearer op"));
    f.user_auth_len = static_cast<size_t>(
        snprintf(f.user_auth, sizeof(f.user_auth), "Bearer user"));
    snprintf(f.recipient_id, sizeof(f.recipient_id), "friend");
    f.recipient_auth_len = static_cast<size_t>(
        snprintf(f.recipient_auth, sizeof(f.recipient_auth), "Bearer friend"));
    uint8_t rseed[32];
    vk_bench_derive(rseed, "recipient-phone", 3, 0);
    vk_bench_ed25519_from_seed(&f.recipient_phone, rseed);
    f.vehicles =
        static_cast<vk_bench_vehicle_t *>(calloc(n, sizeof(*f.vehicles)));
    for (uint32_t i = 0; i < n; i++) {
      vk_bench_vehicle_t *v = &f.vehicles[i];
      uint8_t seed[32];
      vk_bench_vin(v->vin, 3, i);
      vk_bench_derive(seed, "vehicle", 3, i);
      vk_bench_ed25519_from_seed(&v->key, seed);
      vk_bench_derive(seed, "phone", 3, i);
      vk_bench_ed25519_from_seed(&v->phone, seed);
      if (alg == VK_BENCH_ALG_P256) {
        vk_bench_derive(seed, "phone-p256", 3, i);
        EXPECT_EQ(VK_OK, vk_bench_p256_from_seed(&v->phone_p256, seed));
      }
      vk_bench_key_t *k = &v->owner_key;
      k->vehicle = i;
      snprintf(k->key_id, sizeof(k->key_id), "%s.%016x", v->vin, i);
      k->claims = static_cast<uint8_t *>(malloc(8));
      memcpy(k->claims, "claims!", 8);
      k->claims_len = 8;
      memset(k->sig, static_cast<int>(i), 64);
      v->has_session = 1;
      memset(v->epoch, 1, sizeof(v->epoch));
      memset(v->mac_key, 2, sizeof(v->mac_key));
    }
  }
  ~Fleet() {
    vk_bench_fleet_cleanup(&f);
  }
};

TEST(BenchWorkload, VerifyRequestsParseAndTheirProofsVerify) {
  for (int alg : {VK_BENCH_ALG_ED25519, VK_BENCH_ALG_P256}) {
    Fleet fl(3, alg);
    vk_bench_work_ctx_t w = {};
    w.fleet = &fl.f;
    w.work = alg == VK_BENCH_ALG_P256 ? VK_BENCH_WORK_VERIFY_P256
                                      : VK_BENCH_WORK_VERIFY;
    w.first = 1;
    w.stride = 2;  // this thread's share: vehicle 1 only
    vk_bench_slot_t slot;
    vk_bench_vehicle_t *v = &fl.f.vehicles[1];
    for (uint64_t round = 0; round < 3; round++) {
      ASSERT_EQ(VK_OK, vk_bench_work_make(&w, &slot));
      EXPECT_STREQ(VK_BENCH_PATH_VERIFY, slot.path);
      // The vehicle asks in its session, at its next counter.
      EXPECT_STREQ("x-vkey-session-bin", slot.hdr_name);
      std::vector<uint8_t> auth_bytes = B64Decode(
          std::string(reinterpret_cast<const char *>(slot.data) + slot.body_len,
                      slot.hdr_len));
      Vkey__V1__SessionAuth *auth = vkey__v1__session_auth__unpack(
          nullptr, auth_bytes.size(), auth_bytes.data());
      ASSERT_NE(nullptr, auth);
      EXPECT_EQ(round + 1, auth->counter);
      EXPECT_EQ(round + 1, v->counter);
      const uint8_t *msg;
      size_t len;
      const char *why;
      ASSERT_EQ(VK_OK, vk_bench_grpc_unframe(&msg, &len, &why, slot.data,
                                             slot.body_len));
      uint8_t digest[32], tag[32];
      SHA256(msg, len, digest);
      HMAC_CTX mac;
      HMAC_CTX_init(&mac);
      ASSERT_EQ(VK_OK, vk_bench_session_mac(&mac, v->mac_key));
      vk_bench_session_tag(tag, &mac, v->vin, VK_BENCH_PATH_VERIFY, v->epoch,
                           auth->counter, auth->expires_at_ms, digest);
      HMAC_CTX_cleanup(&mac);
      ASSERT_EQ(32u, auth->tag.len);
      EXPECT_EQ(Hex(tag, 32), Hex(auth->tag.data, 32));
      Vkey__V1__VerifyKeyRequest *req =
          vkey__v1__verify_key_request__unpack(nullptr, len, msg);
      ASSERT_NE(nullptr, req);
      EXPECT_STREQ(v->vin, req->vin);
      ASSERT_NE(nullptr, req->item);
      ASSERT_NE(nullptr, req->item->key);
      EXPECT_EQ(
          std::string("claims!", 8),
          std::string(reinterpret_cast<char *>(req->item->key->claims.data),
                      req->item->key->claims.len));
      EXPECT_EQ(VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_UNLOCK,
                req->item->function);
      // The challenge is bound to this call: prefix, epoch, counter, item 0.
      ASSERT_EQ(static_cast<size_t>(VK_BENCH_BOUND_CHALLENGE_LEN),
                req->item->challenge.len);
      std::vector<uint8_t> chal(
          req->item->challenge.data,
          req->item->challenge.data + req->item->challenge.len);
      std::string want = "vkey-challenge-v1" +
                         std::string(reinterpret_cast<char *>(v->epoch), 16) +
                         std::string(7, '\0') +
                         std::string(1, static_cast<char>(round + 1)) +
                         std::string(1, '\0');
      EXPECT_EQ(
          Hex(reinterpret_cast<const uint8_t *>(want.data()), want.size()),
          Hex(chal.data(), chal.size()));
      vkey__v1__session_auth__free_unpacked(auth, nullptr);
      uint8_t pm[256];
      size_t pm_len = vk_bench_proof_message(
          pm, sizeof(pm), chal.data(), chal.size(), v->vin, 1,
          static_cast<uint64_t>(req->item->timestamp_ms));
      if (alg == VK_BENCH_ALG_P256) {
        uint8_t digest[32];
        SHA256(pm, pm_len, digest);
        EXPECT_EQ(
            1, ECDSA_verify(0, digest, 32, req->item->phone_signature.data,
                            req->item->phone_signature.len, v->phone_p256.key));
      } else {
        ASSERT_EQ(64u, req->item->phone_signature.len);
        EXPECT_EQ(1, ED25519_verify(pm, pm_len, req->item->phone_signature.data,
                                    v->phone.pub));
      }
      vkey__v1__verify_key_request__free_unpacked(req, nullptr);
    }
    EXPECT_EQ(3u, w.made);
    vk_bench_work_ctx_cleanup(&w);
  }
}

TEST(BenchWorkload, CheckRequestsCarryIncreasingCounters) {
  Fleet fl(2);
  vk_bench_work_ctx_t w = {};
  w.fleet = &fl.f;
  w.work = VK_BENCH_WORK_CHECK;
  w.first = 0;
  w.stride = 1;
  vk_bench_slot_t slot;
  uint64_t last[2] = {0, 0};
  for (int i = 0; i < 6; i++) {
    ASSERT_EQ(VK_OK, vk_bench_work_make(&w, &slot));
    EXPECT_STREQ(VK_BENCH_PATH_CHECK, slot.path);
    ASSERT_STREQ("x-vkey-session-bin", slot.hdr_name);
    std::vector<uint8_t> auth = B64Decode(
        std::string(reinterpret_cast<const char *>(slot.data + slot.body_len),
                    slot.hdr_len));
    Vkey__V1__SessionAuth *a =
        vkey__v1__session_auth__unpack(nullptr, auth.size(), auth.data());
    ASSERT_NE(nullptr, a);
    Vkey__V1__CheckKeyStatusRequest *req =
        vkey__v1__check_key_status_request__unpack(nullptr, slot.body_len - 5,
                                                   slot.data + 5);
    ASSERT_NE(nullptr, req);
    int vi = strcmp(req->vin, fl.f.vehicles[0].vin) == 0 ? 0 : 1;
    EXPECT_EQ(i % 2, vi);  // round-robin over the share
    EXPECT_GT(a->counter, last[vi]);
    last[vi] = a->counter;
    ASSERT_EQ(1u, req->n_key_ids);
    EXPECT_STREQ(fl.f.vehicles[vi].owner_key.key_id, req->key_ids[0]);
    // The tag covers this very request.
    uint8_t digest[32], tag[32];
    SHA256(slot.data + 5, slot.body_len - 5, digest);
    HMAC_CTX mac;
    HMAC_CTX_init(&mac);
    ASSERT_EQ(VK_OK, vk_bench_session_mac(&mac, fl.f.vehicles[vi].mac_key));
    vk_bench_session_tag(tag, &mac, req->vin, VK_BENCH_PATH_CHECK,
                         fl.f.vehicles[vi].epoch, a->counter, a->expires_at_ms,
                         digest);
    HMAC_CTX_cleanup(&mac);
    ASSERT_EQ(32u, a->tag.len);
    EXPECT_EQ(0, memcmp(tag, a->tag.data, 32));
    vkey__v1__session_auth__free_unpacked(a, nullptr);
    vkey__v1__check_key_status_request__free_unpacked(req, nullptr);
  }
  EXPECT_EQ(3u, fl.f.vehicles[0].counter);
  vk_bench_work_ctx_cleanup(&w);
}

TEST(BenchWorkload, ConnectBuildsOneChannelPerVehicleThenStops) {
  Fleet fl(3);
  vk_bench_work_ctx_t w = {};
  w.fleet = &fl.f;
  w.work = VK_BENCH_WORK_CONNECT;
  w.first = 0;
  w.stride = 1;
  vk_bench_slot_t slot;
  for (uint32_t i = 0; i < 3; i++) {
    ASSERT_EQ(VK_OK, vk_bench_work_make(&w, &slot));
    EXPECT_EQ(i, slot.tag);
    EXPECT_STREQ(VK_BENCH_PATH_OPEN_CHANNEL, slot.path);
    ASSERT_STREQ("x-vkey-vehicle-bin", slot.hdr_name);
    std::vector<uint8_t> bin = B64Decode(
        std::string(reinterpret_cast<const char *>(slot.data + slot.body_len),
                    slot.hdr_len));
    Vkey__V1__VehicleAssertion *a =
        vkey__v1__vehicle_assertion__unpack(nullptr, bin.size(), bin.data());
    ASSERT_NE(nullptr, a);
    EXPECT_STREQ(fl.f.vehicles[i].vin, a->vin);
    // The signature verifies with the vehicle's key over the reference's
    // message for OpenChannel.
    uint8_t re[192];
    size_t re_len;
    ASSERT_EQ(VK_OK, vk_bench_vehicle_assertion(
                         re, sizeof(re), &re_len, &fl.f.vehicles[i].key, a->vin,
                         VK_BENCH_PATH_OPEN_CHANNEL, a->timestamp,
                         a->nonce.data, a->nonce.len));
    EXPECT_EQ(std::vector<uint8_t>(re, re + re_len), bin);
    Vkey__V1__OpenChannelRequest *req = vkey__v1__open_channel_request__unpack(
        nullptr, slot.body_len - 5, slot.data + 5);
    ASSERT_NE(nullptr, req);
    EXPECT_STREQ(fl.f.vehicles[i].vin, req->vin);
    vkey__v1__open_channel_request__free_unpacked(req, nullptr);
    vkey__v1__vehicle_assertion__free_unpacked(a, nullptr);
  }
  EXPECT_EQ(VK_ENOTFOUND, vk_bench_work_make(&w, &slot));
  vk_bench_work_ctx_cleanup(&w);
}

TEST(BenchWorkload, ColdKeysAreUsedOnceEachThenWrap) {
  Fleet fl(2);
  fl.f.n_cold = 3;
  fl.f.cold = static_cast<vk_bench_key_t *>(calloc(3, sizeof(vk_bench_key_t)));
  for (uint32_t i = 0; i < 3; i++) {
    fl.f.cold[i] = fl.f.vehicles[i % 2].owner_key;
    fl.f.cold[i].claims = static_cast<uint8_t *>(malloc(1));
    fl.f.cold[i].claims[0] = static_cast<uint8_t>('a' + i);
    fl.f.cold[i].claims_len = 1;
  }
  vk_bench_work_ctx_t w = {};
  w.fleet = &fl.f;
  w.work = VK_BENCH_WORK_VERIFY_COLD;
  w.first = 0;
  w.stride = 1;
  vk_bench_slot_t slot;
  std::string seen;
  for (int i = 0; i < 4; i++) {
    ASSERT_EQ(VK_OK, vk_bench_work_make(&w, &slot));
    Vkey__V1__VerifyKeyRequest *req = vkey__v1__verify_key_request__unpack(
        nullptr, slot.body_len - 5, slot.data + 5);
    ASSERT_NE(nullptr, req);
    seen += static_cast<char>(req->item->key->claims.data[0]);
    vkey__v1__verify_key_request__free_unpacked(req, nullptr);
  }
  EXPECT_EQ("abca", seen);
  EXPECT_EQ(1u, w.wraps);
  vk_bench_work_ctx_cleanup(&w);
}

TEST(BenchWorkload, ApplyAndTheMixCarryTheirOwnCredentials) {
  Fleet fl(4);
  vk_bench_work_ctx_t w = {};
  w.fleet = &fl.f;
  w.work = VK_BENCH_WORK_APPLY;
  w.first = 0;
  w.stride = 1;
  vk_bench_slot_t slot;
  ASSERT_EQ(VK_OK, vk_bench_work_make(&w, &slot));
  EXPECT_STREQ(VK_BENCH_PATH_APPLY, slot.path);
  EXPECT_STREQ("authorization", slot.hdr_name);
  EXPECT_EQ(
      "Bearer user",
      std::string(reinterpret_cast<const char *>(slot.data) + slot.body_len,
                  slot.hdr_len));
  Vkey__V1__ApplyKeyRequest *req = vkey__v1__apply_key_request__unpack(
      nullptr, slot.body_len - 5, slot.data + 5);
  ASSERT_NE(nullptr, req);
  EXPECT_STREQ("owner", req->user_id);
  EXPECT_STREQ(fl.f.vehicles[0].vin, req->vin);
  EXPECT_EQ(VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER, req->key_type);
  EXPECT_EQ(
      std::string(reinterpret_cast<const char *>(fl.f.vehicles[0].phone.pub),
                  32),
      std::string(reinterpret_cast<const char *>(req->holder_public_key.data),
                  req->holder_public_key.len));
  std::string first_id = req->request_id;
  vkey__v1__apply_key_request__free_unpacked(req, nullptr);
  ASSERT_EQ(VK_OK, vk_bench_work_make(&w, &slot));
  req = vkey__v1__apply_key_request__unpack(nullptr, slot.body_len - 5,
                                            slot.data + 5);
  ASSERT_NE(nullptr, req);
  EXPECT_NE(first_id, req->request_id);  // each request a new key
  vkey__v1__apply_key_request__free_unpacked(req, nullptr);
  vk_bench_work_ctx_cleanup(&w);

  vk_bench_work_ctx_t m = {};
  m.fleet = &fl.f;
  m.work = VK_BENCH_WORK_MIXED;
  m.first = 0;
  m.stride = 1;
  int verify = 0, check = 0, apply = 0;
  for (int i = 0; i < 200; i++) {
    ASSERT_EQ(VK_OK, vk_bench_work_make(&m, &slot));
    std::string hdr(reinterpret_cast<const char *>(slot.data) + slot.body_len,
                    slot.hdr_len);
    if (strcmp(slot.path, VK_BENCH_PATH_VERIFY) == 0) {
      verify++;
      EXPECT_STREQ("x-vkey-session-bin", slot.hdr_name);
    } else if (strcmp(slot.path, VK_BENCH_PATH_CHECK) == 0) {
      check++;
      EXPECT_STREQ("x-vkey-session-bin", slot.hdr_name);
    } else {
      apply++;
      EXPECT_EQ("Bearer user", hdr);
    }
  }
  EXPECT_EQ(2 * VK_BENCH_MIX_VERIFY, verify);
  EXPECT_EQ(2 * VK_BENCH_MIX_CHECK, check);
  EXPECT_EQ(2 * VK_BENCH_MIX_APPLY, apply);
  vk_bench_work_ctx_cleanup(&m);
}

// An AuthorizeResponse as vkeyd answers one, packed.
std::vector<uint8_t> AuthorizeResponse(const char *code_set,
                                       const char *grant_id) {
  Vkey__V1__Grant g = VKEY__V1__GRANT__INIT;
  g.grant_id = const_cast<char *>(grant_id);
  g.status = VKEY__V1__GRANT_STATUS__GRANT_STATUS_OUTSTANDING;
  Vkey__V1__AuthorizeResponse r = VKEY__V1__AUTHORIZE_RESPONSE__INIT;
  r.code_set = const_cast<char *>(code_set);
  r.grant = &g;
  std::vector<uint8_t> out(vkey__v1__authorize_response__get_packed_size(&r));
  vkey__v1__authorize_response__pack(&r, out.data());
  return out;
}

TEST(BenchWorkload, ShareAuthorizesTheRecipientWithTheOwnersToken) {
  Fleet fl(2);
  vk_bench_work_ctx_t w = {};
  w.fleet = &fl.f;
  w.work = VK_BENCH_WORK_SHARE;
  w.first = 0;
  w.stride = 1;
  vk_bench_slot_t slot;
  std::string last_id;
  int64_t now = time(nullptr);
  for (uint32_t i = 0; i < 4; i++) {
    ASSERT_EQ(VK_OK, vk_bench_work_make(&w, &slot));
    EXPECT_STREQ(VK_BENCH_PATH_AUTHORIZE, slot.path);
    EXPECT_STREQ("authorization", slot.hdr_name);
    EXPECT_EQ(
        "Bearer user",
        std::string(reinterpret_cast<const char *>(slot.data) + slot.body_len,
                    slot.hdr_len));
    const uint8_t *msg;
    size_t len;
    const char *why;
    ASSERT_EQ(VK_OK, vk_bench_grpc_unframe(&msg, &len, &why, slot.data,
                                           slot.body_len));
    Vkey__V1__AuthorizeRequest *req =
        vkey__v1__authorize_request__unpack(nullptr, len, msg);
    ASSERT_NE(nullptr, req);
    EXPECT_STREQ(fl.f.vehicles[i % 2].vin, req->vin);  // round-robin
    ASSERT_EQ(1u, req->n_functions);
    EXPECT_EQ(VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_UNLOCK,
              req->functions[0]);
    EXPECT_EQ(VKEY__V1__KEY_TYPE__KEY_TYPE_SHARED, req->key_type);
    EXPECT_STREQ("friend", req->recipient_user_id);
    EXPECT_EQ(static_cast<uint32_t>(VK_BENCH_SHARE_TTL_S),
              req->code_set_ttl_seconds);
    ASSERT_NE(nullptr, req->validity);
    EXPECT_GE(req->validity->not_after, now + VK_BENCH_SHARE_VALIDITY_S);
    EXPECT_LE(req->validity->not_after, now + VK_BENCH_SHARE_VALIDITY_S + 5);
    EXPECT_EQ(0u, req->max_uses);
    EXPECT_LE(strlen(req->request_id), 64u);  // the service's limit
    EXPECT_NE(last_id, req->request_id);      // a new grant each time
    last_id = req->request_id;
    vkey__v1__authorize_request__free_unpacked(req, nullptr);
  }
  vk_bench_work_ctx_cleanup(&w);
}

TEST(BenchWorkload, ShareRedeemsTheCodeSetAsTheRecipient) {
  Fleet fl(1);
  const char grant[] = "1HGCM82633A004352.0123456789abcdef";
  std::vector<uint8_t> resp = AuthorizeResponse("vkc1.AAAA", grant);
  vk_bench_buf_t out = {};
  vk_bench_req_t req = {};
  const char *why = nullptr;
  ASSERT_EQ(VK_OK, vk_bench_share_next(&fl.f, &out, &req, &why,
                                       VK_BENCH_PATH_AUTHORIZE, resp.data(),
                                       resp.size()));
  EXPECT_STREQ(VK_BENCH_PATH_REDEEM, req.path);
  EXPECT_STREQ("authorization", req.hdr.name);
  EXPECT_EQ("Bearer friend", std::string(req.hdr.value, req.hdr.value_len));
  ASSERT_EQ(out.data, req.body);
  ASSERT_EQ(out.len, req.body_len);
  const uint8_t *msg;
  size_t len;
  ASSERT_EQ(VK_OK,
            vk_bench_grpc_unframe(&msg, &len, &why, req.body, req.body_len));
  Vkey__V1__RedeemRequest *r =
      vkey__v1__redeem_request__unpack(nullptr, len, msg);
  ASSERT_NE(nullptr, r);
  EXPECT_EQ(std::string("vkb3-r-") + grant, r->request_id);
  EXPECT_LE(strlen(r->request_id), 64u);
  EXPECT_STREQ("vkc1.AAAA", r->code_set);
  EXPECT_EQ(VKEY__V1__KEY_ALGORITHM__KEY_ALGORITHM_ED25519,
            r->holder_key_algorithm);
  ASSERT_EQ(32u, r->holder_public_key.len);
  EXPECT_EQ(0, memcmp(fl.f.recipient_phone.pub, r->holder_public_key.data, 32));
  vkey__v1__redeem_request__free_unpacked(r, nullptr);

  // The Redeem ends the operation.
  EXPECT_EQ(VK_ENOTFOUND,
            vk_bench_share_next(&fl.f, &out, &req, &why, VK_BENCH_PATH_REDEEM,
                                resp.data(), resp.size()));
  // An answer without a code set or a grant gives no Redeem.
  for (const auto &bad :
       {AuthorizeResponse("", grant), AuthorizeResponse("vkc1.AAAA", "")}) {
    why = nullptr;
    EXPECT_EQ(VK_EPROTO, vk_bench_share_next(&fl.f, &out, &req, &why,
                                             VK_BENCH_PATH_AUTHORIZE,
                                             bad.data(), bad.size()));
    EXPECT_NE(nullptr, why);
  }
  const uint8_t garbage[] = {0xff, 0xff, 0xff};
  EXPECT_EQ(VK_EPROTO,
            vk_bench_share_next(&fl.f, &out, &req, &why,
                                VK_BENCH_PATH_AUTHORIZE, garbage, 3));
  vk_bench_buf_cleanup(&out);
}

TEST(BenchWorkload, ShareResponseChecks) {
  const char *why = nullptr;
  std::vector<uint8_t> a = AuthorizeResponse("vkc1.AAAA", "g");
  EXPECT_EQ(VK_OK, vk_bench_check_authorize(&why, a.data(), a.size()));
  a = AuthorizeResponse("AAAA", "g");
  EXPECT_EQ(VK_EPROTO, vk_bench_check_authorize(&why, a.data(), a.size()));
  EXPECT_STREQ("AuthorizeResponse has no printable code set", why);
  EXPECT_EQ(VK_EPROTO, vk_bench_check_authorize(&why, a.data(), 0));

  uint8_t sig[64] = {0};
  Vkey__V1__SignedKey sk = VKEY__V1__SIGNED_KEY__INIT;
  sk.signature = {sizeof(sig), sig};
  Vkey__V1__KeyRecord rec = VKEY__V1__KEY_RECORD__INIT;
  rec.key = &sk;
  rec.status = VKEY__V1__KEY_STATUS__KEY_STATUS_ACTIVE;
  Vkey__V1__KeyRecord *recs[1] = {&rec};
  Vkey__V1__Grant g = VKEY__V1__GRANT__INIT;
  g.status = VKEY__V1__GRANT_STATUS__GRANT_STATUS_REDEEMED;
  Vkey__V1__RedeemResponse rr = VKEY__V1__REDEEM_RESPONSE__INIT;
  rr.grant = &g;
  rr.n_keys = 1;
  rr.keys = recs;
  uint8_t buf[256];
  size_t len = vkey__v1__redeem_response__pack(&rr, buf);
  EXPECT_EQ(VK_OK, vk_bench_check_redeem(&why, buf, len));
  rec.status = VKEY__V1__KEY_STATUS__KEY_STATUS_SUSPENDED;
  len = vkey__v1__redeem_response__pack(&rr, buf);
  EXPECT_EQ(VK_EPROTO, vk_bench_check_redeem(&why, buf, len));
  EXPECT_STREQ("a redeemed key is not ACTIVE", why);
  rec.status = VKEY__V1__KEY_STATUS__KEY_STATUS_ACTIVE;
  rr.n_keys = 0;  // a redeem without keys is a failure
  len = vkey__v1__redeem_response__pack(&rr, buf);
  EXPECT_EQ(VK_EPROTO, vk_bench_check_redeem(&why, buf, len));
  EXPECT_STREQ("the redeem gave no keys", why);
  rr.n_keys = 1;
  g.status = VKEY__V1__GRANT_STATUS__GRANT_STATUS_OUTSTANDING;
  len = vkey__v1__redeem_response__pack(&rr, buf);
  EXPECT_EQ(VK_EPROTO, vk_bench_check_redeem(&why, buf, len));
  EXPECT_STREQ("the grant is not REDEEMED", why);

  // The share scenario judges each call by its method.
  const vk_bench_scenario_t *sc = vk_bench_scenario_find("share");
  ASSERT_NE(nullptr, sc);
  ASSERT_TRUE(sc->available);
  a = AuthorizeResponse("vkc1.AAAA", "g");
  EXPECT_EQ(VK_OK,
            sc->check(&why, VK_BENCH_PATH_AUTHORIZE, a.data(), a.size()));
  EXPECT_EQ(VK_EPROTO,
            sc->check(&why, VK_BENCH_PATH_REDEEM, a.data(), a.size()));
}

TEST(BenchWorkload, ResponseChecks) {
  const char *why = nullptr;
  Vkey__V1__VerifyKeyResult res = VKEY__V1__VERIFY_KEY_RESULT__INIT;
  Vkey__V1__VerifyKeyResponse resp = VKEY__V1__VERIFY_KEY_RESPONSE__INIT;
  resp.result = &res;
  uint8_t buf[64];
  res.decision = VKEY__V1__DECISION__DECISION_ALLOW;
  size_t len = vkey__v1__verify_key_response__pack(&resp, buf);
  EXPECT_EQ(VK_OK, vk_bench_check_verify(&why, buf, len));
  res.decision = VKEY__V1__DECISION__DECISION_DENY;
  res.reason = VKEY__V1__DENY_REASON__DENY_REASON_STALE_PROOF;
  len = vkey__v1__verify_key_response__pack(&resp, buf);
  EXPECT_EQ(VK_EPROTO, vk_bench_check_verify(&why, buf, len));
  EXPECT_STREQ("DENY_REASON_STALE_PROOF", why);
  EXPECT_EQ(VK_EPROTO, vk_bench_check_verify(&why, buf, 0));  // no result

  Vkey__V1__KeyStatusEntry e = VKEY__V1__KEY_STATUS_ENTRY__INIT;
  Vkey__V1__KeyStatusEntry *ep = &e;
  Vkey__V1__CheckKeyStatusResponse cr =
      VKEY__V1__CHECK_KEY_STATUS_RESPONSE__INIT;
  cr.n_keys = 1;
  cr.keys = &ep;
  e.key_id = const_cast<char *>("k");
  e.status = VKEY__V1__KEY_STATUS__KEY_STATUS_ACTIVE;
  len = vkey__v1__check_key_status_response__pack(&cr, buf);
  EXPECT_EQ(VK_OK, vk_bench_check_status(&why, buf, len));
  e.status = VKEY__V1__KEY_STATUS__KEY_STATUS_REVOKED;
  len = vkey__v1__check_key_status_response__pack(&cr, buf);
  EXPECT_EQ(VK_EPROTO, vk_bench_check_status(&why, buf, len));
  EXPECT_STREQ("KEY_STATUS_REVOKED", why);
}

// --- the signer ring
// ----------------------------------------------------------

TEST(BenchSigner, RingIsFifoAndHonoursItsLimit) {
  vk_bench_ring_t *r = nullptr;
  ASSERT_EQ(VK_OK, vk_bench_ring_new(&r, 5));
  EXPECT_EQ(8u, vk_bench_ring_capacity(r));
  EXPECT_EQ(nullptr, vk_bench_ring_front(r));
  for (uint64_t i = 0; i < 3; i++) {
    vk_bench_slot_t *s = vk_bench_ring_reserve(r, 3);
    ASSERT_NE(nullptr, s);
    s->tag = i;
    vk_bench_ring_commit(r);
  }
  EXPECT_EQ(nullptr, vk_bench_ring_reserve(r, 3));    // the limit
  EXPECT_NE(nullptr, vk_bench_ring_reserve(r, 100));  // capped at 8
  EXPECT_EQ(3u, vk_bench_ring_level(r));
  for (uint64_t i = 0; i < 3; i++) {
    const vk_bench_slot_t *s = vk_bench_ring_front(r);
    ASSERT_NE(nullptr, s);
    EXPECT_EQ(i, s->tag);
    vk_bench_ring_pop(r);
  }
  EXPECT_EQ(nullptr, vk_bench_ring_front(r));
  // Around the end of the array many times.
  for (uint64_t i = 0; i < 100; i++) {
    vk_bench_slot_t *s = vk_bench_ring_reserve(r, 8);
    ASSERT_NE(nullptr, s);
    s->tag = i;
    vk_bench_ring_commit(r);
    EXPECT_EQ(i, vk_bench_ring_front(r)->tag);
    vk_bench_ring_pop(r);
  }
  vk_bench_ring_free(r);
  vk_bench_ring_free(nullptr);
  EXPECT_EQ(VK_EINVAL, vk_bench_ring_new(&r, (1u << 24) + 1));
}

// A signer thread fills its ring in order, then stops when told; one whose
// builder runs out ends by itself.
struct Counter {
  uint64_t next = 0;
  uint64_t stop_at = UINT64_MAX;
};

int CountingMake(void *ctx, vk_bench_slot_t *slot) {
  Counter *c = static_cast<Counter *>(ctx);
  if (c->next == c->stop_at) {
    return VK_ENOTFOUND;
  }
  slot->tag = c->next++;
  return VK_OK;
}

TEST(BenchSigner, ThreadFillsTheRingInOrder) {
  Counter c;
  vk_bench_signer_t *s = nullptr;
  vk_bench_signer_opts_t kept_full = {64, 16, 0, 0};
  ASSERT_EQ(VK_OK, vk_bench_signer_start(&s, &kept_full, CountingMake, &c));
  vk_bench_ring_t *r = vk_bench_signer_ring(s);
  uint64_t want = 0;
  while (want < 1000) {
    const vk_bench_slot_t *slot = vk_bench_ring_front(r);
    if (slot == nullptr) {
      continue;  // the signer is behind: spin
    }
    ASSERT_EQ(want, slot->tag);
    vk_bench_ring_pop(r);
    want++;
  }
  vk_bench_signer_stats_t st;
  vk_bench_signer_stats(s, &st);
  EXPECT_GE(st.made, 1000u);
  EXPECT_LE(st.made, 1016u);  // never more than the limit ahead
  EXPECT_EQ(VK_OK, st.error);
  vk_bench_signer_stop(s);
  vk_bench_signer_stop(nullptr);

  Counter few;
  few.stop_at = 5;
  vk_bench_signer_opts_t background = {64, 64, 0, 1};
  ASSERT_EQ(VK_OK, vk_bench_signer_start(&s, &background, CountingMake, &few));
  do {
    vk_bench_signer_stats(s, &st);
  } while (!st.finished);
  EXPECT_EQ(5u, st.made);
  EXPECT_EQ(5u, vk_bench_ring_level(vk_bench_signer_ring(s)));
  vk_bench_signer_stop(s);
}

// A prebuilt run's signer makes its total and stops, however much room the
// ring gets afterwards.
TEST(BenchSigner, ThreadWithATotalBuildsItThenStops) {
  Counter c;
  vk_bench_signer_t *s = nullptr;
  vk_bench_signer_opts_t prebuilt = {32, 32, 20, 0};
  ASSERT_EQ(VK_OK, vk_bench_signer_start(&s, &prebuilt, CountingMake, &c));
  vk_bench_signer_stats_t st;
  do {
    vk_bench_signer_stats(s, &st);
  } while (!st.finished);
  vk_bench_ring_t *r = vk_bench_signer_ring(s);
  EXPECT_EQ(20u, st.made);
  EXPECT_EQ(VK_OK, st.error);
  for (uint64_t i = 0; i < 20; i++) {
    const vk_bench_slot_t *slot = vk_bench_ring_front(r);
    ASSERT_NE(nullptr, slot);
    EXPECT_EQ(i, slot->tag);
    vk_bench_ring_pop(r);
  }
  EXPECT_EQ(nullptr, vk_bench_ring_front(r));
  vk_bench_signer_stats(s, &st);
  EXPECT_EQ(20u, st.made);  // the thread has ended: nothing more comes
  EXPECT_EQ(20u, c.next);
  vk_bench_signer_stop(s);
}

}  // namespace
