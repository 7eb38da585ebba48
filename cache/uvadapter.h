// uvadapter.h: hiredis's event hooks on a libuv loop. Debian's hiredis 0.14
// ships adapters/libuv.h, but its poll callback ignores libuv's error
// status, so hiredis never learns that a connect was refused or a
// connection reset and waits out its own deadline (seen: a refused
// reconnect hung for 60 s). This adapter replays the events hiredis waits
// for on an error, so that its own read or write fails and it tears the
// context down at once, as hiredis 1.x's adapter does.
#ifndef VK_UVADAPTER_H
#define VK_UVADAPTER_H

#include <hiredis/async.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

// vk_redis_uv_attach hooks `ac` to `loop`. The watcher belongs to the
// context and is freed after hiredis frees the context. Returns 0,
// VK_ENOMEM or VK_EIO.
int vk_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#ifdef __cplusplus
}
#endif

#endif  // VK_UVADAPTER_H
