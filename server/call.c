// call.c: one gRPC call on one HTTP/2 stream (grpc/grpc
// doc/PROTOCOL-HTTP2.md): request metadata, message framing, optional gzip,
// deadlines, and the response as headers + messages + trailers, or a single
// Trailers-Only HEADERS frame when the call fails before any message.
//
// A call is refcounted (see internal.h). The stream's reference is dropped
// when nghttp2 closes the stream or the connection goes; a handler waiting on
// Redis or a worker holds its own, so a late answer always finds valid
// memory and learns from vk_call_is_done() that nobody is listening.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>

#include "compress.h"
#include "internal.h"
#include "log.h"
#include "wire.h"

struct vk_deadline_s {
  uv_timer_t timer;
  vk_call_t *call;  // holds a reference until the timer's close callback
};

static void call_end(vk_call_t *call, vk_grpc_status_t status, const char *msg);
static void deadline_release(vk_call_t *call);

static const vk_server_limits_t *limits(const vk_call_t *call) {
  return &call->conn->server->limits;
}

// Every open stream holds one call for its whole life (a vehicle channel,
// for hours), so its size is part of the per-vehicle cost: keep it in check
// when adding fields or growing the inline arena.
_Static_assert(sizeof(vk_call_t) <= 2048, "vk_call_t grew past 2 KiB");

vk_call_t *vk__call_new(vk_conn_t *c, int32_t stream_id) {
  vk_call_t *call = malloc(sizeof(*call));
  if (call == NULL) {
    return NULL;
  }
  memset(call, 0, offsetof(vk_call_t, arena));
  call->conn = c;
  call->loop = c->server->loop;
  call->stream_id = stream_id;
  call->refs = 1;
  call->id = ++c->server->next_call_id;
  vk_arena_init(&call->arena, call->arena_inline, sizeof(call->arena_inline),
                c->server->limits.max_call_arena_bytes);
  call->conn_next = c->calls;
  if (c->calls != NULL) {
    c->calls->conn_prev = call;
  }
  c->calls = call;
  return call;
}

static void free_out_queue(vk_call_t *call) {
  vk_outbuf_t *b = call->out_head;
  while (b != NULL) {
    vk_outbuf_t *next = b->next;
    free(b);
    b = next;
  }
  call->out_head = call->out_tail = NULL;
  call->out_bytes = 0;
  call->out_off = 0;
}

void vk_call_ref(vk_call_t *call) {
  call->refs++;
}

void vk_call_unref(vk_call_t *call) {
  if (call == NULL || --call->refs > 0) {
    return;
  }
  free_out_queue(call);
  free(call->rbuf);
  vk_arena_cleanup(&call->arena);
  free(call);
}

// --- request metadata --------------------------------------------------------

static bool name_is(const uint8_t *name, size_t len, const char *lit) {
  size_t n = strlen(lit);
  return len == n && memcmp(name, lit, n) == 0;
}

static bool ends_with_bin(const uint8_t *name, size_t len) {
  return len > 4 && memcmp(name + len - 4, "-bin", 4) == 0;
}

