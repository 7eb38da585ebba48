// internal.h: the framework's private structures, shared by server.c
// (listeners, drain), conn.c (socket and TLS I/O), h2.c (nghttp2 callbacks)
// and call.c (gRPC call state). Service modules never include this.
//
// Ownership in one picture:
//   vk_server_t  owns listeners, the connection list, the router and the
//                shared I/O scratch buffers (one loop thread uses them).
//   vk_conn_t    owns its uv_tcp_t, idle timer, nghttp2 session, SSL, and a
//                heap copy of bytes a partial write left behind (with its
//                uv_write_t, only while that write is pending). nghttp2's
//                frame buffer is the session's, but h2.c places it and
//                returns its pages to the kernel while the connection is
//                quiet.
//   vk_call_t    is refcounted: one reference from its stream (dropped in
//                nghttp2's stream-close callback or at connection teardown),
//                one per pending asynchronous job. It owns its arena, its
//                request buffer and its queue of outgoing messages.
#ifndef VK_INTERNAL_H
#define VK_INTERNAL_H

#include <pthread.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "arena.h"
#include "grpc.h"
#include "router.h"
#include "server.h"

typedef struct vk_conn_s vk_conn_t;

// A growable byte buffer with a cap, for I/O scratch space.
typedef struct vk_bytes_s {
  uint8_t *data;
  size_t len;
  size_t cap;
} vk_bytes_t;

typedef struct vk_listener_s {
  uv_tcp_t tcp;
  vk_server_t *server;
  SSL_CTX *tls;  // NULL: h2c with prior knowledge
  struct vk_listener_s *next;
} vk_listener_t;

// The connection budget that servers sharing listeners share (server.c).
typedef struct vk_conn_budget_s vk_conn_budget_t;

struct vk_server_s {
  uv_loop_t *loop;
  vk_server_limits_t limits;
  vk_router_t router;
  nghttp2_session_callbacks *h2_callbacks;
  nghttp2_option *h2_option;

  vk_listener_t *listeners;
  // Servers on other loops that this one's listeners deal connections to,
  // in turn with itself (vk_server_share); next_share is whose turn it is,
  // 0 being this server.
  vk_server_t **shares;
  size_t n_shares;
  size_t next_share;
  // Connections another loop's listener dealt to this server, taken over
  // by on_inbox on this loop: the only part of a server that other
  // threads touch, under inbox_lock.
  pthread_mutex_t inbox_lock;
  struct vk_handoff_s *inbox;
  size_t inbox_len, inbox_cap;
  uv_async_t inbox_async;

  vk_conn_t *conns;  // doubly linked through conn->prev/next
  size_t n_conns;    // on this loop
  vk_conn_budget_t *budget;
  vk_conn_t *dirty;  // connections to flush before the loop blocks
  uv_prepare_t flush_prepare;

  // Reads are consumed synchronously, so one buffer serves every connection
  // and an idle connection holds no read buffer at all.
  uint8_t read_buf[65536];
  uint8_t plain_buf[16384];  // TLS plaintext, likewise
  vk_bytes_t out_plain;      // frames gathered from nghttp2 for one write
  vk_bytes_t out_cipher;     // the same after TLS

  // Connections whose nghttp2 frame buffer may have resident pages (h2.c),
  // least recently written first; fb_sweep fires when the first has been
  // quiet for VK_H2_FRAMEBUF_QUIET_MS.
  vk_conn_t *fb_head, *fb_tail;  // through conn->fb_prev/fb_next
  uv_timer_t fb_sweep;
  size_t page_size;

  uint64_t next_call_id;
  bool draining;
  bool freeing;
  uv_timer_t drain_timer;
  void (*drain_done)(vk_server_t *s, void *arg);
  void *drain_arg;
  size_t closing_conns;  // connections whose handles are still closing
  int pending_closes;    // server handles still closing in vk_server_free
};

struct vk_conn_s {
  uv_tcp_t tcp;     // tcp.data == this conn
  uv_timer_t idle;  // armed while no stream is open
  vk_server_t *server;
  nghttp2_session *h2;
  SSL *ssl;  // NULL for h2c
  bool handshake_done;

