// identity.c: bearer tokens and vehicle assertions (see identity.h and
// proto/vkey/v1/identity.proto). Parsing is synchronous and bounded; the
// signature check goes to the worker pool; the vehicle's key and the nonce
// check go to Redis.
#include "identity.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bytestring.h>
#include <openssl/mem.h>
#include <openssl/sha.h>

#include "log.h"
#include "store.h"
#include "vkey/v1/identity.pb-c.h"
#include "wire.h"

enum {
  kMaxTokenLen = 2048,
  kMaxClaimsLen = 1024,
  kMaxTokenLifetimeS = 24 * 3600 + 300,
  kClockSkewS = 60,
  kAssertionWindowS = 60,
};

static const char kIdentityContext[] = "vkey-identity-v1";
static const char kVehicleContext[] = "vkey-vehicle-v1";

// --- the verified-token cache ---------------------------------------------
// Direct-mapped: a slot per SHA-256 prefix, overwritten on collision. Bounded
// by construction, O(1), and a miss only costs one more verification.

typedef struct {
  uint8_t digest[32];
  int64_t expires_at;  // 0: empty
  vk_identity_t who;
} token_slot_t;

struct vk_token_cache_s {
  token_slot_t *slots;
  size_t n;
};

int vk_token_cache_new(vk_token_cache_t **out, size_t slots) {
  vk_token_cache_t *c = calloc(1, sizeof(*c));
  if (c == NULL || slots == 0) {
    free(c);
    return VK_ENOMEM;
  }
  c->slots = calloc(slots, sizeof(*c->slots));
  if (c->slots == NULL) {
    free(c);
    return VK_ENOMEM;
  }
  c->n = slots;
  *out = c;
  return VK_OK;
}

void vk_token_cache_free(vk_token_cache_t *c) {
  if (c != NULL) {
    free(c->slots);
    free(c);
  }
}

static token_slot_t *cache_slot(vk_token_cache_t *c, const uint8_t d[32]) {
  uint64_t h;
  memcpy(&h, d, sizeof(h));
  return &c->slots[h % c->n];
}

// --- helpers -----------------------------------------------------------------

static bool subject_valid(const char *s, size_t len) {
  if (len == 0 || len > VK_SUBJECT_MAX) {
    return false;
  }
  for (size_t i = 0; i < len; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-' ||
          ch == '@')) {
      return false;
    }
  }
  return true;
}

// Decodes base64url (unpadded) into the arena. Returns NULL if malformed.
static uint8_t *b64url_decode(vk_call_t *call, const uint8_t *in, size_t len,
                              size_t max_out, size_t *out_len) {
  if (len == 0 || len > (max_out + 2) / 3 * 4) {
    return NULL;
  }
  char *std = vk_call_alloc(call, len);
  if (std == NULL) {
    return NULL;
  }
  for (size_t i = 0; i < len; i++) {
    char ch = (char)in[i];
    std[i] = ch == '-' ? '+' : ch == '_' ? '/' : ch;
    if (ch == '+' || ch == '/' || ch == '=') {
      return NULL;  // not url-safe alphabet
    }
  }
  CBB cbb;
  uint8_t *raw;
  if (!CBB_init(&cbb, len) ||
      vk_base64_decode(&cbb, (const uint8_t *)std, len) != VK_OK ||
      !CBB_finish(&cbb, &raw, out_len)) {
    CBB_cleanup(&cbb);
    return NULL;
  }
  uint8_t *copy = NULL;
  if (*out_len <= max_out) {
    copy = vk_call_alloc(call, *out_len ? *out_len : 1);
    if (copy != NULL) {
      memcpy(copy, raw, *out_len);
    }
  }
  OPENSSL_free(raw);
  return copy;
}

static bool role_ok(vk_role_t have, vk_role_t want, bool allow_operator) {
  return have == want || (allow_operator && have == VK_ROLE_OPERATOR);
}

static const char *role_name(vk_role_t r) {
  switch (r) {
    case VK_ROLE_USER:
      return "user";
    case VK_ROLE_OPERATOR:
      return "operator";
    default:
      return "vehicle";
  }
}

// --- bearer tokens --------------------------------------------------------

typedef struct {
  vk_crypto_job_t job;
  vk_app_t *app;
  vk_call_t *call;
  vk_role_t want;
  bool allow_operator;
  vk_auth_done_fn done;
  void *arg;
  vk_identity_t who;
  uint8_t digest[32];
  int64_t expires_at;
} bearer_ctx_t;

