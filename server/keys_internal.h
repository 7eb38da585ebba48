// keys_internal.h: the machinery that KeyService (keys.c) shares with
// AuthorizationService (authorization.c), which issues and revokes the same
// keys: per-call state, Lua scripts sent as EVALSHA with an EVAL fallback,
// refusals that reach the audit trail, reply parsing, the vehicle's key
// policy, and the issuing of a new key (claims, signature on the worker
// pool, the Lua that stores and delivers it).
//
// Not a public API: only the services that write keys include it. Every
// function is for the loop thread.
#ifndef VK_KEYS_INTERNAL_H
#define VK_KEYS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <protobuf-c/protobuf-c.h>

#include "app.h"
#include "audit.h"
#include "crypto.h"
#include "grpc.h"
#include "identity.h"
#include "keytoken.h"
#include "store.h"
#include "vkey/v1/common.pb-c.h"
#include "vkey/v1/vehicle.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

// Compare-and-set rounds before a mutation answers ABORTED.
#define VK_KEYS_MAX_ATTEMPTS 3
// Arguments of one EVAL (the command name, script and key count included).
#define VK_KEYS_MAX_ARGS 96
// A stored KeyPolicy is small; anything longer is refused as corrupt.
#define VK_KEYS_MAX_POLICY_LEN 16384

// Lua helpers that the key scripts embed (string-literal concatenation):
//   vk_audit(...)        audit.h's VK_AUDIT_LUA;
//   count_type(veh, index, ktype)
//                        the vehicle's live (active or suspended) keys of
//                        one type, for the policy's max_keys: the keys one
//                        grant issued (one per function) count once;
//   idem_get(key)        the stored response of a request id, or false
//                        (also when `key` is nil: no request id);
//   issue_key(outbox, seq, key, veh_index, user_index, id, ver, now_ms,
//             now_s, sk, record, ktype, holder, grant)
//                        appends the ISSUED event with entry id `seq`, then
//                        writes the key hash and both indexes. The XADD goes
//                        first: it is the one write that can fail (an entry
//                        id not above the stream's last), and then nothing
//                        was written. `grant` '' for keys not from a grant.
#define VK_KEYS_LUA_PRELUDE                                                  \
  VK_AUDIT_LUA                                                               \
  "local function count_type(veh, index, ktype)\n"                           \
  "  local n, seen = 0, {}\n"                                                \
  "  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do\n"           \
  "    local h = redis.call('HMGET', veh .. ':key:' .. id, 'status',\n"      \
  "      'type', 'grant')\n"                                                 \
  "    if h[2] == ktype and (h[1] == '1' or h[1] == '2') then\n"             \
  "      if not h[3] or h[3] == '' then\n"                                   \
  "        n = n + 1\n"                                                      \
  "      elseif not seen[h[3]] then\n"                                       \
  "        seen[h[3]] = true\n"                                              \
  "        n = n + 1\n"                                                      \
  "      end\n"                                                              \
  "    end\n"                                                                \
  "  end\n"                                                                  \
  "  return n\n"                                                             \
  "end\n"                                                                    \
  "local function idem_get(key)\n"                                           \
  "  if key then return redis.call('GET', key) end\n"                        \
  "  return false\n"                                                         \
  "end\n"                                                                    \
  "local function issue_key(outbox, seq, key, veh_index, user_index, id,\n"  \
  "  ver, now_ms, now_s, sk, record, ktype, holder, grant)\n"                \
  "  redis.call('XADD', outbox, seq .. '-1', 't', '1', 'k', id, 'v', ver,\n" \
  "    's', '1', 'at', now_ms, 'sk', sk)\n"                                  \
  "  redis.call('HSET', key, 'record', record, 'status', '1',\n"             \
  "    'updated_at', now_s, 'rev', '1', 'ver', ver, 'type', ktype,\n"        \
  "    'holder', holder, 'uses', '0', 'last_used_at', '0')\n"                \
  "  if grant ~= '' then redis.call('HSET', key, 'grant', grant) end\n"      \
  "  redis.call('ZADD', veh_index, now_ms, id)\n"                            \
  "  redis.call('ZADD', user_index, now_ms, id)\n"                           \
  "end\n"

