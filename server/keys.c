// keys.c: vkey.v1.KeyService, the phone's API for applying for virtual keys
// (seed 000, S210-S240) and managing them (S270-S280).
//
// Every RPC follows the same shape on the loop thread:
//
//   authenticate (identity.c, worker pool)
//     -> validate the request (synchronously, before touching Redis)
//     -> one read-only Lua script: the state the decision needs
//     -> decide in C (rights, the vehicle's key policy, the state machine)
//     -> sign new claims on the worker pool (keytoken.c) when they changed
//     -> one Lua script that re-checks what the decision read
//        (compare-and-set), then writes the key hash, its indexes, the
//        outbox event and seq, the notify publish, the audit entry and the
//        idempotency record together, so a crash never leaves half of it.
//
// A lost compare-and-set (someone changed the vehicle, the user, the policy
// or the key between our read and our write) reruns the whole flow from the
// read, at most VK_KEYS_MAX_ATTEMPTS times, then answers ABORTED.
//
// Delivery to the vehicle (S240, "sends it to that vehicle") is the outbox
// entry: the vehicle channel (vehicle.c) reads it. Delivery to the key
// holder (S280, "pushes the result to the holder") is GetKey/ListKeys: no
// phone push channel is in scope.
#include "keys.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "audit.h"
#include "identity.h"
#include "keys_internal.h"
#include "verify_cache.h"
#include "keytoken.h"
#include "log.h"
#include "store.h"
#include "vkey/v1/keys.pb-c.h"
#include "vkey/v1/vehicle.pb-c.h"

enum {
  kPageDefault = 50,  // ListKeys page size when the client sets none
  kPageMax = 500,     // and the most it may ask for
};

// Short names for the generated enums.
#define KT_OWNER VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER
#define ST_ACTIVE VKEY__V1__KEY_STATUS__KEY_STATUS_ACTIVE
#define ST_SUSPENDED VKEY__V1__KEY_STATUS__KEY_STATUS_SUSPENDED
#define ST_REVOKED VKEY__V1__KEY_STATUS__KEY_STATUS_REVOKED
#define ST_DELETED VKEY__V1__KEY_STATUS__KEY_STATUS_DELETED
#define OP_REVOKE VKEY__V1__KEY_OPERATION__KEY_OPERATION_REVOKE
#define OP_SUSPEND VKEY__V1__KEY_OPERATION__KEY_OPERATION_SUSPEND
#define OP_RESUME VKEY__V1__KEY_OPERATION__KEY_OPERATION_RESUME
#define OP_SET_FUNCTIONS VKEY__V1__KEY_OPERATION__KEY_OPERATION_SET_FUNCTIONS
#define OP_SET_VALIDITY VKEY__V1__KEY_OPERATION__KEY_OPERATION_SET_VALIDITY
#define OP_DELETE VKEY__V1__KEY_OPERATION__KEY_OPERATION_DELETE
#define EV_ISSUED VKEY__V1__KEY_EVENT_TYPE__KEY_EVENT_TYPE_ISSUED
#define EV_UPDATED VKEY__V1__KEY_EVENT_TYPE__KEY_EVENT_TYPE_UPDATED
#define EV_SUSPENDED VKEY__V1__KEY_EVENT_TYPE__KEY_EVENT_TYPE_SUSPENDED
#define EV_RESUMED VKEY__V1__KEY_EVENT_TYPE__KEY_EVENT_TYPE_RESUMED
#define EV_REVOKED VKEY__V1__KEY_EVENT_TYPE__KEY_EVENT_TYPE_REVOKED
#define EV_DELETED VKEY__V1__KEY_EVENT_TYPE__KEY_EVENT_TYPE_DELETED

// --- Lua scripts -------------------------------------------------------------
// Scripts go out as EVALSHA and fall back to EVAL once when Redis answers
// NOSCRIPT (after a restart or a failover), so the text crosses the network
// once per Redis rather than once per call.
//
// Every key a script names carries the vehicle's {VIN} hash tag except the
// user's hash and key index, as docs/ARCHITECTURE.md lays them out; key
// hashes are named inside the scripts from ids held in the vehicle's index.
// The helpers they share (audit, count_type, idem_get, issue_key) are
// VK_KEYS_LUA_PRELUDE in keys_internal.h: authorization.c issues keys with
// the same Lua.

// S220 read. KEYS: vehicle, user, vehicle's key index, [idem].
// ARGV: key type. Returns {'IDEM', response} or {'STATE', vehicle status,
// owner, policy, user status, live keys of the type (counted only under a
// policy)}; '' for anything absent.
static const char kLuaApplyRead[] = VK_KEYS_LUA_PRELUDE
    "local prev = idem_get(KEYS[4])\n"
    "if prev then return {'IDEM', prev} end\n"
    "local v = redis.call('HMGET', KEYS[1], 'status', 'owner', 'policy')\n"
    "local u = redis.call('HGET', KEYS[2], 'status')\n"
    "local n = 0\n"
    "if v[3] then n = count_type(KEYS[1], KEYS[3], ARGV[1]) end\n"
    "return {'STATE', v[1] or '', v[2] or '', v[3] or '', u or '', n}\n";

// S240 write. KEYS: vehicle, user, vehicle's key index, user's key index,
// key hash, outbox, vehicle audit, [idem]. ARGV: 1 owner read, 2 policy
// read, 3 key type, 4 max keys of the type (0: none), 5 key id, 6 KeyRecord,
// 7 ApplyKeyResponse, 8 SignedKey, 9 holder, 10 now ms, 11 now s,
// 12 version, 13 actor, 14 VIN, 15 notify channel, 16 audit detail.
// Returns {'OK'}, {'IDEM', response} or {'RETRY'} when what the decision
// read has changed.
static const char kLuaApplyWrite[] = VK_KEYS_LUA_PRELUDE
    "local prev = idem_get(KEYS[8])\n"
    "if prev then return {'IDEM', prev} end\n"
    "local v = redis.call('HMGET', KEYS[1], 'status', 'owner', 'policy',\n"
    "  'seq')\n"
    "if v[1] ~= '1' or v[2] ~= ARGV[1] or (v[3] or '') ~= ARGV[2] then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "if redis.call('HGET', KEYS[2], 'status') ~= '1' then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "local max = tonumber(ARGV[4])\n"
    "if max > 0 and count_type(KEYS[1], KEYS[3], ARGV[3]) >= max then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[5]) == 1 then return {'RETRY'} end\n"
    "local seq = tonumber(v[4] or '0')\n"
    "if not seq then return redis.error_reply('vehicle seq is not a number') "
    "end\n"
    "seq = seq + 1\n"
    "issue_key(KEYS[6], seq, KEYS[5], KEYS[3], KEYS[4], ARGV[5], ARGV[12],\n"
    "  ARGV[10], ARGV[11], ARGV[8], ARGV[6], ARGV[3], ARGV[9], '')\n"
    "redis.call('HINCRBY', KEYS[1], 'seq', 1)\n"
    "redis.call('PUBLISH', ARGV[15], tostring(seq))\n"
    "vk_audit(KEYS[7], ARGV[10], ARGV[13], 'ApplyKey', ARGV[14], ARGV[5], "
    "'ok',\n"
    "  ARGV[16])\n"
    "if KEYS[8] then\n"
    "  redis.call('SET', KEYS[8], ARGV[7], 'EX', 86400)\n"
    "end\n"
    "return {'OK'}\n";

// A key and what deciding about it needs. KEYS: key hash, vehicle, [idem].
// Returns {'IDEM', response} or {'KEY', record, status, updated_at, rev,
// holder, owner, policy, vehicle status}; '' for anything absent.
static const char kLuaKeyRead[] = VK_KEYS_LUA_PRELUDE
    "local prev = idem_get(KEYS[3])\n"
    "if prev then return {'IDEM', prev} end\n"
    "local k = redis.call('HMGET', KEYS[1], 'record', 'status',\n"
    "  'updated_at', 'rev', 'holder')\n"
    "local v = redis.call('HMGET', KEYS[2], 'owner', 'policy', 'status')\n"
    "return {'KEY', k[1] or '', k[2] or '', k[3] or '', k[4] or '',\n"
    "  k[5] or '', v[1] or '', v[2] or '', v[3] or ''}\n";

// S280 write. KEYS: vehicle, key hash, vehicle's key index, holder's key
// index, outbox, vehicle audit, [idem]. ARGV: 1 rev read, 2 owner read,
// 3 policy read, 4 new status, 5 KeyRecord, 6 ManageKeyResponse, 7 event
// type, 8 version, 9 SignedKey ('' for events without one), 10 now ms,
// 11 now s, 12 actor, 13 VIN, 14 key id, 15 operation name, 16 notify
// channel, 17 '1' to drop the key from both indexes, 18 audit detail.
// Returns {'OK'}, {'IDEM', response} or {'RETRY'}.
static const char kLuaManageWrite[] = VK_KEYS_LUA_PRELUDE
    "local prev = idem_get(KEYS[7])\n"
    "if prev then return {'IDEM', prev} end\n"
    "if (redis.call('HGET', KEYS[2], 'rev') or '') ~= ARGV[1] then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "local v = redis.call('HMGET', KEYS[1], 'owner', 'policy', 'seq')\n"
    "if (v[1] or '') ~= ARGV[2] or (v[2] or '') ~= ARGV[3] then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "local seq = tonumber(v[3] or '0')\n"
    "if not seq then return redis.error_reply('vehicle seq is not a number') "
    "end\n"
    "seq = seq + 1\n"
    "local ev = {KEYS[5], seq .. '-1', 't', ARGV[7], 'k', ARGV[14],\n"
    "  'v', ARGV[8], 's', ARGV[4], 'at', ARGV[10]}\n"
    "if ARGV[9] ~= '' then\n"
    "  ev[#ev + 1] = 'sk'\n"
    "  ev[#ev + 1] = ARGV[9]\n"
    "end\n"
    // As in ApplyKey: the one write that can fail goes first.
    "redis.call('XADD', unpack(ev))\n"
    "redis.call('HINCRBY', KEYS[1], 'seq', 1)\n"
    "redis.call('HSET', KEYS[2], 'record', ARGV[5], 'status', ARGV[4],\n"
    "  'updated_at', ARGV[11], 'ver', ARGV[8])\n"
    "redis.call('HINCRBY', KEYS[2], 'rev', 1)\n"
    "if ARGV[17] == '1' then\n"
    "  redis.call('ZREM', KEYS[3], ARGV[14])\n"
    "  redis.call('ZREM', KEYS[4], ARGV[14])\n"
    "end\n"
    "redis.call('PUBLISH', ARGV[16], tostring(seq))\n"
    "vk_audit(KEYS[6], ARGV[10], ARGV[12], 'ManageKey', ARGV[13], ARGV[14],\n"
    "  'ok', ARGV[18])\n"
    "if KEYS[7] then\n"
    "  redis.call('SET', KEYS[7], ARGV[6], 'EX', 86400)\n"
    "end\n"
    "return {'OK'}\n";

