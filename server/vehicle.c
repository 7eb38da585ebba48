// vehicle.c: vkey.v1.VehicleService, the vehicle end of seed 000: delivery
// of keys and their changes (S240/S250), acknowledgement, and the vehicle's
// key management information (S260).
//
// Delivery. Writers append each key event to the vehicle's outbox stream
// (entry id "<seq>-1") and PUBLISH the seq on its notify channel, in one Lua
// script (docs/ARCHITECTURE.md). A channel (OpenChannel) is a server stream
// that reads the outbox after max(acked, last sent) in pages and sends each
// entry as a KeyEvent; then it waits, costing only its call and a small
// chan_t in the call's arena (no timer, no worker, no buffered events): the
// hub (hub.c) wakes it when a notification arrives or when its vehicle's
// subscription is (re)confirmed, and it reads again. Reads are serialised
// per channel (`reading`, `again`), and `last_sent` only grows, so a channel
// never sends a seq twice or out of order, whichever instance appended the
// event and however many notifications were lost. A full send queue
// (VK_EAGAIN) stops the channel until on_writable; the next read starts
// after the last seq that went out.
//
// Acknowledgement (AckEvents) moves `acked` forward and trims the outbox up
// to it: delivery is at-least-once and the vehicle applies each seq once.
// We keep no history behind `acked` (the audit stream has it).
//
// Management information (ReportManagementInfo) stores the vehicle's policy
// and key usage and reconciles its key store with ours: keys we hold active
// or suspended that it lacks (or holds at another version) are delivered
// again, keys it holds that we revoked, deleted or never issued are revoked
// again. A read script decides (and returns the records of the keys to
// deliver, whose SignedKey C extracts); a write script re-checks every
// key's `rev` and appends the events, the audit and the idempotency record
// atomically. Losing that compare-and-set race retries from the read.
// Keys with events the vehicle has not acknowledged yet are left alone:
// those events bring it up to date.
#include "vehicle.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#include "audit.h"
#include "hub.h"
#include "identity.h"
#include "log.h"
#include "store.h"
#include "vkey/v1/common.pb-c.h"
#include "vkey/v1/vehicle.pb-c.h"

typedef Vkey__V1__OpenChannelRequest open_req_t;
typedef Vkey__V1__AckEventsRequest ack_req_t;
typedef Vkey__V1__ReportManagementInfoRequest report_req_t;
typedef Vkey__V1__ReportManagementInfoResponse report_resp_t;

enum {
  kPage = 64,             // outbox entries per read
  kMaxStoredKeys = 1000,  // ReportManagementInfo limits
  kMaxUsage = 1000,
  kMaxShareDepth = 8,
  kMaxCodeSetTtlS = 30 * 24 * 3600,
  kMaxGrantable = 16,
  kMaxKeysPerType = 1000,
  kReportAttempts = 3,  // compare-and-set retries before ABORTED
};

// Lua numbers are doubles: counters and versions beyond 2^53 would round.
#define VK__MAX_EXACT ((uint64_t)1 << 53)

// ------------------------------------------------------------ Lua scripts

// Channel read. KEYS: vehicle hash, outbox. ARGV: last seq sent, page size.
// Returns {"OK", entries} | {"DISABLED"} | {"GONE"}.
static const char kReadScript[] =
    "local v = redis.call('HMGET', KEYS[1], 'status', 'acked')\n"
    "if not v[1] then return {'GONE'} end\n"
    "if v[1] ~= '1' then return {'DISABLED'} end\n"
    "local from = tonumber(v[2] or '0') or 0\n"
    "local sent = tonumber(ARGV[1])\n"
    "if sent > from then from = sent end\n"
    "return {'OK', redis.call('XRANGE', KEYS[2], "
    "string.format('%d-0', from + 1), '+', 'COUNT', ARGV[2])}\n";

// AckEvents. KEYS: vehicle hash, outbox. ARGV: seq.
// Returns {"OK", acked} | {"RANGE", last seq}.
static const char kAckScript[] =
    "local last = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') or 0\n"
    "local want = tonumber(ARGV[1])\n"
    "if want > last then return {'RANGE', string.format('%d', last)} end\n"
    "local acked = tonumber(redis.call('HGET', KEYS[1], 'acked') or '0') or 0\n"
    "if want > acked then\n"
    "  acked = want\n"
    "  redis.call('HSET', KEYS[1], 'acked', ARGV[1])\n"
    "end\n"
    "redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', acked + 1))\n"
    "return {'OK', string.format('%d', acked)}\n";

// Reconciliation, read half. KEYS: vehicle hash, keys zset, outbox, idem.
// ARGV: idem flag, key-hash prefix, then (key id, version) per stored key.
// Returns {"IDEM", response} | {"OK", {id, type, version, status, rev,
// record}...}: records only for the keys to deliver again. The key hashes
// are named from the prefix, not passed as KEYS: they share the vehicle's
// hash tag, so they are in the same cluster slot.
static const char kReconcileReadScript[] =
    "if ARGV[1] == '1' then\n"
    "  local idem = redis.call('GET', KEYS[4])\n"
    "  if idem then return {'IDEM', idem} end\n"
    "end\n"
    "local prefix = ARGV[2]\n"
    "local acked = tonumber(redis.call('HGET', KEYS[1], 'acked') or '0') or 0\n"
    "local pending = {}\n"
    "local ents = redis.call('XRANGE', KEYS[3], "
    "string.format('%d-0', acked + 1), '+', 'COUNT', 4096)\n"
    "for _, e in ipairs(ents) do\n"
    "  local f = e[2]\n"
    "  for i = 1, #f - 1, 2 do\n"
    "    if f[i] == 'k' then pending[f[i + 1]] = true end\n"
    "  end\n"
    "end\n"
    "local held = {}\n"
    "for i = 3, #ARGV - 1, 2 do held[ARGV[i]] = tonumber(ARGV[i + 1]) end\n"
    "local out = {'OK'}\n"
    "for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, 9999)) do\n"
    "  if not pending[id] then\n"
    "    local k = prefix .. id\n"
    "    local f = redis.call('HMGET', k, 'status', 'ver', 'rev')\n"
    "    if f[1] == '1' or f[1] == '2' then\n"
    "      local have = held[id]\n"
    "      if have == nil or have ~= (tonumber(f[2]) or 0) then\n"
    "        out[#out + 1] = {id, have == nil and '1' or '2', f[2] or '0',\n"
    "          f[1], f[3] or '', redis.call('HGET', k, 'record') or ''}\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "for i = 3, #ARGV - 1, 2 do\n"
    "  local id = ARGV[i]\n"
    "  if not pending[id] then\n"
    "    local f = redis.call('HMGET', prefix .. id, 'status', 'rev')\n"
    "    if f[1] ~= '1' and f[1] ~= '2' then\n"
    "      local del = f[1] == '4'\n"
    "      out[#out + 1] = {id, del and '6' or '5', ARGV[i + 1],\n"
    "        del and '4' or '3', f[2] or ''}\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

