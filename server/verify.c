// verify.c: VerifyService. A request moves its items through stages, each
// finished for every item before the next starts, so that an item's Redis
// reads are pipelined with its neighbours' and all its public-key work goes
// to the worker pool in one batch:
//
//   auth -> parse (cheap checks) -> state (caches, else Redis)
//        -> crypto (token signature unless cached, phone proof; workers)
//        -> commit (challenge once, status re-checked, uses counted: one
//           Lua script per item, atomic across instances) -> answer.
//
// The commit script reads the key's status from Redis itself, so a revoked
// key is refused by every instance as soon as the revoke is acknowledged,
// whatever the caches hold; the caches only let early denials and
// CheckKeyStatus skip Redis.
#include "verify.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>
#include <openssl/mem.h>
#include <openssl/sha.h>

#include "identity.h"
#include "keytoken.h"
#include "log.h"
#include "ratelimit.h"
#include "script.h"
#include "session.h"
#include "store.h"
#include "verify_cache.h"
#include "vkey/v1/verify.pb-c.h"

enum {
  kMaxItems = 64,
  kMaxChallenge = 64,
  kMinChallenge = 16,
  kProofWindowMs = 30 * 1000,
  kChallengeTtlS = 2 * 30 + 10,
};
// kChallengeTtlS in decimal, for Redis commands.
static const char kChallengeTtl[] = "70";
_Static_assert(kChallengeTtlS == 70, "kChallengeTtl must match kChallengeTtlS");

static const char kProofContext[] = "vkey-proof-v1";

// A session-bound challenge (docs/SESSIONS.md, "Challenges bound to a
// call"): this prefix, the session's epoch, the call's counter (u64,
// big-endian), the item's index in the call, then up to 22 bytes of the
// vehicle's own. The session counter is accepted once across all
// instances, so such a challenge is spent with its call and needs no
// record in Redis. The prefix is long enough that no random challenge
// carries it by chance.
static const char kBoundPrefix[] = "vkey-challenge-v1";
enum {
  kBoundPrefixLen = sizeof(kBoundPrefix) - 1,
  kBoundLen = kBoundPrefixLen + VK_SESSION_EPOCH_LEN + 8 + 1,
};
_Static_assert((int)kBoundLen <= (int)kMaxChallenge,
               "a bound challenge must fit");

// Returns {code, value}: 0 allow; 1 challenge reused; 2 not active (value =
// status); 3 uses exhausted; 5 unknown key; 6 outdated (value = version).
static const char kCommitScript[] =
    "local st = redis.call('HGET', KEYS[1], 'status')\n"
    "if not st then return {5, 0} end\n"
    "if st ~= '1' then return {2, tonumber(st)} end\n"
    "local ver = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')\n"
    "if tonumber(ARGV[3]) < ver then return {6, ver} end\n"
    "if ARGV[2] ~= '0' and\n"
    "   not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then\n"
    "  return {1, 0}\n"
    "end\n"
    "local max = tonumber(ARGV[1])\n"
    "if max > 0 then\n"
    "  local used = redis.call('HINCRBY', KEYS[1], 'uses', 1)\n"
    "  if used > max then\n"
    "    redis.call('HINCRBY', KEYS[1], 'uses', -1)\n"
    "    return {3, used - 1}\n"
    "  end\n"
    "end\n"
    "return {0, 0}\n";

// The script is sent by hash; its hash is computed once, whichever loop
// asks first.
static vk_redis_script_t s_commit_script;
static pthread_once_t s_commit_script_once = PTHREAD_ONCE_INIT;

static void init_commit_script(void) {
  vk_redis_script_init(&s_commit_script, kCommitScript);
}

static const vk_redis_script_t *commit_script(void) {
  pthread_once(&s_commit_script_once, init_commit_script);
  return &s_commit_script;
}

typedef struct verify_req_s verify_req_t;

typedef struct {
  verify_req_t *req;
  const Vkey__V1__VerifyKeyItem *in;
  Vkey__V1__KeyClaims *claims;
  const uint8_t *issuer_public;
  uint8_t token_digest[32];
  bool token_known_good;
  vk_key_state_t state;
  bool decided;
  Vkey__V1__DenyReason reason;
  const char *detail;
  vk_crypto_op_t *token_op;
  vk_crypto_op_t *proof_op;
  uint64_t cache_stamp;  // taken before the status read
  bool bound_challenge;  // spent by the session counter: no Redis record
} item_t;

struct verify_req_s {
  vk_app_t *app;
  vk_call_t *call;
  char vin[VK_VIN_LEN + 1];
  item_t *items;
  size_t n;
  bool batch;
  bool issuers_loaded;
  bool in_session;            // asked by the vehicle in its session
  vk_session_call_t session;  // then: the call's epoch and counter
  size_t pending;
  void (*next)(verify_req_t *r);  // the stage after `pending` reaches 0
};

static void stage_parse(verify_req_t *r);
static void stage_state(verify_req_t *r);
static void stage_crypto(verify_req_t *r);
static void stage_commit(verify_req_t *r);
static void answer(verify_req_t *r);

static void deny(item_t *it, Vkey__V1__DenyReason reason, const char *detail) {
  if (!it->decided) {
    it->decided = true;
    it->reason = reason;
    it->detail = detail;
  }
}

