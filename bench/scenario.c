// scenario.c: the scenario table and the request pool.
#include "scenario.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>

#include "common.h"
#include "grpc/health/v1/health.pb-c.h"
#include "vkey/v1/authorization.pb-c.h"
#include "vkey/v1/keys.pb-c.h"
#include "vkey/v1/verify.pb-c.h"

int vk_bench_buf_append(vk_bench_buf_t *b, const void *data, size_t len) {
  if (len > VK_BENCH_MAX_MESSAGE - b->len) {
    return VK_ETOOBIG;
  }
  if (b->len + len > b->cap) {
    size_t cap = b->cap == 0 ? 256 : b->cap;
    while (cap < b->len + len) {
      cap *= 2;
    }
    if (cap > VK_BENCH_MAX_MESSAGE) {
      cap = VK_BENCH_MAX_MESSAGE;
    }
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL) {
      return VK_ENOMEM;
    }
    b->data = p;
    b->cap = cap;
  }
  if (len > 0) {
    memcpy(b->data + b->len, data, len);
    b->len += len;
  }
  return VK_OK;
}

void vk_bench_buf_cleanup(vk_bench_buf_t *b) {
  free(b->data);
  memset(b, 0, sizeof(*b));
}

// --- health: grpc.health.v1.Health/Check. ----------------------------------

static int health_build(vk_bench_buf_t *out, const char **out_path,
                        const vk_bench_params_t *params, size_t index) {
  (void)index;
  Grpc__Health__V1__HealthCheckRequest req =
      GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  // protobuf-c's field is `char *` but pack only reads it.
  req.service =
      (char *)(params->health_service != NULL ? params->health_service : "");
  size_t len = grpc__health__v1__health_check_request__get_packed_size(&req);
  if (len > VK_BENCH_MAX_MESSAGE) {
    return VK_ETOOBIG;
  }
  uint8_t small[256];
  uint8_t *tmp = len <= sizeof(small) ? small : malloc(len);
  if (tmp == NULL) {
    return VK_ENOMEM;
  }
  grpc__health__v1__health_check_request__pack(&req, tmp);
  int rv = vk_bench_buf_append(out, tmp, len);
  if (tmp != small) {
    free(tmp);
  }
  *out_path = "/grpc.health.v1.Health/Check";
  return rv;
}

static int health_check(const char **out_why, const char *path,
                        const uint8_t *msg, size_t len) {
  (void)path;
  Grpc__Health__V1__HealthCheckResponse *resp =
      grpc__health__v1__health_check_response__unpack(NULL, len, msg);
  if (resp == NULL) {
    *out_why = "HealthCheckResponse does not parse";
    return VK_EPROTO;
  }
  int serving =
      resp->status ==
      GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
  grpc__health__v1__health_check_response__free_unpacked(resp, NULL);
  if (!serving) {
    *out_why = "status is not SERVING";
    return VK_EPROTO;
  }
  return VK_OK;
}

// --- issuers: vkey.v1.KeyService/GetIssuerKeys. ---------------------------
//
// No credential and an empty request, like health, but every call is a
// Redis round trip in vkeyd (HGETALL of the issuer keys): vkeyd and its
// Redis spend several times what a client spends on the call, so with the
// server on one core and the client on another the server is the
// bottleneck. run.sh cross-checks vkey-bench against h2load on it.

static int issuers_build(vk_bench_buf_t *out, const char **out_path,
                         const vk_bench_params_t *params, size_t index) {
  (void)params;
  (void)index;
  // An empty GetIssuerKeysRequest: no bytes at all.
  *out_path = "/vkey.v1.KeyService/GetIssuerKeys";
  return vk_bench_buf_append(out, "", 0);
}

static int issuers_check(const char **out_why, const char *path,
                         const uint8_t *msg, size_t len) {
  (void)path;
  Vkey__V1__GetIssuerKeysResponse *resp =
      vkey__v1__get_issuer_keys_response__unpack(NULL, len, msg);
  int rv = VK_OK;
  if (resp == NULL || resp->n_keys == 0) {
    *out_why = "GetIssuerKeysResponse does not parse or has no key";
    rv = VK_EPROTO;
  } else if (resp->keys[0]->public_key.len != 32) {
    *out_why = "an issuer key is not 32 bytes of Ed25519";
    rv = VK_EPROTO;
  }
  vkey__v1__get_issuer_keys_response__free_unpacked(resp, NULL);
  return rv;
}

// --- verify*: VerifyKeyResponse, DECISION_ALLOW or a deny reason. ----------

