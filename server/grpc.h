// grpc.h: the API a service module uses. A service declares its methods with
// their protobuf-c descriptors and handlers; the framework (call.c, h2.c)
// does HTTP/2, framing, compression, deadlines and status. A service module
// never includes nghttp2.
//
// Threading: every function here is for the loop thread only. Work on other
// threads (the worker pool) posts back to the loop before touching a call.
//
// Lifetime: the framework holds one reference to a call while its stream is
// open. A handler that finishes later (after Redis or a worker answers) takes
// its own reference with vk_call_ref() and drops it with vk_call_unref() when
// its work is done; until then the call's memory stays valid even if the
// stream has gone (vk_call_is_done() tells).
#ifndef VK_GRPC_H
#define VK_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>
#include <uv.h>

#include "common.h"

// gRPC status codes (grpc/grpc doc/statuscodes.md).
typedef enum {
  VK_GRPC_OK = 0,
  VK_GRPC_CANCELLED = 1,
  VK_GRPC_UNKNOWN = 2,
  VK_GRPC_INVALID_ARGUMENT = 3,
  VK_GRPC_DEADLINE_EXCEEDED = 4,
  VK_GRPC_NOT_FOUND = 5,
  VK_GRPC_ALREADY_EXISTS = 6,
  VK_GRPC_PERMISSION_DENIED = 7,
  VK_GRPC_RESOURCE_EXHAUSTED = 8,
  VK_GRPC_FAILED_PRECONDITION = 9,
  VK_GRPC_ABORTED = 10,
  VK_GRPC_OUT_OF_RANGE = 11,
  VK_GRPC_UNIMPLEMENTED = 12,
  VK_GRPC_INTERNAL = 13,
  VK_GRPC_UNAVAILABLE = 14,
  VK_GRPC_DATA_LOSS = 15,
  VK_GRPC_UNAUTHENTICATED = 16,
} vk_grpc_status_t;

typedef struct vk_call_s vk_call_t;

typedef enum {
  VK_RPC_UNARY,
  VK_RPC_SERVER_STREAM,
  VK_RPC_CLIENT_STREAM,
  VK_RPC_BIDI,
} vk_rpc_kind_t;

// vk_method_t declares one RPC. Unused callbacks are NULL.
typedef struct vk_method_s {
  const char *name;  // the method's name in the .proto, e.g. "Check"
  vk_rpc_kind_t kind;
  const ProtobufCMessageDescriptor *input;
  const ProtobufCMessageDescriptor *output;

  // on_start is called once per call. For unary and server-streaming
  // methods `req` is the decoded request, valid until the call is freed; for
  // client-streaming and bidi methods `req` is NULL and the requests arrive
  // through on_message. Required.
  void (*on_start)(vk_call_t *call, const ProtobufCMessage *req);
  // on_message (client-streaming, bidi): one request, valid only during the
  // callback.
  void (*on_message)(vk_call_t *call, const ProtobufCMessage *req);
  // on_half_close (client-streaming, bidi): the client sent its last message.
  void (*on_half_close)(vk_call_t *call);
  // on_cancel: the call ended before the handler finished it (client
  // RST_STREAM, deadline, connection lost, drain timeout). The handler drops
  // its pending work; sending is no longer possible. Called at most once,
  // and never after vk_call_finish().
  void (*on_cancel)(vk_call_t *call);
  // on_writable: after vk_call_send() returned VK_EAGAIN, the send queue has
  // drained and the handler may send again.
  void (*on_writable)(vk_call_t *call);
  // keep_request_bytes (unary): the request message's bytes as received
  // (after decompression) stay readable through vk_call_request_bytes, for
  // handlers that authenticate them (session calls, docs/SESSIONS.md).
  bool keep_request_bytes;
} vk_method_t;

// vk_service_t is a gRPC service: its full name and its methods. It and its
// methods must outlive the server (usually they are static const).
typedef struct vk_service_s {
  const char *name;  // full name, e.g. "grpc.health.v1.Health"
  const vk_method_t *methods;
  size_t n_methods;
  void *ctx;  // handed to handlers through vk_call_service_ctx()
} vk_service_t;