// Ends the request with a call-level error; drops the request's reference.
static void fail(verify_req_t *r, vk_grpc_status_t status, const char *msg) {
  vk_call_finish(r->call, status, msg);
  vk_call_unref(r->call);
}

// One asynchronous step of a stage has finished.
static void step_done(verify_req_t *r) {
  if (--r->pending > 0) {
    return;
  }
  if (vk_call_is_done(r->call)) {
    vk_call_unref(r->call);
    return;
  }
  r->next(r);
}

// --- parse: everything that needs no I/O ---------------------------------

static bool has_function(const Vkey__V1__KeyClaims *c, int fn) {
  for (size_t i = 0; i < c->n_functions; i++) {
    if ((int)c->functions[i] == fn) {
      return true;
    }
  }
  return false;
}

static vk_sig_alg_t holder_alg(const Vkey__V1__KeyClaims *c) {
  return c->holder_key_algorithm ==
                 VKEY__V1__KEY_ALGORITHM__KEY_ALGORITHM_ECDSA_P256
             ? VK_SIG_ECDSA_P256
             : VK_SIG_ED25519;
}

// The message the phone signs (verify.proto VerifyKeyItem).
static uint8_t *proof_message(vk_call_t *call, const char *vin,
                              const Vkey__V1__VerifyKeyItem *in,
                              size_t *out_len) {
  size_t vin_len = strlen(vin);
  size_t len = sizeof(kProofContext) + in->challenge.len + vin_len + 1 + 12;
  uint8_t *m = vk_call_alloc(call, len);
  if (m == NULL) {
    return NULL;
  }
  CBB cbb;
  size_t written;
  if (!CBB_init_fixed(&cbb, m, len) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)kProofContext,
                     sizeof(kProofContext)) ||
      !CBB_add_bytes(&cbb, in->challenge.data, in->challenge.len) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)vin, vin_len + 1) ||
      !CBB_add_u32(&cbb, (uint32_t)in->function) ||
      !CBB_add_u64(&cbb, (uint64_t)in->timestamp_ms) ||
      !CBB_finish(&cbb, NULL, &written)) {
    CBB_cleanup(&cbb);
    return NULL;
  }
  *out_len = written;
  return m;
}

static uint64_t load_be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) {
    v = v << 8 | p[i];
  }
  return v;
}

// A challenge with the bound prefix must name this very call and item;
// returns false (with a denial) when it does not. Other challenges pass.
static bool bound_challenge_matches(const verify_req_t *r, item_t *it) {
  const ProtobufCBinaryData *c = &it->in->challenge;
  if (c->len < kBoundPrefixLen ||
      memcmp(c->data, kBoundPrefix, kBoundPrefixLen) != 0) {
    return true;
  }
  const uint8_t *epoch = c->data + kBoundPrefixLen;
  const uint8_t *counter = epoch + VK_SESSION_EPOCH_LEN;
  size_t index = (size_t)(it - r->items);
  const char *why = NULL;
  if (!r->in_session) {
    why = "a session-bound challenge needs the vehicle's session call";
  } else if (c->len < kBoundLen ||
             memcmp(epoch, r->session.epoch, VK_SESSION_EPOCH_LEN) != 0 ||
             load_be64(counter) != r->session.counter || counter[8] != index) {
    why = "the challenge is bound to another session call or item";
  }
  if (why != NULL) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_CHALLENGE_MISMATCH, why);
    return false;
  }
  it->bound_challenge = true;
  return true;
}

// Cheap checks of one item; returns false when the issuer is not known yet.
static bool parse_item(verify_req_t *r, item_t *it, int64_t now_ms) {
  const Vkey__V1__VerifyKeyItem *in = it->in;
  if (in == NULL || in->key == NULL ||
      in->key->claims.len > VK_KEYTOKEN_MAX_CLAIMS ||
      in->key->signature.len != 64) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_MALFORMED_KEY,
         "the key token is missing or malformed");
    return true;
  }
  if (it->claims == NULL) {
    it->claims = vkey__v1__key_claims__unpack(
        vk_call_allocator(r->call), in->key->claims.len, in->key->claims.data);
  }
  Vkey__V1__KeyClaims *c = it->claims;
  if (c == NULL || c->format != VK_KEYTOKEN_FORMAT ||
      !vk_key_id_valid(c->key_id) ||
      !vk_public_key_valid(holder_alg(c), c->holder_public_key.data,
                           c->holder_public_key.len)) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_MALFORMED_KEY,
         "the key's claims do not parse");
    return true;
  }
  if (strcmp(c->vin, r->vin) != 0) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_WRONG_VEHICLE,
         "the key is for another vehicle");
    return true;
  }
  it->issuer_public =
      vk_verify_cache_issuer(r->app->verify_cache, c->issuer_key_id);
  if (it->issuer_public == NULL) {
    if (!r->issuers_loaded) {
      return false;
    }
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_UNKNOWN_ISSUER,
         "the key was signed by an unknown issuer key");
    return true;
  }
  int64_t now_s = now_ms / 1000;
  if (c->validity != NULL && c->validity->not_before != 0 &&
      now_s < c->validity->not_before) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_NOT_YET_VALID,
         "the key is not valid yet");
  } else if (c->validity != NULL && c->validity->not_after != 0 &&
             now_s > c->validity->not_after) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_EXPIRED, "the key expired");
  } else if (!has_function(c, (int)in->function)) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_FUNCTION_NOT_PERMITTED,
         "the key does not permit this function");
  } else if (in->challenge.len < kMinChallenge ||
             in->challenge.len > kMaxChallenge) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_BAD_PROOF,
         "the challenge must be 16 to 64 bytes");
  } else if (!bound_challenge_matches(r, it)) {
    // denied
  } else if (in->timestamp_ms < now_ms - kProofWindowMs ||
             in->timestamp_ms > now_ms + kProofWindowMs) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_STALE_PROOF,
         "the phone's proof is not fresh (30 s)");
  }
  SHA256_CTX sha;
  SHA256_Init(&sha);
  SHA256_Update(&sha, in->key->claims.data, in->key->claims.len);
  SHA256_Update(&sha, in->key->signature.data, 64);
  SHA256_Final(it->token_digest, &sha);
  it->token_known_good =
      vk_verify_cache_token_ok(r->app->verify_cache, it->token_digest, now_ms);
  return true;
}

