// workload.c: see workload.h. Requests are packed with protobuf-c, the
// server's own library: session tags cover SHA-256 of the request as
// protobuf-c packs it, and vkeyd re-packs what it parsed to check them.
#include "workload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/curve25519.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "common.h"
#include "vkey/v1/authorization.pb-c.h"
#include "vkey/v1/common.pb-c.h"
#include "vkey/v1/keys.pb-c.h"
#include "vkey/v1/vehicle.pb-c.h"
#include "vkey/v1/verify.pb-c.h"

enum {
  kChallengeLen = 32,
  kNonceLen = 16,
  // expires_at_ms of a session call: the service accepts up to 60 s ahead.
  kSessionRequestTtlMs = 30 * 1000,
};

void vk_bench_fleet_cleanup(vk_bench_fleet_t *f) {
  if (f->vehicles != NULL) {
    for (uint32_t i = 0; i < f->n; i++) {
      vk_bench_vehicle_t *v = &f->vehicles[i];
      free(v->owner_key.claims);
      vk_bench_p256_cleanup(&v->phone_p256);
      if (v->mac_keyed) {
        HMAC_CTX_cleanup(&v->mac);
      }
    }
    OPENSSL_cleanse(f->vehicles, f->n * sizeof(*f->vehicles));
    free(f->vehicles);
  }
  if (f->cold != NULL) {
    for (uint32_t i = 0; i < f->n_cold; i++) {
      free(f->cold[i].claims);
    }
    free(f->cold);
  }
  OPENSSL_cleanse(f, sizeof(*f));
}

// pack_into packs `m` into `out` (replacing its contents).
static int pack_into(vk_bench_buf_t *out, const ProtobufCMessage *m) {
  size_t len = protobuf_c_message_get_packed_size(m);
  out->len = 0;
  if (len > VK_BENCH_MAX_MESSAGE) {
    return VK_ETOOBIG;
  }
  if (out->data == NULL || out->cap < len) {
    uint8_t *p = realloc(out->data, len > 0 ? len : 1);
    if (p == NULL) {
      return VK_ENOMEM;
    }
    out->data = p;
    out->cap = len > 0 ? len : 1;
  }
  out->len = protobuf_c_message_pack(m, out->data);
  return VK_OK;
}

// pack_framed writes `m` with its 5-byte gRPC prefix into `out`
// (replacing its contents): a body ready to send.
static int pack_framed(vk_bench_buf_t *out, const ProtobufCMessage *m) {
  size_t len = protobuf_c_message_get_packed_size(m);
  out->len = 0;
  if (len > VK_BENCH_MAX_MESSAGE - 5) {
    return VK_ETOOBIG;
  }
  if (out->data == NULL || out->cap < len + 5) {
    uint8_t *p = realloc(out->data, len + 5);
    if (p == NULL) {
      return VK_ENOMEM;
    }
    out->data = p;
    out->cap = len + 5;
  }
  vk_bench_grpc_frame(out->data, len);
  out->len = 5 + protobuf_c_message_pack(m, out->data + 5);
  return VK_OK;
}

int vk_bench_build_verify(vk_bench_buf_t *out, const char *vin,
                          const vk_bench_key_t *key, uint32_t function,
                          const uint8_t *challenge, size_t challenge_len,
                          int64_t timestamp_ms, const uint8_t *phone_sig,
                          size_t phone_sig_len) {
  // protobuf-c's fields are not const; pack only reads them.
  Vkey__V1__SignedKey sk = VKEY__V1__SIGNED_KEY__INIT;
  sk.claims = (ProtobufCBinaryData){key->claims_len, key->claims};
  sk.signature = (ProtobufCBinaryData){64, (uint8_t *)key->sig};
  Vkey__V1__VerifyKeyItem item = VKEY__V1__VERIFY_KEY_ITEM__INIT;
  item.key = &sk;
  item.function = (Vkey__V1__VehicleFunction)function;
  item.challenge = (ProtobufCBinaryData){challenge_len, (uint8_t *)challenge};
  item.timestamp_ms = timestamp_ms;
  item.phone_signature =
      (ProtobufCBinaryData){phone_sig_len, (uint8_t *)phone_sig};
  Vkey__V1__VerifyKeyRequest req = VKEY__V1__VERIFY_KEY_REQUEST__INIT;
  req.vin = (char *)vin;
  req.item = &item;
  return pack_into(out, &req.base);
}

