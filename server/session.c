// session.c: vehicle sessions, as specified in docs/SESSIONS.md.
//
// The hot part is vk_session_auth: a cache hit costs one SHA-256 of the
// request and one HMAC, and the counter is decided in process within this
// instance's lease; once per lease (up to VK_COUNTER_LEASE_MAX counters) a
// Redis script grants the next. A miss adds one Redis read. OpenSession does
// its X25519 and Ed25519 work in one worker job.
#include "session.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/aead.h>
#include <openssl/bytestring.h>
#include <openssl/curve25519.h>
#include <openssl/digest.h>
#include <openssl/hkdf.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "counter_lease.h"
#include "log.h"
#include "script.h"
#include "store.h"
#include "verify_cache.h"
#include "vkey/v1/verify.pb-c.h"

enum {
  kEpochLen = VK_SESSION_EPOCH_LEN,
  kKeyLen = 32,
  kMaxAuthLen = 256,
  kMaxRequestAheadMs = 60 * 1000,
  kGcmNonceLen = 12,
  kGcmTagLen = 16,
  kWrappedLen = kGcmNonceLen + kKeyLen + kGcmTagLen,
};

static const char kSessionContext[] = "vkey-session-v1";
static const char kRequestContext[] = "vkey-req-v1";
static const char kSyncContext[] = "vkey-session-sync-v1";
static const char kWrapContext[] = "vkey-session-wrap-v1";

// A lease of counters for this instance (counter_lease.h): returns
// {floor, new floor} after moving the floor past max(floor, counter) +
// extra, or {-1, 0} when the epoch is not the session's (expired, replaced).
static const char kLeaseScript[] =
    "if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {-1, 0} "
    "end\n"
    "local f = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0')\n"
    "local to = math.max(f, tonumber(ARGV[2])) + tonumber(ARGV[3])\n"
    "redis.call('HSET', KEYS[1], 'floor', string.format('%.0f', to))\n"
    "return {f, to}\n";

// Gives back the unused end of a lease this instance forgets: when nobody
// leased after it, the floor returns to the highest counter it accepted.
static const char kReleaseScript[] =
    "if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] and "
    "redis.call('HGET', KEYS[1], 'floor') == ARGV[2] then\n"
    "  redis.call('HSET', KEYS[1], 'floor', ARGV[3])\n"
    "end\n"
    "return 1\n";

// Both are sent by hash; the hashes are computed once, whichever loop
// asks first.
static vk_redis_script_t s_lease_script;
static vk_redis_script_t s_release_script;
static pthread_once_t s_scripts_once = PTHREAD_ONCE_INIT;

static void init_scripts(void) {
  vk_redis_script_init(&s_lease_script, kLeaseScript);
  vk_redis_script_init(&s_release_script, kReleaseScript);
}

// Replaces the vehicle's session, counters included, and tells the other
// instances (KEYS[2] is the vehicle's notify channel) to forget theirs.
static const char kStoreScript[] =
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'key', ARGV[2], 'exp', "
    "ARGV[3], 'floor', '0')\n"
    "redis.call('PEXPIREAT', KEYS[1], ARGV[3])\n"
    "redis.call('PUBLISH', KEYS[2], 'session')\n"
    "return 1\n";

// A cached session: the MAC key in the clear, so it is wiped on eviction.
typedef struct {
  char vin[VK_VIN_LEN + 1];  // "": empty
  uint64_t vin_hash;         // vin_hash(vin): most misses end on it
  uint8_t epoch[kEpochLen];
  uint8_t key[kKeyLen];
  int64_t expires_at_ms;
  // The vehicle's generation in the verify cache when Redis last confirmed
  // the session: a session replaced elsewhere is published on the
  // vehicle's notify channel, which moves the generation on.
  uint64_t stamp;
  uint64_t used;  // the cache's tick when last used
  vk_counter_lease_t lease;
  // HMAC keyed with `key` once: each request's tag starts from the
  // precomputed pads instead of hashing them again. NULL: out of memory.
  HMAC_CTX *mac;
} session_slot_t;

// Set-associative, LRU within a set: a busy vehicle's lease is not lost to
// one colliding newcomer.
#define SESSION_WAYS 4

