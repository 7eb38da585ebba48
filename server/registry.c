// registry.c: vkey.v1.RegistryService, the operator API (see
// proto/vkey/v1/registry.proto and docs/ARCHITECTURE.md "Data model").
//
// Every RPC first authenticates an operator (vk_auth_bearer), then
// validates its request, then talks to Redis. Each RPC keeps its state in
// one reg_t in the call's arena; at most one Redis command is pending per
// call, and it holds a call reference (reg_command / reg_on_reply).
//
// Records and mirrored hash fields. A Vehicle or User is stored serialized
// in the hash field `record`, and the fields that scripts test are mirrored
// as plain hash fields (`status`, and `owner` for vehicles). Both must agree,
// so every change of status or owner is made like this:
//   1. read `record`, `status` and `owner` (HMGET);
//   2. build the new record in C, and the response;
//   3. one Lua script compares the three values with what step 1 read
//      (compare-and-set) and only then writes the record and the mirrored
//      fields together, with the audit entry and the idempotency record.
// A lost race answers ABORTED from the script; we go back to step 1 a few
// times before passing ABORTED on. Readers still overlay `status` and
// `owner` onto the decoded record, so that the mirrored fields (which other
// modules' scripts test) are what an operator sees, should they ever differ.
//
// Idempotency: a mutating request with a request_id stores its serialized
// response under vk:[veh:{VIN}:]idem:<actor>:<request id> inside the same
// script as the change; a retry finds it first thing and returns it,
// changing nothing and writing no second audit entry. Refusals are not
// stored: a retry is judged again.
//
// Auditing: each successful change is audited inside its script
// (VK_AUDIT_LUA); refusals of mutating RPCs are audited from C with
// vk_audit_record. Reads are not audited.
#include "registry.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "identity.h"
#include "log.h"
#include "store.h"
#include "verify_cache.h"
#include "vkey/v1/registry.pb-c.h"

enum {
  kMaxAttempts = 4,     // compare-and-set rounds before ABORTED
  kPageDefault = 50,    // PageRequest.page_size 0
  kPageMax = 500,       // larger page sizes are lowered to this
  kModelMax = 64,       // bytes of Vehicle.model
  kAttrsMax = 32,       // entries of Vehicle.attributes
  kAttrKeyMax = 64,     // bytes of an attribute's key
  kAttrValueMax = 256,  // bytes of an attribute's value
  kDisplayNameMax = 128,
  kMaxArgs = 24,  // of one EVAL
};

// A page of records stops growing past this many bytes so the response
// stays well under the 4 MiB gRPC message cap (500 vehicles with every
// attribute filled would not).
static const size_t kPageBytesMax = (size_t)2 << 20;

typedef Vkey__V1__Vehicle vehicle_t;
typedef Vkey__V1__User user_t;

typedef struct reg_s reg_t;
typedef void (*reg_step_fn)(reg_t *r, const redisReply *reply);

// reg_rpc_t is what differs between the RPCs.
typedef struct {
  const char *op;  // the audit operation, the RPC's name
  bool mutating;   // refusals are audited
  const ProtobufCMessageDescriptor *output;
  // validate checks the request; returns NULL or an INVALID_ARGUMENT text.
  const char *(*validate)(reg_t *r);
  // run does the work once the caller is an authenticated operator and the
  // request is valid; for compare-and-set RPCs it runs again after a lost
  // race.
  void (*run)(reg_t *r);
} reg_rpc_t;

struct reg_s {
  vk_app_t *app;
  vk_call_t *call;
  const ProtobufCMessage *req;
  const reg_rpc_t *rpc;
  char actor[VK_AUDIT_ACTOR_MAX];
  reg_step_fn next;  // continuation of the pending Redis command
  int attempts;
  // The request's VIN once valid, and whether the vehicle is known to be
  // registered (its refusals then go to the vehicle's audit stream).
  const char *vin;
  bool vin_known;
  char now_ms[24];
  char now_s[24];
  // Step 1 of a compare-and-set: the hash fields as read.
  ProtobufCBinaryData old_record;
  const char *old_status;
  const char *old_owner;
  // Lists: the page asked for.
  uint32_t page_size;
  const char *after;  // decoded page token, or NULL for the first page
};

// --- small helpers -----------------------------------------------------------

// A UTF-8 text field: at most `max` bytes, no control characters, and,
// unless `ascii`, well-formed UTF-8 (protobuf-c does not check, and clients
// in other languages refuse to decode a record that is not).
static bool text_ok(const char *s, size_t max, bool ascii) {
  size_t len = strlen(s);
  if (len > max) {
    return false;
  }
  for (size_t i = 0; i < len;) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f) {
      return false;
    }
    if (c < 0x80) {
      i++;
      continue;
    }
    if (ascii) {
      return false;
    }
    // Lead byte: 2, 3 or 4 byte sequences (no overlongs C0/C1, <= F4).
    size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
    if (c < 0xc2 || c > 0xf4 || i + n > len) {
      return false;
    }
    for (size_t k = 1; k < n; k++) {
      if (((unsigned char)s[i + k] & 0xc0) != 0x80) {
        return false;
      }
    }
    i += n;
  }
  return true;
}

static char *arena_strdup(reg_t *r, const char *s, size_t len) {
  char *out = vk_call_alloc(r->call, len + 1);
  if (out != NULL) {
    memcpy(out, s, len);
  }
  return out;
}

// Serializes `m` into the call's arena.
static uint8_t *pack(reg_t *r, const ProtobufCMessage *m, size_t *out_len) {
  size_t len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = vk_call_alloc(r->call, len ? len : 1);
  if (buf != NULL) {
    *out_len = protobuf_c_message_pack(m, buf);
  }
  return buf;
}

// Page tokens are the last listed id in hex: opaque to clients, and any
// string we hand out decodes back to exactly one id.
static char *token_encode(reg_t *r, const char *id) {
  size_t len = strlen(id);
  char *out = vk_call_alloc(r->call, 2 * len + 1);
  for (size_t i = 0; out != NULL && i < len; i++) {
    snprintf(out + 2 * i, 3, "%02x", (unsigned char)id[i]);
  }
  return out;
}

static int hex_val(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  return -1;
}

// Decodes a page token; NULL if malformed. The caller validates the id.
static char *token_decode(reg_t *r, const char *tok) {
  size_t len = strlen(tok);
  if (len == 0 || len % 2 != 0 || len > 2 * VK_USER_ID_MAX) {
    return NULL;
  }
  char *out = vk_call_alloc(r->call, len / 2 + 1);
  if (out == NULL) {
    return NULL;
  }
  for (size_t i = 0; i < len / 2; i++) {
    int hi = hex_val(tok[2 * i]);
    int lo = hex_val(tok[2 * i + 1]);
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
      return NULL;
    }
    out[i] = (char)(hi * 16 + lo);
  }
  return out;
}

// Takes the page size and token of `page` (may be NULL); `id_ok` validates
// the decoded token. Returns NULL or an INVALID_ARGUMENT text.
static const char *page_parse(reg_t *r, const Vkey__V1__PageRequest *page,
                              bool (*id_ok)(const char *)) {
  r->page_size = kPageDefault;
  r->after = NULL;
  if (page == NULL) {
    return NULL;
  }
  if (page->page_size != 0) {
    r->page_size = page->page_size < kPageMax ? page->page_size : kPageMax;
  }
  if (page->page_token[0] != '\0') {
    r->after = token_decode(r, page->page_token);
    if (r->after == NULL || !id_ok(r->after)) {
      return "page_token is not one this server handed out";
    }
  }
  return NULL;
}

// --- EVAL arguments ----------------------------------------------------------

