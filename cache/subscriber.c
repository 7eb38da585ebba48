// subscriber.c: the Redis pub/sub subscriber (see subscriber.h).
//
// Structure. Like cache/redis.c the file has a connection half (conn_*,
// on_retry_timer, on_hiredis_connect, on_hiredis_disconnect: the context,
// the back-off, `on_state`) and a second half, here the channel table: a
// chained hash table of the channels the user wants, each with the state of
// its subscription on the current connection. A connection starts with no
// subscription; on_hiredis_connect subscribes every wanted channel, and a
// lost connection resets every state to CHAN_NONE.
//
// Per channel, at most one command is in flight:
//
//   NONE --subscribe--> SUB_SENT --confirmed--> ON --unsubscribe--> UNSUB_SENT
//    ^                                                                  |
//    +----------------------------- confirmed --------------------------+
//
// A confirmation that finds the wish changed meanwhile sends the opposite
// command at once. An entry that is neither wanted nor has a command in
// flight is freed.
//
// hiredis rules (0.14.1, async.c), beyond those redis.c lists:
//   - SUBSCRIBE stores our callback per channel name in a dict; every
//     confirmation and message of that channel comes to it. The UNSUBSCRIBE
//     confirmation deletes the entry, hence the one-command rule above.
//   - On a lost connection hiredis runs every channel's callback with a NULL
//     reply, then onDisconnect, then frees the context.
// The event adapter is the same as redis.c's (not <hiredis/adapters/
// libuv.h>, whose 0.14 version loses libuv's error events, see redis.c).
#include "subscriber.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "common.h"
#include "log.h"
#include "uvadapter.h"
#include "redis.h"

#define VK__SUB_URL_MAX 1024u
#define VK__SUB_HOST_MAX 253u
#define VK__SUB_PATH_MAX 107u
#define VK__SUB_DEFAULT_TIMEOUT_MS 2000u
#define VK__SUB_DEFAULT_MIN_MS 50u
#define VK__SUB_DEFAULT_MAX_MS 2000u
// Channels per SUBSCRIBE when resubscribing after a connect: large enough
// to make a million channels a few thousand commands, small enough to keep
// each command's buffer modest.
#define VK__SUB_BATCH 256u
#define VK__SUB_MIN_BUCKETS 64u

typedef enum {
  CHAN_NONE = 0,    // not subscribed on this connection, nothing in flight
  CHAN_SUB_SENT,    // SUBSCRIBE in flight
  CHAN_ON,          // subscribed
  CHAN_UNSUB_SENT,  // UNSUBSCRIBE in flight
} chan_state_t;

typedef struct sub_chan_s {
  struct sub_chan_s *next;  // bucket chain
  uint32_t hash;
  uint8_t state;  // chan_state_t
  bool want;
  uint16_t len;
  char name[];  // `len` bytes and a NUL
} sub_chan_t;

struct vk_subscriber_s {
  uv_loop_t *loop;
  // Waits out the back-off before a connect attempt, then bounds it.
  uv_timer_t retry_timer;
  redisAsyncContext *ac;  // the current connection, or NULL
  bool connected;
  bool closing;
  uint64_t connected_at;
  uint32_t attempt;
  uint64_t rng;
  uint32_t timeout_ms;
  uint32_t min_ms;
  uint32_t max_ms;
  vk_subscriber_config_t cfg;  // callbacks and arg; cfg.url is not kept

  sub_chan_t **buckets;
  size_t nbuckets;  // a power of two
  size_t nchans;    // entries, wanted or draining
  size_t nwant;

  int port;  // 0 for a unix socket
  char host[VK__SUB_HOST_MAX + 1];
  char unix_path[VK__SUB_PATH_MAX + 1];
  char url[VK__SUB_URL_MAX + 1];
};

static void on_retry_timer(uv_timer_t *t);
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *priv);

// ------------------------------------------------------------ channel table

// FNV-1a: channel names are short and not attacker-chosen in bulk (VINs).
static uint32_t hash_name(const char *name, size_t len) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++) {
    h ^= (uint8_t)name[i];
    h *= 16777619u;
  }
  return h;
}

static sub_chan_t *chan_find(const vk_subscriber_t *s, const char *name,
                             size_t len) {
  uint32_t h = hash_name(name, len);
  sub_chan_t *c = s->buckets[h & (s->nbuckets - 1)];
  for (; c != NULL; c = c->next) {
    if (c->hash == h && c->len == len && memcmp(c->name, name, len) == 0) {
      return c;
    }
  }
  return NULL;
}

