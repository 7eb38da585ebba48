// provision.c: see provision.h. Each step is one batch of calls
// (rpc.h), pipelined over a few connections; a step's results are checked
// before the next starts.
#include "provision.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/curve25519.h>
#include <openssl/mem.h>
#include <openssl/rand.h>

#include "common.h"
#include "vkey/v1/keys.pb-c.h"
#include "vkey/v1/registry.pb-c.h"
#include "vkey/v1/verify.pb-c.h"

enum {
  kWindow = 256,                // calls in flight per step
  kTokenLifetimeS = 12 * 3600,  // covers any run
  kGrpcAlreadyExists = 6,
};

typedef struct {
  const vk_bench_provision_t *p;
  vk_bench_fleet_t *f;
  char run_id[17];  // names this run's verify-cold keys
  // Results of the current step.
  uint64_t ok;
  uint64_t existed;
  uint64_t failed;
  char first_error[256];
  // OpenSession: the vehicles' ephemeral X25519 keys.
  uint8_t (*x_priv)[32];
  uint8_t (*x_pub)[32];
} prov_t;

static void note(prov_t *pv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void note(prov_t *pv, const char *fmt, ...) {
  if (pv->p->quiet) {
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  fputs("vkey-bench: provisioning: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static void step_fail(prov_t *pv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void step_fail(prov_t *pv, const char *fmt, ...) {
  pv->failed++;
  if (pv->first_error[0] == '\0') {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pv->first_error, sizeof(pv->first_error), fmt, ap);
    va_end(ap);
  }
}

// pack_msg packs `m` into the request's message buffer.
static int pack_msg(vk_bench_rpc_req_t *out, const ProtobufCMessage *m) {
  size_t len = protobuf_c_message_get_packed_size(m);
  uint8_t small[1024];
  uint8_t *tmp = len <= sizeof(small) ? small : malloc(len);
  if (tmp == NULL) {
    return VK_ENOMEM;
  }
  protobuf_c_message_pack(m, tmp);
  out->msg.len = 0;
  int rv = vk_bench_buf_append(&out->msg, tmp, len);
  if (tmp != small) {
    free(tmp);
  }
  return rv;
}

static void set_auth(vk_bench_rpc_req_t *out, const char *value, size_t len) {
  out->hdrs[0] = (vk_bench_hdr_t){"authorization", value, len};
  out->n_hdrs = 1;
}

// A result that is OK, or ALREADY_EXISTS when `exists_ok`.
static int result_ok(prov_t *pv, const char *what, size_t index,
                     const vk_bench_rpc_result_t *res, int exists_ok) {
  if (res->grpc_status == 0) {
    pv->ok++;
    return 1;
  }
  if (exists_ok && res->grpc_status == kGrpcAlreadyExists) {
    pv->existed++;
    return 0;
  }
  step_fail(pv, "%s %zu: %s: %s", what, index,
            res->grpc_status < 0 ? "transport"
                                 : vk_bench_grpc_status_name(res->grpc_status),
            res->message);
  return 0;
}

static int run_step(prov_t *pv, const char *what, size_t n,
                    vk_bench_rpc_make_fn make, vk_bench_rpc_each_fn each,
                    char *err, size_t errlen) {
  pv->ok = pv->existed = pv->failed = 0;
  pv->first_error[0] = '\0';
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rv = vk_bench_rpc_batch(&pv->p->rpc, n, kWindow, make, each, pv);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s =
      (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  if (rv == VK_EUNAVAIL && pv->ok + pv->existed == 0) {
    snprintf(err, errlen, "%s: cannot reach the server: %s", what,
             pv->first_error[0] != '\0' ? pv->first_error : "no connection");
    return VK_EUNAVAIL;
  }
  if (rv != VK_OK && rv != VK_EUNAVAIL) {
    snprintf(err, errlen, "%s: %s", what, vk_strerror(rv));
    return rv;
  }
  if (pv->failed > 0) {
    snprintf(err, errlen, "%s: %llu of %zu failed; first: %s", what,
             (unsigned long long)pv->failed, n, pv->first_error);
    return VK_EPROTO;
  }
  note(pv, "%s: %zu calls in %.1f s (%llu ok, %llu already there)", what, n, s,
       (unsigned long long)pv->ok, (unsigned long long)pv->existed);
  return VK_OK;
}

// --- users and vehicles ----------------------------------------------------

// User 0 is the owner; user 1, when asked for, the recipient of shares.
static int make_user(void *arg, size_t index, vk_bench_rpc_req_t *out) {
  prov_t *pv = arg;
  char rid[64];
  snprintf(rid, sizeof(rid), "vkb%u-%s", pv->p->seed,
           index == 0 ? "user" : "recipient");
  Vkey__V1__RegisterUserRequest req = VKEY__V1__REGISTER_USER_REQUEST__INIT;
  req.request_id = rid;
  req.user_id = index == 0 ? pv->f->user_id : pv->f->recipient_id;
  req.display_name = (char *)"vkey-bench";
  out->path = "/vkey.v1.RegistryService/RegisterUser";
  set_auth(out, pv->f->operator_auth, pv->f->operator_auth_len);
  return pack_msg(out, &req.base);
}

static void done_exists_ok(void *arg, size_t index,
                           const vk_bench_rpc_result_t *res) {
  (void)result_ok(arg, "call", index, res, 1);
}

static int make_vehicle(void *arg, size_t index, vk_bench_rpc_req_t *out) {
  prov_t *pv = arg;
  vk_bench_vehicle_t *v = &pv->f->vehicles[index];
  char rid[64];
  snprintf(rid, sizeof(rid), "vkb%u-veh-%zu", pv->p->seed, index);
  Vkey__V1__RegisterVehicleRequest req =
      VKEY__V1__REGISTER_VEHICLE_REQUEST__INIT;
  req.request_id = rid;
  req.vin = v->vin;
  req.public_key = (ProtobufCBinaryData){32, v->key.pub};
  req.model = (char *)"vkey-bench";
  out->path = "/vkey.v1.RegistryService/RegisterVehicle";
  set_auth(out, pv->f->operator_auth, pv->f->operator_auth_len);
  return pack_msg(out, &req.base);
}

static int make_owner(void *arg, size_t index, vk_bench_rpc_req_t *out) {
  prov_t *pv = arg;
  char rid[64];
  snprintf(rid, sizeof(rid), "vkb%u-own-%zu", pv->p->seed, index);
  Vkey__V1__SetVehicleOwnerRequest req =
      VKEY__V1__SET_VEHICLE_OWNER_REQUEST__INIT;
  req.request_id = rid;
  req.vin = pv->f->vehicles[index].vin;
  req.user_id = pv->f->user_id;
  out->path = "/vkey.v1.RegistryService/SetVehicleOwner";
  set_auth(out, pv->f->operator_auth, pv->f->operator_auth_len);
  return pack_msg(out, &req.base);
}

static void done_ok(void *arg, size_t index, const vk_bench_rpc_result_t *res) {
  (void)result_ok(arg, "call", index, res, 0);
}

// --- keys ------------------------------------------------------------------

// The key of call `index`: an owner key per vehicle, or a cold key.
static vk_bench_key_t *key_of(prov_t *pv, size_t index, int cold) {
  return cold ? &pv->f->cold[index] : &pv->f->vehicles[index].owner_key;
}

static int make_apply(prov_t *pv, size_t index, vk_bench_rpc_req_t *out,
                      int cold) {
  vk_bench_fleet_t *f = pv->f;
  uint32_t vi = cold ? (uint32_t)(index % f->n) : (uint32_t)index;
  vk_bench_vehicle_t *v = &f->vehicles[vi];
  key_of(pv, index, cold)->vehicle = vi;
  char rid[64];
  int p256 = !cold && f->phone_alg == VK_BENCH_ALG_P256;
  if (cold) {
    snprintf(rid, sizeof(rid), "vkb%u-cold-%s-%zu", pv->p->seed, pv->run_id,
             index);
  } else {
    snprintf(rid, sizeof(rid), "vkb%u-key-%s-%zu", pv->p->seed,
             p256 ? "p256" : "ed", index);
  }
  Vkey__V1__ApplyKeyRequest req = VKEY__V1__APPLY_KEY_REQUEST__INIT;
  req.request_id = rid;
  req.key_type = VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER;
  req.user_id = f->user_id;
  req.vin = v->vin;
  req.holder_key_algorithm =
      p256 ? VKEY__V1__KEY_ALGORITHM__KEY_ALGORITHM_ECDSA_P256
           : VKEY__V1__KEY_ALGORITHM__KEY_ALGORITHM_ED25519;
  req.holder_public_key = p256 ? (ProtobufCBinaryData){65, v->phone_p256.pub}
                               : (ProtobufCBinaryData){32, v->phone.pub};
  out->path = "/vkey.v1.KeyService/ApplyKey";
  set_auth(out, f->user_auth, f->user_auth_len);
  return pack_msg(out, &req.base);
}

static int make_owner_key(void *arg, size_t index, vk_bench_rpc_req_t *out) {
  return make_apply(arg, index, out, 0);
}

static int make_cold_key(void *arg, size_t index, vk_bench_rpc_req_t *out) {
  return make_apply(arg, index, out, 1);
}

static void applied(prov_t *pv, size_t index, const vk_bench_rpc_result_t *res,
                    int cold) {
  if (!result_ok(pv, cold ? "ApplyKey (cold)" : "ApplyKey", index, res, 0)) {
    return;
  }
  Vkey__V1__ApplyKeyResponse *resp =
      vkey__v1__apply_key_response__unpack(NULL, res->msg_len, res->msg);
  const Vkey__V1__KeyRecord *rec = resp != NULL ? resp->key : NULL;
  if (rec == NULL || rec->key == NULL || rec->claims == NULL ||
      rec->key->signature.len != 64 ||
      strlen(rec->claims->key_id) != VK_BENCH_KEY_ID_LEN) {
    step_fail(pv, "ApplyKey %zu: the answer has no usable key", index);
  } else if (rec->status != VKEY__V1__KEY_STATUS__KEY_STATUS_ACTIVE) {
    step_fail(pv,
              "ApplyKey %zu: key %s is not active (a previous run's key, "
              "revoked since?): use another --seed",
              index, rec->claims->key_id);
  } else {
    vk_bench_key_t *k = key_of(pv, index, cold);
    k->claims = malloc(rec->key->claims.len);
    if (k->claims == NULL) {
      step_fail(pv, "out of memory");
    } else {
      memcpy(k->claims, rec->key->claims.data, rec->key->claims.len);
      k->claims_len = rec->key->claims.len;
      memcpy(k->sig, rec->key->signature.data, 64);
      memcpy(k->key_id, rec->claims->key_id, VK_BENCH_KEY_ID_LEN + 1);
    }
  }
  vkey__v1__apply_key_response__free_unpacked(resp, NULL);
}

static void done_owner_key(void *arg, size_t index,
                           const vk_bench_rpc_result_t *res) {
  applied(arg, index, res, 0);
}

static void done_cold_key(void *arg, size_t index,
                          const vk_bench_rpc_result_t *res) {
  applied(arg, index, res, 1);
}

// --- the service's signing key and sessions --------------------------------

static int make_issuers(void *arg, size_t index, vk_bench_rpc_req_t *out) {
  (void)arg;
  (void)index;
  Vkey__V1__GetIssuerKeysRequest req = VKEY__V1__GET_ISSUER_KEYS_REQUEST__INIT;
  out->path = "/vkey.v1.KeyService/GetIssuerKeys";
  return pack_msg(out, &req.base);
}

static void done_issuers(void *arg, size_t index,
                         const vk_bench_rpc_result_t *res) {
  prov_t *pv = arg;
  if (!result_ok(pv, "GetIssuerKeys", index, res, 0)) {
    return;
  }
  Vkey__V1__GetIssuerKeysResponse *resp =
      vkey__v1__get_issuer_keys_response__unpack(NULL, res->msg_len, res->msg);
  if (resp == NULL || resp->n_keys == 0 ||
      resp->keys[0]->public_key.len != 32) {
    step_fail(pv, "GetIssuerKeys: no usable key");
  } else {
    memcpy(pv->f->signing_pub, resp->keys[0]->public_key.data, 32);
  }
  vkey__v1__get_issuer_keys_response__free_unpacked(resp, NULL);
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// The assertion header lives in `out->hdrs` only until the call is
// queued (rpc copies it), so a per-request static buffer is enough.
static int make_session(void *arg, size_t index, vk_bench_rpc_req_t *out) {
  prov_t *pv = arg;
  static char hdr[272];
  vk_bench_vehicle_t *v = &pv->f->vehicles[index];
  X25519_keypair(pv->x_pub[index], pv->x_priv[index]);
  uint8_t nonce[16];
  RAND_bytes(nonce, sizeof(nonce));
  uint8_t a[192];
  size_t a_len;
  int rv = vk_bench_vehicle_assertion(a, sizeof(a), &a_len, &v->key, v->vin,
                                      VK_BENCH_PATH_OPEN_SESSION,
                                      wall_ms() / 1000, nonce, sizeof(nonce));
  if (rv != VK_OK) {
    return rv;
  }
  size_t hdr_len = vk_bench_b64(hdr, sizeof(hdr), a, a_len, 0);
  if (hdr_len == 0) {
    return VK_ETOOBIG;
  }
  out->hdrs[0] = (vk_bench_hdr_t){"x-vkey-vehicle-bin", hdr, hdr_len};
  out->n_hdrs = 1;
  Vkey__V1__OpenSessionRequest req = VKEY__V1__OPEN_SESSION_REQUEST__INIT;
  req.vin = v->vin;
  req.vehicle_public_key = (ProtobufCBinaryData){32, pv->x_pub[index]};
  out->path = VK_BENCH_PATH_OPEN_SESSION;
  return pack_msg(out, &req.base);
}

static void done_session(void *arg, size_t index,
                         const vk_bench_rpc_result_t *res) {
  prov_t *pv = arg;
  if (!result_ok(pv, "OpenSession", index, res, 0)) {
    return;
  }
  vk_bench_vehicle_t *v = &pv->f->vehicles[index];
  Vkey__V1__OpenSessionResponse *resp =
      vkey__v1__open_session_response__unpack(NULL, res->msg_len, res->msg);
  const char *why = "OpenSessionResponse does not parse";
  uint8_t server_pub[32], shared[32];
  int64_t clock_ms = 0;
  int ok = 0;
  if (resp != NULL && resp->session != NULL &&
      vk_bench_session_info_check(
          v->epoch, server_pub, &v->counter, &clock_ms, &why,
          resp->session->session_info.data, resp->session->session_info.len,
          resp->session->signature.data, resp->session->signature.len,
          pv->f->signing_pub, v->vin, pv->x_pub[index]) == VK_OK) {
    why = "X25519 or HKDF failed";
    ok = X25519(shared, pv->x_priv[index], server_pub) == 1 &&
         vk_bench_session_key(v->mac_key, shared, v->epoch, v->vin) == VK_OK;
  }
  if (ok && v->mac_keyed) {
    ok = vk_bench_session_mac(&v->mac, v->mac_key) == VK_OK;  // a new session
  }
  if (ok) {
    v->has_session = 1;
    v->clock_offset_ms = clock_ms - wall_ms();
  } else {
    step_fail(pv, "OpenSession %zu: %s", index, why);
  }
  OPENSSL_cleanse(shared, sizeof(shared));
  OPENSSL_cleanse(pv->x_priv[index], 32);
  vkey__v1__open_session_response__free_unpacked(resp, NULL);
}

// --- the whole -------------------------------------------------------------

static int make_keys(prov_t *pv, char *err, size_t errlen) {
  const vk_bench_provision_t *p = pv->p;
  vk_bench_fleet_t *f = pv->f;
  char path[4096];
  uint8_t seed[32];
  snprintf(path, sizeof(path), "%s/identity-issuer.key", p->data_dir);
  int rv = vk_bench_seed_load(seed, path);
  if (rv != VK_OK) {
    snprintf(err, errlen,
             "%s: %s (give vkeyd's --data-dir; vkeyd makes this development "
             "issuer key when it runs with its embedded defaults)",
             path, rv == VK_ENOTFOUND ? "cannot open" : "not a key file");
    return rv;
  }
  vk_bench_ed25519_t issuer;
  vk_bench_ed25519_from_seed(&issuer, seed);
  OPENSSL_cleanse(seed, sizeof(seed));
  int64_t now = time(NULL);
  snprintf(f->user_id, sizeof(f->user_id), "vkb%u-owner", p->seed);
  snprintf(f->recipient_id, sizeof(f->recipient_id), "vkb%u-recipient",
           p->seed);
  char tok[480];
  size_t len;
  memcpy(f->operator_auth, "Bearer ", 7);
  memcpy(f->user_auth, "Bearer ", 7);
  memcpy(f->recipient_auth, "Bearer ", 7);
  rv = vk_bench_token_mint(tok, sizeof(tok), &len, &issuer, "vkey-bench",
                           VK_BENCH_ROLE_OPERATOR, now, kTokenLifetimeS);
  if (rv == VK_OK) {
    memcpy(f->operator_auth + 7, tok, len + 1);
    f->operator_auth_len = 7 + len;
    rv = vk_bench_token_mint(tok, sizeof(tok), &len, &issuer, f->user_id,
                             VK_BENCH_ROLE_USER, now, kTokenLifetimeS);
  }
  if (rv == VK_OK) {
    memcpy(f->user_auth + 7, tok, len + 1);
    f->user_auth_len = 7 + len;
    rv = vk_bench_token_mint(tok, sizeof(tok), &len, &issuer, f->recipient_id,
                             VK_BENCH_ROLE_USER, now, kTokenLifetimeS);
  }
  if (rv == VK_OK) {
    memcpy(f->recipient_auth + 7, tok, len + 1);
    f->recipient_auth_len = 7 + len;
  }
  OPENSSL_cleanse(&issuer, sizeof(issuer));
  if (rv != VK_OK) {
    snprintf(err, errlen, "cannot mint tokens: %s", vk_strerror(rv));
    return rv;
  }
  vk_bench_derive(seed, "recipient-phone", p->seed, 0);
  vk_bench_ed25519_from_seed(&f->recipient_phone, seed);
  for (uint32_t i = 0; i < f->n; i++) {
    vk_bench_vehicle_t *v = &f->vehicles[i];
    vk_bench_vin(v->vin, p->seed, i);
    vk_bench_derive(seed, "vehicle", p->seed, i);
    vk_bench_ed25519_from_seed(&v->key, seed);
    vk_bench_derive(seed, "phone", p->seed, i);
    vk_bench_ed25519_from_seed(&v->phone, seed);
    if (p->phone_alg == VK_BENCH_ALG_P256) {
      vk_bench_derive(seed, "phone-p256", p->seed, i);
      if (vk_bench_p256_from_seed(&v->phone_p256, seed) != VK_OK) {
        snprintf(err, errlen, "cannot make P-256 keys");
        return VK_ENOMEM;
      }
    }
  }
  return VK_OK;
}

int vk_bench_provision(vk_bench_fleet_t *fleet, char *err, size_t errlen,
                       const vk_bench_provision_t *p) {
  memset(fleet, 0, sizeof(*fleet));
  prov_t pv;
  memset(&pv, 0, sizeof(pv));
  pv.p = p;
  pv.f = fleet;
  fleet->seed = p->seed;
  fleet->n = p->vehicles;
  fleet->phone_alg = p->phone_alg;
  fleet->vehicles = calloc(p->vehicles, sizeof(*fleet->vehicles));
  if (p->cold_keys > 0) {
    fleet->cold = calloc(p->cold_keys, sizeof(*fleet->cold));
    fleet->n_cold = p->cold_keys;
  }
  if (p->sessions) {
    pv.x_priv = calloc(p->vehicles, sizeof(*pv.x_priv));
    pv.x_pub = calloc(p->vehicles, sizeof(*pv.x_pub));
  }
  int rv = VK_ENOMEM;
  if (fleet->vehicles == NULL || (p->cold_keys > 0 && fleet->cold == NULL) ||
      (p->sessions && (pv.x_priv == NULL || pv.x_pub == NULL))) {
    snprintf(err, errlen, "out of memory");
    goto done;
  }
  uint8_t rnd[8];
  RAND_bytes(rnd, sizeof(rnd));
  for (size_t i = 0; i < sizeof(rnd); i++) {
    snprintf(pv.run_id + 2 * i, 3, "%02x", rnd[i]);
  }
  memcpy(fleet->run_id, pv.run_id, sizeof(fleet->run_id));
  rv = make_keys(&pv, err, errlen);
  if (rv == VK_OK) {
    rv = run_step(&pv, "RegisterUser", p->recipient ? 2 : 1, make_user,
                  done_exists_ok, err, errlen);
  }
  if (rv == VK_OK) {
    rv = run_step(&pv, "RegisterVehicle", p->vehicles, make_vehicle,
                  done_exists_ok, err, errlen);
  }
  if (rv == VK_OK) {
    rv = run_step(&pv, "SetVehicleOwner", p->vehicles, make_owner, done_ok, err,
                  errlen);
  }
  if (rv == VK_OK && p->owner_keys) {
    rv = run_step(&pv, "ApplyKey (owner keys)", p->vehicles, make_owner_key,
                  done_owner_key, err, errlen);
  }
  if (rv == VK_OK && p->cold_keys > 0) {
    rv = run_step(&pv, "ApplyKey (keys for this run only)", p->cold_keys,
                  make_cold_key, done_cold_key, err, errlen);
  }
  if (rv == VK_OK && p->sessions) {
    rv = run_step(&pv, "GetIssuerKeys", 1, make_issuers, done_issuers, err,
                  errlen);
    if (rv == VK_OK) {
      rv = run_step(&pv, "OpenSession", p->vehicles, make_session, done_session,
                    err, errlen);
    }
  }

done:
  if (pv.x_priv != NULL) {
    OPENSSL_cleanse(pv.x_priv, p->vehicles * sizeof(*pv.x_priv));
  }
  free(pv.x_priv);
  free(pv.x_pub);
  if (rv != VK_OK) {
    vk_bench_fleet_cleanup(fleet);
  }
  return rv;
}