static void finish_authorized(vk_call_t *call, const vk_identity_t *who,
                              vk_role_t want, bool allow_operator,
                              vk_auth_done_fn done, void *arg) {
  if (!role_ok(who->role, want, allow_operator)) {
    char msg[128];
    snprintf(msg, sizeof(msg), "this method needs a %s credential, not %s",
             role_name(want), role_name(who->role));
    vk_call_finish(call, VK_GRPC_PERMISSION_DENIED, msg);
    return;
  }
  done(call, who, arg);
}

static void bearer_verified(vk_crypto_job_t *job, int status, void *arg) {
  bearer_ctx_t *b = arg;
  (void)job;
  vk_call_t *call = b->call;
  if (!vk_call_is_done(call)) {
    if (status != VK_OK) {
      vk_call_finish(call, VK_GRPC_UNAVAILABLE, "server shutting down");
    } else if (!b->job.ops[0].ok) {
      vk_call_finish(call, VK_GRPC_UNAUTHENTICATED,
                     "token signature does not verify");
    } else {
      token_slot_t *slot = cache_slot(b->app->token_cache, b->digest);
      memcpy(slot->digest, b->digest, 32);
      slot->expires_at = b->expires_at;
      slot->who = b->who;
      finish_authorized(call, &b->who, b->want, b->allow_operator, b->done,
                        b->arg);
    }
  }
  vk_call_unref(call);
}

static const uint8_t *find_issuer(const vk_app_t *app, const char *kid) {
  for (size_t i = 0; i < app->n_trusted_issuers; i++) {
    if (strcmp(app->trusted_issuer_ids[i], kid) == 0) {
      return app->trusted_issuers[i];
    }
  }
  return NULL;
}

// Parses and checks everything but the signature. Returns NULL and sets
// *out_err on failure; else the claims, and the signed message and
// signature through the out parameters (all in the call's arena).
static Vkey__V1__IdentityClaims *parse_token(
    vk_call_t *call, const vk_app_t *app, const uint8_t *tok, size_t len,
    int64_t now_s, const char **out_err, uint8_t **out_msg, size_t *out_msg_len,
    uint8_t **out_sig) {
  const uint8_t *dot = memchr(tok, '.', len);
  if (dot == NULL) {
    *out_err = "malformed token: want <claims>.<signature>";
    return NULL;
  }
  size_t claims_len, sig_len;
  uint8_t *claims =
      b64url_decode(call, tok, (size_t)(dot - tok), kMaxClaimsLen, &claims_len);
  uint8_t *sig =
      b64url_decode(call, dot + 1, len - (size_t)(dot - tok) - 1, 64, &sig_len);
  if (claims == NULL || sig == NULL || sig_len != 64) {
    *out_err = "malformed token: bad base64url or sizes";
    return NULL;
  }
  Vkey__V1__IdentityClaims *c = vkey__v1__identity_claims__unpack(
      vk_call_allocator(call), claims_len, claims);
  if (c == NULL) {
    *out_err = "malformed token: claims do not parse";
    return NULL;
  }
  if (!subject_valid(c->subject, strlen(c->subject)) ||
      (c->role != VKEY__V1__ROLE__ROLE_USER &&
       c->role != VKEY__V1__ROLE__ROLE_OPERATOR)) {
    *out_err = "token has a bad subject or role";
    return NULL;
  }
  if (find_issuer(app, c->issuer_key_id) == NULL) {
    *out_err = "token from an unknown issuer";
    return NULL;
  }
  if (c->expires_at <= now_s) {
    *out_err = "token expired";
    return NULL;
  }
  if (c->issued_at > now_s + kClockSkewS ||
      c->expires_at - c->issued_at > kMaxTokenLifetimeS) {
    *out_err = "token issued in the future or valid for too long";
    return NULL;
  }
  size_t ctx_len = sizeof(kIdentityContext);  // includes the 0x00
  uint8_t *msg = vk_call_alloc(call, ctx_len + claims_len);
  if (msg == NULL) {
    *out_err = "out of memory";
    return NULL;
  }
  memcpy(msg, kIdentityContext, ctx_len);
  memcpy(msg + ctx_len, claims, claims_len);
  *out_msg = msg;
  *out_msg_len = ctx_len + claims_len;
  *out_sig = sig;
  return c;
}

