// rpc.c: see rpc.h. The structure follows client.c (nghttp2 driven through
// mem_recv/mem_send, one uv_write in flight per connection, nothing torn
// down inside an nghttp2 callback), with calls allocated one by one
// instead of fixed stream slots: this client runs before and beside the
// measurement, not in it.
#include "rpc.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "common.h"

#define READ_BUF_SIZE (256 * 1024)
#define WRITE_BATCH_CAP (64 * 1024)
#define DEFAULT_MAX_CONNECTING 128

typedef struct rpc_conn_s rpc_conn_t;

typedef struct call_s {
  struct call_s *next;  // queue link, then the connection's list
  struct call_s *prev;  // the connection's list (in flight)
  vk_bench_rpc_t *rpc;
  rpc_conn_t *conn;  // NULL while queued
  int32_t stream_id;
  vk_bench_rpc_msg_cb on_msg;
  vk_bench_rpc_done_cb on_done;
  void *arg;
  nghttp2_nv *nva;  // points into the same allocation
  size_t nnv;
  uint8_t *body;  // gRPC prefix + message, same allocation
  size_t body_len;
  size_t sent;
  int http_status;
  int grpc_status;  // -1 until seen
  int failed;       // transport failure recorded
  char message[160];
  vk_bench_buf_t resp;
} call_t;

struct rpc_conn_s {
  uv_tcp_t tcp;  // tcp.data == this
  uv_connect_t connect_req;
  uv_write_t write_req;
  vk_bench_rpc_t *rpc;
  nghttp2_session *h2;
  rpc_conn_t *avail_prev, *avail_next;  // in rpc->avail while it has room
  int in_avail;
  call_t *calls;  // in flight on this connection
  uint32_t max_streams;
  uint32_t inflight;
  int started;  // uv_tcp_init done
  int ready;
  int dead;     // lost, failed or GOAWAY: takes no new calls
  int closing;  // uv_close called
  int writing;
  vk_bench_buf_t out;
  vk_bench_buf_t wbuf;
};

struct vk_bench_rpc_s {
  uv_loop_t *loop;
  vk_bench_rpc_config_t cfg;
  nghttp2_session_callbacks *cbs;
  nghttp2_option *opt;
  rpc_conn_t *conns;
  uint32_t next_to_start;
  uint32_t connecting;
  uint32_t open_handles;
  uint32_t ready;
  uint32_t failed;
  char first_error[160];
  rpc_conn_t *avail;  // circular list of ready conns with room
  call_t *queue_head, *queue_tail;
  uint64_t pending;
  int depth;  // > 0 inside nghttp2 calls: dispatch waits
  int closed;
  uint8_t *rbuf;
};

static void conn_flush(rpc_conn_t *c);
static void dispatch(vk_bench_rpc_t *r);

// --- the list of connections with room -------------------------------------

static void avail_remove(rpc_conn_t *c) {
  vk_bench_rpc_t *r = c->rpc;
  if (!c->in_avail) {
    return;
  }
  c->in_avail = 0;
  if (c->avail_next == c) {
    r->avail = NULL;
    return;
  }
  c->avail_prev->avail_next = c->avail_next;
  c->avail_next->avail_prev = c->avail_prev;
  if (r->avail == c) {
    r->avail = c->avail_next;
  }
}

// avail_add puts `c` at the tail (just before the head): round-robin.
static void avail_add(rpc_conn_t *c) {
  vk_bench_rpc_t *r = c->rpc;
  if (c->in_avail || !c->ready || c->dead || c->closing ||
      c->inflight >= c->max_streams) {
    return;
  }
  c->in_avail = 1;
  if (r->avail == NULL) {
    c->avail_next = c->avail_prev = c;
    r->avail = c;
    return;
  }
  rpc_conn_t *head = r->avail;
  c->avail_next = head;
  c->avail_prev = head->avail_prev;
  head->avail_prev->avail_next = c;
  head->avail_prev = c;
}

// --- calls -----------------------------------------------------------------

// call_unlink takes an in-flight call off its connection.
static void call_unlink(call_t *k) {
  rpc_conn_t *c = k->conn;
  if (c == NULL) {
    return;
  }
  if (k->prev != NULL) {
    k->prev->next = k->next;
  } else {
    c->calls = k->next;
  }
  if (k->next != NULL) {
    k->next->prev = k->prev;
  }
  k->conn = NULL;
  c->inflight--;
}

