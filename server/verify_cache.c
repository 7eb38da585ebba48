// verify_cache.c: see verify_cache.h. Invalidation works by generations:
// each vehicle hashes to a generation counter, bumped whenever its notify
// channel fires; a cached status is valid only while its vehicle's
// generation (and the feed's epoch) is the one it was read under. A reply
// that raced with an invalidation therefore lands stale and is ignored.
#include "verify_cache.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/mem.h>
#include <openssl/rand.h>

#include "common.h"
#include "log.h"
#include "subscriber.h"

#define MAX_ISSUERS 16

typedef struct {
  uint8_t digest[32];
  int64_t expires_ms;
  uint64_t used;  // the cache's tick when last hit or filled
} token_entry_t;

// The token cache is set-associative with LRU inside each set: a hot token
// is never pushed out by a single colliding newcomer.
#define TOKEN_WAYS 4

typedef struct {
  char key_id[VK_KEY_ID_LEN + 1];
  vk_key_state_t state;
  uint64_t stamp;  // the vehicle's generation when it was read; 0: empty
} status_entry_t;

#define VEHICLE_GENERATIONS 65536

struct vk_verify_cache_s {
  token_entry_t *tokens;
  size_t n_tokens;  // a multiple of TOKEN_WAYS
  uint64_t tick;
  status_entry_t *status;
  size_t n_status;
  // Generations are unique across vehicles: every bump takes the next value
  // of `clock`, so a stamp never matches after any invalidation or outage.
  uint64_t clock;
  uint64_t vehicle_gen[VEHICLE_GENERATIONS];
  bool feed_up;
  vk_subscriber_t *feed;
  // The heartbeat: our own message, published through `redis` and heard
  // back on the feed (see vk_verify_cache_feed_start).
  vk_redis_t *redis;
  uv_timer_t heartbeat;
  bool heartbeat_started;
  char instance[17];        // random, tells our heartbeats from others'
  uint64_t fresh_until_ms;  // vk_now_ms() before which the cache is trusted
  char issuer_ids[MAX_ISSUERS][17];
  uint8_t issuer_keys[MAX_ISSUERS][32];
  size_t n_issuers;
};

int vk_verify_cache_new(vk_verify_cache_t **out, size_t token_slots,
                        size_t status_slots) {
  vk_verify_cache_t *c = calloc(1, sizeof(*c));
  if (c == NULL || token_slots == 0 || status_slots == 0) {
    free(c);
    return VK_ENOMEM;
  }
  token_slots = (token_slots + TOKEN_WAYS - 1) / TOKEN_WAYS * TOKEN_WAYS;
  c->tokens = calloc(token_slots, sizeof(*c->tokens));
  c->status = calloc(status_slots, sizeof(*c->status));
  if (c->tokens == NULL || c->status == NULL) {
    vk_verify_cache_free(c);
    return VK_ENOMEM;
  }
  c->n_tokens = token_slots;
  c->n_status = status_slots;
  c->clock = 1;
  for (size_t i = 0; i < VEHICLE_GENERATIONS; i++) {
    c->vehicle_gen[i] = 1;
  }
  *out = c;
  return VK_OK;
}

static void release(vk_verify_cache_t *c) {
  free(c->tokens);
  free(c->status);
  free(c);
}

static void heartbeat_closed(uv_handle_t *h) {
  release(h->data);
}

void vk_verify_cache_free(vk_verify_cache_t *c) {
  if (c == NULL) {
    return;
  }
  vk_subscriber_free(c->feed);
  if (c->heartbeat_started) {
    // Freed in the timer's close callback; heartbeats in flight carry no
    // pointer to `c` (see publish_heartbeat).
    uv_close((uv_handle_t *)&c->heartbeat, heartbeat_closed);
    return;
  }
  release(c);
}

// The set a digest maps to: TOKEN_WAYS consecutive entries.
static token_entry_t *token_set(vk_verify_cache_t *c, const uint8_t d[32]) {
  uint64_t h;
  memcpy(&h, d, sizeof(h));  // already a digest: no need to hash again
  return &c->tokens[h % (c->n_tokens / TOKEN_WAYS) * TOKEN_WAYS];
}

bool vk_verify_cache_token_ok(vk_verify_cache_t *c, const uint8_t digest[32],
                              int64_t now_ms) {
  token_entry_t *set = token_set(c, digest);
  for (size_t i = 0; i < TOKEN_WAYS; i++) {
    if (set[i].expires_ms > now_ms &&
        CRYPTO_memcmp(set[i].digest, digest, 32) == 0) {
      set[i].used = ++c->tick;
      return true;
    }
  }
  return false;
}

