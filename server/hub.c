// hub.c: the registry of open vehicle channels (see hub.h).
//
// A chained hash table maps a VIN to its entry, which lists the vehicle's
// links. The entry exists exactly while the vehicle has a link, and so does
// the wish to be subscribed to its notify channel: the subscriber takes care
// of the rest (one command in flight per channel, resubscribing after a
// reconnect, telling us when a subscription holds).
//
// Callbacks into links are made while walking a list that the callback may
// change (a channel that fails leaves at once, which may free its arena and
// with it the link), so every walk reads the next link before the call. A
// callback only ever removes its own link.
#include "hub.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "log.h"
#include "store.h"
#include "subscriber.h"

// How long a deferred link waits before it is told to read again.
#define VK__HUB_DEFER_MS 20u
#define VK__HUB_MIN_BUCKETS 64u

struct vk__hub_vin_s {
  vk__hub_vin_t *next;  // bucket chain
  vk_hub_t *hub;        // links reach their hub through their entry
  uint32_t hash;
  vk_hub_link_t *links;
  char vin[VK_VIN_LEN + 1];
};

struct vk_hub_s {
  vk_app_t *app;
  vk_subscriber_t *sub;
  uv_timer_t defer_timer;  // defer_timer.data == this
  vk_hub_link_t *deferred;
  vk__hub_vin_t **buckets;
  size_t nbuckets;  // a power of two
  size_t nvins;
  size_t nlinks;
  bool draining;
};

// ------------------------------------------------------------------- table

static uint32_t hash_vin(const char *vin) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < VK_VIN_LEN; i++) {
    h ^= (uint8_t)vin[i];
    h *= 16777619u;
  }
  return h;
}

static vk__hub_vin_t *vin_find(const vk_hub_t *hub, const char *vin) {
  uint32_t h = hash_vin(vin);
  vk__hub_vin_t *e = hub->buckets[h & (hub->nbuckets - 1)];
  for (; e != NULL; e = e->next) {
    if (e->hash == h && memcmp(e->vin, vin, VK_VIN_LEN) == 0) {
      return e;
    }
  }
  return NULL;
}

static void table_resize(vk_hub_t *hub, size_t n) {
  vk__hub_vin_t **b = calloc(n, sizeof(*b));
  if (b == NULL) {
    return;  // longer chains, still correct
  }
  for (size_t i = 0; i < hub->nbuckets; i++) {
    vk__hub_vin_t *e = hub->buckets[i];
    while (e != NULL) {
      vk__hub_vin_t *next = e->next;
      e->next = b[e->hash & (n - 1)];
      b[e->hash & (n - 1)] = e;
      e = next;
    }
  }
  free(hub->buckets);
  hub->buckets = b;
  hub->nbuckets = n;
}

static void notify_channel(char *out, const char *vin) {
  vk_store_vehicle_sub(out, vin, "notify");
}

// vin_add creates the entry of `vin` and subscribes its channel.
static vk__hub_vin_t *vin_add(vk_hub_t *hub, const char *vin) {
  vk__hub_vin_t *e = calloc(1, sizeof(*e));
  if (e == NULL) {
    return NULL;
  }
  char channel[VK_REDIS_KEY_MAX];
  notify_channel(channel, vin);
  if (vk_subscriber_subscribe(hub->sub, channel) != VK_OK) {
    free(e);
    return NULL;
  }
  memcpy(e->vin, vin, VK_VIN_LEN);
  e->hub = hub;
  e->hash = hash_vin(vin);
  vk__hub_vin_t **head = &hub->buckets[e->hash & (hub->nbuckets - 1)];
  e->next = *head;
  *head = e;
  hub->nvins++;
  if (hub->nvins > hub->nbuckets) {
    table_resize(hub, hub->nbuckets * 2);
  }
  return e;
}

static void vin_remove(vk_hub_t *hub, vk__hub_vin_t *e) {
  char channel[VK_REDIS_KEY_MAX];
  notify_channel(channel, e->vin);
  vk_subscriber_unsubscribe(hub->sub, channel);
  vk__hub_vin_t **p = &hub->buckets[e->hash & (hub->nbuckets - 1)];
  while (*p != e) {
    p = &(*p)->next;
  }
  *p = e->next;
  free(e);
  hub->nvins--;
  // Not while draining: the drain walks the buckets.
  if (!hub->draining && hub->nbuckets > VK__HUB_MIN_BUCKETS &&
      hub->nvins < hub->nbuckets / 8) {
    table_resize(hub, hub->nbuckets / 2);
  }
}

