// authorization.c: vkey.v1.AuthorizationService, authorizing another person
// with function authorization codes (seed 001; see authorization.h).
//
// The methods have keys.c's shape and share its machinery (keys_internal.h):
//
//   authenticate -> validate -> one read-only Lua script -> decide in C
//     -> sign on the worker pool -> one Lua script that re-checks what the
//        decision read (compare-and-set, rerun from the read a few times
//        when it lost) and writes everything that belongs together.
//
// Redeem first verifies the code set's signature on the worker pool, so a
// forged or altered code set costs a verification and reaches no grant.
// Its write script flips the grant from outstanding to redeemed in the
// same step that issues the keys: two concurrent redeems of one code set,
// on one instance or two, are serialized by Redis and the second finds it
// redeemed.
//
// A grant's keys are ordinary keys (one per function, KeyClaims.grant_id
// set): KeyService manages them one by one, VerifyService verifies them,
// the vehicle channel delivers them. The grant hash keeps what the scripts
// test as plain fields (docs/ARCHITECTURE.md): status, depth, parents,
// expires_at, and `keys` = "<key id>=<function>,...".
#include "authorization.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>
#include <openssl/mem.h>

#include "keys_internal.h"
#include "log.h"
#include "store.h"
#include "verify_cache.h"
#include "wire.h"
#include "vkey/v1/authorization.pb-c.h"

enum {
  kCodeSetMax = 1024,             // a serialized CodeSet (ours are < 300)
  kSignedMax = kCodeSetMax + 96,  // a serialized SignedCodeSet
  kTextMax = 8 + (kSignedMax + 2) / 3 * 4,  // its printable form
  kDefaultTtlS = 24 * 3600,                 // a code set's life by default
  kMaxTtlS = 30 * 24 * 3600,                // and at most
  kPageDefault = 50,                        // ListGrants page size
  kPageMax = 200,
  kMaxSourceKeys = 64,  // a re-sharer's shared keys weighed at most
  kViewFields = 8,      // elements of a grant_view() in a reply
};

#define KT_SHARED VKEY__V1__KEY_TYPE__KEY_TYPE_SHARED
#define KT_TEMPORARY VKEY__V1__KEY_TYPE__KEY_TYPE_TEMPORARY
#define KT_ONE_TIME VKEY__V1__KEY_TYPE__KEY_TYPE_ONE_TIME
#define GS_OUTSTANDING VKEY__V1__GRANT_STATUS__GRANT_STATUS_OUTSTANDING
#define GS_REDEEMED VKEY__V1__GRANT_STATUS__GRANT_STATUS_REDEEMED
#define GS_CANCELLED VKEY__V1__GRANT_STATUS__GRANT_STATUS_CANCELLED
#define GS_REVOKED VKEY__V1__GRANT_STATUS__GRANT_STATUS_REVOKED
#define GS_EXPIRED VKEY__V1__GRANT_STATUS__GRANT_STATUS_EXPIRED
#define ST_ACTIVE VKEY__V1__KEY_STATUS__KEY_STATUS_ACTIVE
#define ST_SUSPENDED VKEY__V1__KEY_STATUS__KEY_STATUS_SUSPENDED
#define ST_REVOKED VKEY__V1__KEY_STATUS__KEY_STATUS_REVOKED

// --- Lua scripts -------------------------------------------------------------
// On top of keys.c's helpers (VK_KEYS_LUA_PRELUDE):
//
//   grant_view(gk, veh, now) -> nil, or {status, codeset, granted_by,
//     redeemed_by, created_at, updated_at, parents, keys} where status is
//     '5' (expired) for an outstanding grant past expires_at and keys is
//     "<id>=<function>=<key status>,..." with each key's current status.
//   cascade(veh, index, root) -> the grant ids and the live key ids that
//     revoking `root` revokes: the root (if outstanding or redeemed), its
//     keys, and recursively the grants whose parents name a revoked grant.
//     Read-only; RevokeGrant's write reruns it and compares with the read.
#define AUTH_LUA_PRELUDE                                                      \
  VK_KEYS_LUA_PRELUDE                                                         \
  "local function grant_view(gk, veh, now)\n"                                 \
  "  local g = redis.call('HMGET', gk, 'status', 'codeset', 'granted_by',\n"  \
  "    'redeemed_by', 'created_at', 'updated_at', 'parents', 'keys',\n"       \
  "    'expires_at')\n"                                                       \
  "  if not g[1] then return nil end\n"                                       \
  "  local st = g[1]\n"                                                       \
  "  if st == '1' and tonumber(now) >= tonumber(g[9] or '0') then\n"          \
  "    st = '5'\n"                                                            \
  "  end\n"                                                                   \
  "  local ks = {}\n"                                                         \
  "  for id, fn in string.gmatch(g[8] or '', '([^,=]+)=(%d+)') do\n"          \
  "    ks[#ks + 1] = id .. '=' .. fn .. '=' ..\n"                             \
  "      (redis.call('HGET', veh .. ':key:' .. id, 'status') or '0')\n"       \
  "  end\n"                                                                   \
  "  return {st, g[2] or '', g[3] or '', g[4] or '', g[5] or '0',\n"          \
  "    g[6] or '0', g[7] or '', table.concat(ks, ',')}\n"                     \
  "end\n"                                                                     \
  "local function cascade(veh, index, root)\n"                                \
  "  local grants, keys, seen, todo, i, all = {}, {}, {}, {root}, 1, nil\n"   \
  "  while i <= #todo do\n"                                                   \
  "    local gid = todo[i]\n"                                                 \
  "    i = i + 1\n"                                                           \
  "    if not seen[gid] then\n"                                               \
  "      seen[gid] = true\n"                                                  \
  "      local g = redis.call('HMGET', veh .. ':grant:' .. gid, 'status',\n"  \
  "        'keys')\n"                                                         \
  "      if g[1] == '1' or g[1] == '2' then\n"                                \
  "        grants[#grants + 1] = gid\n"                                       \
  "        for id in string.gmatch(g[2] or '', '([^,=]+)=%d+') do\n"          \
  "          local st = redis.call('HGET', veh .. ':key:' .. id, 'status')\n" \
  "          if st == '1' or st == '2' then keys[#keys + 1] = id end\n"       \
  "        end\n"                                                             \
  "        all = all or redis.call('ZRANGE', index, 0, -1)\n"                 \
  "        for _, cid in ipairs(all) do\n"                                    \
  "          local p = redis.call('HGET', veh .. ':grant:' .. cid,\n"         \
  "            'parents') or ''\n"                                            \
  "          for pid in string.gmatch(p, '[^,]+') do\n"                       \
  "            if pid == gid then todo[#todo + 1] = cid end\n"                \
  "          end\n"                                                           \
  "        end\n"                                                             \
  "      end\n"                                                               \
  "    end\n"                                                                 \
  "  end\n"                                                                   \
  "  return grants, keys\n"                                                   \
  "end\n"

// Authorize read. KEYS: vehicle, caller, recipient (the caller again when
// none is named), vehicle's key index, [idem]. ARGV: caller id, key type.
// Returns {'IDEM', response} or {'STATE', vehicle status, owner, policy,
// caller status, recipient status, live keys of the type (under a policy),
// then for each active SHARED key the caller (not the owner) holds on the
// vehicle: record, its grant's share depth, grant id}.
static const char kLuaAuthorizeRead[] = AUTH_LUA_PRELUDE
    "local prev = idem_get(KEYS[5])\n"
    "if prev then return {'IDEM', prev} end\n"
    "local v = redis.call('HMGET', KEYS[1], 'status', 'owner', 'policy')\n"
    "local u = redis.call('HGET', KEYS[2], 'status')\n"
    "local r = redis.call('HGET', KEYS[3], 'status')\n"
    "local n = 0\n"
    "if v[3] then n = count_type(KEYS[1], KEYS[4], ARGV[2]) end\n"
    "local out = {'STATE', v[1] or '', v[2] or '', v[3] or '', u or '',\n"
    "  r or '', n}\n"
    "if v[1] and v[2] ~= ARGV[1] then\n"
    "  for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do\n"
    "    local h = redis.call('HMGET', KEYS[1] .. ':key:' .. id, 'status',\n"
    "      'type', 'holder', 'grant', 'record')\n"
    "    if h[1] == '1' and h[2] == '2' and h[3] == ARGV[1] and h[5] then\n"
    "      local d = '0'\n"
    "      if h[4] and h[4] ~= '' then\n"
    "        d = redis.call('HGET', KEYS[1] .. ':grant:' .. h[4], 'depth')\n"
    "          or '0'\n"
    "      end\n"
    "      out[#out + 1] = h[5]\n"
    "      out[#out + 1] = d\n"
    "      out[#out + 1] = h[4] or ''\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

// Authorize write. KEYS: vehicle, caller, recipient, vehicle's key index,
// grant hash, grants index, vehicle audit, [idem]. ARGV: 1 owner read,
// 2 policy read, 3 key type, 4 max keys of the type (0: none), 5 grant id,
// 6 CodeSet, 7 AuthorizeResponse, 8 caller, 9 depth, 10 parents, 11 key
// ids shared from (comma-separated), 12 expires_at, 13 now ms, 14 now s,
// 15 actor, 16 VIN, 17 audit detail, 18 '1' when a recipient is named.
// Returns {'OK'}, {'IDEM', response} or {'RETRY'}.
static const char kLuaAuthorizeWrite[] = AUTH_LUA_PRELUDE
    "local prev = idem_get(KEYS[8])\n"
    "if prev then return {'IDEM', prev} end\n"
    "local v = redis.call('HMGET', KEYS[1], 'status', 'owner', 'policy')\n"
    "if v[1] ~= '1' or v[2] ~= ARGV[1] or (v[3] or '') ~= ARGV[2] then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "if redis.call('HGET', KEYS[2], 'status') ~= '1' then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "if ARGV[18] == '1' and redis.call('HGET', KEYS[3], 'status') ~= '1' "
    "then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "local max = tonumber(ARGV[4])\n"
    "if max > 0 and count_type(KEYS[1], KEYS[4], ARGV[3]) >= max then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "for id in string.gmatch(ARGV[11], '[^,]+') do\n"
    "  if redis.call('HGET', KEYS[1] .. ':key:' .. id, 'status') ~= '1' then\n"
    "    return {'RETRY'}\n"
    "  end\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[5]) == 1 then return {'RETRY'} end\n"
    "redis.call('HSET', KEYS[5], 'status', '1', 'codeset', ARGV[6],\n"
    "  'granted_by', ARGV[8], 'redeemed_by', '', 'keys', '', 'depth',\n"
    "  ARGV[9], 'parents', ARGV[10], 'expires_at', ARGV[12], 'type',\n"
    "  ARGV[3], 'created_at', ARGV[14], 'updated_at', ARGV[14], 'rev', '1')\n"
    "redis.call('ZADD', KEYS[6], ARGV[13], ARGV[5])\n"
    "vk_audit(KEYS[7], ARGV[13], ARGV[15], 'Authorize', ARGV[16], nil, 'ok',\n"
    "  ARGV[17])\n"
    "if KEYS[8] then\n"
    "  redis.call('SET', KEYS[8], ARGV[7], 'EX', 86400)\n"
    "end\n"
    "return {'OK'}\n";

// Redeem read. KEYS: grant hash, vehicle, caller, vehicle's key index,
// [idem]. ARGV: key type. Returns {'IDEM', response} or {'STATE', grant
// status, codeset, granted_by, parents, created_at, expires_at, '1' when
// every parent grant is still redeemed else '0', vehicle status, owner,
// policy, caller status, live keys of the type}.
static const char kLuaRedeemRead[] = AUTH_LUA_PRELUDE
    "local prev = idem_get(KEYS[5])\n"
    "if prev then return {'IDEM', prev} end\n"
    "local g = redis.call('HMGET', KEYS[1], 'status', 'codeset',\n"
    "  'granted_by', 'parents', 'created_at', 'expires_at')\n"
    "local v = redis.call('HMGET', KEYS[2], 'status', 'owner', 'policy')\n"
    "local u = redis.call('HGET', KEYS[3], 'status')\n"
    "local n = 0\n"
    "if v[3] then n = count_type(KEYS[2], KEYS[4], ARGV[1]) end\n"
    "local pok = '1'\n"
    "for p in string.gmatch(g[4] or '', '[^,]+') do\n"
    "  if redis.call('HGET', KEYS[2] .. ':grant:' .. p, 'status') ~= '2' "
    "then\n"
    "    pok = '0'\n"
    "  end\n"
    "end\n"
    "return {'STATE', g[1] or '', g[2] or '', g[3] or '', g[4] or '',\n"
    "  g[5] or '0', g[6] or '0', pok, v[1] or '', v[2] or '', v[3] or '',\n"
    "  u or '', n}\n";