struct vk_sessions_s {
  vk_app_t *app;
  uint8_t wrap_key[32];  // AES-256-GCM key for session keys at rest
  session_slot_t *slots;
  size_t n;  // a multiple of SESSION_WAYS
  uint64_t tick;
};

int vk_sessions_new(vk_sessions_t **out, vk_app_t *app, size_t slots) {
  vk_sessions_t *s = calloc(1, sizeof(*s));
  if (s == NULL || slots == 0) {
    free(s);
    return VK_ENOMEM;
  }
  slots = (slots + SESSION_WAYS - 1) / SESSION_WAYS * SESSION_WAYS;
  s->slots = calloc(slots, sizeof(*s->slots));
  if (s->slots == NULL) {
    free(s);
    return VK_ENOMEM;
  }
  s->app = app;
  s->n = slots;
  // Every instance shares the signing key, so every instance derives the
  // same wrapping key; Redis alone cannot unwrap a session key.
  if (!HKDF(s->wrap_key, sizeof(s->wrap_key), EVP_sha256(),
            app->signing_key.private_key, 32, NULL, 0,
            (const uint8_t *)kWrapContext, sizeof(kWrapContext) - 1)) {
    vk_sessions_free(s);
    return VK_ENOMEM;
  }
  *out = s;
  return VK_OK;
}

void vk_sessions_free(vk_sessions_t *s) {
  if (s == NULL) {
    return;
  }
  OPENSSL_cleanse(s->wrap_key, sizeof(s->wrap_key));
  for (size_t i = 0; i < s->n; i++) {
    HMAC_CTX_free(s->slots[i].mac);
  }
  OPENSSL_cleanse(s->slots, s->n * sizeof(*s->slots));
  free(s->slots);
  free(s);
}

// A request hashes its VIN once (auth_ctx_t.vin_hash) for every lookup.
static uint64_t vin_hash(const char *vin) {
  return vk_table_hash(vin, strlen(vin));
}

static session_slot_t *set_of(vk_sessions_t *s, uint64_t hash) {
  return &s->slots[hash % (s->n / SESSION_WAYS) * SESSION_WAYS];
}

// The live cached session (vin, epoch), or NULL. `hash` is vin_hash(vin).
static session_slot_t *find_slot(vk_sessions_t *s, const char *vin,
                                 uint64_t hash,
                                 const uint8_t epoch[kEpochLen]) {
  session_slot_t *set = set_of(s, hash);
  for (size_t i = 0; i < SESSION_WAYS; i++) {
    session_slot_t *e = &set[i];
    if (e->vin_hash == hash && strcmp(e->vin, vin) == 0 &&
        CRYPTO_memcmp(e->epoch, epoch, kEpochLen) == 0 &&
        e->expires_at_ms > vk_wall_ms()) {
      e->used = ++s->tick;
      return e;
    }
  }
  return NULL;
}

static void released(vk_redis_t *r, int status, const redisReply *reply,
                     void *priv) {
  // Best effort: a lease not given back only strands counters.
  (void)r;
  (void)status;
  (void)reply;
  (void)priv;
}

// Forgetting a session we hold a lease of: give its unused end back, so the
// vehicle's next counter is good on any instance without a resync.
static void release_lease(vk_sessions_t *s, const session_slot_t *e) {
  if (e->vin[0] == '\0' || e->lease.hi == 0 ||
      e->expires_at_ms <= vk_wall_ms()) {
    return;
  }
  pthread_once(&s_scripts_once, init_scripts);
  char key[VK_REDIS_KEY_MAX], hi[24], top[24];
  vk_store_vehicle_sub(key, e->vin, "session");
  snprintf(hi, sizeof(hi), "%llu", (unsigned long long)e->lease.hi);
  snprintf(top, sizeof(top), "%llu", (unsigned long long)e->lease.top);
  const char *args[] = {key, (const char *)e->epoch, hi, top};
  size_t lens[] = {strlen(key), kEpochLen, strlen(hi), strlen(top)};
  vk_redis_eval(s->app->redis, &s_release_script, released, NULL, 1, 4, args,
                lens);
}