// vin_of_channel finds the entry of a "vk:veh:{VIN}:notify" channel.
static vk__hub_vin_t *vin_of_channel(const vk_hub_t *hub, const char *ch,
                                     size_t len) {
  static const char prefix[] = "vk:veh:{";
  static const char suffix[] = "}:notify";
  const size_t plen = sizeof(prefix) - 1;
  const size_t slen = sizeof(suffix) - 1;
  if (len != plen + VK_VIN_LEN + slen || memcmp(ch, prefix, plen) != 0 ||
      memcmp(ch + plen + VK_VIN_LEN, suffix, slen) != 0) {
    return NULL;
  }
  char vin[VK_VIN_LEN + 1];
  memcpy(vin, ch + plen, VK_VIN_LEN);
  vin[VK_VIN_LEN] = '\0';
  return vin_find(hub, vin);
}

// notify_all tells each of the vehicle's links. A link may leave from its
// callback, and the last one frees `e`: read `next` first, never touch `e`
// after the walk.
static void notify_all(vk__hub_vin_t *e, uint64_t seq) {
  vk_hub_link_t *l = e->links;
  while (l != NULL) {
    vk_hub_link_t *next = l->next;
    l->ops->notify(l, seq);
    l = next;
  }
}

// ------------------------------------------------------ subscriber events

// parse_seq reads the published "<seq>"; anything else means "read".
static uint64_t parse_seq(const char *p, size_t len) {
  uint64_t v = 0;
  if (len == 0 || len > 19) {
    return 0;
  }
  for (size_t i = 0; i < len; i++) {
    if (p[i] < '0' || p[i] > '9') {
      return 0;
    }
    v = v * 10 + (uint64_t)(p[i] - '0');
  }
  return v;
}

static void on_sub_message(vk_subscriber_t *s, const char *channel,
                           size_t channel_len, const char *payload,
                           size_t payload_len, void *arg) {
  vk_hub_t *hub = arg;
  (void)s;
  vk__hub_vin_t *e = vin_of_channel(hub, channel, channel_len);
  if (e != NULL) {
    notify_all(e, parse_seq(payload, payload_len));
  }
}

// A (re)confirmed subscription: whatever was published before it is lost
// to us, so every channel of the vehicle reads its outbox again.
static void on_sub_subscribed(vk_subscriber_t *s, const char *channel,
                              size_t channel_len, void *arg) {
  vk_hub_t *hub = arg;
  (void)s;
  vk__hub_vin_t *e = vin_of_channel(hub, channel, channel_len);
  if (e != NULL) {
    notify_all(e, 0);
  }
}

static void on_sub_state(vk_subscriber_t *s, bool connected, void *arg) {
  vk_hub_t *hub = arg;
  (void)s;
  if (connected) {
    VK_INFO("hub: notifications connected; resubscribing %zu vehicles",
            hub->nvins);
  } else {
    VK_WARN(
        "hub: notifications lost for %zu vehicles; channels re-read "
        "when resubscribed",
        hub->nvins);
  }
}

// ---------------------------------------------------------------- deferral

static void defer_unlink(vk_hub_link_t *l) {
  if (l->dpprev == NULL) {
    return;
  }
  *l->dpprev = l->dnext;
  if (l->dnext != NULL) {
    l->dnext->dpprev = l->dpprev;
  }
  l->dnext = NULL;
  l->dpprev = NULL;
}

static void on_defer_timer(uv_timer_t *t) {
  vk_hub_t *hub = t->data;
  // Detach the list first: links deferred again from their callback wait
  // for the next round. A link that leaves meanwhile unlinks itself from
  // the detached list through dpprev, which may point at `todo`.
  vk_hub_link_t *todo = hub->deferred;
  hub->deferred = NULL;
  if (todo != NULL) {
    todo->dpprev = &todo;
  }
  while (todo != NULL) {
    vk_hub_link_t *l = todo;
    defer_unlink(l);
    l->ops->notify(l, 0);
  }
}

void vk_hub_defer(vk_hub_link_t *link) {
  if (link->vin == NULL || link->dpprev != NULL) {
    return;
  }
  vk_hub_t *hub = link->vin->hub;
  link->dnext = hub->deferred;
  if (link->dnext != NULL) {
    link->dnext->dpprev = &link->dnext;
  }
  link->dpprev = &hub->deferred;
  hub->deferred = link;
  if (!uv_is_active((uv_handle_t *)&hub->defer_timer)) {
    uv_timer_start(&hub->defer_timer, on_defer_timer, VK__HUB_DEFER_MS, 0);
  }
}

