// vehicle.h: the vkey.v1 service of this module (see proto/vkey/v1/).
#ifndef VK_VEHICLE_H
#define VK_VEHICLE_H

#include "app.h"
#include "grpc.h"

#ifdef __cplusplus
extern "C" {
#endif

// vk_vehicle_service returns the service over `app`, for vk_server_add_service.
// It lives as long as `app`.
const vk_service_t *vk_vehicle_service(vk_app_t *app);

#ifdef __cplusplus
}
#endif

#endif
