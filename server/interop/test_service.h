// test_service.h: grpc.testing.TestService, the service every gRPC interop
// client talks to (grpc/grpc doc/interop-test-descriptions.md, "Server"),
// on vkey's framework. vkey-interop-server hosts it; tests may too.
#ifndef VK_INTEROP_TEST_SERVICE_H
#define VK_INTEROP_TEST_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "grpc.h"

// The largest payload a response may carry; larger `response_size` or
// `ResponseParameters.size` values fail the call with RESOURCE_EXHAUSTED.
#define VK_TEST_SERVICE_MAX_PAYLOAD (4u * 1024u * 1024u)

// The most response parameters one streaming call may have waiting to be
// answered (HalfDuplexCall buffers them until half-close); more fail the call
// with RESOURCE_EXHAUSTED.
#define VK_TEST_SERVICE_MAX_PENDING 1024u

typedef struct vk_test_service_s vk_test_service_t;

// vk_test_service_new creates the service. Returns 0, or VK_ENOMEM. The
// caller frees it with vk_test_service_free() after the server using it has
// been freed.
int vk_test_service_new(vk_test_service_t **out);

// vk_test_service_free releases `t`. Every call must have ended and
// vk_test_service_open_handles() must be 0: streaming calls own a timer that
// is released from its close callback. Free(NULL) is a no-op.
void vk_test_service_free(vk_test_service_t *t);

// vk_test_service_get returns the grpc.testing.TestService description to
// pass to vk_server_add_service(). It lives as long as `t`.
const vk_service_t *vk_test_service_get(vk_test_service_t *t);

// vk_test_service_open_handles returns how many libuv handles the service
// still has open (one per streaming call that has not finished closing).
// A server shutting down runs its loop until this is 0 before freeing the
// server, because each such handle holds a reference to its call.
size_t vk_test_service_open_handles(const vk_test_service_t *t);

#endif  // VK_INTEROP_TEST_SERVICE_H