// Reconciliation, write half. KEYS: vehicle hash, outbox, vehicle audit,
// idem, notify channel. ARGV: now ms, actor, vin, response, idem flag,
// policy flag, policy, key-hash prefix, audit detail, #usage, (id, uses,
// last used)..., #events, (id, type, version, status, rev, sk)...
// Returns {"OK", last seq} | {"IDEM", response} | {"RACE", key id}.
// Every check comes before the first write, and each outbox append comes
// before its seq bump (as in keys.c): XADD is the one write that can fail
// (an id not above the stream's last), and then nothing is half done.
static const char kReconcileWriteScript[] = VK_AUDIT_LUA
    "local now, actor, vin = ARGV[1], ARGV[2], ARGV[3]\n"
    "if ARGV[5] == '1' then\n"
    "  local idem = redis.call('GET', KEYS[4])\n"
    "  if idem then return {'IDEM', idem} end\n"
    "end\n"
    "local prefix = ARGV[8]\n"
    "local nu = tonumber(ARGV[10])\n"
    "local ne = tonumber(ARGV[11 + 3 * nu])\n"
    "local e0 = 12 + 3 * nu\n"
    "for j = 0, ne - 1 do\n"
    "  local b = e0 + 6 * j\n"
    "  local rev = redis.call('HGET', prefix .. ARGV[b], 'rev') or ''\n"
    "  if rev ~= ARGV[b + 4] then return {'RACE', ARGV[b]} end\n"
    "end\n"
    "local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')\n"
    "if not seq then return redis.error_reply('vehicle seq is not a number') "
    "end\n"
    "local first = seq\n"
    "for j = 0, ne - 1 do\n"
    "  local b = e0 + 6 * j\n"
    "  seq = seq + 1\n"
    "  local add = {'XADD', KEYS[2], string.format('%d-1', seq), 't',\n"
    "    ARGV[b + 1], 'k', ARGV[b], 'v', ARGV[b + 2], 's', ARGV[b + 3],\n"
    "    'at', now}\n"
    "  if ARGV[b + 5] ~= '' then\n"
    "    add[#add + 1] = 'sk'\n"
    "    add[#add + 1] = ARGV[b + 5]\n"
    "  end\n"
    "  redis.call(unpack(add))\n"
    "  redis.call('HINCRBY', KEYS[1], 'seq', 1)\n"
    "  local op = 'RevokeKeyAgain'\n"
    "  if tonumber(ARGV[b + 1]) <= 2 then op = 'RedeliverKey' end\n"
    "  vk_audit(KEYS[3], now, actor, op, vin, ARGV[b], 'ok',\n"
    "    string.format('reconciliation, seq %d', seq))\n"
    "end\n"
    "if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'policy', ARGV[7]) "
    "end\n"
    "for j = 0, nu - 1 do\n"
    "  local b = 11 + 3 * j\n"
    "  local k = prefix .. ARGV[b]\n"
    "  if redis.call('EXISTS', k) == 1 then\n"
    "    local f = redis.call('HMGET', k, 'uses', 'last_used_at')\n"
    "    if tonumber(ARGV[b + 1]) > (tonumber(f[1]) or 0) then\n"
    "      redis.call('HSET', k, 'uses', ARGV[b + 1])\n"
    "    end\n"
    "    if tonumber(ARGV[b + 2]) > (tonumber(f[2]) or 0) then\n"
    "      redis.call('HSET', k, 'last_used_at', ARGV[b + 2])\n"
    "    end\n"
    "  end\n"
    "end\n"
    "vk_audit(KEYS[3], now, actor, 'ReportManagementInfo', vin, '', 'ok',\n"
    "  ARGV[9])\n"
    "if ARGV[5] == '1' then\n"
    "  redis.call('SET', KEYS[4], ARGV[4], 'EX', 86400)\n"
    "end\n"
    "if seq > first then\n"
    "  redis.call('PUBLISH', KEYS[5], string.format('%d', seq))\n"
    "end\n"
    "return {'OK', string.format('%d', seq)}\n";

// ---------------------------------------------------------------- helpers

static bool reply_str(const redisReply *r) {
  return r != NULL && r->type == REDIS_REPLY_STRING;
}

static bool reply_is(const redisReply *r, const char *lit) {
  return reply_str(r) && r->len == strlen(lit) &&
         memcmp(r->str, lit, r->len) == 0;
}