// Redeem write. KEYS: 1 vehicle, 2 grant hash, 3 caller, 4 vehicle's key
// index, 5 caller's key index, 6 outbox, 7 vehicle audit, 8.. the n key
// hashes, [idem]. ARGV: 1 n, 2 owner read, 3 policy read, 4 CodeSet,
// 5 now ms, 6 now s, 7 actor, 8 VIN, 9 grant id, 10 notify channel,
// 11 holder, 12 key type, 13 max keys of the type, 14 RedeemResponse,
// 15 the grant's keys field, 16 parents, 17 audit detail; then per key:
// id, KeyRecord, SignedKey, function. Returns {'OK'}, {'IDEM', response},
// {'GRANT', status} when the grant is no longer outstanding ('0': gone or
// another code set, '5': expired) or {'RETRY'}.
static const char kLuaRedeemWrite[] = AUTH_LUA_PRELUDE
    "local n = tonumber(ARGV[1])\n"
    "local idem = KEYS[8 + n]\n"
    "local prev = idem_get(idem)\n"
    "if prev then return {'IDEM', prev} end\n"
    "local g = redis.call('HMGET', KEYS[2], 'status', 'codeset',\n"
    "  'expires_at')\n"
    "if not g[1] or g[2] ~= ARGV[4] then return {'GRANT', '0'} end\n"
    "if g[1] ~= '1' then return {'GRANT', g[1]} end\n"
    "if tonumber(ARGV[6]) >= tonumber(g[3] or '0') then\n"
    "  return {'GRANT', '5'}\n"
    "end\n"
    "for p in string.gmatch(ARGV[16], '[^,]+') do\n"
    "  if redis.call('HGET', KEYS[1] .. ':grant:' .. p, 'status') ~= '2' "
    "then\n"
    "    return {'RETRY'}\n"
    "  end\n"
    "end\n"
    "local v = redis.call('HMGET', KEYS[1], 'status', 'owner', 'policy',\n"
    "  'seq')\n"
    "if v[1] ~= '1' or (v[2] or '') ~= ARGV[2] or (v[3] or '') ~= ARGV[3] "
    "then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "if redis.call('HGET', KEYS[3], 'status') ~= '1' then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "local max = tonumber(ARGV[13])\n"
    "if max > 0 and count_type(KEYS[1], KEYS[4], ARGV[12]) >= max then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "for i = 1, n do\n"
    "  if redis.call('EXISTS', KEYS[7 + i]) == 1 then return {'RETRY'} end\n"
    "end\n"
    "local seq = tonumber(v[4] or '0')\n"
    "if not seq then return redis.error_reply('vehicle seq is not a number') "
    "end\n"
    // issue_key's XADD of the first key is the one write that can fail:
    // the later ones have higher entry ids.
    "for i = 1, n do\n"
    "  local b = 17 + 4 * (i - 1)\n"
    "  issue_key(KEYS[6], seq + i, KEYS[7 + i], KEYS[4], KEYS[5],\n"
    "    ARGV[b + 1], '1', ARGV[5], ARGV[6], ARGV[b + 3], ARGV[b + 2],\n"
    "    ARGV[12], ARGV[11], ARGV[9])\n"
    "  vk_audit(KEYS[7], ARGV[5], ARGV[7], 'Redeem', ARGV[8], ARGV[b + 1],\n"
    "    'ok', 'grant=' .. ARGV[9] .. ' function=' .. ARGV[b + 4])\n"
    "end\n"
    "redis.call('HINCRBY', KEYS[1], 'seq', n)\n"
    "redis.call('HSET', KEYS[2], 'status', '2', 'redeemed_by', ARGV[11],\n"
    "  'keys', ARGV[15], 'updated_at', ARGV[6])\n"
    "redis.call('HINCRBY', KEYS[2], 'rev', 1)\n"
    "redis.call('PUBLISH', ARGV[10], tostring(seq + n))\n"
    "vk_audit(KEYS[7], ARGV[5], ARGV[7], 'Redeem', ARGV[8], nil, 'ok',\n"
    "  ARGV[17])\n"
    "if idem then\n"
    "  redis.call('SET', idem, ARGV[14], 'EX', 86400)\n"
    "end\n"
    "return {'OK'}\n";

// CancelGrant and RevokeGrant read. KEYS: grant hash, vehicle, grants
// index, [idem]. ARGV: now s, '1' to compute the revoke cascade, grant id.
// Returns {'IDEM', response}, {'NOGRANT', vehicle status} or {'GRANT', rev,
// vehicle status, owner, grant_view (8), cascade grant ids, cascade key
// ids} (the cascade lists comma-separated, '' unless asked).
static const char kLuaGrantRead[] = AUTH_LUA_PRELUDE
    "local prev = idem_get(KEYS[4])\n"
    "if prev then return {'IDEM', prev} end\n"
    "local v = redis.call('HMGET', KEYS[2], 'status', 'owner')\n"
    "local view = grant_view(KEYS[1], KEYS[2], ARGV[1])\n"
    "if not view then return {'NOGRANT', v[1] or ''} end\n"
    "local out = {'GRANT', redis.call('HGET', KEYS[1], 'rev') or '',\n"
    "  v[1] or '', v[2] or ''}\n"
    "for _, x in ipairs(view) do out[#out + 1] = x end\n"
    "local gs, ks = {}, {}\n"
    "if ARGV[2] == '1' then gs, ks = cascade(KEYS[2], KEYS[3], ARGV[3]) end\n"
    "out[#out + 1] = table.concat(gs, ',')\n"
    "out[#out + 1] = table.concat(ks, ',')\n"
    "return out\n";

// CancelGrant write. KEYS: grant hash, vehicle, vehicle audit, [idem].
// ARGV: 1 rev read, 2 owner read, 3 now ms, 4 now s, 5 actor, 6 VIN,
// 7 grant id, 8 CancelGrantResponse. Returns {'OK'}, {'IDEM', response} or
// {'RETRY'}.
static const char kLuaCancelWrite[] = AUTH_LUA_PRELUDE
    "local prev = idem_get(KEYS[4])\n"
    "if prev then return {'IDEM', prev} end\n"
    "if (redis.call('HGET', KEYS[1], 'rev') or '') ~= ARGV[1] or\n"
    "  (redis.call('HGET', KEYS[2], 'owner') or '') ~= ARGV[2] then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'status', '3', 'updated_at', ARGV[4])\n"
    "redis.call('HINCRBY', KEYS[1], 'rev', 1)\n"
    "vk_audit(KEYS[3], ARGV[3], ARGV[5], 'CancelGrant', ARGV[6], nil, 'ok',\n"
    "  'grant=' .. ARGV[7])\n"
    "if KEYS[4] then\n"
    "  redis.call('SET', KEYS[4], ARGV[8], 'EX', 86400)\n"
    "end\n"
    "return {'OK'}\n";

// RevokeGrant write. KEYS: vehicle, grant hash, grants index, outbox,
// vehicle audit, [idem]. ARGV: 1 rev read, 2 owner read, 3 now ms, 4 now s,
// 5 actor, 6 VIN, 7 grant id, 8 notify channel, 9 RevokeGrantResponse,
// 10 cascade grants read, 11 cascade keys read. Returns {'OK'},
// {'IDEM', response} or {'RETRY'} (the grant, the owner or the cascade
// changed since the read).
static const char kLuaRevokeWrite[] = AUTH_LUA_PRELUDE
    "local prev = idem_get(KEYS[6])\n"
    "if prev then return {'IDEM', prev} end\n"
    "local v = redis.call('HMGET', KEYS[1], 'owner', 'seq')\n"
    "if (redis.call('HGET', KEYS[2], 'rev') or '') ~= ARGV[1] or\n"
    "  (v[1] or '') ~= ARGV[2] then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "local gs, ks = cascade(KEYS[1], KEYS[3], ARGV[7])\n"
    "if table.concat(gs, ',') ~= ARGV[10] or table.concat(ks, ',') ~= "
    "ARGV[11]\n"
    "then\n"
    "  return {'RETRY'}\n"
    "end\n"
    "local seq = tonumber(v[2] or '0')\n"
    "if not seq then return redis.error_reply('vehicle seq is not a number') "
    "end\n"
    // The outbox appends below cannot fail once the stream's last entry is
    // known to be below the next seq: check before the first write.
    "local last = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)\n"
    "if last[1] and tonumber(string.match(last[1][1], '^(%d+)')) > seq "
    "then\n"
    "  return redis.error_reply('outbox is ahead of the vehicle seq')\n"
    "end\n"
    "for _, gid in ipairs(gs) do\n"
    "  local gk = KEYS[1] .. ':grant:' .. gid\n"
    "  redis.call('HSET', gk, 'status', '4', 'updated_at', ARGV[4])\n"
    "  redis.call('HINCRBY', gk, 'rev', 1)\n"
    "  vk_audit(KEYS[5], ARGV[3], ARGV[5], 'RevokeGrant', ARGV[6], nil, "
    "'ok',\n"
    "    'grant=' .. gid)\n"
    "end\n"
    "for _, id in ipairs(ks) do\n"
    "  local kk = KEYS[1] .. ':key:' .. id\n"
    "  seq = seq + 1\n"
    "  redis.call('XADD', KEYS[4], seq .. '-1', 't', '5', 'k', id,\n"
    "    'v', redis.call('HGET', kk, 'ver') or '1', 's', '3', 'at', "
    "ARGV[3])\n"
    "  redis.call('HSET', kk, 'status', '3', 'updated_at', ARGV[4])\n"
    "  redis.call('HINCRBY', kk, 'rev', 1)\n"
    "  vk_audit(KEYS[5], ARGV[3], ARGV[5], 'RevokeGrant', ARGV[6], id, 'ok',\n"
    "    'grant=' .. ARGV[7])\n"
    "end\n"
    "if #ks > 0 then\n"
    "  redis.call('HSET', KEYS[1], 'seq', seq)\n"
    "  redis.call('PUBLISH', ARGV[8], tostring(seq))\n"
    "end\n"
    "if KEYS[6] then\n"
    "  redis.call('SET', KEYS[6], ARGV[9], 'EX', 86400)\n"
    "end\n"
    "return {'OK'}\n";

// One page of a vehicle's grants. KEYS: grants index, vehicle. ARGV:
// 1 score after which to start ('' from the beginning), 2 grant id after
// which to start among grants of that score, 3 page size, 4 the caller ('':
// an operator), 5 now s, 6 status filter ('0': all). The owner and
// operators see every grant, anyone else the grants they made. Returns
// {'NOENT'} or {'PAGE', more (0/1), then per grant: id, score, grant_view}.
static const char kLuaListGrants[] = AUTH_LUA_PRELUDE
    "local v = redis.call('HMGET', KEYS[2], 'status', 'owner')\n"
    "if not v[1] then return {'NOENT'} end\n"
    "local mine = ARGV[4] ~= '' and v[2] ~= ARGV[4]\n"
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
    "    if after == nil or tonumber(sc) > after or id > ARGV[2] then\n"
    "      local gk = KEYS[2] .. ':grant:' .. id\n"
    "      local view = nil\n"
    "      if not mine or redis.call('HGET', gk, 'granted_by') == ARGV[4] "
    "then\n"
    "        view = grant_view(gk, KEYS[2], ARGV[5])\n"
    "      end\n"
    "      if view and (ARGV[6] == '0' or view[1] == ARGV[6]) then\n"
    "        if got == size then\n"
    "          out[2] = 1\n"
    "          return out\n"
    "        end\n"
    "        got = got + 1\n"
    "        out[#out + 1] = id\n"
    "        out[#out + 1] = sc\n"
    "        for _, x in ipairs(view) do out[#out + 1] = x end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n";

static vk_keys_script_t s_authorize_read = {kLuaAuthorizeRead, ""};
static vk_keys_script_t s_authorize_write = {kLuaAuthorizeWrite, ""};
static vk_keys_script_t s_redeem_read = {kLuaRedeemRead, ""};
static vk_keys_script_t s_redeem_write = {kLuaRedeemWrite, ""};
static vk_keys_script_t s_grant_read = {kLuaGrantRead, ""};
static vk_keys_script_t s_cancel_write = {kLuaCancelWrite, ""};
static vk_keys_script_t s_revoke_write = {kLuaRevokeWrite, ""};
static vk_keys_script_t s_list_grants = {kLuaListGrants, ""};

// --- helpers -----------------------------------------------------------------