int vk_bench_check_verify(const char **out_why, const uint8_t *msg,
                          size_t len) {
  Vkey__V1__VerifyKeyResponse *resp =
      vkey__v1__verify_key_response__unpack(NULL, len, msg);
  if (resp == NULL || resp->result == NULL) {
    *out_why = "VerifyKeyResponse does not parse or has no result";
    vkey__v1__verify_key_response__free_unpacked(resp, NULL);
    return VK_EPROTO;
  }
  int rv = VK_OK;
  if (resp->result->decision != VKEY__V1__DECISION__DECISION_ALLOW) {
    // The enum descriptor's names are static: the report counts by them.
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
        &vkey__v1__deny_reason__descriptor, (int)resp->result->reason);
    *out_why = v != NULL ? v->name : "DENY with an unknown reason";
    rv = VK_EPROTO;
  }
  vkey__v1__verify_key_response__free_unpacked(resp, NULL);
  return rv;
}

// --- check: CheckKeyStatusResponse, the key ACTIVE. ------------------------

int vk_bench_check_status(const char **out_why, const uint8_t *msg,
                          size_t len) {
  Vkey__V1__CheckKeyStatusResponse *resp =
      vkey__v1__check_key_status_response__unpack(NULL, len, msg);
  if (resp == NULL || resp->n_keys != 1) {
    *out_why = "CheckKeyStatusResponse does not parse or has not 1 entry";
    vkey__v1__check_key_status_response__free_unpacked(resp, NULL);
    return VK_EPROTO;
  }
  int rv = VK_OK;
  if (resp->keys[0]->status != VKEY__V1__KEY_STATUS__KEY_STATUS_ACTIVE) {
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
        &vkey__v1__key_status__descriptor, (int)resp->keys[0]->status);
    *out_why = v != NULL ? v->name : "unknown key status";
    rv = VK_EPROTO;
  }
  vkey__v1__check_key_status_response__free_unpacked(resp, NULL);
  return rv;
}

// --- apply: ApplyKeyResponse with an ACTIVE key. ---------------------------

int vk_bench_check_apply(const char **out_why, const uint8_t *msg, size_t len) {
  Vkey__V1__ApplyKeyResponse *resp =
      vkey__v1__apply_key_response__unpack(NULL, len, msg);
  int rv = VK_OK;
  if (resp == NULL || resp->key == NULL || resp->key->key == NULL) {
    *out_why = "ApplyKeyResponse does not parse or has no key";
    rv = VK_EPROTO;
  } else if (resp->key->status != VKEY__V1__KEY_STATUS__KEY_STATUS_ACTIVE) {
    *out_why = "the new key is not ACTIVE";
    rv = VK_EPROTO;
  }
  vkey__v1__apply_key_response__free_unpacked(resp, NULL);
  return rv;
}

// --- share: Authorize, then Redeem. ----------------------------------------

int vk_bench_check_authorize(const char **out_why, const uint8_t *msg,
                             size_t len) {
  Vkey__V1__AuthorizeResponse *resp =
      vkey__v1__authorize_response__unpack(NULL, len, msg);
  int rv = VK_OK;
  if (resp == NULL || resp->grant == NULL) {
    *out_why = "AuthorizeResponse does not parse or has no grant";
    rv = VK_EPROTO;
  } else if (strncmp(resp->code_set, "vkc1.", 5) != 0) {
    *out_why = "AuthorizeResponse has no printable code set";
    rv = VK_EPROTO;
  } else if (resp->grant->status !=
             VKEY__V1__GRANT_STATUS__GRANT_STATUS_OUTSTANDING) {
    *out_why = "the new grant is not OUTSTANDING";
    rv = VK_EPROTO;
  }
  vkey__v1__authorize_response__free_unpacked(resp, NULL);
  return rv;
}

int vk_bench_check_redeem(const char **out_why, const uint8_t *msg,
                          size_t len) {
  Vkey__V1__RedeemResponse *resp =
      vkey__v1__redeem_response__unpack(NULL, len, msg);
  int rv = VK_OK;
  if (resp == NULL) {
    *out_why = "RedeemResponse does not parse";
    rv = VK_EPROTO;
  } else if (resp->n_keys == 0) {
    *out_why = "the redeem gave no keys";
    rv = VK_EPROTO;
  } else if (resp->grant == NULL ||
             resp->grant->status !=
                 VKEY__V1__GRANT_STATUS__GRANT_STATUS_REDEEMED) {
    *out_why = "the grant is not REDEEMED";
    rv = VK_EPROTO;
  }
  for (size_t i = 0; rv == VK_OK && i < resp->n_keys; i++) {
    const Vkey__V1__KeyRecord *k = resp->keys[i];
    if (k->key == NULL || k->key->signature.len != 64) {
      *out_why = "a redeemed key is not signed";
      rv = VK_EPROTO;
    } else if (k->status != VKEY__V1__KEY_STATUS__KEY_STATUS_ACTIVE) {
      *out_why = "a redeemed key is not ACTIVE";
      rv = VK_EPROTO;
    }
  }
  vkey__v1__redeem_response__free_unpacked(resp, NULL);
  return rv;
}

