// conn.c: one client connection: the socket, optional TLS over memory BIOs,
// and the pump between them and the nghttp2 session.
//
// Reads go through the server's shared buffer and are fed to nghttp2 at once,
// so an idle connection owns no I/O buffer. Writes are gathered once per loop
// iteration (server.c's prepare hook calls vk__conn_flush for each dirty
// connection): nghttp2's output is collected up to a cap, tried with
// uv_try_write, and only the unwritten tail is copied to the heap for
// uv_write. While that write is pending we pull nothing more from nghttp2, so
// a peer that stops reading stalls its own streams (flow control and the
// per-call send queue cap then push back on the handlers) and never grows our
// buffers.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>

#include "internal.h"
#include "log.h"

enum { kWriteGatherCap = 64 * 1024 };

// The unwritten tail of a flush with its request, allocated only when
// uv_try_write could not take everything: most flushes never need it, and
// an idle connection keeps no uv_write_t.
typedef struct vk_pending_write_s {
  uv_write_t req;  // req.data == the connection
  uint8_t data[];
} vk_pending_write_t;

static void conn_on_handle_closed(uv_handle_t *h);

static int bytes_reserve(vk_bytes_t *b, size_t extra) {
  if (b->len + extra <= b->cap) {
    return VK_OK;
  }
  size_t cap = b->cap ? b->cap : 16384;
  while (cap < b->len + extra) {
    cap *= 2;
  }
  uint8_t *p = realloc(b->data, cap);
  if (p == NULL) {
    return VK_ENOMEM;
  }
  b->data = p;
  b->cap = cap;
  return VK_OK;
}

static int bytes_append(vk_bytes_t *b, const uint8_t *p, size_t len) {
  int rv = bytes_reserve(b, len);
  if (rv == VK_OK) {
    memcpy(b->data + b->len, p, len);
    b->len += len;
  }
  return rv;
}

void vk__conn_schedule_flush(vk_conn_t *c) {
  if (c->dirty || c->closing) {
    return;
  }
  c->dirty = true;
  c->dirty_next = c->server->dirty;
  c->server->dirty = c;
}

void vk__conn_stream_opened(vk_conn_t *c) {
  if (c->n_streams++ == 0) {
    uv_timer_stop(&c->idle);
  }
}

static void arm_idle(vk_conn_t *c);

static void conn_on_idle(uv_timer_t *t) {
  vk_conn_t *c = vk_container_of(t, vk_conn_t, idle);
  if (c->goaway_sent) {
    // A whole idle period after our GOAWAY the peer still holds the socket
    // without reading it (our write is stuck): stop waiting for it.
    VK_DEBUG("conn %s: peer ignores GOAWAY; closing", c->peer);
    vk__conn_close(c);
    return;
  }
  VK_DEBUG("conn %s: idle timeout", c->peer);
  vk__conn_goaway(c);
  // Normally the connection closes once the GOAWAY is written; this second
  // round covers a peer that never reads it.
  arm_idle(c);
}

static void arm_idle(vk_conn_t *c) {
  uint32_t ms = c->server->limits.idle_timeout_ms;
  if (ms > 0 && !c->closing) {
    uv_timer_start(&c->idle, conn_on_idle, ms, 0);
  }
}

void vk__conn_stream_closed(vk_conn_t *c) {
  if (--c->n_streams == 0) {
    arm_idle(c);
  }
}

void vk__conn_goaway(vk_conn_t *c) {
  if (c->goaway_sent || c->closing) {
    return;
  }
  c->goaway_sent = true;
  // Streams up to the last one we processed finish; later ones are refused
  // and the client may retry them elsewhere.
  nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(c->h2),
                        NGHTTP2_NO_ERROR, NULL, 0);
  vk__conn_schedule_flush(c);
}

// Tear down every call still attached: nghttp2_session_del does not run the
// stream-close callback, so the calls learn here that their stream is gone.
static void detach_calls(vk_conn_t *c) {
  while (c->calls != NULL) {
    vk_call_t *call = c->calls;
    vk__call_on_stream_close(call);
  }
  while (c->writable != NULL) {
    vk_call_t *call = c->writable;
    c->writable = call->writable_next;
    call->in_writable_list = false;
    vk_call_unref(call);
  }
  c->n_streams = 0;
}