// Caches a session Redis just confirmed as the vehicle's current one. The
// lease survives when the slot already holds this very session.
static void install_slot(vk_sessions_t *s, const char *vin, uint64_t hash,
                         const uint8_t epoch[kEpochLen],
                         const uint8_t key[kKeyLen], int64_t expires_at_ms,
                         uint64_t stamp) {
  session_slot_t *set = set_of(s, hash);
  session_slot_t *victim = &set[0];
  for (size_t i = 0; i < SESSION_WAYS; i++) {
    session_slot_t *e = &set[i];
    if (strcmp(e->vin, vin) == 0) {
      victim = e;  // the vehicle's: this session, or one it replaced
      break;
    }
    if (e->used < victim->used) {
      victim = e;
    }
  }
  bool same = strcmp(victim->vin, vin) == 0 &&
              memcmp(victim->epoch, epoch, kEpochLen) == 0;
  if (!same) {
    if (strcmp(victim->vin, vin) != 0) {
      release_lease(s, victim);
    }
    HMAC_CTX_free(victim->mac);
    OPENSSL_cleanse(victim, sizeof(*victim));
    memcpy(victim->vin, vin, VK_VIN_LEN + 1);
    victim->vin_hash = hash;
    memcpy(victim->epoch, epoch, kEpochLen);
    memcpy(victim->key, key, kKeyLen);
    victim->mac = HMAC_CTX_new();
    if (victim->mac != NULL &&
        !HMAC_Init_ex(victim->mac, key, kKeyLen, EVP_sha256(), NULL)) {
      HMAC_CTX_free(victim->mac);
      victim->mac = NULL;
    }
  }
  victim->expires_at_ms = expires_at_ms;
  victim->stamp = stamp;
  victim->used = ++s->tick;
}

static bool wrap_key(const vk_sessions_t *s, uint8_t out[kWrappedLen],
                     const uint8_t key[kKeyLen], const char *vin) {
  EVP_AEAD_CTX ctx;
  size_t out_len;
  RAND_bytes(out, kGcmNonceLen);
  bool ok = EVP_AEAD_CTX_init(&ctx, EVP_aead_aes_256_gcm(), s->wrap_key,
                              sizeof(s->wrap_key), kGcmTagLen, NULL) &&
            EVP_AEAD_CTX_seal(&ctx, out + kGcmNonceLen, &out_len,
                              kKeyLen + kGcmTagLen, out, kGcmNonceLen, key,
                              kKeyLen, (const uint8_t *)vin, strlen(vin));
  EVP_AEAD_CTX_cleanup(&ctx);
  return ok;
}

static bool unwrap_key(const vk_sessions_t *s, uint8_t key[kKeyLen],
                       const uint8_t *in, size_t in_len, const char *vin) {
  if (in_len != kWrappedLen) {
    return false;
  }
  EVP_AEAD_CTX ctx;
  size_t out_len;
  bool ok = EVP_AEAD_CTX_init(&ctx, EVP_aead_aes_256_gcm(), s->wrap_key,
                              sizeof(s->wrap_key), kGcmTagLen, NULL) &&
            EVP_AEAD_CTX_open(&ctx, key, &out_len, kKeyLen, in, kGcmNonceLen,
                              in + kGcmNonceLen, in_len - kGcmNonceLen,
                              (const uint8_t *)vin, strlen(vin)) &&
            out_len == kKeyLen;
  EVP_AEAD_CTX_cleanup(&ctx);
  return ok;
}

// --- opening ------------------------------------------------------------

typedef struct {
  vk_job_t job;
  vk_app_t *app;
  vk_call_t *call;
  char vin[VK_VIN_LEN + 1];
  uint8_t vehicle_public[32];
  uint8_t epoch[kEpochLen];
  uint8_t key[kKeyLen];
  uint8_t wrapped[kWrappedLen];
  int64_t expires_at_ms;
  uint8_t *info;  // serialized SessionInfo (arena)
  size_t info_len;
  uint8_t signature[64];
  bool ok;
} open_ctx_t;