typedef struct {
  int n;
  const char *v[kMaxArgs];
  size_t len[kMaxArgs];
  char numkeys[12];
} reg_args_t;

static void args_bin(reg_args_t *a, const void *p, size_t len) {
  if (a->n < kMaxArgs) {  // every script here has fewer; see args_check
    a->v[a->n] = p;
    a->len[a->n] = len;
  }
  a->n++;
}

static void args_str(reg_args_t *a, const char *s) {
  args_bin(a, s, strlen(s));
}

// Starts `EVAL script numkeys`; add the keys, then args_keys_done.
static void args_eval(reg_args_t *a, const char *script) {
  a->n = 0;
  args_str(a, "EVAL");
  args_str(a, script);
  args_str(a, "0");
}

static void args_keys_done(reg_args_t *a) {
  snprintf(a->numkeys, sizeof(a->numkeys), "%d", a->n - 3);
  a->v[2] = a->numkeys;
  a->len[2] = strlen(a->numkeys);
}

// --- finishing ---------------------------------------------------------------

// reg_fail ends the call with an error; a refusal of a mutating RPC is
// audited (not UNAVAILABLE/INTERNAL: those are ours, not the caller's, and
// Redis would most likely not take the entry anyway).
static void reg_fail(reg_t *r, vk_grpc_status_t status, const char *msg) {
  if (r->rpc->mutating && status != VK_GRPC_UNAVAILABLE &&
      status != VK_GRPC_INTERNAL) {
    char detail[256];
    if (r->vin != NULL && !r->vin_known) {
      snprintf(detail, sizeof(detail), "vin %s: %s", r->vin, msg);
    } else {
      snprintf(detail, sizeof(detail), "%s", msg);
    }
    vk_audit_record(r->app, r->vin_known ? r->vin : NULL, r->actor, r->rpc->op,
                    NULL, vk_audit_result(status), detail);
  }
  vk_call_finish(r->call, status, msg);
}

static void reg_send(reg_t *r, const ProtobufCMessage *msg) {
  int rv = vk_call_send(r->call, msg);
  if (rv == VK_OK) {
    vk_call_finish(r->call, VK_GRPC_OK, NULL);
  } else if (rv == VK_ETOOBIG) {
    vk_call_finish(r->call, VK_GRPC_RESOURCE_EXHAUSTED,
                   "response too large: ask for a smaller page");
  } else {
    vk_call_finish(r->call, VK_GRPC_INTERNAL, vk_strerror(rv));
  }
}

static void oom(reg_t *r) {
  vk_call_finish(r->call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
}

// --- Redis -------------------------------------------------------------------

// Error replies that mean "Redis cannot serve right now" rather than "this
// script is wrong".
static bool redis_error_transient(const char *err) {
  static const char *const kPrefixes[] = {
      "LOADING", "BUSY",     "MASTERDOWN",  "READONLY",
      "OOM",     "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS",
  };
  for (size_t i = 0; i < VK_ARRAY_LEN(kPrefixes); i++) {
    if (strncmp(err, kPrefixes[i], strlen(kPrefixes[i])) == 0) {
      return true;
    }
  }
  return false;
}

static void reg_on_reply(vk_redis_t *redis, int status, const redisReply *reply,
                         void *priv) {
  (void)redis;
  reg_t *r = priv;
  vk_call_t *call = r->call;  // the pending command's reference
  if (vk_call_is_done(call)) {
    // Nobody listens; a script that ran has committed, and a retry with the
    // same request_id will find its result.
  } else if (status == VK_ETIMEDOUT) {
    reg_fail(r, VK_GRPC_UNAVAILABLE,
             "key store timed out; the change may or may not have been "
             "made: retry with the same request_id");
  } else if (status != VK_OK) {
    reg_fail(r, VK_GRPC_UNAVAILABLE, "key store unavailable");
  } else if (reply->type == REDIS_REPLY_ERROR) {
    vk_log(VK_LOG_WARN, vk_call_id(call), "registry %s: redis: %s", r->rpc->op,
           reply->str);
    reg_fail(r,
             redis_error_transient(reply->str) ? VK_GRPC_UNAVAILABLE
                                               : VK_GRPC_INTERNAL,
             "key store error");
  } else {
    r->next(r, reply);
  }
  vk_call_unref(call);
}

// Sends one command; `next` runs with its reply while the call is live.
static void reg_command(reg_t *r, reg_step_fn next, reg_args_t *a) {
  if (a->n > kMaxArgs) {  // a programming error, caught in tests
    vk_call_finish(r->call, VK_GRPC_INTERNAL, "too many script arguments");
    return;
  }
  r->next = next;
  vk_call_ref(r->call);
  int rv =
      vk_redis_command_argv(r->app->redis, reg_on_reply, r, a->n, a->v, a->len);
  if (rv != VK_OK) {
    vk_call_unref(r->call);  // the stream still holds the call
    reg_fail(r,
             rv == VK_EBUSY ? VK_GRPC_RESOURCE_EXHAUSTED : VK_GRPC_UNAVAILABLE,
             rv == VK_EBUSY ? "server busy: key store queue full"
                            : "key store unavailable");
  }
}

// The reply of every mutating script: {0, serialized response} or
// {gRPC status, message}. ABORTED (a lost compare-and-set) reruns the RPC.
static void reg_script_done(reg_t *r, const redisReply *reply) {
  if (r->vin != NULL && r->app->verify_cache != NULL && vk_vin_valid(r->vin)) {
    // A transfer revokes keys: forget this vehicle's cached key status here
    // at once, not only when our own notify comes back.
    vk_verify_cache_invalidate_vehicle(r->app->verify_cache, r->vin,
                                       strlen(r->vin));
  }
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
      reply->element[0]->type != REDIS_REPLY_INTEGER ||
      reply->element[1]->type != REDIS_REPLY_STRING) {
    vk_call_finish(r->call, VK_GRPC_INTERNAL, "unexpected key store reply");
    return;
  }
  long long code = reply->element[0]->integer;
  const redisReply *payload = reply->element[1];
  if (code == VK_GRPC_OK) {
    ProtobufCMessage *resp =
        protobuf_c_message_unpack(r->rpc->output, vk_call_allocator(r->call),
                                  payload->len, (const uint8_t *)payload->str);
    if (resp == NULL) {
      vk_call_finish(r->call, VK_GRPC_INTERNAL, "stored response corrupt");
      return;
    }
    reg_send(r, resp);
    return;
  }
  if (code == VK_GRPC_ABORTED && ++r->attempts < kMaxAttempts) {
    r->rpc->run(r);
    return;
  }
  if (code <= 0 || code > VK_GRPC_UNAUTHENTICATED) {
    code = VK_GRPC_INTERNAL;
  }
  if (code == VK_GRPC_ALREADY_EXISTS) {
    r->vin_known = r->vin != NULL;  // the vehicle it refers to is registered
  }
  reg_fail(r, (vk_grpc_status_t)code, payload->str);
}

// --- Lua ---------------------------------------------------------------------

// Shared by the mutating scripts. Idempotency records live a day. vk_cas
// is step 3 of the compare-and-set described at the top of this file.
#define REG_LUA_PRELUDE                                                  \
  VK_AUDIT_LUA                                                           \
  "local function vk_idem_get(k)\n"                                      \
  "  if k then return redis.call('GET', k) end\n"                        \
  "  return false\n"                                                     \
  "end\n"                                                                \
  "local function vk_idem_put(k, v)\n"                                   \
  "  if k then redis.call('SET', k, v, 'EX', 86400) end\n"               \
  "end\n"                                                                \
  "local function vk_cas(k, rec, st, ow)\n"                              \
  "  local h = redis.call('HMGET', k, 'record', 'status', 'owner')\n"    \
  "  return h[1] == rec and (h[2] or '') == st and (h[3] or '') == ow\n" \
  "end\n"