void vk_verify_cache_token_put(vk_verify_cache_t *c, const uint8_t digest[32],
                               int64_t now_ms) {
  token_entry_t *set = token_set(c, digest);
  token_entry_t *victim = &set[0];
  for (size_t i = 0; i < TOKEN_WAYS; i++) {
    if (memcmp(set[i].digest, digest, 32) == 0 || set[i].expires_ms <= now_ms) {
      victim = &set[i];  // the same token, or an expired or empty entry
      break;
    }
    if (set[i].used < victim->used) {
      victim = &set[i];  // least recently used so far
    }
  }
  memcpy(victim->digest, digest, 32);
  victim->expires_ms = now_ms + VK_TOKEN_SIG_TTL_MS;
  victim->used = ++c->tick;
}

static status_entry_t *status_slot(vk_verify_cache_t *c, const char *key_id) {
  return &c->status[vk_table_hash(key_id, strlen(key_id)) % c->n_status];
}

// A key id starts with its VIN.
static uint64_t *vehicle_gen(vk_verify_cache_t *c, const char *vin) {
  return &c->vehicle_gen[vk_table_hash(vin, VK_VIN_LEN) % VEHICLE_GENERATIONS];
}

// The cache may be used only while the feed is subscribed and has proven,
// with a heartbeat, that it delivers what was published a moment ago.
static bool fresh(const vk_verify_cache_t *c) {
  return c->feed_up && vk_now_ms() < c->fresh_until_ms;
}

bool vk_verify_cache_status_get(vk_verify_cache_t *c, const char *key_id,
                                vk_key_state_t *out) {
  if (!fresh(c)) {
    return false;
  }
  status_entry_t *e = status_slot(c, key_id);
  if (e->stamp == 0 || e->stamp != *vehicle_gen(c, key_id) ||
      strcmp(e->key_id, key_id) != 0) {
    return false;
  }
  *out = e->state;
  return true;
}

uint64_t vk_verify_cache_stamp(const vk_verify_cache_t *c, const char *key_id) {
  if (strlen(key_id) != VK_KEY_ID_LEN) {
    return 0;
  }
  return vk_verify_cache_vehicle_stamp(c, key_id);  // a key id starts with it
}

uint64_t vk_verify_cache_vehicle_stamp(const vk_verify_cache_t *c,
                                       const char *vin) {
  if (c == NULL || !fresh(c) || strnlen(vin, VK_VIN_LEN) != VK_VIN_LEN) {
    return 0;
  }
  return c->vehicle_gen[vk_table_hash(vin, VK_VIN_LEN) % VEHICLE_GENERATIONS];
}

void vk_verify_cache_status_put(vk_verify_cache_t *c, const char *key_id,
                                const vk_key_state_t *state, uint64_t stamp) {
  // A stamp taken while the feed was down, or before the vehicle's last
  // invalidation, does not describe the present.
  if (stamp == 0 || !fresh(c) || strlen(key_id) != VK_KEY_ID_LEN ||
      stamp != *vehicle_gen(c, key_id)) {
    return;
  }
  status_entry_t *e = status_slot(c, key_id);
  memcpy(e->key_id, key_id, VK_KEY_ID_LEN + 1);
  e->state = *state;
  e->stamp = stamp;
}

void vk_verify_cache_invalidate_vehicle(vk_verify_cache_t *c, const char *vin,
                                        size_t vin_len) {
  if (vin_len == VK_VIN_LEN) {
    *vehicle_gen(c, vin) = ++c->clock;
  }
}

void vk_verify_cache_feed_state(vk_verify_cache_t *c, bool up) {
  c->feed_up = up;
  // New generations everywhere: nothing cached before this moment counts.
  for (size_t i = 0; i < VEHICLE_GENERATIONS; i++) {
    c->vehicle_gen[i] = ++c->clock;
  }
}

const uint8_t *vk_verify_cache_issuer(const vk_verify_cache_t *c,
                                      const char *key_id) {
  for (size_t i = 0; i < c->n_issuers; i++) {
    if (strcmp(c->issuer_ids[i], key_id) == 0) {
      return c->issuer_keys[i];
    }
  }
  return NULL;
}

void vk_verify_cache_issuer_put(vk_verify_cache_t *c, const char *key_id,
                                const uint8_t public_key[32]) {
  if (strlen(key_id) != 16 || vk_verify_cache_issuer(c, key_id) != NULL) {
    return;
  }
  // Keys rotate rarely; when the table is full the oldest goes.
  if (c->n_issuers == MAX_ISSUERS) {
    memmove(c->issuer_ids[0], c->issuer_ids[1],
            (MAX_ISSUERS - 1) * sizeof(c->issuer_ids[0]));
    memmove(c->issuer_keys[0], c->issuer_keys[1],
            (MAX_ISSUERS - 1) * sizeof(c->issuer_keys[0]));
    c->n_issuers--;
  }
  size_t i = c->n_issuers++;
  memcpy(c->issuer_ids[i], key_id, 17);
  memcpy(c->issuer_keys[i], public_key, 32);
}

