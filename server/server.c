// server.c: listeners, the connection set, the once-per-iteration flush, and
// graceful drain.
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "log.h"

void vk_server_limits_default(vk_server_limits_t *out) {
  out->max_concurrent_streams = 100;
  out->max_header_list_size = 16 * 1024;
  out->max_message_size = 4 * 1024 * 1024;
  out->max_connections = 18000;  // the machine's hard fd limit is 20,000
  out->idle_timeout_ms = 300 * 1000;
  out->send_queue_bytes = 256 * 1024;
  out->max_call_arena_bytes = 0;  // derived below
}

static void fill_limits(vk_server_limits_t *out, const vk_server_limits_t *in) {
  vk_server_limits_t d;
  vk_server_limits_default(&d);
  *out = in != NULL ? *in : d;
  if (out->max_concurrent_streams == 0) {
    out->max_concurrent_streams = d.max_concurrent_streams;
  }
  if (out->max_header_list_size == 0) {
    out->max_header_list_size = d.max_header_list_size;
  }
  if (out->max_message_size == 0) {
    out->max_message_size = d.max_message_size;
  }
  if (out->max_connections == 0) {
    out->max_connections = d.max_connections;
  }
  if (out->send_queue_bytes == 0) {
    out->send_queue_bytes = d.send_queue_bytes;
  }
  if (out->max_call_arena_bytes == 0) {
    // A decoded protobuf can be several times its wire size (each repeated
    // element becomes a pointer and a struct), plus the metadata.
    out->max_call_arena_bytes =
        8u * out->max_message_size + 4u * out->max_header_list_size;
  }
}

// Runs right before the loop blocks: one write per dirty connection per
// iteration, however many calls produced output in it.
static void flush_dirty(uv_prepare_t *p) {
  vk_server_t *s = vk_container_of(p, vk_server_t, flush_prepare);
  while (s->dirty != NULL) {
    vk_conn_t *list = s->dirty;
    s->dirty = NULL;
    while (list != NULL) {
      vk_conn_t *c = list;
      list = c->dirty_next;
      c->dirty = false;
      c->dirty_next = NULL;
      vk__conn_flush(c);
    }
  }
}

// The connection budget of servers that share listeners (vk_server_share):
// --max-connections is the instance's, whichever loop holds a connection.
// The listener's loop reserves a place before it accepts or deals a
// connection; the loop holding it gives the place back when it closes.
struct vk_conn_budget_s {
  atomic_size_t open;  // places reserved: connections open or being dealt
  atomic_int refs;     // servers using it
  uint32_t max;
};

bool vk__conn_reserve(vk_server_t *s) {
  vk_conn_budget_t *b = s->budget;
  size_t open = atomic_fetch_add(&b->open, 1);
  if (open >= b->max || s->draining) {
    atomic_fetch_sub(&b->open, 1);
    VK_WARN("refusing a connection: %zu open, limit %u", open, b->max);
    return false;
  }
  return true;
}

void vk__conn_unreserve(vk_server_t *s) {
  atomic_fetch_sub(&s->budget->open, 1);
}

// A connection on its way from one loop's listener to another loop's
// server. It holds a reference to the listener's TLS context, if any.
typedef struct vk_handoff_s {
  int fd;
  SSL_CTX *tls;
} vk_handoff_t;

// Past this many connections waiting for one loop to take them over (a
// loop stuck for seconds under a connection storm), new ones are closed.
enum { kInboxMax = 65536 };

// Runs on the server's own loop: takes over what the listener dealt it.
static void on_inbox(uv_async_t *a) {
  vk_server_t *s = vk_container_of(a, vk_server_t, inbox_async);
  pthread_mutex_lock(&s->inbox_lock);
  vk_handoff_t *batch = s->inbox;
  size_t n = s->inbox_len;
  s->inbox = NULL;
  s->inbox_len = s->inbox_cap = 0;
  pthread_mutex_unlock(&s->inbox_lock);
  for (size_t i = 0; i < n; i++) {
    vk__conn_adopt(s, batch[i].fd, batch[i].tls);
    SSL_CTX_free(batch[i].tls);  // the connection's SSL holds its own
  }
  free(batch);
}