// RegisterVehicle. KEYS: vehicle hash, vk:vehicles, vehicle audit,
// [idem]. ARGV: now ms, actor, record, pub, created_at (s), vin, response.
static const char kRegisterVehicleLua[] = REG_LUA_PRELUDE
    "local done = vk_idem_get(KEYS[4])\n"
    "if done then return {0, done} end\n"
    "if redis.call('HEXISTS', KEYS[1], 'record') == 1 then\n"
    "  return {6, 'vehicle ' .. ARGV[6] .. ' is already registered'}\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'record', ARGV[3], 'pub', ARGV[4],\n"
    "  'status', '1', 'created_at', ARGV[5], 'seq', '0', 'acked', '0')\n"
    "redis.call('ZADD', KEYS[2], 0, ARGV[6])\n"
    "vk_audit(KEYS[3], ARGV[1], ARGV[2], 'RegisterVehicle', ARGV[6], nil,\n"
    "  'ok', 'registered')\n"
    "vk_idem_put(KEYS[4], ARGV[7])\n"
    "return {0, ARGV[7]}\n";

// RegisterUser. KEYS: user hash, vk:users, vk:audit, [idem].
// ARGV: now ms, actor, record, user id, response.
static const char kRegisterUserLua[] = REG_LUA_PRELUDE
    "local done = vk_idem_get(KEYS[4])\n"
    "if done then return {0, done} end\n"
    "if redis.call('HEXISTS', KEYS[1], 'record') == 1 then\n"
    "  return {6, 'user ' .. ARGV[4] .. ' is already registered'}\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'record', ARGV[3], 'status', '1')\n"
    "redis.call('ZADD', KEYS[2], 0, ARGV[4])\n"
    "vk_audit(KEYS[3], ARGV[1], ARGV[2], 'RegisterUser', '', nil, 'ok',\n"
    "  'registered user ' .. ARGV[4])\n"
    "vk_idem_put(KEYS[4], ARGV[5])\n"
    "return {0, ARGV[5]}\n";

// SetVehicleStatus and SetUserStatus. KEYS: entity hash, audit stream,
// [idem]. ARGV: now ms, actor, op, vin ('' for users), old record, old
// status, old owner, new record, new status, response, entity name.
static const char kSetStatusLua[] = REG_LUA_PRELUDE
    "local done = vk_idem_get(KEYS[3])\n"
    "if done then return {0, done} end\n"
    "if not vk_cas(KEYS[1], ARGV[5], ARGV[6], ARGV[7]) then\n"
    "  return {10, ARGV[11] .. ' changed concurrently'}\n"
    "end\n"
    "local detail = 'status unchanged: ' .. ARGV[9]\n"
    "if ARGV[6] ~= ARGV[9] then\n"
    "  redis.call('HSET', KEYS[1], 'record', ARGV[8], 'status', ARGV[9])\n"
    "  detail = ARGV[11] .. ' status ' .. ARGV[6] .. ' -> ' .. ARGV[9]\n"
    "end\n"
    "vk_audit(KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], nil, 'ok',\n"
    "  detail)\n"
    "vk_idem_put(KEYS[3], ARGV[10])\n"
    "return {0, ARGV[10]}\n";

// SetVehicleOwner. KEYS: vehicle hash, user hash, vehicle's keys zset,
// outbox, vehicle audit, [idem]. ARGV: now ms, actor, vin, user id, old
// record, old status, old owner, new record, response (without
// keys_revoked), now s, notify channel, key hash prefix.
//
// On a transfer every ACTIVE or SUSPENDED key is revoked exactly as the
// key service does it (data model: status 3, rev + 1, updated_at; an outbox
// event per key with the next seq, and a notify per event). keys_revoked is
// field 2 (varint) of the response: appending its encoding to the
// serialized response is a valid protobuf merge, so the script can add the
// count that only it knows.
static const char kSetOwnerLua[] = REG_LUA_PRELUDE
    "local function varint(n)\n"
    "  local s = ''\n"
    "  while n >= 128 do\n"
    "    s = s .. string.char(n % 128 + 128)\n"
    "    n = math.floor(n / 128)\n"
    "  end\n"
    "  return s .. string.char(n)\n"
    "end\n"
    "local done = vk_idem_get(KEYS[6])\n"
    "if done then return {0, done} end\n"
    "if not vk_cas(KEYS[1], ARGV[5], ARGV[6], ARGV[7]) then\n"
    "  return {10, 'the vehicle changed concurrently'}\n"
    "end\n"
    "local ust = redis.call('HGET', KEYS[2], 'status')\n"
    "if not ust then\n"
    "  return {5, 'user ' .. ARGV[4] .. ' is not registered'}\n"
    "end\n"
    "if ust ~= '1' then\n"
    "  return {9, 'user ' .. ARGV[4] .. ' is disabled'}\n"
    "end\n"
    "local old, n = ARGV[7], 0\n"
    "if old == ARGV[4] then\n"
    "  vk_audit(KEYS[5], ARGV[1], ARGV[2], 'SetVehicleOwner', ARGV[3], nil,\n"
    "    'ok', 'owner unchanged: ' .. old)\n"
    "else\n"
    "  redis.call('HSET', KEYS[1], 'record', ARGV[8], 'owner', ARGV[4])\n"
    "  if old ~= '' then\n"
    "    for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do\n"
    "      local kk = ARGV[12] .. id\n"
    "      local st = redis.call('HGET', kk, 'status')\n"
    "      if st == '1' or st == '2' then\n"
    "        redis.call('HSET', kk, 'status', '3', 'updated_at', ARGV[10])\n"
    "        redis.call('HINCRBY', kk, 'rev', 1)\n"
    "        local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)\n"
    "        local ver = redis.call('HGET', kk, 'ver') or '0'\n"
    "        redis.call('XADD', KEYS[4], seq .. '-1', 't', '5', 'k', id,\n"
    "          'v', ver, 's', '3', 'at', ARGV[1])\n"
    "        redis.call('PUBLISH', ARGV[11], seq)\n"
    "        vk_audit(KEYS[5], ARGV[1], ARGV[2], 'SetVehicleOwner', ARGV[3],\n"
    "          id, 'ok', 'key revoked: owner changed from ' .. old)\n"
    "        n = n + 1\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  local what = 'owner set to ' .. ARGV[4]\n"
    "  if old ~= '' then\n"
    "    what = 'owner transferred from ' .. old .. ' to ' .. ARGV[4] ..\n"
    "      '; keys revoked: ' .. n\n"
    "  end\n"
    "  vk_audit(KEYS[5], ARGV[1], ARGV[2], 'SetVehicleOwner', ARGV[3], nil,\n"
    "    'ok', what)\n"
    "end\n"
    "local resp = ARGV[9]\n"
    "if n > 0 then resp = resp .. '\\16' .. varint(n) end\n"
    "vk_idem_put(KEYS[6], resp)\n"
    "return {0, resp}\n";

// ListVehicles and ListUsers: one page of ids after ARGV[1] (a ZRANGEBYLEX
// bound) and their hash fields, read atomically in one round trip. KEYS:
// the index zset. ARGV: bound, page size, hash key prefix, suffix. Returns
// {more, id, record, status, owner, id, ...}; a missing field is ''.
static const char kListLua[] =
    "local n = tonumber(ARGV[2])\n"
    "local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT',\n"
    "  0, n + 1)\n"
    "local out = {#ids > n and 1 or 0}\n"
    "for i = 1, math.min(#ids, n) do\n"
    "  local h = redis.call('HMGET', ARGV[3] .. ids[i] .. ARGV[4], 'record',\n"
    "    'status', 'owner')\n"
    "  out[#out + 1] = ids[i]\n"
    "  out[#out + 1] = h[1] or ''\n"
    "  out[#out + 1] = h[2] or ''\n"
    "  out[#out + 1] = h[3] or ''\n"
    "end\n"
    "return out\n";

