// hub.h: the vehicles with an open channel on this instance (app->hub).
//
// Writers append a vehicle's key events to its outbox and PUBLISH the new
// sequence on vk:veh:{VIN}:notify (docs/ARCHITECTURE.md). The hub holds one
// subscription per vehicle with at least one open channel on this instance,
// refcounted across that vehicle's channels, on a pub/sub connection of its
// own (cache/subscriber.h), and fans each notification out to the
// vehicle's channels. The outbox in Redis stays the truth: a notification is
// only a hint to read it, so the hub also tells every channel to read when
// its vehicle's subscription is confirmed, the first time and after every
// reconnect (notifications published while the subscription was down are
// lost).
//
// A channel joins with a vk_hub_link_t it embeds (usually in its call's
// arena); the hub never allocates per channel. Threading: loop thread only.
#ifndef VK_HUB_H
#define VK_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_hub_link_s vk_hub_link_t;
typedef struct vk__hub_vin_s vk__hub_vin_t;

// vk_hub_link_ops_t: what the hub tells a channel. Both run on the loop
// thread from a hub or subscriber callback, never from inside a vk_hub_*
// call the channel made.
typedef struct {
  // The vehicle's outbox may hold events after `seq` (0: unknown, read
  // from where you are). May call vk_hub_leave and vk_hub_defer.
  void (*notify)(vk_hub_link_t *link, uint64_t seq);
  // The hub is shutting down (vk_hub_drain, vk_hub_free): finish the call.
  // The link has already left the hub when this runs.
  void (*closed)(vk_hub_link_t *link);
} vk_hub_link_ops_t;

// vk_hub_link_t is one channel's membership. Its fields are the hub's; a
// zeroed link is "not joined".
struct vk_hub_link_s {
  vk_hub_link_t *next;  // the vehicle's links
  vk_hub_link_t **pprev;
  vk_hub_link_t *dnext;  // the deferred links (vk_hub_defer)
  vk_hub_link_t **dpprev;
  vk__hub_vin_t *vin;  // NULL while not joined
  const vk_hub_link_ops_t *ops;
};

// vk_hub_new creates the hub of `app` (app->loop must be set) with its own
// pub/sub connection to `redis_url`, which it makes in the background.
// Returns 0 and sets `*out`, or VK_EINVAL (bad URL), VK_ENOMEM, VK_EIO.
int vk_hub_new(vk_hub_t **out, vk_app_t *app, const char *redis_url);

// vk_hub_drain finishes every open channel (their `closed` runs) and
// refuses new ones, so that vehicles reconnect to another instance while
// this one drains. NULL is a no-op.
void vk_hub_drain(vk_hub_t *hub);

// vk_hub_free drains the hub and releases it; the memory goes in a later
// close callback, so the loop must run on. NULL is a no-op.
void vk_hub_free(vk_hub_t *hub);

// vk_hub_join links `link` (zeroed or left) to vehicle `vin` (a valid VIN)
// and subscribes the vehicle's notify channel if it is the vehicle's first
// link here. `ops` must outlive the link. Returns 0; VK_ECLOSED while
// draining; VK_ENOMEM. Nothing is linked on failure.
int vk_hub_join(vk_hub_t *hub, vk_hub_link_t *link, const char *vin,
                const vk_hub_link_ops_t *ops);

// vk_hub_leave unlinks `link`; the vehicle's subscription is dropped with
// its last link. Idempotent; safe from the link's own callbacks.
void vk_hub_leave(vk_hub_link_t *link);

// vk_hub_defer asks for `notify(link, 0)` again after a short wait (Redis
// was too busy to take the channel's read). A no-op if already deferred or
// not joined.
void vk_hub_defer(vk_hub_link_t *link);

// vk_hub_channels returns how many links are joined; vk_hub_vehicles how
// many distinct vehicles they belong to.
size_t vk_hub_channels(const vk_hub_t *hub);
size_t vk_hub_vehicles(const vk_hub_t *hub);

#ifdef __cplusplus
}
#endif

#endif  // VK_HUB_H
