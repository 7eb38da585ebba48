// verify_cache.c: see verify_cache.h. Invalidation works by generations:
// each vehicle hashes to a generation counter, bumped whenever its notify
// channel fires; a cached status is valid only while its vehicle's
// generation (and the feed's epoch) is the one it was read under. A reply
// that raced with an invalidation therefore lands stale and is ignored.
#include "verify_cache.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#include "common.h"
#include "log.h"
#include "subscriber.h"

#define MAX_ISSUERS 16

typedef struct {
  uint8_t digest[32];
  int64_t expires_ms;
} token_entry_t;

typedef struct {
  char key_id[VK_KEY_ID_LEN + 1];
  vk_key_state_t state;
  uint64_t stamp;  // the vehicle's generation when it was read; 0: empty
} status_entry_t;

#define VEHICLE_GENERATIONS 65536

struct vk_verify_cache_s {
  token_entry_t *tokens;
  size_t n_tokens;
  status_entry_t *status;
  size_t n_status;
  // Generations are unique across vehicles: every bump takes the next value
  // of `clock`, so a stamp never matches after any invalidation or outage.
  uint64_t clock;
  uint64_t vehicle_gen[VEHICLE_GENERATIONS];
  bool feed_up;
  vk_subscriber_t *feed;
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

void vk_verify_cache_free(vk_verify_cache_t *c) {
  if (c != NULL) {
    vk_subscriber_free(c->feed);
    free(c->tokens);
    free(c->status);
    free(c);
  }
}

static uint64_t hash_bytes(const void *p, size_t len) {
  uint8_t d[SHA256_DIGEST_LENGTH];
  SHA256(p, len, d);
  uint64_t h;
  memcpy(&h, d, sizeof(h));
  return h;
}

static token_entry_t *token_slot(vk_verify_cache_t *c, const uint8_t d[32]) {
  uint64_t h;
  memcpy(&h, d, sizeof(h));  // already a digest: no need to hash again
  return &c->tokens[h % c->n_tokens];
}

bool vk_verify_cache_token_ok(vk_verify_cache_t *c, const uint8_t digest[32],
                              int64_t now_ms) {
  token_entry_t *e = token_slot(c, digest);
  return e->expires_ms > now_ms && CRYPTO_memcmp(e->digest, digest, 32) == 0;
}

void vk_verify_cache_token_put(vk_verify_cache_t *c, const uint8_t digest[32],
                               int64_t now_ms) {
  token_entry_t *e = token_slot(c, digest);
  memcpy(e->digest, digest, 32);
  e->expires_ms = now_ms + VK_TOKEN_SIG_TTL_MS;
}

static status_entry_t *status_slot(vk_verify_cache_t *c, const char *key_id) {
  return &c->status[hash_bytes(key_id, strlen(key_id)) % c->n_status];
}

// A key id starts with its VIN.
static uint64_t *vehicle_gen(vk_verify_cache_t *c, const char *vin) {
  return &c->vehicle_gen[hash_bytes(vin, VK_VIN_LEN) % VEHICLE_GENERATIONS];
}

bool vk_verify_cache_status_get(vk_verify_cache_t *c, const char *key_id,
                                vk_key_state_t *out) {
  if (!c->feed_up) {
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
  if (!c->feed_up || strlen(key_id) != VK_KEY_ID_LEN) {
    return 0;
  }
  return c->vehicle_gen[hash_bytes(key_id, VK_VIN_LEN) % VEHICLE_GENERATIONS];
}

void vk_verify_cache_status_put(vk_verify_cache_t *c, const char *key_id,
                                const vk_key_state_t *state, uint64_t stamp) {
  // A stamp taken while the feed was down, or before the vehicle's last
  // invalidation, does not describe the present.
  if (stamp == 0 || !c->feed_up || strlen(key_id) != VK_KEY_ID_LEN ||
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

static void feed_message(vk_subscriber_t *s, const char *channel,
                         size_t channel_len, const char *payload,
                         size_t payload_len, void *arg) {
  (void)s;
  (void)payload;
  (void)payload_len;
  // "vk:veh:{VIN}:notify": the VIN sits between the braces.
  const char *open = memchr(channel, '{', channel_len);
  if (open == NULL) {
    return;
  }
  size_t rest = channel_len - (size_t)(open + 1 - channel);
  const char *close = memchr(open + 1, '}', rest);
  if (close != NULL) {
    vk_verify_cache_invalidate_vehicle(arg, open + 1,
                                       (size_t)(close - open - 1));
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

int vk_verify_cache_feed_start(vk_verify_cache_t *c, uv_loop_t *loop,
                               const char *url) {
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
  return rv;
}