static const uint8_t *bearer_token(vk_call_t *call, size_t *out_len,
                                   const char **out_err) {
  size_t len;
  const uint8_t *v = vk_call_metadata(call, "authorization", &len);
  if (v == NULL) {
    *out_err = "missing credential: send 'authorization: Bearer <token>'";
    return NULL;
  }
  if (len < 8 || strncasecmp((const char *)v, "Bearer ", 7) != 0) {
    *out_err = "authorization must be 'Bearer <token>'";
    return NULL;
  }
  if (len - 7 > kMaxTokenLen) {
    *out_err = "token too long";
    return NULL;
  }
  *out_len = len - 7;
  return v + 7;
}

void vk_auth_bearer(vk_app_t *app, vk_call_t *call, vk_role_t role,
                    bool allow_operator, vk_auth_done_fn done, void *arg) {
  const char *err = NULL;
  size_t len;
  const uint8_t *tok = bearer_token(call, &len, &err);
  if (tok == NULL) {
    vk_call_finish(call, VK_GRPC_UNAUTHENTICATED, err);
    return;
  }
  int64_t now_s = vk_wall_ms() / 1000;
  uint8_t digest[32];
  SHA256(tok, len, digest);
  token_slot_t *slot = cache_slot(app->token_cache, digest);
  if (slot->expires_at > now_s &&
      CRYPTO_memcmp(slot->digest, digest, 32) == 0) {
    finish_authorized(call, &slot->who, role, allow_operator, done, arg);
    return;
  }
  uint8_t *msg, *sig;
  size_t msg_len;
  Vkey__V1__IdentityClaims *c =
      parse_token(call, app, tok, len, now_s, &err, &msg, &msg_len, &sig);
  if (c == NULL) {
    vk_call_finish(call, VK_GRPC_UNAUTHENTICATED, err);
    return;
  }
  bearer_ctx_t *b = vk_call_alloc(call, sizeof(*b));
  if (b == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  b->app = app;
  b->call = call;
  b->want = role;
  b->allow_operator = allow_operator;
  b->done = done;
  b->arg = arg;
  b->who.role = c->role == VKEY__V1__ROLE__ROLE_OPERATOR ? VK_ROLE_OPERATOR
                                                         : VK_ROLE_USER;
  snprintf(b->who.subject, sizeof(b->who.subject), "%s", c->subject);
  memcpy(b->digest, digest, 32);
  b->expires_at = c->expires_at;
  vk_crypto_op_t *op = &b->job.ops[0];
  op->alg = VK_SIG_ED25519;
  op->public_key = find_issuer(app, c->issuer_key_id);
  op->public_key_len = 32;
  op->msg = msg;
  op->msg_len = msg_len;
  op->sig = sig;
  op->sig_len = 64;
  b->job.n_ops = 1;
  b->job.done = bearer_verified;
  b->job.arg = b;
  vk_call_ref(call);
  int rv = vk_crypto_submit(app->workers, &b->job);
  if (rv != VK_OK) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED,
                   "server busy: signature queue full");
    vk_call_unref(call);
  }
}

// --- vehicle assertions ---------------------------------------------------

// The state of one vehicle authentication. It lives on the heap, not in the
// call's arena, and is freed when the flow ends (vehicle_end): a vehicle
// channel's call lasts for hours, and its arena would otherwise keep this
// state (mostly the 2.3 KiB crypto job) for as long, though it is dead once
// the vehicle is known. The continuation runs after the free, so whatever it
// allocates for the stream's lifetime may reuse the memory.
typedef struct {
  vk_crypto_job_t job;
  vk_app_t *app;
  vk_call_t *call;
  vk_auth_done_fn done;
  void *arg;
  vk_identity_t who;
  uint8_t sig[64];
  uint8_t public_key[32];
  char nonce_key[VK_REDIS_KEY_MAX];
  size_t msg_len;
  uint8_t msg[];  // the signed message (assertion_message)
} vehicle_ctx_t;

// Every exit of the vehicle flow goes through here: free the state, then
// finish with `status` if not OK, else hand over to the caller's
// continuation; then drop our ref.
static void vehicle_end(vehicle_ctx_t *v, vk_grpc_status_t status,
                        const char *msg) {
  vk_call_t *call = v->call;
  vk_identity_t who = v->who;
  vk_auth_done_fn done = v->done;
  void *arg = v->arg;
  free(v);
  if (!vk_call_is_done(call)) {
    if (status != VK_GRPC_OK) {
      vk_call_finish(call, status, msg);
    } else {
      done(call, &who, arg);
    }
  }
  vk_call_unref(call);
}