static void call_end(call_t *k) {
  vk_bench_rpc_t *r = k->rpc;
  vk_bench_rpc_result_t res = {k->grpc_status, k->message, NULL, 0};
  const char *why = NULL;
  if (k->failed) {
    res.grpc_status = -1;
  } else if (k->http_status != 200) {
    res.grpc_status = -1;
    snprintf(k->message, sizeof(k->message), "HTTP :status %d", k->http_status);
  } else if (k->grpc_status < 0) {
    res.grpc_status = -1;
    snprintf(k->message, sizeof(k->message), "no grpc-status");
  } else if (k->on_msg == NULL && k->grpc_status == 0 && k->resp.len > 0 &&
             vk_bench_grpc_unframe(&res.msg, &res.msg_len, &why, k->resp.data,
                                   k->resp.len) != VK_OK) {
    res.grpc_status = -1;
    snprintf(k->message, sizeof(k->message), "%s", why);
    res.msg = NULL;
    res.msg_len = 0;
  }
  r->pending--;
  if (k->on_done != NULL) {
    k->on_done(k->arg, &res);
  }
  vk_bench_buf_cleanup(&k->resp);
  free(k);
}

static void call_fail(call_t *k, const char *why) {
  k->failed = 1;
  snprintf(k->message, sizeof(k->message), "%s", why);
  call_end(k);
}

// Streaming calls: hand over every complete message, keep the rest.
static void deliver_messages(call_t *k) {
  size_t off = 0;
  while (k->resp.len - off >= 5) {
    const uint8_t *p = k->resp.data + off;
    uint32_t len = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 |
                   (uint32_t)p[3] << 8 | p[4];
    if (p[0] != 0 || len > VK_BENCH_MAX_MESSAGE) {
      k->failed = 1;
      snprintf(k->message, sizeof(k->message), "bad or compressed message");
      k->resp.len = 0;
      return;
    }
    if (k->resp.len - off - 5 < len) {
      break;
    }
    k->on_msg(k->arg, p + 5, len);
    off += 5 + (size_t)len;
  }
  if (off > 0) {
    memmove(k->resp.data, k->resp.data + off, k->resp.len - off);
    k->resp.len -= off;
  }
}

// --- nghttp2 callbacks -----------------------------------------------------

static ssize_t on_data_source_read(nghttp2_session *session, int32_t stream_id,
                                   uint8_t *buf, size_t length,
                                   uint32_t *data_flags,
                                   nghttp2_data_source *source,
                                   void *user_data) {
  call_t *k = source->ptr;
  (void)session;
  (void)stream_id;
  (void)user_data;
  size_t n = k->body_len - k->sent;
  if (n > length) {
    n = length;
  }
  memcpy(buf, k->body + k->sent, n);
  k->sent += n;
  if (k->sent == k->body_len) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  }
  return (ssize_t)n;
}