// parse_u64 reads 1-20 decimal digits (nothing else) without overflow.
static bool parse_u64(const char *p, size_t len, uint64_t *out) {
  uint64_t v = 0;
  if (len == 0 || len > 20) {
    return false;
  }
  for (size_t i = 0; i < len; i++) {
    if (p[i] < '0' || p[i] > '9') {
      return false;
    }
    uint64_t d = (uint64_t)(p[i] - '0');
    if (v > (UINT64_MAX - d) / 10) {
      return false;
    }
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

static uint64_t reply_u64(const redisReply *r) {
  uint64_t v = 0;
  if (reply_str(r)) {
    parse_u64(r->str, r->len, &v);
  } else if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
    v = (uint64_t)r->integer;
  }
  return v;
}

// key_of_vehicle: a valid key id whose VIN part is `vin`.
static bool key_of_vehicle(const char *key_id, const char *vin) {
  return vk_key_id_valid(key_id) && memcmp(key_id, vin, VK_VIN_LEN) == 0;
}

// audit_refusal records a refused call of an authenticated vehicle, fire
// and forget: the answer does not wait for it.
static void audit_refusal(vk_app_t *app, const char *vin, const char *op,
                          vk_grpc_status_t status, const char *detail) {
  char actor[VK_AUDIT_ACTOR_MAX];
  snprintf(actor, sizeof(actor), "vehicle:%s", vin);
  vk_audit_record(app, vin, actor, op, NULL, vk_audit_result(status), detail);
}

// ------------------------------------------------------------ OpenChannel

// One open channel, in its call's arena. The hub link holds a call
// reference while joined; each read in flight holds another.
typedef struct {
  vk_hub_link_t link;  // recovered with container_of in hub callbacks
  vk_call_t *call;
  vk_app_t *app;
  uint64_t last_sent;  // highest seq sent on this channel
  bool reading;        // a read is in flight
  bool again;          // woken during the read: read once more after it
  bool blocked;        // the send queue is full: on_writable resumes
  bool joined;         // linked to the hub (holds a call reference)
  char vin[VK_VIN_LEN + 1];
} chan_t;

static void chan_pump(chan_t *ch);

// chan_leave unlinks the channel and drops the link's call reference, which
// may free `ch` with the call: the caller must not touch `ch` after unless
// it holds a reference of its own.
static void chan_leave(chan_t *ch) {
  if (!ch->joined) {
    return;
  }
  ch->joined = false;
  vk_hub_leave(&ch->link);
  vk_call_unref(ch->call);
}

static void chan_fail(chan_t *ch, vk_grpc_status_t status, const char *msg) {
  vk_call_finish(ch->call, status, msg);
  chan_leave(ch);
}

// entry_field returns the value of `name` in an XRANGE entry's field list.
static const redisReply *entry_field(const redisReply *fields,
                                     const char *name) {
  for (size_t i = 0; i + 1 < fields->elements; i += 2) {
    if (reply_is(fields->element[i], name)) {
      return fields->element[i + 1];
    }
  }
  return NULL;
}

// entry_seq reads "<seq>-1", the entry id the writers use.
static bool entry_seq(const redisReply *id, uint64_t *out) {
  if (!reply_str(id)) {
    return false;
  }
  const char *dash = memchr(id->str, '-', id->len);
  return dash != NULL && parse_u64(id->str, (size_t)(dash - id->str), out);
}

// chan_send_entry sends one outbox entry. Returns 0 when sent, VK_EAGAIN
// when the send queue is full, another VK_E* when the call cannot go on.
// The event is built on the stack and the SignedKey is freed at once: a
// long-lived channel keeps nothing per message.
static int chan_send_entry(chan_t *ch, uint64_t seq, const redisReply *f) {
  Vkey__V1__KeyEvent ev = VKEY__V1__KEY_EVENT__INIT;
  const redisReply *k = entry_field(f, "k");
  const redisReply *sk = entry_field(f, "sk");
  int64_t at = (int64_t)reply_u64(entry_field(f, "at"));
  ev.seq = seq;
  ev.type = (Vkey__V1__KeyEventType)reply_u64(entry_field(f, "t"));
  ev.key_id = reply_str(k) ? k->str : (char *)"";
  ev.key_version = reply_u64(entry_field(f, "v"));
  ev.status = (Vkey__V1__KeyStatus)reply_u64(entry_field(f, "s"));
  ev.at_ms = at;
  if (reply_str(sk)) {
    ev.key =
        vkey__v1__signed_key__unpack(NULL, sk->len, (const uint8_t *)sk->str);
    if (ev.key == NULL) {
      vk_log(VK_LOG_ERROR, vk_call_id(ch->call),
             "vehicle %s: outbox seq %" PRIu64 " has a bad sk", ch->vin, seq);
    }
  }
  int rv = vk_call_send(ch->call, &ev.base);
  if (ev.key != NULL) {
    vkey__v1__signed_key__free_unpacked(ev.key, NULL);
  }
  return rv;
}

// chan_send_page sends the entries after last_sent, in order. Returns
// false when the channel must stop (blocked or failed).
static bool chan_send_page(chan_t *ch, const redisReply *entries) {
  for (size_t i = 0; i < entries->elements; i++) {
    const redisReply *e = entries->element[i];
    uint64_t seq;
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[1]->type != REDIS_REPLY_ARRAY ||
        !entry_seq(e->element[0], &seq)) {
      vk_log(VK_LOG_ERROR, vk_call_id(ch->call),
             "vehicle %s: malformed outbox entry", ch->vin);
      continue;
    }
    if (seq <= ch->last_sent) {
      continue;  // another channel's ack raced ours; never send twice
    }
    int rv = chan_send_entry(ch, seq, e->element[1]);
    if (rv == VK_EAGAIN) {
      ch->blocked = true;
      return false;
    }
    if (rv != VK_OK) {
      if (rv != VK_ECLOSED) {
        vk_log(VK_LOG_WARN, vk_call_id(ch->call), "vehicle %s: send: %s",
               ch->vin, vk_strerror(rv));
      }
      chan_fail(ch, VK_GRPC_INTERNAL, "cannot send the key event");
      return false;
    }
    ch->last_sent = seq;
  }
  return true;
}

static void chan_read_done(vk_redis_t *r, int status, const redisReply *reply,
                           void *priv) {
  (void)r;
  chan_t *ch = priv;
  vk_call_t *call = ch->call;  // our reference keeps `ch` valid to the end
  ch->reading = false;
  if (vk_call_is_done(call)) {
    vk_call_unref(call);
    return;
  }
  const redisReply *tag =
      status == VK_OK && reply->type == REDIS_REPLY_ARRAY && reply->elements
          ? reply->element[0]
          : NULL;
  if (reply_is(tag, "OK") && reply->elements == 2 &&
      reply->element[1]->type == REDIS_REPLY_ARRAY) {
    const redisReply *entries = reply->element[1];
    // A full page means there may be more; a wake-up during the read means
    // there may be news. Either way read on, from the new last_sent.
    if (chan_send_page(ch, entries) &&
        (entries->elements >= kPage || ch->again)) {
      chan_pump(ch);
    }
  } else if (reply_is(tag, "DISABLED")) {
    chan_fail(ch, VK_GRPC_FAILED_PRECONDITION, "vehicle is disabled");
  } else if (reply_is(tag, "GONE")) {
    chan_fail(ch, VK_GRPC_FAILED_PRECONDITION, "vehicle is not registered");
  } else {
    if (status == VK_OK && reply->type == REDIS_REPLY_ERROR) {
      vk_log(VK_LOG_ERROR, vk_call_id(call), "vehicle %s: outbox read: %s",
             ch->vin, reply->str);
    }
    chan_fail(ch, VK_GRPC_UNAVAILABLE, "key store unavailable");
  }
  vk_call_unref(call);
}