void vk__conn_close(vk_conn_t *c) {
  if (c->closing) {
    return;
  }
  c->closing = true;
  detach_calls(c);
  vk__h2_framebuf_forget(c);
  vk_server_t *s = c->server;
  // Unlink from the server now so that counting and drain see it gone; the
  // memory goes in the last close callback.
  if (c->prev != NULL) {
    c->prev->next = c->next;
  } else {
    s->conns = c->next;
  }
  if (c->next != NULL) {
    c->next->prev = c->prev;
  }
  s->n_conns--;
  vk__conn_unreserve(s);
  s->closing_conns++;
  c->pending_closes = 2;
  uv_close((uv_handle_t *)&c->tcp, conn_on_handle_closed);
  uv_close((uv_handle_t *)&c->idle, conn_on_handle_closed);
}

static void conn_on_handle_closed(uv_handle_t *h) {
  vk_conn_t *c = h->data;
  if (--c->pending_closes > 0) {
    return;
  }
  vk_server_t *s = c->server;
  // A pending write's callback has already run (with UV_ECANCELED) before the
  // close callback, and freed the pending write.
  nghttp2_session_del(c->h2);
  SSL_free(c->ssl);
  // Remove from the dirty list if it is there.
  for (vk_conn_t **p = &s->dirty; *p != NULL; p = &(*p)->dirty_next) {
    if (*p == c) {
      *p = c->dirty_next;
      break;
    }
  }
  free(c);
  s->closing_conns--;
  vk__server_conn_released(s);
}

// Pulls nghttp2's pending output into `out` until it holds kWriteGatherCap
// bytes or nghttp2 has nothing more. Returns 0 or a negative nghttp2 error.
static int gather_h2_output(vk_conn_t *c, vk_bytes_t *out) {
  while (out->len < kWriteGatherCap) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(c->h2, &data);
    if (n < 0) {
      return (int)n;
    }
    if (n == 0) {
      break;
    }
    if (bytes_append(out, data, (size_t)n) != VK_OK) {
      return NGHTTP2_ERR_NOMEM;
    }
  }
  return 0;
}

// Moves what TLS produced (handshake records, alerts, application records)
// from the write BIO into `out`.
static int gather_tls_output(vk_conn_t *c, vk_bytes_t *out) {
  BIO *wbio = SSL_get_wbio(c->ssl);
  size_t pending;
  while ((pending = BIO_pending(wbio)) > 0) {
    if (bytes_reserve(out, pending) != VK_OK) {
      return VK_ENOMEM;
    }
    int n = BIO_read(wbio, out->data + out->len, (int)pending);
    if (n <= 0) {
      break;
    }
    out->len += (size_t)n;
  }
  return VK_OK;
}

static void conn_on_write(uv_write_t *req, int status) {
  vk_conn_t *c = req->data;
  free(c->pending_write);
  c->pending_write = NULL;
  if (status < 0) {
    if (!c->closing) {
      VK_DEBUG("conn %s: write failed: %s", c->peer, uv_strerror(status));
      vk__conn_close(c);
    }
    return;
  }
  vk__conn_flush(c);
}

// Writes `len` bytes: as much as the socket takes now, the rest through a
// heap copy and uv_write. Returns false when the connection was closed.
static bool write_bytes(vk_conn_t *c, const uint8_t *data, size_t len) {
  uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
  int n = uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);
  if (n == (int)len) {
    return true;
  }
  if (n < 0 && n != UV_EAGAIN) {
    VK_DEBUG("conn %s: write: %s", c->peer, uv_strerror(n));
    vk__conn_close(c);
    return false;
  }
  size_t done = n > 0 ? (size_t)n : 0;
  vk_pending_write_t *w = malloc(sizeof(*w) + len - done);
  if (w == NULL) {
    vk__conn_close(c);
    return false;
  }
  memcpy(w->data, data + done, len - done);
  w->req.data = c;
  buf = uv_buf_init((char *)w->data, (unsigned)(len - done));
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, conn_on_write) != 0) {
    free(w);
    vk__conn_close(c);
    return false;
  }
  c->pending_write = w;
  return true;
}

static void notify_writable(vk_conn_t *c) {
  // Take the list first: handlers may send, which can re-add them.
  vk_call_t *list = c->writable;
  c->writable = NULL;
  while (list != NULL) {
    vk_call_t *call = list;
    list = call->writable_next;
    call->in_writable_list = false;
    vk__call_notify_writable(call);
    vk_call_unref(call);
  }
}