// type_grantable tells whether a code set may grant keys of `type`.
static bool type_grantable(int type) {
  return type == KT_SHARED || type == KT_TEMPORARY || type == KT_ONE_TIME;
}

// set_grant records that the call is about the valid grant id `grant_id`
// (the key-id shape "<VIN>.<16 hex>") and so about its vehicle.
static void set_grant(vk_keys_call_t *kc, const char *grant_id) {
  memcpy(kc->vin, grant_id, VK_VIN_LEN);
  kc->vin[VK_VIN_LEN] = '\0';
  snprintf(kc->grant_id, sizeof(kc->grant_id), "%s", grant_id);
}

// grant_hash names the grant's hash, vk:veh:{VIN}:grant:<grant id>.
static void grant_hash(char *out, const char *grant_id) {
  char vin[VK_VIN_LEN + 1], suffix[VK_REDIS_KEY_MAX];
  memcpy(vin, grant_id, VK_VIN_LEN);
  vin[VK_VIN_LEN] = '\0';
  snprintf(suffix, sizeof(suffix), "grant:%s", grant_id);
  vk_store_vehicle_sub(out, vin, suffix);
}

// codeset_message builds the signed message, context || 0x00 || code set,
// in the call's arena. NULL when out of memory.
static uint8_t *codeset_message(vk_keys_call_t *kc, const uint8_t *cs,
                                size_t len, size_t *out_len) {
  // sizeof the literal counts its NUL: exactly the 0x00 separator.
  size_t ctx = sizeof(VK_CODESET_CONTEXT);
  uint8_t *msg = vk_call_alloc(kc->call, ctx + len);
  if (msg == NULL) {
    return NULL;
  }
  memcpy(msg, VK_CODESET_CONTEXT, ctx);
  memcpy(msg + ctx, cs, len);
  *out_len = ctx + len;
  return msg;
}

// codeset_text returns the printable form of a serialized SignedCodeSet,
// VK_CODESET_PREFIX then unpadded base64url, in the call's arena. NULL when
// out of memory.
static char *codeset_text(vk_keys_call_t *kc, const ProtobufCBinaryData *b) {
  size_t plen = sizeof(VK_CODESET_PREFIX) - 1;
  CBB cbb;
  uint8_t *out;
  size_t out_len;
  if (!CBB_init(&cbb, plen + (b->len + 2) / 3 * 4) ||
      !CBB_add_bytes(&cbb, (const uint8_t *)VK_CODESET_PREFIX, plen) ||
      vk_base64_encode(&cbb, b->data, b->len) != VK_OK ||
      !CBB_finish(&cbb, &out, &out_len)) {
    CBB_cleanup(&cbb);
    return NULL;
  }
  char *text = vk_keys_dup(kc, out, out_len);
  OPENSSL_free(out);
  for (size_t i = plen; text != NULL && i < out_len; i++) {
    text[i] = text[i] == '+' ? '-' : text[i] == '/' ? '_' : text[i];
  }
  return text;
}

// codeset_decode turns the printable form back into the serialized
// SignedCodeSet, in the call's arena. Returns 0, VK_EINVAL when it is not
// the printable form of anything, VK_ENOMEM.
static int codeset_decode(vk_keys_call_t *kc, const char *text,
                          ProtobufCBinaryData *out) {
  size_t plen = sizeof(VK_CODESET_PREFIX) - 1;
  size_t len = strlen(text);
  if (len <= plen || len > kTextMax ||
      memcmp(text, VK_CODESET_PREFIX, plen) != 0) {
    return VK_EINVAL;
  }
  size_t blen = len - plen;
  char *std = vk_call_alloc(kc->call, blen);
  if (std == NULL) {
    return VK_ENOMEM;
  }
  for (size_t i = 0; i < blen; i++) {
    char ch = text[plen + i];
    if (ch == '+' || ch == '/' || ch == '=') {
      return VK_EINVAL;  // not the url-safe alphabet, or padded
    }
    std[i] = ch == '-' ? '+' : ch == '_' ? '/' : ch;
  }
  CBB cbb;
  uint8_t *raw;
  size_t raw_len;
  if (!CBB_init(&cbb, blen)) {
    return VK_ENOMEM;
  }
  int rv = vk_base64_decode(&cbb, (const uint8_t *)std, blen);
  if (rv != VK_OK || !CBB_finish(&cbb, &raw, &raw_len)) {
    CBB_cleanup(&cbb);
    return rv == VK_EINVAL ? VK_EINVAL : VK_ENOMEM;
  }
  out->data = (uint8_t *)vk_keys_dup(kc, raw, raw_len);
  out->len = raw_len;
  OPENSSL_free(raw);
  return out->data != NULL ? VK_OK : VK_ENOMEM;
}

// next_item moves the next `sep`-separated item of `in` into `out`; false
// when `in` is used up.
static bool next_item(CBS *in, CBS *out, uint8_t sep) {
  if (CBS_len(in) == 0) {
    return false;
  }
  if (CBS_get_until_first(in, out, sep)) {
    return CBS_skip(in, 1) == 1;
  }
  *out = *in;
  return CBS_skip(in, CBS_len(in)) == 1;
}

// cbs_int parses a CBS of 1-18 decimal digits.
static bool cbs_int(const CBS *c, int64_t *out) {
  size_t len = CBS_len(c);
  const uint8_t *p = CBS_data(c);
  if (len == 0 || len > 18) {
    return false;
  }
  int64_t v = 0;
  for (size_t i = 0; i < len; i++) {
    if (p[i] < '0' || p[i] > '9') {
      return false;
    }
    v = v * 10 + (p[i] - '0');
  }
  *out = v;
  return true;
}

// count_items counts the comma-separated items of `s` (0 for "").
static size_t count_items(const char *s, size_t len) {
  size_t n = len > 0 ? 1 : 0;
  for (size_t i = 0; i < len; i++) {
    n += s[i] == ',';
  }
  return n;
}

// split_ids splits "a,b,c" into strings in the call's arena.
static bool split_ids(vk_keys_call_t *kc, const char *s, size_t len,
                      char ***out, size_t *out_n) {
  size_t n = count_items(s, len);
  *out_n = 0;
  *out = vk_call_alloc(kc->call, (n + 1) * sizeof(**out));
  if (*out == NULL) {
    return false;
  }
  CBS in, item;
  CBS_init(&in, (const uint8_t *)s, len);
  while (*out_n < n && next_item(&in, &item, ',')) {
    char *id = vk_keys_dup(kc, CBS_data(&item), CBS_len(&item));
    if (id == NULL) {
      return false;
    }
    (*out)[(*out_n)++] = id;
  }
  return true;
}

// grant_keys parses "<id>=<function>=<status>,..." into g->keys.
static bool grant_keys(vk_keys_call_t *kc, Vkey__V1__Grant *g, const char *s,
                       size_t len) {
  size_t n = count_items(s, len);
  g->keys = vk_call_alloc(kc->call, (n + 1) * sizeof(*g->keys));
  Vkey__V1__GrantKey *keys = vk_call_alloc(kc->call, (n + 1) * sizeof(*keys));
  if (g->keys == NULL || keys == NULL) {
    return false;
  }
  CBS in, item;
  CBS_init(&in, (const uint8_t *)s, len);
  while (g->n_keys < n && next_item(&in, &item, ',')) {
    CBS id, fn, st;
    int64_t f, status;
    if (!next_item(&item, &id, '=') || !next_item(&item, &fn, '=') ||
        !next_item(&item, &st, '=') || !cbs_int(&fn, &f) ||
        !cbs_int(&st, &status)) {
      return false;
    }
    Vkey__V1__GrantKey *k = &keys[g->n_keys];
    vkey__v1__grant_key__init(k);
    k->key_id = vk_keys_dup(kc, CBS_data(&id), CBS_len(&id));
    k->function = (Vkey__V1__VehicleFunction)f;
    k->status = (Vkey__V1__KeyStatus)status;
    if (k->key_id == NULL) {
      return false;
    }
    g->keys[g->n_keys++] = k;
  }
  return true;
}

// grant_from_view builds the Grant `grant_id` from the kViewFields elements
// of a grant_view() that start at `i`. NULL when the reply is malformed or
// out of memory (the call is not failed).
static Vkey__V1__Grant *grant_from_view(vk_keys_call_t *kc,
                                        const redisReply *reply, size_t i,
                                        const char *grant_id) {
  size_t cs_len, by_len, rby_len, par_len, keys_len;
  int64_t status, created, updated;
  const char *cs = vk_keys_reply_str(reply, i + 1, &cs_len);
  const char *by = vk_keys_reply_str(reply, i + 2, &by_len);
  const char *rby = vk_keys_reply_str(reply, i + 3, &rby_len);
  const char *par = vk_keys_reply_str(reply, i + 6, &par_len);
  const char *keys = vk_keys_reply_str(reply, i + 7, &keys_len);
  if (cs == NULL || by == NULL || rby == NULL || par == NULL || keys == NULL ||
      !vk_keys_reply_i64(reply, i, 0, &status) ||
      !vk_keys_reply_i64(reply, i + 4, 0, &created) ||
      !vk_keys_reply_i64(reply, i + 5, 0, &updated)) {
    return NULL;
  }
  Vkey__V1__Grant *g = vk_call_alloc(kc->call, sizeof(*g));
  if (g == NULL) {
    return NULL;
  }
  vkey__v1__grant__init(g);
  g->grant_id = vk_keys_dup(kc, grant_id, strlen(grant_id));
  g->status = (Vkey__V1__GrantStatus)status;
  g->code_set = vkey__v1__code_set__unpack(vk_call_allocator(kc->call), cs_len,
                                           (const uint8_t *)cs);
  g->granted_by = vk_keys_dup(kc, by, by_len);
  g->redeemed_by = vk_keys_dup(kc, rby, rby_len);
  g->created_at = created;
  g->updated_at = updated;
  if (g->grant_id == NULL || g->code_set == NULL || g->granted_by == NULL ||
      g->redeemed_by == NULL ||
      !split_ids(kc, par, par_len, &g->parent_grant_ids,
                 &g->n_parent_grant_ids) ||
      !grant_keys(kc, g, keys, keys_len)) {
    return NULL;
  }
  return g;
}

// fail_grant_status answers a code set that can no longer be redeemed.
static void fail_grant_status(vk_keys_call_t *kc, int status) {
  switch (status) {
    case GS_REDEEMED:
      vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                   "code set already redeemed");
      return;
    case GS_CANCELLED:
      vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION, "code set was cancelled");
      return;
    case GS_REVOKED:
      vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION, "code set was revoked");
      return;
    case GS_EXPIRED:
      vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION, "code set expired");
      return;
    default:
      vk_keys_fail(kc, VK_GRPC_NOT_FOUND, "no such code set");
      return;
  }
}

// check_party checks the states an Authorize or Redeem read returned: the
// vehicle (registered, active, owned) and the caller (registered, active).
// Fails the call and returns false otherwise.
static bool check_party(vk_keys_call_t *kc, const char *veh, size_t veh_len,
                        size_t owner_len, const char *user, size_t user_len) {
  if (veh_len == 0) {
    vk_keys_failf(kc, VK_GRPC_NOT_FOUND, "vehicle %s is not registered",
                  kc->vin);
    return false;
  }
  kc->vin_registered = true;
  if (user_len == 0) {
    vk_keys_fail(kc, VK_GRPC_NOT_FOUND, "user is not registered");
    return false;
  }
  if (strcmp(veh, "1") != 0) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION, "the vehicle is disabled");
    return false;
  }
  if (strcmp(user, "1") != 0) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION, "the user is disabled");
    return false;
  }
  if (owner_len == 0) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                 "the vehicle has no owner yet");
    return false;
  }
  return true;
}

// --- Authorize ---------------------------------------------------------------

typedef struct {
  vk_keys_call_t kc;  // first: the helpers' callbacks recover the state
  const Vkey__V1__AuthorizeRequest *req;
  int attempts;
  vk_function_mask_t functions;
  uint32_t max_uses;
  bool has_recipient;
  bool has_idem;
  char k_vehicle[VK_REDIS_KEY_MAX];
  char k_user[VK_REDIS_KEY_MAX];
  char k_recipient[VK_REDIS_KEY_MAX];
  char k_veh_keys[VK_REDIS_KEY_MAX];
  char k_idem[VK_REDIS_KEY_MAX];
  // What the read saw; the write re-checks it.
  char *owner;
  char *policy;
  size_t policy_len;
  uint32_t max_of_type;
  uint32_t depth;
  const char *parents;  // grant ids shared from, comma-separated ("" owner)
  const char *sources;  // the caller's key ids shared from ("" owner)
  int64_t expires_at;
  // The code set.
  char grant_id[VK_KEY_ID_LEN + 1];
  Vkey__V1__CodeSet cs;
  Vkey__V1__Validity validity;
  Vkey__V1__VehicleFunction fn_list[VK_KEYTOKEN_FUNCTION_MAX];
  ProtobufCBinaryData cs_bytes;
  vk_crypto_job_t job;
  uint8_t sig[64];
  Vkey__V1__SignedCodeSet signed_cs;
  Vkey__V1__Grant grant;
  Vkey__V1__AuthorizeResponse resp;
} authorize_t;