int vk__call_on_header(vk_call_t *call, const uint8_t *name, size_t name_len,
                       const uint8_t *value, size_t value_len) {
  // RFC 9113 §6.5.2 counts 32 bytes of overhead per field.
  call->md_bytes += name_len + value_len + 32;
  if (call->md_bytes > limits(call)->max_header_list_size) {
    call->md_too_big = true;
  }
  if (call->md_too_big) {
    return VK_ETOOBIG;
  }
  vk_arena_t *a = &call->arena;
  if (name_len > 0 && name[0] == ':') {
    if (name_is(name, name_len, ":path")) {
      call->path = vk_arena_memdup(a, value, value_len);
      call->path_len = value_len;
    } else if (name_is(name, name_len, ":method")) {
      call->http_method = vk_arena_memdup(a, value, value_len);
    }
    return VK_OK;
  }
  if (name_is(name, name_len, "content-type")) {
    call->content_type = vk_arena_memdup(a, value, value_len);
    return VK_OK;
  }
  if (name_is(name, name_len, "grpc-encoding")) {
    call->grpc_encoding = vk_arena_memdup(a, value, value_len);
    return VK_OK;
  }
  if (name_is(name, name_len, "grpc-timeout")) {
    call->grpc_timeout = vk_arena_memdup(a, value, value_len);
    call->grpc_timeout_len = value_len;
    return VK_OK;
  }
  if (name_is(name, name_len, "grpc-accept-encoding")) {
    call->accept_encoding = vk_arena_memdup(a, value, value_len);
    call->accept_encoding_len = value_len;
    return VK_OK;
  }
  if (name_is(name, name_len, "te") ||
      name_is(name, name_len, "content-length")) {
    // HTTP's own fields, not metadata: nghttp2 has checked content-length
    // against the DATA it received.
    return VK_OK;
  }
  vk_md_t *md = vk_arena_alloc(a, sizeof(*md));
  if (md == NULL) {
    call->md_too_big = true;
    return VK_ETOOBIG;
  }
  md->key = vk_arena_memdup(a, name, name_len);
  md->key_len = name_len;
  if (ends_with_bin(name, name_len)) {
    // Decoded straight into the arena: base64 gives at most 3 bytes per 4
    // characters (+2 for an unpadded tail); the zeroed byte after the
    // value ends it as the other values are ended.
    size_t cap = value_len / 4 * 3 + 2;
    uint8_t *decoded = vk_arena_alloc(a, cap + 1);
    if (decoded == NULL) {
      call->md_too_big = true;
      return VK_ETOOBIG;
    }
    CBB cbb;
    if (!CBB_init_fixed(&cbb, decoded, cap) ||
        vk_base64_decode(&cbb, value, value_len) != VK_OK) {
      CBB_cleanup(&cbb);
      return VK_OK;  // undecodable binary metadata is dropped, as grpc does
    }
    md->value = decoded;
    md->value_len = CBB_len(&cbb);
    CBB_cleanup(&cbb);
  } else {
    md->value = vk_arena_memdup(a, value, value_len);
    md->value_len = value_len;
  }
  if (md->key == NULL || md->value == NULL) {
    call->md_too_big = true;
    return VK_ETOOBIG;
  }
  md->next = call->md;
  call->md = md;
  return VK_OK;
}

// --- sending headers and trailers ------------------------------------------

#define MAKE_NV(k, v, vlen)                                          \
  (nghttp2_nv) {                                                     \
    (uint8_t *)(k), (uint8_t *)(v), sizeof(k) - 1, (vlen),           \
        NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE \
  }

// Room for our own fields, the status, and VK_MAX_CUSTOM_METADATA entries
// of custom headers and as many of trailers (add_md enforces that cap).
enum { kMaxNv = 8 + 2 * VK_MAX_CUSTOM_METADATA };

static size_t add_md_nv(nghttp2_nv *nva, size_t n, const vk_md_t *md) {
  for (; md != NULL && n < kMaxNv; md = md->next) {
    nva[n++] = (nghttp2_nv){(uint8_t *)md->key, (uint8_t *)md->value,
                            md->key_len, md->value_len, NGHTTP2_NV_FLAG_NONE};
  }
  return n;
}

// grpc-status values as text: the codes are 0..16 (VK_GRPC_*), and the
// trailers of every call carry one.
static const char *const kStatusText[] = {"0",  "1",  "2",  "3",  "4",  "5",
                                          "6",  "7",  "8",  "9",  "10", "11",
                                          "12", "13", "14", "15", "16"};

