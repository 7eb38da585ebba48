// test_service.c: grpc.testing.TestService, per the "Server" section of
// grpc/grpc doc/interop-test-descriptions.md.
//
// Unary and client-streaming methods answer with one message; if the send
// queue is full (VK_EAGAIN) they answer again from on_writable.
//
// Server-streaming and bidi methods share one design, the "stream": every
// ResponseParameters a request carries becomes an entry in a bounded queue,
// and stream_pump() sends the entries in order. `interval_us` is waited out
// with ONE uv_timer per call (not one per message), and VK_EAGAIN parks the
// pump until on_writable. The timer is a uv handle, so the stream is freed
// only from the timer's close callback, and it holds a reference to its call
// until then: the call may end (finish, cancel) long before that callback.
#include "test_service.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "grpc/testing/empty.pb-c.h"
#include "grpc/testing/messages.pb-c.h"
#include "log.h"

// Every response payload is zeros (clients may check that), so all of them
// point into this buffer instead of allocating one per message. It is in
// .bss and never written, so it costs no memory until it is read.
static uint8_t vk__zeros[VK_TEST_SERVICE_MAX_PAYLOAD];

struct vk_test_service_s {
  vk_service_t service;  // service.ctx == this
  size_t open_handles;   // streams whose timer has not finished closing
};

// --- helpers shared by every method ----------------------------------------

// finish_fmt ends the call with `status` and a formatted message. The text
// lives in the call's arena, so it is valid for as long as the framework
// may need it, whether it copies it or not.
static void finish_fmt(vk_call_t *call, vk_grpc_status_t status,
                       const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void finish_fmt(vk_call_t *call, vk_grpc_status_t status,
                       const char *fmt, ...) {
  enum { MSG_MAX = 160 };
  char *msg = vk_call_alloc(call, MSG_MAX);
  if (msg != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, MSG_MAX, fmt, ap);
    va_end(ap);
  }
  vk_log(VK_LOG_DEBUG, vk_call_id(call), "finish %d: %s", (int)status,
         msg != NULL ? msg : fmt);
  vk_call_finish(call, status, msg != NULL ? msg : fmt);
}

// finish_rv ends the call after a framework function failed with `rv`.
static void finish_rv(vk_call_t *call, int rv, const char *what) {
  vk_grpc_status_t status = VK_GRPC_INTERNAL;
  if (rv == VK_ENOMEM || rv == VK_ETOOBIG) {
    status = VK_GRPC_RESOURCE_EXHAUSTED;
  }
  // On VK_ECLOSED the call is already done and this is a no-op.
  finish_fmt(call, status, "%s: %s", what, vk_strerror(rv));
}

// status_from_code maps an EchoStatus code onto a gRPC status. Codes outside
// the defined range become UNKNOWN, as a gRPC client would read them anyway.
static vk_grpc_status_t status_from_code(int32_t code) {
  if (code < 0 || code > (int32_t)VK_GRPC_UNAUTHENTICATED) {
    return VK_GRPC_UNKNOWN;
  }
  return (vk_grpc_status_t)code;
}

// echo_metadata implements "Echo Metadata": x-grpc-test-echo-initial goes
// back in the response headers, x-grpc-test-echo-trailing-bin in the
// trailers (the framework decodes and re-encodes the -bin value). Returns
// false after finishing the call when the echo cannot be queued.
static bool echo_metadata(vk_call_t *call) {
  static const char initial[] = "x-grpc-test-echo-initial";
  static const char trailing[] = "x-grpc-test-echo-trailing-bin";
  size_t len;
  const uint8_t *v = vk_call_metadata(call, initial, &len);
  if (v != NULL) {
    int rv = vk_call_add_header(call, initial, v, len);
    if (rv != 0) {
      finish_rv(call, rv, "cannot echo initial metadata");
      return false;
    }
  }
  v = vk_call_metadata(call, trailing, &len);
  if (v != NULL) {
    int rv = vk_call_add_trailer(call, trailing, v, len);
    if (rv != 0) {
      finish_rv(call, rv, "cannot echo trailing metadata");
      return false;
    }
  }
  return true;
}