// --- records -----------------------------------------------------------------

// The mirrored `status` field ("1", "2") as an EntityStatus; anything else
// keeps the record's own.
static Vkey__V1__EntityStatus status_overlay(Vkey__V1__EntityStatus own,
                                             const char *field) {
  if (strcmp(field, "1") == 0) {
    return VKEY__V1__ENTITY_STATUS__ENTITY_STATUS_ACTIVE;
  }
  if (strcmp(field, "2") == 0) {
    return VKEY__V1__ENTITY_STATUS__ENTITY_STATUS_DISABLED;
  }
  return own;
}

static const char *status_field(Vkey__V1__EntityStatus s) {
  return s == VKEY__V1__ENTITY_STATUS__ENTITY_STATUS_DISABLED ? "2" : "1";
}

// Decodes a vehicle record and overlays the mirrored fields; NULL if the
// record does not decode.
static vehicle_t *vehicle_decode(reg_t *r, const char *rec, size_t len,
                                 const char *status, const char *owner) {
  vehicle_t *v = vkey__v1__vehicle__unpack(vk_call_allocator(r->call), len,
                                           (const uint8_t *)rec);
  if (v != NULL) {
    v->status = status_overlay(v->status, status);
    v->owner_user_id = arena_strdup(r, owner, strlen(owner));
    if (v->owner_user_id == NULL) {
      return NULL;
    }
  }
  return v;
}

static user_t *user_decode(reg_t *r, const char *rec, size_t len,
                           const char *status) {
  user_t *u = vkey__v1__user__unpack(vk_call_allocator(r->call), len,
                                     (const uint8_t *)rec);
  if (u != NULL) {
    u->status = status_overlay(u->status, status);
  }
  return u;
}

// The string of an HMGET element; "" for nil.
static const char *field_str(const redisReply *e) {
  return e->type == REDIS_REPLY_STRING ? e->str : "";
}

// Step 1 of a compare-and-set: HMGET record status owner of `key`, kept in
// r->old_*; `next` then runs with the reply (record nil: not registered).
static void read_entity(reg_t *r, const char *key, reg_step_fn next) {
  reg_args_t a = {0};
  args_str(&a, "HMGET");
  args_str(&a, key);
  args_str(&a, "record");
  args_str(&a, "status");
  args_str(&a, "owner");
  reg_command(r, next, &a);
}

// Keeps the fields read by read_entity. Returns false (and finishes the
// call) if the reply is malformed or memory runs out; sets *out_found.
static bool keep_entity(reg_t *r, const redisReply *reply, bool *out_found) {
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) {
    vk_call_finish(r->call, VK_GRPC_INTERNAL, "unexpected key store reply");
    return false;
  }
  const redisReply *rec = reply->element[0];
  *out_found = rec->type == REDIS_REPLY_STRING;
  if (!*out_found) {
    return true;
  }
  const char *st = field_str(reply->element[1]);
  const char *ow = field_str(reply->element[2]);
  r->old_record.data = (uint8_t *)arena_strdup(r, rec->str, rec->len);
  r->old_record.len = rec->len;
  r->old_status = arena_strdup(r, st, strlen(st));
  r->old_owner = arena_strdup(r, ow, strlen(ow));
  if (r->old_record.data == NULL || r->old_status == NULL ||
      r->old_owner == NULL) {
    oom(r);
    return false;
  }
  return true;
}

static void set_now(reg_t *r) {
  int64_t ms = vk_wall_ms();
  snprintf(r->now_ms, sizeof(r->now_ms), "%" PRId64, ms);
  snprintf(r->now_s, sizeof(r->now_s), "%" PRId64, ms / 1000);
}

// The idempotency key of this request, or "" without a request_id.
static void idem_key(reg_t *r, char *out, const char *request_id) {
  out[0] = '\0';
  if (request_id[0] == '\0') {
    return;
  }
  // "idem:" + actor (< 80) + ":" + request id (<= 64) fits.
  char suffix[160];
  snprintf(suffix, sizeof(suffix), "idem:%s:%s", r->actor, request_id);
  if (r->vin != NULL) {
    vk_store_vehicle_sub(out, r->vin, suffix);
  } else {
    snprintf(out, VK_REDIS_KEY_MAX, "vk:%s", suffix);
  }
}

// --- RegisterVehicle ---------------------------------------------------------

static const char *attrs_check(
    Vkey__V1__RegisterVehicleRequest__AttributesEntry *const *attrs, size_t n) {
  if (n > kAttrsMax) {
    return "attributes: at most 32 entries";
  }
  for (size_t i = 0; i < n; i++) {
    const char *k = attrs[i]->key;
    if (k[0] == '\0' || !text_ok(k, kAttrKeyMax, true)) {
      return "attributes: keys are 1-64 printable ASCII characters";
    }
    if (!text_ok(attrs[i]->value, kAttrValueMax, false)) {
      return "attributes: values are at most 256 bytes of UTF-8 text";
    }
    for (size_t j = 0; j < i; j++) {
      if (strcmp(attrs[j]->key, k) == 0) {
        return "attributes: duplicate key";
      }
    }
  }
  return NULL;
}

static const char *register_vehicle_validate(reg_t *r) {
  const Vkey__V1__RegisterVehicleRequest *q = (const void *)r->req;
  if (!vk_request_id_valid(q->request_id)) {
    return "request_id: at most 64 printable characters, no spaces";
  }
  if (!vk_vin_valid(q->vin)) {
    return "vin: 17 characters of ISO 3779 (digits and capitals, no I, O, "
           "Q)";
  }
  r->vin = q->vin;
  if (q->public_key.len != 32) {
    return "public_key: an Ed25519 public key is exactly 32 bytes";
  }
  if (!text_ok(q->model, kModelMax, true)) {
    return "model: at most 64 printable ASCII characters";
  }
  return attrs_check(q->attributes, q->n_attributes);
}

static vehicle_t *vehicle_new(reg_t *r,
                              const Vkey__V1__RegisterVehicleRequest *q) {
  vehicle_t *v = vk_call_alloc(r->call, sizeof(*v));
  Vkey__V1__Vehicle__AttributesEntry **attrs =
      vk_call_alloc(r->call, (q->n_attributes + 1) * sizeof(*attrs));
  if (v == NULL || attrs == NULL) {
    return NULL;
  }
  vkey__v1__vehicle__init(v);
  for (size_t i = 0; i < q->n_attributes; i++) {
    attrs[i] = vk_call_alloc(r->call, sizeof(*attrs[i]));
    if (attrs[i] == NULL) {
      return NULL;
    }
    vkey__v1__vehicle__attributes_entry__init(attrs[i]);
    attrs[i]->key = q->attributes[i]->key;
    attrs[i]->value = q->attributes[i]->value;
  }
  v->vin = q->vin;
  v->public_key = q->public_key;
  v->model = q->model;
  v->n_attributes = q->n_attributes;
  v->attributes = attrs;
  v->status = VKEY__V1__ENTITY_STATUS__ENTITY_STATUS_ACTIVE;
  v->created_at = vk_wall_ms() / 1000;
  return v;
}