// table_resize rehashes into `n` buckets; on allocation failure the table
// stays as it is (longer chains, still correct).
static void table_resize(vk_subscriber_t *s, size_t n) {
  sub_chan_t **b = calloc(n, sizeof(*b));
  if (b == NULL) {
    return;
  }
  for (size_t i = 0; i < s->nbuckets; i++) {
    sub_chan_t *c = s->buckets[i];
    while (c != NULL) {
      sub_chan_t *next = c->next;
      c->next = b[c->hash & (n - 1)];
      b[c->hash & (n - 1)] = c;
      c = next;
    }
  }
  free(s->buckets);
  s->buckets = b;
  s->nbuckets = n;
}

static sub_chan_t *chan_add(vk_subscriber_t *s, const char *name, size_t len) {
  sub_chan_t *c = malloc(sizeof(*c) + len + 1);
  if (c == NULL) {
    return NULL;
  }
  c->hash = hash_name(name, len);
  c->state = CHAN_NONE;
  c->want = false;
  c->len = (uint16_t)len;
  memcpy(c->name, name, len);
  c->name[len] = '\0';
  sub_chan_t **head = &s->buckets[c->hash & (s->nbuckets - 1)];
  c->next = *head;
  *head = c;
  s->nchans++;
  if (s->nchans > s->nbuckets) {
    table_resize(s, s->nbuckets * 2);
  }
  return c;
}

static void chan_remove(vk_subscriber_t *s, sub_chan_t *c) {
  sub_chan_t **p = &s->buckets[c->hash & (s->nbuckets - 1)];
  while (*p != c) {
    p = &(*p)->next;
  }
  *p = c->next;
  free(c);
  s->nchans--;
  // Shrink lazily so that a burst of closes followed by opens does not
  // rehash back and forth.
  if (s->nbuckets > VK__SUB_MIN_BUCKETS && s->nchans < s->nbuckets / 8) {
    table_resize(s, s->nbuckets / 2);
  }
}

// --------------------------------------------------------------- commands

// send_cmd sends `verb` for `n` channels. Returns false if hiredis refused
// (the context is going away; its loss is then being handled).
static bool send_cmd(vk_subscriber_t *s, const char *verb, sub_chan_t **chans,
                     size_t n) {
  const char *argv[VK__SUB_BATCH + 1];
  size_t argvlen[VK__SUB_BATCH + 1];
  argv[0] = verb;
  argvlen[0] = strlen(verb);
  for (size_t i = 0; i < n; i++) {
    argv[i + 1] = chans[i]->name;
    argvlen[i + 1] = chans[i]->len;
  }
  return redisAsyncCommandArgv(s->ac, on_sub_reply, NULL, (int)(n + 1), argv,
                               argvlen) == REDIS_OK;
}

// With `patterns`, every wanted name is a glob pattern (PSUBSCRIBE).
static const char *sub_cmd(const vk_subscriber_t *s) {
  return s->cfg.patterns ? "PSUBSCRIBE" : "SUBSCRIBE";
}

static const char *unsub_cmd(const vk_subscriber_t *s) {
  return s->cfg.patterns ? "PUNSUBSCRIBE" : "UNSUBSCRIBE";
}

// chan_sync sends what makes the channel's subscription match the wish, if
// nothing is in flight; frees an entry that is done with. Returns false if
// `c` was freed.
static bool chan_sync(vk_subscriber_t *s, sub_chan_t *c) {
  if (c->state == CHAN_NONE && !c->want) {
    chan_remove(s, c);
    return false;
  }
  if (!s->connected || s->ac == NULL) {
    return true;  // on_hiredis_connect subscribes it
  }
  if (c->state == CHAN_NONE && c->want) {
    if (send_cmd(s, sub_cmd(s), &c, 1)) {
      c->state = CHAN_SUB_SENT;
    }
  } else if (c->state == CHAN_ON && !c->want) {
    if (send_cmd(s, unsub_cmd(s), &c, 1)) {
      c->state = CHAN_UNSUB_SENT;
    }
  }
  return true;
}