void vk__conn_flush(vk_conn_t *c) {
  vk_server_t *s = c->server;
  while (c->pending_write == NULL && !c->closing) {
    vk_bytes_t *plain = &s->out_plain;
    plain->len = 0;
    // Until the TLS handshake completes SSL_write cannot carry our SETTINGS
    // (it fails with WANT_READ): leave them in nghttp2 and send only the
    // handshake records.
    if (c->ssl == NULL || c->handshake_done) {
      int rv = gather_h2_output(c, plain);
      if (rv != 0) {
        VK_WARN("conn %s: %s", c->peer, nghttp2_strerror(rv));
        vk__conn_close(c);
        return;
      }
      if (plain->len > 0) {
        vk__h2_framebuf_touched(c);
      }
    }
    const uint8_t *data = plain->data;
    size_t len = plain->len;
    if (c->ssl != NULL) {
      if (len > 0 && SSL_write(c->ssl, plain->data, (int)len) <= 0) {
        vk__conn_close(c);
        return;
      }
      vk_bytes_t *cipher = &s->out_cipher;
      cipher->len = 0;
      if (gather_tls_output(c, cipher) != VK_OK) {
        vk__conn_close(c);
        return;
      }
      data = cipher->data;
      len = cipher->len;
    }
    if (len == 0) {
      break;
    }
    if (!write_bytes(c, data, len)) {
      return;
    }
  }
  if (c->closing) {
    return;
  }
  if (c->writable != NULL) {
    notify_writable(c);
  }
  if (c->pending_write == NULL && !nghttp2_session_want_read(c->h2) &&
      !nghttp2_session_want_write(c->h2)) {
    vk__conn_close(c);
  }
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  vk_conn_t *c = h->data;
  buf->base = (char *)c->server->read_buf;
  buf->len = sizeof(c->server->read_buf);
}

// Feeds plaintext to nghttp2. Returns false when the connection must close.
static bool feed_h2(vk_conn_t *c, const uint8_t *data, size_t len) {
  ssize_t n = nghttp2_session_mem_recv(c->h2, data, len);
  if (n < 0) {
    VK_DEBUG("conn %s: %s", c->peer, nghttp2_strerror((int)n));
    if (n == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
      return false;  // not HTTP/2 at all: nothing useful to send back
    }
    // Flood, protocol error: tell the peer with GOAWAY, then close.
    nghttp2_session_terminate_session(c->h2, NGHTTP2_PROTOCOL_ERROR);
    vk__conn_schedule_flush(c);
  }
  return true;
}

static bool tls_handshake(vk_conn_t *c) {
  int r = SSL_do_handshake(c->ssl);
  if (r == 1) {
    const uint8_t *alpn;
    unsigned alpn_len;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    if (alpn_len != 2 || memcmp(alpn, "h2", 2) != 0) {
      VK_DEBUG("conn %s: TLS without ALPN h2", c->peer);
      return false;
    }
    c->handshake_done = true;
    return true;
  }
  int err = SSL_get_error(c->ssl, r);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    return true;
  }
  char msg[160];
  ERR_error_string_n(ERR_get_error(), msg, sizeof(msg));
  VK_DEBUG("conn %s: TLS handshake failed: %s", c->peer, msg);
  // Send the alert BoringSSL queued before closing.
  vk_bytes_t *cipher = &c->server->out_cipher;
  cipher->len = 0;
  if (gather_tls_output(c, cipher) == VK_OK && cipher->len > 0) {
    uv_buf_t buf = uv_buf_init((char *)cipher->data, (unsigned)cipher->len);
    uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);
  }
  return false;
}

static bool feed_tls(vk_conn_t *c, const uint8_t *data, size_t len) {
  if (BIO_write(SSL_get_rbio(c->ssl), data, (int)len) != (int)len) {
    return false;
  }
  if (!c->handshake_done) {
    if (!tls_handshake(c)) {
      return false;
    }
    if (!c->handshake_done) {
      vk__conn_schedule_flush(c);  // handshake records to send
      return true;
    }
  }
  for (;;) {
    int n = SSL_read(c->ssl, c->server->plain_buf,
                     (int)sizeof(c->server->plain_buf));
    if (n > 0) {
      if (!feed_h2(c, c->server->plain_buf, (size_t)n)) {
        return false;
      }
      continue;
    }
    int err = SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_WANT_READ) {
      return true;
    }
    return false;  // close_notify or a fatal alert
  }
}