static void register_vehicle_run(reg_t *r) {
  const Vkey__V1__RegisterVehicleRequest *q = (const void *)r->req;
  vehicle_t *v = vehicle_new(r, q);
  Vkey__V1__RegisterVehicleResponse resp =
      VKEY__V1__REGISTER_VEHICLE_RESPONSE__INIT;
  resp.vehicle = v;
  size_t rec_len = 0, resp_len = 0;
  uint8_t *rec = v ? pack(r, &v->base, &rec_len) : NULL;
  uint8_t *out = v ? pack(r, &resp.base, &resp_len) : NULL;
  if (rec == NULL || out == NULL) {
    oom(r);
    return;
  }
  set_now(r);
  char created[24];
  snprintf(created, sizeof(created), "%" PRId64, v->created_at);
  char kveh[VK_REDIS_KEY_MAX], kaudit[VK_REDIS_KEY_MAX],
      kidem[VK_REDIS_KEY_MAX];
  vk_store_vehicle(kveh, q->vin);
  vk_audit_stream(kaudit, q->vin);
  idem_key(r, kidem, q->request_id);
  reg_args_t a;
  args_eval(&a, kRegisterVehicleLua);
  args_str(&a, kveh);
  args_str(&a, VK_REDIS_VEHICLES);
  args_str(&a, kaudit);
  if (kidem[0] != '\0') {
    args_str(&a, kidem);
  }
  args_keys_done(&a);
  args_str(&a, r->now_ms);
  args_str(&a, r->actor);
  args_bin(&a, rec, rec_len);
  args_bin(&a, q->public_key.data, q->public_key.len);
  args_str(&a, created);
  args_str(&a, q->vin);
  args_bin(&a, out, resp_len);
  reg_command(r, reg_script_done, &a);
}

// --- GetVehicle --------------------------------------------------------------

static const char *get_vehicle_validate(reg_t *r) {
  const Vkey__V1__GetVehicleRequest *q = (const void *)r->req;
  if (!vk_vin_valid(q->vin)) {
    return "vin: 17 characters of ISO 3779 (digits and capitals, no I, O, "
           "Q)";
  }
  r->vin = q->vin;
  return NULL;
}

static void get_vehicle_read(reg_t *r, const redisReply *reply) {
  bool found;
  if (!keep_entity(r, reply, &found)) {
    return;
  }
  if (!found) {
    reg_fail(r, VK_GRPC_NOT_FOUND, "vehicle not registered");
    return;
  }
  Vkey__V1__GetVehicleResponse resp = VKEY__V1__GET_VEHICLE_RESPONSE__INIT;
  resp.vehicle = vehicle_decode(r, (const char *)r->old_record.data,
                                r->old_record.len, r->old_status, r->old_owner);
  if (resp.vehicle == NULL) {
    vk_call_finish(r->call, VK_GRPC_INTERNAL, "vehicle record corrupt");
    return;
  }
  reg_send(r, &resp.base);
}

static void get_vehicle_run(reg_t *r) {
  char key[VK_REDIS_KEY_MAX];
  vk_store_vehicle(key, r->vin);
  read_entity(r, key, get_vehicle_read);
}

// --- SetVehicleStatus --------------------------------------------------------

static bool entity_status_valid(Vkey__V1__EntityStatus s) {
  return s == VKEY__V1__ENTITY_STATUS__ENTITY_STATUS_ACTIVE ||
         s == VKEY__V1__ENTITY_STATUS__ENTITY_STATUS_DISABLED;
}

static const char *set_vehicle_status_validate(reg_t *r) {
  const Vkey__V1__SetVehicleStatusRequest *q = (const void *)r->req;
  if (!vk_request_id_valid(q->request_id)) {
    return "request_id: at most 64 printable characters, no spaces";
  }
  if (!vk_vin_valid(q->vin)) {
    return "vin: 17 characters of ISO 3779 (digits and capitals, no I, O, "
           "Q)";
  }
  r->vin = q->vin;
  if (!entity_status_valid(q->status)) {
    return "status: ENTITY_STATUS_ACTIVE or ENTITY_STATUS_DISABLED";
  }
  return NULL;
}

// Runs kSetStatusLua with the new record `rec` and response `out`.
static void set_status_eval(reg_t *r, const char *entity_key, const char *name,
                            const char *request_id, const char *new_status,
                            const uint8_t *rec, size_t rec_len,
                            const uint8_t *out, size_t out_len) {
  set_now(r);
  char kaudit[VK_REDIS_KEY_MAX], kidem[VK_REDIS_KEY_MAX];
  vk_audit_stream(kaudit, r->vin);
  idem_key(r, kidem, request_id);
  reg_args_t a;
  args_eval(&a, kSetStatusLua);
  args_str(&a, entity_key);
  args_str(&a, kaudit);
  if (kidem[0] != '\0') {
    args_str(&a, kidem);
  }
  args_keys_done(&a);
  args_str(&a, r->now_ms);
  args_str(&a, r->actor);
  args_str(&a, r->rpc->op);
  args_str(&a, r->vin ? r->vin : "");
  args_bin(&a, r->old_record.data, r->old_record.len);
  args_str(&a, r->old_status);
  args_str(&a, r->old_owner);
  args_bin(&a, rec, rec_len);
  args_str(&a, new_status);
  args_bin(&a, out, out_len);
  args_str(&a, name);
  reg_command(r, reg_script_done, &a);
}

static void set_vehicle_status_read(reg_t *r, const redisReply *reply) {
  const Vkey__V1__SetVehicleStatusRequest *q = (const void *)r->req;
  bool found;
  if (!keep_entity(r, reply, &found)) {
    return;
  }
  if (!found) {
    reg_fail(r, VK_GRPC_NOT_FOUND, "vehicle not registered");
    return;
  }
  r->vin_known = true;
  vehicle_t *v = vehicle_decode(r, (const char *)r->old_record.data,
                                r->old_record.len, r->old_status, r->old_owner);
  if (v == NULL) {
    vk_call_finish(r->call, VK_GRPC_INTERNAL, "vehicle record corrupt");
    return;
  }
  v->status = q->status;
  Vkey__V1__SetVehicleStatusResponse resp =
      VKEY__V1__SET_VEHICLE_STATUS_RESPONSE__INIT;
  resp.vehicle = v;
  size_t rec_len = 0, out_len = 0;
  uint8_t *rec = pack(r, &v->base, &rec_len);
  uint8_t *out = pack(r, &resp.base, &out_len);
  if (rec == NULL || out == NULL) {
    oom(r);
    return;
  }
  char key[VK_REDIS_KEY_MAX];
  vk_store_vehicle(key, q->vin);
  set_status_eval(r, key, "vehicle", q->request_id, status_field(q->status),
                  rec, rec_len, out, out_len);
}

static void set_vehicle_status_run(reg_t *r) {
  char key[VK_REDIS_KEY_MAX];
  vk_store_vehicle(key, r->vin);
  read_entity(r, key, set_vehicle_status_read);
}

// --- SetVehicleOwner ---------------------------------------------------------

static const char *set_owner_validate(reg_t *r) {
  const Vkey__V1__SetVehicleOwnerRequest *q = (const void *)r->req;
  if (!vk_request_id_valid(q->request_id)) {
    return "request_id: at most 64 printable characters, no spaces";
  }
  if (!vk_vin_valid(q->vin)) {
    return "vin: 17 characters of ISO 3779 (digits and capitals, no I, O, "
           "Q)";
  }
  r->vin = q->vin;
  if (!vk_user_id_valid(q->user_id)) {
    return "user_id: 1-64 of [A-Za-z0-9._@-]";
  }
  return NULL;
}