// subscribe_all subscribes every wanted channel on a new connection, in
// batches.
static void subscribe_all(vk_subscriber_t *s) {
  sub_chan_t *batch[VK__SUB_BATCH];
  size_t n = 0;
  for (size_t i = 0; i < s->nbuckets; i++) {
    for (sub_chan_t *c = s->buckets[i]; c != NULL; c = c->next) {
      if (!c->want || c->state != CHAN_NONE) {
        continue;
      }
      batch[n++] = c;
      if (n == VK__SUB_BATCH) {
        if (!send_cmd(s, sub_cmd(s), batch, n)) {
          return;
        }
        for (size_t j = 0; j < n; j++) {
          batch[j]->state = CHAN_SUB_SENT;
        }
        n = 0;
      }
    }
  }
  if (n > 0 && send_cmd(s, sub_cmd(s), batch, n)) {
    for (size_t j = 0; j < n; j++) {
      batch[j]->state = CHAN_SUB_SENT;
    }
  }
}

// reset_all forgets every subscription (the connection is gone) and frees
// the entries nobody wants any more.
static void reset_all(vk_subscriber_t *s) {
  for (size_t i = 0; i < s->nbuckets; i++) {
    sub_chan_t **p = &s->buckets[i];
    while (*p != NULL) {
      sub_chan_t *c = *p;
      c->state = CHAN_NONE;
      if (!c->want) {
        *p = c->next;
        free(c);
        s->nchans--;
      } else {
        p = &c->next;
      }
    }
  }
}

static bool is_str(const redisReply *r) {
  return r->type == REDIS_REPLY_STRING;
}

static bool str_eq(const redisReply *r, const char *lit) {
  return r->len == strlen(lit) && strncasecmp(r->str, lit, r->len) == 0;
}

// ---------------------------------------------------------- connection half

static uint64_t next_rand(vk_subscriber_t *s) {
  uint64_t x = s->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  s->rng = x;
  return x;
}

// Equal jitter, as redis.c: instances that lost Redis together do not come
// back in lockstep.
static void schedule_retry(vk_subscriber_t *s) {
  uint64_t cap = s->min_ms;
  for (uint32_t i = 0; i < s->attempt && cap < s->max_ms; i++) {
    cap *= 2;
  }
  if (cap > s->max_ms) {
    cap = s->max_ms;
  }
  uint64_t half = cap / 2;
  uint64_t d = half + next_rand(s) % (cap - half + 1);
  if (d < s->min_ms) {
    d = s->min_ms;
  }
  if (s->attempt < 32) {
    s->attempt++;
  }
  uv_timer_start(&s->retry_timer, on_retry_timer, d, 0);
}

// conn_down handles the end of a connection (or attempt) already detached
// from `s`.
static void conn_down(vk_subscriber_t *s) {
  bool was_connected = s->connected;
  s->connected = false;
  if (s->closing) {
    return;
  }
  reset_all(s);
  if (was_connected) {
    VK_WARN("redis subscriber: connection to %s lost; reconnecting", s->url);
    if (uv_now(s->loop) - s->connected_at >= s->max_ms) {
      s->attempt = 0;
    }
  }
  schedule_retry(s);
  if (was_connected && s->cfg.on_state != NULL) {
    s->cfg.on_state(s, false, s->cfg.arg);
  }
}

// conn_drop closes the connection on our initiative, from our timer only,
// so redisAsyncFree completes at once.
static void conn_drop(vk_subscriber_t *s) {
  redisAsyncContext *ac = s->ac;
  s->ac = NULL;
  if (ac != NULL) {
    redisAsyncFree(ac);
  }
  conn_down(s);
}

static void conn_lost(vk_subscriber_t *s) {
  s->ac = NULL;  // hiredis frees it once we return
  conn_down(s);
}

static void on_hiredis_connect(const redisAsyncContext *ac, int status) {
  vk_subscriber_t *s = ac->data;
  if (ac != s->ac) {
    return;
  }
  if (status != REDIS_OK) {
    VK_DEBUG("redis subscriber: connect failed: %s", ac->c.errstr);
    conn_lost(s);
    return;
  }
  uv_timer_stop(&s->retry_timer);
  s->connected = true;
  s->connected_at = uv_now(s->loop);
  if (s->closing) {
    return;
  }
  VK_INFO("redis subscriber: connected to %s (%zu channels)", s->url, s->nwant);
  subscribe_all(s);
  if (s->cfg.on_state != NULL) {
    s->cfg.on_state(s, true, s->cfg.arg);
  }
}

