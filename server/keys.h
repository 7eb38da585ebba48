// keys.h: the vkey.v1 service of this module (see proto/vkey/v1/).
#ifndef VK_KEYS_H
#define VK_KEYS_H

#include "app.h"
#include "grpc.h"

#ifdef __cplusplus
extern "C" {
#endif

// vk_keys_service returns the service over `app`, for vk_server_add_service.
// It lives as long as `app`.
const vk_service_t *vk_keys_service(vk_app_t *app);

#ifdef __cplusplus
}
#endif

#endif