// ------------------------------------------------------------------- links

int vk_hub_join(vk_hub_t *hub, vk_hub_link_t *link, const char *vin,
                const vk_hub_link_ops_t *ops) {
  if (hub->draining) {
    return VK_ECLOSED;
  }
  vk__hub_vin_t *e = vin_find(hub, vin);
  if (e == NULL) {
    e = vin_add(hub, vin);
    if (e == NULL) {
      return VK_ENOMEM;
    }
  }
  link->ops = ops;
  link->vin = e;
  link->dnext = NULL;
  link->dpprev = NULL;
  link->next = e->links;
  if (link->next != NULL) {
    link->next->pprev = &link->next;
  }
  link->pprev = &e->links;
  e->links = link;
  hub->nlinks++;
  return VK_OK;
}

void vk_hub_leave(vk_hub_link_t *link) {
  vk__hub_vin_t *e = link->vin;
  if (e == NULL) {
    return;
  }
  vk_hub_t *hub = e->hub;
  defer_unlink(link);
  *link->pprev = link->next;
  if (link->next != NULL) {
    link->next->pprev = link->pprev;
  }
  link->next = NULL;
  link->pprev = NULL;
  link->vin = NULL;
  hub->nlinks--;
  if (e->links == NULL) {
    vin_remove(hub, e);
  }
}

size_t vk_hub_channels(const vk_hub_t *hub) {
  return hub != NULL ? hub->nlinks : 0;
}

size_t vk_hub_vehicles(const vk_hub_t *hub) {
  return hub != NULL ? hub->nvins : 0;
}

// ---------------------------------------------------------------- lifetime

int vk_hub_new(vk_hub_t **out, vk_app_t *app, const char *redis_url) {
  if (out == NULL || app == NULL || app->loop == NULL || redis_url == NULL) {
    return VK_EINVAL;
  }
  vk_hub_t *hub = calloc(1, sizeof(*hub));
  if (hub == NULL) {
    return VK_ENOMEM;
  }
  hub->app = app;
  hub->buckets = calloc(VK__HUB_MIN_BUCKETS, sizeof(*hub->buckets));
  if (hub->buckets == NULL) {
    free(hub);
    return VK_ENOMEM;
  }
  hub->nbuckets = VK__HUB_MIN_BUCKETS;
  vk_subscriber_config_t sc = {
      .url = redis_url,
      .on_message = on_sub_message,
      .on_subscribed = on_sub_subscribed,
      .on_state = on_sub_state,
      .arg = hub,
  };
  int rv = vk_subscriber_new(&hub->sub, app->loop, &sc);
  if (rv != VK_OK) {
    goto fail_sub;
  }
  if (uv_timer_init(app->loop, &hub->defer_timer) != 0) {
    rv = VK_EIO;
    goto fail_timer;
  }
  hub->defer_timer.data = hub;
  *out = hub;
  return VK_OK;

fail_timer:
  vk_subscriber_free(hub->sub);
fail_sub:
  free(hub->buckets);
  free(hub);
  return rv;
}

void vk_hub_drain(vk_hub_t *hub) {
  if (hub == NULL || hub->draining) {
    return;
  }
  hub->draining = true;
  size_t n = hub->nlinks;
  // Each step removes one link, and the last link of an entry removes the
  // entry from its bucket; the table does not resize while draining.
  for (size_t i = 0; i < hub->nbuckets; i++) {
    while (hub->buckets[i] != NULL) {
      vk_hub_link_t *l = hub->buckets[i]->links;
      const vk_hub_link_ops_t *ops = l->ops;
      vk_hub_leave(l);
      ops->closed(l);
    }
  }
  if (n > 0) {
    VK_INFO("hub: closed %zu vehicle channels", n);
  }
}

static void on_hub_closed(uv_handle_t *h) {
  vk_hub_t *hub = h->data;
  free(hub->buckets);
  free(hub);
}

void vk_hub_free(vk_hub_t *hub) {
  if (hub == NULL) {
    return;
  }
  vk_hub_drain(hub);
  vk_subscriber_free(hub->sub);
  hub->sub = NULL;
  uv_close((uv_handle_t *)&hub->defer_timer, on_hub_closed);
}