static void on_hiredis_disconnect(const redisAsyncContext *ac, int status) {
  vk_subscriber_t *s = ac->data;
  (void)status;
  if (ac == s->ac) {
    conn_lost(s);
  }
}

static void conn_start(vk_subscriber_t *s) {
  redisAsyncContext *ac = s->port != 0 ? redisAsyncConnect(s->host, s->port)
                                       : redisAsyncConnectUnix(s->unix_path);
  if (ac == NULL || ac->err != 0) {
    if (ac != NULL) {
      VK_DEBUG("redis subscriber: connect failed: %s", ac->errstr);
      redisAsyncFree(ac);  // no hooks attached yet: frees at once
    }
    schedule_retry(s);
    return;
  }
  ac->data = s;
  if (vk_redis_uv_attach(ac, s->loop) != VK_OK) {
    redisAsyncFree(ac);
    schedule_retry(s);
    return;
  }
  if (s->port != 0) {
    // Best effort: without it a black-holed peer is only noticed when the
    // kernel gives up on an unacknowledged write, and we rarely write.
    redisEnableKeepAlive(&ac->c);
  }
  redisAsyncSetConnectCallback(ac, on_hiredis_connect);
  redisAsyncSetDisconnectCallback(ac, on_hiredis_disconnect);
  s->ac = ac;
  uv_timer_start(&s->retry_timer, on_retry_timer, s->timeout_ms, 0);
}

static void on_retry_timer(uv_timer_t *t) {
  vk_subscriber_t *s = vk_container_of(t, vk_subscriber_t, retry_timer);
  if (s->ac != NULL) {
    if (!s->connected) {
      VK_DEBUG("redis subscriber: connect attempt timed out");
      conn_drop(s);
    }
    return;
  }
  conn_start(s);
}

// ---------------------------------------------------------------- replies

static void handle_confirm(vk_subscriber_t *s, sub_chan_t *c, bool subscribe) {
  if (subscribe && c->state == CHAN_SUB_SENT) {
    c->state = CHAN_ON;
    if (c->want) {
      if (s->cfg.on_subscribed != NULL) {
        // Last: the callback may unsubscribe, which may free `c`.
        s->cfg.on_subscribed(s, c->name, c->len, s->cfg.arg);
      }
      return;
    }
  } else if (!subscribe && c->state == CHAN_UNSUB_SENT) {
    c->state = CHAN_NONE;
  } else {
    VK_WARN("redis subscriber: unexpected %s confirmation for %s",
            subscribe ? "subscribe" : "unsubscribe", c->name);
    return;
  }
  chan_sync(s, c);
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *priv) {
  vk_subscriber_t *s = ac->data;
  const redisReply *r = reply;
  (void)priv;
  if (ac != s->ac || s->closing) {
    return;
  }
  if (r == NULL) {
    conn_lost(s);  // hiredis is failing the callbacks of a broken connection
    return;
  }
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
      !is_str(r->element[0]) || !is_str(r->element[1])) {
    return;
  }
  const redisReply *kind = r->element[0];
  const redisReply *name = r->element[1];
  sub_chan_t *c = chan_find(s, name->str, name->len);
  if (c == NULL) {
    return;
  }
  bool pat = s->cfg.patterns;
  if (str_eq(kind, pat ? "pmessage" : "message")) {
    // message: [kind, channel, payload]; pmessage: [kind, pattern, channel,
    // payload]. The user hears the channel the message was published on.
    const redisReply *channel = pat ? r->element[2] : name;
    const redisReply *payload = r->element[pat ? 3 : 2];
    if (pat && (r->elements < 4 || !is_str(channel))) {
      return;
    }
    if (c->want && is_str(payload)) {
      s->cfg.on_message(s, channel->str, channel->len, payload->str,
                        payload->len, s->cfg.arg);
    }
  } else if (str_eq(kind, pat ? "psubscribe" : "subscribe")) {
    handle_confirm(s, c, true);
  } else if (str_eq(kind, pat ? "punsubscribe" : "unsubscribe")) {
    handle_confirm(s, c, false);
  }
}

// ------------------------------------------------------------------ public