static void authorize_read(authorize_t *a);

// authorize_validate checks every field of the request. NULL or the reason.
static const char *authorize_validate(authorize_t *a, int64_t now_s) {
  const Vkey__V1__AuthorizeRequest *req = a->req;
  const char *err = NULL;
  if (!vk_request_id_valid(req->request_id)) {
    return "request_id: at most 64 printable characters without spaces";
  }
  if (!vk_vin_valid(req->vin)) {
    return "vin: 17 characters of ISO 3779 (digits, capitals but I, O, Q)";
  }
  snprintf(a->kc.vin, sizeof(a->kc.vin), "%s", req->vin);
  if (req->n_functions == 0) {
    return "functions: name at least one function to grant";
  }
  if (vk_keytoken_check_functions(&a->functions, &err, req->functions,
                                  req->n_functions) != VK_OK) {
    return err;
  }
  if (!type_grantable((int)req->key_type)) {
    return "key_type: a code set grants shared, temporary or one-time keys";
  }
  if (vk_keytoken_check_validity(&err, req->validity, req->key_type, now_s) !=
          VK_OK ||
      vk_keytoken_check_max_uses(&a->max_uses, &err, req->key_type,
                                 req->max_uses) != VK_OK) {
    return err;
  }
  if (req->recipient_user_id[0] != '\0' &&
      !vk_user_id_valid(req->recipient_user_id)) {
    return "recipient_user_id: 1-64 of [A-Za-z0-9._@-]";
  }
  if (req->code_set_ttl_seconds > kMaxTtlS) {
    return "code_set_ttl_seconds: at most 30 days (2592000)";
  }
  return NULL;
}

static void authorize_authed(vk_call_t *call, const vk_identity_t *who,
                             void *arg) {
  authorize_t *a = arg;
  vk_keys_call_t *kc = &a->kc;
  (void)call;
  vk_keys_set_identity(kc, who);
  const char *err = authorize_validate(a, vk_wall_ms() / 1000);
  if (err != NULL) {
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT, err);
    return;
  }
  a->has_recipient = a->req->recipient_user_id[0] != '\0';
  vk_store_vehicle(a->k_vehicle, kc->vin);
  vk_store_user(a->k_user, kc->who.subject);
  vk_store_user(a->k_recipient,
                a->has_recipient ? a->req->recipient_user_id : kc->who.subject);
  vk_store_vehicle_sub(a->k_veh_keys, kc->vin, "keys");
  a->has_idem = vk_keys_idem_key(kc, a->req->request_id, a->k_idem);
  authorize_read(a);
}

static void authorize_start(vk_call_t *call, const ProtobufCMessage *msg) {
  authorize_t *a = vk_call_alloc(call, sizeof(*a));
  if (a == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_keys_call_init(&a->kc, call, "Authorize", true);
  a->req = (const Vkey__V1__AuthorizeRequest *)msg;
  vk_auth_bearer(a->kc.app, call, VK_ROLE_USER, false, authorize_authed, a);
}

// A source the caller shares from: one of their shared keys.
typedef struct {
  const Vkey__V1__KeyClaims *claims;
  int64_t depth;
  const char *grant_id;
  size_t grant_len;
} source_t;

// reshare_sources decodes the caller's live shared keys from the read
// reply into `src` (at most kMaxSourceKeys). Expired keys are left out.
static size_t reshare_sources(authorize_t *a, const redisReply *reply,
                              int64_t now_s, source_t *src) {
  size_t n = 0;
  for (size_t i = 7; i + 2 < reply->elements && n < kMaxSourceKeys; i += 3) {
    size_t rec_len;
    const char *raw = vk_keys_reply_str(reply, i, &rec_len);
    int64_t depth;
    if (raw == NULL || !vk_keys_reply_i64(reply, i + 1, 0, &depth) ||
        depth < 0) {
      continue;
    }
    Vkey__V1__KeyRecord *rec = vkey__v1__key_record__unpack(
        vk_call_allocator(a->kc.call), rec_len, (const uint8_t *)raw);
    const Vkey__V1__Validity *v =
        rec != NULL && rec->claims != NULL ? rec->claims->validity : NULL;
    if (rec == NULL || rec->claims == NULL ||
        (v != NULL && v->not_after != 0 && v->not_after <= now_s)) {
      continue;
    }
    src[n].claims = rec->claims;
    src[n].depth = depth;
    src[n].grant_id = vk_keys_reply_str(reply, i + 2, &src[n].grant_len);
    if (src[n].grant_id == NULL) {
      src[n].grant_len = 0;
    }
    n++;
  }
  return n;
}

// reshare_lists writes the key ids and the grant ids (each once) of the
// chosen sources into a->sources and a->parents, and returns the earliest
// not_after among them (0: none ends).
static int64_t reshare_lists(authorize_t *a, const source_t *src,
                             const bool *used, size_t n) {
  size_t cap = n * (VK_KEY_ID_LEN + 1) + 1;
  char *sources = vk_call_alloc(a->kc.call, cap);
  char *parents = vk_call_alloc(a->kc.call, cap);
  a->sources = sources;
  a->parents = parents;
  int64_t until = 0;
  for (size_t i = 0; i < n && sources != NULL && parents != NULL; i++) {
    if (!used[i]) {
      continue;
    }
    size_t sl = strlen(sources), pl = strlen(parents);
    snprintf(sources + sl, cap - sl, "%s%s", sl > 0 ? "," : "",
             src[i].claims->key_id);
    char gid[VK_KEY_ID_LEN + 1];
    snprintf(gid, sizeof(gid), "%.*s", (int)src[i].grant_len,
             src[i].grant_id != NULL ? src[i].grant_id : "");
    if (gid[0] != '\0' && strstr(parents, gid) == NULL) {
      snprintf(parents + pl, cap - pl, "%s%s", pl > 0 ? "," : "", gid);
    }
    const Vkey__V1__Validity *v = src[i].claims->validity;
    if (v != NULL && v->not_after != 0 &&
        (until == 0 || v->not_after < until)) {
      until = v->not_after;
    }
  }
  return until;
}

// authorize_reshare decides for a caller who is not the owner: they must
// hold active SHARED keys with every requested function, the policy must
// let shared keys be shared on, and the depth stays within the policy's.
// Sets depth, sources and parents, or fails the call and returns false.
static bool authorize_reshare(authorize_t *a, const Vkey__V1__KeyPolicy *policy,
                              const redisReply *reply, int64_t now_s) {
  vk_keys_call_t *kc = &a->kc;
  source_t src[kMaxSourceKeys];
  size_t n = reshare_sources(a, reply, now_s, src);
  if (n == 0) {
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "only the vehicle's owner, or the holder of a shared key "
                 "for it, may authorize");
    return false;
  }
  if (policy == NULL || !policy->sharing_allowed) {
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "the vehicle's key policy does not let shared keys be "
                 "shared on");
    return false;
  }
  // For each function: the source that grants it at the smallest depth.
  int64_t best[VK_KEYTOKEN_FUNCTION_MAX + 1];
  size_t from[VK_KEYTOKEN_FUNCTION_MAX + 1] = {0};
  bool used[kMaxSourceKeys] = {false};
  for (int f = 0; f <= VK_KEYTOKEN_FUNCTION_MAX; f++) {
    best[f] = -1;
  }
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < src[i].claims->n_functions; j++) {
      int f = (int)src[i].claims->functions[j];
      if (f >= 1 && f <= VK_KEYTOKEN_FUNCTION_MAX &&
          (a->functions & ((vk_function_mask_t)1 << f)) != 0 &&
          (best[f] < 0 || src[i].depth < best[f])) {
        best[f] = src[i].depth;
        from[f] = i;
      }
    }
  }
  int64_t deepest = 0;
  for (int f = 1; f <= VK_KEYTOKEN_FUNCTION_MAX; f++) {
    if ((a->functions & ((vk_function_mask_t)1 << f)) == 0) {
      continue;
    }
    if (best[f] < 0) {
      vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                   "you may share only functions your own shared keys have");
      return false;
    }
    used[from[f]] = true;
    deepest = best[f] > deepest ? best[f] : deepest;
  }
  if (deepest + 1 > (int64_t)policy->max_share_depth) {
    vk_keys_failf(kc, VK_GRPC_PERMISSION_DENIED,
                  "the vehicle's key policy allows sharing on to depth %u; "
                  "this code set would have depth %" PRId64,
                  policy->max_share_depth, deepest + 1);
    return false;
  }
  a->depth = (uint32_t)(deepest + 1);
  int64_t until = reshare_lists(a, src, used, n);
  if (a->sources == NULL || a->parents == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return false;
  }
  const Vkey__V1__Validity *v = a->req->validity;
  int64_t want = v != NULL ? v->not_after : 0;
  if (until != 0 && (want == 0 || want > until)) {
    vk_keys_failf(kc, VK_GRPC_PERMISSION_DENIED,
                  "a key you share cannot outlive your own: "
                  "validity.not_after must be at most %" PRId64,
                  until);
    return false;
  }
  return true;
}

static void authorize_sign(authorize_t *a, const Vkey__V1__KeyPolicy *policy);

// authorize_decide checks the caller's rights and the vehicle's policy on
// what the read returned.
static void authorize_decide(authorize_t *a, const redisReply *reply) {
  vk_keys_call_t *kc = &a->kc;
  size_t veh_len, owner_len, pol_len, user_len, rcpt_len;
  const char *veh = vk_keys_reply_str(reply, 1, &veh_len);
  const char *owner = vk_keys_reply_str(reply, 2, &owner_len);
  const char *pol = vk_keys_reply_str(reply, 3, &pol_len);
  const char *user = vk_keys_reply_str(reply, 4, &user_len);
  const char *rcpt = vk_keys_reply_str(reply, 5, &rcpt_len);
  int64_t count;
  if (veh == NULL || owner == NULL || pol == NULL || user == NULL ||
      rcpt == NULL || !vk_keys_reply_i64(reply, 6, 0, &count)) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
    return;
  }
  if (!check_party(kc, veh, veh_len, owner_len, user, user_len)) {
    return;
  }
  if (a->has_recipient && rcpt_len == 0) {
    vk_keys_fail(kc, VK_GRPC_NOT_FOUND,
                 "recipient_user_id: no such user is registered");
    return;
  }
  if (a->has_recipient && strcmp(rcpt, "1") != 0) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION, "the recipient is disabled");
    return;
  }
  Vkey__V1__KeyPolicy *policy;
  if (!vk_keys_policy_parse(kc, pol, pol_len, &policy)) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL,
                 "the vehicle's key policy does not parse");
    return;
  }
  a->owner = vk_keys_dup(kc, owner, owner_len);
  a->policy = vk_keys_dup(kc, pol, pol_len);
  a->policy_len = pol_len;
  if (a->owner == NULL || a->policy == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  a->depth = 0;
  a->parents = "";
  a->sources = "";
  if (strcmp(a->owner, kc->who.subject) != 0 &&
      !authorize_reshare(a, policy, reply, vk_wall_ms() / 1000)) {
    return;
  }
  if ((a->functions & ~vk_keys_policy_grantable(policy)) != 0) {
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "the vehicle's key policy does not let these functions be "
                 "granted");
    return;
  }
  a->max_of_type = vk_keys_policy_max_keys(policy, (int)a->req->key_type);
  if (a->max_of_type > 0 && count >= (int64_t)a->max_of_type) {
    vk_keys_failf(kc, VK_GRPC_RESOURCE_EXHAUSTED,
                  "the vehicle's key policy allows at most %u keys of this "
                  "type",
                  a->max_of_type);
    return;
  }
  authorize_sign(a, policy);
}

