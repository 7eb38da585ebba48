// registry.h: the vkey.v1 service of this module (see proto/vkey/v1/).
#ifndef VK_REGISTRY_H
#define VK_REGISTRY_H

#include "app.h"
#include "grpc.h"

#ifdef __cplusplus
extern "C" {
#endif

// vk_registry_service returns the service over `app`, for
// vk_server_add_service. It lives as long as `app`.
const vk_service_t *vk_registry_service(vk_app_t *app);

#ifdef __cplusplus
}
#endif

#endif