int vk_bench_build_check(vk_bench_buf_t *out, char *hdr, size_t hdr_cap,
                         size_t *out_hdr_len, vk_bench_vehicle_t *v,
                         const char *key_id, uint64_t counter,
                         int64_t expires_at_ms) {
  char *ids[1] = {(char *)key_id};
  Vkey__V1__CheckKeyStatusRequest req =
      VKEY__V1__CHECK_KEY_STATUS_REQUEST__INIT;
  req.vin = (char *)v->vin;
  req.n_key_ids = 1;
  req.key_ids = ids;
  int rv = pack_into(out, &req.base);
  if (rv != VK_OK) {
    return rv;
  }
  return vk_bench_sign_session_call(hdr, hdr_cap, out_hdr_len, v,
                                    VK_BENCH_PATH_CHECK, out, counter,
                                    expires_at_ms);
}

int vk_bench_sign_session_call(char *hdr, size_t hdr_cap, size_t *out_hdr_len,
                               vk_bench_vehicle_t *v, const char *path,
                               const vk_bench_buf_t *body, uint64_t counter,
                               int64_t expires_at_ms) {
  if (!v->mac_keyed) {
    HMAC_CTX_init(&v->mac);
    v->mac_keyed = 1;
    if (vk_bench_session_mac(&v->mac, v->mac_key) != VK_OK) {
      return VK_EIO;
    }
  }
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(body->data, body->len, digest);
  uint8_t tag[32];
  vk_bench_session_tag(tag, &v->mac, v->vin, path, v->epoch, counter,
                       expires_at_ms, digest);
  uint8_t auth[96];
  size_t auth_len;
  int rv = vk_bench_session_auth(auth, sizeof(auth), &auth_len, v->epoch,
                                 counter, expires_at_ms, tag);
  if (rv != VK_OK) {
    return rv;
  }
  *out_hdr_len = vk_bench_b64(hdr, hdr_cap, auth, auth_len, 0);
  return *out_hdr_len > 0 ? VK_OK : VK_ETOOBIG;
}

int vk_bench_build_authorize(vk_bench_buf_t *out, const char *request_id,
                             const char *vin, const char *recipient,
                             int64_t now_s) {
  Vkey__V1__VehicleFunction fn =
      VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_UNLOCK;
  Vkey__V1__Validity validity = VKEY__V1__VALIDITY__INIT;
  validity.not_after = now_s + VK_BENCH_SHARE_VALIDITY_S;
  Vkey__V1__AuthorizeRequest req = VKEY__V1__AUTHORIZE_REQUEST__INIT;
  req.request_id = (char *)request_id;
  req.vin = (char *)vin;
  req.n_functions = 1;
  req.functions = &fn;
  req.key_type = VKEY__V1__KEY_TYPE__KEY_TYPE_SHARED;
  req.validity = &validity;
  req.recipient_user_id = (char *)recipient;
  req.code_set_ttl_seconds = VK_BENCH_SHARE_TTL_S;
  return pack_into(out, &req.base);
}

int vk_bench_build_redeem(vk_bench_buf_t *out, const char **out_why,
                          const uint8_t *resp, size_t resp_len, uint32_t seed,
                          const uint8_t holder_pub[32]) {
  Vkey__V1__AuthorizeResponse *ar =
      vkey__v1__authorize_response__unpack(NULL, resp_len, resp);
  // A grant id is "<VIN>.<16 hex>": anything much longer is not one, and
  // would not fit the service's 64-character request ids.
  if (ar == NULL || ar->grant == NULL || ar->grant->grant_id[0] == '\0' ||
      strlen(ar->grant->grant_id) > 48 || ar->code_set[0] == '\0') {
    *out_why = "AuthorizeResponse has no code set or grant id";
    vkey__v1__authorize_response__free_unpacked(ar, NULL);
    return VK_EPROTO;
  }
  char rid[64];
  snprintf(rid, sizeof(rid), "vkb%u-r-%s", seed, ar->grant->grant_id);
  Vkey__V1__RedeemRequest req = VKEY__V1__REDEEM_REQUEST__INIT;
  req.request_id = rid;
  req.code_set = ar->code_set;
  req.holder_key_algorithm = VKEY__V1__KEY_ALGORITHM__KEY_ALGORITHM_ED25519;
  req.holder_public_key = (ProtobufCBinaryData){32, (uint8_t *)holder_pub};
  int rv = pack_framed(out, &req.base);
  vkey__v1__authorize_response__free_unpacked(ar, NULL);
  return rv;
}

