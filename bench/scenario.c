// scenario.c: the scenario table and the request pool.
#include "scenario.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>

#include "common.h"
#include "grpc/health/v1/health.pb-c.h"

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

// --- health: grpc.health.v1.Health/Check, the only RPC vkeyd serves today.

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

static int health_check(const char **out_why, const uint8_t *msg, size_t len) {
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

// Rows not available yet: listed in --help and refused with `missing`.
// Each becomes available by writing its build/check pair above.
#define VK_BENCH_LATER(name_, summary_, kind_, missing_) \
  { name_, summary_, 0, missing_, kind_, 0, NULL, NULL }

const vk_bench_scenario_t vk_bench_scenarios[] = {
    {"health", "grpc.health.v1.Health/Check, unary", 1, NULL, VK_BENCH_KIND_RPC,
     1, health_build, health_check},
    VK_BENCH_LATER("verify", "verify key + challenge signature, warm cache",
                   VK_BENCH_KIND_RPC, "vkeyd does not serve Verify yet"),
    VK_BENCH_LATER("verify-cold", "verify with keys not yet cached (Redis)",
                   VK_BENCH_KIND_RPC, "vkeyd does not serve Verify yet"),
    VK_BENCH_LATER("check", "key status check", VK_BENCH_KIND_RPC,
                   "vkeyd does not serve the check RPC yet"),
    VK_BENCH_LATER("apply", "apply for a key: issue, store, deliver",
                   VK_BENCH_KIND_RPC, "vkeyd does not serve Apply yet"),
    VK_BENCH_LATER("share", "share: a code set, then the shared keys",
                   VK_BENCH_KIND_RPC, "vkeyd does not serve sharing yet"),
    VK_BENCH_LATER("mixed", "a mix of verify, check, apply, share",
                   VK_BENCH_KIND_RPC, "it needs the scenarios it mixes"),
    VK_BENCH_LATER("connect", "hold many vehicle channels; RSS per conn",
                   VK_BENCH_KIND_CONNECT,
                   "it needs the vehicle channel and a connection-scale "
                   "run loop"),
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
    // The gRPC length prefix: flag 0 (uncompressed), big-endian length.
    uint8_t prefix[5] = {0, (uint8_t)(msg.len >> 24), (uint8_t)(msg.len >> 16),
                         (uint8_t)(msg.len >> 8), (uint8_t)msg.len};
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