static void issuers_loaded(vk_redis_t *redis, int status,
                           const redisReply *reply, void *priv) {
  (void)redis;
  verify_req_t *r = priv;
  if (vk_call_is_done(r->call)) {
    vk_call_unref(r->call);
    return;
  }
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    fail(r, VK_GRPC_UNAVAILABLE, "key store unavailable");
    return;
  }
  for (size_t i = 0; i + 1 < reply->elements; i += 2) {
    const redisReply *id = reply->element[i];
    const redisReply *pub = reply->element[i + 1];
    if (id->type == REDIS_REPLY_STRING && pub->type == REDIS_REPLY_STRING &&
        pub->len == 32) {
      vk_verify_cache_issuer_put(r->app->verify_cache, id->str,
                                 (const uint8_t *)pub->str);
    }
  }
  r->issuers_loaded = true;
  stage_parse(r);
}

static void stage_parse(verify_req_t *r) {
  int64_t now_ms = vk_wall_ms();
  bool need_issuers = false;
  for (size_t i = 0; i < r->n; i++) {
    if (!r->items[i].decided && !parse_item(r, &r->items[i], now_ms)) {
      need_issuers = true;
    }
  }
  if (need_issuers) {
    if (vk_redis_command(r->app->redis, issuers_loaded, r, "HGETALL %s",
                         VK_REDIS_ISSUERS) != VK_OK) {
      fail(r, VK_GRPC_UNAVAILABLE, "key store unavailable");
    }
    return;
  }
  stage_state(r);
}

// --- state: the key's status, from the cache or Redis ----------------------

static void apply_state(item_t *it) {
  switch (it->state.status) {
    case 0:
      deny(it, VKEY__V1__DENY_REASON__DENY_REASON_UNKNOWN_KEY, "no such key");
      return;
    case VKEY__V1__KEY_STATUS__KEY_STATUS_ACTIVE:
      break;
    case VKEY__V1__KEY_STATUS__KEY_STATUS_SUSPENDED:
      deny(it, VKEY__V1__DENY_REASON__DENY_REASON_SUSPENDED,
           "the key is suspended");
      return;
    case VKEY__V1__KEY_STATUS__KEY_STATUS_REVOKED:
      deny(it, VKEY__V1__DENY_REASON__DENY_REASON_REVOKED,
           "the key was revoked");
      return;
    default:
      deny(it, VKEY__V1__DENY_REASON__DENY_REASON_DELETED,
           "the key was deleted");
      return;
  }
  if (it->claims->version < it->state.version) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_OUTDATED_KEY,
         "a newer version of this key exists");
  }
}

static void state_read(vk_redis_t *redis, int status, const redisReply *reply,
                       void *priv) {
  (void)redis;
  item_t *it = priv;
  verify_req_t *r = it->req;
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY ||
      reply->elements != 2) {
    // Fail closed: without the key's status nothing is allowed.
    if (!vk_call_is_done(r->call)) {
      vk_call_finish(r->call, VK_GRPC_UNAVAILABLE, "key store unavailable");
    }
  } else {
    const redisReply *st = reply->element[0];
    const redisReply *ver = reply->element[1];
    it->state.status = st->type == REDIS_REPLY_STRING ? atoi(st->str) : 0;
    it->state.version =
        ver->type == REDIS_REPLY_STRING ? strtoull(ver->str, NULL, 10) : 0;
    vk_verify_cache_status_put(r->app->verify_cache, it->claims->key_id,
                               &it->state, it->cache_stamp);
    apply_state(it);
  }
  step_done(r);
}

// The Redis half of the token-signature cache, shared by instances:
// vk:veh:{VIN}:sig:<hex SHA-256 of claims and signature>, set once a
// signature verified, for as long as the in-process entry lives.
static void token_sig_key(char out[VK_REDIS_KEY_MAX], const verify_req_t *r,
                          const item_t *it) {
  char suffix[4 + 2 * 32 + 1] = "sig:";
  vk_hex_encode(suffix + 4, it->token_digest, 32);
  vk_store_vehicle_sub(out, r->vin, suffix);
}