// The table's checks, by the method the request called.
static int check_by_path(const char **out_why, const char *path,
                         const uint8_t *msg, size_t len) {
  if (strcmp(path, "/vkey.v1.VerifyService/VerifyKey") == 0) {
    return vk_bench_check_verify(out_why, msg, len);
  }
  if (strcmp(path, "/vkey.v1.VerifyService/CheckKeyStatus") == 0) {
    return vk_bench_check_status(out_why, msg, len);
  }
  if (strcmp(path, "/vkey.v1.KeyService/ApplyKey") == 0) {
    return vk_bench_check_apply(out_why, msg, len);
  }
  if (strcmp(path, "/vkey.v1.AuthorizationService/Authorize") == 0) {
    return vk_bench_check_authorize(out_why, msg, len);
  }
  if (strcmp(path, "/vkey.v1.AuthorizationService/Redeem") == 0) {
    return vk_bench_check_redeem(out_why, msg, len);
  }
  *out_why = "a method this scenario does not call";
  return VK_EPROTO;
}

// A row may be listed before it works: `available` 0 and the reason in
// `missing` (args.c refuses it with that reason). None is, today.
// Rows whose requests the signer threads make (workload.h).
#define VK_BENCH_SIGNED(name_, summary_, kind_, work_, check_) \
  { name_, summary_, 1, NULL, kind_, work_, 0, NULL, check_ }

const vk_bench_scenario_t vk_bench_scenarios[] = {
    {"health", "grpc.health.v1.Health/Check, unary", 1, NULL, VK_BENCH_KIND_RPC,
     VK_BENCH_WORK_POOL, 1, health_build, health_check},
    VK_BENCH_SIGNED("verify",
                    "VerifyKey in vehicle sessions, Ed25519 phone proof, "
                    "warm caches",
                    VK_BENCH_KIND_RPC, VK_BENCH_WORK_VERIFY, check_by_path),
    VK_BENCH_SIGNED("verify-p256", "the same with ECDSA P-256 phone proofs",
                    VK_BENCH_KIND_RPC, VK_BENCH_WORK_VERIFY_P256,
                    check_by_path),
    VK_BENCH_SIGNED(
        "verify-cold",
        "VerifyKey by a cloud service (operator token), each request a key "
        "never verified before",
        VK_BENCH_KIND_RPC, VK_BENCH_WORK_VERIFY_COLD, check_by_path),
    VK_BENCH_SIGNED("check",
                    "CheckKeyStatus in vehicle sessions (HMAC, no phone "
                    "signature)",
                    VK_BENCH_KIND_RPC, VK_BENCH_WORK_CHECK, check_by_path),
    VK_BENCH_SIGNED("apply",
                    "ApplyKey by the owner: a new key signed, stored, "
                    "queued for the vehicle",
                    VK_BENCH_KIND_RPC, VK_BENCH_WORK_APPLY, check_by_path),
    VK_BENCH_SIGNED("share",
                    "the owner Authorizes a code set (UNLOCK), the recipient "
                    "Redeems it: one operation, two calls",
                    VK_BENCH_KIND_RPC, VK_BENCH_WORK_SHARE, check_by_path),
    VK_BENCH_SIGNED("mixed",
                    "90% verify, 9% session check, 1% apply (by request)",
                    VK_BENCH_KIND_RPC, VK_BENCH_WORK_MIXED, check_by_path),
    {"issuers",
     "KeyService/GetIssuerKeys, unary, no credential, a Redis read each "
     "(the h2load cross-check)",
     1, NULL, VK_BENCH_KIND_RPC, VK_BENCH_WORK_POOL, 1, issuers_build,
     issuers_check},
    VK_BENCH_SIGNED("connect",
                    "hold a vehicle channel per vehicle; memory per vehicle, "
                    "event delivery latency",
                    VK_BENCH_KIND_CONNECT, VK_BENCH_WORK_CONNECT, NULL),
};
const size_t vk_bench_nscenarios = VK_ARRAY_LEN(vk_bench_scenarios);