static bool derive_key(uint8_t key[kKeyLen], const uint8_t shared[32],
                       const uint8_t epoch[kEpochLen], const char *vin) {
  uint8_t info[sizeof(kSessionContext) + VK_VIN_LEN];
  size_t vin_len = strlen(vin);
  memcpy(info, kSessionContext, sizeof(kSessionContext));
  memcpy(info + sizeof(kSessionContext), vin, vin_len);
  return HKDF(key, kKeyLen, EVP_sha256(), shared, 32, epoch, kEpochLen, info,
              sizeof(kSessionContext) + vin_len) == 1;
}

// Worker thread: key agreement, derivation and the signature.
static void open_run(vk_job_t *job) {
  open_ctx_t *o = vk_container_of(job, open_ctx_t, job);
  uint8_t server_public[32], server_private[32], shared[32];
  X25519_keypair(server_public, server_private);
  o->ok = X25519(shared, server_private, o->vehicle_public) == 1 &&
          derive_key(o->key, shared, o->epoch, o->vin) &&
          wrap_key(o->app->sessions, o->wrapped, o->key, o->vin);
  OPENSSL_cleanse(server_private, sizeof(server_private));
  OPENSSL_cleanse(shared, sizeof(shared));
  if (!o->ok) {
    return;
  }
  Vkey__V1__SessionInfo info = VKEY__V1__SESSION_INFO__INIT;
  info.vin = o->vin;
  info.epoch = (ProtobufCBinaryData){kEpochLen, o->epoch};
  info.server_public_key = (ProtobufCBinaryData){32, server_public};
  info.vehicle_public_key = (ProtobufCBinaryData){32, o->vehicle_public};
  info.clock_time_ms = vk_wall_ms();
  info.expires_at_ms = o->expires_at_ms;
  info.issuer_key_id = o->app->signing_key.key_id;
  size_t len = vkey__v1__session_info__get_packed_size(&info);
  // The message to sign is the context followed by the info: build both in
  // one buffer and keep a view of the info.
  uint8_t *buf = o->info;  // preallocated by the loop: see vk_session_open
  memcpy(buf, kSessionContext, sizeof(kSessionContext));
  o->info_len =
      vkey__v1__session_info__pack(&info, buf + sizeof(kSessionContext));
  o->ok = o->info_len == len &&
          ED25519_sign(o->signature, buf, sizeof(kSessionContext) + len,
                       o->app->signing_key.private_key) == 1;
}

static void open_stored(vk_redis_t *r, int status, const redisReply *reply,
                        void *priv) {
  (void)r;
  open_ctx_t *o = priv;
  vk_call_t *call = o->call;
  if (!vk_call_is_done(call)) {
    if (status != VK_OK || reply->type == REDIS_REPLY_ERROR) {
      vk_call_finish(call, VK_GRPC_UNAVAILABLE, "session store unavailable");
    } else {
      Vkey__V1__SignedSessionInfo signed_info =
          VKEY__V1__SIGNED_SESSION_INFO__INIT;
      signed_info.session_info =
          (ProtobufCBinaryData){o->info_len, o->info + sizeof(kSessionContext)};
      signed_info.signature = (ProtobufCBinaryData){64, o->signature};
      Vkey__V1__OpenSessionResponse resp =
          VKEY__V1__OPEN_SESSION_RESPONSE__INIT;
      resp.session = &signed_info;
      vk_call_send(call, &resp.base);
      vk_call_finish(call, VK_GRPC_OK, NULL);
    }
  }
  OPENSSL_cleanse(o->key, sizeof(o->key));
  vk_call_unref(call);
}