// One page of a key index. KEYS: the index (vehicle's or user's), the
// vehicle's or user's hash. ARGV: 1 score after which to start ('' from the
// beginning), 2 key id after which to start among keys of that score,
// 3 page size, 4 the owner the caller must be ('' no check). Returns
// {'NOENT'}, {'DENIED'} or {'PAGE', more (0/1), then per key: id, score,
// record, status, updated_at}. Deleted keys are skipped.
static const char kLuaListPage[] =
    "local e = redis.call('HMGET', KEYS[2], 'status', 'owner')\n"
    "if not e[1] then return {'NOENT'} end\n"
    "if ARGV[4] ~= '' and e[2] ~= ARGV[4] then return {'DENIED'} end\n"
    "local size = tonumber(ARGV[3])\n"
    "local min, after = '-inf', nil\n"
    "if ARGV[1] ~= '' then\n"
    "  min = ARGV[1]\n"
    "  after = tonumber(ARGV[1])\n"
    "end\n"
    "local out = {'PAGE', 0}\n"
    "local got, off = 0, 0\n"
    "while true do\n"
    "  local batch = redis.call('ZRANGEBYSCORE', KEYS[1], min, '+inf',\n"
    "    'WITHSCORES', 'LIMIT', off, 256)\n"
    "  if #batch == 0 then return out end\n"
    "  off = off + #batch / 2\n"
    "  for i = 1, #batch, 2 do\n"
    "    local id, sc = batch[i], batch[i + 1]\n"
    // Scores tie when keys were made in the same millisecond: then the id
    // (the index orders ties by member) continues the page.
    "    if after == nil or tonumber(sc) > after or id > ARGV[2] then\n"
    "      if got == size then\n"
    "        out[2] = 1\n"
    "        return out\n"
    "      end\n"
    "      local h = redis.call('HMGET', 'vk:veh:{' .. string.sub(id, 1, 17)\n"
    "        .. '}:key:' .. id, 'record', 'status', 'updated_at')\n"
    "      if h[1] and h[2] ~= '4' then\n"
    "        got = got + 1\n"
    "        out[#out + 1] = id\n"
    "        out[#out + 1] = sc\n"
    "        out[#out + 1] = h[1]\n"
    "        out[#out + 1] = h[2] or ''\n"
    "        out[#out + 1] = h[3] or ''\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n";

static vk_keys_script_t s_apply_read = {kLuaApplyRead, ""};
static vk_keys_script_t s_apply_write = {kLuaApplyWrite, ""};
static vk_keys_script_t s_key_read = {kLuaKeyRead, ""};
static vk_keys_script_t s_manage_write = {kLuaManageWrite, ""};
static vk_keys_script_t s_list_page = {kLuaListPage, ""};

void vk_keys_script_init(vk_keys_script_t *s) {
  static const char kHex[] = "0123456789abcdef";
  uint8_t d[SHA_DIGEST_LENGTH];
  SHA1((const uint8_t *)s->src, strlen(s->src), d);
  for (size_t i = 0; i < sizeof(d); i++) {
    s->sha[2 * i] = kHex[d[i] >> 4];
    s->sha[2 * i + 1] = kHex[d[i] & 15];
  }
  s->sha[40] = '\0';
}

// --- per-call state shared by every method -----------------------------------

void vk_keys_call_init(vk_keys_call_t *kc, vk_call_t *call, const char *op,
                       bool mutating) {
  kc->app = vk_call_service_ctx(call);
  kc->call = call;
  kc->op = op;
  kc->mutating = mutating;
}

void vk_keys_set_identity(vk_keys_call_t *kc, const vk_identity_t *who) {
  kc->who = *who;
  vk_audit_actor(kc->actor, who);
}

void vk_keys_set_key(vk_keys_call_t *kc, const char *key_id) {
  memcpy(kc->vin, key_id, VK_VIN_LEN);
  kc->vin[VK_VIN_LEN] = '\0';
  snprintf(kc->key_id, sizeof(kc->key_id), "%s", key_id);
}

// vk_keys_fail ends the call with a non-OK status. Refusals of the mutating
// methods, and every PERMISSION_DENIED (someone reached for a key that is
// not theirs), are audited; UNAVAILABLE and INTERNAL are our failures, not
// the caller's, and an unauthenticated call has nobody to attribute it to.
void vk_keys_fail(vk_keys_call_t *kc, vk_grpc_status_t status,
                  const char *msg) {
  bool audit = (kc->mutating || status == VK_GRPC_PERMISSION_DENIED) &&
               status != VK_GRPC_UNAVAILABLE && status != VK_GRPC_INTERNAL &&
               kc->actor[0] != '\0';
  if (audit) {
    // The vehicle's stream only once we know the vehicle is registered.
    char detail[384], grant[VK_KEY_ID_LEN + 16] = "";
    if (kc->grant_id[0] != '\0') {
      snprintf(grant, sizeof(grant), "grant %s: ", kc->grant_id);
    }
    if (kc->vin[0] != '\0' && !kc->vin_registered) {
      snprintf(detail, sizeof(detail), "vin %s: %s%s", kc->vin, grant, msg);
    } else {
      snprintf(detail, sizeof(detail), "%s%s", grant, msg);
    }
    vk_audit_record(kc->app, kc->vin_registered ? kc->vin : NULL, kc->actor,
                    kc->op, kc->key_id[0] != '\0' ? kc->key_id : NULL,
                    vk_audit_result(status), detail);
  }
  vk_call_finish(kc->call, status, msg);
}

// vk_keys_failf is vk_keys_fail with a formatted message.
void vk_keys_failf(vk_keys_call_t *kc, vk_grpc_status_t status, const char *fmt,
                   ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  vk_keys_fail(kc, status, msg);
}

// vk_keys_respond sends the one response of a unary call and ends it OK.
void vk_keys_respond(vk_keys_call_t *kc, const ProtobufCMessage *msg) {
  int rv = vk_call_send(kc->call, msg);
  if (rv != VK_OK) {
    vk_call_finish(kc->call, VK_GRPC_INTERNAL, vk_strerror(rv));
    return;
  }
  vk_call_finish(kc->call, VK_GRPC_OK, NULL);
}

// vk_keys_unavailable answers a Redis failure: the connection (status) or an
// error reply (LOADING after a restart, READONLY on a replica, a script
// error), which the log keeps.
void vk_keys_unavailable(vk_keys_call_t *kc, int status,
                         const redisReply *reply) {
  if (status == VK_OK && reply != NULL && reply->type == REDIS_REPLY_ERROR) {
    vk_log(VK_LOG_WARN, vk_call_id(kc->call), "keys: %s: redis: %.*s", kc->op,
           (int)reply->len, reply->str);
  }
  vk_keys_fail(kc, VK_GRPC_UNAVAILABLE, "key store unavailable");
}

// vk_keys_dup copies `len` bytes into the call's arena (NUL-terminated).
char *vk_keys_dup(vk_keys_call_t *kc, const void *p, size_t len) {
  char *out = vk_call_alloc(kc->call, len + 1);
  if (out != NULL && len > 0) {
    memcpy(out, p, len);
  }
  return out;
}

// --- EVAL arguments ----------------------------------------------------------
// Arguments point into the call's arena (or static strings) and stay valid
// for the resend after NOSCRIPT; a failed allocation is remembered and
// reported when the EVAL is sent.

void vk_keys_args_begin(vk_keys_call_t *kc) {
  kc->argc = 3;  // EVALSHA sha nkeys
  kc->nkeys = 0;
  kc->args_oom = false;
}

void vk_keys_arg_bin(vk_keys_call_t *kc, const void *p, size_t len) {
  if (p == NULL) {
    kc->args_oom = true;
    return;
  }
  if (kc->argc == VK_KEYS_MAX_ARGS) {
    kc->args_oom = true;  // a programming error; caught at send
    return;
  }
  kc->argv[kc->argc] = p;
  kc->argvlen[kc->argc] = len;
  kc->argc++;
}

void vk_keys_arg_str(vk_keys_call_t *kc, const char *s) {
  vk_keys_arg_bin(kc, s, s != NULL ? strlen(s) : 0);
}

// vk_keys_arg_key adds a KEYS entry (copied: callers pass stack buffers); all
// keys come before the first ARGV entry.
void vk_keys_arg_key(vk_keys_call_t *kc, const char *key) {
  vk_keys_arg_str(kc, vk_keys_dup(kc, key, strlen(key)));
  kc->nkeys++;
}