static void authorize_read_done(vk_keys_call_t *kc, int status,
                                const redisReply *reply) {
  authorize_t *a = vk_container_of(kc, authorize_t, kc);
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "IDEM")) {
    vk_keys_respond_stored(kc, &vkey__v1__authorize_response__descriptor,
                           reply);
  } else if (vk_keys_reply_tag(reply, "STATE") && reply->elements >= 7 &&
             (reply->elements - 7) % 3 == 0) {
    authorize_decide(a, reply);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

static void authorize_read(authorize_t *a) {
  vk_keys_call_t *kc = &a->kc;
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, a->k_vehicle);
  vk_keys_arg_key(kc, a->k_user);
  vk_keys_arg_key(kc, a->k_recipient);
  vk_keys_arg_key(kc, a->k_veh_keys);
  if (a->has_idem) {
    vk_keys_arg_key(kc, a->k_idem);
  }
  vk_keys_arg_str(kc, kc->who.subject);
  vk_keys_arg_i64(kc, (int64_t)a->req->key_type);
  vk_keys_eval(kc, &s_authorize_read, authorize_read_done);
}

static void authorize_write(authorize_t *a);

static void authorize_signed(vk_crypto_job_t *job, int status, void *arg) {
  authorize_t *a = arg;
  vk_call_t *call = a->kc.call;
  if (!vk_call_is_done(call) && vk_keys_sign_result(&a->kc, job, status)) {
    memcpy(a->sig, job->ops[0].out_sig, sizeof(a->sig));
    authorize_write(a);
  }
  vk_call_unref(call);
}

// authorize_sign integrates the function codes into a code set under a
// fresh grant id and signs it on the worker pool.
static void authorize_sign(authorize_t *a, const Vkey__V1__KeyPolicy *policy) {
  vk_keys_call_t *kc = &a->kc;
  const Vkey__V1__AuthorizeRequest *req = a->req;
  kc->now_ms = vk_wall_ms();
  int64_t ttl = req->code_set_ttl_seconds != 0
                    ? (int64_t)req->code_set_ttl_seconds
                    : (int64_t)kDefaultTtlS;
  int64_t cap = policy != NULL && policy->max_code_set_ttl_seconds != 0
                    ? (int64_t)policy->max_code_set_ttl_seconds
                    : (int64_t)kDefaultTtlS;
  a->expires_at = kc->now_ms / 1000 + (ttl < cap ? ttl : cap);
  vk_keytoken_new_key_id(a->grant_id, kc->vin);
  snprintf(kc->grant_id, sizeof(kc->grant_id), "%s", a->grant_id);
  Vkey__V1__CodeSet *cs = &a->cs;
  vkey__v1__code_set__init(cs);
  cs->format = 1;
  cs->grant_id = a->grant_id;
  cs->vin = kc->vin;
  cs->n_functions = vk_keytoken_mask_functions(a->fn_list, a->functions);
  cs->functions = a->fn_list;
  cs->key_type = req->key_type;
  const Vkey__V1__Validity *v = req->validity;
  if (v != NULL && (v->not_before != 0 || v->not_after != 0)) {
    vkey__v1__validity__init(&a->validity);
    a->validity.not_before = v->not_before;
    a->validity.not_after = v->not_after;
    cs->validity = &a->validity;
  }
  cs->max_uses = a->max_uses;
  cs->recipient_user_id = req->recipient_user_id;
  cs->expires_at = a->expires_at;
  cs->issuer_key_id = kc->app->signing_key.key_id;
  cs->share_depth = a->depth;
  size_t msg_len;
  uint8_t *msg = NULL;
  if (vk_keys_pack(kc, &cs->base, &a->cs_bytes)) {
    msg = codeset_message(kc, a->cs_bytes.data, a->cs_bytes.len, &msg_len);
  }
  if (msg == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_keytoken_sign_op(&a->job.ops[0], &kc->app->signing_key, msg, msg_len);
  vk_keys_sign_submit(kc, &a->job, 1, authorize_signed, a);
}

static void authorize_written(vk_keys_call_t *kc, int status,
                              const redisReply *reply) {
  authorize_t *a = vk_container_of(kc, authorize_t, kc);
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "OK")) {
    vk_keys_respond(kc, &a->resp.base);
  } else if (vk_keys_reply_tag(reply, "IDEM")) {
    vk_keys_respond_stored(kc, &vkey__v1__authorize_response__descriptor,
                           reply);
  } else if (vk_keys_reply_tag(reply, "RETRY")) {
    if (++a->attempts >= VK_KEYS_MAX_ATTEMPTS) {
      vk_keys_fail(kc, VK_GRPC_ABORTED,
                   "the vehicle or its keys kept changing; try again");
      return;
    }
    kc->grant_id[0] = '\0';
    authorize_read(a);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

// authorize_build makes the response: the printable code set and the
// outstanding grant. False (the call failed) when out of memory.
static bool authorize_build(authorize_t *a, ProtobufCBinaryData *out_resp) {
  vk_keys_call_t *kc = &a->kc;
  vkey__v1__signed_code_set__init(&a->signed_cs);
  a->signed_cs.code_set = a->cs_bytes;
  a->signed_cs.signature.data = a->sig;
  a->signed_cs.signature.len = sizeof(a->sig);
  Vkey__V1__Grant *g = &a->grant;
  vkey__v1__grant__init(g);
  g->grant_id = a->grant_id;
  g->status = GS_OUTSTANDING;
  g->code_set = &a->cs;
  g->granted_by = kc->who.subject;
  g->created_at = kc->now_ms / 1000;
  g->updated_at = g->created_at;
  vkey__v1__authorize_response__init(&a->resp);
  a->resp.signed_code_set = &a->signed_cs;
  a->resp.grant = g;
  ProtobufCBinaryData signed_bytes;
  if (!split_ids(kc, a->parents, strlen(a->parents), &g->parent_grant_ids,
                 &g->n_parent_grant_ids) ||
      !vk_keys_pack(kc, &a->signed_cs.base, &signed_bytes) ||
      (a->resp.code_set = codeset_text(kc, &signed_bytes)) == NULL ||
      !vk_keys_pack(kc, &a->resp.base, out_resp)) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return false;
  }
  return true;
}

// authorize_write stores the outstanding grant in one script.
static void authorize_write(authorize_t *a) {
  vk_keys_call_t *kc = &a->kc;
  ProtobufCBinaryData resp;
  if (!authorize_build(a, &resp)) {
    return;
  }
  char k_grant[VK_REDIS_KEY_MAX], k_grants[VK_REDIS_KEY_MAX];
  char k_audit[VK_REDIS_KEY_MAX], detail[256];
  grant_hash(k_grant, a->grant_id);
  vk_store_vehicle_sub(k_grants, kc->vin, "grants");
  vk_store_vehicle_sub(k_audit, kc->vin, "audit");
  snprintf(detail, sizeof(detail),
           "grant=%s type=%d functions=0x%x depth=%u recipient=%s "
           "expires_at=%" PRId64,
           a->grant_id, (int)a->req->key_type, (unsigned)a->functions, a->depth,
           a->has_recipient ? a->req->recipient_user_id : "*", a->expires_at);
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, a->k_vehicle);
  vk_keys_arg_key(kc, a->k_user);
  vk_keys_arg_key(kc, a->k_recipient);
  vk_keys_arg_key(kc, a->k_veh_keys);
  vk_keys_arg_key(kc, k_grant);
  vk_keys_arg_key(kc, k_grants);
  vk_keys_arg_key(kc, k_audit);
  if (a->has_idem) {
    vk_keys_arg_key(kc, a->k_idem);
  }
  vk_keys_arg_str(kc, a->owner);  // 1
  vk_keys_arg_bin(kc, a->policy, a->policy_len);
  vk_keys_arg_i64(kc, (int64_t)a->req->key_type);
  vk_keys_arg_i64(kc, (int64_t)a->max_of_type);
  vk_keys_arg_str(kc, a->grant_id);  // 5
  vk_keys_arg_bin(kc, a->cs_bytes.data, a->cs_bytes.len);
  vk_keys_arg_bin(kc, resp.data, resp.len);
  vk_keys_arg_str(kc, kc->who.subject);
  vk_keys_arg_i64(kc, (int64_t)a->depth);
  vk_keys_arg_str(kc, a->parents);  // 10
  vk_keys_arg_str(kc, a->sources);
  vk_keys_arg_i64(kc, a->expires_at);
  vk_keys_arg_i64(kc, kc->now_ms);
  vk_keys_arg_i64(kc, kc->now_ms / 1000);
  vk_keys_arg_str(kc, kc->actor);  // 15
  vk_keys_arg_str(kc, kc->vin);
  vk_keys_arg_str(kc, vk_keys_dup(kc, detail, strlen(detail)));
  vk_keys_arg_str(kc, a->has_recipient ? "1" : "0");
  vk_keys_eval(kc, &s_authorize_write, authorize_written);
}

// --- Redeem ------------------------------------------------------------------

typedef struct {
  vk_keys_call_t kc;
  const Vkey__V1__RedeemRequest *req;
  int attempts;
  Vkey__V1__SignedCodeSet *scs;
  Vkey__V1__CodeSet *cs;
  vk_function_mask_t functions;
  uint8_t issuer_pub[32];
  vk_crypto_job_t job;  // the code set's verification, then the signing
  bool has_idem;
  char k_grant[VK_REDIS_KEY_MAX];
  char k_vehicle[VK_REDIS_KEY_MAX];
  char k_user[VK_REDIS_KEY_MAX];
  char k_veh_keys[VK_REDIS_KEY_MAX];
  char k_idem[VK_REDIS_KEY_MAX];
  // What the read saw; the write re-checks it.
  char *owner;
  char *policy;
  size_t policy_len;
  uint32_t max_of_type;
  char *granted_by;
  char *parents;
  int64_t created_at;
  // The keys, one per function.
  size_t n_keys;
  vk_keys_issue_t keys[VK_KEYTOKEN_FUNCTION_MAX];
  Vkey__V1__KeyRecord *recs[VK_KEYTOKEN_FUNCTION_MAX];
  Vkey__V1__GrantKey gkeys[VK_KEYTOKEN_FUNCTION_MAX];
  Vkey__V1__GrantKey *gkey_ptrs[VK_KEYTOKEN_FUNCTION_MAX];
  Vkey__V1__Grant grant;
  Vkey__V1__RedeemResponse resp;
} redeem_t;

// redeem_parse decodes the printable code set and checks its shape (not
// yet its signature). Returns NULL or the reason it is malformed; sets
// *out_oom when it was memory, not the input.
static const char *redeem_parse(redeem_t *r, bool *out_oom) {
  vk_keys_call_t *kc = &r->kc;
  ProtobufCAllocator *alloc = vk_call_allocator(kc->call);
  ProtobufCBinaryData raw;
  const char *err = NULL;
  *out_oom = false;
  int rv = codeset_decode(kc, r->req->code_set, &raw);
  if (rv != VK_OK) {
    *out_oom = rv == VK_ENOMEM;
    return "code_set: want the printable form vkc1.<base64url>";
  }
  r->scs = vkey__v1__signed_code_set__unpack(alloc, raw.len, raw.data);
  if (r->scs == NULL || r->scs->code_set.len == 0 ||
      r->scs->code_set.len > kCodeSetMax || r->scs->signature.len != 64) {
    return "code_set: not a signed code set";
  }
  r->cs = vkey__v1__code_set__unpack(alloc, r->scs->code_set.len,
                                     r->scs->code_set.data);
  if (r->cs == NULL || r->cs->format != 1) {
    return "code_set: not a code set this service knows";
  }
  const Vkey__V1__CodeSet *cs = r->cs;
  if (!vk_vin_valid(cs->vin) || !vk_key_id_valid(cs->grant_id) ||
      strncmp(cs->grant_id, cs->vin, VK_VIN_LEN) != 0 ||
      strlen(cs->issuer_key_id) != 16 || cs->n_functions == 0 ||
      vk_keytoken_check_functions(&r->functions, &err, cs->functions,
                                  cs->n_functions) != VK_OK ||
      !type_grantable((int)cs->key_type)) {
    return "code_set: malformed contents";
  }
  return NULL;
}

// redeem_validate checks the request's own fields. NULL or the reason.
static const char *redeem_validate(redeem_t *r) {
  const Vkey__V1__RedeemRequest *req = r->req;
  if (!vk_request_id_valid(req->request_id)) {
    return "request_id: at most 64 printable characters without spaces";
  }
  vk_sig_alg_t alg = (vk_sig_alg_t)req->holder_key_algorithm;
  if (alg != VK_SIG_ED25519 && alg != VK_SIG_ECDSA_P256) {
    return "holder_key_algorithm: unspecified or unknown";
  }
  // A P-256 point check is a field check, cheap enough for the loop.
  if (req->holder_public_key.len > 65 ||
      !vk_public_key_valid(alg, req->holder_public_key.data,
                           req->holder_public_key.len)) {
    return alg == VK_SIG_ED25519
               ? "holder_public_key: want 32 bytes of Ed25519"
               : "holder_public_key: want a 65-byte uncompressed P-256 "
                 "point on the curve";
  }
  return NULL;
}