static int small_int(const uint8_t *v, size_t len) {
  int n = 0;
  if (len == 0 || len > 4) {
    return 1000;
  }
  for (size_t i = 0; i < len; i++) {
    if (v[i] < '0' || v[i] > '9') {
      return 1000;
    }
    n = n * 10 + (v[i] - '0');
  }
  return n;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame,
                     const uint8_t *name, size_t namelen, const uint8_t *value,
                     size_t valuelen, uint8_t flags, void *user_data) {
  (void)flags;
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS) {
    return 0;
  }
  call_t *k =
      nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (k == NULL) {
    return 0;
  }
  if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
    k->http_status = small_int(value, valuelen);
  } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
    k->grpc_status = small_int(value, valuelen);
  } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
    size_t n =
        valuelen < sizeof(k->message) - 1 ? valuelen : sizeof(k->message) - 1;
    memcpy(k->message, value, n);
    k->message[n] = '\0';
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags,
                         int32_t stream_id, const uint8_t *data, size_t len,
                         void *user_data) {
  (void)flags;
  (void)user_data;
  call_t *k = nghttp2_session_get_stream_user_data(session, stream_id);
  if (k == NULL || k->failed) {
    return 0;
  }
  if (vk_bench_buf_append(&k->resp, data, len) != VK_OK) {
    k->failed = 1;
    snprintf(k->message, sizeof(k->message), "response over the size cap");
    return 0;
  }
  if (k->on_msg != NULL) {
    deliver_messages(k);
  }
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id,
                           uint32_t error_code, void *user_data) {
  rpc_conn_t *c = user_data;
  call_t *k = nghttp2_session_get_stream_user_data(session, stream_id);
  if (k == NULL) {
    return 0;
  }
  nghttp2_session_set_stream_user_data(session, stream_id, NULL);
  call_unlink(k);
  avail_add(c);
  if (error_code != NGHTTP2_NO_ERROR && !k->failed) {
    k->failed = 1;
    snprintf(k->message, sizeof(k->message), "stream reset: %s",
             nghttp2_http2_strerror(error_code));
  }
  call_end(k);
  return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                         void *user_data) {
  rpc_conn_t *c = user_data;
  (void)session;
  if (frame->hd.type == NGHTTP2_SETTINGS &&
      !(frame->hd.flags & NGHTTP2_FLAG_ACK) && !c->ready) {
    uint32_t limit = nghttp2_session_get_remote_settings(
        c->h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    c->max_streams = c->rpc->cfg.streams < limit ? c->rpc->cfg.streams : limit;
    if (c->max_streams == 0) {
      c->max_streams = 1;
    }
    c->ready = 1;
    c->rpc->ready++;
    avail_add(c);
  } else if (frame->hd.type == NGHTTP2_GOAWAY) {
    c->dead = 1;
    avail_remove(c);
  }
  return 0;
}

// --- connections -----------------------------------------------------------

static void note_conn_error(vk_bench_rpc_t *r, const char *why) {
  if (r->first_error[0] == '\0') {
    snprintf(r->first_error, sizeof(r->first_error), "%s", why);
  }
}

static void start_connects(vk_bench_rpc_t *r);

// fail_inflight ends the calls in flight on `c`; their stream close
// callbacks will not come once the session is gone.
static void fail_inflight(rpc_conn_t *c, const char *why) {
  while (c->calls != NULL) {
    call_t *k = c->calls;
    if (c->h2 != NULL) {
      nghttp2_session_set_stream_user_data(c->h2, k->stream_id, NULL);
    }
    call_unlink(k);
    call_fail(k, why);
  }
}

static void conn_closed(uv_handle_t *h) {
  rpc_conn_t *c = h->data;
  vk_bench_rpc_t *r = c->rpc;
  nghttp2_session_del(c->h2);
  c->h2 = NULL;
  vk_bench_buf_cleanup(&c->out);
  vk_bench_buf_cleanup(&c->wbuf);
  if (--r->open_handles == 0 && r->closed) {
    nghttp2_session_callbacks_del(r->cbs);
    nghttp2_option_del(r->opt);
    free(r->conns);
    free(r->rbuf);
    free(r);
  }
}

// conn_lost fails the connection's calls in flight and closes it.
static void conn_lost(rpc_conn_t *c, const char *why) {
  vk_bench_rpc_t *r = c->rpc;
  if (c->closing) {
    return;
  }
  r->failed++;
  note_conn_error(r, why);
  c->dead = 1;
  c->closing = 1;
  avail_remove(c);
  fail_inflight(c, why);
  uv_close((uv_handle_t *)&c->tcp, conn_closed);
  start_connects(r);
  dispatch(r);
}

static void on_write(uv_write_t *req, int status) {
  rpc_conn_t *c = vk_container_of(req, rpc_conn_t, write_req);
  c->writing = 0;
  c->wbuf.len = 0;
  if (c->closing) {
    return;
  }
  if (status < 0) {
    conn_lost(c, uv_strerror(status));
    return;
  }
  conn_flush(c);
}

static void conn_flush(rpc_conn_t *c) {
  if (c->writing || c->closing || c->h2 == NULL) {
    return;
  }
  while (c->out.len < WRITE_BATCH_CAP) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(c->h2, &data);
    if (n < 0) {
      conn_lost(c, nghttp2_strerror((int)n));
      return;
    }
    if (n == 0) {
      break;
    }
    if (vk_bench_buf_append(&c->out, data, (size_t)n) != VK_OK) {
      conn_lost(c, "out of memory");
      return;
    }
  }
  if (c->out.len == 0) {
    if (c->rpc->closed) {
      c->closing = 1;
      uv_close((uv_handle_t *)&c->tcp, conn_closed);
    }
    return;
  }
  vk_bench_buf_t tmp = c->wbuf;
  c->wbuf = c->out;
  c->out = tmp;
  c->out.len = 0;
  uv_buf_t buf = uv_buf_init((char *)c->wbuf.data, (unsigned)c->wbuf.len);
  int rv = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
  if (rv != 0) {
    c->wbuf.len = 0;
    conn_lost(c, uv_strerror(rv));
    return;
  }
  c->writing = 1;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  rpc_conn_t *c = h->data;
  (void)suggested;
  *buf = uv_buf_init((char *)c->rpc->rbuf, READ_BUF_SIZE);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  rpc_conn_t *c = stream->data;
  vk_bench_rpc_t *r = c->rpc;
  if (nread == 0 || c->closing) {
    return;
  }
  if (nread < 0) {
    conn_lost(
        c, nread == UV_EOF ? "closed by the server" : uv_strerror((int)nread));
    return;
  }
  r->depth++;
  ssize_t rv = nghttp2_session_mem_recv(c->h2, (const uint8_t *)buf->base,
                                        (size_t)nread);
  r->depth--;
  if (rv < 0) {
    conn_lost(c, nghttp2_strerror((int)rv));
    return;
  }
  dispatch(r);
  conn_flush(c);
  if (!c->closing && !nghttp2_session_want_read(c->h2) &&
      !nghttp2_session_want_write(c->h2)) {
    conn_lost(c, "the HTTP/2 session ended (GOAWAY)");
  }
}