void vk_keys_arg_i64(vk_keys_call_t *kc, int64_t v) {
  char buf[24];
  int n = snprintf(buf, sizeof(buf), "%" PRId64, v);
  vk_keys_arg_bin(kc, vk_keys_dup(kc, buf, (size_t)n), (size_t)n);
}

// eval_prepare fills the command's first three arguments: EVALSHA and the
// hash, or after NOSCRIPT, EVAL and the script's text.
static void eval_prepare(vk_keys_call_t *kc) {
  kc->argv[0] = kc->eval_full ? "EVAL" : "EVALSHA";
  kc->argvlen[0] = strlen(kc->argv[0]);
  kc->argv[1] = kc->eval_full ? kc->script->src : kc->script->sha;
  kc->argvlen[1] = strlen(kc->argv[1]);
  snprintf(kc->nkeys_str, sizeof(kc->nkeys_str), "%d", kc->nkeys);
  kc->argv[2] = kc->nkeys_str;
  kc->argvlen[2] = strlen(kc->nkeys_str);
}

static void eval_reply(vk_redis_t *r, int status, const redisReply *reply,
                       void *priv);

static int eval_queue(vk_keys_call_t *kc) {
  return vk_redis_command_argv(kc->app->redis, eval_reply, kc, kc->argc,
                               kc->argv, kc->argvlen);
}

static void eval_reply(vk_redis_t *r, int status, const redisReply *reply,
                       void *priv) {
  (void)r;
  vk_keys_call_t *kc = priv;
  vk_call_t *call = kc->call;
  if (kc->vin[0] != '\0' && kc->app->verify_cache != NULL) {
    // A script of ours may have changed this vehicle's keys: forget their
    // cached status here at once, not only when our own notify comes back.
    vk_verify_cache_invalidate_vehicle(kc->app->verify_cache, kc->vin,
                                       strlen(kc->vin));
  }
  if (!vk_call_is_done(call)) {
    if (status == VK_OK && reply->type == REDIS_REPLY_ERROR && !kc->eval_full &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0) {
      // This Redis has not seen the script yet: send its text once. The
      // reference we hold passes on to the resent command.
      kc->eval_full = true;
      eval_prepare(kc);
      if (eval_queue(kc) == VK_OK) {
        return;
      }
      status = VK_EUNAVAIL;
      reply = NULL;
    }
    kc->on_reply(kc, status, reply);
  }
  vk_call_unref(call);
}

// vk_keys_eval runs `script` with the arguments collected since
// vk_keys_args_begin; `on_reply` runs on a live call with Redis's answer.
// Failures to send end the call.
void vk_keys_eval(vk_keys_call_t *kc, vk_keys_script_t *script,
                  vk_keys_reply_fn on_reply) {
  if (kc->args_oom) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  kc->script = script;
  kc->on_reply = on_reply;
  kc->eval_full = false;
  eval_prepare(kc);
  vk_call_ref(kc->call);
  int rv = eval_queue(kc);
  if (rv != VK_OK) {
    vk_keys_fail(
        kc, rv == VK_EBUSY ? VK_GRPC_RESOURCE_EXHAUSTED : VK_GRPC_UNAVAILABLE,
        rv == VK_EBUSY ? "server busy: key store queue full"
                       : "key store unavailable");
    vk_call_unref(kc->call);
  }
}

// --- reply parsing -----------------------------------------------------------

// vk_keys_reply_str returns element `i` of an array reply as a string (and its
// length), or NULL when it is missing or not a string.
const char *vk_keys_reply_str(const redisReply *reply, size_t i,
                              size_t *out_len) {
  if (reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
      i >= reply->elements) {
    return NULL;
  }
  const redisReply *e = reply->element[i];
  if (e->type != REDIS_REPLY_STRING && e->type != REDIS_REPLY_STATUS) {
    return NULL;
  }
  if (out_len != NULL) {
    *out_len = e->len;
  }
  return e->str;
}

// vk_keys_reply_tag tells whether an array reply starts with the string `tag`.
bool vk_keys_reply_tag(const redisReply *reply, const char *tag) {
  const char *s = vk_keys_reply_str(reply, 0, NULL);
  return s != NULL && strcmp(s, tag) == 0;
}

// vk_keys_reply_i64 parses element `i` as a decimal integer, from an integer
// reply or a string; `dflt` when absent or empty.
bool vk_keys_reply_i64(const redisReply *reply, size_t i, int64_t dflt,
                       int64_t *out) {
  if (reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
      i >= reply->elements) {
    return false;
  }
  const redisReply *e = reply->element[i];
  if (e->type == REDIS_REPLY_INTEGER) {
    *out = (int64_t)e->integer;
    return true;
  }
  if (e->type != REDIS_REPLY_STRING || e->len > 20) {
    return false;
  }
  if (e->len == 0) {
    *out = dflt;
    return true;
  }
  char buf[24];
  memcpy(buf, e->str, e->len);
  buf[e->len] = '\0';
  char *end;
  long long v = strtoll(buf, &end, 10);
  if (*end != '\0') {
    return false;
  }
  *out = (int64_t)v;
  return true;
}

// --- rules shared by ApplyKey and ManageKey ----------------------------------

// vk_keys_policy_parse decodes a vehicle's stored KeyPolicy into the call's
// arena. `raw` empty: no policy (NULL, true). False when it does not parse.
bool vk_keys_policy_parse(vk_keys_call_t *kc, const char *raw, size_t len,
                          Vkey__V1__KeyPolicy **out) {
  *out = NULL;
  if (len == 0) {
    return true;
  }
  if (len > VK_KEYS_MAX_POLICY_LEN) {
    return false;
  }
  *out = vkey__v1__key_policy__unpack(vk_call_allocator(kc->call), len,
                                      (const uint8_t *)raw);
  return *out != NULL;
}

// vk_keys_policy_max_keys returns the policy's cap on live keys of `type`, 0
// for none. When several entries name the type the strictest holds.
uint32_t vk_keys_policy_max_keys(const Vkey__V1__KeyPolicy *p, int type) {
  uint32_t max = 0;
  for (size_t i = 0; p != NULL && i < p->n_max_keys; i++) {
    const Vkey__V1__FunctionLimit *l = p->max_keys[i];
    if ((int)l->key_type == type && l->max_keys > 0 &&
        (max == 0 || l->max_keys < max)) {
      max = l->max_keys;
    }
  }
  return max;
}

// vk_keys_policy_grantable returns the functions the policy lets the owner
// grant to non-owner keys: everything when there is no list.
vk_function_mask_t vk_keys_policy_grantable(const Vkey__V1__KeyPolicy *p) {
  if (p == NULL || p->n_grantable_functions == 0) {
    return vk_keytoken_default_functions(KT_OWNER);
  }
  vk_function_mask_t m = 0;
  for (size_t i = 0; i < p->n_grantable_functions; i++) {
    int f = (int)p->grantable_functions[i];
    if (f >= 1 && f <= VK_KEYTOKEN_FUNCTION_MAX) {
      m |= (vk_function_mask_t)1 << f;
    }
  }
  return m;
}

// functions_for_type settles the functions of a key of `type`: `requested`
// (0: the type's default set) within what the policy lets an owner grant
// to non-owner keys. Fails the call and returns false when it cannot.
static bool functions_for_type(vk_keys_call_t *kc, int type,
                               vk_function_mask_t requested,
                               const Vkey__V1__KeyPolicy *policy,
                               vk_function_mask_t *out) {
  vk_function_mask_t want =
      requested != 0 ? requested
                     : vk_keytoken_default_functions((Vkey__V1__KeyType)type);
  if (type == KT_OWNER) {
    *out = want;
    return true;
  }
  vk_function_mask_t grantable = vk_keys_policy_grantable(policy);
  if (requested == 0) {
    // "All the type allows": the default set, as far as the policy goes.
    want &= grantable;
    if (want == 0) {
      vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                   "the vehicle's key policy grants none of this key type's "
                   "functions");
      return false;
    }
  } else if ((want & ~grantable) != 0) {
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "the vehicle's key policy does not let these functions be "
                 "granted to this key type");
    return false;
  }
  *out = want;
  return true;
}

// vk_keys_pack serializes `msg` into the call's arena.
bool vk_keys_pack(vk_keys_call_t *kc, const ProtobufCMessage *msg,
                  ProtobufCBinaryData *out) {
  size_t len = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = vk_call_alloc(kc->call, len > 0 ? len : 1);
  if (buf == NULL) {
    return false;
  }
  out->len = protobuf_c_message_pack(msg, buf);
  out->data = buf;
  return true;
}

// vk_keys_respond_stored answers a retried request with the response its first
// attempt stored: a KeyRecord response (ApplyKey and ManageKey responses
// have the same shape).
void vk_keys_respond_stored(vk_keys_call_t *kc,
                            const ProtobufCMessageDescriptor *desc,
                            const redisReply *reply) {
  size_t len = 0;
  const char *raw = vk_keys_reply_str(reply, 1, &len);
  ProtobufCMessage *m =
      raw == NULL ? NULL
                  : protobuf_c_message_unpack(desc, vk_call_allocator(kc->call),
                                              len, (const uint8_t *)raw);
  if (m == NULL) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "stored response does not parse");
    return;
  }
  vk_keys_respond(kc, m);
}

// vk_keys_idem_key names the idempotency record of `request_id` for the caller,
// or returns false for no request id.
bool vk_keys_idem_key(const vk_keys_call_t *kc, const char *request_id,
                      char *out) {
  if (request_id[0] == '\0') {
    return false;
  }
  char suffix[VK_REDIS_KEY_MAX];
  snprintf(suffix, sizeof(suffix), "idem:%s:%s", kc->actor, request_id);
  vk_store_vehicle_sub(out, kc->vin, suffix);
  return true;
}

