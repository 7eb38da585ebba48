// subscriber.h: a Redis pub/sub subscriber on the libuv loop (hiredis 0.14).
//
// A subscribed Redis connection answers nothing but (un)subscribe
// confirmations and published messages, so it cannot share vk_redis_t's
// connection: a vk_subscriber_t owns a connection of its own to the same
// server. It keeps the set of channels its user wants and keeps it true by
// itself: a failed connect or a lost connection is retried with exponential
// back-off and jitter (as cache/redis.c does), and after every (re)connect
// every wanted channel is SUBSCRIBEd again. Messages published while the
// connection was down are lost (Redis pub/sub keeps nothing), which is why
// `on_subscribed` reports each confirmation: a user that keeps its state in
// Redis re-reads it then, and so misses nothing.
//
// Each channel has at most one SUBSCRIBE or UNSUBSCRIBE in flight; wanting a
// channel again while its UNSUBSCRIBE is in flight subscribes it once the
// UNSUBSCRIBE is confirmed. (hiredis 0.14 keeps one callback per channel
// name and deletes it on the UNSUBSCRIBE confirmation, so a SUBSCRIBE
// pipelined behind an UNSUBSCRIBE of the same channel would lose its
// messages.)
//
// A silently dead peer is noticed through TCP keepalive (no PING: hiredis
// 0.14 cannot route a PING's reply on a subscribed connection).
//
// Threading: every function must be called on the loop thread.
#ifndef VK_SUBSCRIBER_H
#define VK_SUBSCRIBER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_subscriber_s vk_subscriber_t;

// VK_SUBSCRIBER_CHANNEL_MAX is the longest channel name accepted.
#define VK_SUBSCRIBER_CHANNEL_MAX 256u

// vk_subscriber_config_t configures vk_subscriber_new. Zero fields take the
// defaults; the struct and `url` need not outlive vk_subscriber_new.
// Callbacks may call vk_subscriber_subscribe, _unsubscribe and _free.
typedef struct {
  // As vk_redis_config_t.url: "redis://host:port" or "unix:/path".
  const char *url;
  // Deadline of each connect attempt. 0 = 2000.
  uint32_t connect_timeout_ms;
  // Back-off between connect attempts, as vk_redis_config_t. 0 = 50 and
  // 0 = 2000.
  uint32_t reconnect_min_ms;
  uint32_t reconnect_max_ms;
  // A message published on a wanted `channel` (not NUL-terminated; the
  // bytes are valid only during the callback). Required.
  void (*on_message)(vk_subscriber_t *s, const char *channel,
                     size_t channel_len, const char *payload,
                     size_t payload_len, void *arg);
  // Redis confirmed the subscription of a wanted `channel`: messages
  // published from now on will arrive. Runs after vk_subscriber_subscribe
  // and again after each reconnect. Optional.
  void (*on_subscribed)(vk_subscriber_t *s, const char *channel,
                        size_t channel_len, void *arg);
  // The connection was established (`connected` true) or lost (false), once
  // per transition. While it is down no channel is subscribed. Optional.
  void (*on_state)(vk_subscriber_t *s, bool connected, void *arg);
  void *arg;
  // When true every wanted name is a glob pattern (PSUBSCRIBE), and
  // on_message reports the channel each message was published on.
  bool patterns;
} vk_subscriber_config_t;

// vk_subscriber_new allocates a subscriber on `loop` that starts connecting
// on the next loop iteration; it never blocks and calls no callback. Sets
// `*out` and returns 0, or returns VK_EINVAL (NULL argument, bad URL, no
// on_message, min > max back-off), VK_ENOMEM or VK_EIO (timer setup).
// Release with vk_subscriber_free.
int vk_subscriber_new(vk_subscriber_t **out, uv_loop_t *loop,
                      const vk_subscriber_config_t *cfg);

// vk_subscriber_free closes the connection and frees `s` from a later close
// callback, so the loop must run on. No callback runs after this call. Safe
// from inside any of its callbacks; NULL is a no-op.
void vk_subscriber_free(vk_subscriber_t *s);

// vk_subscriber_subscribe adds `channel` to the wanted set (a no-op if it is
// already wanted) and subscribes it now if connected, else after the next
// connect. Returns 0, VK_EINVAL (NULL, empty or longer than
// VK_SUBSCRIBER_CHANNEL_MAX), VK_ENOMEM, or VK_ECLOSED after _free.
int vk_subscriber_subscribe(vk_subscriber_t *s, const char *channel);

// vk_subscriber_unsubscribe removes `channel` from the wanted set; its
// messages stop being reported at once. A no-op if it is not wanted.
void vk_subscriber_unsubscribe(vk_subscriber_t *s, const char *channel);

// vk_subscriber_connected tells whether the connection is established.
bool vk_subscriber_connected(const vk_subscriber_t *s);

// vk_subscriber_count returns how many channels are wanted.
size_t vk_subscriber_count(const vk_subscriber_t *s);

#ifdef __cplusplus
}
#endif

#endif  // VK_SUBSCRIBER_H