// Runs on the listener's loop. Returns false when `s` cannot take `fd`.
static bool inbox_push(vk_server_t *s, int fd, SSL_CTX *tls) {
  bool pushed = false;
  pthread_mutex_lock(&s->inbox_lock);
  if (s->inbox_len == s->inbox_cap && s->inbox_cap < kInboxMax) {
    size_t cap = s->inbox_cap ? 2 * s->inbox_cap : 64;
    vk_handoff_t *grown = realloc(s->inbox, cap * sizeof(*grown));
    if (grown != NULL) {
      s->inbox = grown;
      s->inbox_cap = cap;
    }
  }
  if (s->inbox_len < s->inbox_cap) {
    if (tls != NULL) {
      SSL_CTX_up_ref(tls);
    }
    s->inbox[s->inbox_len++] = (vk_handoff_t){fd, tls};
    pushed = true;
  }
  pthread_mutex_unlock(&s->inbox_lock);
  if (pushed) {
    uv_async_send(&s->inbox_async);
  }
  return pushed;
}

// Closes what was dealt to `s` and never taken over (it is being freed).
static void inbox_clear(vk_server_t *s) {
  pthread_mutex_lock(&s->inbox_lock);
  for (size_t i = 0; i < s->inbox_len; i++) {
    close(s->inbox[i].fd);
    SSL_CTX_free(s->inbox[i].tls);
    vk__conn_unreserve(s);
  }
  free(s->inbox);
  s->inbox = NULL;
  s->inbox_len = s->inbox_cap = 0;
  pthread_mutex_unlock(&s->inbox_lock);
}

int vk_server_new(vk_server_t **out, uv_loop_t *loop,
                  const vk_server_limits_t *limits) {
  vk_server_t *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    return VK_ENOMEM;
  }
  s->loop = loop;
  fill_limits(&s->limits, limits);
  vk_router_init(&s->router);
  int rv = vk__h2_callbacks_new(&s->h2_callbacks);
  if (rv != VK_OK) {
    goto fail_callbacks;
  }
  if (nghttp2_option_new(&s->h2_option) != 0) {
    rv = VK_ENOMEM;
    goto fail_option;
  }
  s->budget = calloc(1, sizeof(*s->budget));
  if (s->budget == NULL) {
    rv = VK_ENOMEM;
    goto fail_budget;
  }
  atomic_init(&s->budget->open, 0);
  atomic_init(&s->budget->refs, 1);
  s->budget->max = s->limits.max_connections;
  if (pthread_mutex_init(&s->inbox_lock, NULL) != 0) {
    rv = VK_ENOMEM;
    goto fail_lock;
  }
  // Refuse peers that open streams beyond our SETTINGS before they see them,
  // and cap how much nghttp2 keeps for a peer's header compression table.
  nghttp2_option_set_max_deflate_dynamic_table_size(s->h2_option, 4096);
  // A server nghttp2 keeps closed streams in its RFC 7540 priority tree, a
  // tree gRPC never uses; keeping them cost ~12% of a session status check
  // (bench/RESULTS.md, 2026-11-22 session 7). Frames for a closed stream are
  // still recognised and ignored.
  nghttp2_option_set_no_closed_streams(s->h2_option, 1);
  uv_prepare_init(loop, &s->flush_prepare);
  uv_prepare_start(&s->flush_prepare, flush_dirty);
  uv_unref((uv_handle_t *)&s->flush_prepare);
  uv_timer_init(loop, &s->drain_timer);
  uv_unref((uv_handle_t *)&s->drain_timer);
  uv_async_init(loop, &s->inbox_async, on_inbox);
  uv_unref((uv_handle_t *)&s->inbox_async);
  vk__h2_framebuf_init(s);
  *out = s;
  return VK_OK;

fail_lock:
  free(s->budget);
fail_budget:
  nghttp2_option_del(s->h2_option);
fail_option:
  nghttp2_session_callbacks_del(s->h2_callbacks);
fail_callbacks:
  vk_router_cleanup(&s->router);
  free(s);
  return rv;
}

int vk_server_add_service(vk_server_t *s, const vk_service_t *svc) {
  return vk_router_add(&s->router, svc);
}

static void budget_release(vk_conn_budget_t *b) {
  if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1) {
    free(b);
  }
}