static void redeem_verified(vk_crypto_job_t *job, int status, void *arg);

// redeem_verify checks the code set's signature on the worker pool: never
// on the loop thread.
static void redeem_verify(redeem_t *r) {
  vk_keys_call_t *kc = &r->kc;
  size_t msg_len;
  uint8_t *msg = codeset_message(kc, r->scs->code_set.data,
                                 r->scs->code_set.len, &msg_len);
  if (msg == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_crypto_op_t *op = &r->job.ops[0];
  memset(op, 0, sizeof(*op));
  op->sign = false;
  op->alg = VK_SIG_ED25519;
  op->public_key = r->issuer_pub;
  op->public_key_len = sizeof(r->issuer_pub);
  op->msg = msg;
  op->msg_len = msg_len;
  op->sig = r->scs->signature.data;
  op->sig_len = r->scs->signature.len;
  vk_keys_sign_submit(kc, &r->job, 1, redeem_verified, r);
}

static void redeem_issuer_read(vk_redis_t *rd, int status,
                               const redisReply *reply, void *priv) {
  (void)rd;
  redeem_t *r = priv;
  vk_keys_call_t *kc = &r->kc;
  vk_call_t *call = kc->call;
  if (vk_call_is_done(call)) {
    vk_call_unref(call);
    return;
  }
  if (status != VK_OK || reply->type == REDIS_REPLY_ERROR) {
    vk_keys_unavailable(kc, status, reply);
  } else if (reply->type != REDIS_REPLY_STRING || reply->len != 32) {
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "code set signed by a key this service does not know");
  } else {
    memcpy(r->issuer_pub, reply->str, 32);
    if (kc->app->verify_cache != NULL) {
      vk_verify_cache_issuer_put(kc->app->verify_cache, r->cs->issuer_key_id,
                                 r->issuer_pub);
    }
    redeem_verify(r);
  }
  vk_call_unref(call);
}

// redeem_issuer finds the public key that signed the code set: ours, a
// cached one, else the issuers hash in Redis (signing keys rotate).
static void redeem_issuer(redeem_t *r) {
  vk_keys_call_t *kc = &r->kc;
  const char *kid = r->cs->issuer_key_id;
  const uint8_t *pub = NULL;
  if (strcmp(kid, kc->app->signing_key.key_id) == 0) {
    pub = kc->app->signing_key.public_key;
  } else if (kc->app->verify_cache != NULL) {
    pub = vk_verify_cache_issuer(kc->app->verify_cache, kid);
  }
  if (pub != NULL) {
    memcpy(r->issuer_pub, pub, sizeof(r->issuer_pub));
    redeem_verify(r);
    return;
  }
  vk_call_ref(kc->call);
  int rv = vk_redis_command(kc->app->redis, redeem_issuer_read, r, "HGET %s %s",
                            VK_REDIS_ISSUERS, kid);
  if (rv != VK_OK) {
    vk_keys_fail(kc, VK_GRPC_UNAVAILABLE, "key store unavailable");
    vk_call_unref(kc->call);
  }
}

static void redeem_authed(vk_call_t *call, const vk_identity_t *who,
                          void *arg) {
  redeem_t *r = arg;
  vk_keys_call_t *kc = &r->kc;
  (void)call;
  vk_keys_set_identity(kc, who);
  bool oom = false;
  const char *err = redeem_validate(r);
  if (err == NULL) {
    err = redeem_parse(r, &oom);
  }
  if (err != NULL) {
    vk_keys_fail(kc,
                 oom ? VK_GRPC_RESOURCE_EXHAUSTED : VK_GRPC_INVALID_ARGUMENT,
                 oom ? "out of memory" : err);
    return;
  }
  set_grant(kc, r->cs->grant_id);
  redeem_issuer(r);
}

static void redeem_start(vk_call_t *call, const ProtobufCMessage *msg) {
  redeem_t *r = vk_call_alloc(call, sizeof(*r));
  if (r == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_keys_call_init(&r->kc, call, "Redeem", true);
  r->req = (const Vkey__V1__RedeemRequest *)msg;
  vk_auth_bearer(r->kc.app, call, VK_ROLE_USER, false, redeem_authed, r);
}

static void redeem_read_done(vk_keys_call_t *kc, int status,
                             const redisReply *reply);

static void redeem_read(redeem_t *r) {
  vk_keys_call_t *kc = &r->kc;
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, r->k_grant);
  vk_keys_arg_key(kc, r->k_vehicle);
  vk_keys_arg_key(kc, r->k_user);
  vk_keys_arg_key(kc, r->k_veh_keys);
  if (r->has_idem) {
    vk_keys_arg_key(kc, r->k_idem);
  }
  vk_keys_arg_i64(kc, (int64_t)r->cs->key_type);
  vk_keys_eval(kc, &s_redeem_read, redeem_read_done);
}

static void redeem_verified(vk_crypto_job_t *job, int status, void *arg) {
  redeem_t *r = arg;
  vk_keys_call_t *kc = &r->kc;
  vk_call_t *call = kc->call;
  if (vk_call_is_done(call)) {
    vk_call_unref(call);
    return;
  }
  if (status != VK_OK) {
    vk_keys_fail(kc, VK_GRPC_UNAVAILABLE, "server shutting down");
  } else if (!job->ops[0].ok) {
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "code set signature does not verify: it was altered or not "
                 "issued by this service");
  } else {
    grant_hash(r->k_grant, r->cs->grant_id);
    vk_store_vehicle(r->k_vehicle, kc->vin);
    vk_store_user(r->k_user, kc->who.subject);
    vk_store_vehicle_sub(r->k_veh_keys, kc->vin, "keys");
    r->has_idem = vk_keys_idem_key(kc, r->req->request_id, r->k_idem);
    redeem_read(r);
  }
  vk_call_unref(call);
}

// redeem_check_grant applies the code set's own limits and the grant's
// state: outstanding, not expired, for this caller, and for a code set
// shared on, the policy still lets it be and its parent grants still hold.
static bool redeem_check_grant(redeem_t *r, const redisReply *reply,
                               const Vkey__V1__KeyPolicy *policy) {
  vk_keys_call_t *kc = &r->kc;
  const Vkey__V1__CodeSet *cs = r->cs;
  int64_t gstatus, now_s = vk_wall_ms() / 1000;
  size_t cs_len;
  const char *stored = vk_keys_reply_str(reply, 2, &cs_len);
  const char *pok = vk_keys_reply_str(reply, 7, NULL);
  if (!vk_keys_reply_i64(reply, 1, 0, &gstatus) || gstatus == 0 ||
      cs_len != r->scs->code_set.len ||
      memcmp(stored, r->scs->code_set.data, cs_len) != 0) {
    fail_grant_status(kc, 0);
    return false;
  }
  if (gstatus != GS_OUTSTANDING) {
    fail_grant_status(kc, (int)gstatus);
    return false;
  }
  if (now_s >= cs->expires_at) {
    fail_grant_status(kc, GS_EXPIRED);
    return false;
  }
  if (cs->recipient_user_id[0] != '\0' &&
      strcmp(cs->recipient_user_id, kc->who.subject) != 0) {
    vk_keys_fail(kc, VK_GRPC_PERMISSION_DENIED,
                 "this code set is for another user");
    return false;
  }
  if (cs->share_depth == 0 && strcmp(r->granted_by, r->owner) != 0) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                 "the vehicle changed owner after the code set was made");
    return false;
  }
  if (cs->share_depth > 0 && (policy == NULL || !policy->sharing_allowed ||
                              cs->share_depth > policy->max_share_depth)) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                 "the vehicle's key policy no longer lets keys be shared on "
                 "this far");
    return false;
  }
  if (pok == NULL || strcmp(pok, "1") != 0) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                 "the grant this code set was shared from is no longer in "
                 "force");
    return false;
  }
  if ((r->functions & ~vk_keys_policy_grantable(policy)) != 0) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                 "the vehicle's key policy no longer lets these functions be "
                 "granted");
    return false;
  }
  if (cs->validity != NULL && cs->validity->not_after != 0 &&
      cs->validity->not_after <= now_s) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                 "the keys' validity window has already ended");
    return false;
  }
  return true;
}

static void redeem_sign(redeem_t *r);

// redeem_decide runs the checks that need the stored state. Element 1.. of
// the reply as kLuaRedeemRead documents.
static void redeem_decide(redeem_t *r, const redisReply *reply) {
  vk_keys_call_t *kc = &r->kc;
  size_t by_len, par_len, veh_len, owner_len, pol_len, user_len;
  const char *by = vk_keys_reply_str(reply, 3, &by_len);
  const char *par = vk_keys_reply_str(reply, 4, &par_len);
  const char *veh = vk_keys_reply_str(reply, 8, &veh_len);
  const char *owner = vk_keys_reply_str(reply, 9, &owner_len);
  const char *pol = vk_keys_reply_str(reply, 10, &pol_len);
  const char *user = vk_keys_reply_str(reply, 11, &user_len);
  int64_t count;
  if (by == NULL || par == NULL || veh == NULL || owner == NULL ||
      pol == NULL || user == NULL ||
      vk_keys_reply_str(reply, 2, NULL) == NULL ||
      !vk_keys_reply_i64(reply, 5, 0, &r->created_at) ||
      !vk_keys_reply_i64(reply, 12, 0, &count)) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
    return;
  }
  kc->vin_registered = veh_len > 0;
  Vkey__V1__KeyPolicy *policy;
  r->granted_by = vk_keys_dup(kc, by, by_len);
  r->parents = vk_keys_dup(kc, par, par_len);
  r->owner = vk_keys_dup(kc, owner, owner_len);
  r->policy = vk_keys_dup(kc, pol, pol_len);
  r->policy_len = pol_len;
  if (r->granted_by == NULL || r->parents == NULL || r->owner == NULL ||
      r->policy == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (!vk_keys_policy_parse(kc, pol, pol_len, &policy)) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL,
                 "the vehicle's key policy does not parse");
    return;
  }
  if (!redeem_check_grant(r, reply, policy) ||
      !check_party(kc, veh, veh_len, owner_len, user, user_len)) {
    return;
  }
  r->max_of_type = vk_keys_policy_max_keys(policy, (int)r->cs->key_type);
  if (r->max_of_type > 0 && count >= (int64_t)r->max_of_type) {
    vk_keys_failf(kc, VK_GRPC_RESOURCE_EXHAUSTED,
                  "the vehicle's key policy allows at most %u keys of this "
                  "type",
                  r->max_of_type);
    return;
  }
  redeem_sign(r);
}