// --- the invalidation feed --------------------------------------------------

static const char kFeedPattern[] = "vk:veh:*:notify";
// Matches the pattern, names no vehicle.
static const char kHeartbeatChannel[] = "vk:veh:heartbeat:notify";

// A heartbeat is "<instance id> <vk_now_ms() when published>".
static void heard_heartbeat(vk_verify_cache_t *c, const char *payload,
                            size_t len) {
  if (len < 18 || memcmp(payload, c->instance, 16) != 0 || payload[16] != ' ') {
    return;  // another instance's
  }
  char num[24];
  size_t n = len - 17 < sizeof(num) - 1 ? len - 17 : sizeof(num) - 1;
  memcpy(num, payload + 17, n);
  num[n] = '\0';
  vk_verify_cache_feed_heard(c, strtoull(num, NULL, 10));
}

void vk_verify_cache_feed_heard(vk_verify_cache_t *c, uint64_t published_ms) {
  if (published_ms + VK_FEED_FRESH_MS > c->fresh_until_ms) {
    c->fresh_until_ms = published_ms + VK_FEED_FRESH_MS;
  }
}

static void feed_message(vk_subscriber_t *s, const char *channel,
                         size_t channel_len, const char *payload,
                         size_t payload_len, void *arg) {
  (void)s;
  vk_verify_cache_t *c = arg;
  if (channel_len == sizeof(kHeartbeatChannel) - 1 &&
      memcmp(channel, kHeartbeatChannel, channel_len) == 0) {
    heard_heartbeat(c, payload, payload_len);
    return;
  }
  // "vk:veh:{VIN}:notify": the VIN sits between the braces.
  const char *open = memchr(channel, '{', channel_len);
  if (open == NULL) {
    return;
  }
  size_t rest = channel_len - (size_t)(open + 1 - channel);
  const char *close = memchr(open + 1, '}', rest);
  if (close != NULL) {
    vk_verify_cache_invalidate_vehicle(c, open + 1, (size_t)(close - open - 1));
  }
}

static void feed_subscribed(vk_subscriber_t *s, const char *channel,
                            size_t channel_len, void *arg) {
  (void)s;
  (void)channel;
  (void)channel_len;
  VK_INFO("key status cache on: invalidation feed subscribed");
  vk_verify_cache_feed_state(arg, true);
}

static void feed_state(vk_subscriber_t *s, bool connected, void *arg) {
  (void)s;
  if (!connected) {
    VK_WARN("key status cache off: invalidation feed lost");
    vk_verify_cache_feed_state(arg, false);
  }
}

static void heartbeat_published(vk_redis_t *r, int status,
                                const redisReply *reply, void *priv) {
  // Nothing to do: what matters is hearing it back on the feed.
  (void)r;
  (void)status;
  (void)reply;
  (void)priv;
}

static void publish_heartbeat(uv_timer_t *t) {
  vk_verify_cache_t *c = t->data;
  char payload[48];
  snprintf(payload, sizeof(payload), "%s %llu", c->instance,
           (unsigned long long)vk_now_ms());
  vk_redis_command(c->redis, heartbeat_published, NULL, "PUBLISH %s %s",
                   kHeartbeatChannel, payload);
}

int vk_verify_cache_feed_start(vk_verify_cache_t *c, uv_loop_t *loop,
                               vk_redis_t *redis, const char *url) {
  uint8_t id[8];
  RAND_bytes(id, sizeof(id));
  vk_hex_encode(c->instance, id, sizeof(id));
  c->redis = redis;
  vk_subscriber_config_t cfg = {
      .url = url,
      .on_message = feed_message,
      .on_subscribed = feed_subscribed,
      .on_state = feed_state,
      .arg = c,
      .patterns = true,
  };
  int rv = vk_subscriber_new(&c->feed, loop, &cfg);
  if (rv == VK_OK) {
    rv = vk_subscriber_subscribe(c->feed, kFeedPattern);
  }
  if (rv == VK_OK) {
    uv_timer_init(loop, &c->heartbeat);
    c->heartbeat.data = c;
    uv_timer_start(&c->heartbeat, publish_heartbeat, 0, VK_FEED_HEARTBEAT_MS);
    // A heartbeat must not keep the loop alive at exit.
    uv_unref((uv_handle_t *)&c->heartbeat);
    c->heartbeat_started = true;
  }
  return rv;
}