// chan_pump reads the outbox after last_sent, unless a read is already in
// flight (then it reads again after it) or the channel waits for
// on_writable (which reads then).
static void chan_pump(chan_t *ch) {
  if (vk_call_is_done(ch->call) || ch->blocked) {
    return;
  }
  if (ch->reading) {
    ch->again = true;
    return;
  }
  ch->again = false;
  char vkey[VK_REDIS_KEY_MAX];
  char outbox[VK_REDIS_KEY_MAX];
  char sent[24];
  char page[8];
  vk_store_vehicle(vkey, ch->vin);
  vk_store_vehicle_sub(outbox, ch->vin, "outbox");
  snprintf(sent, sizeof(sent), "%" PRIu64, ch->last_sent);
  snprintf(page, sizeof(page), "%d", kPage);
  int rv = vk_redis_command(ch->app->redis, chan_read_done, ch,
                            "EVAL %s 2 %s %s %s %s", kReadScript, vkey, outbox,
                            sent, page);
  if (rv == VK_OK) {
    ch->reading = true;
    vk_call_ref(ch->call);
  } else if (rv == VK_EBUSY) {
    vk_hub_defer(&ch->link);  // Redis is saturated: try again shortly
  } else {
    chan_fail(ch, VK_GRPC_UNAVAILABLE, "key store unavailable");
  }
}

static void chan_notify(vk_hub_link_t *link, uint64_t seq) {
  chan_t *ch = vk_container_of(link, chan_t, link);
  if (seq != 0 && seq <= ch->last_sent) {
    return;  // already sent: this channel appended it itself, or read ahead
  }
  chan_pump(ch);
}

static void chan_closed(vk_hub_link_t *link) {
  chan_t *ch = vk_container_of(link, chan_t, link);
  // The hub has unlinked us; the link's reference is still ours to drop.
  ch->joined = false;
  vk_call_finish(ch->call, VK_GRPC_UNAVAILABLE,
                 "server shutting down; reconnect");
  vk_call_unref(ch->call);
}

static const vk_hub_link_ops_t chan_ops = {
    .notify = chan_notify,
    .closed = chan_closed,
};

static void open_authed(vk_call_t *call, const vk_identity_t *who, void *arg) {
  vk_app_t *app = vk_call_service_ctx(call);
  (void)arg;
  if (app->hub == NULL) {
    vk_call_finish(call, VK_GRPC_UNAVAILABLE,
                   "vehicle channels are not served by this instance");
    return;
  }
  chan_t *ch = vk_call_alloc(call, sizeof(*ch));
  if (ch == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  ch->call = call;
  ch->app = app;
  memcpy(ch->vin, who->subject, VK_VIN_LEN);
  int rv = vk_hub_join(app->hub, &ch->link, ch->vin, &chan_ops);
  if (rv != VK_OK) {
    vk_call_finish(
        call,
        rv == VK_ECLOSED ? VK_GRPC_UNAVAILABLE : VK_GRPC_RESOURCE_EXHAUSTED,
        rv == VK_ECLOSED ? "server shutting down; reconnect" : "out of memory");
    return;
  }
  vk_call_ref(call);
  ch->joined = true;
  vk_call_set_data(call, ch);
  // Read at once: the backlog need not wait for the subscription, whose
  // confirmation makes the hub wake us for one more read (anything
  // published before it was effective is in the outbox by then).
  chan_pump(ch);
}

static void open_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const open_req_t *req = (const open_req_t *)msg;
  if (!vk_vin_valid(req->vin)) {
    vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT,
                   "vin: want 17 characters of ISO 3779");
    return;
  }
  vk_auth_vehicle(vk_call_service_ctx(call), call, req->vin, open_authed, NULL);
}

static void open_cancel(vk_call_t *call) {
  chan_t *ch = vk_call_data(call);
  if (ch != NULL) {
    chan_leave(ch);
  }
}

static void open_writable(vk_call_t *call) {
  chan_t *ch = vk_call_data(call);
  if (ch != NULL && ch->blocked) {
    ch->blocked = false;
    chan_pump(ch);
  }
}

// -------------------------------------------------------------- AckEvents

static void ack_done(vk_redis_t *r, int status, const redisReply *reply,
                     void *priv) {
  (void)r;
  vk_call_t *call = priv;
  if (vk_call_is_done(call)) {
    vk_call_unref(call);
    return;
  }
  const ack_req_t *req = vk_call_data(call);
  const redisReply *tag = status == VK_OK && reply->type == REDIS_REPLY_ARRAY &&
                                  reply->elements == 2
                              ? reply->element[0]
                              : NULL;
  if (reply_is(tag, "OK")) {
    Vkey__V1__AckEventsResponse resp = VKEY__V1__ACK_EVENTS_RESPONSE__INIT;
    resp.acked_seq = reply_u64(reply->element[1]);
    int rv = vk_call_send(call, &resp.base);
    vk_call_finish(call, rv == VK_OK ? VK_GRPC_OK : VK_GRPC_INTERNAL,
                   rv == VK_OK ? NULL : "cannot send the response");
  } else if (reply_is(tag, "RANGE")) {
    char msg[128];
    snprintf(msg, sizeof(msg),
             "seq %" PRIu64 " is beyond the vehicle's last event %" PRIu64,
             req->seq, reply_u64(reply->element[1]));
    audit_refusal(vk_call_service_ctx(call), req->vin, "AckEvents",
                  VK_GRPC_OUT_OF_RANGE, msg);
    vk_call_finish(call, VK_GRPC_OUT_OF_RANGE, msg);
  } else {
    if (status == VK_OK && reply->type == REDIS_REPLY_ERROR) {
      vk_log(VK_LOG_ERROR, vk_call_id(call), "AckEvents: %s", reply->str);
    }
    vk_call_finish(call, VK_GRPC_UNAVAILABLE, "key store unavailable");
  }
  vk_call_unref(call);
}

