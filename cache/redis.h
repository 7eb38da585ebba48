// redis.h: an asynchronous Redis client on the libuv loop (hiredis 0.14).
//
// One vk_redis_t owns at most one connection at a time and keeps it alive by
// itself: a failed connect or a lost connection is retried with exponential
// back-off and jitter, and `on_state` reports each transition. Every command
// has a deadline; hiredis 0.14 has none, so the client keeps its own FIFO of
// pending commands (replies come back in order) and a single timer watches
// the oldest. When it is overdue the Redis is considered stuck: every pending
// command fails with VK_ETIMEDOUT and the connection is dropped and remade.
//
// Threading: every function must be called on the loop thread.
//
// The process must ignore SIGPIPE (hiredis writes with write(2), and a write
// to a connection that Redis closed would otherwise kill the process).
#ifndef VK_REDIS_H
#define VK_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

// VK_REDIS_MAX_PENDING is the default cap on commands awaiting a reply.
#define VK_REDIS_MAX_PENDING 100000u

// VK_REDIS_MAX_PENDING_BYTES caps the encoded size of all commands awaiting
// a reply (and so of hiredis's output buffer), whatever their count.
#define VK_REDIS_MAX_PENDING_BYTES ((size_t)64 << 20)

typedef struct vk_redis_s vk_redis_t;

// vk_redis_config_t configures vk_redis_new. Zero fields take the defaults;
// the struct and `url` need not outlive vk_redis_new.
typedef struct {
  // "redis://host:port" (host may be a name, an IPv4 literal or a bracketed
  // IPv6 literal), "unix:/path/to/sock" or "unix:///path/to/sock".
  const char *url;
  // The connection is judged stuck, and dropped, when a command has waited
  // this long and no reply at all came meanwhile (a command waits for the
  // commands ahead of it: a deep pipeline is slow, not stuck); also the
  // deadline of each connect attempt. 0 = 2000.
  uint32_t command_timeout_ms;
  // The wait before reconnecting grows exponentially from reconnect_min_ms
  // to reconnect_max_ms with jitter. 0 = 50 and 0 = 2000.
  uint32_t reconnect_min_ms;
  uint32_t reconnect_max_ms;
  // Optional. Called with `connected` true when a connection is
  // established and false when it is lost, once per transition (failed
  // reconnect attempts while disconnected are not reported). Never called
  // from vk_redis_new, nor after vk_redis_free. May call vk_redis_command
  // and vk_redis_free.
  void (*on_state)(vk_redis_t *r, bool connected, void *arg);
  void *arg;
  // Cap on commands awaiting a reply; 0 = VK_REDIS_MAX_PENDING.
  uint32_t max_pending;
} vk_redis_config_t;

// vk_redis_cb receives the outcome of one command, exactly once:
//   0            `reply` is Redis's answer; it may be a REDIS_REPLY_ERROR
//                reply (e.g. WRONGTYPE), which is the caller's to judge.
//   VK_EUNAVAIL  the connection was lost before the reply arrived; the
//                command may or may not have been executed.
//   VK_ETIMEDOUT no reply to any command for command_timeout_ms while this
//                one waited (the connection is then dropped and remade);
//                the command may have been executed.
//   VK_ECLOSED   vk_redis_free was called before the reply arrived.
// `reply` is NULL unless status is 0, and is valid only during the callback
// (hiredis frees it afterwards). The callback may call vk_redis_command and
// vk_redis_free.
typedef void (*vk_redis_cb)(vk_redis_t *r, int status, const redisReply *reply,
                            void *priv);

// vk_redis_new allocates a client on `loop` and starts connecting on the
// next loop iteration; it never blocks and calls no callback. On success it
// sets `*out` and returns 0. Returns VK_EINVAL for a NULL argument, a bad
// URL or reconnect_min_ms > reconnect_max_ms, VK_ENOMEM, or VK_EIO if a
// timer cannot be set up. Release with vk_redis_free.
//
// Connecting to a host name resolves it synchronously (hiredis 0.14 calls
// getaddrinfo); use an IP literal or a unix socket where that matters.
int vk_redis_new(vk_redis_t **out, uv_loop_t *loop,
                 const vk_redis_config_t *cfg);