const vk_bench_scenario_t *vk_bench_scenario_find(const char *name) {
  for (size_t i = 0; i < vk_bench_nscenarios; i++) {
    if (strcmp(vk_bench_scenarios[i].name, name) == 0) {
      return &vk_bench_scenarios[i];
    }
  }
  return NULL;
}

int vk_bench_pool_build(vk_bench_pool_t *pool, const vk_bench_scenario_t *sc,
                        const vk_bench_params_t *params) {
  memset(pool, 0, sizeof(*pool));
  if (!sc->available || sc->build == NULL || sc->pool_size == 0) {
    return VK_EINVAL;
  }
  vk_bench_buf_t all = {0};
  vk_bench_buf_t msg = {0};
  size_t *offsets = calloc(sc->pool_size, sizeof(*offsets));
  pool->reqs = calloc(sc->pool_size, sizeof(*pool->reqs));
  int rv = VK_ENOMEM;
  if (offsets == NULL || pool->reqs == NULL) {
    goto fail;
  }
  for (size_t i = 0; i < sc->pool_size; i++) {
    msg.len = 0;
    rv = sc->build(&msg, &pool->reqs[i].path, params, i);
    if (rv != VK_OK) {
      goto fail;
    }
    uint8_t prefix[5];
    vk_bench_grpc_frame(prefix, msg.len);
    offsets[i] = all.len;
    rv = vk_bench_buf_append(&all, prefix, sizeof(prefix));
    if (rv == VK_OK) {
      rv = vk_bench_buf_append(&all, msg.data, msg.len);
    }
    if (rv != VK_OK) {
      goto fail;
    }
    pool->reqs[i].body_len = sizeof(prefix) + msg.len;
  }
  // Point into `all` only now: appending may have moved it.
  for (size_t i = 0; i < sc->pool_size; i++) {
    pool->reqs[i].body = all.data + offsets[i];
  }
  pool->bytes = all.data;
  pool->n = sc->pool_size;
  free(offsets);
  vk_bench_buf_cleanup(&msg);
  return VK_OK;

fail:
  free(offsets);
  free(pool->reqs);
  vk_bench_buf_cleanup(&msg);
  vk_bench_buf_cleanup(&all);
  memset(pool, 0, sizeof(*pool));
  return rv;
}

void vk_bench_pool_cleanup(vk_bench_pool_t *pool) {
  free(pool->reqs);
  free(pool->bytes);
  memset(pool, 0, sizeof(*pool));
}

void vk_bench_grpc_frame(uint8_t prefix[5], size_t len) {
  // Flag 0 (uncompressed), then the big-endian length.
  prefix[0] = 0;
  prefix[1] = (uint8_t)(len >> 24);
  prefix[2] = (uint8_t)(len >> 16);
  prefix[3] = (uint8_t)(len >> 8);
  prefix[4] = (uint8_t)len;
}

int vk_bench_grpc_unframe(const uint8_t **out_msg, size_t *out_len,
                          const char **out_why, const uint8_t *body,
                          size_t body_len) {
  CBS in;
  CBS msg;
  uint8_t flag;
  uint32_t len;
  CBS_init(&in, body, body_len);
  if (!CBS_get_u8(&in, &flag) || !CBS_get_u32(&in, &len)) {
    *out_why = "response body shorter than the gRPC prefix";
    return VK_EPROTO;
  }
  if (flag != 0) {
    *out_why = "compressed response (we sent no grpc-accept-encoding)";
    return VK_EPROTO;
  }
  if (len > VK_BENCH_MAX_MESSAGE) {
    *out_why = "response message over the size cap";
    return VK_EPROTO;
  }
  if (!CBS_get_bytes(&in, &msg, len)) {
    *out_why = "response message truncated";
    return VK_EPROTO;
  }
  if (CBS_len(&in) != 0) {
    *out_why = "more than one message in a unary response";
    return VK_EPROTO;
  }
  *out_msg = CBS_data(&msg);
  *out_len = CBS_len(&msg);
  return VK_OK;
}

const char *vk_bench_grpc_status_name(int code) {
  static const char *const kNames[] = {
      "OK",
      "CANCELLED",
      "UNKNOWN",
      "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED",
      "NOT_FOUND",
      "ALREADY_EXISTS",
      "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION",
      "ABORTED",
      "OUT_OF_RANGE",
      "UNIMPLEMENTED",
      "INTERNAL",
      "UNAVAILABLE",
      "DATA_LOSS",
      "UNAUTHENTICATED",
  };
  if (code < 0 || (size_t)code >= VK_ARRAY_LEN(kNames)) {
    return "UNKNOWN_CODE";
  }
  return kNames[code];
}
