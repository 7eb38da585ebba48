// router.h: maps a gRPC :path ("/pkg.Service/Method") to its service and
// method. Built once at start-up, read on every call (the hot path), so
// lookups are one hash and one memcmp.
#ifndef VK_ROUTER_H
#define VK_ROUTER_H

#include <stddef.h>

#include "grpc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_route_s {
  char *path;  // "/service/method", owned
  size_t path_len;
  const vk_service_t *service;
  const vk_method_t *method;
} vk_route_t;

typedef struct vk_router_s {
  vk_route_t *slots;  // open addressing, power-of-two size
  size_t n_slots;
  size_t n_routes;
  const vk_service_t **services;
  size_t n_services;
} vk_router_t;

// vk_router_init makes an empty router; vk_router_cleanup frees it.
void vk_router_init(vk_router_t *r);
void vk_router_cleanup(vk_router_t *r);

// vk_router_add adds every method of `svc`. Returns 0; VK_EINVAL when a
// method or the service is already routed or a name is empty; VK_ENOMEM.
int vk_router_add(vk_router_t *r, const vk_service_t *svc);

// vk_router_find looks up `path`. Returns the route, or NULL.
const vk_route_t *vk_router_find(const vk_router_t *r, const char *path,
                                 size_t len);

// vk_router_has_service tells whether the service part of `path` (between
// the first and second '/') names a routed service, so that a miss can say
// "unknown service" or "unknown method".
int vk_router_has_service(const vk_router_t *r, const char *path, size_t len);

#ifdef __cplusplus
}
#endif

#endif  // VK_ROUTER_H
