// server.h: a gRPC server on a libuv loop: listeners (h2c or TLS), the
// connections they accept, the services they route to, and graceful drain.
// vkeyd and vkey-interop-server are both built on it.
#ifndef VK_SERVER_H
#define VK_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "grpc.h"

// vk_server_limits_t: every limit the server enforces. Zero fields take the
// defaults of vk_server_limits_default().
typedef struct vk_server_limits_s {
  uint32_t max_concurrent_streams;  // per connection (SETTINGS)
  uint32_t max_header_list_size;    // bytes of request metadata per call
  uint32_t max_message_size;        // bytes of one gRPC message, either way
  uint32_t max_connections;         // open connections; more are refused
  uint32_t idle_timeout_ms;         // a connection with no open stream
  uint32_t send_queue_bytes;        // per call, before vk_call_send says EAGAIN
  uint32_t max_call_arena_bytes;    // per call arena cap
} vk_server_limits_t;

// vk_server_limits_default fills `out` with the defaults.
void vk_server_limits_default(vk_server_limits_t *out);

typedef struct vk_server_s vk_server_t;

// vk_server_new creates a server on `loop`. Returns 0, VK_ENOMEM.
int vk_server_new(vk_server_t **out, uv_loop_t *loop,
                  const vk_server_limits_t *limits);

// vk_server_add_service routes calls of `svc`'s methods to it. `svc` must
// outlive the server. Returns 0, VK_EINVAL on a duplicate, VK_ENOMEM.
int vk_server_add_service(vk_server_t *s, const vk_service_t *svc);

// vk_server_listen binds `host:port` (port 0 picks one, see *out_port) and
// accepts h2c with prior knowledge, or TLS with ALPN h2 when `tls` is not
// NULL (the server takes a reference to it). Returns 0 or VK_EIO.
int vk_server_listen(vk_server_t *s, const char *host, int port, SSL_CTX *tls,
                     int *out_port);

// vk_server_share makes `s`'s listeners deal the connections they accept
// in turn to `s` and to each of `others` (n of them), servers on other
// loops run by other threads: the way one process serves on several
// cores. A connection stays on the loop it was dealt to. Call it before any
// of the loops runs; `others` must stay alive until `s`'s listeners are
// closed (vk_server_drain or vk_server_free on `s` closes them at once, so
// drain `s` first). Returns 0 or VK_ENOMEM.
int vk_server_share(vk_server_t *s, vk_server_t *const *others, size_t n);

// vk_server_drain stops accepting, sends GOAWAY on every connection and
// lets in-flight calls finish; calls still open after `timeout_ms` are
// cancelled. `done` runs on the loop once every connection is closed.
void vk_server_drain(vk_server_t *s, uint32_t timeout_ms,
                     void (*done)(vk_server_t *s, void *arg), void *arg);

// vk_server_free closes every handle; the memory is released from the last
// close callback, so run the loop afterwards. Free(NULL) is a no-op.
void vk_server_free(vk_server_t *s);

// vk_server_connection_count returns the open connections.
size_t vk_server_connection_count(const vk_server_t *s);

#endif  // VK_SERVER_H