static void redeem_read_done(vk_keys_call_t *kc, int status,
                             const redisReply *reply) {
  redeem_t *r = vk_container_of(kc, redeem_t, kc);
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "IDEM")) {
    vk_keys_respond_stored(kc, &vkey__v1__redeem_response__descriptor, reply);
  } else if (vk_keys_reply_tag(reply, "STATE") && reply->elements == 13) {
    redeem_decide(r, reply);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

static void redeem_write(redeem_t *r);

static void redeem_signed(vk_crypto_job_t *job, int status, void *arg) {
  redeem_t *r = arg;
  vk_keys_call_t *kc = &r->kc;
  vk_call_t *call = kc->call;
  if (!vk_call_is_done(call) && vk_keys_sign_result(kc, job, status)) {
    bool ok = true;
    for (size_t i = 0; ok && i < r->n_keys; i++) {
      ok = vk_keys_issue_finish(kc, &r->keys[i], &job->ops[i]);
    }
    if (ok) {
      redeem_write(r);
    }
  }
  vk_call_unref(call);
}

// redeem_sign makes one key per granted function for the caller's phone
// and signs them all as one worker job.
static void redeem_sign(redeem_t *r) {
  vk_keys_call_t *kc = &r->kc;
  const Vkey__V1__CodeSet *cs = r->cs;
  kc->now_ms = vk_wall_ms();
  r->n_keys = 0;
  for (int f = 1; f <= VK_KEYTOKEN_FUNCTION_MAX; f++) {
    vk_function_mask_t bit = (vk_function_mask_t)1 << f;
    if ((r->functions & bit) == 0) {
      continue;
    }
    vk_keys_issue_t *k = &r->keys[r->n_keys];
    vk_keys_issue_params_t p = {
        .vin = kc->vin,
        .holder = kc->who.subject,
        .holder_key_algorithm = r->req->holder_key_algorithm,
        .holder_public_key = r->req->holder_public_key,
        .key_type = cs->key_type,
        .functions = bit,
        .validity = cs->validity,
        .max_uses = cs->max_uses,
        .grant_id = cs->grant_id,
        .issued_by = kc->who.subject,
        .now_ms = kc->now_ms,
    };
    vk_keys_issue_init(kc, k, &p);
    if (!vk_keys_sign_prepare(kc, &r->job.ops[r->n_keys], &k->claims,
                              &k->claims_bytes)) {
      return;
    }
    r->n_keys++;
  }
  vk_keys_sign_submit(kc, &r->job, r->n_keys, redeem_signed, r);
}

static void redeem_written(vk_keys_call_t *kc, int status,
                           const redisReply *reply) {
  redeem_t *r = vk_container_of(kc, redeem_t, kc);
  int64_t gstatus;
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "OK")) {
    vk_keys_respond(kc, &r->resp.base);
  } else if (vk_keys_reply_tag(reply, "IDEM")) {
    vk_keys_respond_stored(kc, &vkey__v1__redeem_response__descriptor, reply);
  } else if (vk_keys_reply_tag(reply, "GRANT") &&
             vk_keys_reply_i64(reply, 1, 0, &gstatus)) {
    // Another redeem (on any instance) or a cancel won the race.
    fail_grant_status(kc, (int)gstatus);
  } else if (vk_keys_reply_tag(reply, "RETRY")) {
    if (++r->attempts >= VK_KEYS_MAX_ATTEMPTS) {
      vk_keys_fail(kc, VK_GRPC_ABORTED,
                   "the vehicle or its keys kept changing; try again");
      return;
    }
    redeem_read(r);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

// redeem_build makes the response (the keys and the redeemed grant) and the
// grant's keys field "<id>=<function>,...". False (the call failed) when
// out of memory.
static bool redeem_build(redeem_t *r, ProtobufCBinaryData *out_resp,
                         char **out_keys) {
  vk_keys_call_t *kc = &r->kc;
  size_t cap = r->n_keys * (VK_KEY_ID_LEN + 4) + 1;
  char *keys = vk_call_alloc(kc->call, cap);
  Vkey__V1__Grant *g = &r->grant;
  vkey__v1__grant__init(g);
  g->grant_id = r->cs->grant_id;
  g->status = GS_REDEEMED;
  g->code_set = r->cs;
  g->granted_by = r->granted_by;
  g->redeemed_by = kc->who.subject;
  g->created_at = r->created_at;
  g->updated_at = kc->now_ms / 1000;
  for (size_t i = 0; keys != NULL && i < r->n_keys; i++) {
    Vkey__V1__GrantKey *gk = &r->gkeys[i];
    vkey__v1__grant_key__init(gk);
    gk->key_id = r->keys[i].key_id;
    gk->function = r->keys[i].claims.functions[0];
    gk->status = ST_ACTIVE;
    r->gkey_ptrs[i] = gk;
    r->recs[i] = &r->keys[i].rec;
    size_t used = strlen(keys);
    snprintf(keys + used, cap - used, "%s%s=%d", i > 0 ? "," : "", gk->key_id,
             (int)gk->function);
  }
  g->keys = r->gkey_ptrs;
  g->n_keys = r->n_keys;
  vkey__v1__redeem_response__init(&r->resp);
  r->resp.keys = r->recs;
  r->resp.n_keys = r->n_keys;
  r->resp.grant = g;
  *out_keys = keys;
  if (keys == NULL ||
      !split_ids(kc, r->parents, strlen(r->parents), &g->parent_grant_ids,
                 &g->n_parent_grant_ids) ||
      !vk_keys_pack(kc, &r->resp.base, out_resp)) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return false;
  }
  return true;
}

// redeem_write issues the keys, delivers them to the vehicle and marks the
// grant redeemed, in one script.
static void redeem_write(redeem_t *r) {
  vk_keys_call_t *kc = &r->kc;
  ProtobufCBinaryData resp;
  char *keys;
  if (!redeem_build(r, &resp, &keys)) {
    return;
  }
  char k[VK_REDIS_KEY_MAX], notify[VK_REDIS_KEY_MAX], detail[160];
  vk_store_vehicle_sub(notify, kc->vin, "notify");
  snprintf(detail, sizeof(detail), "grant=%s keys=%zu holder=%s",
           r->cs->grant_id, r->n_keys, kc->who.subject);
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, r->k_vehicle);
  vk_keys_arg_key(kc, r->k_grant);
  vk_keys_arg_key(kc, r->k_user);
  vk_keys_arg_key(kc, r->k_veh_keys);
  vk_store_user_keys(k, kc->who.subject);
  vk_keys_arg_key(kc, k);
  vk_store_vehicle_sub(k, kc->vin, "outbox");
  vk_keys_arg_key(kc, k);
  vk_store_vehicle_sub(k, kc->vin, "audit");
  vk_keys_arg_key(kc, k);
  for (size_t i = 0; i < r->n_keys; i++) {
    vk_store_key(k, r->keys[i].key_id);
    vk_keys_arg_key(kc, k);
  }
  if (r->has_idem) {
    vk_keys_arg_key(kc, r->k_idem);
  }
  vk_keys_arg_i64(kc, (int64_t)r->n_keys);  // 1
  vk_keys_arg_str(kc, r->owner);
  vk_keys_arg_bin(kc, r->policy, r->policy_len);
  vk_keys_arg_bin(kc, r->scs->code_set.data, r->scs->code_set.len);
  vk_keys_arg_i64(kc, kc->now_ms);  // 5
  vk_keys_arg_i64(kc, kc->now_ms / 1000);
  vk_keys_arg_str(kc, kc->actor);
  vk_keys_arg_str(kc, kc->vin);
  vk_keys_arg_str(kc, r->cs->grant_id);
  vk_keys_arg_str(kc, vk_keys_dup(kc, notify, strlen(notify)));  // 10
  vk_keys_arg_str(kc, kc->who.subject);
  vk_keys_arg_i64(kc, (int64_t)r->cs->key_type);
  vk_keys_arg_i64(kc, (int64_t)r->max_of_type);
  vk_keys_arg_bin(kc, resp.data, resp.len);
  vk_keys_arg_str(kc, keys);  // 15
  vk_keys_arg_str(kc, r->parents);
  vk_keys_arg_str(kc, vk_keys_dup(kc, detail, strlen(detail)));
  for (size_t i = 0; i < r->n_keys; i++) {
    const vk_keys_issue_t *ki = &r->keys[i];
    vk_keys_arg_str(kc, ki->key_id);
    vk_keys_arg_bin(kc, ki->rec_bytes.data, ki->rec_bytes.len);
    vk_keys_arg_bin(kc, ki->sk_bytes.data, ki->sk_bytes.len);
    vk_keys_arg_i64(kc, (int64_t)ki->claims.functions[0]);
  }
  vk_keys_eval(kc, &s_redeem_write, redeem_written);
}

// --- CancelGrant and RevokeGrant ---------------------------------------------

typedef struct {
  vk_keys_call_t kc;
  const char *request_id;
  const char *req_grant_id;
  bool revoke;
  int attempts;
  bool has_idem;
  char k_grant[VK_REDIS_KEY_MAX];
  char k_vehicle[VK_REDIS_KEY_MAX];
  char k_grants[VK_REDIS_KEY_MAX];
  char k_idem[VK_REDIS_KEY_MAX];
  // What the read saw; the write re-checks it.
  char *rev;
  char *owner;
  char *cascade_grants;
  char *cascade_keys;
  Vkey__V1__Grant *grant;
  Vkey__V1__CancelGrantResponse cresp;
  Vkey__V1__RevokeGrantResponse rresp;
} gmanage_t;

static void gmanage_read_done(vk_keys_call_t *kc, int status,
                              const redisReply *reply);

static void gmanage_read(gmanage_t *m) {
  vk_keys_call_t *kc = &m->kc;
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, m->k_grant);
  vk_keys_arg_key(kc, m->k_vehicle);
  vk_keys_arg_key(kc, m->k_grants);
  if (m->has_idem) {
    vk_keys_arg_key(kc, m->k_idem);
  }
  vk_keys_arg_i64(kc, vk_wall_ms() / 1000);
  vk_keys_arg_str(kc, m->revoke ? "1" : "0");
  vk_keys_arg_str(kc, kc->grant_id);
  vk_keys_eval(kc, &s_grant_read, gmanage_read_done);
}

static void gmanage_authed(vk_call_t *call, const vk_identity_t *who,
                           void *arg) {
  gmanage_t *m = arg;
  vk_keys_call_t *kc = &m->kc;
  (void)call;
  vk_keys_set_identity(kc, who);
  if (!vk_request_id_valid(m->request_id)) {
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT,
                 "request_id: at most 64 printable characters without spaces");
    return;
  }
  if (!vk_key_id_valid(m->req_grant_id)) {
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT,
                 "grant_id: want <VIN>.<16 lowercase hex digits>");
    return;
  }
  set_grant(kc, m->req_grant_id);
  grant_hash(m->k_grant, kc->grant_id);
  vk_store_vehicle(m->k_vehicle, kc->vin);
  vk_store_vehicle_sub(m->k_grants, kc->vin, "grants");
  m->has_idem = vk_keys_idem_key(kc, m->request_id, m->k_idem);
  gmanage_read(m);
}

static void gmanage_begin(vk_call_t *call, bool revoke, const char *request_id,
                          const char *grant_id) {
  gmanage_t *m = vk_call_alloc(call, sizeof(*m));
  if (m == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_keys_call_init(&m->kc, call, revoke ? "RevokeGrant" : "CancelGrant", true);
  m->revoke = revoke;
  m->request_id = request_id;
  m->req_grant_id = grant_id;
  vk_auth_bearer(m->kc.app, call, VK_ROLE_USER, true, gmanage_authed, m);
}

static void cancel_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const Vkey__V1__CancelGrantRequest *req =
      (const Vkey__V1__CancelGrantRequest *)msg;
  gmanage_begin(call, false, req->request_id, req->grant_id);
}

static void revoke_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const Vkey__V1__RevokeGrantRequest *req =
      (const Vkey__V1__RevokeGrantRequest *)msg;
  gmanage_begin(call, true, req->request_id, req->grant_id);
}

// gmanage_allowed: the vehicle's owner and the grant's author manage a
// grant; an operator may too.
static bool gmanage_allowed(gmanage_t *m) {
  vk_keys_call_t *kc = &m->kc;
  if (kc->who.role == VK_ROLE_OPERATOR ||
      strcmp(m->owner, kc->who.subject) == 0 ||
      strcmp(m->grant->granted_by, kc->who.subject) == 0) {
    return true;
  }
  vk_keys_failf(kc, VK_GRPC_PERMISSION_DENIED,
                "only the vehicle's owner or the grant's author may %s it",
                m->revoke ? "revoke" : "cancel");
  return false;
}

// gmanage_transition checks the grant's state for the operation and sets
// the outcome in the Grant to answer.
static bool gmanage_transition(gmanage_t *m) {
  vk_keys_call_t *kc = &m->kc;
  Vkey__V1__Grant *g = m->grant;
  int s = (int)g->status;
  if (s == GS_CANCELLED || s == GS_REVOKED) {
    vk_keys_failf(kc, VK_GRPC_FAILED_PRECONDITION, "the grant is %s%s",
                  (s == GS_CANCELLED) == !m->revoke ? "already " : "",
                  s == GS_CANCELLED ? "cancelled" : "revoked");
    return false;
  }
  if (!m->revoke && s == GS_REDEEMED) {
    vk_keys_fail(kc, VK_GRPC_FAILED_PRECONDITION,
                 "code set already redeemed: revoke the grant instead");
    return false;
  }
  if (s != GS_OUTSTANDING && s != GS_EXPIRED && s != GS_REDEEMED) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "the grant has an unknown status");
    return false;
  }
  g->status = m->revoke ? GS_REVOKED : GS_CANCELLED;
  g->updated_at = vk_wall_ms() / 1000;
  for (size_t i = 0; m->revoke && i < g->n_keys; i++) {
    Vkey__V1__GrantKey *k = g->keys[i];
    if (k->status == ST_ACTIVE || k->status == ST_SUSPENDED) {
      k->status = ST_REVOKED;  // the cascade revokes every live one
    }
  }
  return true;
}

static void gmanage_write(gmanage_t *m);