bool vk_keys_sign_prepare(vk_keys_call_t *kc, vk_crypto_op_t *op,
                          const Vkey__V1__KeyClaims *claims,
                          ProtobufCBinaryData *out_bytes) {
  size_t msg_len;
  uint8_t *msg = NULL;
  if (vk_keys_pack(kc, &claims->base, out_bytes)) {
    msg = vk_keytoken_message(vk_call_allocator(kc->call), out_bytes->data,
                              out_bytes->len, &msg_len);
  }
  if (msg == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return false;
  }
  vk_keytoken_sign_op(op, &kc->app->signing_key, msg, msg_len);
  return true;
}

bool vk_keys_sign_submit(vk_keys_call_t *kc, vk_crypto_job_t *job, size_t n_ops,
                         void (*done)(vk_crypto_job_t *, int, void *),
                         void *arg) {
  memset(&job->job, 0, sizeof(job->job));
  job->n_ops = n_ops;
  job->done = done;
  job->arg = arg;
  vk_call_ref(kc->call);
  if (vk_crypto_submit(kc->app->workers, job) != VK_OK) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED,
                 "server busy: signature queue full");
    vk_call_unref(kc->call);
    return false;
  }
  return true;
}

bool vk_keys_sign_result(vk_keys_call_t *kc, const vk_crypto_job_t *job,
                         int status) {
  if (status != VK_OK) {
    vk_keys_fail(kc, VK_GRPC_UNAVAILABLE, "server shutting down");
    return false;
  }
  for (size_t i = 0; i < job->n_ops; i++) {
    if (!job->ops[i].ok) {
      vk_keys_fail(kc, VK_GRPC_INTERNAL, "signing failed");
      return false;
    }
  }
  return true;
}

void vk_keys_issue_init(vk_keys_call_t *kc, vk_keys_issue_t *k,
                        const vk_keys_issue_params_t *p) {
  vk_keytoken_new_key_id(k->key_id, p->vin);
  k->issued_by = p->issued_by;
  Vkey__V1__KeyClaims *c = &k->claims;
  vkey__v1__key_claims__init(c);
  c->format = VK_KEYTOKEN_FORMAT;
  c->key_id = k->key_id;
  c->vin = (char *)p->vin;
  c->holder_user_id = (char *)p->holder;
  c->holder_key_algorithm = p->holder_key_algorithm;
  c->holder_public_key = p->holder_public_key;
  c->key_type = p->key_type;
  c->n_functions = vk_keytoken_mask_functions(k->fn_list, p->functions);
  c->functions = k->fn_list;
  const Vkey__V1__Validity *v = p->validity;
  if (v != NULL && (v->not_before != 0 || v->not_after != 0)) {
    vkey__v1__validity__init(&k->validity);
    k->validity.not_before = v->not_before;
    k->validity.not_after = v->not_after;
    c->validity = &k->validity;
  }
  c->issuer_key_id = kc->app->signing_key.key_id;
  c->version = 1;
  c->issued_at = p->now_ms / 1000;
  c->max_uses = p->max_uses;
  if (p->grant_id != NULL && p->grant_id[0] != '\0') {
    c->grant_id = (char *)p->grant_id;
  }
}

bool vk_keys_issue_finish(vk_keys_call_t *kc, vk_keys_issue_t *k,
                          const vk_crypto_op_t *op) {
  int64_t now_s = k->claims.issued_at;
  memcpy(k->sig, op->out_sig, sizeof(k->sig));
  vkey__v1__signed_key__init(&k->sk);
  k->sk.claims = k->claims_bytes;
  k->sk.signature.data = k->sig;
  k->sk.signature.len = sizeof(k->sig);
  vkey__v1__key_record__init(&k->rec);
  k->rec.claims = &k->claims;
  k->rec.key = &k->sk;
  k->rec.status = ST_ACTIVE;
  k->rec.created_at = now_s;
  k->rec.updated_at = now_s;
  k->rec.issued_by = (char *)k->issued_by;
  if (!vk_keys_pack(kc, &k->rec.base, &k->rec_bytes) ||
      !vk_keys_pack(kc, &k->sk.base, &k->sk_bytes)) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return false;
  }
  return true;
}

// --- GetIssuerKeys -----------------------------------------------------------

static void issuers_read(vk_redis_t *r, int status, const redisReply *reply,
                         void *priv) {
  (void)r;
  vk_keys_call_t *kc = priv;
  vk_call_t *call = kc->call;
  if (vk_call_is_done(call)) {
    vk_call_unref(call);
    return;
  }
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
    vk_call_unref(call);
    return;
  }
  size_t n = reply->elements / 2;
  Vkey__V1__GetIssuerKeysResponse resp =
      VKEY__V1__GET_ISSUER_KEYS_RESPONSE__INIT;
  Vkey__V1__IssuerKey *keys = vk_call_alloc(call, (n + 1) * sizeof(*keys));
  Vkey__V1__IssuerKey **ptrs = vk_call_alloc(call, (n + 1) * sizeof(*ptrs));
  if (keys == NULL || ptrs == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    vk_call_unref(call);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    const redisReply *kid = reply->element[2 * i];
    const redisReply *pub = reply->element[2 * i + 1];
    if (kid->type != REDIS_REPLY_STRING || pub->type != REDIS_REPLY_STRING ||
        pub->len != 32 || kid->len == 0 || kid->len > 64) {
      continue;  // not ours; never hand out something that is not a key
    }
    Vkey__V1__IssuerKey *k = &keys[resp.n_keys];
    vkey__v1__issuer_key__init(k);
    k->key_id = vk_keys_dup(kc, kid->str, kid->len);
    k->public_key.data = (uint8_t *)vk_keys_dup(kc, pub->str, pub->len);
    k->public_key.len = pub->len;
    if (k->key_id == NULL || k->public_key.data == NULL) {
      vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      vk_call_unref(call);
      return;
    }
    ptrs[resp.n_keys++] = k;
  }
  resp.keys = ptrs;
  vk_keys_respond(kc, &resp.base);
  vk_call_unref(call);
}

static void issuers_start(vk_call_t *call, const ProtobufCMessage *msg) {
  (void)msg;
  vk_keys_call_t *kc = vk_call_alloc(call, sizeof(*kc));
  if (kc == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_keys_call_init(kc, call, "GetIssuerKeys", false);
  vk_call_ref(call);
  if (vk_redis_command(kc->app->redis, issuers_read, kc, "HGETALL %s",
                       VK_REDIS_ISSUERS) != VK_OK) {
    vk_call_finish(call, VK_GRPC_UNAVAILABLE, "key store unavailable");
    vk_call_unref(call);
  }
}

// --- ApplyKey (S210-S240) ----------------------------------------------------

typedef struct {
  vk_keys_call_t kc;  // first: the helpers' callbacks recover the state from it
  const Vkey__V1__ApplyKeyRequest *req;
  int attempts;
  vk_function_mask_t requested;  // 0: the type's default set
  vk_function_mask_t functions;  // what the key gets
  uint32_t max_uses;
  // What the S220 read saw; the write re-checks it.
  char *policy;
  size_t policy_len;
  uint32_t max_of_type;
  // S230
  vk_keys_issue_t key;
  vk_crypto_job_t job;
  Vkey__V1__ApplyKeyResponse resp;
  bool has_idem;
  char k_vehicle[VK_REDIS_KEY_MAX];
  char k_user[VK_REDIS_KEY_MAX];
  char k_veh_keys[VK_REDIS_KEY_MAX];
  char k_user_keys[VK_REDIS_KEY_MAX];
  char k_idem[VK_REDIS_KEY_MAX];
} apply_t;

static void apply_read(apply_t *a);

// apply_validate checks every field of the request (S210). Returns NULL or
// the reason it is invalid.
static const char *apply_validate(apply_t *a, int64_t now_s) {
  const Vkey__V1__ApplyKeyRequest *req = a->req;
  const char *err = NULL;
  if (!vk_request_id_valid(req->request_id)) {
    return "request_id: at most 64 printable characters without spaces";
  }
  if (!vk_vin_valid(req->vin)) {
    return "vin: 17 characters of ISO 3779 (digits, capitals but I, O, Q)";
  }
  snprintf(a->kc.vin, sizeof(a->kc.vin), "%s", req->vin);
  if (!vk_user_id_valid(req->user_id)) {
    return "user_id: 1-64 of [A-Za-z0-9._@-]";
  }
  if (!vk_keytoken_type_valid((int)req->key_type)) {
    return "key_type: unspecified or unknown";
  }
  vk_sig_alg_t alg = (vk_sig_alg_t)req->holder_key_algorithm;
  if (alg != VK_SIG_ED25519 && alg != VK_SIG_ECDSA_P256) {
    return "holder_key_algorithm: unspecified or unknown";
  }
  // Decoding a P-256 point is a field check, not a signature operation:
  // cheap enough for the loop thread, and it keeps bad keys out early.
  if (req->holder_public_key.len > 65 ||
      !vk_public_key_valid(alg, req->holder_public_key.data,
                           req->holder_public_key.len)) {
    return alg == VK_SIG_ED25519
               ? "holder_public_key: want 32 bytes of Ed25519"
               : "holder_public_key: want a 65-byte uncompressed P-256 "
                 "point on the curve";
  }
  if (vk_keytoken_check_functions(&a->requested, &err, req->functions,
                                  req->n_functions) != VK_OK ||
      vk_keytoken_check_validity(&err, req->validity, req->key_type, now_s) !=
          VK_OK ||
      vk_keytoken_check_max_uses(&a->max_uses, &err, req->key_type,
                                 req->max_uses) != VK_OK) {
    return err;
  }
  return NULL;
}

static void apply_authed(vk_call_t *call, const vk_identity_t *who, void *arg) {
  apply_t *a = arg;
  vk_keys_call_t *kc = &a->kc;
  (void)call;
  vk_keys_set_identity(kc, who);
  const char *err = apply_validate(a, vk_wall_ms() / 1000);
  if (err != NULL) {
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT, err);
    return;
  }
  if (strcmp(who->subject, a->req->user_id) != 0) {
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "user_id must be the caller: apply for keys for yourself");
    return;
  }
  const char *vin = a->req->vin;
  vk_store_vehicle(a->k_vehicle, vin);
  vk_store_user(a->k_user, a->req->user_id);
  vk_store_vehicle_sub(a->k_veh_keys, vin, "keys");
  vk_store_user_keys(a->k_user_keys, a->req->user_id);
  a->has_idem = vk_keys_idem_key(kc, a->req->request_id, a->k_idem);
  apply_read(a);
}