static void conn_on_read(uv_stream_t *stream, ssize_t nread,
                         const uv_buf_t *buf) {
  vk_conn_t *c = stream->data;
  if (nread == 0 || c->closing) {
    return;
  }
  if (nread < 0) {
    vk__conn_close(c);
    return;
  }
  const uint8_t *data = (const uint8_t *)buf->base;
  bool ok = c->ssl != NULL ? feed_tls(c, data, (size_t)nread)
                           : feed_h2(c, data, (size_t)nread);
  if (!ok) {
    vk__conn_close(c);
    return;
  }
  vk__conn_schedule_flush(c);
}

static void format_peer(vk_conn_t *c) {
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET) {
      struct sockaddr_in *a = (struct sockaddr_in *)&ss;
      uv_ip4_name(a, ip, sizeof(ip));
      port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
      uv_ip6_name(a, ip, sizeof(ip));
      port = ntohs(a->sin6_port);
    }
  }
  snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
}

static void reject_on_close(uv_handle_t *h) {
  free(h);
}

void vk__conn_reject(vk_listener_t *l) {
  uv_tcp_t *t = malloc(sizeof(*t));
  if (t == NULL) {
    return;
  }
  uv_tcp_init(l->server->loop, t);
  if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)t) != 0) {
    uv_close((uv_handle_t *)t, reject_on_close);
    return;
  }
  uv_close((uv_handle_t *)t, reject_on_close);
}

// A new connection on `s`, linked into its set, its socket not open yet.
static vk_conn_t *conn_new(vk_server_t *s) {
  vk_conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    return NULL;
  }
  c->server = s;
  uv_tcp_init(s->loop, &c->tcp);
  uv_timer_init(s->loop, &c->idle);
  c->tcp.data = c;
  c->idle.data = c;
  // Linked before anything can fail, so vk__conn_close can unwind it all.
  c->next = s->conns;
  if (s->conns != NULL) {
    s->conns->prev = c;
  }
  s->conns = c;
  s->n_conns++;
  return c;
}

// Starts HTTP/2 (over TLS when `tls` is not NULL) on a connection whose
// socket is open.
static void conn_begin(vk_conn_t *c, SSL_CTX *tls) {
  uv_tcp_nodelay(&c->tcp, 1);
  format_peer(c);
  if (vk__h2_session_new(c) != VK_OK) {
    vk__conn_close(c);
    return;
  }
  if (tls != NULL) {
    c->ssl = SSL_new(tls);
    BIO *rbio = BIO_new(BIO_s_mem());
    BIO *wbio = BIO_new(BIO_s_mem());
    if (c->ssl == NULL || rbio == NULL || wbio == NULL) {
      BIO_free(rbio);
      BIO_free(wbio);
      vk__conn_close(c);
      return;
    }
    SSL_set_bio(c->ssl, rbio, wbio);
    SSL_set_accept_state(c->ssl);
  }
  if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read) != 0) {
    vk__conn_close(c);
    return;
  }
  arm_idle(c);
  if (c->ssl == NULL) {
    vk__conn_schedule_flush(c);  // our SETTINGS go out at once
  }
}

void vk__conn_accept(vk_listener_t *l) {
  vk_server_t *s = l->server;
  vk_conn_t *c = conn_new(s);
  if (c == NULL) {
    vk__conn_unreserve(s);
    vk__conn_reject(l);
    return;
  }
  if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->tcp) != 0) {
    vk__conn_close(c);
    return;
  }
  conn_begin(c, l->tls);
}

void vk__conn_adopt(vk_server_t *s, int fd, SSL_CTX *tls) {
  vk_conn_t *c = s->draining ? NULL : conn_new(s);
  if (c == NULL) {
    vk__conn_unreserve(s);
    close(fd);
    return;
  }
  if (uv_tcp_open(&c->tcp, fd) != 0) {
    close(fd);  // not the handle's until uv_tcp_open succeeds
    vk__conn_close(c);
    return;
  }
  conn_begin(c, tls);
}