int vk_subscriber_subscribe(vk_subscriber_t *s, const char *channel) {
  if (s == NULL || channel == NULL) {
    return VK_EINVAL;
  }
  if (s->closing) {
    return VK_ECLOSED;
  }
  size_t len = strnlen(channel, VK_SUBSCRIBER_CHANNEL_MAX + 1);
  if (len == 0 || len > VK_SUBSCRIBER_CHANNEL_MAX) {
    return VK_EINVAL;
  }
  sub_chan_t *c = chan_find(s, channel, len);
  if (c == NULL) {
    c = chan_add(s, channel, len);
    if (c == NULL) {
      return VK_ENOMEM;
    }
  }
  if (c->want) {
    return VK_OK;
  }
  c->want = true;
  s->nwant++;
  chan_sync(s, c);
  return VK_OK;
}

void vk_subscriber_unsubscribe(vk_subscriber_t *s, const char *channel) {
  if (s == NULL || channel == NULL || s->closing) {
    return;
  }
  size_t len = strnlen(channel, VK_SUBSCRIBER_CHANNEL_MAX + 1);
  sub_chan_t *c = chan_find(s, channel, len);
  if (c == NULL || !c->want) {
    return;
  }
  c->want = false;
  s->nwant--;
  chan_sync(s, c);
}

bool vk_subscriber_connected(const vk_subscriber_t *s) {
  return s != NULL && s->connected && !s->closing;
}

size_t vk_subscriber_count(const vk_subscriber_t *s) {
  return s != NULL ? s->nwant : 0;
}

static void free_table(vk_subscriber_t *s) {
  for (size_t i = 0; i < s->nbuckets; i++) {
    sub_chan_t *c = s->buckets[i];
    while (c != NULL) {
      sub_chan_t *next = c->next;
      free(c);
      c = next;
    }
  }
  free(s->buckets);
}

static void on_timer_closed(uv_handle_t *h) {
  vk_subscriber_t *s = h->data;
  // A close callback runs at the top of the loop, never below hiredis, so
  // the context can be freed here; its callbacks are ignored (detached).
  redisAsyncContext *ac = s->ac;
  s->ac = NULL;
  if (ac != NULL) {
    redisAsyncFree(ac);
  }
  free_table(s);
  free(s);
}

int vk_subscriber_new(vk_subscriber_t **out, uv_loop_t *loop,
                      const vk_subscriber_config_t *cfg) {
  if (out == NULL || loop == NULL || cfg == NULL || cfg->url == NULL ||
      cfg->on_message == NULL) {
    return VK_EINVAL;
  }
  vk_subscriber_t *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    return VK_ENOMEM;
  }
  int rv = vk_redis_parse_url(cfg->url, s->host, sizeof(s->host), &s->port,
                              s->unix_path, sizeof(s->unix_path));
  if (rv != VK_OK || strlen(cfg->url) > VK__SUB_URL_MAX) {
    rv = VK_EINVAL;
    goto fail;
  }
  memcpy(s->url, cfg->url, strlen(cfg->url) + 1);
  s->loop = loop;
  s->cfg = *cfg;
  s->cfg.url = NULL;
  s->timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms
                                          : VK__SUB_DEFAULT_TIMEOUT_MS;
  s->min_ms =
      cfg->reconnect_min_ms ? cfg->reconnect_min_ms : VK__SUB_DEFAULT_MIN_MS;
  s->max_ms =
      cfg->reconnect_max_ms ? cfg->reconnect_max_ms : VK__SUB_DEFAULT_MAX_MS;
  if (s->min_ms > s->max_ms) {
    rv = VK_EINVAL;
    goto fail;
  }
  s->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)s;
  if (s->rng == 0) {
    s->rng = 1;
  }
  s->buckets = calloc(VK__SUB_MIN_BUCKETS, sizeof(*s->buckets));
  if (s->buckets == NULL) {
    rv = VK_ENOMEM;
    goto fail;
  }
  s->nbuckets = VK__SUB_MIN_BUCKETS;
  if (uv_timer_init(loop, &s->retry_timer) != 0) {
    rv = VK_EIO;
    goto fail_timer;
  }
  s->retry_timer.data = s;
  // The first attempt runs from the loop, so this never blocks.
  uv_timer_start(&s->retry_timer, on_retry_timer, 0, 0);
  *out = s;
  return VK_OK;

fail_timer:
  free(s->buckets);
fail:
  free(s);
  return rv;
}

void vk_subscriber_free(vk_subscriber_t *s) {
  if (s == NULL || s->closing) {
    return;
  }
  // Mark only: we may be below a hiredis callback. The close callback of
  // the timer frees the context and `s`.
  s->closing = true;
  uv_close((uv_handle_t *)&s->retry_timer, on_timer_closed);
}