static void apply_start(vk_call_t *call, const ProtobufCMessage *msg) {
  apply_t *a = vk_call_alloc(call, sizeof(*a));
  if (a == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_keys_call_init(&a->kc, call, "ApplyKey", true);
  a->req = (const Vkey__V1__ApplyKeyRequest *)msg;
  vk_auth_bearer(a->kc.app, call, VK_ROLE_USER, false, apply_authed, a);
}

static void apply_sign(apply_t *a);
static void apply_write(apply_t *a);

// apply_decide runs S220 on the state the read script returned: the user
// and the vehicle exist and are active, the caller owns the vehicle, and
// the vehicle's key policy allows the key.
static void apply_decide(apply_t *a, const redisReply *reply) {
  vk_keys_call_t *kc = &a->kc;
  size_t veh_len = 0, owner_len = 0, pol_len = 0, user_len = 0;
  const char *veh = vk_keys_reply_str(reply, 1, &veh_len);
  const char *owner = vk_keys_reply_str(reply, 2, &owner_len);
  const char *pol = vk_keys_reply_str(reply, 3, &pol_len);
  const char *user = vk_keys_reply_str(reply, 4, &user_len);
  int64_t count;
  if (veh == NULL || owner == NULL || pol == NULL || user == NULL ||
      !vk_keys_reply_i64(reply, 5, 0, &count)) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
    return;
  }
  if (veh_len == 0) {
    vk_keys_failf(kc, VK_GRPC_NOT_FOUND, "vehicle %s is not registered",
                  kc->vin);
    return;
  }
  kc->vin_registered = true;
  if (user_len == 0) {
    vk_keys_fail(kc, VK_GRPC_NOT_FOUND, "user is not registered");
    return;
  }
  if (strcmp(veh, "1") != 0) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION, "the vehicle is disabled");
    return;
  }
  if (strcmp(user, "1") != 0) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION, "the user is disabled");
    return;
  }
  if (owner_len == 0) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                 "the vehicle has no owner yet");
    return;
  }
  if (strcmp(owner, kc->who.subject) != 0) {
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "keys for other people are granted by the vehicle owner");
    return;
  }
  Vkey__V1__KeyPolicy *policy;
  if (!vk_keys_policy_parse(kc, pol, pol_len, &policy)) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL,
                 "the vehicle's key policy does not parse");
    return;
  }
  a->policy = vk_keys_dup(kc, pol, pol_len);
  a->policy_len = pol_len;
  if (a->policy == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  a->max_of_type = vk_keys_policy_max_keys(policy, (int)a->req->key_type);
  if (a->max_of_type > 0 && count >= (int64_t)a->max_of_type) {
    vk_keys_failf(
        kc, VK_GRPC_RESOURCE_EXHAUSTED,
        "the vehicle's key policy allows at most %u keys of this type",
        a->max_of_type);
    return;
  }
  if (!functions_for_type(kc, (int)a->req->key_type, a->requested, policy,
                          &a->functions)) {
    return;
  }
  apply_sign(a);
}

static void apply_read_done(vk_keys_call_t *kc, int status,
                            const redisReply *reply) {
  apply_t *a = vk_container_of(kc, apply_t, kc);
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "IDEM")) {
    vk_keys_respond_stored(kc, &vkey__v1__apply_key_response__descriptor,
                           reply);
  } else if (vk_keys_reply_tag(reply, "STATE")) {
    apply_decide(a, reply);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

static void apply_read(apply_t *a) {
  vk_keys_call_t *kc = &a->kc;
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, a->k_vehicle);
  vk_keys_arg_key(kc, a->k_user);
  vk_keys_arg_key(kc, a->k_veh_keys);
  if (a->has_idem) {
    vk_keys_arg_key(kc, a->k_idem);
  }
  vk_keys_arg_i64(kc, (int64_t)a->req->key_type);
  vk_keys_eval(kc, &s_apply_read, apply_read_done);
}

static void apply_signed(vk_crypto_job_t *job, int status, void *arg) {
  apply_t *a = arg;
  vk_call_t *call = a->kc.call;
  if (!vk_call_is_done(call) && vk_keys_sign_result(&a->kc, job, status) &&
      vk_keys_issue_finish(&a->kc, &a->key, &job->ops[0])) {
    apply_write(a);
  }
  vk_call_unref(call);
}

// apply_sign builds the key (S230): a fresh id and claims, signed on the
// worker pool.
static void apply_sign(apply_t *a) {
  vk_keys_call_t *kc = &a->kc;
  const Vkey__V1__ApplyKeyRequest *req = a->req;
  kc->now_ms = vk_wall_ms();
  vk_keys_issue_params_t p = {
      .vin = kc->vin,
      .holder = req->user_id,
      .holder_key_algorithm = req->holder_key_algorithm,
      .holder_public_key = req->holder_public_key,
      .key_type = req->key_type,
      .functions = a->functions,
      .validity = req->validity,
      .max_uses = a->max_uses,
      .issued_by = kc->who.subject,
      .now_ms = kc->now_ms,
  };
  vk_keys_issue_init(kc, &a->key, &p);
  snprintf(kc->key_id, sizeof(kc->key_id), "%s", a->key.key_id);
  if (vk_keys_sign_prepare(kc, &a->job.ops[0], &a->key.claims,
                           &a->key.claims_bytes)) {
    vk_keys_sign_submit(kc, &a->job, 1, apply_signed, a);
  }
}

static void apply_written(vk_keys_call_t *kc, int status,
                          const redisReply *reply) {
  apply_t *a = vk_container_of(kc, apply_t, kc);
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "OK")) {
    vk_keys_respond(kc, &a->resp.base);
  } else if (vk_keys_reply_tag(reply, "IDEM")) {
    vk_keys_respond_stored(kc, &vkey__v1__apply_key_response__descriptor,
                           reply);
  } else if (vk_keys_reply_tag(reply, "RETRY")) {
    if (++a->attempts >= VK_KEYS_MAX_ATTEMPTS) {
      vk_keys_fail(kc, VK_GRPC_ABORTED,
                   "the vehicle or user kept changing; try again");
      return;
    }
    kc->key_id[0] = '\0';
    apply_read(a);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

// apply_write stores and delivers the key (S240) in one script.
static void apply_write(apply_t *a) {
  vk_keys_call_t *kc = &a->kc;
  int64_t now_s = kc->now_ms / 1000;
  vkey__v1__apply_key_response__init(&a->resp);
  a->resp.key = &a->key.rec;
  ProtobufCBinaryData resp;
  if (!vk_keys_pack(kc, &a->resp.base, &resp)) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  char k_key[VK_REDIS_KEY_MAX], k_outbox[VK_REDIS_KEY_MAX];
  char k_audit[VK_REDIS_KEY_MAX], notify[VK_REDIS_KEY_MAX];
  char detail[64];
  vk_store_key(k_key, kc->key_id);
  vk_store_vehicle_sub(k_outbox, kc->vin, "outbox");
  vk_store_vehicle_sub(k_audit, kc->vin, "audit");
  vk_store_vehicle_sub(notify, kc->vin, "notify");
  snprintf(detail, sizeof(detail), "type=%d functions=0x%x version=1",
           (int)a->req->key_type, (unsigned)a->functions);
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, a->k_vehicle);
  vk_keys_arg_key(kc, a->k_user);
  vk_keys_arg_key(kc, a->k_veh_keys);
  vk_keys_arg_key(kc, a->k_user_keys);
  vk_keys_arg_key(kc, k_key);
  vk_keys_arg_key(kc, k_outbox);
  vk_keys_arg_key(kc, k_audit);
  if (a->has_idem) {
    vk_keys_arg_key(kc, a->k_idem);
  }
  vk_keys_arg_str(kc, kc->who.subject);  // 1: the owner the read saw
  vk_keys_arg_bin(kc, a->policy_len > 0 ? a->policy : "", a->policy_len);
  vk_keys_arg_i64(kc, (int64_t)a->req->key_type);
  vk_keys_arg_i64(kc, (int64_t)a->max_of_type);
  vk_keys_arg_str(kc, kc->key_id);  // 5
  vk_keys_arg_bin(kc, a->key.rec_bytes.data, a->key.rec_bytes.len);
  vk_keys_arg_bin(kc, resp.data, resp.len);
  vk_keys_arg_bin(kc, a->key.sk_bytes.data, a->key.sk_bytes.len);
  vk_keys_arg_str(kc, a->req->user_id);
  vk_keys_arg_i64(kc, kc->now_ms);  // 10
  vk_keys_arg_i64(kc, now_s);
  vk_keys_arg_i64(kc, 1);
  vk_keys_arg_str(kc, kc->actor);
  vk_keys_arg_str(kc, kc->vin);
  vk_keys_arg_str(kc, vk_keys_dup(kc, notify, strlen(notify)));  // 15
  vk_keys_arg_str(kc, vk_keys_dup(kc, detail, strlen(detail)));
  vk_keys_eval(kc, &s_apply_write, apply_written);
}

// --- GetKey ------------------------------------------------------------------