static void open_done(vk_job_t *job, int status) {
  open_ctx_t *o = vk_container_of(job, open_ctx_t, job);
  vk_call_t *call = o->call;
  if (vk_call_is_done(call) || status != VK_OK || !o->ok) {
    if (!vk_call_is_done(call)) {
      vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT,
                     status != VK_OK ? "server shutting down"
                                     : "key agreement failed: bad X25519 key");
    }
    OPENSSL_cleanse(o->key, sizeof(o->key));
    vk_call_unref(call);
    return;
  }
  // Not cached here: the store's own notification would outdate the entry
  // at once. The vehicle's first call reads the session back.
  char key[VK_REDIS_KEY_MAX], notify[VK_REDIS_KEY_MAX];
  vk_store_vehicle_sub(key, o->vin, "session");
  vk_store_vehicle_sub(notify, o->vin, "notify");
  char exp[24];
  snprintf(exp, sizeof(exp), "%lld", (long long)o->expires_at_ms);
  int rv = vk_redis_command(o->app->redis, open_stored, o,
                            "EVAL %s 2 %s %s %b %b %s", kStoreScript, key,
                            notify, o->epoch, (size_t)kEpochLen, o->wrapped,
                            (size_t)kWrappedLen, exp);
  if (rv == VK_OK) {
    return;
  }
  vk_call_finish(call, VK_GRPC_UNAVAILABLE, "session store unavailable");
  OPENSSL_cleanse(o->key, sizeof(o->key));
  vk_call_unref(call);
}

void vk_session_open(vk_app_t *app, vk_call_t *call, const char *vin,
                     const uint8_t vehicle_public[32]) {
  open_ctx_t *o = vk_call_alloc(call, sizeof(*o));
  uint8_t *buf = vk_call_alloc(call, 512);
  if (o == NULL || buf == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  o->app = app;
  o->call = call;
  snprintf(o->vin, sizeof(o->vin), "%s", vin);
  memcpy(o->vehicle_public, vehicle_public, 32);
  RAND_bytes(o->epoch, kEpochLen);
  o->expires_at_ms = vk_wall_ms() + VK_SESSION_TTL_MS;
  o->info = buf;
  o->job.run = open_run;
  o->job.done = open_done;
  vk_call_ref(call);
  if (vk_worker_submit(app->workers, &o->job) != VK_OK) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED,
                   "server busy: crypto queue full");
    vk_call_unref(call);
  }
}

// --- authenticating session calls ------------------------------------------

typedef struct {
  vk_app_t *app;
  vk_call_t *call;
  vk_session_done_fn done;
  void *arg;
  char vin[VK_VIN_LEN + 1];
  uint64_t vin_hash;
  const Vkey__V1__SessionAuth *auth;
  uint8_t digest[SHA256_DIGEST_LENGTH];  // of the request message
  uint8_t key[kKeyLen];
  int64_t session_expires_at_ms;
  uint64_t stamp;  // the vehicle's cache generation before reading Redis
  // The lease when the session left our cache while we asked for one: good
  // for this request alone.
  vk_counter_lease_t lone;
  bool leased;   // Redis granted a lease for this request already
  bool confirm;  // cached session, but Redis must confirm it is current
  char redis_key[VK_REDIS_KEY_MAX];  // set before the first Redis command
} auth_ctx_t;

bool vk_session_has_auth(vk_call_t *call) {
  size_t len;
  return vk_call_metadata(call, "x-vkey-session-bin", &len) != NULL;
}

static void auth_end(auth_ctx_t *a, vk_grpc_status_t status, const char *msg) {
  vk_call_t *call = a->call;
  OPENSSL_cleanse(a->key, sizeof(a->key));
  bool ok = status == VK_GRPC_OK && !vk_call_is_done(call);
  if (status != VK_GRPC_OK) {
    vk_call_finish(call, status, msg);
  }
  vk_session_call_t accepted = {a->auth->epoch.data, a->auth->counter};
  a->done(call, ok ? &accepted : NULL, a->arg);
  vk_call_unref(call);
}

// The lease this request's counter is decided in.
static vk_counter_lease_t *lease_of(auth_ctx_t *a) {
  session_slot_t *slot =
      find_slot(a->app->sessions, a->vin, a->vin_hash, a->auth->epoch.data);
  return slot != NULL ? &slot->lease : &a->lone;
}