static void vehicle_nonce_set(vk_redis_t *r, int status,
                              const redisReply *reply, void *priv) {
  (void)r;
  vehicle_ctx_t *v = priv;
  if (status != VK_OK || reply->type == REDIS_REPLY_ERROR) {
    vehicle_end(v, VK_GRPC_UNAVAILABLE, "key store unavailable");
  } else if (reply->type == REDIS_REPLY_NIL) {
    vehicle_end(v, VK_GRPC_UNAUTHENTICATED, "replayed vehicle assertion");
  } else {
    vehicle_end(v, VK_GRPC_OK, NULL);
  }
}

static void vehicle_verified(vk_crypto_job_t *job, int status, void *arg) {
  (void)job;
  vehicle_ctx_t *v = arg;
  if (vk_call_is_done(v->call)) {
    vehicle_end(v, VK_GRPC_OK, NULL);
    return;
  }
  if (status != VK_OK) {
    vehicle_end(v, VK_GRPC_UNAVAILABLE, "server shutting down");
    return;
  }
  if (!v->job.ops[0].ok) {
    vehicle_end(v, VK_GRPC_UNAUTHENTICATED,
                "vehicle assertion signature does not verify");
    return;
  }
  // The nonce is recorded only after the signature holds, so nobody can
  // burn a vehicle's nonces without its key.
  int rv =
      vk_redis_command(v->app->redis, vehicle_nonce_set, v, "SET %s 1 NX EX %d",
                       v->nonce_key, 2 * kAssertionWindowS + 10);
  if (rv != VK_OK) {
    vehicle_end(v, VK_GRPC_UNAVAILABLE, "key store unavailable");
  }
}

static void vehicle_looked_up(vk_redis_t *r, int status,
                              const redisReply *reply, void *priv) {
  (void)r;
  vehicle_ctx_t *v = priv;
  if (vk_call_is_done(v->call)) {
    vehicle_end(v, VK_GRPC_OK, NULL);
    return;
  }
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY ||
      reply->elements != 2) {
    vehicle_end(v, VK_GRPC_UNAVAILABLE, "key store unavailable");
    return;
  }
  const redisReply *pub = reply->element[0];
  const redisReply *st = reply->element[1];
  if (pub->type != REDIS_REPLY_STRING || pub->len != 32) {
    vehicle_end(v, VK_GRPC_UNAUTHENTICATED, "unknown vehicle");
    return;
  }
  if (st->type != REDIS_REPLY_STRING || strcmp(st->str, "1") != 0) {
    vehicle_end(v, VK_GRPC_PERMISSION_DENIED, "vehicle is disabled");
    return;
  }
  memcpy(v->public_key, pub->str, 32);
  vk_crypto_op_t *op = &v->job.ops[0];
  op->alg = VK_SIG_ED25519;
  op->public_key = v->public_key;
  op->public_key_len = 32;
  op->msg = v->msg;
  op->msg_len = v->msg_len;
  op->sig = v->sig;
  op->sig_len = 64;
  v->job.n_ops = 1;
  v->job.done = vehicle_verified;
  v->job.arg = v;
  if (vk_crypto_submit(v->app->workers, &v->job) != VK_OK) {
    vehicle_end(v, VK_GRPC_RESOURCE_EXHAUSTED,
                "server busy: signature queue full");
  }
}

// The length of identity.proto's VehicleAssertion signed message.
static size_t assertion_message_len(vk_call_t *call,
                                    const Vkey__V1__VehicleAssertion *a) {
  return sizeof(kVehicleContext) + strlen(a->vin) + 1 +
         strlen(vk_call_path(call)) + 1 + 8 + a->nonce.len;
}