static void token_sig_read(vk_redis_t *redis, int status,
                           const redisReply *reply, void *priv) {
  (void)redis;
  item_t *it = priv;
  verify_req_t *r = it->req;
  // A failure here only costs a verification on the workers.
  if (status == VK_OK && reply->type == REDIS_REPLY_INTEGER &&
      reply->integer == 1) {
    it->token_known_good = true;
    vk_verify_cache_token_put(r->app->verify_cache, it->token_digest,
                              vk_wall_ms());
  }
  step_done(r);
}

static void token_sig_written(vk_redis_t *redis, int status,
                              const redisReply *reply, void *priv) {
  (void)redis;
  (void)status;
  (void)reply;
  (void)priv;
}

static void stage_state(verify_req_t *r) {
  r->next = stage_crypto;
  r->pending = 1;  // held until every read is sent
  for (size_t i = 0; i < r->n && !vk_call_is_done(r->call); i++) {
    item_t *it = &r->items[i];
    if (it->decided) {
      continue;
    }
    // The stamp says which invalidations the state we use has seen; the
    // commit compares it again (see stage_commit).
    it->cache_stamp =
        vk_verify_cache_stamp(r->app->verify_cache, it->claims->key_id);
    if (!it->token_known_good) {
      char sig_key[VK_REDIS_KEY_MAX];
      token_sig_key(sig_key, r, it);
      const char *argv[] = {"EXISTS", sig_key};
      if (vk_redis_command_argv(r->app->redis, token_sig_read, it, 2, argv,
                                NULL) == VK_OK) {
        r->pending++;
      }
    }
    if (vk_verify_cache_status_get(r->app->verify_cache, it->claims->key_id,
                                   &it->state)) {
      apply_state(it);
      continue;
    }
    char key[VK_REDIS_KEY_MAX];
    vk_store_key(key, it->claims->key_id);
    const char *argv[] = {"HMGET", key, "status", "ver"};
    if (vk_redis_command_argv(r->app->redis, state_read, it, 4, argv, NULL) !=
        VK_OK) {
      vk_call_finish(r->call, VK_GRPC_UNAVAILABLE, "key store unavailable");
      break;
    }
    r->pending++;
  }
  step_done(r);
}

// --- crypto: all public-key work of the request, in worker batches ------

static void crypto_done(vk_crypto_job_t *job, int status, void *arg) {
  (void)job;
  verify_req_t *r = arg;
  if (status != VK_OK && !vk_call_is_done(r->call)) {
    vk_call_finish(r->call, VK_GRPC_UNAVAILABLE, "server shutting down");
  }
  step_done(r);
}

// Adds an op to the request's current job, starting a new job when full.
static vk_crypto_op_t *next_op(verify_req_t *r, vk_crypto_job_t **job) {
  if (*job == NULL || (*job)->n_ops == VK_CRYPTO_MAX_OPS) {
    vk_crypto_job_t *j = vk_call_alloc(r->call, sizeof(*j));
    if (j == NULL) {
      return NULL;
    }
    if (*job != NULL) {
      // Submit the full one; the request waits for each job.
      r->pending++;
      if (vk_crypto_submit(r->app->workers, *job) != VK_OK) {
        r->pending--;
        return NULL;
      }
    }
    j->done = crypto_done;
    j->arg = r;
    *job = j;
  }
  return &(*job)->ops[(*job)->n_ops++];
}

static bool queue_item_crypto(verify_req_t *r, item_t *it,
                              vk_crypto_job_t **job) {
  const Vkey__V1__VerifyKeyItem *in = it->in;
  const Vkey__V1__KeyClaims *c = it->claims;
  if (!it->token_known_good) {
    size_t len;
    uint8_t *msg =
        vk_keytoken_message(vk_call_allocator(r->call), in->key->claims.data,
                            in->key->claims.len, &len);
    vk_crypto_op_t *op = msg != NULL ? next_op(r, job) : NULL;
    if (op == NULL) {
      return false;
    }
    *op = (vk_crypto_op_t){.alg = VK_SIG_ED25519,
                           .public_key = it->issuer_public,
                           .public_key_len = 32,
                           .msg = msg,
                           .msg_len = len,
                           .sig = in->key->signature.data,
                           .sig_len = 64};
    it->token_op = op;
  }
  size_t len;
  uint8_t *msg = proof_message(r->call, r->vin, in, &len);
  vk_crypto_op_t *op = msg != NULL ? next_op(r, job) : NULL;
  if (op == NULL) {
    return false;
  }
  *op = (vk_crypto_op_t){.alg = holder_alg(c),
                         .public_key = c->holder_public_key.data,
                         .public_key_len = c->holder_public_key.len,
                         .msg = msg,
                         .msg_len = len,
                         .sig = in->phone_signature.data,
                         .sig_len = in->phone_signature.len};
  it->proof_op = op;
  return true;
}

static void crypto_results(verify_req_t *r);

