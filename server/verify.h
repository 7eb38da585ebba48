// verify.h: vkey.v1.VerifyService (proto/vkey/v1/verify.proto), the hot
// path: OpenSession, VerifyKey, VerifyKeys and CheckKeyStatus.
#ifndef VK_VERIFY_H
#define VK_VERIFY_H

#include "app.h"
#include "grpc.h"

#ifdef __cplusplus
extern "C" {
#endif

// vk_verify_service returns the service over `app` (which must have
// `sessions` and `verify_cache` set), for vk_server_add_service.
const vk_service_t *vk_verify_service(vk_app_t *app);

#ifdef __cplusplus
}
#endif

#endif  // VK_VERIFY_H