static void ack_authed(vk_call_t *call, const vk_identity_t *who, void *arg) {
  vk_app_t *app = vk_call_service_ctx(call);
  const ack_req_t *req = arg;
  (void)who;
  char vkey[VK_REDIS_KEY_MAX];
  char outbox[VK_REDIS_KEY_MAX];
  char seq[24];
  vk_store_vehicle(vkey, req->vin);
  vk_store_vehicle_sub(outbox, req->vin, "outbox");
  snprintf(seq, sizeof(seq), "%" PRIu64, req->seq);
  vk_call_set_data(call, (void *)req);
  vk_call_ref(call);
  if (vk_redis_command(app->redis, ack_done, call, "EVAL %s 2 %s %s %s",
                       kAckScript, vkey, outbox, seq) != VK_OK) {
    vk_call_finish(call, VK_GRPC_UNAVAILABLE, "key store unavailable");
    vk_call_unref(call);
  }
}

static void ack_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const ack_req_t *req = (const ack_req_t *)msg;
  if (!vk_vin_valid(req->vin)) {
    vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT,
                   "vin: want 17 characters of ISO 3779");
    return;
  }
  vk_auth_vehicle(vk_call_service_ctx(call), call, req->vin, ack_authed,
                  (void *)req);
}

// --------------------------------------------------- ReportManagementInfo

// One event to append again, decided by the read script.
typedef struct {
  const char *key_id;
  const char *type;     // KeyEventType, as the number's digits
  const char *version;  // the claims version the event names
  const char *status;   // KeyStatus digits
  const char *rev;      // the key's rev when read ("" if it has no hash)
  const uint8_t *sk;    // serialized SignedKey, or NULL
  size_t sk_len;
} recon_event_t;

// The state of one ReportManagementInfo call, in its arena.
typedef struct {
  vk_call_t *call;
  vk_app_t *app;
  const report_req_t *req;
  Vkey__V1__StoredKey **sorted;  // stored_keys by key id
  char **versions;               // their versions, as digits
  uint8_t *policy;               // serialized KeyPolicy, if any
  size_t policy_len;
  int attempt;
  recon_event_t *events;
  size_t n_events;
  report_resp_t resp;
  char vin[VK_VIN_LEN + 1];
  char actor[8 + VK_VIN_LEN + 1];
  char idem[VK_REDIS_KEY_MAX];
  char prefix[VK_REDIS_KEY_MAX];  // of the key hashes: vk:veh:{VIN}:key:
} report_t;

static void report_read(report_t *r);

static int cmp_stored(const void *a, const void *b) {
  const Vkey__V1__StoredKey *x = *(Vkey__V1__StoredKey *const *)a;
  const Vkey__V1__StoredKey *y = *(Vkey__V1__StoredKey *const *)b;
  return strcmp(x->key_id, y->key_id);
}

static bool validate_policy(const Vkey__V1__KeyPolicy *p, char *msg,
                            size_t len) {
  if (p->max_share_depth > kMaxShareDepth) {
    snprintf(msg, len, "policy.max_share_depth: at most %d", kMaxShareDepth);
    return false;
  }
  if (p->max_code_set_ttl_seconds > kMaxCodeSetTtlS) {
    snprintf(msg, len,
             "policy.max_code_set_ttl_seconds: at most 30 days (%d s)",
             kMaxCodeSetTtlS);
    return false;
  }
  if (p->n_grantable_functions > kMaxGrantable) {
    snprintf(msg, len, "policy.grantable_functions: at most %d", kMaxGrantable);
    return false;
  }
  uint32_t seen = 0;
  for (size_t i = 0; i < p->n_grantable_functions; i++) {
    int f = (int)p->grantable_functions[i];
    if (f < VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_UNLOCK ||
        f > VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_REMOTE_START ||
        (seen & (1u << f)) != 0) {
      snprintf(msg, len,
               "policy.grantable_functions[%zu]: unknown or repeated "
               "function %d",
               i, f);
      return false;
    }
    seen |= 1u << f;
  }
  seen = 0;
  for (size_t i = 0; i < p->n_max_keys; i++) {
    const Vkey__V1__FunctionLimit *l = p->max_keys[i];
    int t = (int)l->key_type;
    if (t < VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER ||
        t > VKEY__V1__KEY_TYPE__KEY_TYPE_VALET || (seen & (1u << t)) != 0) {
      snprintf(msg, len,
               "policy.max_keys[%zu]: unknown or repeated key type %d", i, t);
      return false;
    }
    if (l->max_keys > kMaxKeysPerType) {
      snprintf(msg, len, "policy.max_keys[%zu]: at most %d keys", i,
               kMaxKeysPerType);
      return false;
    }
    seen |= 1u << t;
  }
  return true;
}

// validate_stored checks the stored keys, sorted by key id.
static bool validate_stored(const report_t *r, char *msg, size_t len) {
  const report_req_t *req = r->req;
  for (size_t i = 0; i < req->n_stored_keys; i++) {
    const Vkey__V1__StoredKey *k = req->stored_keys[i];
    if (!key_of_vehicle(k->key_id, r->vin)) {
      snprintf(msg, len, "stored_keys[%zu].key_id: not a key of vehicle %s", i,
               r->vin);
      return false;
    }
    if (k->version > VK__MAX_EXACT) {
      snprintf(msg, len, "stored_keys[%zu].version: too large", i);
      return false;
    }
  }
  for (size_t i = 1; i < req->n_stored_keys; i++) {
    if (strcmp(r->sorted[i - 1]->key_id, r->sorted[i]->key_id) == 0) {
      snprintf(msg, len, "stored_keys: %s listed twice", r->sorted[i]->key_id);
      return false;
    }
  }
  if (req->store_digest.len != 0 && req->store_digest.len != 32) {
    snprintf(msg, len, "store_digest: want 32 bytes (SHA-256) or none");
    return false;
  }
  return true;
}

static bool validate_usage(const report_t *r, char *msg, size_t len) {
  const report_req_t *req = r->req;
  // A day of clock skew is plenty; later than that is not a use we believe.
  int64_t latest = vk_wall_ms() / 1000 + 86400;
  for (size_t i = 0; i < req->n_usage; i++) {
    const Vkey__V1__KeyUsage *u = req->usage[i];
    if (!key_of_vehicle(u->key_id, r->vin)) {
      snprintf(msg, len, "usage[%zu].key_id: not a key of vehicle %s", i,
               r->vin);
      return false;
    }
    if (u->uses > VK__MAX_EXACT) {
      snprintf(msg, len, "usage[%zu].uses: too large", i);
      return false;
    }
    if (u->last_used_at < 0 || u->last_used_at > latest) {
      snprintf(msg, len, "usage[%zu].last_used_at: not a plausible Unix time",
               i);
      return false;
    }
  }
  return true;
}