// Fresh session info for a vehicle that fell out of step, authenticated with
// the session key and bound to the refused request's tag.
static void add_resync_trailer(auth_ctx_t *a) {
  Vkey__V1__SessionInfo info = VKEY__V1__SESSION_INFO__INIT;
  info.vin = a->vin;
  info.epoch = a->auth->epoch;
  info.counter = vk_counter_resync_point(lease_of(a));
  info.clock_time_ms = vk_wall_ms();
  info.expires_at_ms = a->session_expires_at_ms;
  info.issuer_key_id = a->app->signing_key.key_id;
  uint8_t buf[256];
  size_t ctx_len = sizeof(kSyncContext);
  size_t info_len = vkey__v1__session_info__get_packed_size(&info);
  if (ctx_len + info_len + 32 > sizeof(buf)) {
    return;
  }
  memcpy(buf, kSyncContext, ctx_len);
  vkey__v1__session_info__pack(&info, buf + ctx_len);
  memcpy(buf + ctx_len + info_len, a->auth->tag.data, 32);
  uint8_t mac[32];
  unsigned mac_len;
  HMAC(EVP_sha256(), a->key, kKeyLen, buf, ctx_len + info_len + 32, mac,
       &mac_len);
  Vkey__V1__SignedSessionInfo s = VKEY__V1__SIGNED_SESSION_INFO__INIT;
  s.session_info = (ProtobufCBinaryData){info_len, buf + ctx_len};
  s.mac = (ProtobufCBinaryData){sizeof(mac), mac};
  uint8_t out[320];
  size_t out_len = vkey__v1__signed_session_info__get_packed_size(&s);
  if (out_len <= sizeof(out)) {
    vkey__v1__signed_session_info__pack(&s, out);
    vk_call_add_trailer(a->call, "x-vkey-session-info-bin", out, out_len);
  }
}

static void take_counter(auth_ctx_t *a);
static void read_session(auth_ctx_t *a);

static void lease_granted(vk_redis_t *r, int status, const redisReply *reply,
                          void *priv) {
  (void)r;
  auth_ctx_t *a = priv;
  if (vk_call_is_done(a->call)) {
    auth_end(a, VK_GRPC_OK, NULL);
    return;
  }
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY ||
      reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_INTEGER ||
      reply->element[1]->type != REDIS_REPLY_INTEGER) {
    auth_end(a, VK_GRPC_UNAVAILABLE, "session store unavailable");
    return;
  }
  long long from = reply->element[0]->integer;
  long long to = reply->element[1]->integer;
  if (from < 0) {
    auth_end(a, VK_GRPC_UNAUTHENTICATED,
             "session expired or replaced: open a new session");
    return;
  }
  if (!vk_counter_granted(lease_of(a), (uint64_t)from, (uint64_t)to)) {
    VK_ERROR("session %s: Redis granted counters (%lld, %lld] below ours",
             a->vin, from, to);
    auth_end(a, VK_GRPC_UNAVAILABLE, "session store inconsistent");
    return;
  }
  a->leased = true;
  take_counter(a);
}

// Asks Redis for a lease that covers the request's counter.
static void ask_lease(auth_ctx_t *a) {
  pthread_once(&s_scripts_once, init_scripts);
  char counter[24], extra[24];
  snprintf(counter, sizeof(counter), "%llu",
           (unsigned long long)a->auth->counter);
  snprintf(extra, sizeof(extra), "%llu",
           (unsigned long long)vk_counter_next_extra(lease_of(a)));
  vk_store_vehicle_sub(a->redis_key, a->vin, "session");
  const char *args[] = {a->redis_key, (const char *)a->auth->epoch.data,
                        counter, extra};
  size_t lens[] = {strlen(a->redis_key), kEpochLen, strlen(counter),
                   strlen(extra)};
  if (vk_redis_eval(a->app->redis, &s_lease_script, lease_granted, a, 1, 4,
                    args, lens) != VK_OK) {
    auth_end(a, VK_GRPC_UNAVAILABLE, "session store unavailable");
  }
}

// The counter, in this instance's lease (counter_lease.h).
static void take_counter(auth_ctx_t *a) {
  switch (vk_counter_take(lease_of(a), a->auth->counter)) {
    case VK_COUNTER_OK:
      if (a->confirm) {
        read_session(a);
        return;
      }
      auth_end(a, VK_GRPC_OK, NULL);
      return;
    case VK_COUNTER_REPLAYED:
      add_resync_trailer(a);
      auth_end(a, VK_GRPC_UNAUTHENTICATED, "replayed session counter");
      return;
    case VK_COUNTER_TOO_OLD:
      add_resync_trailer(a);
      auth_end(a, VK_GRPC_UNAUTHENTICATED,
               "session counter too old for the window");
      return;
    case VK_COUNTER_NEED_LEASE:
    default:
      if (a->leased) {  // a lease covers its counter: cannot happen
        auth_end(a, VK_GRPC_UNAVAILABLE, "session store inconsistent");
        return;
      }
      ask_lease(a);
      return;
  }
}