static void set_owner_eval(reg_t *r, const uint8_t *rec, size_t rec_len,
                           const uint8_t *out, size_t out_len) {
  const Vkey__V1__SetVehicleOwnerRequest *q = (const void *)r->req;
  set_now(r);
  char kveh[VK_REDIS_KEY_MAX], kuser[VK_REDIS_KEY_MAX];
  char kkeys[VK_REDIS_KEY_MAX], koutbox[VK_REDIS_KEY_MAX];
  char kaudit[VK_REDIS_KEY_MAX], kidem[VK_REDIS_KEY_MAX];
  char notify[VK_REDIS_KEY_MAX], key_prefix[VK_REDIS_KEY_MAX];
  vk_store_vehicle(kveh, q->vin);
  vk_store_user(kuser, q->user_id);
  vk_store_vehicle_sub(kkeys, q->vin, "keys");
  vk_store_vehicle_sub(koutbox, q->vin, "outbox");
  vk_audit_stream(kaudit, q->vin);
  idem_key(r, kidem, q->request_id);
  vk_store_vehicle_sub(notify, q->vin, "notify");
  vk_store_vehicle_sub(key_prefix, q->vin, "key:");
  reg_args_t a;
  args_eval(&a, kSetOwnerLua);
  args_str(&a, kveh);
  args_str(&a, kuser);
  args_str(&a, kkeys);
  args_str(&a, koutbox);
  args_str(&a, kaudit);
  if (kidem[0] != '\0') {
    args_str(&a, kidem);
  }
  args_keys_done(&a);
  args_str(&a, r->now_ms);
  args_str(&a, r->actor);
  args_str(&a, q->vin);
  args_str(&a, q->user_id);
  args_bin(&a, r->old_record.data, r->old_record.len);
  args_str(&a, r->old_status);
  args_str(&a, r->old_owner);
  args_bin(&a, rec, rec_len);
  args_bin(&a, out, out_len);
  args_str(&a, r->now_s);
  args_str(&a, notify);
  args_str(&a, key_prefix);
  reg_command(r, reg_script_done, &a);
}

static void set_owner_read(reg_t *r, const redisReply *reply) {
  const Vkey__V1__SetVehicleOwnerRequest *q = (const void *)r->req;
  bool found;
  if (!keep_entity(r, reply, &found)) {
    return;
  }
  if (!found) {
    reg_fail(r, VK_GRPC_NOT_FOUND, "vehicle not registered");
    return;
  }
  r->vin_known = true;
  vehicle_t *v = vehicle_decode(r, (const char *)r->old_record.data,
                                r->old_record.len, r->old_status, r->old_owner);
  if (v == NULL) {
    vk_call_finish(r->call, VK_GRPC_INTERNAL, "vehicle record corrupt");
    return;
  }
  v->owner_user_id = q->user_id;
  // keys_revoked is left 0 (not encoded): the script appends it.
  Vkey__V1__SetVehicleOwnerResponse resp =
      VKEY__V1__SET_VEHICLE_OWNER_RESPONSE__INIT;
  resp.vehicle = v;
  size_t rec_len = 0, out_len = 0;
  uint8_t *rec = pack(r, &v->base, &rec_len);
  uint8_t *out = pack(r, &resp.base, &out_len);
  if (rec == NULL || out == NULL) {
    oom(r);
    return;
  }
  set_owner_eval(r, rec, rec_len, out, out_len);
}

static void set_owner_run(reg_t *r) {
  char key[VK_REDIS_KEY_MAX];
  vk_store_vehicle(key, r->vin);
  read_entity(r, key, set_owner_read);
}

// --- RegisterUser ------------------------------------------------------------

static const char *register_user_validate(reg_t *r) {
  const Vkey__V1__RegisterUserRequest *q = (const void *)r->req;
  if (!vk_request_id_valid(q->request_id)) {
    return "request_id: at most 64 printable characters, no spaces";
  }
  if (!vk_user_id_valid(q->user_id)) {
    return "user_id: 1-64 of [A-Za-z0-9._@-]";
  }
  if (!text_ok(q->display_name, kDisplayNameMax, false)) {
    return "display_name: at most 128 bytes of UTF-8 text";
  }
  return NULL;
}

static void register_user_run(reg_t *r) {
  const Vkey__V1__RegisterUserRequest *q = (const void *)r->req;
  user_t u = VKEY__V1__USER__INIT;
  u.user_id = q->user_id;
  u.display_name = q->display_name;
  u.status = VKEY__V1__ENTITY_STATUS__ENTITY_STATUS_ACTIVE;
  u.created_at = vk_wall_ms() / 1000;
  Vkey__V1__RegisterUserResponse resp = VKEY__V1__REGISTER_USER_RESPONSE__INIT;
  resp.user = &u;
  size_t rec_len = 0, out_len = 0;
  uint8_t *rec = pack(r, &u.base, &rec_len);
  uint8_t *out = pack(r, &resp.base, &out_len);
  if (rec == NULL || out == NULL) {
    oom(r);
    return;
  }
  set_now(r);
  char kuser[VK_REDIS_KEY_MAX], kaudit[VK_REDIS_KEY_MAX];
  char kidem[VK_REDIS_KEY_MAX];
  vk_store_user(kuser, q->user_id);
  vk_audit_stream(kaudit, NULL);
  idem_key(r, kidem, q->request_id);
  reg_args_t a;
  args_eval(&a, kRegisterUserLua);
  args_str(&a, kuser);
  args_str(&a, VK_REDIS_USERS);
  args_str(&a, kaudit);
  if (kidem[0] != '\0') {
    args_str(&a, kidem);
  }
  args_keys_done(&a);
  args_str(&a, r->now_ms);
  args_str(&a, r->actor);
  args_bin(&a, rec, rec_len);
  args_str(&a, q->user_id);
  args_bin(&a, out, out_len);
  reg_command(r, reg_script_done, &a);
}

// --- GetUser -----------------------------------------------------------------

static const char *get_user_validate(reg_t *r) {
  const Vkey__V1__GetUserRequest *q = (const void *)r->req;
  return vk_user_id_valid(q->user_id) ? NULL
                                      : "user_id: 1-64 of [A-Za-z0-9._@-]";
}

static void get_user_read(reg_t *r, const redisReply *reply) {
  bool found;
  if (!keep_entity(r, reply, &found)) {
    return;
  }
  if (!found) {
    reg_fail(r, VK_GRPC_NOT_FOUND, "user not registered");
    return;
  }
  Vkey__V1__GetUserResponse resp = VKEY__V1__GET_USER_RESPONSE__INIT;
  resp.user = user_decode(r, (const char *)r->old_record.data,
                          r->old_record.len, r->old_status);
  if (resp.user == NULL) {
    vk_call_finish(r->call, VK_GRPC_INTERNAL, "user record corrupt");
    return;
  }
  reg_send(r, &resp.base);
}

static void get_user_run(reg_t *r) {
  const Vkey__V1__GetUserRequest *q = (const void *)r->req;
  char key[VK_REDIS_KEY_MAX];
  vk_store_user(key, q->user_id);
  read_entity(r, key, get_user_read);
}

// --- SetUserStatus -----------------------------------------------------------

static const char *set_user_status_validate(reg_t *r) {
  const Vkey__V1__SetUserStatusRequest *q = (const void *)r->req;
  if (!vk_request_id_valid(q->request_id)) {
    return "request_id: at most 64 printable characters, no spaces";
  }
  if (!vk_user_id_valid(q->user_id)) {
    return "user_id: 1-64 of [A-Za-z0-9._@-]";
  }
  if (!entity_status_valid(q->status)) {
    return "status: ENTITY_STATUS_ACTIVE or ENTITY_STATUS_DISABLED";
  }
  return NULL;
}