// --- scripts -----------------------------------------------------------------

// A Lua script and its hex SHA-1, for EVALSHA.
typedef struct vk_keys_script_s {
  const char *src;
  char sha[41];
} vk_keys_script_t;

// vk_keys_script_init computes `s->sha` from `s->src`. Call once, before
// the server starts.
void vk_keys_script_init(vk_keys_script_t *s);

// --- per-call state ----------------------------------------------------------

typedef struct vk_keys_call_s vk_keys_call_t;

// Runs on a live call with Redis's answer to vk_keys_eval: `status` and
// `reply` as vk_redis_cb's (reply NULL unless status is 0).
typedef void (*vk_keys_reply_fn)(vk_keys_call_t *kc, int status,
                                 const redisReply *reply);

// vk_keys_call_t is the part of a method's state (in the call's arena,
// usually its first member) that the helpers below use: who calls, what
// the call is about (for the audit trail), and the one EVAL in flight.
struct vk_keys_call_s {
  vk_app_t *app;
  vk_call_t *call;
  const char *op;  // the method, for the audit trail
  vk_identity_t who;
  bool mutating;  // every refusal of a mutating method is audited
  char actor[VK_AUDIT_ACTOR_MAX];    // "user:<id>" or "operator:<name>"
  char vin[VK_VIN_LEN + 1];          // "" until a valid VIN is known
  bool vin_registered;               // a read found the vehicle
  char key_id[VK_KEY_ID_LEN + 1];    // "" unless the call is about one key
  char grant_id[VK_KEY_ID_LEN + 1];  // "" unless it is about a grant
  int64_t now_ms;                    // the time of the current attempt
  // The EVAL in flight: kept so that a NOSCRIPT answer can resend it.
  const vk_keys_script_t *script;
  vk_keys_reply_fn on_reply;
  bool eval_full;
  bool args_oom;
  int argc;
  int nkeys;
  char nkeys_str[8];
  const char *argv[VK_KEYS_MAX_ARGS];
  size_t argvlen[VK_KEYS_MAX_ARGS];
};

// vk_keys_call_init starts `kc` for `call` of method `op` (a static
// string); the service's ctx must be the vk_app_t.
void vk_keys_call_init(vk_keys_call_t *kc, vk_call_t *call, const char *op,
                       bool mutating);

// vk_keys_set_identity records the authenticated caller (copied).
void vk_keys_set_identity(vk_keys_call_t *kc, const vk_identity_t *who);

// vk_keys_set_key records that the call is about the valid key id (or grant
// id, which has the same shape) `key_id`, and so about its vehicle.
void vk_keys_set_key(vk_keys_call_t *kc, const char *key_id);

// vk_keys_fail ends the call with a non-OK status and message. Refusals of
// mutating methods and every PERMISSION_DENIED are audited (to the
// vehicle's stream once a read found the vehicle registered, else to
// vk:audit; the detail names kc->grant_id when set); UNAVAILABLE and
// INTERNAL are not, nor calls without a caller.
void vk_keys_fail(vk_keys_call_t *kc, vk_grpc_status_t status, const char *msg);

// vk_keys_failf is vk_keys_fail with a printf-style message (256 bytes).
void vk_keys_failf(vk_keys_call_t *kc, vk_grpc_status_t status, const char *fmt,
                   ...) __attribute__((format(printf, 3, 4)));

// vk_keys_respond sends the one response of a unary call and ends it OK.
void vk_keys_respond(vk_keys_call_t *kc, const ProtobufCMessage *msg);