int vk_server_share(vk_server_t *s, vk_server_t *const *others, size_t n) {
  vk_server_t **copy = calloc(n ? n : 1, sizeof(*copy));
  if (copy == NULL) {
    return VK_ENOMEM;
  }
  memcpy(copy, others, n * sizeof(*copy));
  for (size_t i = 0; i < n; i++) {
    atomic_fetch_add(&s->budget->refs, 1);
    budget_release(others[i]->budget);
    others[i]->budget = s->budget;
  }
  free(s->shares);
  s->shares = copy;
  s->n_shares = n;
  s->next_share = 0;
  return VK_OK;
}

static void reject_on_close(uv_handle_t *h) {
  free(h);
}

// Accepts the listener's pending connection for another loop: libuv
// accepts only into a handle on its own loop, so the socket is duplicated
// out of a handle that is closed at once. Returns the new fd, or -1 (the
// connection is then closed).
static int accept_fd(vk_listener_t *l) {
  uv_tcp_t *t = malloc(sizeof(*t));
  if (t == NULL) {
    return -1;
  }
  uv_tcp_init(l->server->loop, t);
  int fd = -1;
  uv_os_fd_t accepted;
  if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)t) == 0 &&
      uv_fileno((uv_handle_t *)t, &accepted) == 0) {
    fd = fcntl(accepted, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
      VK_WARN("accept: cannot hand over a connection: %s", strerror(errno));
    }
  }
  uv_close((uv_handle_t *)t, reject_on_close);
  return fd;
}

static void on_connection(uv_stream_t *server, int status) {
  vk_listener_t *l = server->data;
  vk_server_t *s = l->server;
  if (status < 0) {
    VK_WARN("accept: %s", uv_strerror(status));
    return;
  }
  if (!vk__conn_reserve(s)) {
    vk__conn_reject(l);
    return;
  }
  size_t turn = s->next_share;
  s->next_share = (turn + 1) % (s->n_shares + 1);
  if (turn == 0) {
    vk__conn_accept(l);
    return;
  }
  int fd = accept_fd(l);
  if (fd < 0) {
    vk__conn_unreserve(s);
    return;
  }
  if (!inbox_push(s->shares[turn - 1], fd, l->tls)) {
    VK_WARN("refusing a connection: another loop has %d waiting", kInboxMax);
    close(fd);
    vk__conn_unreserve(s);
  }
}

static void listener_on_close(uv_handle_t *h) {
  vk_listener_t *l = h->data;
  vk_server_t *s = l->server;
  SSL_CTX_free(l->tls);
  free(l);
  s->pending_closes--;
  vk__server_conn_released(s);
}

int vk_server_listen(vk_server_t *s, const char *host, int port, SSL_CTX *tls,
                     int *out_port) {
  struct sockaddr_storage addr;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
    VK_ERROR("cannot parse listen address %s", host);
    return VK_EINVAL;
  }
  vk_listener_t *l = calloc(1, sizeof(*l));
  if (l == NULL) {
    return VK_ENOMEM;
  }
  l->server = s;
  uv_tcp_init(s->loop, &l->tcp);
  l->tcp.data = l;
  int rv = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&addr, 0);
  if (rv == 0) {
    rv = uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection);
  }
  if (rv != 0) {
    VK_ERROR("cannot listen on %s:%d: %s", host, port, uv_strerror(rv));
    s->pending_closes++;
    uv_close((uv_handle_t *)&l->tcp, listener_on_close);
    return VK_EIO;
  }
  if (tls != NULL) {
    SSL_CTX_up_ref(tls);
    l->tls = tls;
  }
  if (out_port != NULL) {
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&bound, &len);
    *out_port = ntohs(bound.ss_family == AF_INET6
                          ? ((struct sockaddr_in6 *)&bound)->sin6_port
                          : ((struct sockaddr_in *)&bound)->sin_port);
  }
  l->next = s->listeners;
  s->listeners = l;
  return VK_OK;
}

static void close_listeners(vk_server_t *s) {
  while (s->listeners != NULL) {
    vk_listener_t *l = s->listeners;
    s->listeners = l->next;
    s->pending_closes++;
    uv_close((uv_handle_t *)&l->tcp, listener_on_close);
  }
}