// gmanage_decide runs on a {'GRANT', ...} read (kLuaGrantRead).
static void gmanage_decide(gmanage_t *m, const redisReply *reply) {
  vk_keys_call_t *kc = &m->kc;
  size_t rev_len, owner_len, gs_len, ks_len;
  const char *rev = vk_keys_reply_str(reply, 1, &rev_len);
  const char *owner = vk_keys_reply_str(reply, 3, &owner_len);
  const char *gs = vk_keys_reply_str(reply, 4 + kViewFields, &gs_len);
  const char *ks = vk_keys_reply_str(reply, 5 + kViewFields, &ks_len);
  m->grant = grant_from_view(kc, reply, 4, kc->grant_id);
  if (rev == NULL || owner == NULL || gs == NULL || ks == NULL ||
      m->grant == NULL) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
    return;
  }
  kc->vin_registered = true;
  m->rev = vk_keys_dup(kc, rev, rev_len);
  m->owner = vk_keys_dup(kc, owner, owner_len);
  m->cascade_grants = vk_keys_dup(kc, gs, gs_len);
  m->cascade_keys = vk_keys_dup(kc, ks, ks_len);
  if (m->rev == NULL || m->owner == NULL || m->cascade_grants == NULL ||
      m->cascade_keys == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (!gmanage_allowed(m) || !gmanage_transition(m)) {
    return;
  }
  kc->now_ms = vk_wall_ms();
  if (m->revoke) {
    vkey__v1__revoke_grant_response__init(&m->rresp);
    m->rresp.grant = m->grant;
    m->rresp.keys_revoked = (uint32_t)count_items(ks, ks_len);
    m->rresp.grants_revoked = (uint32_t)count_items(gs, gs_len);
  } else {
    vkey__v1__cancel_grant_response__init(&m->cresp);
    m->cresp.grant = m->grant;
  }
  gmanage_write(m);
}

static void gmanage_read_done(vk_keys_call_t *kc, int status,
                              const redisReply *reply) {
  gmanage_t *m = vk_container_of(kc, gmanage_t, kc);
  size_t veh_len = 0;
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "IDEM")) {
    vk_keys_respond_stored(kc,
                           m->revoke
                               ? &vkey__v1__revoke_grant_response__descriptor
                               : &vkey__v1__cancel_grant_response__descriptor,
                           reply);
  } else if (vk_keys_reply_tag(reply, "NOGRANT")) {
    kc->vin_registered =
        vk_keys_reply_str(reply, 1, &veh_len) != NULL && veh_len > 0;
    vk_keys_fail(kc, VK_GRPC_NOT_FOUND, "no such grant");
  } else if (vk_keys_reply_tag(reply, "GRANT") &&
             reply->elements == 6 + kViewFields) {
    gmanage_decide(m, reply);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

static void gmanage_written(vk_keys_call_t *kc, int status,
                            const redisReply *reply) {
  gmanage_t *m = vk_container_of(kc, gmanage_t, kc);
  const ProtobufCMessageDescriptor *desc =
      m->revoke ? &vkey__v1__revoke_grant_response__descriptor
                : &vkey__v1__cancel_grant_response__descriptor;
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "OK")) {
    vk_keys_respond(kc, m->revoke ? &m->rresp.base : &m->cresp.base);
  } else if (vk_keys_reply_tag(reply, "IDEM")) {
    vk_keys_respond_stored(kc, desc, reply);
  } else if (vk_keys_reply_tag(reply, "RETRY")) {
    if (++m->attempts >= VK_KEYS_MAX_ATTEMPTS) {
      vk_keys_fail(kc, VK_GRPC_ABORTED, "the grant kept changing; try again");
      return;
    }
    gmanage_read(m);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

// gmanage_write stores the cancel, or the revoke with its cascade and the
// vehicle's REVOKED events, in one script.
static void gmanage_write(gmanage_t *m) {
  vk_keys_call_t *kc = &m->kc;
  ProtobufCBinaryData resp;
  if (!vk_keys_pack(kc, m->revoke ? &m->rresp.base : &m->cresp.base, &resp)) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  char k[VK_REDIS_KEY_MAX];
  vk_keys_args_begin(kc);
  if (m->revoke) {
    vk_keys_arg_key(kc, m->k_vehicle);
    vk_keys_arg_key(kc, m->k_grant);
    vk_keys_arg_key(kc, m->k_grants);
    vk_store_vehicle_sub(k, kc->vin, "outbox");
    vk_keys_arg_key(kc, k);
  } else {
    vk_keys_arg_key(kc, m->k_grant);
    vk_keys_arg_key(kc, m->k_vehicle);
  }
  vk_store_vehicle_sub(k, kc->vin, "audit");
  vk_keys_arg_key(kc, k);
  if (m->has_idem) {
    vk_keys_arg_key(kc, m->k_idem);
  }
  vk_keys_arg_str(kc, m->rev);  // 1
  vk_keys_arg_str(kc, m->owner);
  vk_keys_arg_i64(kc, kc->now_ms);
  vk_keys_arg_i64(kc, kc->now_ms / 1000);
  vk_keys_arg_str(kc, kc->actor);  // 5
  vk_keys_arg_str(kc, kc->vin);
  vk_keys_arg_str(kc, kc->grant_id);
  if (m->revoke) {
    vk_store_vehicle_sub(k, kc->vin, "notify");
    vk_keys_arg_str(kc, vk_keys_dup(kc, k, strlen(k)));
  }
  vk_keys_arg_bin(kc, resp.data, resp.len);
  if (m->revoke) {
    vk_keys_arg_str(kc, m->cascade_grants);  // 10
    vk_keys_arg_str(kc, m->cascade_keys);
  }
  vk_keys_eval(kc, m->revoke ? &s_revoke_write : &s_cancel_write,
               gmanage_written);
}

// --- ListGrants --------------------------------------------------------------

typedef struct {
  vk_keys_call_t kc;
  const Vkey__V1__ListGrantsRequest *req;
  uint32_t page_size;
} glist_t;

// glist_page answers one page reply (kLuaListGrants).
static void glist_page(glist_t *l, const redisReply *reply) {
  vk_keys_call_t *kc = &l->kc;
  const size_t per = 2 + kViewFields;
  int64_t more;
  if (!vk_keys_reply_i64(reply, 1, 0, &more) ||
      (reply->elements - 2) % per != 0) {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
    return;
  }
  size_t n = (reply->elements - 2) / per;
  Vkey__V1__ListGrantsResponse resp = VKEY__V1__LIST_GRANTS_RESPONSE__INIT;
  resp.grants = vk_call_alloc(kc->call, (n + 1) * sizeof(*resp.grants));
  if (resp.grants == NULL) {
    vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  for (size_t i = 0; i < n; i++) {
    size_t at = 2 + per * i;
    const char *id = vk_keys_reply_str(reply, at, NULL);
    Vkey__V1__Grant *g = id != NULL && vk_key_id_valid(id)
                             ? grant_from_view(kc, reply, at + 2, id)
                             : NULL;
    if (g == NULL) {
      vk_keys_fail(kc, VK_GRPC_INTERNAL, "stored grant does not parse");
      return;
    }
    resp.grants[resp.n_grants++] = g;
  }
  if (more != 0 && n > 0) {
    size_t last = 2 + per * (n - 1);
    size_t score_len;
    const char *score = vk_keys_reply_str(reply, last + 1, &score_len);
    char tok[64];
    snprintf(tok, sizeof(tok), "%.*s:%s", (int)score_len,
             score != NULL ? score : "0", resp.grants[n - 1]->grant_id);
    resp.next_page_token = vk_keys_dup(kc, tok, strlen(tok));
    if (resp.next_page_token == NULL) {
      vk_keys_fail(kc, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
  }
  vk_keys_respond(kc, &resp.base);
}

static void glist_done(vk_keys_call_t *kc, int status,
                       const redisReply *reply) {
  glist_t *l = vk_container_of(kc, glist_t, kc);
  if (status != VK_OK || reply->type != REDIS_REPLY_ARRAY) {
    vk_keys_unavailable(kc, status, reply);
  } else if (vk_keys_reply_tag(reply, "NOENT")) {
    vk_keys_failf(kc, VK_GRPC_NOT_FOUND, "vehicle %s is not registered",
                  kc->vin);
  } else if (vk_keys_reply_tag(reply, "PAGE")) {
    glist_page(l, reply);
  } else {
    vk_keys_fail(kc, VK_GRPC_INTERNAL, "unexpected key store reply");
  }
}

static void glist_authed(vk_call_t *call, const vk_identity_t *who, void *arg) {
  glist_t *l = arg;
  vk_keys_call_t *kc = &l->kc;
  const Vkey__V1__ListGrantsRequest *req = l->req;
  (void)call;
  vk_keys_set_identity(kc, who);
  char score[24], after[VK_KEY_ID_LEN + 1];
  const Vkey__V1__PageRequest *page = req->page;
  if (!vk_vin_valid(req->vin)) {
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT,
                 "vin: 17 characters of ISO 3779");
    return;
  }
  if ((int)req->status < 0 || (int)req->status > GS_EXPIRED) {
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT, "status: unknown");
    return;
  }
  if (!vk_keys_page_token_parse(page != NULL ? page->page_token : "", score,
                                after)) {
    vk_keys_fail(kc, VK_GRPC_INVALID_ARGUMENT, "page.page_token is not ours");
    return;
  }
  snprintf(kc->vin, sizeof(kc->vin), "%s", req->vin);
  uint32_t size = page != NULL ? page->page_size : 0;
  l->page_size = size == 0 ? kPageDefault : size > kPageMax ? kPageMax : size;
  char k_index[VK_REDIS_KEY_MAX], k_vehicle[VK_REDIS_KEY_MAX];
  vk_store_vehicle_sub(k_index, kc->vin, "grants");
  vk_store_vehicle(k_vehicle, kc->vin);
  vk_keys_args_begin(kc);
  vk_keys_arg_key(kc, k_index);
  vk_keys_arg_key(kc, k_vehicle);
  vk_keys_arg_str(kc, vk_keys_dup(kc, score, strlen(score)));
  vk_keys_arg_str(kc, vk_keys_dup(kc, after, strlen(after)));
  vk_keys_arg_i64(kc, (int64_t)l->page_size);
  // kc's copy: `who` may be the token cache's slot (see keys.c ListKeys).
  vk_keys_arg_str(kc, who->role == VK_ROLE_OPERATOR ? "" : kc->who.subject);
  vk_keys_arg_i64(kc, vk_wall_ms() / 1000);
  vk_keys_arg_i64(kc, (int64_t)req->status);
  vk_keys_eval(kc, &s_list_grants, glist_done);
}

static void glist_start(vk_call_t *call, const ProtobufCMessage *msg) {
  glist_t *l = vk_call_alloc(call, sizeof(*l));
  if (l == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vk_keys_call_init(&l->kc, call, "ListGrants", false);
  l->req = (const Vkey__V1__ListGrantsRequest *)msg;
  vk_auth_bearer(l->kc.app, call, VK_ROLE_USER, true, glist_authed, l);
}

// --- the service -------------------------------------------------------------

static const vk_method_t auth_methods[] = {
    {
        .name = "Authorize",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__authorize_request__descriptor,
        .output = &vkey__v1__authorize_response__descriptor,
        .on_start = authorize_start,
    },
    {
        .name = "Redeem",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__redeem_request__descriptor,
        .output = &vkey__v1__redeem_response__descriptor,
        .on_start = redeem_start,
    },
    {
        .name = "ListGrants",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__list_grants_request__descriptor,
        .output = &vkey__v1__list_grants_response__descriptor,
        .on_start = glist_start,
    },
    {
        .name = "CancelGrant",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__cancel_grant_request__descriptor,
        .output = &vkey__v1__cancel_grant_response__descriptor,
        .on_start = cancel_start,
    },
    {
        .name = "RevokeGrant",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__revoke_grant_request__descriptor,
        .output = &vkey__v1__revoke_grant_response__descriptor,
        .on_start = revoke_start,
    },
};

// The scripts' hashes are computed once, whichever loop asks first.
static pthread_once_t s_scripts_once = PTHREAD_ONCE_INIT;

static void init_scripts(void) {
  vk_keys_script_init(&s_authorize_read);
  vk_keys_script_init(&s_authorize_write);
  vk_keys_script_init(&s_redeem_read);
  vk_keys_script_init(&s_redeem_write);
  vk_keys_script_init(&s_grant_read);
  vk_keys_script_init(&s_cancel_write);
  vk_keys_script_init(&s_revoke_write);
  vk_keys_script_init(&s_list_grants);
}

const vk_service_t *vk_authorization_service(vk_app_t *app) {
  pthread_once(&s_scripts_once, init_scripts);
  app->authorization_service =
      (vk_service_t){.name = "vkey.v1.AuthorizationService",
                     .methods = auth_methods,
                     .n_methods = VK_ARRAY_LEN(auth_methods),
                     .ctx = app};
  return &app->authorization_service;
}