// Writes the signed message of the assertion into `out`, which holds exactly
// assertion_message_len bytes. Returns false if it does not fit.
static bool assertion_message(uint8_t *out, size_t len, vk_call_t *call,
                              const Vkey__V1__VehicleAssertion *a) {
  const char *path = vk_call_path(call);
  CBB cbb;
  size_t written;
  if (!CBB_init_fixed(&cbb, out, len) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)kVehicleContext,
                     sizeof(kVehicleContext)) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)a->vin, strlen(a->vin) + 1) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)path, strlen(path) + 1) ||
      !CBB_add_u64(&cbb, (uint64_t)a->timestamp) ||
      !CBB_add_bytes(&cbb, a->nonce.data, a->nonce.len) ||
      !CBB_finish(&cbb, NULL, &written)) {
    CBB_cleanup(&cbb);
    return false;
  }
  return written == len;
}

// Checks what can be checked without I/O. Returns NULL with the call
// finished, or the decoded assertion (heap; the caller frees it).
static Vkey__V1__VehicleAssertion *vehicle_assertion(vk_call_t *call,
                                                     const char *vin) {
  size_t len;
  const uint8_t *bin = vk_call_metadata(call, "x-vkey-vehicle-bin", &len);
  if (bin == NULL) {
    vk_call_finish(call, VK_GRPC_UNAUTHENTICATED,
                   "missing vehicle credential: x-vkey-vehicle-bin");
    return NULL;
  }
  if (len > 512) {
    vk_call_finish(call, VK_GRPC_UNAUTHENTICATED, "vehicle assertion too big");
    return NULL;
  }
  // Decoded on the heap, not in the arena: it is needed only until the
  // state below is built.
  Vkey__V1__VehicleAssertion *a =
      vkey__v1__vehicle_assertion__unpack(NULL, len, bin);
  const char *err = NULL;
  vk_grpc_status_t status = VK_GRPC_UNAUTHENTICATED;
  int64_t now_s = vk_wall_ms() / 1000;
  if (a == NULL || !vk_vin_valid(a->vin) || a->nonce.len < 16 ||
      a->nonce.len > 32 || a->signature.len != 64) {
    err = "malformed vehicle assertion";
  } else if (strcmp(a->vin, vin) != 0) {
    status = VK_GRPC_PERMISSION_DENIED;
    err = "the credential is for another vehicle";
  } else if (a->timestamp < now_s - kAssertionWindowS ||
             a->timestamp > now_s + kAssertionWindowS) {
    err =
        "vehicle assertion outside the 60 s window (check the vehicle's "
        "clock)";
  }
  if (err != NULL) {
    vkey__v1__vehicle_assertion__free_unpacked(a, NULL);
    vk_call_finish(call, status, err);
    return NULL;
  }
  return a;
}

// Builds the flow's state from a checked assertion. NULL when out of memory.
static vehicle_ctx_t *vehicle_ctx_new(vk_app_t *app, vk_call_t *call,
                                      const char *vin,
                                      const Vkey__V1__VehicleAssertion *a) {
  size_t msg_len = assertion_message_len(call, a);
  vehicle_ctx_t *v = calloc(1, sizeof(*v) + msg_len);
  if (v == NULL) {
    return NULL;
  }
  v->msg_len = msg_len;
  if (!assertion_message(v->msg, msg_len, call, a)) {
    free(v);
    return NULL;
  }
  v->app = app;
  v->call = call;
  v->who.role = VK_ROLE_VEHICLE;
  snprintf(v->who.subject, sizeof(v->who.subject), "%s", vin);
  memcpy(v->sig, a->signature.data, 64);
  char hex[65];
  vk_hex_encode(hex, a->nonce.data, a->nonce.len);
  char suffix[80];
  snprintf(suffix, sizeof(suffix), "nonce:%s", hex);
  vk_store_vehicle_sub(v->nonce_key, vin, suffix);
  return v;
}

void vk_auth_vehicle(vk_app_t *app, vk_call_t *call, const char *vin,
                     vk_auth_done_fn done, void *arg) {
  Vkey__V1__VehicleAssertion *a = vehicle_assertion(call, vin);
  if (a == NULL) {
    return;
  }
  vehicle_ctx_t *v = vehicle_ctx_new(app, call, vin, a);
  vkey__v1__vehicle_assertion__free_unpacked(a, NULL);
  if (v == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  v->done = done;
  v->arg = arg;
  char vkey[VK_REDIS_KEY_MAX];
  vk_store_vehicle(vkey, vin);
  vk_call_ref(call);
  if (vk_redis_command(app->redis, vehicle_looked_up, v, "HMGET %s pub status",
                       vkey) != VK_OK) {
    vehicle_end(v, VK_GRPC_UNAVAILABLE, "key store unavailable");
  }
}