// The request's tag under `mac`, an HMAC context keyed with the session key
// (the cached one, rewound, or a fresh one).
static bool tag_matches(const auth_ctx_t *a, HMAC_CTX *mac, bool keyed) {
  const Vkey__V1__SessionAuth *auth = a->auth;
  const char *path = vk_call_path(a->call);
  uint8_t be[16];
  for (int i = 0; i < 8; i++) {
    be[i] = (uint8_t)(auth->counter >> (56 - 8 * i));
    be[8 + i] = (uint8_t)((uint64_t)auth->expires_at_ms >> (56 - 8 * i));
  }
  uint8_t tag[32];
  unsigned tag_len = 0;
  bool ok = (keyed ? HMAC_Init_ex(mac, NULL, 0, NULL, NULL)
                   : HMAC_Init_ex(mac, a->key, kKeyLen, EVP_sha256(), NULL)) &&
            HMAC_Update(mac, (const uint8_t *)kRequestContext,
                        sizeof(kRequestContext)) &&
            HMAC_Update(mac, (const uint8_t *)a->vin, strlen(a->vin) + 1) &&
            HMAC_Update(mac, (const uint8_t *)path, strlen(path) + 1) &&
            HMAC_Update(mac, auth->epoch.data, kEpochLen) &&
            HMAC_Update(mac, be, sizeof(be)) &&
            HMAC_Update(mac, a->digest, sizeof(a->digest)) &&
            HMAC_Final(mac, tag, &tag_len);
  return ok && tag_len == 32 && CRYPTO_memcmp(tag, auth->tag.data, 32) == 0;
}

static bool tag_verifies(const auth_ctx_t *a) {
  session_slot_t *slot =
      find_slot(a->app->sessions, a->vin, a->vin_hash, a->auth->epoch.data);
  if (slot != NULL && slot->mac != NULL) {
    return tag_matches(a, slot->mac, true);
  }
  HMAC_CTX h;
  HMAC_CTX_init(&h);
  bool ok = tag_matches(a, &h, false);
  HMAC_CTX_cleanup(&h);
  return ok;
}

// We have the session key: check the tag, the request's expiry, then the
// counter.
static void auth_with_key(auth_ctx_t *a) {
  if (!tag_verifies(a)) {
    auth_end(a, VK_GRPC_UNAUTHENTICATED, "session tag does not verify");
    return;
  }
  int64_t now = vk_wall_ms();
  int64_t exp = a->auth->expires_at_ms;
  if (exp < now || exp > now + kMaxRequestAheadMs) {
    add_resync_trailer(a);
    auth_end(a, VK_GRPC_UNAUTHENTICATED,
             exp < now ? "session request expired (check the clock)"
                       : "session request expires too far ahead");
    return;
  }
  take_counter(a);
}

static void session_loaded(vk_redis_t *r, int status, const redisReply *reply,
                           void *priv) {
  (void)r;
  auth_ctx_t *a = priv;
  if (vk_call_is_done(a->call)) {
    auth_end(a, VK_GRPC_OK, NULL);
    return;
  }
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY ||
      reply->elements != 3) {
    auth_end(a, VK_GRPC_UNAVAILABLE, "session store unavailable");
    return;
  }
  const redisReply *epoch = reply->element[0];
  const redisReply *key = reply->element[1];
  const redisReply *exp = reply->element[2];
  if (epoch->type != REDIS_REPLY_STRING || epoch->len != kEpochLen ||
      CRYPTO_memcmp(epoch->str, a->auth->epoch.data, kEpochLen) != 0 ||
      key->type != REDIS_REPLY_STRING || exp->type != REDIS_REPLY_STRING) {
    auth_end(a, VK_GRPC_UNAUTHENTICATED,
             "unknown, expired or replaced session: open a new session");
    return;
  }
  a->session_expires_at_ms = strtoll(exp->str, NULL, 10);
  if (!unwrap_key(a->app->sessions, a->key, (const uint8_t *)key->str, key->len,
                  a->vin)) {
    auth_end(a, VK_GRPC_UNAUTHENTICATED,
             "session key unreadable (signing key changed?): open a new "
             "session");
    return;
  }
  install_slot(a->app->sessions, a->vin, a->vin_hash, a->auth->epoch.data,
               a->key, a->session_expires_at_ms, a->stamp);
  if (a->confirm) {
    auth_end(a, VK_GRPC_OK, NULL);  // tag and counter passed already
    return;
  }
  auth_with_key(a);
}