static size_t add_status_nv(vk_call_t *call, nghttp2_nv *nva, size_t n) {
  size_t code = (size_t)call->status;
  // An out-of-range status would be a bug in a handler; report it as
  // UNKNOWN (2) rather than send a value no client knows.
  const char *text = code < VK_ARRAY_LEN(kStatusText) ? kStatusText[code] : "2";
  nva[n++] = (nghttp2_nv){
      (uint8_t *)"grpc-status", (uint8_t *)text, 11, strlen(text),
      NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
  if (call->status_msg != NULL && call->status_msg[0] != '\0') {
    nva[n++] =
        (nghttp2_nv){(uint8_t *)"grpc-message", (uint8_t *)call->status_msg, 12,
                     strlen(call->status_msg), NGHTTP2_NV_FLAG_NO_COPY_NAME};
  }
  return add_md_nv(nva, n, call->trailers);
}

static ssize_t read_data_cb(nghttp2_session *h2, int32_t stream_id,
                            uint8_t *buf, size_t len, uint32_t *data_flags,
                            nghttp2_data_source *source, void *user_data) {
  (void)h2;
  (void)stream_id;
  (void)user_data;
  return vk__call_read_data(source->ptr, buf, len, data_flags);
}

// Response headers for a call that will send messages. Returns false when
// the stream is gone.
static bool submit_headers(vk_call_t *call) {
  nghttp2_nv nva[kMaxNv];
  size_t n = 0;
  nva[n++] = MAKE_NV(":status", "200", 3);
  nva[n++] = MAKE_NV("content-type", "application/grpc", 16);
  nva[n++] = MAKE_NV("grpc-accept-encoding", "identity,gzip", 13);
  if (call->compress_out) {
    nva[n++] = MAKE_NV("grpc-encoding", "gzip", 4);
    call->headers_gzip = true;
  }
  n = add_md_nv(nva, n, call->resp_headers);
  nghttp2_data_provider prd = {.source.ptr = call,
                               .read_callback = read_data_cb};
  call->headers_sent = true;
  return nghttp2_submit_response(call->conn->h2, call->stream_id, nva, n,
                                 &prd) == 0;
}

// Trailers-Only: one HEADERS frame with END_STREAM carrying the status.
static void submit_trailers_only(vk_call_t *call, const char *http_status) {
  nghttp2_nv nva[kMaxNv];
  size_t n = 0;
  nva[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)http_status, 7,
                          strlen(http_status), NGHTTP2_NV_FLAG_NO_COPY_NAME};
  nva[n++] = MAKE_NV("content-type", "application/grpc", 16);
  if (call->status == VK_GRPC_UNIMPLEMENTED) {
    nva[n++] = MAKE_NV("grpc-accept-encoding", "identity,gzip", 13);
  }
  n = add_md_nv(nva, n, call->resp_headers);
  n = add_status_nv(call, nva, n);
  call->headers_sent = true;
  // A client still sending is told to stop (RST_STREAM NO_ERROR) only once
  // this HEADERS frame is out: h2.c's on_frame_send. Submitting the reset
  // now would mark the stream closing and nghttp2 would drop the response.
  nghttp2_submit_response(call->conn->h2, call->stream_id, nva, n, NULL);
}

static void submit_trailers(vk_call_t *call) {
  nghttp2_nv nva[kMaxNv];
  size_t n = add_status_nv(call, nva, 0);
  nghttp2_submit_trailer(call->conn->h2, call->stream_id, nva, n);
}

static void queue_writable(vk_call_t *call) {
  vk_conn_t *c = call->conn;
  if (!call->in_writable_list) {
    call->in_writable_list = true;
    vk_call_ref(call);
    call->writable_next = c->writable;
    c->writable = call;
  }
}

ssize_t vk__call_read_data(vk_call_t *call, uint8_t *buf, size_t len,
                           uint32_t *data_flags) {
  size_t copied = 0;
  while (copied < len && call->out_head != NULL) {
    vk_outbuf_t *b = call->out_head;
    size_t take = b->len - call->out_off;
    if (take > len - copied) {
      take = len - copied;
    }
    memcpy(buf + copied, b->data + call->out_off, take);
    copied += take;
    call->out_off += take;
    call->out_bytes -= take;
    if (call->out_off == b->len) {
      call->out_head = b->next;
      if (call->out_head == NULL) {
        call->out_tail = NULL;
      }
      call->out_off = 0;
      free(b);
    }
  }
  if (call->want_writable &&
      call->out_bytes < limits(call)->send_queue_bytes / 2) {
    queue_writable(call);
  }
  if (call->out_head == NULL && call->finished) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    submit_trailers(call);
    return (ssize_t)copied;
  }
  if (copied == 0) {
    return NGHTTP2_ERR_DEFERRED;
  }
  return (ssize_t)copied;
}

void vk__call_notify_writable(vk_call_t *call) {
  if (vk_call_is_done(call) || !call->want_writable) {
    return;
  }
  call->want_writable = false;
  if (call->method->on_writable != NULL) {
    call->method->on_writable(call);
  }
}

// Makes the response progress: headers first, then resume the data source.
static void kick(vk_call_t *call) {
  if (!call->headers_sent) {
    if (!submit_headers(call)) {
      return;
    }
  } else {
    nghttp2_session_resume_data(call->conn->h2, call->stream_id);
  }
  vk__conn_schedule_flush(call->conn);
}

