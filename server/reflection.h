// reflection.h: gRPC server reflection (grpc/grpc doc/server-reflection.md),
// grpc.reflection.v1.ServerReflection and its older twin
// grpc.reflection.v1alpha.ServerReflection, both answering from one
// serialized FileDescriptorSet embedded at build time. It lets clients such
// as grpcurl call the server without its .proto files.
//
// Threading: every function is for the loop thread the server runs on.
#ifndef VK_REFLECTION_H
#define VK_REFLECTION_H

#include <stddef.h>
#include <stdint.h>

#include "grpc.h"

// Caps on what a client can ask for: a longer name is answered with an
// INVALID_ARGUMENT error_response. Requests that arrive while the call's
// send queue is full wait, serialized, to be answered in order; more of them
// than these caps (a client that sends but does not read) end the stream
// with RESOURCE_EXHAUSTED.
#define VK_REFLECTION_MAX_NAME 1024
#define VK_REFLECTION_MAX_PENDING 64
#define VK_REFLECTION_MAX_PENDING_BYTES (256 * 1024)

typedef struct vk_reflection_s vk_reflection_t;

// vk_reflection_new parses `fds`, a serialized
// google.protobuf.FileDescriptorSet holding every file the server's services
// need and all their imports (protoc
// --include_imports), and indexes its files by name, its symbols (packages,
// messages and nested messages, enums, enum values, fields, extensions,
// services, methods as Service.Method) and its extensions. The bytes are
// copied: `fds` may be freed afterwards. Returns 0 and sets *out; VK_EINVAL
// when `fds` does not parse, a file has no name, two files share a name or a
// file imports one missing from the set; VK_ENOMEM.
int vk_reflection_new(vk_reflection_t **out, const uint8_t *fds,
                      size_t fds_len);

// vk_reflection_free frees `r`. Free it after the server that serves its
// services. Free(NULL) is a no-op.
void vk_reflection_free(vk_reflection_t *r);

// vk_reflection_service_v1 and vk_reflection_service_v1alpha return the two
// reflection services over `r`, for vk_server_add_service(). They live as
// long as `r`. list_services answers every service defined in the set,
// whether or not the server registered it.
const vk_service_t *vk_reflection_service_v1(vk_reflection_t *r);
const vk_service_t *vk_reflection_service_v1alpha(vk_reflection_t *r);

#endif  // VK_REFLECTION_H