static void stage_crypto(verify_req_t *r) {
  r->next = crypto_results;
  r->pending = 1;
  vk_crypto_job_t *job = NULL;
  for (size_t i = 0; i < r->n; i++) {
    item_t *it = &r->items[i];
    if (!it->decided && !queue_item_crypto(r, it, &job)) {
      vk_call_finish(r->call, VK_GRPC_RESOURCE_EXHAUSTED,
                     "server busy: signature queue full");
      step_done(r);
      return;
    }
  }
  if (job != NULL) {
    if (vk_crypto_submit(r->app->workers, job) != VK_OK) {
      vk_call_finish(r->call, VK_GRPC_RESOURCE_EXHAUSTED,
                     "server busy: signature queue full");
      step_done(r);
      return;
    }
    // The last job replaces the hold taken above.
    return;
  }
  step_done(r);
}

static void crypto_results(verify_req_t *r) {
  int64_t now_ms = vk_wall_ms();
  for (size_t i = 0; i < r->n; i++) {
    item_t *it = &r->items[i];
    if (it->decided) {
      continue;
    }
    if (it->token_op != NULL) {
      if (!it->token_op->ok) {
        deny(it, VKEY__V1__DENY_REASON__DENY_REASON_BAD_KEY_SIGNATURE,
             "the key's signature does not verify");
        continue;
      }
      vk_verify_cache_token_put(r->app->verify_cache, it->token_digest, now_ms);
      char sig_key[VK_REDIS_KEY_MAX];
      token_sig_key(sig_key, r, it);
      vk_redis_command(r->app->redis, token_sig_written, NULL, "SET %s 1 EX %d",
                       sig_key, VK_TOKEN_SIG_TTL_MS / 1000);
    }
    if (!it->proof_op->ok) {
      deny(it, VKEY__V1__DENY_REASON__DENY_REASON_BAD_PROOF,
           "the phone's proof of possession does not verify");
    }
  }
  stage_commit(r);
}

// --- commit ---------------------------------------------------------------

static void committed(vk_redis_t *redis, int status, const redisReply *reply,
                      void *priv) {
  (void)redis;
  item_t *it = priv;
  verify_req_t *r = it->req;
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY ||
      reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_INTEGER) {
    if (!vk_call_is_done(r->call)) {
      vk_call_finish(r->call, VK_GRPC_UNAVAILABLE, "key store unavailable");
    }
    step_done(r);
    return;
  }
  long long code = reply->element[0]->integer;
  long long value = reply->element[1]->type == REDIS_REPLY_INTEGER
                        ? reply->element[1]->integer
                        : 0;
  switch (code) {
    case 0:
      it->decided = true;  // allowed
      break;
    case 1:
      deny(it, VKEY__V1__DENY_REASON__DENY_REASON_CHALLENGE_REUSED,
           "this challenge was already used");
      break;
    case 2:
    case 5:
      it->state.status = code == 5 ? 0 : (int)value;
      apply_state(it);
      break;
    case 3:
      deny(it, VKEY__V1__DENY_REASON__DENY_REASON_USES_EXHAUSTED,
           "the key has no uses left");
      break;
    default:
      it->state.version = (uint64_t)value;
      apply_state(it);
      break;
  }
  step_done(r);
}

static void challenge_set(vk_redis_t *redis, int status,
                          const redisReply *reply, void *priv) {
  (void)redis;
  item_t *it = priv;
  verify_req_t *r = it->req;
  if (status != VK_OK || reply->type == REDIS_REPLY_ERROR) {
    if (!vk_call_is_done(r->call)) {
      vk_call_finish(r->call, VK_GRPC_UNAVAILABLE, "key store unavailable");
    }
  } else if (reply->type == REDIS_REPLY_NIL) {
    deny(it, VKEY__V1__DENY_REASON__DENY_REASON_CHALLENGE_REUSED,
         "this challenge was already used");
  } else {
    it->decided = true;  // allowed
  }
  step_done(r);
}

// The state this item was judged on is still current if no invalidation of
// its vehicle, and no feed outage, came since it was read: then the key's
// status needs no second look in Redis and only the challenge is written.
// Keys with a use limit always take the script, which counts atomically.
static bool state_still_current(const verify_req_t *r, const item_t *it) {
  return it->claims->max_uses == 0 && it->cache_stamp != 0 &&
         it->cache_stamp ==
             vk_verify_cache_stamp(r->app->verify_cache, it->claims->key_id);
}

static void stage_commit(verify_req_t *r) {
  r->next = answer;
  r->pending = 1;
  for (size_t i = 0; i < r->n && !vk_call_is_done(r->call); i++) {
    item_t *it = &r->items[i];
    if (it->decided) {
      continue;
    }
    if (it->bound_challenge && state_still_current(r, it)) {
      it->decided = true;  // allowed: the session counter spent the challenge
      continue;
    }
    char key[VK_REDIS_KEY_MAX], chal[VK_REDIS_KEY_MAX];
    char suffix[8 + 2 * kMaxChallenge + 1];
    memcpy(suffix, "chal:", 5);
    vk_hex_encode(suffix + 5, it->in->challenge.data, it->in->challenge.len);
    vk_store_key(key, it->claims->key_id);
    vk_store_vehicle_sub(chal, r->vin, suffix);
    if (state_still_current(r, it)) {
      const char *argv[] = {"SET", chal, "1", "NX", "EX", kChallengeTtl};
      if (vk_redis_command_argv(r->app->redis, challenge_set, it, 6, argv,
                                NULL) != VK_OK) {
        vk_call_finish(r->call, VK_GRPC_UNAVAILABLE, "key store unavailable");
        break;
      }
      r->pending++;
      continue;
    }
    char max_uses[16], ttl[16], ver[24];
    snprintf(max_uses, sizeof(max_uses), "%u", it->claims->max_uses);
    // A TTL of 0 tells the script the challenge needs no record.
    snprintf(ttl, sizeof(ttl), "%d", it->bound_challenge ? 0 : kChallengeTtlS);
    snprintf(ver, sizeof(ver), "%llu", (unsigned long long)it->claims->version);
    const char *args[] = {key, chal, max_uses, ttl, ver};
    size_t lens[] = {strlen(key), strlen(chal), strlen(max_uses), strlen(ttl),
                     strlen(ver)};
    if (vk_redis_eval(r->app->redis, commit_script(), committed, it, 2, 5, args,
                      lens) != VK_OK) {
      vk_call_finish(r->call, VK_GRPC_UNAVAILABLE, "key store unavailable");
      break;
    }
    r->pending++;
  }
  step_done(r);
}