  vk_conn_t *prev, *next;  // in server->conns
  vk_conn_t *dirty_next;   // in server->dirty
  bool dirty;

  vk_call_t *calls;     // open calls, through call->conn_next
  vk_call_t *writable;  // calls waiting for on_writable
  size_t n_streams;
  // Bytes of partial request messages held by this connection's calls,
  // capped so that many streams cannot each hold a maximal message.
  size_t rbuf_total;

  // What uv_try_write left for uv_write; NULL while no write is pending.
  struct vk_pending_write_s *pending_write;

  // nghttp2's output frame buffer, on pages of its own (h2.c); NULL when
  // nghttp2 did not allocate one while the session was created.
  uint8_t *fb;
  size_t fb_len;
  uint64_t fb_used_at;           // uv_now() of the last frames written
  vk_conn_t *fb_prev, *fb_next;  // in server->fb_head
  bool fb_listed;                // some page may be resident
  bool h2_creating;  // inside nghttp2_session_server_new3 (h2.c's allocator)

  bool closing;  // uv_close has been called on the handles
  bool goaway_sent;
  int pending_closes;
  char peer[64];
};

// A chunk of response bytes: a framed message.
typedef struct vk_outbuf_s {
  struct vk_outbuf_s *next;
  size_t len;
  uint8_t data[];
} vk_outbuf_t;

// Bytes of arena in each call's own allocation (vk_call_t.arena_inline).
#define VK_CALL_INLINE_ARENA 1536

// Metadata as received or to be sent.
typedef struct vk_md_s {
  struct vk_md_s *next;
  const char *key;
  size_t key_len;
  const uint8_t *value;
  size_t value_len;
} vk_md_t;

struct vk_call_s {
  vk_conn_t *conn;  // NULL once the stream is gone
  uv_loop_t *loop;
  int32_t stream_id;
  int refs;
  uint64_t id;
  const vk_service_t *service;
  const vk_method_t *method;
  void *data;
  vk_call_t *conn_prev, *conn_next;  // in conn->calls
  vk_call_t *writable_next;          // in conn->writable

  // Request headers, as received (in the arena).
  vk_md_t *md;
  size_t md_bytes;
  const char *path;
  size_t path_len;
  const char *content_type;
  const char *http_method;
  const char *grpc_encoding;
  const uint8_t *grpc_timeout;
  size_t grpc_timeout_len;
  const uint8_t *accept_encoding;
  size_t accept_encoding_len;
  bool md_too_big;

  // Request body reassembly: bytes of an incomplete message (heap, capped).
  uint8_t *rbuf;
  size_t rbuf_len;
  size_t rbuf_cap;
  unsigned n_received;
  const ProtobufCMessage *unary_req;
  const uint8_t *req_bytes;  // with method->keep_request_bytes (arena)
  size_t req_len;
  bool last_compressed;
  bool client_gzip;  // request messages may be gzip-compressed
  bool client_accepts_gzip;
  bool compress_out;

  // Deadline (only calls with grpc-timeout have a timer).
  uint64_t deadline_ms;
  struct vk_deadline_s *deadline;

  // State.
  bool started;      // handler's on_start ran
  bool half_closed;  // client sent END_STREAM
  bool finished;     // trailers (or Trailers-Only) submitted
  bool cancelled;    // ended before the handler finished it
  bool headers_sent;
  bool want_writable;
  bool in_writable_list;
  bool headers_gzip;  // response headers said grpc-encoding: gzip
  bool rejected;      // answered before routing: ignore the body

  // Response.
  vk_outbuf_t *out_head, *out_tail;
  size_t out_off;    // bytes of out_head already given to nghttp2
  size_t out_bytes;  // bytes queued and not yet given to nghttp2
  unsigned n_sent;
  vk_md_t *resp_headers;
  vk_md_t *trailers;
  size_t resp_md_bytes;
  vk_grpc_status_t status;
  const char *status_msg;  // percent-encoded, in the arena