int vk_bench_share_next(void *ctx, vk_bench_buf_t *out, vk_bench_req_t *out_req,
                        const char **out_why, const char *path,
                        const uint8_t *msg, size_t len) {
  const vk_bench_fleet_t *f = ctx;
  if (strcmp(path, VK_BENCH_PATH_AUTHORIZE) != 0) {
    return VK_ENOTFOUND;  // the Redeem ends the operation
  }
  int rv = vk_bench_build_redeem(out, out_why, msg, len, f->seed,
                                 f->recipient_phone.pub);
  if (rv != VK_OK) {
    return rv;
  }
  out_req->path = VK_BENCH_PATH_REDEEM;
  out_req->body = out->data;
  out_req->body_len = out->len;
  out_req->hdr = (vk_bench_hdr_t){"authorization", f->recipient_auth,
                                  f->recipient_auth_len};
  return VK_OK;
}

int vk_bench_slot_set(vk_bench_slot_t *slot, const char *path,
                      const uint8_t *msg, size_t msg_len, const char *hdr_name,
                      const char *hdr, size_t hdr_len) {
  if (msg_len + 5 + hdr_len > sizeof(slot->data)) {
    return VK_ETOOBIG;
  }
  vk_bench_grpc_frame(slot->data, msg_len);
  memcpy(slot->data + 5, msg, msg_len);
  slot->body_len = (uint32_t)(msg_len + 5);
  slot->vehicle = 0;
  slot->path = path;
  slot->hdr_name = hdr_name;
  slot->hdr_len = (uint32_t)hdr_len;
  if (hdr_len > 0) {
    memcpy(slot->data + slot->body_len, hdr, hdr_len);
  }
  return VK_OK;
}

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// next_index returns the next index of this thread's share of `n` items
// (first, first + stride, ...), wrapping around; -1 if the share is empty.
static int64_t next_index(vk_bench_work_ctx_t *w, uint32_t n, int wrap) {
  uint64_t idx = (uint64_t)w->first + (uint64_t)w->cursor * w->stride;
  if (idx >= n) {
    if (!wrap || w->first >= n) {
      return -1;
    }
    w->cursor = 0;
    w->wraps++;
    idx = w->first;
  }
  w->cursor++;
  return (int64_t)idx;
}

// make_verify builds a verification. The vehicle asks in its session, with
// a challenge bound to the call; verify-cold's requests come from a cloud
// service (the source adds the operator's token) with random challenges.
static int make_verify(vk_bench_work_ctx_t *w, vk_bench_slot_t *slot) {
  vk_bench_fleet_t *f = w->fleet;
  const vk_bench_key_t *key;
  int in_session = w->work != VK_BENCH_WORK_VERIFY_COLD;
  if (!in_session) {
    int64_t i = next_index(w, f->n_cold, 1);
    if (i < 0) {
      return VK_EINVAL;
    }
    key = &f->cold[i];
  } else {
    int64_t i = next_index(w, f->n, 1);
    if (i < 0) {
      return VK_EINVAL;
    }
    key = &f->vehicles[i].owner_key;
  }
  vk_bench_vehicle_t *v = &f->vehicles[key->vehicle];
  uint8_t challenge[VK_BENCH_BOUND_CHALLENGE_LEN];
  size_t challenge_len = kChallengeLen;
  uint64_t counter = 0;
  if (in_session) {
    if (!v->has_session) {
      return VK_EINVAL;
    }
    // Counters only grow, in ring order (make_check says why that holds).
    counter = ++v->counter;
    challenge_len = vk_bench_bound_challenge(challenge, sizeof(challenge),
                                             v->epoch, counter, 0);
  } else {
    RAND_bytes(challenge, challenge_len);
  }
  const uint32_t function = VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_UNLOCK;
  int64_t ts = wall_ms();
  uint8_t msg[256];
  size_t msg_len =
      vk_bench_proof_message(msg, sizeof(msg), challenge, challenge_len, v->vin,
                             function, (uint64_t)ts);
  uint8_t sig[VK_BENCH_MAX_SIG];
  size_t sig_len = 64;
  if (msg_len == 0) {
    return VK_ETOOBIG;
  }
  if (f->phone_alg == VK_BENCH_ALG_P256 &&
      w->work == VK_BENCH_WORK_VERIFY_P256) {
    int rv = vk_bench_p256_sign(sig, &sig_len, &v->phone_p256, msg, msg_len);
    if (rv != VK_OK) {
      return rv;
    }
  } else {
    ED25519_sign(sig, msg, msg_len, v->phone.priv);
  }
  int rv = vk_bench_build_verify(&w->buf, v->vin, key, function, challenge,
                                 challenge_len, ts, sig, sig_len);
  if (rv != VK_OK) {
    return rv;
  }
  if (!in_session) {
    return vk_bench_slot_set(slot, VK_BENCH_PATH_VERIFY, w->buf.data,
                             w->buf.len, NULL, NULL, 0);
  }
  char hdr[256];
  size_t hdr_len;
  int64_t exp = ts + v->clock_offset_ms + kSessionRequestTtlMs;
  rv = vk_bench_sign_session_call(hdr, sizeof(hdr), &hdr_len, v,
                                  VK_BENCH_PATH_VERIFY, &w->buf, counter, exp);
  if (rv == VK_OK) {
    rv = vk_bench_slot_set(slot, VK_BENCH_PATH_VERIFY, w->buf.data, w->buf.len,
                           "x-vkey-session-bin", hdr, hdr_len);
    slot->vehicle = key->vehicle + 1;
  }
  return rv;
}