static void set_user_status_read(reg_t *r, const redisReply *reply) {
  const Vkey__V1__SetUserStatusRequest *q = (const void *)r->req;
  bool found;
  if (!keep_entity(r, reply, &found)) {
    return;
  }
  if (!found) {
    reg_fail(r, VK_GRPC_NOT_FOUND, "user not registered");
    return;
  }
  user_t *u = user_decode(r, (const char *)r->old_record.data,
                          r->old_record.len, r->old_status);
  if (u == NULL) {
    vk_call_finish(r->call, VK_GRPC_INTERNAL, "user record corrupt");
    return;
  }
  u->status = q->status;
  Vkey__V1__SetUserStatusResponse resp =
      VKEY__V1__SET_USER_STATUS_RESPONSE__INIT;
  resp.user = u;
  size_t rec_len = 0, out_len = 0;
  uint8_t *rec = pack(r, &u->base, &rec_len);
  uint8_t *out = pack(r, &resp.base, &out_len);
  if (rec == NULL || out == NULL) {
    oom(r);
    return;
  }
  char key[VK_REDIS_KEY_MAX], name[VK_USER_ID_MAX + 8];
  vk_store_user(key, q->user_id);
  snprintf(name, sizeof(name), "user %s", q->user_id);
  set_status_eval(r, key, name, q->request_id, status_field(q->status), rec,
                  rec_len, out, out_len);
}

static void set_user_status_run(reg_t *r) {
  const Vkey__V1__SetUserStatusRequest *q = (const void *)r->req;
  char key[VK_REDIS_KEY_MAX];
  vk_store_user(key, q->user_id);
  read_entity(r, key, set_user_status_read);
}

// --- ListVehicles / ListUsers ------------------------------------------------

static bool vin_ok(const char *s) {
  return vk_vin_valid(s);
}

static bool user_ok(const char *s) {
  return vk_user_id_valid(s);
}

static const char *list_vehicles_validate(reg_t *r) {
  const Vkey__V1__ListVehiclesRequest *q = (const void *)r->req;
  return page_parse(r, q->page, vin_ok);
}

static const char *list_users_validate(reg_t *r) {
  const Vkey__V1__ListUsersRequest *q = (const void *)r->req;
  return page_parse(r, q->page, user_ok);
}

// Runs kListLua over `index`, hashes named prefix .. id .. suffix.
static void list_eval(reg_t *r, const char *index, const char *prefix,
                      const char *suffix, reg_step_fn next) {
  char bound[VK_USER_ID_MAX + 2];
  if (r->after != NULL) {
    snprintf(bound, sizeof(bound), "(%s", r->after);
  } else {
    snprintf(bound, sizeof(bound), "-");
  }
  char n[12];
  snprintf(n, sizeof(n), "%" PRIu32, r->page_size);
  reg_args_t a;
  args_eval(&a, kListLua);
  args_str(&a, index);
  args_keys_done(&a);
  args_str(&a, bound);
  args_str(&a, n);
  args_str(&a, prefix);
  args_str(&a, suffix);
  reg_command(r, next, &a);
}

// The page of a kListLua reply: its rows (4 strings each) and whether the
// index has more after them. Returns false (call finished) if malformed.
typedef struct {
  const redisReply *const *rows;
  size_t n_rows;
  bool more;
} list_page_t;

static bool list_page(reg_t *r, const redisReply *reply, list_page_t *out) {
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
      (reply->elements - 1) % 4 != 0 ||
      reply->element[0]->type != REDIS_REPLY_INTEGER) {
    vk_call_finish(r->call, VK_GRPC_INTERNAL, "unexpected key store reply");
    return false;
  }
  for (size_t i = 1; i < reply->elements; i++) {
    if (reply->element[i]->type != REDIS_REPLY_STRING) {
      vk_call_finish(r->call, VK_GRPC_INTERNAL, "unexpected key store reply");
      return false;
    }
  }
  out->rows = (const redisReply *const *)reply->element + 1;
  out->n_rows = (reply->elements - 1) / 4;
  out->more = reply->element[0]->integer != 0;
  return true;
}

// The token after row `i` of the page, or "" when `i` was the last row of
// the index.
static char *list_token(reg_t *r, const list_page_t *p, size_t i) {
  if (i + 1 == p->n_rows && !p->more) {
    return (char *)protobuf_c_empty_string;
  }
  return token_encode(r, p->rows[4 * i]->str);
}

static void list_vehicles_read(reg_t *r, const redisReply *reply) {
  list_page_t p;
  if (!list_page(r, reply, &p)) {
    return;
  }
  Vkey__V1__ListVehiclesResponse resp = VKEY__V1__LIST_VEHICLES_RESPONSE__INIT;
  resp.vehicles = vk_call_alloc(r->call, (p.n_rows + 1) * sizeof(vehicle_t *));
  if (resp.vehicles == NULL) {
    oom(r);
    return;
  }
  // `last` is the last row looked at: the next page starts after it.
  size_t bytes = 0, last = p.n_rows;
  for (size_t i = 0; i < p.n_rows; i++) {
    const redisReply *const *row = p.rows + 4 * i;
    last = i;
    if (row[1]->len == 0) {
      continue;  // indexed but no record: skip it, the cursor moves on
    }
    vehicle_t *v =
        vehicle_decode(r, row[1]->str, row[1]->len, row[2]->str, row[3]->str);
    if (v == NULL) {
      vk_call_finish(r->call, VK_GRPC_INTERNAL, "vehicle record corrupt");
      return;
    }
    resp.vehicles[resp.n_vehicles++] = v;
    bytes += row[1]->len;
    if (bytes > kPageBytesMax) {
      break;
    }
  }
  if (last < p.n_rows) {
    resp.next_page_token = list_token(r, &p, last);
  }
  if (resp.next_page_token == NULL) {
    oom(r);
    return;
  }
  reg_send(r, &resp.base);
}

static void list_vehicles_run(reg_t *r) {
  list_eval(r, VK_REDIS_VEHICLES, "vk:veh:{", "}", list_vehicles_read);
}

static void list_users_read(reg_t *r, const redisReply *reply) {
  list_page_t p;
  if (!list_page(r, reply, &p)) {
    return;
  }
  Vkey__V1__ListUsersResponse resp = VKEY__V1__LIST_USERS_RESPONSE__INIT;
  resp.users = vk_call_alloc(r->call, (p.n_rows + 1) * sizeof(user_t *));
  if (resp.users == NULL) {
    oom(r);
    return;
  }
  for (size_t i = 0; i < p.n_rows; i++) {
    const redisReply *const *row = p.rows + 4 * i;
    // User records are small (< 300 bytes): a full page fits any message.
    if (row[1]->len == 0) {
      continue;
    }
    user_t *u = user_decode(r, row[1]->str, row[1]->len, row[2]->str);
    if (u == NULL) {
      vk_call_finish(r->call, VK_GRPC_INTERNAL, "user record corrupt");
      return;
    }
    resp.users[resp.n_users++] = u;
  }
  if (p.n_rows > 0) {
    resp.next_page_token = list_token(r, &p, p.n_rows - 1);
  }
  if (resp.next_page_token == NULL) {
    oom(r);
    return;
  }
  reg_send(r, &resp.base);
}

static void list_users_run(reg_t *r) {
  list_eval(r, VK_REDIS_USERS, "vk:user:", "", list_users_read);
}

// --- ListAudit ---------------------------------------------------------------

