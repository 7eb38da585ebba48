// rpc.h: a small gRPC client for everything vkey-bench does besides the
// measured load: provisioning a fleet through the public API (unary calls
// in bulk) and holding vehicle channels (server streams) for the connect
// scenario. One libuv loop, any number of h2c connections (each optionally
// bound to its own source address), calls queued and spread round-robin
// over the connections with free stream slots.
//
// Every callback runs on the loop thread, possibly inside nghttp2's own
// callbacks: a callback may start new calls (they are queued and sent when
// nghttp2 returns) but must not free the client.
#ifndef VK_BENCH_RPC_H
#define VK_BENCH_RPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "scenario.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_bench_rpc_s vk_bench_rpc_t;

// The end of a call. grpc_status is the gRPC status, or -1 for a transport
// failure (connection refused or lost, stream reset, no grpc-status, a body
// that is not one gRPC message); `message` is the grpc-message or the
// transport reason (never NULL). For unary calls `msg` is the response
// message (NULL when there is none); streaming calls got theirs through
// their message callback. Everything is valid during the callback only.
typedef struct vk_bench_rpc_result_s {
  int grpc_status;
  const char *message;
  const uint8_t *msg;
  size_t msg_len;
} vk_bench_rpc_result_t;

typedef void (*vk_bench_rpc_done_cb)(void *arg,
                                     const vk_bench_rpc_result_t *res);
// One message of a server stream, without its gRPC prefix.
typedef void (*vk_bench_rpc_msg_cb)(void *arg, const uint8_t *msg, size_t len);

typedef struct vk_bench_rpc_config_s {
  struct sockaddr_storage addr;  // the server
  const char *authority;         // ":authority", kept by reference
  uint32_t connections;          // at least 1
  uint32_t streams;              // calls in flight per connection, >= 1
  // Source addresses to bind before connecting, used round-robin by
  // connection (port 0); none when n_sources is 0. Kept by reference.
  const struct sockaddr_storage *sources;
  size_t n_sources;
  uint32_t max_connecting;  // connection attempts at once (0: 128)
  // Flow-control window per stream and connection; 0: nghttp2's 64 KiB.
  uint32_t window;
} vk_bench_rpc_config_t;

// vk_bench_rpc_resolve fills `out` with the first address of host:port
// (numeric port). Returns 0 or VK_EUNAVAIL.
int vk_bench_rpc_resolve(struct sockaddr_storage *out, const char *host,
                         const char *port);

// vk_bench_rpc_new makes a client on `loop` and starts connecting. Returns
// 0 or VK_ENOMEM. `cfg` is copied; its pointers must outlive the client.
int vk_bench_rpc_new(vk_bench_rpc_t **out, uv_loop_t *loop,
                     const vk_bench_rpc_config_t *cfg);

// vk_bench_rpc_call queues a call of `path` with extra request metadata
// `hdrs` (values sent as given: base64 "-bin" values yourself) and the
// request message `msg` (the client adds the gRPC prefix). Everything is
// copied. `on_msg` NULL makes a unary call; otherwise every response
// message goes to `on_msg` as it arrives. `on_done` runs exactly once,
// also when the client closes first. Returns 0, VK_ENOMEM, or VK_ECLOSED
// after vk_bench_rpc_close.
int vk_bench_rpc_call(vk_bench_rpc_t *r, const char *path,
                      const vk_bench_hdr_t *hdrs, size_t n_hdrs,
                      const uint8_t *msg, size_t msg_len,
                      vk_bench_rpc_msg_cb on_msg, vk_bench_rpc_done_cb on_done,
                      void *arg);

// Counters: calls queued or in flight; connections ready (SETTINGS seen),
// failed to connect or lost, and the first connection error.
typedef struct vk_bench_rpc_stats_s {
  uint64_t pending;
  uint32_t ready;
  uint32_t failed;
  const char *first_error;  // static or owned by the client; "" if none
} vk_bench_rpc_stats_t;
void vk_bench_rpc_stats(const vk_bench_rpc_t *r, vk_bench_rpc_stats_t *out);

// vk_bench_rpc_close fails every queued or unfinished call (on_done with
// -1 "client closed"), sends GOAWAY and closes the connections; the client
// is freed once its handles are closed (uv_run then returns). Not to be
// called from an rpc callback: use a timer or the loop's idle phase.
void vk_bench_rpc_close(vk_bench_rpc_t *r);

// A batch of unary calls, for provisioning: `make` builds call `index`
// into `out` (method path, metadata, message); `done` gets its result.
typedef struct vk_bench_rpc_req_s {
  const char *path;
  vk_bench_hdr_t hdrs[4];
  size_t n_hdrs;
  vk_bench_buf_t msg;  // reused from call to call: reset len, append
} vk_bench_rpc_req_t;

typedef int (*vk_bench_rpc_make_fn)(void *arg, size_t index,
                                    vk_bench_rpc_req_t *out);
typedef void (*vk_bench_rpc_each_fn)(void *arg, size_t index,
                                     const vk_bench_rpc_result_t *res);

// vk_bench_rpc_batch runs calls 0..n-1 over `connections` connections on a
// private loop, at most `window` in flight, and returns when every one has
// ended. Returns 0 (each call's outcome went to `done`), VK_EUNAVAIL when
// the server cannot be reached, or the first error of `make`.
int vk_bench_rpc_batch(const vk_bench_rpc_config_t *cfg, size_t n,
                       size_t window, vk_bench_rpc_make_fn make,
                       vk_bench_rpc_each_fn done, void *arg);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_RPC_H
