// server.c: listeners, the connection set, the once-per-iteration flush, and
// graceful drain.
#include <stdlib.h>
#include <string.h>

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
  // Refuse peers that open streams beyond our SETTINGS before they see them,
  // and cap how much nghttp2 keeps for a peer's header compression table.
  nghttp2_option_set_max_deflate_dynamic_table_size(s->h2_option, 4096);
  uv_prepare_init(loop, &s->flush_prepare);
  uv_prepare_start(&s->flush_prepare, flush_dirty);
  uv_unref((uv_handle_t *)&s->flush_prepare);
  uv_timer_init(loop, &s->drain_timer);
  uv_unref((uv_handle_t *)&s->drain_timer);
  vk__h2_framebuf_init(s);
  *out = s;
  return VK_OK;

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

static void on_connection(uv_stream_t *server, int status) {
  vk_listener_t *l = server->data;
  if (status < 0) {
    VK_WARN("accept: %s", uv_strerror(status));
    return;
  }
  vk__conn_accept(l);
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
  s->pending_closes += 3;
  uv_close((uv_handle_t *)&s->flush_prepare, server_on_handle_closed);
  uv_close((uv_handle_t *)&s->drain_timer, server_on_handle_closed);
  uv_close((uv_handle_t *)&s->fb_sweep, server_on_handle_closed);
}

size_t vk_server_connection_count(const vk_server_t *s) {
  return s->n_conns;
}