// vk_redis_free starts tearing `r` down: every pending command's callback
// runs with VK_ECLOSED from a later loop callback, the connection and the
// handles are closed, and the memory is freed from the last close callback,
// so the loop must run on for the teardown to finish. `on_state` is not
// called again. Safe to call from any callback of this client, including a
// reply callback. NULL is a no-op; `r` must not be used after the call
// except from the callbacks it triggers.
void vk_redis_free(vk_redis_t *r);

// vk_redis_connected returns whether `r` has an established connection that
// accepts commands. False for NULL and once vk_redis_free has been called.
bool vk_redis_connected(const vk_redis_t *r);

// vk_redis_command formats a command with hiredis's printf-like syntax
// ("SET %s %b", key, val, val_len) and queues it. Returns 0 when queued:
// `cb` then runs exactly once, never from inside this call. Otherwise `cb`
// never runs and the return value is:
//   VK_EUNAVAIL  not connected (retry after on_state reports true);
//   VK_ECLOSED   vk_redis_free was called;
//   VK_EBUSY     max_pending commands or VK_REDIS_MAX_PENDING_BYTES are
//                already pending;
//   VK_EINVAL    NULL argument, bad format string, no command name, or a
//                command that would break the one-reply-per-command order
//                (SUBSCRIBE family, MONITOR, HELLO: pub/sub needs its own
//                client);
//   VK_ETOOBIG   the encoded command is over VK_REDIS_MAX_PENDING_BYTES;
//   VK_ENOMEM.
// Blocking commands (BLPOP, WAIT, ...) are subject to command_timeout_ms
// like any other, and CLIENT REPLY OFF/SKIP desynchronises the replies and
// ends in a timeout: do not send them.
int vk_redis_command(vk_redis_t *r, vk_redis_cb cb, void *priv, const char *fmt,
                     ...);

// vk_redis_format_argv encodes a command as Redis's wire format (RESP: an
// array of bulk strings) into `out`, `cap` bytes, and returns the encoded
// length; when that is more than `cap`, nothing useful is in `out` (call it
// again with room). `lens` as in vk_redis_command_argv. The same bytes as
// hiredis's redisFormatCommandArgv, without its sprintf per argument.
size_t vk_redis_format_argv(char *out, size_t cap, int argc, const char **argv,
                            const size_t *lens);

// vk_redis_command_argv is vk_redis_command with the arguments given as
// `argc` (>= 1) strings; `argvlen` gives their lengths (binary safe) or is
// NULL for NUL-terminated strings. The arguments are copied. Same returns.
int vk_redis_command_argv(vk_redis_t *r, vk_redis_cb cb, void *priv, int argc,
                          const char **argv, const size_t *argvlen);

// vk_redis_parse_url splits a URL accepted by vk_redis_config_t.url. For
// "redis://host:port" it writes the host (brackets removed) to `out_host`,
// the port (1-65535) to `*out_port` and "" to `out_unix_path`; for
// "unix:/path" and "unix:///path" it writes "" to `out_host`, 0 to
// `*out_port` and the absolute path to `out_unix_path`. Returns 0, or
// VK_EINVAL for a NULL argument, a malformed URL (missing or out-of-range
// port, user info, a database path, an empty or relative path, control
// characters), a host or path that does not fit its buffer (`host_len`,
// `path_len` include the NUL), or a path too long for a unix socket. The
// outputs are unspecified on failure.
int vk_redis_parse_url(const char *url, char *out_host, size_t host_len,
                       int *out_port, char *out_unix_path, size_t path_len);

#ifdef __cplusplus
}
#endif

#endif  // VK_REDIS_H