// report_validate checks what the vehicle sent. `r->sorted` must be set.
static bool report_validate(const report_t *r, char *msg, size_t len) {
  const report_req_t *req = r->req;
  if (!vk_request_id_valid(req->request_id)) {
    snprintf(msg, len, "request_id: at most %d printable characters",
             VK_REQUEST_ID_MAX);
    return false;
  }
  if (req->n_stored_keys > kMaxStoredKeys) {
    snprintf(msg, len, "stored_keys: at most %d (got %zu)", kMaxStoredKeys,
             req->n_stored_keys);
    return false;
  }
  if (req->n_usage > kMaxUsage) {
    snprintf(msg, len, "usage: at most %d (got %zu)", kMaxUsage, req->n_usage);
    return false;
  }
  if (req->policy != NULL && !validate_policy(req->policy, msg, len)) {
    return false;
  }
  return validate_stored(r, msg, len) && validate_usage(r, msg, len);
}

// digest_matches: SHA-256 over the sorted "key_id:version\n" lines of the
// stored keys, against the vehicle's store_digest. Key ids have one length
// and are unique, so sorting the lines is sorting by key id.
static bool digest_matches(const report_t *r) {
  const report_req_t *req = r->req;
  if (req->store_digest.len != SHA256_DIGEST_LENGTH) {
    return false;
  }
  SHA256_CTX ctx;
  uint8_t d[SHA256_DIGEST_LENGTH];
  SHA256_Init(&ctx);
  for (size_t i = 0; i < req->n_stored_keys; i++) {
    char line[VK_KEY_ID_LEN + 24];
    int n = snprintf(line, sizeof(line), "%s:%" PRIu64 "\n",
                     r->sorted[i]->key_id, r->sorted[i]->version);
    SHA256_Update(&ctx, line, (size_t)n);
  }
  SHA256_Final(d, &ctx);
  return CRYPTO_memcmp(d, req->store_digest.data, sizeof(d)) == 0;
}

// report_command sends one EVAL holding a call reference for its reply.
static void report_command(report_t *r, vk_redis_cb cb, int argc,
                           const char **argv, const size_t *lens) {
  vk_call_ref(r->call);
  if (vk_redis_command_argv(r->app->redis, cb, r, argc, argv, lens) != VK_OK) {
    vk_call_finish(r->call, VK_GRPC_UNAVAILABLE, "key store unavailable");
    vk_call_unref(r->call);
  }
}

static void report_answer(report_t *r, const report_resp_t *resp) {
  int rv = vk_call_send(r->call, &resp->base);
  vk_call_finish(r->call, rv == VK_OK ? VK_GRPC_OK : VK_GRPC_INTERNAL,
                 rv == VK_OK ? NULL : "cannot send the response");
}

// report_replay answers a retried request with the first one's response.
static void report_replay(report_t *r, const redisReply *stored) {
  report_resp_t *resp = vkey__v1__report_management_info_response__unpack(
      vk_call_allocator(r->call), stored->len, (const uint8_t *)stored->str);
  if (resp == NULL) {
    vk_call_finish(r->call, VK_GRPC_INTERNAL, "stored response is corrupt");
    return;
  }
  report_answer(r, resp);
}

static void report_unavailable(report_t *r, int status,
                               const redisReply *reply) {
  if (status == VK_OK && reply->type == REDIS_REPLY_ERROR) {
    vk_log(VK_LOG_ERROR, vk_call_id(r->call), "ReportManagementInfo: %s",
           reply->str);
  }
  vk_call_finish(r->call, VK_GRPC_UNAVAILABLE, "key store unavailable");
}

static void report_write_done(vk_redis_t *rc, int status,
                              const redisReply *reply, void *priv) {
  (void)rc;
  report_t *r = priv;
  vk_call_t *call = r->call;
  if (vk_call_is_done(call)) {
    vk_call_unref(call);
    return;
  }
  const redisReply *tag = status == VK_OK && reply->type == REDIS_REPLY_ARRAY &&
                                  reply->elements == 2
                              ? reply->element[0]
                              : NULL;
  if (reply_is(tag, "OK")) {
    report_answer(r, &r->resp);
  } else if (reply_is(tag, "IDEM") && reply_str(reply->element[1])) {
    report_replay(r, reply->element[1]);
  } else if (reply_is(tag, "RACE")) {
    // A key changed between our read and our write: decide again.
    if (++r->attempt < kReportAttempts) {
      report_read(r);
    } else {
      const char *msg = "keys kept changing during reconciliation; retry";
      audit_refusal(r->app, r->vin, "ReportManagementInfo", VK_GRPC_ABORTED,
                    msg);
      vk_call_finish(call, VK_GRPC_ABORTED, msg);
    }
  } else {
    report_unavailable(r, status, reply);
  }
  vk_call_unref(call);
}

static char *arena_u64(vk_call_t *call, uint64_t v) {
  char *s = vk_call_alloc(call, 24);
  if (s != NULL) {
    snprintf(s, 24, "%" PRIu64, v);
  }
  return s;
}

static char *arena_i64(vk_call_t *call, int64_t v) {
  char *s = vk_call_alloc(call, 24);
  if (s != NULL) {
    snprintf(s, 24, "%" PRId64, v);
  }
  return s;
}