// expect_compressed_ok implements "CompressedRequest": a request that asks
// to have arrived compressed but did not fails with INVALID_ARGUMENT.
// Returns false after finishing the call.
static bool expect_compressed_ok(vk_call_t *call,
                                 const Grpc__Testing__BoolValue *expect) {
  if (expect != NULL && expect->value &&
      !vk_call_last_message_compressed(call)) {
    finish_fmt(call, VK_GRPC_INVALID_ARGUMENT,
               "expected a compressed request message");
    return false;
  }
  return true;
}

// response_ok checks a requested payload type and size. Returns false after
// finishing the call.
static bool response_ok(vk_call_t *call, Grpc__Testing__PayloadType type,
                        int32_t size) {
  if (type != GRPC__TESTING__PAYLOAD_TYPE__COMPRESSABLE) {
    finish_fmt(call, VK_GRPC_INVALID_ARGUMENT, "unsupported response_type %d",
               (int)type);
    return false;
  }
  if (size < 0) {
    finish_fmt(call, VK_GRPC_INVALID_ARGUMENT, "negative response size %d",
               (int)size);
    return false;
  }
  if ((uint32_t)size > VK_TEST_SERVICE_MAX_PAYLOAD) {
    finish_fmt(call, VK_GRPC_RESOURCE_EXHAUSTED,
               "response size %d is over the limit of %u bytes", (int)size,
               VK_TEST_SERVICE_MAX_PAYLOAD);
    return false;
  }
  return true;
}

// arena_strdup copies `s` into the call's arena; NULL when out of memory.
static const char *arena_strdup(vk_call_t *call, const char *s) {
  size_t len = strlen(s);
  char *copy = vk_call_alloc(call, len + 1);
  if (copy != NULL) {
    memcpy(copy, s, len + 1);
  }
  return copy;
}

// --- EmptyCall, UnimplementedCall -----------------------------------------

static void empty_reply(vk_call_t *call) {
  Grpc__Testing__Empty empty = GRPC__TESTING__EMPTY__INIT;
  int rv = vk_call_send(call, &empty.base);
  if (rv == VK_EAGAIN) {
    return;  // on_writable calls us again
  }
  if (rv != 0) {
    finish_rv(call, rv, "send");
    return;
  }
  vk_call_finish(call, VK_GRPC_OK, NULL);
}

static void empty_call_start(vk_call_t *call, const ProtobufCMessage *req) {
  (void)req;
  if (echo_metadata(call)) {
    empty_reply(call);
  }
}

static void unimplemented_call_start(vk_call_t *call,
                                     const ProtobufCMessage *req) {
  (void)req;
  vk_call_finish(call, VK_GRPC_UNIMPLEMENTED,
                 "grpc.testing.TestService/UnimplementedCall");
}

// --- UnaryCall, CacheableUnaryCall -----------------------------------------

// The request to answer again from on_writable after VK_EAGAIN; in the
// arena. (The request itself lives as long as the call.)
typedef struct vk__unary_s {
  const Grpc__Testing__SimpleRequest *req;
} vk__unary_t;

static void unary_reply(vk_call_t *call,
                        const Grpc__Testing__SimpleRequest *req) {
  Grpc__Testing__Payload payload = GRPC__TESTING__PAYLOAD__INIT;
  Grpc__Testing__SimpleResponse resp = GRPC__TESTING__SIMPLE_RESPONSE__INIT;
  payload.body.data = vk__zeros;
  payload.body.len = (size_t)req->response_size;  // checked by response_ok
  resp.payload = &payload;
  vk_call_set_compression(call, req->response_compressed != NULL &&
                                    req->response_compressed->value);
  int rv = vk_call_send(call, &resp.base);
  if (rv == VK_EAGAIN) {
    if (vk_call_data(call) == NULL) {
      vk__unary_t *u = vk_call_alloc(call, sizeof(*u));
      if (u == NULL) {
        finish_rv(call, VK_ENOMEM, "send");
        return;
      }
      u->req = req;
      vk_call_set_data(call, u);
    }
    return;
  }
  if (rv != 0) {
    finish_rv(call, rv, "send");
    return;
  }
  vk_call_finish(call, VK_GRPC_OK, NULL);
}