typedef struct {
  vk_keys_call_t kc;
  const Vkey__V1__GetKeyRequest *req;
} get_t;

// key_overlay decodes a key's record from a key-read reply and lays the
// authoritative hash fields (status, updated_at) over it. NULL when the
// reply holds no record (the call is not failed) or it does not parse (the
// call is failed: *out_failed).
static Vkey__V1__KeyRecord *key_overlay(vk_keys_call_t *kc,
                                        const redisReply *reply,
                                        bool *out_failed) {
  size_t len, veh_len;
  const char *raw = vk_keys_reply_str(reply, 1, &len);
  int64_t status, updated_at;
  *out_failed = false;
  kc->vin_registered =
      vk_keys_reply_str(reply, 8, &veh_len) != NULL && veh_len > 0;
  if (raw == NULL || !vk_keys_reply_i64(reply, 2, 0, &status) ||
      !vk_keys_reply_i64(reply, 3, 0, &updated_at)) {
    *out_failed = true;
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
    return NULL;
  }
  if (len == 0) {
    return NULL;
  }
  Vkey__V1__KeyRecord *rec = vkey__v1__key_record__unpack(
      vk_call_allocator(kc->call), len, (const uint8_t *)raw);
  if (rec == NULL || rec->claims == NULL || rec->key == NULL) {
    *out_failed = true;
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "stored key record does not parse");
    return NULL;
  }
  rec->status = (Vkey__V1__KeyStatus)status;
  rec->updated_at = updated_at;
  return rec;
}

static void get_read_done(vk_keys_call_t *kc, int status,
                          const redisReply *reply) {
  if (status != VK_OK || !vk_keys_reply_tag(reply, "KEY")) {
    vk_keys_unavailable(kc, status, reply);
    return;
  }
  bool failed;
  Vkey__V1__KeyRecord *rec = key_overlay(kc, reply, &failed);
  if (failed) {
    return;
  }
  if (rec == NULL) {
    vk_keys_fail(kc, VK_GRPC_NOT_FOUND, "no such key");
    return;
  }
  const char *holder = vk_keys_reply_str(reply, 5, NULL);
  const char *owner = vk_keys_reply_str(reply, 6, NULL);
  bool user = kc->who.role == VK_ROLE_USER;
  bool allowed =
      kc->who.role == VK_ROLE_OPERATOR ||
      (user && holder != NULL && strcmp(holder, kc->who.subject) == 0) ||
      (user && owner != NULL && strcmp(owner, kc->who.subject) == 0);
  if (!allowed) {
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "only the key's holder or the vehicle's owner may read it");
    return;
  }
  Vkey__V1__GetKeyResponse resp = VKEY__V1__GET_KEY_RESPONSE__INIT;
  resp.key = rec;
  vk_keys_respond(kc, &resp.base);
}

static void get_authed(vk_call_t *call, const vk_identity_t *who, void *arg) {
  get_t *g = arg;
  vk_keys_call_t *kc = &g->kc;
  (void)call;
  vk_keys_set_identity(kc, who);
  if (!vk_key_id_valid(g->req->key_id)) {
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT,
                 "key_id: want <VIN>.<16 lowercase hex digits>");
    return;
  }
  vk_keys_set_key(kc, g->req->key_id);
  char k_key[VK_REDIS_KEY_MAX], k_vehicle[VK_REDIS_KEY_MAX];
  vk_store_key(k_key, kc->key_id);
  vk_store_vehicle(k_vehicle, kc->vin);
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, k_key);
  vk_keys_arg_key(kc, k_vehicle);
  vk_keys_eval(kc, &s_key_read, get_read_done);
}

static void get_start(vk_call_t *call, const ProtobufCMessage *msg) {
  get_t *g = vk_call_alloc(call, sizeof(*g));
  if (g == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_keys_call_init(&g->kc, call, "GetKey", false);
  g->req = (const Vkey__V1__GetKeyRequest *)msg;
  vk_auth_bearer(g->kc.app, call, VK_ROLE_USER, true, get_authed, g);
}

// --- ListKeys
// -------------------------------------------------------------------- The page
// token is "<score>:<key id>" of the last key returned (score: its creation in
// ms), so a page continues after it however keys come and go. Clients treat it
// as opaque.

typedef struct {
  vk_keys_call_t kc;
  const Vkey__V1__ListKeysRequest *req;
  uint32_t page_size;
} list_t;

// vk_keys_page_token_parse (keys_internal.h) splits a token into its score
// and key id; false when malformed. "" starts from the beginning.
bool vk_keys_page_token_parse(const char *tok, char score[24],
                              char key_id[VK_KEY_ID_LEN + 1]) {
  score[0] = '\0';
  key_id[0] = '\0';
  if (tok[0] == '\0') {
    return true;
  }
  const char *colon = strchr(tok, ':');
  size_t digits = colon != NULL ? (size_t)(colon - tok) : 0;
  if (digits == 0 || digits > 18) {
    return false;
  }
  for (size_t i = 0; i < digits; i++) {
    if (tok[i] < '0' || tok[i] > '9') {
      return false;
    }
  }
  if (!vk_key_id_valid(colon + 1)) {
    return false;
  }
  memcpy(score, tok, digits);
  score[digits] = '\0';
  snprintf(key_id, VK_KEY_ID_LEN + 1, "%s", colon + 1);
  return true;
}

// list_entry decodes one key of a page reply (5 elements from `i`).
static Vkey__V1__KeyRecord *list_entry(vk_keys_call_t *kc,
                                       const redisReply *reply, size_t i) {
  size_t len;
  const char *raw = vk_keys_reply_str(reply, i + 2, &len);
  int64_t status, updated_at;
  if (raw == NULL || !vk_keys_reply_i64(reply, i + 3, 0, &status) ||
      !vk_keys_reply_i64(reply, i + 4, 0, &updated_at)) {
    return NULL;
  }
  Vkey__V1__KeyRecord *rec = vkey__v1__key_record__unpack(
      vk_call_allocator(kc->call), len, (const uint8_t *)raw);
  if (rec != NULL) {
    rec->status = (Vkey__V1__KeyStatus)status;
    rec->updated_at = updated_at;
  }
  return rec;
}

static void list_page_done(vk_keys_call_t *kc, int status,
                           const redisReply *reply) {
  list_t *l = vk_container_of(kc, list_t, kc);
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
    return;
  }
  if (vk_keys_reply_tag(reply, "NOENT")) {
    vk_keys_fail(kc, VK_GRPC_NOT_FOUND,
                 l->req->scope_case == VKEY__V1__LIST_KEYS_REQUEST__SCOPE_VIN
                     ? "vehicle is not registered"
                     : "user is not registered");
    return;
  }
  if (vk_keys_reply_tag(reply, "DENIED")) {
    kc->vin_registered = true;
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "only the vehicle's owner may list its keys");
    return;
  }
  int64_t more;
  if (!vk_keys_reply_tag(reply, "PAGE") ||
      !vk_keys_reply_i64(reply, 1, 0, &more) ||
      (reply->elements - 2) % 5 != 0) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
    return;
  }
  size_t n = (reply->elements - 2) / 5;
  Vkey__V1__ListKeysResponse resp = VKEY__V1__LIST_KEYS_RESPONSE__INIT;
  resp.keys = vk_call_alloc(kc->call, (n + 1) * sizeof(*resp.keys));
  if (resp.keys == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  for (size_t i = 0; i < n; i++) {
    Vkey__V1__KeyRecord *rec = list_entry(kc, reply, 2 + 5 * i);
    if (rec == NULL) {
      vk_keys_fail(kc, VK_GRPC_INTERNAL, "stored key record does not parse");
      return;
    }
    resp.keys[resp.n_keys++] = rec;
  }
  if (more != 0 && n > 0) {
    size_t last = 2 + 5 * (n - 1);
    const char *id = vk_keys_reply_str(reply, last, NULL);
    size_t score_len = 0;
    const char *score = vk_keys_reply_str(reply, last + 1, &score_len);
    char tok[64];
    snprintf(tok, sizeof(tok), "%.*s:%s", (int)score_len,
             score != NULL ? score : "0", id != NULL ? id : "");
    resp.next_page_token = vk_keys_dup(kc, tok, strlen(tok));
    if (resp.next_page_token == NULL) {
      vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
  }
  vk_keys_respond(kc, &resp.base);
}

static void list_authed(vk_call_t *call, const vk_identity_t *who, void *arg) {
  list_t *l = arg;
  vk_keys_call_t *kc = &l->kc;
  const Vkey__V1__ListKeysRequest *req = l->req;
  (void)call;
  vk_keys_set_identity(kc, who);
  char score[24], after[VK_KEY_ID_LEN + 1];
  const Vkey__V1__PageRequest *page = req->page;
  if (!vk_keys_page_token_parse(page != NULL ? page->page_token : "", score,
                                after)) {
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT, "page.page_token is not ours");
    return;
  }
  uint32_t size = page != NULL ? page->page_size : 0;
  l->page_size = size == 0 ? kPageDefault : size > kPageMax ? kPageMax : size;
  char k_index[VK_REDIS_KEY_MAX], k_entity[VK_REDIS_KEY_MAX];
  const char *must_own = "";
  bool user = who->role == VK_ROLE_USER;
  if (req->scope_case == VKEY__V1__LIST_KEYS_REQUEST__SCOPE_VIN) {
    if (!vk_vin_valid(req->vin)) {
      vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT,
                   "vin: 17 characters of ISO 3779");
      return;
    }
    snprintf(kc->vin, sizeof(kc->vin), "%s", req->vin);
    vk_store_vehicle_sub(k_index, req->vin, "keys");
    vk_store_vehicle(k_entity, req->vin);
    // kc's copy: `who` may be the token cache's slot, which another call
    // can overwrite before a NOSCRIPT resend reads the arguments again.
    must_own = user ? kc->who.subject : "";
  } else if (req->scope_case == VKEY__V1__LIST_KEYS_REQUEST__SCOPE_USER_ID) {
    if (!vk_user_id_valid(req->user_id)) {
      vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT,
                   "user_id: 1-64 of [A-Za-z0-9._@-]");
      return;
    }
    if (user && strcmp(req->user_id, who->subject) != 0) {
      vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                   "a user may list only their own keys");
      return;
    }
    vk_store_user_keys(k_index, req->user_id);
    vk_store_user(k_entity, req->user_id);
  } else {
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT, "set vin or user_id");
    return;
  }
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, k_index);
  vk_keys_arg_key(kc, k_entity);
  vk_keys_arg_str(kc, vk_keys_dup(kc, score, strlen(score)));
  vk_keys_arg_str(kc, vk_keys_dup(kc, after, strlen(after)));
  vk_keys_arg_i64(kc, (int64_t)l->page_size);
  vk_keys_arg_str(kc, must_own);
  vk_keys_eval(kc, &s_list_page, list_page_done);
}