static const char *encode_message(vk_call_t *call, const char *msg) {
  if (msg == NULL || msg[0] == '\0') {
    return NULL;
  }
  CBB cbb;
  uint8_t *out;
  size_t out_len;
  if (!CBB_init(&cbb, strlen(msg) + 16) ||
      vk_percent_encode(&cbb, (const uint8_t *)msg, strlen(msg)) != VK_OK ||
      !CBB_finish(&cbb, &out, &out_len)) {
    CBB_cleanup(&cbb);
    return "(message lost: out of memory)";
  }
  const char *s = vk_arena_memdup(&call->arena, out, out_len);
  OPENSSL_free(out);
  return s != NULL ? s : "(message lost: out of memory)";
}

static void call_end(vk_call_t *call, vk_grpc_status_t status,
                     const char *msg) {
  call->finished = true;
  call->status = status;
  call->status_msg = encode_message(call, msg);
  deadline_release(call);
  if (call->conn == NULL) {
    return;
  }
  if (!call->headers_sent) {
    submit_trailers_only(call, "200");
    vk__conn_schedule_flush(call->conn);
  } else {
    kick(call);
  }
}

// Ends the call before its handler did, telling the handler to drop its work.
static void call_cancel(vk_call_t *call, vk_grpc_status_t status,
                        const char *msg) {
  if (vk_call_is_done(call)) {
    return;
  }
  call->cancelled = true;
  if (call->started && call->method->on_cancel != NULL) {
    call->method->on_cancel(call);
  }
  call_end(call, status, msg);
}

// An error found by the framework (bad request, limits): the handler, if it
// started, is cancelled; the client gets `status`.
static void call_fail(vk_call_t *call, vk_grpc_status_t status, const char *fmt,
                      ...) __attribute__((format(printf, 3, 4)));

static void call_fail(vk_call_t *call, vk_grpc_status_t status, const char *fmt,
                      ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  vk_log(VK_LOG_DEBUG, call->id, "%s: %s",
         call->path != NULL ? call->path : "-", msg);
  call_cancel(call, status, msg);
}

void vk__call_abort(vk_call_t *call, vk_grpc_status_t status, const char *msg) {
  call_cancel(call, status, msg);
}

// --- deadlines ------------------------------------------------------------

static void deadline_on_close(uv_handle_t *h) {
  struct vk_deadline_s *d = vk_container_of(h, struct vk_deadline_s, timer);
  vk_call_unref(d->call);
  free(d);
}

static void deadline_release(vk_call_t *call) {
  if (call->deadline != NULL) {
    uv_close((uv_handle_t *)&call->deadline->timer, deadline_on_close);
    call->deadline = NULL;
  }
}