static void finish_drain(vk_server_t *s) {
  if (s->drain_done != NULL && s->n_conns == 0) {
    void (*done)(vk_server_t *, void *) = s->drain_done;
    s->drain_done = NULL;
    uv_timer_stop(&s->drain_timer);
    done(s, s->drain_arg);
  }
}

static void server_on_handle_closed(uv_handle_t *h) {
  vk_server_t *s = h->data;
  s->pending_closes--;
  vk__server_conn_released(s);
}

void vk__server_conn_released(vk_server_t *s) {
  if (s->draining) {
    finish_drain(s);
  }
  if (s->freeing && s->pending_closes == 0 && s->closing_conns == 0 &&
      s->n_conns == 0) {
    nghttp2_session_callbacks_del(s->h2_callbacks);
    nghttp2_option_del(s->h2_option);
    vk_router_cleanup(&s->router);
    inbox_clear(s);
    pthread_mutex_destroy(&s->inbox_lock);
    free(s->shares);
    budget_release(s->budget);
    free(s->out_plain.data);
    free(s->out_cipher.data);
    free(s);
  }
}

// After the drain timeout's GOAWAY, a connection whose peer does not read
// cannot even take that frame; it gets this long before it is closed, so
// that one stalled client cannot keep the process from exiting.
enum { kDrainCloseMs = 1000 };

static void on_drain_close_timeout(uv_timer_t *t) {
  vk_server_t *s = vk_container_of(t, vk_server_t, drain_timer);
  VK_WARN("drain: closing %zu connection(s) that stopped reading", s->n_conns);
  while (s->conns != NULL) {
    vk__conn_close(s->conns);
  }
}

static void on_drain_timeout(uv_timer_t *t) {
  vk_server_t *s = vk_container_of(t, vk_server_t, drain_timer);
  VK_WARN("drain: %zu connection(s) still busy, cancelling their calls",
          s->n_conns);
  vk_conn_t *next;
  for (vk_conn_t *c = s->conns; c != NULL; c = next) {
    next = c->next;  // a flush may close (unlink, not free) `c`
    for (vk_call_t *call = c->calls; call != NULL; call = call->conn_next) {
      vk__call_abort(call, VK_GRPC_UNAVAILABLE, "server shutting down");
    }
    // Put the trailers on the wire first: once the session is terminating,
    // nghttp2 drops every HEADERS still queued and the client would see
    // only a closed socket.
    vk__conn_flush(c);
    if (!c->closing) {
      nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
      vk__conn_schedule_flush(c);
    }
  }
  if (s->n_conns > 0) {
    uv_timer_start(&s->drain_timer, on_drain_close_timeout, kDrainCloseMs, 0);
  }
}

void vk_server_drain(vk_server_t *s, uint32_t timeout_ms,
                     void (*done)(vk_server_t *s, void *arg), void *arg) {
  if (s->draining) {
    return;
  }
  s->draining = true;
  s->drain_done = done;
  s->drain_arg = arg;
  close_listeners(s);
  for (vk_conn_t *c = s->conns; c != NULL; c = c->next) {
    vk__conn_goaway(c);
  }
  uv_ref((uv_handle_t *)&s->drain_timer);
  uv_timer_start(&s->drain_timer, on_drain_timeout, timeout_ms, 0);
  finish_drain(s);
}

void vk_server_free(vk_server_t *s) {
  if (s == NULL) {
    return;
  }
  s->freeing = true;
  s->drain_done = NULL;
  close_listeners(s);
  while (s->conns != NULL) {
    vk__conn_close(s->conns);
  }
  s->flush_prepare.data = s;
  s->drain_timer.data = s;
  s->fb_sweep.data = s;
  s->inbox_async.data = s;
  s->pending_closes += 4;
  uv_close((uv_handle_t *)&s->inbox_async, server_on_handle_closed);
  uv_close((uv_handle_t *)&s->flush_prepare, server_on_handle_closed);
  uv_close((uv_handle_t *)&s->drain_timer, server_on_handle_closed);
  uv_close((uv_handle_t *)&s->fb_sweep, server_on_handle_closed);
}

size_t vk_server_connection_count(const vk_server_t *s) {
  return s->n_conns;
}