static void list_start(vk_call_t *call, const ProtobufCMessage *msg) {
  list_t *l = vk_call_alloc(call, sizeof(*l));
  if (l == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_keys_call_init(&l->kc, call, "ListKeys", false);
  l->req = (const Vkey__V1__ListKeysRequest *)msg;
  vk_auth_bearer(l->kc.app, call, VK_ROLE_USER, true, list_authed, l);
}

// --- ManageKey (S270-S280) ---------------------------------------------------

typedef struct {
  vk_keys_call_t kc;
  const Vkey__V1__ManageKeyRequest *req;
  int attempts;
  vk_function_mask_t requested;  // SET_FUNCTIONS; 0: the type's defaults
  bool has_idem;
  char k_idem[VK_REDIS_KEY_MAX];
  // What the read saw; the write re-checks rev, owner and policy.
  Vkey__V1__KeyRecord *old;
  char *rev;
  char *holder;
  char *owner;
  char *policy;
  size_t policy_len;
  // The outcome.
  Vkey__V1__KeyStatus new_status;
  int event;
  Vkey__V1__KeyClaims claims;  // SET_FUNCTIONS, SET_VALIDITY
  Vkey__V1__Validity validity;
  Vkey__V1__VehicleFunction fn_list[VK_KEYTOKEN_FUNCTION_MAX];
  ProtobufCBinaryData claims_bytes;
  vk_crypto_job_t job;
  uint8_t sig[64];
  Vkey__V1__SignedKey sk;
  Vkey__V1__KeyRecord rec;
  Vkey__V1__ManageKeyResponse resp;
} manage_t;

static const char *operation_name(int op) {
  static const char *const kNames[] = {
      "UNSPECIFIED",   "REVOKE",       "SUSPEND", "RESUME",
      "SET_FUNCTIONS", "SET_VALIDITY", "DELETE",
  };
  return op >= 0 && (size_t)op < VK_ARRAY_LEN(kNames) ? kNames[op] : "?";
}

static void manage_read(manage_t *m);
static void manage_write(manage_t *m);

// manage_validate checks the request on its own. NULL or the reason.
static const char *manage_validate(manage_t *m) {
  const Vkey__V1__ManageKeyRequest *req = m->req;
  const char *err = NULL;
  if (!vk_request_id_valid(req->request_id)) {
    return "request_id: at most 64 printable characters without spaces";
  }
  if (!vk_key_id_valid(req->key_id)) {
    return "key_id: want <VIN>.<16 lowercase hex digits>";
  }
  int op = (int)req->operation;
  if (op < OP_REVOKE || op > OP_DELETE) {
    return "operation: unspecified or unknown";
  }
  if (op != OP_SET_FUNCTIONS && req->n_functions > 0) {
    return "functions apply only to SET_FUNCTIONS";
  }
  if (op != OP_SET_VALIDITY && req->validity != NULL) {
    return "validity applies only to SET_VALIDITY";
  }
  if (vk_keytoken_check_functions(&m->requested, &err, req->functions,
                                  req->n_functions) != VK_OK) {
    return err;
  }
  return NULL;
}

static void manage_authed(vk_call_t *call, const vk_identity_t *who,
                          void *arg) {
  manage_t *m = arg;
  vk_keys_call_t *kc = &m->kc;
  (void)call;
  vk_keys_set_identity(kc, who);
  const char *err = manage_validate(m);
  if (err != NULL) {
    if (vk_key_id_valid(m->req->key_id)) {
      vk_keys_set_key(kc, m->req->key_id);
    }
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT, err);
    return;
  }
  vk_keys_set_key(kc, m->req->key_id);
  m->has_idem = vk_keys_idem_key(kc, m->req->request_id, m->k_idem);
  manage_read(m);
}

static void manage_start(vk_call_t *call, const ProtobufCMessage *msg) {
  manage_t *m = vk_call_alloc(call, sizeof(*m));
  if (m == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_keys_call_init(&m->kc, call, "ManageKey", true);
  m->req = (const Vkey__V1__ManageKeyRequest *)msg;
  vk_auth_bearer(m->kc.app, call, VK_ROLE_USER, true, manage_authed, m);
}

// manage_allowed applies the caller's rights (S280): the owner manages
// every key of the vehicle; an operator may revoke any; the holder may
// revoke or delete their own key when the vehicle's policy says so.
static bool manage_allowed(manage_t *m, const Vkey__V1__KeyPolicy *policy) {
  vk_keys_call_t *kc = &m->kc;
  int op = (int)m->req->operation;
  bool user = kc->who.role == VK_ROLE_USER;
  if (user && m->owner[0] != '\0' && strcmp(m->owner, kc->who.subject) == 0) {
    return true;
  }
  if (kc->who.role == VK_ROLE_OPERATOR) {
    if (op == OP_REVOKE) {
      return true;
    }
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "operators may only revoke keys; the owner manages them");
    return false;
  }
  if (user && strcmp(m->holder, kc->who.subject) == 0 &&
      (op == OP_REVOKE || op == OP_DELETE)) {
    if (policy != NULL && policy->holder_may_revoke_own) {
      return true;
    }
    vk_keys_fail(
        kc, VK_GRPC_PERMISSION_DENIED,
        "the vehicle's key policy does not let holders revoke their own "
        "keys");
    return false;
  }
  vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
               "only the vehicle's owner manages its keys");
  return false;
}

// manage_transition applies the state machine: sets the new status and the
// outbox event, or fails the call.
static bool manage_transition(manage_t *m) {
  vk_keys_call_t *kc = &m->kc;
  Vkey__V1__KeyStatus s = m->old->status;
  int op = (int)m->req->operation;
  // Revoked is final but for deleting it: a holder or owner clears a dead
  // key from the lists; the record stays for the audit trail.
  if (s == ST_DELETED) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION, "the key is deleted");
    return false;
  }
  if (s == ST_REVOKED && op != OP_DELETE) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                 "the key is revoked: it can only be deleted");
    return false;
  }
  if (s != ST_ACTIVE && s != ST_SUSPENDED && s != ST_REVOKED) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "the key has an unknown status");
    return false;
  }
  m->new_status = s;
  switch (op) {
    case OP_REVOKE:
      m->new_status = ST_REVOKED;
      m->event = EV_REVOKED;
      return true;
    case OP_SUSPEND:
      if (s != ST_ACTIVE) {
        vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                     "only an active key can be suspended");
        return false;
      }
      m->new_status = ST_SUSPENDED;
      m->event = EV_SUSPENDED;
      return true;
    case OP_RESUME:
      if (s != ST_SUSPENDED) {
        vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                     "only a suspended key can be resumed");
        return false;
      }
      m->new_status = ST_ACTIVE;
      m->event = EV_RESUMED;
      return true;
    case OP_DELETE:
      m->new_status = ST_DELETED;
      m->event = EV_DELETED;
      return true;
    default:  // SET_FUNCTIONS, SET_VALIDITY: the status stays
      m->event = EV_UPDATED;
      return true;
  }
}

static void manage_signed(vk_crypto_job_t *job, int status, void *arg) {
  manage_t *m = arg;
  vk_call_t *call = m->kc.call;
  if (!vk_call_is_done(call) && vk_keys_sign_result(&m->kc, job, status)) {
    memcpy(m->sig, job->ops[0].out_sig, sizeof(m->sig));
    vkey__v1__signed_key__init(&m->sk);
    m->sk.claims = m->claims_bytes;
    m->sk.signature.data = m->sig;
    m->sk.signature.len = sizeof(m->sig);
    m->rec.claims = &m->claims;
    m->rec.key = &m->sk;
    manage_write(m);
  }
  vk_call_unref(call);
}

// manage_resign makes the key's new claims for SET_FUNCTIONS or
// SET_VALIDITY, validated like ApplyKey's, with the next version, and signs
// them on the worker pool.
static void manage_resign(manage_t *m, const Vkey__V1__KeyPolicy *policy) {
  vk_keys_call_t *kc = &m->kc;
  const Vkey__V1__KeyClaims *old = m->old->claims;
  const char *err = NULL;
  m->claims = *old;  // shallow: the old claims live in the arena too
  if (m->req->operation == OP_SET_FUNCTIONS) {
    vk_function_mask_t fns;
    if (!functions_for_type(kc, (int)old->key_type, m->requested, policy,
                            &fns)) {
      return;
    }
    m->claims.n_functions = vk_keytoken_mask_functions(m->fn_list, fns);
    m->claims.functions = m->fn_list;
  } else {
    const Vkey__V1__Validity *v = m->req->validity;
    if (vk_keytoken_check_validity(&err, v, old->key_type, kc->now_ms / 1000) !=
        VK_OK) {
      vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT, err);
      return;
    }
    m->claims.validity = NULL;
    if (v != NULL && (v->not_before != 0 || v->not_after != 0)) {
      vkey__v1__validity__init(&m->validity);
      m->validity.not_before = v->not_before;
      m->validity.not_after = v->not_after;
      m->claims.validity = &m->validity;
    }
  }
  m->claims.version = old->version + 1;
  m->claims.issued_at = kc->now_ms / 1000;
  m->claims.issuer_key_id = kc->app->signing_key.key_id;
  if (vk_keys_sign_prepare(kc, &m->job.ops[0], &m->claims, &m->claims_bytes)) {
    vk_keys_sign_submit(kc, &m->job, 1, manage_signed, m);
  }
}