// --- answer ---------------------------------------------------------------

static void fill_result(Vkey__V1__VerifyKeyResult *res, const item_t *it) {
  vkey__v1__verify_key_result__init(res);
  bool allowed = it->decided &&
                 it->reason == VKEY__V1__DENY_REASON__DENY_REASON_UNSPECIFIED;
  res->decision = allowed ? VKEY__V1__DECISION__DECISION_ALLOW
                          : VKEY__V1__DECISION__DECISION_DENY;
  res->reason = it->reason;
  // protobuf-c wants `char *`; these strings are only read by pack().
  static char empty[] = "";
  res->key_id = it->claims != NULL ? it->claims->key_id : empty;
  res->detail = it->detail != NULL ? (char *)it->detail : empty;
}

static void answer(verify_req_t *r) {
  vk_call_t *call = r->call;
  if (r->batch) {
    Vkey__V1__VerifyKeysResponse resp = VKEY__V1__VERIFY_KEYS_RESPONSE__INIT;
    Vkey__V1__VerifyKeyResult *results =
        vk_call_alloc(call, r->n * sizeof(*results));
    Vkey__V1__VerifyKeyResult **ptrs =
        vk_call_alloc(call, r->n * sizeof(*ptrs));
    if (results == NULL || ptrs == NULL) {
      fail(r, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
    for (size_t i = 0; i < r->n; i++) {
      fill_result(&results[i], &r->items[i]);
      ptrs[i] = &results[i];
    }
    resp.n_results = r->n;
    resp.results = ptrs;
    vk_call_send(call, &resp.base);
  } else {
    Vkey__V1__VerifyKeyResult result;
    fill_result(&result, &r->items[0]);
    Vkey__V1__VerifyKeyResponse resp = VKEY__V1__VERIFY_KEY_RESPONSE__INIT;
    resp.result = &result;
    vk_call_send(call, &resp.base);
  }
  vk_call_finish(call, VK_GRPC_OK, NULL);
  vk_call_unref(call);
}

// --- entry points -----------------------------------------------------------

static vk_app_t *app_of(vk_call_t *call) {
  return vk_call_service_ctx(call);
}

// Both kinds of caller: a vehicle in its session, or a cloud service with an
// operator credential.
// `session` is NULL for a cloud service's call.
typedef void (*authed_fn)(vk_call_t *call, const vk_session_call_t *session,
                          void *arg);

typedef struct {
  authed_fn next;
  void *arg;
  const char *vin;
  size_t cost;  // rate-limit tokens: the number of items
} auth_step_t;

// The per-vehicle and per-caller rate limits. A refusal carries the
// standard gRPC retry hint, grpc-retry-pushback-ms, in its trailers.
static bool admit(vk_call_t *call, const auth_step_t *s, const char *caller) {
  vk_app_t *app = app_of(call);
  uint64_t now = vk_now_ms();
  uint64_t retry_ms = 0;
  const char *which = NULL;
  if (!vk_ratelimit_take(app->vehicle_limit, s->vin, (double)s->cost, now,
                         &retry_ms)) {
    which = "this vehicle";
  } else if (!vk_ratelimit_take(app->caller_limit, caller, (double)s->cost, now,
                                &retry_ms)) {
    which = "this caller";
  }
  if (which == NULL) {
    return true;
  }
  char hint[24], msg[96];
  int n = snprintf(hint, sizeof(hint), "%llu", (unsigned long long)retry_ms);
  vk_call_add_trailer(call, "grpc-retry-pushback-ms", (const uint8_t *)hint,
                      (size_t)n);
  snprintf(msg, sizeof(msg), "rate limit of %s reached; retry in %llu ms",
           which, (unsigned long long)retry_ms);
  vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, msg);
  return false;
}

// The rate limiters' caller names: "vehicle:<VIN>", "service:<subject>".
static void caller_name(char *out, const char *kind, const char *name,
                        size_t name_len) {
  size_t kind_len = strlen(kind);
  memcpy(out, kind, kind_len);
  memcpy(out + kind_len, name, name_len);
  out[kind_len + name_len] = '\0';
}

static void after_session(vk_call_t *call, const vk_session_call_t *accepted,
                          void *arg) {
  auth_step_t *s = arg;
  char caller[VK_VIN_LEN + 9];
  caller_name(caller, "vehicle:", s->vin, VK_VIN_LEN);
  if (accepted != NULL && admit(call, s, caller)) {
    s->next(call, accepted, s->arg);
  }
}

static void after_bearer(vk_call_t *call, const vk_identity_t *who, void *arg) {
  auth_step_t *s = arg;
  char caller[VK_SUBJECT_MAX + 10];
  caller_name(caller, "service:", who->subject,
              strnlen(who->subject, VK_SUBJECT_MAX));
  if (admit(call, s, caller)) {
    s->next(call, NULL, s->arg);
  }
}

static void authenticate(vk_call_t *call, const char *vin, size_t cost,
                         authed_fn next, void *arg) {
  auth_step_t *s = vk_call_alloc(call, sizeof(*s));
  if (s == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  s->next = next;
  s->arg = arg;
  s->vin = vin;
  s->cost = cost;
  if (vk_session_has_auth(call)) {
    vk_session_auth(app_of(call), call, vin, after_session, s);
  } else {
    vk_auth_bearer(app_of(call), call, VK_ROLE_OPERATOR, false, after_bearer,
                   s);
  }
}

static void start_verify(vk_call_t *call, const vk_session_call_t *session,
                         void *arg) {
  verify_req_t *r = arg;
  if (session != NULL) {
    r->in_session = true;
    r->session = *session;
  }
  vk_call_ref(call);
  stage_parse(r);
}

static verify_req_t *new_request(vk_call_t *call, const char *vin,
                                 Vkey__V1__VerifyKeyItem **items, size_t n,
                                 bool batch) {
  if (!vk_vin_valid(vin)) {
    vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT, "vin: not a valid VIN");
    return NULL;
  }
  if (n == 0 || n > kMaxItems) {
    vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT,
                   "items: give 1 to 64 keys to verify");
    return NULL;
  }
  verify_req_t *r = vk_call_alloc(call, sizeof(*r));
  item_t *its = vk_call_alloc(call, n * sizeof(*its));
  if (r == NULL || its == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return NULL;
  }
  r->app = app_of(call);
  r->call = call;
  snprintf(r->vin, sizeof(r->vin), "%s", vin);
  r->items = its;
  r->n = n;
  r->batch = batch;
  for (size_t i = 0; i < n; i++) {
    its[i].req = r;
    its[i].in = items[i];
  }
  return r;
}