// report_write appends the decided events and stores policy, usage, audit
// and the idempotency record, in one script (see kReconcileWriteScript).
static void report_write(report_t *r) {
  const report_req_t *req = r->req;
  vk_call_t *call = r->call;
  size_t argc = 4 + 5 + 11 + 3 * req->n_usage + 6 * r->n_events;
  const char **argv = vk_call_alloc(call, argc * sizeof(*argv));
  size_t *lens = vk_call_alloc(call, argc * sizeof(*lens));
  size_t resp_len =
      vkey__v1__report_management_info_response__get_packed_size(&r->resp);
  uint8_t *resp = vk_call_alloc(call, resp_len);
  char *detail = vk_call_alloc(call, 160);
  char *keys = vk_call_alloc(call, 5 * VK_REDIS_KEY_MAX);
  if (argv == NULL || lens == NULL || resp == NULL || detail == NULL ||
      keys == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  vkey__v1__report_management_info_response__pack(&r->resp, resp);
  snprintf(detail, 160,
           "stored %zu keys, redelivered %u, revoked again %u, digest %s, "
           "policy %s, usage %zu",
           req->n_stored_keys, r->resp.redelivered, r->resp.revoked_again,
           r->resp.digest_matches ? "matches" : "differs",
           req->policy != NULL ? "stored" : "absent", req->n_usage);
  char *k = keys;
  vk_store_vehicle(k, r->vin);
  vk_store_vehicle_sub(k + VK_REDIS_KEY_MAX, r->vin, "outbox");
  vk_store_vehicle_sub(k + 2 * VK_REDIS_KEY_MAX, r->vin, "audit");
  vk_store_vehicle_sub(k + 4 * VK_REDIS_KEY_MAX, r->vin, "notify");
  const char *now = arena_i64(call, vk_wall_ms());
  const char *nu = arena_u64(call, req->n_usage);
  const char *ne = arena_u64(call, r->n_events);
  if (now == NULL || nu == NULL || ne == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  size_t n = 0;
#define ARG(s) (argv[n] = (s), lens[n] = strlen(argv[n]), n++)
#define ARGB(p, l) (argv[n] = (const char *)(p), lens[n] = (l), n++)
  ARG("EVAL");
  ARG(kReconcileWriteScript);
  ARG("5");
  ARG(k);
  ARG(k + VK_REDIS_KEY_MAX);
  ARG(k + 2 * VK_REDIS_KEY_MAX);
  ARG(r->idem);
  ARG(k + 4 * VK_REDIS_KEY_MAX);
  ARG(now);
  ARG(r->actor);
  ARG(r->vin);
  ARGB(resp, resp_len);
  ARG(req->request_id[0] != '\0' ? "1" : "0");
  ARG(r->policy != NULL ? "1" : "0");
  ARGB(r->policy != NULL ? r->policy : (const uint8_t *)"", r->policy_len);
  ARG(r->prefix);
  ARG(detail);
  ARG(nu);
  for (size_t i = 0; i < req->n_usage; i++) {
    const Vkey__V1__KeyUsage *u = req->usage[i];
    const char *uses = arena_u64(call, u->uses);
    const char *last = arena_i64(call, u->last_used_at);
    if (uses == NULL || last == NULL) {
      vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
    ARG(u->key_id);
    ARG(uses);
    ARG(last);
  }
  ARG(ne);
  for (size_t i = 0; i < r->n_events; i++) {
    const recon_event_t *e = &r->events[i];
    ARG(e->key_id);
    ARG(e->type);
    ARG(e->version);
    ARG(e->status);
    ARG(e->rev);
    ARGB(e->sk != NULL ? e->sk : (const uint8_t *)"", e->sk_len);
  }
#undef ARG
#undef ARGB
  report_command(r, report_write_done, (int)n, argv, lens);
}

static char *arena_str(vk_call_t *call, const redisReply *s) {
  char *out = vk_call_alloc(call, s->len + 1);
  if (out != NULL) {
    memcpy(out, s->str, s->len);
    out[s->len] = '\0';
  }
  return out;
}

// decide_one turns one row of the read script into an event: for a key to
// deliver again, its current SignedKey out of the key's record. Returns
// false for a row we cannot use (logged; the row is skipped).
static bool decide_one(report_t *r, const redisReply *row, recon_event_t *e) {
  vk_call_t *call = r->call;
  if (row->type != REDIS_REPLY_ARRAY || row->elements < 5) {
    return false;
  }
  for (size_t i = 0; i < row->elements; i++) {
    if (!reply_str(row->element[i])) {
      return false;
    }
  }
  e->key_id = arena_str(call, row->element[0]);
  e->type = arena_str(call, row->element[1]);
  e->version = arena_str(call, row->element[2]);
  e->status = arena_str(call, row->element[3]);
  e->rev = arena_str(call, row->element[4]);
  if (e->key_id == NULL || e->type == NULL || e->version == NULL ||
      e->status == NULL || e->rev == NULL) {
    return false;
  }
  if (row->elements < 6) {
    return true;  // revoked again: no token to carry
  }
  const redisReply *rec = row->element[5];
  Vkey__V1__KeyRecord *kr = vkey__v1__key_record__unpack(
      vk_call_allocator(call), rec->len, (const uint8_t *)rec->str);
  if (kr == NULL || kr->key == NULL) {
    vk_log(VK_LOG_ERROR, vk_call_id(call),
           "vehicle %s: key %s has no usable record; not redelivered", r->vin,
           e->key_id);
    return false;
  }
  e->sk_len = vkey__v1__signed_key__get_packed_size(kr->key);
  uint8_t *sk = vk_call_alloc(call, e->sk_len);
  if (sk == NULL) {
    return false;
  }
  vkey__v1__signed_key__pack(kr->key, sk);
  e->sk = sk;
  return true;
}

static void report_read_done(vk_redis_t *rc, int status,
                             const redisReply *reply, void *priv) {
  (void)rc;
  report_t *r = priv;
  vk_call_t *call = r->call;
  if (vk_call_is_done(call)) {
    vk_call_unref(call);
    return;
  }
  const redisReply *tag =
      status == VK_OK && reply->type == REDIS_REPLY_ARRAY && reply->elements
          ? reply->element[0]
          : NULL;
  if (reply_is(tag, "IDEM") && reply->elements == 2 &&
      reply_str(reply->element[1])) {
    report_replay(r, reply->element[1]);
  } else if (reply_is(tag, "OK")) {
    size_t rows = reply->elements - 1;
    r->events = vk_call_alloc(call, (rows ? rows : 1) * sizeof(*r->events));
    r->n_events = 0;
    r->resp.redelivered = 0;
    r->resp.revoked_again = 0;
    if (r->events == NULL) {
      vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    } else {
      for (size_t i = 0; i < rows; i++) {
        recon_event_t *e = &r->events[r->n_events];
        if (!decide_one(r, reply->element[i + 1], e)) {
          continue;
        }
        r->n_events++;
        if (e->sk != NULL) {
          r->resp.redelivered++;
        } else {
          r->resp.revoked_again++;
        }
      }
      report_write(r);
    }
  } else {
    report_unavailable(r, status, reply);
  }
  vk_call_unref(call);
}

// report_read runs the read half (see kReconcileReadScript).
static void report_read(report_t *r) {
  const report_req_t *req = r->req;
  vk_call_t *call = r->call;
  size_t argc = 4 + 4 + 2 + 2 * req->n_stored_keys;
  const char **argv = vk_call_alloc(call, argc * sizeof(*argv));
  size_t *lens = vk_call_alloc(call, argc * sizeof(*lens));
  if (argv == NULL || lens == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  char vkey[VK_REDIS_KEY_MAX];
  char zkeys[VK_REDIS_KEY_MAX];
  char outbox[VK_REDIS_KEY_MAX];
  vk_store_vehicle(vkey, r->vin);
  vk_store_vehicle_sub(zkeys, r->vin, "keys");
  vk_store_vehicle_sub(outbox, r->vin, "outbox");
  size_t n = 0;
  argv[n++] = "EVAL";
  argv[n++] = kReconcileReadScript;
  argv[n++] = "4";
  argv[n++] = vkey;
  argv[n++] = zkeys;
  argv[n++] = outbox;
  argv[n++] = r->idem;
  argv[n++] = req->request_id[0] != '\0' ? "1" : "0";
  argv[n++] = r->prefix;
  for (size_t i = 0; i < req->n_stored_keys; i++) {
    argv[n++] = req->stored_keys[i]->key_id;
    argv[n++] = r->versions[i];
  }
  for (size_t i = 0; i < n; i++) {
    lens[i] = strlen(argv[i]);
  }
  report_command(r, report_read_done, (int)n, argv, lens);
}

// report_prepare fills what every attempt needs. Returns false (the call
// finished) when out of memory.
static bool report_prepare(report_t *r) {
  const report_req_t *req = r->req;
  vk_call_t *call = r->call;
  size_t n = req->n_stored_keys;
  r->sorted = vk_call_alloc(call, (n ? n : 1) * sizeof(*r->sorted));
  r->versions = vk_call_alloc(call, (n ? n : 1) * sizeof(*r->versions));
  if (r->sorted == NULL || r->versions == NULL) {
    return false;
  }
  for (size_t i = 0; i < n; i++) {
    r->sorted[i] = req->stored_keys[i];
    if ((r->versions[i] = arena_u64(call, req->stored_keys[i]->version)) ==
        NULL) {
      return false;
    }
  }
  if (n > 1) {
    qsort(r->sorted, n, sizeof(*r->sorted), cmp_stored);
  }
  snprintf(r->actor, sizeof(r->actor), "vehicle:%s", r->vin);
  char suffix[VK_REDIS_KEY_MAX];
  snprintf(suffix, sizeof(suffix), "idem:%s:%s", r->actor, req->request_id);
  vk_store_vehicle_sub(r->idem, r->vin, suffix);
  vk_store_vehicle_sub(r->prefix, r->vin, "key:");
  return true;
}

// report_pack_policy serializes the validated policy for the vehicle hash.
static bool report_pack_policy(report_t *r) {
  if (r->req->policy == NULL) {
    return true;
  }
  const ProtobufCMessage *p = &r->req->policy->base;
  r->policy_len = protobuf_c_message_get_packed_size(p);
  r->policy = vk_call_alloc(r->call, r->policy_len ? r->policy_len : 1);
  if (r->policy == NULL) {
    return false;
  }
  protobuf_c_message_pack(p, r->policy);
  return true;
}

static void report_authed(vk_call_t *call, const vk_identity_t *who,
                          void *arg) {
  vk_app_t *app = vk_call_service_ctx(call);
  report_t *r = vk_call_alloc(call, sizeof(*r));
  if (r == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  r->call = call;
  r->app = app;
  r->req = arg;
  memcpy(r->vin, who->subject, VK_VIN_LEN);
  vkey__v1__report_management_info_response__init(&r->resp);
  char msg[192];
  bool sane =
      r->req->n_stored_keys <= kMaxStoredKeys && r->req->n_usage <= kMaxUsage;
  if (sane && !report_prepare(r)) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  // report_validate reports the oversized lists prepare was spared.
  if (!report_validate(r, msg, sizeof(msg))) {
    audit_refusal(app, r->vin, "ReportManagementInfo", VK_GRPC_INVALID_ARGUMENT,
                  msg);
    vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT, msg);
    return;
  }
  if (!report_pack_policy(r)) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  r->resp.digest_matches = digest_matches(r);
  report_read(r);
}

static void report_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const report_req_t *req = (const report_req_t *)msg;
  if (!vk_vin_valid(req->vin)) {
    vk_call_finish(call, VK_GRPC_INVALID_ARGUMENT,
                   "vin: want 17 characters of ISO 3779");
    return;
  }
  // The rest is checked once the vehicle is known, so that refusals can be
  // audited under its name without letting strangers fill its audit trail.
  vk_auth_vehicle(vk_call_service_ctx(call), call, req->vin, report_authed,
                  (void *)req);
}

// ---------------------------------------------------------------- service

static const vk_method_t vehicle_methods[] = {
    {
        .name = "OpenChannel",
        .kind = VK_RPC_SERVER_STREAM,
        .input = &vkey__v1__open_channel_request__descriptor,
        .output = &vkey__v1__key_event__descriptor,
        .on_start = open_start,
        .on_cancel = open_cancel,
        .on_writable = open_writable,
    },
    {
        .name = "AckEvents",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__ack_events_request__descriptor,
        .output = &vkey__v1__ack_events_response__descriptor,
        .on_start = ack_start,
    },
    {
        .name = "ReportManagementInfo",
        .kind = VK_RPC_UNARY,
        .input = &vkey__v1__report_management_info_request__descriptor,
        .output = &vkey__v1__report_management_info_response__descriptor,
        .on_start = report_start,
    },
};

const vk_service_t *vk_vehicle_service(vk_app_t *app) {
  // One vkeyd has one app, so one static service suffices.
  app->vehicle_service =
      (vk_service_t){.name = "vkey.v1.VehicleService",
                     .methods = vehicle_methods,
                     .n_methods = VK_ARRAY_LEN(vehicle_methods),
                     .ctx = app};
  return &app->vehicle_service;
}