// vk_keys_unavailable answers a Redis failure with UNAVAILABLE; an error
// reply (LOADING, READONLY, a script error) is logged.
void vk_keys_unavailable(vk_keys_call_t *kc, int status,
                         const redisReply *reply);

// vk_keys_dup copies `len` bytes into the call's arena and NUL-terminates
// them. NULL when out of memory.
char *vk_keys_dup(vk_keys_call_t *kc, const void *p, size_t len);

// --- EVAL --------------------------------------------------------------------
// Collect arguments between vk_keys_args_begin and vk_keys_eval: every KEYS
// entry first (vk_keys_arg_key), then ARGV. Arguments must stay valid until
// the reply (a NOSCRIPT answer resends them): strings in the call's arena or
// static storage; vk_keys_arg_key and vk_keys_arg_i64 copy. A failed
// allocation is remembered and answered when the EVAL is sent.

void vk_keys_args_begin(vk_keys_call_t *kc);
void vk_keys_arg_bin(vk_keys_call_t *kc, const void *p, size_t len);
void vk_keys_arg_str(vk_keys_call_t *kc, const char *s);
void vk_keys_arg_key(vk_keys_call_t *kc, const char *key);
void vk_keys_arg_i64(vk_keys_call_t *kc, int64_t v);

// vk_keys_eval runs `script` (EVALSHA, then EVAL once on NOSCRIPT) with the
// collected arguments; `on_reply` runs on a live call. It holds a call
// reference meanwhile. A failure to send ends the call (RESOURCE_EXHAUSTED
// when Redis's queue is full, else UNAVAILABLE).
void vk_keys_eval(vk_keys_call_t *kc, vk_keys_script_t *script,
                  vk_keys_reply_fn on_reply);

// --- replies -----------------------------------------------------------------

// vk_keys_reply_str returns element `i` of an array reply as a string (and
// its length in *out_len, which may be NULL), or NULL when it is missing or
// not a string.
const char *vk_keys_reply_str(const redisReply *reply, size_t i,
                              size_t *out_len);

// vk_keys_reply_tag tells whether an array reply starts with string `tag`.
bool vk_keys_reply_tag(const redisReply *reply, const char *tag);

// vk_keys_reply_i64 parses element `i` as a decimal integer (an integer
// reply or a string); an empty string gives `dflt`. False when missing or
// not a number.
bool vk_keys_reply_i64(const redisReply *reply, size_t i, int64_t dflt,
                       int64_t *out);

// vk_keys_respond_stored answers a retried request with the response its
// first attempt stored: element 1 of `reply`, a message of type `desc`.
// INTERNAL when it does not parse.
void vk_keys_respond_stored(vk_keys_call_t *kc,
                            const ProtobufCMessageDescriptor *desc,
                            const redisReply *reply);

// vk_keys_idem_key writes the name of the idempotency record of
// `request_id` for the caller on kc->vin into `out` (VK_REDIS_KEY_MAX
// bytes). False (nothing written) for an empty request id.
bool vk_keys_idem_key(const vk_keys_call_t *kc, const char *request_id,
                      char *out);

// vk_keys_page_token_parse splits a list page token "<score>:<id>" (the
// creation ms and id of the last item returned; ids have the key-id shape)
// into its parts; "" starts from the beginning (score ""). False when
// malformed.
bool vk_keys_page_token_parse(const char *tok, char score[24],
                              char key_id[VK_KEY_ID_LEN + 1]);

// vk_keys_pack serializes `msg` into the call's arena. False when out of
// memory.
bool vk_keys_pack(vk_keys_call_t *kc, const ProtobufCMessage *msg,
                  ProtobufCBinaryData *out);

// --- the vehicle's key policy ------------------------------------------------

// vk_keys_policy_parse decodes a stored KeyPolicy into the call's arena:
// `len` 0 means no policy (*out NULL, true). False when it does not parse.
bool vk_keys_policy_parse(vk_keys_call_t *kc, const char *raw, size_t len,
                          Vkey__V1__KeyPolicy **out);