static void verify_key_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const Vkey__V1__VerifyKeyRequest *req =
      (const Vkey__V1__VerifyKeyRequest *)msg;
  Vkey__V1__VerifyKeyItem *item = req->item;
  verify_req_t *r = new_request(call, req->vin, &item, item ? 1 : 0, false);
  if (r != NULL) {
    authenticate(call, req->vin, 1, start_verify, r);
  }
}

static void verify_keys_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const Vkey__V1__VerifyKeysRequest *req =
      (const Vkey__V1__VerifyKeysRequest *)msg;
  verify_req_t *r = new_request(call, req->vin, req->items, req->n_items, true);
  if (r != NULL) {
    authenticate(call, req->vin, req->n_items, start_verify, r);
  }
}

// OpenSession: the vehicle's assertion, then the session crypto.
static void open_session_authed(vk_call_t *call, const vk_identity_t *who,
                                void *arg) {
  const Vkey__V1__OpenSessionRequest *req = arg;
  vk_session_open(app_of(call), call, who->subject,
                  req->vehicle_public_key.data);
}

static void open_session_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const Vkey__V1__OpenSessionRequest *req =
      (const Vkey__V1__OpenSessionRequest *)msg;
  if (!vk_vin_valid(req->vin)) {
    vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT, "vin: not a valid VIN");
    return;
  }
  if (req->vehicle_public_key.len != 32) {
    vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT,
                   "vehicle_public_key: want a 32-byte X25519 public key");
    return;
  }
  vk_auth_vehicle(app_of(call), call, req->vin, open_session_authed,
                  (void *)req);
}

// CheckKeyStatus: statuses from the cache, else Redis (pipelined).
typedef struct {
  vk_call_t *call;
  vk_app_t *app;
  const Vkey__V1__CheckKeyStatusRequest *req;
  Vkey__V1__KeyStatusEntry *entries;
  size_t pending;
  bool failed;
} status_req_t;

typedef struct {
  status_req_t *s;
  size_t index;
  uint64_t cache_stamp;  // taken before the read
} status_read_t;

static void status_answer(status_req_t *s) {
  vk_call_t *call = s->call;
  if (!vk_call_is_done(call) && !s->failed) {
    size_t n = s->req->n_key_ids;
    Vkey__V1__KeyStatusEntry **ptrs = vk_call_alloc(call, n * sizeof(*ptrs));
    if (ptrs == NULL) {
      vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    } else {
      for (size_t i = 0; i < n; i++) {
        ptrs[i] = &s->entries[i];
      }
      Vkey__V1__CheckKeyStatusResponse resp =
          VKEY__V1__CHECK_KEY_STATUS_RESPONSE__INIT;
      resp.n_keys = n;
      resp.keys = ptrs;
      vk_call_send(call, &resp.base);
      vk_call_finish(call, VK_GRPC_OK, NULL);
    }
  }
  vk_call_unref(call);
}