static void unary_call_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const Grpc__Testing__SimpleRequest *req =
      (const Grpc__Testing__SimpleRequest *)msg;
  if (!echo_metadata(call) ||
      !expect_compressed_ok(call, req->expect_compressed)) {
    return;
  }
  // Echo Status: a non-OK response_status ends the call with it, and no
  // response message.
  if (req->response_status != NULL && req->response_status->code != 0) {
    vk_call_finish(call, status_from_code(req->response_status->code),
                   req->response_status->message);
    return;
  }
  if (!response_ok(call, req->response_type, req->response_size)) {
    return;
  }
  unary_reply(call, req);
}

static void cacheable_unary_call_start(vk_call_t *call,
                                       const ProtobufCMessage *msg) {
  // Only a caching proxy in front of the server cares about this header, so
  // failing to add it does not fail the call.
  static const uint8_t max_age[] = "max-age=60";
  (void)vk_call_add_header(call, "cache-control", max_age, sizeof(max_age) - 1);
  unary_call_start(call, msg);
}

static void unary_call_writable(vk_call_t *call) {
  vk__unary_t *u = vk_call_data(call);
  if (u != NULL) {
    unary_reply(call, u->req);
  }
}

// --- StreamingInputCall ----------------------------------------------------

// Per-call state, in the arena: no handles, nothing to free.
typedef struct vk__input_s {
  uint64_t sum;  // bytes of payload received, at most INT32_MAX
} vk__input_t;

static void input_start(vk_call_t *call, const ProtobufCMessage *req) {
  (void)req;
  if (!echo_metadata(call)) {
    return;
  }
  vk__input_t *in = vk_call_alloc(call, sizeof(*in));
  if (in == NULL) {
    finish_rv(call, VK_ENOMEM, "call state");
    return;
  }
  vk_call_set_data(call, in);
}

static void input_message(vk_call_t *call, const ProtobufCMessage *msg) {
  const Grpc__Testing__StreamingInputCallRequest *req =
      (const Grpc__Testing__StreamingInputCallRequest *)msg;
  vk__input_t *in = vk_call_data(call);
  if (in == NULL || vk_call_is_done(call)) {
    return;  // already answered with an error; ignore the rest
  }
  // CompressedRequest, per message.
  if (!expect_compressed_ok(call, req->expect_compressed)) {
    return;
  }
  if (req->payload != NULL) {
    in->sum += req->payload->body.len;
  }
  if (in->sum > INT32_MAX) {
    finish_fmt(call, VK_GRPC_RESOURCE_EXHAUSTED,
               "aggregated payload size is over 2^31-1 bytes");
  }
}

static void input_reply(vk_call_t *call) {
  vk__input_t *in = vk_call_data(call);
  if (in == NULL || vk_call_is_done(call)) {
    return;
  }
  Grpc__Testing__StreamingInputCallResponse resp =
      GRPC__TESTING__STREAMING_INPUT_CALL_RESPONSE__INIT;
  resp.aggregated_payload_size = (int32_t)in->sum;
  int rv = vk_call_send(call, &resp.base);
  if (rv == VK_EAGAIN) {
    return;  // on_writable calls us again
  }
  if (rv != 0) {
    finish_rv(call, rv, "send");
    return;
  }
  vk_call_finish(call, VK_GRPC_OK, NULL);
}

// --- StreamingOutputCall, FullDuplexCall, HalfDuplexCall -------------------

// One response still to send.
typedef struct vk__param_s {
  uint32_t size;
  uint32_t delay_ms;  // wait this long before sending it
  bool compressed;
} vk__param_t;

typedef struct vk__stream_s {
  uv_timer_t timer;  // waits out interval_us; recovered with container_of
  vk_call_t *call;   // one reference, dropped in stream_closed_cb()
  vk_test_service_t *svc;
  vk__param_t *q;  // responses q[head..len) are still to send
  size_t head;
  size_t len;
  size_t cap;
  bool hold;         // HalfDuplexCall: send nothing until half-close
  bool input_done;   // no request will add to the queue any more
  bool waited;       // q[head]'s delay has elapsed
  bool timer_armed;  // the timer runs for q[head]
  bool blocked;      // vk_call_send said VK_EAGAIN: on_writable resumes
  bool released;     // stream_release() ran: only the close callback is left
  vk_grpc_status_t status;  // to finish with once the queue is empty
  const char *message;      // its message, in the arena, or NULL
} vk__stream_t;