// vk_keys_policy_max_keys returns the policy's cap on live keys of `type`
// (0: none; the strictest entry when several name the type). `p` may be
// NULL.
uint32_t vk_keys_policy_max_keys(const Vkey__V1__KeyPolicy *p, int type);

// vk_keys_policy_grantable returns the functions the policy lets be
// granted to non-owner keys: every function when `p` is NULL or lists none.
vk_function_mask_t vk_keys_policy_grantable(const Vkey__V1__KeyPolicy *p);

// --- issuing a key -----------------------------------------------------------

// What a new key is made of.
typedef struct vk_keys_issue_params_s {
  const char *vin;
  const char *holder;  // the holder's user id
  Vkey__V1__KeyAlgorithm holder_key_algorithm;
  ProtobufCBinaryData holder_public_key;
  Vkey__V1__KeyType key_type;
  vk_function_mask_t functions;
  const Vkey__V1__Validity *validity;  // NULL or all zero: open
  uint32_t max_uses;                   // as vk_keytoken_check_max_uses set
  const char *grant_id;                // NULL or "" unless from a grant
  const char *issued_by;               // the user whose request made it
  int64_t now_ms;
} vk_keys_issue_params_t;

// One new key on its way to Redis; lives in the call's arena. The strings
// and bytes of the params must live as long.
typedef struct vk_keys_issue_s {
  char key_id[VK_KEY_ID_LEN + 1];
  const char *issued_by;
  Vkey__V1__KeyClaims claims;
  Vkey__V1__Validity validity;
  Vkey__V1__VehicleFunction fn_list[VK_KEYTOKEN_FUNCTION_MAX];
  ProtobufCBinaryData claims_bytes;  // what is signed
  uint8_t sig[64];
  Vkey__V1__SignedKey sk;
  Vkey__V1__KeyRecord rec;
  ProtobufCBinaryData rec_bytes;  // serialized for the write script
  ProtobufCBinaryData sk_bytes;
} vk_keys_issue_t;

// vk_keys_issue_init gives `k` a fresh key id and the claims of `p`:
// version 1, issued now, signed by the app's current signing key.
void vk_keys_issue_init(vk_keys_call_t *kc, vk_keys_issue_t *k,
                        const vk_keys_issue_params_t *p);

// vk_keys_sign_prepare serializes `claims` into *out_bytes and sets `op` to
// sign them with the app's signing key. False (the call failed with
// RESOURCE_EXHAUSTED) when out of memory.
bool vk_keys_sign_prepare(vk_keys_call_t *kc, vk_crypto_op_t *op,
                          const Vkey__V1__KeyClaims *claims,
                          ProtobufCBinaryData *out_bytes);

// vk_keys_sign_submit runs the first `n_ops` prepared ops of `job` on the
// worker pool as one job; `done` runs on the loop thread with `arg`, and
// the call reference it holds must be dropped there. False (the call
// failed) when the pool is full.
bool vk_keys_sign_submit(vk_keys_call_t *kc, vk_crypto_job_t *job, size_t n_ops,
                         void (*done)(vk_crypto_job_t *, int, void *),
                         void *arg);

// vk_keys_sign_result checks a finished signing job on a live call: every
// op signed. Fails the call and returns false otherwise.
bool vk_keys_sign_result(vk_keys_call_t *kc, const vk_crypto_job_t *job,
                         int status);

// vk_keys_issue_finish takes the signature from `op` and builds the key's
// SignedKey and KeyRecord (active, created now) and their serialized forms.
// False (the call failed) when out of memory.
bool vk_keys_issue_finish(vk_keys_call_t *kc, vk_keys_issue_t *k,
                          const vk_crypto_op_t *op);

#ifdef __cplusplus
}
#endif

#endif  // VK_KEYS_INTERNAL_H