static void status_read(vk_redis_t *redis, int status, const redisReply *reply,
                        void *priv) {
  (void)redis;
  status_read_t *rd = priv;
  status_req_t *s = rd->s;
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY ||
      reply->elements != 2) {
    if (!s->failed && !vk_call_is_done(s->call)) {
      vk_call_finish(s->call, VK_GRPC_UNAVAILABLE, "key store unavailable");
    }
    s->failed = true;
  } else {
    vk_key_state_t st = {0, 0};
    if (reply->element[0]->type == REDIS_REPLY_STRING) {
      st.status = atoi(reply->element[0]->str);
    }
    if (reply->element[1]->type == REDIS_REPLY_STRING) {
      st.version = strtoull(reply->element[1]->str, NULL, 10);
    }
    Vkey__V1__KeyStatusEntry *e = &s->entries[rd->index];
    e->status = (Vkey__V1__KeyStatus)st.status;
    e->version = st.version;
    vk_verify_cache_status_put(s->app->verify_cache, e->key_id, &st,
                               rd->cache_stamp);
  }
  if (--s->pending == 0) {
    status_answer(s);
  }
}

static void check_status_authed(vk_call_t *call,
                                const vk_session_call_t *session, void *arg) {
  (void)session;
  status_req_t *s = arg;
  size_t n = s->req->n_key_ids;
  s->entries = vk_call_alloc(call, n * sizeof(*s->entries));
  status_read_t *reads = vk_call_alloc(call, n * sizeof(*reads));
  if (s->entries == NULL || reads == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_call_ref(call);
  s->pending = 1;
  for (size_t i = 0; i < n && !s->failed; i++) {
    Vkey__V1__KeyStatusEntry *e = &s->entries[i];
    vkey__v1__key_status_entry__init(e);
    e->key_id = s->req->key_ids[i];
    vk_key_state_t st;
    if (vk_verify_cache_status_get(s->app->verify_cache, e->key_id, &st)) {
      e->status = (Vkey__V1__KeyStatus)st.status;
      e->version = st.version;
      continue;
    }
    char key[VK_REDIS_KEY_MAX];
    vk_store_key(key, e->key_id);
    reads[i] = (status_read_t){
        s, i, vk_verify_cache_stamp(s->app->verify_cache, e->key_id)};
    if (vk_redis_command(s->app->redis, status_read, &reads[i],
                         "HMGET %s status ver", key) != VK_OK) {
      vk_call_finish(call, VK_GRPC_UNAVAILABLE, "key store unavailable");
      s->failed = true;
      break;
    }
    s->pending++;
  }
  if (--s->pending == 0) {
    status_answer(s);
  }
}

static void check_status_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const Vkey__V1__CheckKeyStatusRequest *req =
      (const Vkey__V1__CheckKeyStatusRequest *)msg;
  if (!vk_vin_valid(req->vin)) {
    vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT, "vin: not a valid VIN");
    return;
  }
  if (req->n_key_ids == 0 || req->n_key_ids > kMaxItems) {
    vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT,
                   "key_ids: give 1 to 64 key ids");
    return;
  }
  for (size_t i = 0; i < req->n_key_ids; i++) {
    const char *id = req->key_ids[i];
    if (!vk_key_id_valid(id) || strncmp(id, req->vin, VK_VIN_LEN) != 0) {
      vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT,
                     "key_ids: each must be a key id of this vehicle");
      return;
    }
  }
  status_req_t *s = vk_call_alloc(call, sizeof(*s));
  if (s == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  s->call = call;
  s->app = app_of(call);
  s->req = req;
  authenticate(call, req->vin, req->n_key_ids, check_status_authed, s);
}

static const vk_method_t kMethods[] = {
    {.name = "OpenSession",
     .kind = VK_RPC_UNARY,
     .input = &vkey__v1__open_session_request__descriptor,
     .output = &vkey__v1__open_session_response__descriptor,
     .on_start = open_session_start},
    {.name = "VerifyKey",
     .kind = VK_RPC_UNARY,
     .input = &vkey__v1__verify_key_request__descriptor,
     .output = &vkey__v1__verify_key_response__descriptor,
     .on_start = verify_key_start,
     .keep_request_bytes = true},
    {.name = "VerifyKeys",
     .kind = VK_RPC_UNARY,
     .input = &vkey__v1__verify_keys_request__descriptor,
     .output = &vkey__v1__verify_keys_response__descriptor,
     .on_start = verify_keys_start,
     .keep_request_bytes = true},
    {.name = "CheckKeyStatus",
     .kind = VK_RPC_UNARY,
     .input = &vkey__v1__check_key_status_request__descriptor,
     .output = &vkey__v1__check_key_status_response__descriptor,
     .on_start = check_status_start,
     .keep_request_bytes = true},
};

const vk_service_t *vk_verify_service(vk_app_t *app) {
  app->verify_service = (vk_service_t){.name = "vkey.v1.VerifyService",
                                       .methods = kMethods,
                                       .n_methods = VK_ARRAY_LEN(kMethods),
                                       .ctx = app};
  return &app->verify_service;
}