static void stream_closed_cb(uv_handle_t *handle) {
  vk__stream_t *st = vk_container_of(handle, vk__stream_t, timer);
  vk_call_t *call = st->call;
  st->svc->open_handles--;
  free(st->q);
  free(st);
  vk_call_unref(call);  // last: it may free the call
}

// stream_release detaches the stream from its call and starts closing its
// timer; the memory goes in stream_closed_cb(). Safe to call twice.
static void stream_release(vk__stream_t *st) {
  if (st->released) {
    return;
  }
  st->released = true;
  vk_call_set_data(st->call, NULL);
  uv_close((uv_handle_t *)&st->timer, stream_closed_cb);
}

// stream_new attaches a stream to `call`. Returns NULL when out of memory.
static vk__stream_t *stream_new(vk_call_t *call, bool hold) {
  vk__stream_t *st = calloc(1, sizeof(*st));
  if (st == NULL) {
    return NULL;
  }
  if (uv_timer_init(vk_call_loop(call), &st->timer) != 0) {
    free(st);  // never initialized, so there is nothing to close
    return NULL;
  }
  st->call = call;
  st->svc = vk_call_service_ctx(call);
  st->hold = hold;
  st->status = VK_GRPC_OK;
  st->svc->open_handles++;
  vk_call_ref(call);
  vk_call_set_data(call, st);
  return st;
}

// stream_finish ends the call and releases the stream.
static void stream_finish(vk__stream_t *st, vk_grpc_status_t status,
                          const char *message) {
  vk_call_finish(st->call, status, message);
  stream_release(st);
}

// stream_push appends one response to the queue. Returns 0, VK_ETOOBIG when
// VK_TEST_SERVICE_MAX_PENDING responses are already waiting, VK_ENOMEM.
static int stream_push(vk__stream_t *st, const vk__param_t *p) {
  if (st->len - st->head >= VK_TEST_SERVICE_MAX_PENDING) {
    return VK_ETOOBIG;
  }
  if (st->len == st->cap && st->head > 0) {
    memmove(st->q, st->q + st->head, (st->len - st->head) * sizeof(*st->q));
    st->len -= st->head;
    st->head = 0;
  }
  if (st->len == st->cap) {
    size_t cap = st->cap == 0 ? 8 : st->cap * 2;
    if (cap > VK_TEST_SERVICE_MAX_PENDING) {
      cap = VK_TEST_SERVICE_MAX_PENDING;
    }
    vk__param_t *q = realloc(st->q, cap * sizeof(*q));
    if (q == NULL) {
      return VK_ENOMEM;
    }
    st->q = q;
    st->cap = cap;
  }
  st->q[st->len++] = *p;
  return 0;
}

// stream_add_request queues the responses one request asks for. Returns
// false after finishing the call.
static bool stream_add_request(
    vk__stream_t *st, const Grpc__Testing__StreamingOutputCallRequest *req) {
  if (req->response_status != NULL && req->response_status->code != 0) {
    // Echo Status: send what earlier requests asked for, then end with this
    // status; later requests are not processed.
    st->status = status_from_code(req->response_status->code);
    st->message = arena_strdup(st->call, req->response_status->message);
    st->input_done = true;
    return true;
  }
  for (size_t i = 0; i < req->n_response_parameters; i++) {
    const Grpc__Testing__ResponseParameters *rp = req->response_parameters[i];
    if (!response_ok(st->call, req->response_type, rp->size)) {
      stream_release(st);
      return false;
    }
    vk__param_t p = {
        .size = (uint32_t)rp->size,
        .delay_ms = rp->interval_us > 0
                        ? (uint32_t)(((uint64_t)rp->interval_us + 999) / 1000)
                        : 0,
        .compressed = rp->compressed != NULL && rp->compressed->value,
    };
    int rv = stream_push(st, &p);
    if (rv != 0) {
      finish_rv(st->call, rv, "too many responses waiting");
      stream_release(st);
      return false;
    }
  }
  return true;
}