  vk_arena_t arena;
  // The first arena chunk lives in the call's own allocation, so a typical
  // call makes no further malloc for its metadata and request. Sized in
  // bytes (max_align_t is 32 bytes on x86-64, so a count of them hid a
  // 2 KiB buffer): a CheckKeyStatus from vkey-bench uses 1.36 KiB of
  // arena, a vehicle channel about 0.8 KiB for its whole life; VerifyKey
  // (its crypto job alone is 2.3 KiB) takes a heap chunk at any size. Every
  // open stream pays for it, so it is no larger than that.
  alignas(16) unsigned char arena_inline[VK_CALL_INLINE_ARENA];
};

// --- call.c, used by h2.c ----------------------------------------------------
vk_call_t *vk__call_new(vk_conn_t *c, int32_t stream_id);
// Returns 0, or VK_ETOOBIG once the header list passes its cap.
int vk__call_on_header(vk_call_t *call, const uint8_t *name, size_t name_len,
                       const uint8_t *value, size_t value_len);
void vk__call_on_headers_end(vk_call_t *call);
void vk__call_on_data(vk_call_t *call, const uint8_t *data, size_t len);
void vk__call_on_end_stream(vk_call_t *call);
// The stream is gone (closed, reset, or its connection torn down).
void vk__call_on_stream_close(vk_call_t *call);
// nghttp2 pulls response bytes.
ssize_t vk__call_read_data(vk_call_t *call, uint8_t *buf, size_t len,
                           uint32_t *data_flags);
// Called after each flush for calls waiting to send more.
void vk__call_notify_writable(vk_call_t *call);
// Drain timeout: cancel with UNAVAILABLE.
void vk__call_abort(vk_call_t *call, vk_grpc_status_t status, const char *msg);

// --- conn.c -----------------------------------------------------------------
// Reserves a place in `s`'s connection budget for a new connection: false
// (and a warning) when the instance is full or `s` is draining.
bool vk__conn_reserve(vk_server_t *s);
// Gives a reserved place back.
void vk__conn_unreserve(vk_server_t *s);
// Accepts the listener's pending connection and closes it at once: over
// the connection limit, or out of memory.
void vk__conn_reject(vk_listener_t *l);
// Accepts the listener's pending connection into a place reserved on its
// server.
void vk__conn_accept(vk_listener_t *l);
// Takes over `fd` into a place the listener reserved: a connection another
// loop's listener accepted for `s` (closed when `s` is draining). `tls` as
// a listener's.
void vk__conn_adopt(vk_server_t *s, int fd, SSL_CTX *tls);
void vk__conn_schedule_flush(vk_conn_t *c);
void vk__conn_flush(vk_conn_t *c);
void vk__conn_close(vk_conn_t *c);
void vk__conn_goaway(vk_conn_t *c);
void vk__conn_stream_opened(vk_conn_t *c);
void vk__conn_stream_closed(vk_conn_t *c);

// --- server.c ---------------------------------------------------------------
// Called when a closing connection's last handle has closed.
void vk__server_conn_released(vk_server_t *s);

// --- h2.c -------------------------------------------------------------------
int vk__h2_callbacks_new(nghttp2_session_callbacks **out);
// Creates c->h2 with h2.c's allocator. Returns 0 or VK_ENOMEM.
int vk__h2_session_new(vk_conn_t *c);

// The frame buffer's pages (see h2.c). conn.c calls vk__h2_framebuf_touched
// after a flush that wrote frames; once the connection has written nothing
// for VK_H2_FRAMEBUF_QUIET_MS and nghttp2 has nothing to send, the pages go
// back to the kernel. vk__h2_framebuf_forget unlinks a closing connection.
#define VK_H2_FRAMEBUF_QUIET_MS 500u
void vk__h2_framebuf_init(vk_server_t *s);
void vk__h2_framebuf_touched(vk_conn_t *c);
void vk__h2_framebuf_forget(vk_conn_t *c);
// Returns the whole pages of c->fb to the kernel now. Returns true if
// there was a frame buffer to release. For the sweep and tests.
bool vk__h2_framebuf_release(vk_conn_t *c);

#endif  // VK_INTERNAL_H