static int make_check(vk_bench_work_ctx_t *w, vk_bench_slot_t *slot) {
  vk_bench_fleet_t *f = w->fleet;
  int64_t i = next_index(w, f->n, 1);
  if (i < 0 || !f->vehicles[i].has_session) {
    return VK_EINVAL;
  }
  vk_bench_vehicle_t *v = &f->vehicles[i];
  // Counters only grow, and each vehicle belongs to one signer thread: the
  // ring keeps them in order up to the event loop. Requests of one vehicle
  // are `n / signers` requests apart, so the few in flight together stay
  // far inside the service's window of 32.
  uint64_t counter = ++v->counter;
  int64_t exp = wall_ms() + v->clock_offset_ms + kSessionRequestTtlMs;
  char hdr[256];
  size_t hdr_len;
  int rv = vk_bench_build_check(&w->buf, hdr, sizeof(hdr), &hdr_len, v,
                                v->owner_key.key_id, counter, exp);
  if (rv == VK_OK) {
    rv = vk_bench_slot_set(slot, VK_BENCH_PATH_CHECK, w->buf.data, w->buf.len,
                           "x-vkey-session-bin", hdr, hdr_len);
    slot->vehicle = (uint32_t)i + 1;
  }
  return rv;
}

// make_apply: the owner asks for one more owner key for a vehicle, with a
// request id of its own (as a phone sends one).
static int make_apply(vk_bench_work_ctx_t *w, vk_bench_slot_t *slot) {
  vk_bench_fleet_t *f = w->fleet;
  int64_t i = next_index(w, f->n, 1);
  if (i < 0) {
    return VK_EINVAL;
  }
  const vk_bench_vehicle_t *v = &f->vehicles[i];
  char rid[64];
  snprintf(rid, sizeof(rid), "vkb%u-a-%s-%u-%llu", f->seed, f->run_id, w->first,
           (unsigned long long)w->made);
  Vkey__V1__ApplyKeyRequest req = VKEY__V1__APPLY_KEY_REQUEST__INIT;
  req.request_id = rid;
  req.key_type = VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER;
  req.user_id = f->user_id;
  req.vin = (char *)v->vin;
  req.holder_key_algorithm = VKEY__V1__KEY_ALGORITHM__KEY_ALGORITHM_ED25519;
  req.holder_public_key = (ProtobufCBinaryData){32, (uint8_t *)v->phone.pub};
  int rv = pack_into(&w->buf, &req.base);
  if (rv == VK_OK) {
    rv = vk_bench_slot_set(slot, VK_BENCH_PATH_APPLY, w->buf.data, w->buf.len,
                           "authorization", f->user_auth, f->user_auth_len);
  }
  return rv;
}