static int stream_send(vk__stream_t *st, const vk__param_t *p) {
  Grpc__Testing__Payload payload = GRPC__TESTING__PAYLOAD__INIT;
  Grpc__Testing__StreamingOutputCallResponse resp =
      GRPC__TESTING__STREAMING_OUTPUT_CALL_RESPONSE__INIT;
  payload.body.data = vk__zeros;
  payload.body.len = p->size;
  resp.payload = &payload;
  // CompressedResponse, per message: unset means uncompressed.
  vk_call_set_compression(st->call, p->compressed);
  return vk_call_send(st->call, &resp.base);
}

static void stream_timer_cb(uv_timer_t *timer);

// stream_pump sends queued responses until the queue is empty, a delay has
// to pass, or the send queue is full; then, once no request can add more,
// finishes the call. Every event that may let it progress calls it.
static void stream_pump(vk__stream_t *st) {
  while (!st->released && !st->hold && !st->timer_armed && !st->blocked &&
         st->head < st->len) {
    const vk__param_t *p = &st->q[st->head];
    if (p->delay_ms > 0 && !st->waited) {
      int rv = uv_timer_start(&st->timer, stream_timer_cb, p->delay_ms, 0);
      if (rv != 0) {
        stream_finish(st, VK_GRPC_INTERNAL, "cannot start the interval timer");
        return;
      }
      st->timer_armed = true;
      return;
    }
    int rv = stream_send(st, p);
    if (rv == VK_EAGAIN) {
      vk_log(VK_LOG_DEBUG, vk_call_id(st->call),
             "send queue full after %zu responses; waiting for on_writable",
             st->head);
      st->blocked = true;
      return;
    }
    if (rv != 0) {
      finish_rv(st->call, rv, "send");
      stream_release(st);
      return;
    }
    st->head++;
    st->waited = false;
  }
  if (!st->released && !st->hold && st->input_done && st->head == st->len) {
    stream_finish(st, st->status, st->message);
  }
}

static void stream_timer_cb(uv_timer_t *timer) {
  vk__stream_t *st = vk_container_of(timer, vk__stream_t, timer);
  st->timer_armed = false;
  st->waited = true;
  stream_pump(st);
}

// stream_start is on_start for the three streaming methods.
static void stream_start(vk_call_t *call, bool hold) {
  if (!echo_metadata(call)) {
    return;
  }
  if (stream_new(call, hold) == NULL) {
    finish_rv(call, VK_ENOMEM, "call state");
  }
}

static void streaming_output_start(vk_call_t *call,
                                   const ProtobufCMessage *msg) {
  stream_start(call, false);
  vk__stream_t *st = vk_call_data(call);
  if (st == NULL) {
    return;
  }
  if (stream_add_request(
          st, (const Grpc__Testing__StreamingOutputCallRequest *)msg)) {
    st->input_done = true;  // the one request is all there is
    stream_pump(st);
  }
}

static void full_duplex_start(vk_call_t *call, const ProtobufCMessage *req) {
  (void)req;
  stream_start(call, false);
}

static void half_duplex_start(vk_call_t *call, const ProtobufCMessage *req) {
  (void)req;
  stream_start(call, true);
}

static void duplex_message(vk_call_t *call, const ProtobufCMessage *msg) {
  vk__stream_t *st = vk_call_data(call);
  if (st == NULL || st->input_done) {
    return;  // finished, or a status to echo ends it: ignore the request
  }
  if (stream_add_request(
          st, (const Grpc__Testing__StreamingOutputCallRequest *)msg)) {
    stream_pump(st);
  }
}

static void duplex_half_close(vk_call_t *call) {
  vk__stream_t *st = vk_call_data(call);
  if (st == NULL) {
    return;
  }
  st->input_done = true;
  st->hold = false;
  stream_pump(st);
}