static void deadline_on_fire(uv_timer_t *t) {
  struct vk_deadline_s *d = vk_container_of(t, struct vk_deadline_s, timer);
  vk_call_t *call = d->call;
  vk_log(VK_LOG_DEBUG, call->id, "deadline exceeded");
  call_cancel(call, VK_GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
}

static int deadline_start(vk_call_t *call, uint64_t timeout_ms) {
  struct vk_deadline_s *d = malloc(sizeof(*d));
  if (d == NULL) {
    return VK_ENOMEM;
  }
  uv_timer_init(call->loop, &d->timer);
  d->call = call;
  vk_call_ref(call);
  call->deadline = d;
  call->deadline_ms = vk_now_ms() + timeout_ms;
  uv_timer_start(&d->timer, deadline_on_fire, timeout_ms, 0);
  return VK_OK;
}

// --- request validation and routing -------------------------------------

static bool is_grpc_content_type(const char *ct) {
  static const char kPrefix[] = "application/grpc";
  size_t n = sizeof(kPrefix) - 1;
  return ct != NULL && strncmp(ct, kPrefix, n) == 0 &&
         (ct[n] == '\0' || ct[n] == '+' || ct[n] == ';');
}

static void reject(vk_call_t *call, const char *http_status,
                   vk_grpc_status_t status, const char *msg) {
  call->rejected = true;
  call->finished = true;
  call->status = status;
  call->status_msg = encode_message(call, msg);
  submit_trailers_only(call, http_status);
  vk__conn_schedule_flush(call->conn);
}

void vk__call_on_headers_end(vk_call_t *call) {
  char msg[256];
  if (call->md_too_big) {
    snprintf(msg, sizeof(msg), "request metadata exceeds %u bytes",
             limits(call)->max_header_list_size);
    reject(call, "200", VK_GRPC_RESOURCE_EXHAUSTED, msg);
    return;
  }
  if (call->http_method == NULL || strcmp(call->http_method, "POST") != 0) {
    reject(call, "405", VK_GRPC_UNIMPLEMENTED, "gRPC requires POST");
    return;
  }
  if (!is_grpc_content_type(call->content_type)) {
    reject(call, "415", VK_GRPC_INTERNAL,
           "content-type must be application/grpc");
    return;
  }
  const vk_router_t *router = &call->conn->server->router;
  const vk_route_t *route =
      call->path ? vk_router_find(router, call->path, call->path_len) : NULL;
  if (route == NULL) {
    bool known = call->path != NULL &&
                 vk_router_has_service(router, call->path, call->path_len);
    snprintf(msg, sizeof(msg), "unknown %s: %.200s",
             known ? "method" : "service",
             call->path != NULL ? call->path : "(no :path)");
    reject(call, "200", VK_GRPC_UNIMPLEMENTED, msg);
    return;
  }
  if (call->grpc_encoding != NULL &&
      strcmp(call->grpc_encoding, "identity") != 0) {
    if (strcmp(call->grpc_encoding, "gzip") != 0) {
      snprintf(msg, sizeof(msg), "grpc-encoding %.64s is not supported",
               call->grpc_encoding);
      reject(call, "200", VK_GRPC_UNIMPLEMENTED, msg);
      return;
    }
    call->client_gzip = true;
  }
  call->client_accepts_gzip =
      call->accept_encoding != NULL &&
      vk_accepts_encoding(call->accept_encoding, call->accept_encoding_len,
                          "gzip");
  if (call->grpc_timeout != NULL) {
    uint64_t ms;
    if (vk_grpc_timeout_parse(&ms, call->grpc_timeout,
                              call->grpc_timeout_len) != VK_OK) {
      reject(call, "200", VK_GRPC_INVALID_ARGUMENT, "malformed grpc-timeout");
      return;
    }
    if (deadline_start(call, ms) != VK_OK) {
      reject(call, "200", VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
  }
  call->service = route->service;
  call->method = route->method;
  if (call->method->kind == VK_RPC_CLIENT_STREAM ||
      call->method->kind == VK_RPC_BIDI) {
    call->started = true;
    call->method->on_start(call, NULL);
  }
}

// --- request messages -----------------------------------------------------

static bool streams_requests(const vk_call_t *call) {
  return call->method->kind == VK_RPC_CLIENT_STREAM ||
         call->method->kind == VK_RPC_BIDI;
}

static void handle_message(vk_call_t *call, int compressed, CBS msg) {
  call->n_received++;
  call->last_compressed = compressed != 0;
  const char *type = call->method->input->name;
  if (!streams_requests(call) && call->n_received > 1) {
    call_fail(call, VK_GRPC_INTERNAL,
              "more than one request message for a unary request");
    return;
  }
  uint8_t *inflated = NULL;
  size_t len = CBS_len(&msg);
  const uint8_t *data = CBS_data(&msg);
  if (compressed) {
    if (!call->client_gzip) {
      call_fail(call, VK_GRPC_INTERNAL,
                "compressed message without grpc-encoding");
      return;
    }
    CBB cbb;
    if (!CBB_init(&cbb, len * 4 + 64)) {
      call_fail(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
    int rv =
        vk_gzip_decompress(&cbb, data, len, limits(call)->max_message_size);
    if (rv != VK_OK || !CBB_finish(&cbb, &inflated, &len)) {
      CBB_cleanup(&cbb);
      if (rv == VK_ETOOBIG) {
        call_fail(call, VK_GRPC_RESOURCE_EXHAUSTED,
                  "decompressed message exceeds %u bytes",
                  limits(call)->max_message_size);
      } else {
        call_fail(call, VK_GRPC_INTERNAL, "corrupt gzip message");
      }
      return;
    }
    data = inflated;
  }
  if (streams_requests(call)) {
    ProtobufCMessage *req =
        protobuf_c_message_unpack(call->method->input, NULL, len, data);
    OPENSSL_free(inflated);
    if (req == NULL) {
      call_fail(call, VK_GRPC_INVALID_ARGUMENT, "request does not parse as %s",
                type);
      return;
    }
    if (call->method->on_message != NULL) {
      call->method->on_message(call, req);
    }
    protobuf_c_message_free_unpacked(req, NULL);
    return;
  }
  call->unary_req = protobuf_c_message_unpack(
      call->method->input, &call->arena.allocator, len, data);
  if (call->unary_req != NULL && call->method->keep_request_bytes) {
    call->req_bytes = vk_arena_memdup(&call->arena, data, len);
    call->req_len = len;
  }
  OPENSSL_free(inflated);
  if (call->unary_req == NULL) {
    call_fail(call, VK_GRPC_INVALID_ARGUMENT, "request does not parse as %s",
              type);
  }
}

// Parses every complete message in `in`; returns false once the call ended.
static bool parse_messages(vk_call_t *call, CBS *in) {
  while (CBS_len(in) > 0 && !vk_call_is_done(call)) {
    int compressed;
    CBS msg;
    vk_parse_t r = vk_grpc_frame_parse(in, &compressed, &msg,
                                       limits(call)->max_message_size);
    switch (r) {
      case VK_PARSE_OK:
        handle_message(call, compressed, msg);
        break;
      case VK_PARSE_INCOMPLETE:
        return true;
      case VK_PARSE_TOO_BIG:
        call_fail(call, VK_GRPC_RESOURCE_EXHAUSTED,
                  "request message exceeds %u bytes",
                  limits(call)->max_message_size);
        return false;
      case VK_PARSE_ERROR:
      default:
        call_fail(call, VK_GRPC_INTERNAL, "malformed message prefix");
        return false;
    }
  }
  return !vk_call_is_done(call);
}

void vk__call_on_data(vk_call_t *call, const uint8_t *data, size_t len) {
  if (call->rejected || vk_call_is_done(call) || call->method == NULL) {
    return;  // the response is out; the rest of the body is dropped
  }
  CBS in;
  if (call->rbuf_len == 0) {
    // Fast path: parse straight from nghttp2's buffer, keep only a tail.
    CBS_init(&in, data, len);
    if (!parse_messages(call, &in)) {
      return;
    }
    data = CBS_data(&in);
    len = CBS_len(&in);
    if (len == 0) {
      return;
    }
  }
  // Keep the partial message. The cap is one prefix plus the largest message,
  // and the prefix check above already refused anything larger.
  size_t need = call->rbuf_len + len;
  if (need > (size_t)limits(call)->max_message_size + 5) {
    call_fail(call, VK_GRPC_RESOURCE_EXHAUSTED,
              "request message exceeds %u bytes",
              limits(call)->max_message_size);
    return;
  }
  if (need > call->rbuf_cap) {
    size_t cap = call->rbuf_cap ? call->rbuf_cap : 1024;
    while (cap < need) {
      cap *= 2;
    }
    vk_conn_t *c = call->conn;
    size_t budget = 4 * (size_t)limits(call)->max_message_size;
    if (c->rbuf_total - call->rbuf_cap + cap > budget) {
      call_fail(call, VK_GRPC_RESOURCE_EXHAUSTED,
                "too many large messages in flight on this connection");
      return;
    }
    uint8_t *p = realloc(call->rbuf, cap);
    if (p == NULL) {
      call_fail(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
    call->rbuf = p;
    c->rbuf_total = c->rbuf_total - call->rbuf_cap + cap;
    call->rbuf_cap = cap;
  }
  memcpy(call->rbuf + call->rbuf_len, data, len);
  call->rbuf_len += len;
  CBS_init(&in, call->rbuf, call->rbuf_len);
  if (!parse_messages(call, &in)) {
    return;
  }
  memmove(call->rbuf, CBS_data(&in), CBS_len(&in));
  call->rbuf_len = CBS_len(&in);
  if (call->rbuf_len == 0 && call->rbuf_cap > 65536) {
    // A long-lived stream keeps no big buffer after a big message.
    call->conn->rbuf_total -= call->rbuf_cap;
    free(call->rbuf);
    call->rbuf = NULL;
    call->rbuf_cap = 0;
  }
}

void vk__call_on_end_stream(vk_call_t *call) {
  call->half_closed = true;
  if (call->rejected || vk_call_is_done(call) || call->method == NULL) {
    return;
  }
  if (call->rbuf_len > 0) {
    call_fail(call, VK_GRPC_INTERNAL, "request ends inside a message");
    return;
  }
  if (streams_requests(call)) {
    if (call->method->on_half_close != NULL) {
      call->method->on_half_close(call);
    }
    return;
  }
  if (call->unary_req == NULL) {
    call_fail(call, VK_GRPC_INTERNAL, "no request message");
    return;
  }
  call->started = true;
  call->method->on_start(call, call->unary_req);
}

void vk__call_on_stream_close(vk_call_t *call) {
  vk_conn_t *c = call->conn;
  if (c == NULL) {
    return;
  }
  if (!vk_call_is_done(call)) {
    call->cancelled = true;
    if (call->started && call->method->on_cancel != NULL) {
      call->method->on_cancel(call);
    }
  }
  deadline_release(call);
  if (call->conn_prev != NULL) {
    call->conn_prev->conn_next = call->conn_next;
  } else {
    c->calls = call->conn_next;
  }
  if (call->conn_next != NULL) {
    call->conn_next->conn_prev = call->conn_prev;
  }
  call->conn = NULL;
  free_out_queue(call);
  c->rbuf_total -= call->rbuf_cap;
  free(call->rbuf);
  call->rbuf = NULL;
  call->rbuf_len = call->rbuf_cap = 0;
  vk_call_unref(call);
}

// --- the handler API (grpc.h) ---------------------------------------------

uint64_t vk_call_id(const vk_call_t *call) {
  return call->id;
}

void *vk_call_service_ctx(const vk_call_t *call) {
  return call->service->ctx;
}

uv_loop_t *vk_call_loop(const vk_call_t *call) {
  return call->loop;
}

void vk_call_set_data(vk_call_t *call, void *data) {
  call->data = data;
}

void *vk_call_data(const vk_call_t *call) {
  return call->data;
}

void *vk_call_alloc(vk_call_t *call, size_t len) {
  return vk_arena_alloc(&call->arena, len);
}

ProtobufCAllocator *vk_call_allocator(vk_call_t *call) {
  return &call->arena.allocator;
}

const uint8_t *vk_call_request_bytes(const vk_call_t *call, size_t *out_len) {
  *out_len = call->req_len;
  return call->req_bytes;
}

const uint8_t *vk_call_metadata(const vk_call_t *call, const char *key,
                                size_t *out_len) {
  size_t key_len = strlen(key);
  for (const vk_md_t *md = call->md; md != NULL; md = md->next) {
    if (md->key_len == key_len && memcmp(md->key, key, key_len) == 0) {
      *out_len = md->value_len;
      return md->value;
    }
  }
  return NULL;
}

const char *vk_call_path(const vk_call_t *call) {
  return call->path;
}

void vk_call_peer(const vk_call_t *call, char *out, size_t out_len) {
  snprintf(out, out_len, "%s", call->conn != NULL ? call->conn->peer : "?");
}

uint64_t vk_call_deadline_ms(const vk_call_t *call) {
  return call->deadline_ms;
}

bool vk_call_last_message_compressed(const vk_call_t *call) {
  return call->last_compressed;
}

static int add_md(vk_call_t *call, vk_md_t **list, const char *key,
                  const uint8_t *value, size_t len) {
  size_t key_len = strlen(key);
  // grpc-retry-pushback-ms is the one reserved key a handler sets: the
  // standard retry hint of an overloaded server.
  if (!vk_metadata_key_valid(key, key_len) ||
      (strncmp(key, "grpc-", 5) == 0 &&
       strcmp(key, "grpc-retry-pushback-ms") != 0)) {
    return VK_EINVAL;
  }
  bool bin = ends_with_bin((const uint8_t *)key, key_len);
  if (!bin) {
    for (size_t i = 0; i < len; i++) {
      if (value[i] < 0x20 || value[i] > 0x7e) {
        return VK_EINVAL;
      }
    }
  }
  size_t count = 0;
  for (const vk_md_t *m = *list; m != NULL; m = m->next) {
    count++;
  }
  if (count >= VK_MAX_CUSTOM_METADATA) {
    return VK_ETOOBIG;
  }
  size_t encoded_len = bin ? (len + 2) / 3 * 4 : len;
  call->resp_md_bytes += key_len + encoded_len + 32;
  if (call->resp_md_bytes > limits(call)->max_header_list_size) {
    return VK_ETOOBIG;
  }
  vk_md_t *md = vk_call_alloc(call, sizeof(*md));
  if (md == NULL) {
    return VK_ENOMEM;
  }
  md->key = vk_arena_memdup(&call->arena, key, key_len);
  md->key_len = key_len;
  if (bin) {
    CBB cbb;
    uint8_t *out;
    size_t out_len;
    if (!CBB_init(&cbb, encoded_len + 4) ||
        vk_base64_encode(&cbb, value, len) != VK_OK ||
        !CBB_finish(&cbb, &out, &out_len)) {
      CBB_cleanup(&cbb);
      return VK_ENOMEM;
    }
    md->value = vk_arena_memdup(&call->arena, out, out_len);
    md->value_len = out_len;
    OPENSSL_free(out);
  } else {
    md->value = vk_arena_memdup(&call->arena, value, len);
    md->value_len = len;
  }
  if (md->key == NULL || md->value == NULL) {
    return VK_ENOMEM;
  }
  md->next = *list;
  *list = md;
  return VK_OK;
}

int vk_call_add_header(vk_call_t *call, const char *key, const uint8_t *value,
                       size_t len) {
  if (call->headers_sent || vk_call_is_done(call) || call->conn == NULL) {
    return VK_ECLOSED;
  }
  return add_md(call, &call->resp_headers, key, value, len);
}

int vk_call_add_trailer(vk_call_t *call, const char *key, const uint8_t *value,
                        size_t len) {
  if (vk_call_is_done(call) || call->conn == NULL) {
    return VK_ECLOSED;
  }
  return add_md(call, &call->trailers, key, value, len);
}

bool vk_call_set_compression(vk_call_t *call, bool on) {
  if (!call->headers_sent) {
    call->compress_out = on && call->client_accepts_gzip;
  } else {
    call->compress_out = on && call->headers_gzip;
  }
  return call->compress_out;
}

static vk_outbuf_t *frame_message(vk_call_t *call, const ProtobufCMessage *msg,
                                  int *out_rv) {
  size_t size = protobuf_c_message_get_packed_size(msg);
  if (size > limits(call)->max_message_size) {
    *out_rv = VK_ETOOBIG;
    return NULL;
  }
  *out_rv = VK_ENOMEM;
  vk_outbuf_t *b = malloc(sizeof(*b) + 5 + size);
  if (b == NULL) {
    return NULL;
  }
  protobuf_c_message_pack(msg, b->data + 5);
  b->len = 5 + size;
  b->next = NULL;
  if (!call->compress_out || size == 0) {
    vk_grpc_frame_prefix(b->data, 0, (uint32_t)size);
    return b;
  }
  CBB cbb;
  uint8_t *z;
  size_t z_len;
  if (!CBB_init(&cbb, size / 2 + 64) ||
      vk_gzip_compress(&cbb, b->data + 5, size) != VK_OK ||
      !CBB_finish(&cbb, &z, &z_len)) {
    CBB_cleanup(&cbb);
    free(b);
    return NULL;
  }
  vk_outbuf_t *zb = malloc(sizeof(*zb) + 5 + z_len);
  if (zb != NULL) {
    vk_grpc_frame_prefix(zb->data, 1, (uint32_t)z_len);
    memcpy(zb->data + 5, z, z_len);
    zb->len = 5 + z_len;
    zb->next = NULL;
  }
  OPENSSL_free(z);
  free(b);
  return zb;
}

int vk_call_send(vk_call_t *call, const ProtobufCMessage *msg) {
  if (vk_call_is_done(call) || call->conn == NULL) {
    return VK_ECLOSED;
  }
  vk_rpc_kind_t kind = call->method->kind;
  if ((kind == VK_RPC_UNARY || kind == VK_RPC_CLIENT_STREAM) &&
      call->n_sent > 0) {
    return VK_EINVAL;
  }
  if (call->out_bytes >= limits(call)->send_queue_bytes) {
    call->want_writable = true;
    return VK_EAGAIN;
  }
  int rv;
  vk_outbuf_t *b = frame_message(call, msg, &rv);
  if (b == NULL) {
    return rv;
  }
  if (call->out_tail != NULL) {
    call->out_tail->next = b;
  } else {
    call->out_head = b;
  }
  call->out_tail = b;
  call->out_bytes += b->len;
  call->n_sent++;
  kick(call);
  return VK_OK;
}

void vk_call_finish(vk_call_t *call, vk_grpc_status_t status,
                    const char *message) {
  if (vk_call_is_done(call)) {
    return;
  }
  call_end(call, status, message);
}

bool vk_call_is_done(const vk_call_t *call) {
  return call->finished || call->cancelled;
}