static void on_connect(uv_connect_t *req, int status) {
  rpc_conn_t *c = vk_container_of(req, rpc_conn_t, connect_req);
  vk_bench_rpc_t *r = c->rpc;
  r->connecting--;
  if (status == UV_ECANCELED || c->closing) {
    return;
  }
  if (status < 0) {
    conn_lost(c, uv_strerror(status));
    return;
  }
  (void)uv_tcp_nodelay(&c->tcp, 1);
  nghttp2_settings_entry iv[3] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
  size_t niv = 1;
  if (r->cfg.window > 0) {
    iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
                                         r->cfg.window};
  }
  if (nghttp2_session_client_new2(&c->h2, r->cbs, c, r->opt) != 0) {
    c->h2 = NULL;
    conn_lost(c, "out of memory");
    return;
  }
  if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, niv) != 0 ||
      (r->cfg.window > 0 &&
       nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
                                             (int32_t)r->cfg.window) != 0)) {
    conn_lost(c, "cannot queue the HTTP/2 SETTINGS");
    return;
  }
  int rv = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rv != 0) {
    conn_lost(c, uv_strerror(rv));
    return;
  }
  conn_flush(c);
  start_connects(r);
}

static void conn_start(vk_bench_rpc_t *r, uint32_t i) {
  rpc_conn_t *c = &r->conns[i];
  int rv = uv_tcp_init(r->loop, &c->tcp);
  if (rv != 0) {
    c->dead = c->closing = 1;
    r->failed++;
    note_conn_error(r, uv_strerror(rv));
    return;
  }
  c->tcp.data = c;
  c->started = 1;
  r->open_handles++;
  if (r->cfg.n_sources > 0) {
    const struct sockaddr_storage *src = &r->cfg.sources[i % r->cfg.n_sources];
    rv = uv_tcp_bind(&c->tcp, (const struct sockaddr *)src, 0);
    if (rv != 0) {
      conn_lost(c, uv_strerror(rv));
      return;
    }
  }
  r->connecting++;
  rv = uv_tcp_connect(&c->connect_req, &c->tcp,
                      (const struct sockaddr *)&r->cfg.addr, on_connect);
  if (rv != 0) {
    r->connecting--;
    conn_lost(c, uv_strerror(rv));
  }
}

// start_connects keeps at most max_connecting attempts under way, so that
// thousands of connections do not overflow the server's accept backlog.
static void start_connects(vk_bench_rpc_t *r) {
  uint32_t cap = r->cfg.max_connecting;
  while (!r->closed && r->next_to_start < r->cfg.connections &&
         r->connecting < cap) {
    conn_start(r, r->next_to_start++);
  }
}

// --- dispatch --------------------------------------------------------------