static void stream_writable(vk_call_t *call) {
  vk__stream_t *st = vk_call_data(call);
  if (st == NULL) {
    return;
  }
  st->blocked = false;
  stream_pump(st);
}

static void stream_cancel(vk_call_t *call) {
  vk__stream_t *st = vk_call_data(call);
  if (st != NULL) {
    stream_release(st);
  }
}

// --- the service -----------------------------------------------------------

static const vk_method_t vk__test_methods[] = {
    {
        .name = "EmptyCall",
        .kind = VK_RPC_UNARY,
        .input = &grpc__testing__empty__descriptor,
        .output = &grpc__testing__empty__descriptor,
        .on_start = empty_call_start,
        .on_writable = empty_reply,
    },
    {
        .name = "UnaryCall",
        .kind = VK_RPC_UNARY,
        .input = &grpc__testing__simple_request__descriptor,
        .output = &grpc__testing__simple_response__descriptor,
        .on_start = unary_call_start,
        .on_writable = unary_call_writable,
    },
    {
        .name = "CacheableUnaryCall",
        .kind = VK_RPC_UNARY,
        .input = &grpc__testing__simple_request__descriptor,
        .output = &grpc__testing__simple_response__descriptor,
        .on_start = cacheable_unary_call_start,
        .on_writable = unary_call_writable,
    },
    {
        .name = "StreamingOutputCall",
        .kind = VK_RPC_SERVER_STREAM,
        .input = &grpc__testing__streaming_output_call_request__descriptor,
        .output = &grpc__testing__streaming_output_call_response__descriptor,
        .on_start = streaming_output_start,
        .on_cancel = stream_cancel,
        .on_writable = stream_writable,
    },
    {
        .name = "StreamingInputCall",
        .kind = VK_RPC_CLIENT_STREAM,
        .input = &grpc__testing__streaming_input_call_request__descriptor,
        .output = &grpc__testing__streaming_input_call_response__descriptor,
        .on_start = input_start,
        .on_message = input_message,
        .on_half_close = input_reply,
        .on_writable = input_reply,
    },
    {
        .name = "FullDuplexCall",
        .kind = VK_RPC_BIDI,
        .input = &grpc__testing__streaming_output_call_request__descriptor,
        .output = &grpc__testing__streaming_output_call_response__descriptor,
        .on_start = full_duplex_start,
        .on_message = duplex_message,
        .on_half_close = duplex_half_close,
        .on_cancel = stream_cancel,
        .on_writable = stream_writable,
    },
    {
        .name = "HalfDuplexCall",
        .kind = VK_RPC_BIDI,
        .input = &grpc__testing__streaming_output_call_request__descriptor,
        .output = &grpc__testing__streaming_output_call_response__descriptor,
        .on_start = half_duplex_start,
        .on_message = duplex_message,
        .on_half_close = duplex_half_close,
        .on_cancel = stream_cancel,
        .on_writable = stream_writable,
    },
    {
        .name = "UnimplementedCall",
        .kind = VK_RPC_UNARY,
        .input = &grpc__testing__empty__descriptor,
        .output = &grpc__testing__empty__descriptor,
        .on_start = unimplemented_call_start,
    },
};

int vk_test_service_new(vk_test_service_t **out) {
  vk_test_service_t *t = calloc(1, sizeof(*t));
  if (t == NULL) {
    return VK_ENOMEM;
  }
  t->service.name = "grpc.testing.TestService";
  t->service.methods = vk__test_methods;
  t->service.n_methods = VK_ARRAY_LEN(vk__test_methods);
  t->service.ctx = t;
  *out = t;
  return 0;
}

void vk_test_service_free(vk_test_service_t *t) {
  if (t == NULL) {
    return;
  }
  if (t->open_handles != 0) {
    // A stream's close callback would write to freed memory: leak instead.
    VK_ERROR("test service freed with %zu open handles; leaking it",
             t->open_handles);
    return;
  }
  free(t);
}

const vk_service_t *vk_test_service_get(vk_test_service_t *t) {
  return &t->service;
}

size_t vk_test_service_open_handles(const vk_test_service_t *t) {
  return t->open_handles;
}