static const char *list_audit_validate(reg_t *r) {
  const Vkey__V1__ListAuditRequest *q = (const void *)r->req;
  if (q->vin[0] != '\0') {
    if (!vk_vin_valid(q->vin)) {
      return "vin: empty, or 17 characters of ISO 3779";
    }
    r->vin = q->vin;
  }
  // Audit page tokens are stream entry ids, which are not VINs: parse here.
  r->page_size = kPageDefault;
  r->after = NULL;
  if (q->page != NULL) {
    if (q->page->page_size != 0) {
      r->page_size =
          q->page->page_size < kPageMax ? q->page->page_size : kPageMax;
    }
    if (q->page->page_token[0] != '\0') {
      if (!vk_audit_id_valid(q->page->page_token)) {
        return "page_token is not one this server handed out";
      }
      r->after = q->page->page_token;
    }
  }
  return NULL;
}

static void list_audit_read(reg_t *r, const redisReply *reply) {
  Vkey__V1__ListAuditResponse resp = VKEY__V1__LIST_AUDIT_RESPONSE__INIT;
  int rv =
      vk_audit_entries_from_reply(vk_call_allocator(r->call), reply,
                                  r->page_size, &resp.entries, &resp.n_entries);
  if (rv != VK_OK) {
    vk_call_finish(
        r->call,
        rv == VK_ENOMEM ? VK_GRPC_RESOURCE_EXHAUSTED : VK_GRPC_INTERNAL,
        "cannot read the audit stream");
    return;
  }
  // We asked for one entry more than the page: its presence says whether
  // there is a next page, which starts after this page's last entry.
  if (reply->elements > r->page_size && resp.n_entries > 0) {
    resp.next_page_token = resp.entries[resp.n_entries - 1]->id;
  }
  reg_send(r, &resp.base);
}

static void list_audit_run(reg_t *r) {
  char stream[VK_REDIS_KEY_MAX], start[48], count[12];
  vk_audit_stream(stream, r->vin);
  // Newest first; "(" makes the bound exclusive (Redis >= 6.2).
  if (r->after != NULL) {
    snprintf(start, sizeof(start), "(%s", r->after);
  } else {
    snprintf(start, sizeof(start), "+");
  }
  snprintf(count, sizeof(count), "%" PRIu32, r->page_size + 1);
  reg_args_t a = {0};
  args_str(&a, "XREVRANGE");
  args_str(&a, stream);
  args_str(&a, start);
  args_str(&a, "-");
  args_str(&a, "COUNT");
  args_str(&a, count);
  reg_command(r, list_audit_read, &a);
}

// --- the service -------------------------------------------------------------

static void reg_authed(vk_call_t *call, const vk_identity_t *who, void *arg) {
  (void)call;
  reg_t *r = arg;
  vk_audit_actor(r->actor, who);
  const char *err = r->rpc->validate(r);
  if (err != NULL) {
    // A bad VIN is not a registered one: its refusal goes to vk:audit.
    r->vin_known = false;
    reg_fail(r, VK_GRPC_INVALID_ARGUMENT, err);
    return;
  }
  r->rpc->run(r);
}

static void reg_start(vk_call_t *call, const ProtobufCMessage *req,
                      const reg_rpc_t *rpc) {
  reg_t *r = vk_call_alloc(call, sizeof(*r));
  if (r == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  r->app = vk_call_service_ctx(call);
  r->call = call;
  r->req = req;
  r->rpc = rpc;
  vk_call_set_data(call, r);
  vk_auth_bearer(r->app, call, VK_ROLE_OPERATOR, false, reg_authed, r);
}

#define REG_RPC(fn, op, mut, out_desc, val, runner)                      \
  static const reg_rpc_t fn##_rpc = {op, mut, &out_desc, val, runner};   \
  static void fn##_start(vk_call_t *call, const ProtobufCMessage *req) { \
    reg_start(call, req, &fn##_rpc);                                     \
  }

REG_RPC(register_vehicle, "RegisterVehicle", true,
        vkey__v1__register_vehicle_response__descriptor,
        register_vehicle_validate, register_vehicle_run)
REG_RPC(get_vehicle, "GetVehicle", false,
        vkey__v1__get_vehicle_response__descriptor, get_vehicle_validate,
        get_vehicle_run)
REG_RPC(list_vehicles, "ListVehicles", false,
        vkey__v1__list_vehicles_response__descriptor, list_vehicles_validate,
        list_vehicles_run)
REG_RPC(set_vehicle_status, "SetVehicleStatus", true,
        vkey__v1__set_vehicle_status_response__descriptor,
        set_vehicle_status_validate, set_vehicle_status_run)
REG_RPC(register_user, "RegisterUser", true,
        vkey__v1__register_user_response__descriptor, register_user_validate,
        register_user_run)
REG_RPC(get_user, "GetUser", false, vkey__v1__get_user_response__descriptor,
        get_user_validate, get_user_run)
REG_RPC(list_users, "ListUsers", false,
        vkey__v1__list_users_response__descriptor, list_users_validate,
        list_users_run)
REG_RPC(set_user_status, "SetUserStatus", true,
        vkey__v1__set_user_status_response__descriptor,
        set_user_status_validate, set_user_status_run)
REG_RPC(set_owner, "SetVehicleOwner", true,
        vkey__v1__set_vehicle_owner_response__descriptor, set_owner_validate,
        set_owner_run)
REG_RPC(list_audit, "ListAudit", false,
        vkey__v1__list_audit_response__descriptor, list_audit_validate,
        list_audit_run)

#define REG_METHOD(fn, mname, in_desc, out_desc)            \
  {                                                         \
    .name = mname, .kind = VK_RPC_UNARY, .input = &in_desc, \
    .output = &out_desc, .on_start = fn##_start,            \
  }

static const vk_method_t registry_methods[] = {
    REG_METHOD(register_vehicle, "RegisterVehicle",
               vkey__v1__register_vehicle_request__descriptor,
               vkey__v1__register_vehicle_response__descriptor),
    REG_METHOD(get_vehicle, "GetVehicle",
               vkey__v1__get_vehicle_request__descriptor,
               vkey__v1__get_vehicle_response__descriptor),
    REG_METHOD(list_vehicles, "ListVehicles",
               vkey__v1__list_vehicles_request__descriptor,
               vkey__v1__list_vehicles_response__descriptor),
    REG_METHOD(set_vehicle_status, "SetVehicleStatus",
               vkey__v1__set_vehicle_status_request__descriptor,
               vkey__v1__set_vehicle_status_response__descriptor),
    REG_METHOD(register_user, "RegisterUser",
               vkey__v1__register_user_request__descriptor,
               vkey__v1__register_user_response__descriptor),
    REG_METHOD(get_user, "GetUser", vkey__v1__get_user_request__descriptor,
               vkey__v1__get_user_response__descriptor),
    REG_METHOD(list_users, "ListUsers",
               vkey__v1__list_users_request__descriptor,
               vkey__v1__list_users_response__descriptor),
    REG_METHOD(set_user_status, "SetUserStatus",
               vkey__v1__set_user_status_request__descriptor,
               vkey__v1__set_user_status_response__descriptor),
    REG_METHOD(set_owner, "SetVehicleOwner",
               vkey__v1__set_vehicle_owner_request__descriptor,
               vkey__v1__set_vehicle_owner_response__descriptor),
    REG_METHOD(list_audit, "ListAudit",
               vkey__v1__list_audit_request__descriptor,
               vkey__v1__list_audit_response__descriptor),
};

const vk_service_t *vk_registry_service(vk_app_t *app) {
  // One vkeyd has one app, so one service object suffices; it is filled on
  // the loop thread before the server starts and never changes after.
  app->registry_service =
      (vk_service_t){.name = "vkey.v1.RegistryService",
                     .methods = registry_methods,
                     .n_methods = VK_ARRAY_LEN(registry_methods),
                     .ctx = app};
  return &app->registry_service;
}