static int submit(rpc_conn_t *c, call_t *k) {
  nghttp2_data_provider prd;
  prd.source.ptr = k;
  prd.read_callback = on_data_source_read;
  int32_t id = nghttp2_submit_request(c->h2, NULL, k->nva, k->nnv, &prd, k);
  if (id < 0) {
    c->dead = 1;
    avail_remove(c);
    return VK_EIO;
  }
  k->conn = c;
  k->stream_id = id;
  k->prev = NULL;
  k->next = c->calls;
  if (c->calls != NULL) {
    c->calls->prev = k;
  }
  c->calls = k;
  c->inflight++;
  if (c->inflight >= c->max_streams) {
    avail_remove(c);
  } else {
    // Round-robin: the next call goes to the next connection.
    avail_remove(c);
    avail_add(c);
  }
  return VK_OK;
}

// any_alive: a connection that has room now or may have later (connected,
// waiting for the server's SETTINGS, or busy).
static int any_alive(const vk_bench_rpc_t *r) {
  for (uint32_t i = 0; i < r->cfg.connections; i++) {
    const rpc_conn_t *c = &r->conns[i];
    if (c->started && !c->dead && !c->closing) {
      return 1;
    }
  }
  return 0;
}

// dispatch hands queued calls to connections with room, then writes. Not
// inside nghttp2 callbacks: mem_send cannot run there.
static void dispatch(vk_bench_rpc_t *r) {
  if (r->depth > 0) {
    return;
  }
  while (r->queue_head != NULL && r->avail != NULL) {
    rpc_conn_t *c = r->avail;
    call_t *k = r->queue_head;
    call_t *rest = k->next;
    if (submit(c, k) != VK_OK) {
      continue;  // that connection takes no more; try the next
    }
    r->queue_head = rest;
    if (rest == NULL) {
      r->queue_tail = NULL;
    }
    conn_flush(c);
  }
  if (r->queue_head != NULL && r->avail == NULL &&
      r->next_to_start >= r->cfg.connections && !any_alive(r)) {
    // No connection will ever have room: fail what waits.
    while (r->queue_head != NULL) {
      call_t *k = r->queue_head;
      r->queue_head = k->next;
      if (r->queue_head == NULL) {
        r->queue_tail = NULL;
      }
      call_fail(k, r->first_error[0] != '\0' ? r->first_error
                                             : "no connection to the server");
    }
  }
}

// --- public ----------------------------------------------------------------