// make_share: the owner authorizes the vehicle's recipient; the loop sends
// the Redeem when the answer comes (vk_bench_share_next).
static int make_share(vk_bench_work_ctx_t *w, vk_bench_slot_t *slot) {
  vk_bench_fleet_t *f = w->fleet;
  int64_t i = next_index(w, f->n, 1);
  if (i < 0) {
    return VK_EINVAL;
  }
  char rid[64];
  snprintf(rid, sizeof(rid), "vkb%u-s-%s-%u-%llu", f->seed, f->run_id, w->first,
           (unsigned long long)w->made);
  int rv = vk_bench_build_authorize(&w->buf, rid, f->vehicles[i].vin,
                                    f->recipient_id, wall_ms() / 1000);
  if (rv == VK_OK) {
    rv = vk_bench_slot_set(slot, VK_BENCH_PATH_AUTHORIZE, w->buf.data,
                           w->buf.len, "authorization", f->user_auth,
                           f->user_auth_len);
  }
  return rv;
}

// make_mixed deals VK_BENCH_MIX_* requests of each kind per 100, spread
// evenly (i * 37 mod 100 visits every residue).
static int make_mixed(vk_bench_work_ctx_t *w, vk_bench_slot_t *slot) {
  uint64_t k = (w->made * 37) % 100;
  if (k < VK_BENCH_MIX_VERIFY) {
    return make_verify(w, slot);
  }
  if (k < VK_BENCH_MIX_VERIFY + VK_BENCH_MIX_CHECK) {
    return make_check(w, slot);
  }
  return make_apply(w, slot);
}

static int make_connect(vk_bench_work_ctx_t *w, vk_bench_slot_t *slot) {
  vk_bench_fleet_t *f = w->fleet;
  int64_t i = next_index(w, f->n, 0);
  if (i < 0) {
    return VK_ENOTFOUND;  // one channel per vehicle: done
  }
  const vk_bench_vehicle_t *v = &f->vehicles[i];
  uint8_t nonce[kNonceLen];
  RAND_bytes(nonce, sizeof(nonce));
  uint8_t a[192];
  size_t a_len;
  int rv = vk_bench_vehicle_assertion(a, sizeof(a), &a_len, &v->key, v->vin,
                                      VK_BENCH_PATH_OPEN_CHANNEL,
                                      wall_ms() / 1000, nonce, sizeof(nonce));
  if (rv != VK_OK) {
    return rv;
  }
  char hdr[272];
  size_t hdr_len = vk_bench_b64(hdr, sizeof(hdr), a, a_len, 0);
  Vkey__V1__OpenChannelRequest req = VKEY__V1__OPEN_CHANNEL_REQUEST__INIT;
  req.vin = (char *)v->vin;
  rv = hdr_len > 0 ? pack_into(&w->buf, &req.base) : VK_ETOOBIG;
  if (rv == VK_OK) {
    rv = vk_bench_slot_set(slot, VK_BENCH_PATH_OPEN_CHANNEL, w->buf.data,
                           w->buf.len, "x-vkey-vehicle-bin", hdr, hdr_len);
  }
  slot->tag = (uint64_t)i;
  return rv;
}

int vk_bench_work_make(void *ctx, vk_bench_slot_t *slot) {
  vk_bench_work_ctx_t *w = ctx;
  int rv;
  switch (w->work) {
    case VK_BENCH_WORK_VERIFY:
    case VK_BENCH_WORK_VERIFY_P256:
    case VK_BENCH_WORK_VERIFY_COLD:
      rv = make_verify(w, slot);
      break;
    case VK_BENCH_WORK_APPLY:
      rv = make_apply(w, slot);
      break;
    case VK_BENCH_WORK_MIXED:
      rv = make_mixed(w, slot);
      break;
    case VK_BENCH_WORK_SHARE:
      rv = make_share(w, slot);
      break;
    case VK_BENCH_WORK_CHECK:
      rv = make_check(w, slot);
      break;
    case VK_BENCH_WORK_CONNECT:
      rv = make_connect(w, slot);
      break;
    default:
      return VK_EINVAL;
  }
  if (rv == VK_OK) {
    slot->made_ns = mono_ns();
    w->made++;
  }
  return rv;
}

void vk_bench_work_ctx_cleanup(vk_bench_work_ctx_t *w) {
  vk_bench_buf_cleanup(&w->buf);
}