// manage_decide runs S280 on what the read returned.
static void manage_decide(manage_t *m, const redisReply *reply) {
  vk_keys_call_t *kc = &m->kc;
  bool failed;
  m->old = key_overlay(kc, reply, &failed);
  if (failed) {
    return;
  }
  if (m->old == NULL) {
    vk_keys_fail(kc, VK_GRPC_NOT_FOUND, "no such key");
    return;
  }
  size_t rev_len = 0, holder_len = 0, owner_len = 0, pol_len = 0;
  const char *rev = vk_keys_reply_str(reply, 4, &rev_len);
  const char *holder = vk_keys_reply_str(reply, 5, &holder_len);
  const char *owner = vk_keys_reply_str(reply, 6, &owner_len);
  const char *pol = vk_keys_reply_str(reply, 7, &pol_len);
  if (rev == NULL || holder == NULL || owner == NULL || pol == NULL) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
    return;
  }
  m->rev = vk_keys_dup(kc, rev, rev_len);
  m->holder = vk_keys_dup(kc, holder, holder_len);
  m->owner = vk_keys_dup(kc, owner, owner_len);
  m->policy = vk_keys_dup(kc, pol, pol_len);
  m->policy_len = pol_len;
  Vkey__V1__KeyPolicy *policy;
  if (m->rev == NULL || m->holder == NULL || m->owner == NULL ||
      m->policy == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (!vk_keys_policy_parse(kc, pol, pol_len, &policy)) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL,
                 "the vehicle's key policy does not parse");
    return;
  }
  if (!manage_allowed(m, policy) || !manage_transition(m)) {
    return;
  }
  kc->now_ms = vk_wall_ms();
  m->rec = *m->old;  // the claims and token stay unless re-signed
  int op = (int)m->req->operation;
  if (op == OP_SET_FUNCTIONS || op == OP_SET_VALIDITY) {
    manage_resign(m, policy);
    return;
  }
  manage_write(m);
}

static void manage_read_done(vk_keys_call_t *kc, int status,
                             const redisReply *reply) {
  manage_t *m = vk_container_of(kc, manage_t, kc);
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "IDEM")) {
    vk_keys_respond_stored(kc, &vkey__v1__manage_key_response__descriptor,
                           reply);
  } else if (vk_keys_reply_tag(reply, "KEY")) {
    manage_decide(m, reply);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

static void manage_read(manage_t *m) {
  vk_keys_call_t *kc = &m->kc;
  char k_key[VK_REDIS_KEY_MAX], k_vehicle[VK_REDIS_KEY_MAX];
  vk_store_key(k_key, kc->key_id);
  vk_store_vehicle(k_vehicle, kc->vin);
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, k_key);
  vk_keys_arg_key(kc, k_vehicle);
  if (m->has_idem) {
    vk_keys_arg_key(kc, m->k_idem);
  }
  vk_keys_eval(kc, &s_key_read, manage_read_done);
}

static void manage_written(vk_keys_call_t *kc, int status,
                           const redisReply *reply) {
  manage_t *m = vk_container_of(kc, manage_t, kc);
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "OK")) {
    vk_keys_respond(kc, &m->resp.base);
  } else if (vk_keys_reply_tag(reply, "IDEM")) {
    vk_keys_respond_stored(kc, &vkey__v1__manage_key_response__descriptor,
                           reply);
  } else if (vk_keys_reply_tag(reply, "RETRY")) {
    if (++m->attempts >= VK_KEYS_MAX_ATTEMPTS) {
      vk_keys_fail(kc, VK_GRPC_ABORTED, "the key kept changing; try again");
      return;
    }
    manage_read(m);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

// manage_write stores the outcome and tells the vehicle, in one script.
static void manage_write(manage_t *m) {
  vk_keys_call_t *kc = &m->kc;
  int64_t now_s = kc->now_ms / 1000;
  m->rec.status = m->new_status;
  m->rec.updated_at = now_s;
  vkey__v1__manage_key_response__init(&m->resp);
  m->resp.key = &m->rec;
  ProtobufCBinaryData rec, resp, sk = {0, NULL};
  bool carries_key = m->event == EV_UPDATED || m->event == EV_RESUMED;
  if (!vk_keys_pack(kc, &m->rec.base, &rec) ||
      !vk_keys_pack(kc, &m->resp.base, &resp) ||
      (carries_key && !vk_keys_pack(kc, &m->rec.key->base, &sk))) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  char k_vehicle[VK_REDIS_KEY_MAX], k_key[VK_REDIS_KEY_MAX];
  char k_veh_keys[VK_REDIS_KEY_MAX], k_user_keys[VK_REDIS_KEY_MAX];
  char k_outbox[VK_REDIS_KEY_MAX], k_audit[VK_REDIS_KEY_MAX];
  char notify[VK_REDIS_KEY_MAX], detail[64];
  vk_store_vehicle(k_vehicle, kc->vin);
  vk_store_key(k_key, kc->key_id);
  vk_store_vehicle_sub(k_veh_keys, kc->vin, "keys");
  // The holder id came from our own hash; validate before naming a key.
  vk_store_user_keys(k_user_keys,
                     vk_user_id_valid(m->holder) ? m->holder : "-");
  vk_store_vehicle_sub(k_outbox, kc->vin, "outbox");
  vk_store_vehicle_sub(k_audit, kc->vin, "audit");
  vk_store_vehicle_sub(notify, kc->vin, "notify");
  snprintf(detail, sizeof(detail), "%s version=%" PRIu64,
           operation_name((int)m->req->operation), m->rec.claims->version);
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, k_vehicle);
  vk_keys_arg_key(kc, k_key);
  vk_keys_arg_key(kc, k_veh_keys);
  vk_keys_arg_key(kc, k_user_keys);
  vk_keys_arg_key(kc, k_outbox);
  vk_keys_arg_key(kc, k_audit);
  if (m->has_idem) {
    vk_keys_arg_key(kc, m->k_idem);
  }
  vk_keys_arg_str(kc, m->rev);  // 1
  vk_keys_arg_str(kc, m->owner);
  vk_keys_arg_bin(kc, m->policy, m->policy_len);
  vk_keys_arg_i64(kc, (int64_t)m->new_status);
  vk_keys_arg_bin(kc, rec.data, rec.len);  // 5
  vk_keys_arg_bin(kc, resp.data, resp.len);
  vk_keys_arg_i64(kc, (int64_t)m->event);
  vk_keys_arg_i64(kc, (int64_t)m->rec.claims->version);
  vk_keys_arg_bin(kc, sk.data != NULL ? (const void *)sk.data : "", sk.len);
  vk_keys_arg_i64(kc, kc->now_ms);  // 10
  vk_keys_arg_i64(kc, now_s);
  vk_keys_arg_str(kc, kc->actor);
  vk_keys_arg_str(kc, kc->vin);
  vk_keys_arg_str(kc, kc->key_id);
  vk_keys_arg_str(kc, operation_name((int)m->req->operation));  // 15
  vk_keys_arg_str(kc, vk_keys_dup(kc, notify, strlen(notify)));
  vk_keys_arg_str(kc, m->new_status == ST_DELETED ? "1" : "0");
  vk_keys_arg_str(kc, vk_keys_dup(kc, detail, strlen(detail)));
  vk_keys_eval(kc, &s_manage_write, manage_written);
}

// --- the service -------------------------------------------------------------

static const vk_method_t keys_methods[] = {
    {
        .name = "ApplyKey",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__apply_key_request__descriptor,
        .output = &vkey__v1__apply_key_response__descriptor,
        .on_start = apply_start,
    },
    {
        .name = "GetKey",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__get_key_request__descriptor,
        .output = &vkey__v1__get_key_response__descriptor,
        .on_start = get_start,
    },
    {
        .name = "ListKeys",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__list_keys_request__descriptor,
        .output = &vkey__v1__list_keys_response__descriptor,
        .on_start = list_start,
    },
    {
        .name = "ManageKey",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__manage_key_request__descriptor,
        .output = &vkey__v1__manage_key_response__descriptor,
        .on_start = manage_start,
    },
    {
        .name = "GetIssuerKeys",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__get_issuer_keys_request__descriptor,
        .output = &vkey__v1__get_issuer_keys_response__descriptor,
        .on_start = issuers_start,
    },
};

// The scripts' hashes are computed once, whichever loop asks first.
static pthread_once_t s_scripts_once = PTHREAD_ONCE_INIT;

static void init_scripts(void) {
  vk_keys_script_init(&s_apply_read);
  vk_keys_script_init(&s_apply_write);
  vk_keys_script_init(&s_key_read);
  vk_keys_script_init(&s_manage_write);
  vk_keys_script_init(&s_list_page);
}

const vk_service_t *vk_keys_service(vk_app_t *app) {
  pthread_once(&s_scripts_once, init_scripts);
  app->keys_service = (vk_service_t){.name = "vkey.v1.KeyService",
                                     .methods = keys_methods,
                                     .n_methods = VK_ARRAY_LEN(keys_methods),
                                     .ctx = app};
  return &app->keys_service;
}