// --- calls -----------------------------------------------------------------

// vk_call_id returns the call's id, unique in this process, for logs.
uint64_t vk_call_id(const vk_call_t *call);

// vk_call_service_ctx returns the `ctx` of the call's service.
void *vk_call_service_ctx(const vk_call_t *call);

// vk_call_loop returns the loop the call runs on.
uv_loop_t *vk_call_loop(const vk_call_t *call);

// vk_call_set_data / vk_call_data hold one pointer for the handler.
void vk_call_set_data(vk_call_t *call, void *data);
void *vk_call_data(const vk_call_t *call);

// vk_call_alloc returns `len` zeroed bytes from the call's arena, freed with
// the call, or NULL when out of memory or over the arena's cap.
void *vk_call_alloc(vk_call_t *call, size_t len);

// vk_call_allocator returns a protobuf-c allocator over the call's arena,
// for messages that live as long as the call.
ProtobufCAllocator *vk_call_allocator(vk_call_t *call);

// vk_call_request_bytes returns the unary request message as received, in
// the call's arena, when the method keeps them (keep_request_bytes); else
// NULL.
const uint8_t *vk_call_request_bytes(const vk_call_t *call, size_t *out_len);

// vk_call_metadata returns the value of request metadata `key` (lower case)
// and sets *out_len, or returns NULL if absent. For keys ending in "-bin" the
// value is already base64-decoded. Valid as long as the call.
const uint8_t *vk_call_metadata(const vk_call_t *call, const char *key,
                                size_t *out_len);

// vk_call_path returns the call's ":path", "/package.Service/Method".
const char *vk_call_path(const vk_call_t *call);

// vk_call_peer writes the client's address as "ip:port" into `out`.
void vk_call_peer(const vk_call_t *call, char *out, size_t out_len);

// vk_call_deadline_ms returns the call's deadline on vk_now_ms()'s clock, or
// 0 when the client set none.
uint64_t vk_call_deadline_ms(const vk_call_t *call);

// vk_call_last_message_compressed tells whether the last request message
// arrived with the compressed flag set.
bool vk_call_last_message_compressed(const vk_call_t *call);

// The most custom metadata entries a call sends in its headers, and in its
// trailers.
#define VK_MAX_CUSTOM_METADATA 24

// vk_call_add_header adds response metadata sent with the response headers.
// Keys are lower case; "-bin" values are base64-encoded by the framework.
// Returns 0, VK_EINVAL for a bad key, VK_ECLOSED when headers already went
// out or the call is done, VK_ETOOBIG over the metadata cap (bytes, or
// VK_MAX_CUSTOM_METADATA entries).
int vk_call_add_header(vk_call_t *call, const char *key, const uint8_t *value,
                       size_t len);

// vk_call_add_trailer adds metadata sent with the trailers. Same rules.
int vk_call_add_trailer(vk_call_t *call, const char *key, const uint8_t *value,
                        size_t len);

// vk_call_set_compression asks that the following response messages be sent
// gzip-compressed, if the client accepts gzip. Returns true when they will be.
bool vk_call_set_compression(vk_call_t *call, bool on);

// vk_call_send queues one response message. Returns 0 when queued;
// VK_EAGAIN when the send queue is over its cap (nothing queued; on_writable
// follows); VK_ECLOSED when the call is done; VK_EINVAL for a unary method's
// second message; VK_ETOOBIG over the message size limit; VK_ENOMEM.
int vk_call_send(vk_call_t *call, const ProtobufCMessage *msg);

// vk_call_finish ends the call with `status` and an optional human-readable
// `message` (percent-encoded on the wire). Queued messages go out first.
// Later calls are no-ops. Safe on a done call.
void vk_call_finish(vk_call_t *call, vk_grpc_status_t status,
                    const char *message);

// vk_call_is_done tells whether the call was finished or cancelled: the
// handler should stop working on it.
bool vk_call_is_done(const vk_call_t *call);

// vk_call_ref / vk_call_unref: see "Lifetime" above.
void vk_call_ref(vk_call_t *call);
void vk_call_unref(vk_call_t *call);

#endif  // VK_GRPC_H