int vk_bench_rpc_resolve(struct sockaddr_storage *out, const char *host,
                         const char *port) {
  struct addrinfo hints;
  struct addrinfo *ai = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  if (getaddrinfo(host, port, &hints, &ai) != 0 || ai == NULL) {
    return VK_EUNAVAIL;
  }
  memset(out, 0, sizeof(*out));
  memcpy(out, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  return VK_OK;
}

int vk_bench_rpc_new(vk_bench_rpc_t **out, uv_loop_t *loop,
                     const vk_bench_rpc_config_t *cfg) {
  vk_bench_rpc_t *r = calloc(1, sizeof(*r));
  if (r == NULL) {
    return VK_ENOMEM;
  }
  r->loop = loop;
  r->cfg = *cfg;
  if (r->cfg.connections == 0) {
    r->cfg.connections = 1;
  }
  if (r->cfg.streams == 0) {
    r->cfg.streams = 1;
  }
  if (r->cfg.max_connecting == 0) {
    r->cfg.max_connecting = DEFAULT_MAX_CONNECTING;
  }
  r->conns = calloc(r->cfg.connections, sizeof(*r->conns));
  r->rbuf = malloc(READ_BUF_SIZE);
  if (r->conns == NULL || r->rbuf == NULL ||
      nghttp2_session_callbacks_new(&r->cbs) != 0 ||
      nghttp2_option_new(&r->opt) != 0) {
    nghttp2_session_callbacks_del(r->cbs);
    free(r->conns);
    free(r->rbuf);
    free(r);
    return VK_ENOMEM;
  }
  nghttp2_session_callbacks_set_on_header_callback(r->cbs, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(r->cbs,
                                                            on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(r->cbs,
                                                         on_stream_close);
  nghttp2_session_callbacks_set_on_frame_recv_callback(r->cbs, on_frame_recv);
  nghttp2_option_set_max_reserved_remote_streams(r->opt, 0);
  nghttp2_option_set_max_deflate_dynamic_table_size(r->opt, 4096);
  for (uint32_t i = 0; i < r->cfg.connections; i++) {
    r->conns[i].rpc = r;
  }
  start_connects(r);
  *out = r;
  return VK_OK;
}

int vk_bench_rpc_call(vk_bench_rpc_t *r, const char *path,
                      const vk_bench_hdr_t *hdrs, size_t n_hdrs,
                      const uint8_t *msg, size_t msg_len,
                      vk_bench_rpc_msg_cb on_msg, vk_bench_rpc_done_cb on_done,
                      void *arg) {
  if (r->closed) {
    return VK_ECLOSED;
  }
  if (msg_len > VK_BENCH_MAX_MESSAGE || n_hdrs > 16) {
    return VK_ETOOBIG;
  }
  static const char *const kFixed[][2] = {
      {":method", "POST"},
      {":scheme", "http"},
      {"content-type", "application/grpc"},
      {"te", "trailers"},
      {"user-agent", "vkey-bench/0.1"},
  };
  size_t nnv = VK_ARRAY_LEN(kFixed) + 2 + n_hdrs;
  size_t strings = strlen(path) + 1;
  for (size_t i = 0; i < n_hdrs; i++) {
    strings += hdrs[i].value_len + 1;
  }
  size_t size =
      sizeof(call_t) + nnv * sizeof(nghttp2_nv) + 5 + msg_len + strings;
  call_t *k = calloc(1, size);
  if (k == NULL) {
    return VK_ENOMEM;
  }
  k->rpc = r;
  k->on_msg = on_msg;
  k->on_done = on_done;
  k->arg = arg;
  k->grpc_status = -1;
  k->nva = (nghttp2_nv *)(k + 1);
  k->body = (uint8_t *)(k->nva + nnv);
  k->body_len = 5 + msg_len;
  k->body[0] = 0;
  k->body[1] = (uint8_t)(msg_len >> 24);
  k->body[2] = (uint8_t)(msg_len >> 16);
  k->body[3] = (uint8_t)(msg_len >> 8);
  k->body[4] = (uint8_t)msg_len;
  if (msg_len > 0) {
    memcpy(k->body + 5, msg, msg_len);
  }
  char *s = (char *)k->body + k->body_len;
  size_t n = 0;
  // Names are static strings; values are copied here, so NO_COPY holds
  // for all of them until the call is freed.
#define VK_NV(name_, value_, len_)                                    \
  k->nva[n++] = (nghttp2_nv){                                         \
      (uint8_t *)(name_), (uint8_t *)(value_), strlen(name_), (len_), \
      NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE}
  size_t plen = strlen(path);
  memcpy(s, path, plen + 1);
  VK_NV(":method", "POST", 4);
  VK_NV(":scheme", "http", 4);
  VK_NV(":path", s, plen);
  VK_NV(":authority", r->cfg.authority, strlen(r->cfg.authority));
  s += plen + 1;
  for (size_t i = 2; i < VK_ARRAY_LEN(kFixed); i++) {
    VK_NV(kFixed[i][0], kFixed[i][1], strlen(kFixed[i][1]));
  }
  for (size_t i = 0; i < n_hdrs; i++) {
    memcpy(s, hdrs[i].value, hdrs[i].value_len);
    s[hdrs[i].value_len] = '\0';
    VK_NV(hdrs[i].name, s, hdrs[i].value_len);
    s += hdrs[i].value_len + 1;
  }
#undef VK_NV
  k->nnv = n;
  if (r->queue_tail != NULL) {
    r->queue_tail->next = k;
  } else {
    r->queue_head = k;
  }
  r->queue_tail = k;
  r->pending++;
  dispatch(r);
  return VK_OK;
}

void vk_bench_rpc_stats(const vk_bench_rpc_t *r, vk_bench_rpc_stats_t *out) {
  out->pending = r->pending;
  out->ready = r->ready;
  out->failed = r->failed;
  out->first_error = r->first_error;
}

void vk_bench_rpc_close(vk_bench_rpc_t *r) {
  if (r->closed) {
    return;
  }
  r->closed = 1;
  while (r->queue_head != NULL) {
    call_t *k = r->queue_head;
    r->queue_head = k->next;
    call_fail(k, "client closed");
  }
  r->queue_tail = NULL;
  for (uint32_t i = 0; i < r->cfg.connections; i++) {
    rpc_conn_t *c = &r->conns[i];
    if (!c->started || c->closing) {
      continue;
    }
    avail_remove(c);
    fail_inflight(c, "client closed");
    if (c->h2 != NULL && c->ready) {
      // A polite GOAWAY; conn_flush closes once it is out.
      (void)nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
      conn_flush(c);
      if (c->writing || c->closing) {
        continue;
      }
    }
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
  }
  if (r->open_handles == 0) {
    nghttp2_session_callbacks_del(r->cbs);
    nghttp2_option_del(r->opt);
    free(r->conns);
    free(r->rbuf);
    free(r);
  }
}

// --- batches ---------------------------------------------------------------

typedef struct {
  vk_bench_rpc_t *rpc;
  uv_check_t check;
  int filling;
  size_t n;
  size_t window;
  size_t next;
  size_t done;
  int rv;
  vk_bench_rpc_make_fn make;
  vk_bench_rpc_each_fn each;
  void *arg;
  vk_bench_rpc_req_t req;
  int closing;
} batch_t;

typedef struct {
  batch_t *b;
  size_t index;
} batch_call_t;

static void batch_fill(batch_t *b);

static void batch_done(void *arg, const vk_bench_rpc_result_t *res) {
  batch_call_t *bc = arg;
  batch_t *b = bc->b;
  b->each(b->arg, bc->index, res);
  b->done++;
  free(bc);
  batch_fill(b);
}

// batch_fill keeps `window` calls in flight.
static void batch_fill(batch_t *b) {
  if (b->filling) {
    return;  // a call failed at once inside the loop below: it goes on
  }
  b->filling = 1;
  while (!b->closing && b->rv == VK_OK && b->next < b->n &&
         b->next - b->done < b->window) {
    b->req.msg.len = 0;
    b->req.n_hdrs = 0;
    int rv = b->make(b->arg, b->next, &b->req);
    batch_call_t *bc = malloc(sizeof(*bc));
    if (rv == VK_OK && bc == NULL) {
      rv = VK_ENOMEM;
    }
    if (rv == VK_OK) {
      bc->b = b;
      bc->index = b->next;
      rv = vk_bench_rpc_call(b->rpc, b->req.path, b->req.hdrs, b->req.n_hdrs,
                             b->req.msg.data, b->req.msg.len, NULL, batch_done,
                             bc);
    }
    if (rv != VK_OK) {
      free(bc);
      b->rv = rv;
      break;
    }
    b->next++;
  }
  b->filling = 0;
}

// The check phase runs after each loop iteration's I/O, outside every rpc
// callback: the safe place to close.
static void batch_check(uv_check_t *h) {
  batch_t *b = vk_container_of(h, batch_t, check);
  int all_done = b->done == b->next && (b->next == b->n || b->rv != VK_OK);
  if (!all_done) {
    return;
  }
  vk_bench_rpc_stats_t st;
  vk_bench_rpc_stats(b->rpc, &st);
  if (b->rv == VK_OK && (b->done < b->n || (st.ready == 0 && b->n > 0))) {
    b->rv = VK_EUNAVAIL;  // every call failed for want of a connection
  }
  uv_check_stop(h);
  uv_close((uv_handle_t *)h, NULL);
  b->closing = 1;
  vk_bench_rpc_close(b->rpc);
}

int vk_bench_rpc_batch(const vk_bench_rpc_config_t *cfg, size_t n,
                       size_t window, vk_bench_rpc_make_fn make,
                       vk_bench_rpc_each_fn done, void *arg) {
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) {
    return VK_EIO;
  }
  batch_t b;
  memset(&b, 0, sizeof(b));
  b.n = n;
  b.window = window > 0 ? window : 1;
  b.make = make;
  b.each = done;
  b.arg = arg;
  int rv = vk_bench_rpc_new(&b.rpc, &loop, cfg);
  if (rv == VK_OK) {
    uv_check_init(&loop, &b.check);
    uv_check_start(&b.check, batch_check);
    batch_fill(&b);
    uv_run(&loop, UV_RUN_DEFAULT);
    rv = b.rv;
    if (rv == VK_OK && b.done < n) {
      rv = VK_EUNAVAIL;
    }
  }
  vk_bench_buf_cleanup(&b.req.msg);
  (void)uv_loop_close(&loop);
  return rv;
}