static void read_session(auth_ctx_t *a) {
  vk_store_vehicle_sub(a->redis_key, a->vin, "session");
  const char *argv[] = {"HMGET", a->redis_key, "epoch", "key", "exp"};
  if (vk_redis_command_argv(a->app->redis, session_loaded, a, 5, argv, NULL) !=
      VK_OK) {
    auth_end(a, VK_GRPC_UNAVAILABLE, "session store unavailable");
  }
}

// The tag covers the request's bytes as the vehicle sent them: no
// re-serialization, so fields this build does not know are covered too.
static bool digest_request(auth_ctx_t *a) {
  size_t len;
  const uint8_t *bytes = vk_call_request_bytes(a->call, &len);
  if (bytes == NULL) {
    return false;
  }
  SHA256(bytes, len, a->digest);
  return true;
}

void vk_session_auth(vk_app_t *app, vk_call_t *call, const char *vin,
                     vk_session_done_fn done, void *arg) {
  size_t len;
  const uint8_t *bin = vk_call_metadata(call, "x-vkey-session-bin", &len);
  const char *err = NULL;
  Vkey__V1__SessionAuth *auth = NULL;
  if (bin == NULL) {
    err = "missing session credential: x-vkey-session-bin";
  } else if (len > kMaxAuthLen ||
             (auth = vkey__v1__session_auth__unpack(vk_call_allocator(call),
                                                    len, bin)) == NULL ||
             auth->epoch.len != kEpochLen || auth->tag.len != 32) {
    err = "malformed session credential";
  } else if (auth->counter == 0 || auth->counter > VK_COUNTER_MAX) {
    err = "session counter out of range";
  }
  if (err != NULL) {
    vk_call_finish(call, VK_GRPC_UNAUTHENTICATED, err);
    done(call, NULL, arg);
    return;
  }
  auth_ctx_t *a = vk_call_alloc(call, sizeof(*a));
  if (a == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    done(call, NULL, arg);
    return;
  }
  a->app = app;
  a->call = call;
  a->done = done;
  a->arg = arg;
  a->auth = auth;
  memcpy(a->vin, vin, VK_VIN_LEN);  // the caller checked it: vk_vin_valid
  a->vin_hash = vin_hash(a->vin);
  vk_call_ref(call);
  if (!digest_request(a)) {  // the method must set keep_request_bytes
    auth_end(a, VK_GRPC_INTERNAL, "this method takes no session calls");
    return;
  }
  // The cached session counts only while no notification about the
  // vehicle arrived since Redis confirmed it (and the feed is healthy).
  uint64_t stamp = vk_verify_cache_vehicle_stamp(app->verify_cache, vin);
  session_slot_t *slot =
      find_slot(app->sessions, vin, a->vin_hash, auth->epoch.data);
  if (slot != NULL && stamp != 0 && slot->stamp == stamp) {
    memcpy(a->key, slot->key, kKeyLen);
    a->session_expires_at_ms = slot->expires_at_ms;
    auth_with_key(a);
    return;
  }
  a->stamp = stamp;
  if (slot != NULL) {
    // Known here but not provably current: decide the counter now, in the
    // order calls arrive (a call parked on Redis while the vehicle's later
    // calls go through would fall behind the window), and let Redis
    // confirm the session before the call goes on.
    a->confirm = true;
    memcpy(a->key, slot->key, kKeyLen);
    a->session_expires_at_ms = slot->expires_at_ms;
    auth_with_key(a);
    return;
  }
  read_session(a);
}
