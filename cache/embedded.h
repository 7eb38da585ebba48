// embedded.h: the embedded default Redis: vkeyd runs its own redis-server as
// a child process, reachable only through a unix socket in its data dir.
//
// The child listens on no TCP port, keeps an append-only file (fsync every
// second) and no RDB snapshots, and logs to <data_dir>/redis.log. Readiness
// is not awaited: point a vk_redis_t at vk_redis_child_url and its reconnect
// loop waits for the socket to appear.
#ifndef VK_EMBEDDED_H
#define VK_EMBEDDED_H

#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_redis_child_s vk_redis_child_t;

// vk_redis_child_start spawns redis-server for `data_dir` on `loop` and sets
// `*out`. It creates `data_dir` (mode 0700, not its parents) if missing and
// takes an exclusive lock on <data_dir>/vkeyd.lock for the child's lifetime,
// so two vkeyd processes never run a Redis on one directory. If the pidfile
// names a redis-server still running in `data_dir` (left by a vkeyd that was
// killed), it is sent SIGTERM and awaited, then SIGKILL: this one case
// blocks the caller for up to ~7 s. `redis_server_path` NULL means
// "redis-server" from PATH.
//
// Returns 0, or:
//   VK_EINVAL    NULL argument, or a data dir whose socket path is too long
//                for a unix socket;
//   VK_EBUSY     another process holds the lock, or a stale redis-server
//                would not die;
//   VK_ENOTFOUND redis-server was not found;
//   VK_EIO       the directory, lock or spawn failed otherwise (logged);
//   VK_ENOMEM.
// After a spawn failure the loop must still run once to release the process
// handle. Release a started child with vk_redis_child_stop.
int vk_redis_child_start(vk_redis_child_t **out, uv_loop_t *loop,
                         const char *data_dir, const char *redis_server_path);

// vk_redis_child_url returns "unix:<data_dir>/redis.sock" (data_dir made
// absolute), owned by `c` and valid until vk_redis_child_stop completes.
const char *vk_redis_child_url(const vk_redis_child_t *c);

// vk_redis_child_stop sends SIGTERM (Redis then flushes its AOF), waits for
// the exit, escalating to SIGKILL after 5 s, then closes the handles, frees
// `c`, releases the lock and calls `done(arg)` (if non-NULL) from a loop
// callback. Call it once; NULL is a no-op and does not call `done`. If the
// child already exited (logged as unexpected), it only cleans up.
void vk_redis_child_stop(vk_redis_child_t *c, void (*done)(void *arg),
                         void *arg);

#ifdef __cplusplus
}
#endif

#endif  // VK_EMBEDDED_H
