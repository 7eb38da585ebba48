// health.h: the standard gRPC health service, grpc.health.v1.Health
// (grpc/grpc doc/health-checking.md): Check (unary) and Watch (server
// streaming), over a table of service name -> serving status that the server
// updates as its backends come and go.
//
// Threading: every function is for the loop thread the server runs on.
#ifndef VK_HEALTH_H
#define VK_HEALTH_H

#include <stdbool.h>

#include "grpc.h"

typedef struct vk_health_s vk_health_t;

// vk_health_new creates a health table that knows only "" (the whole server)
// and reports it SERVING, as grpc's default health service does; the server
// sets NOT_SERVING while a backend is down. Returns 0 and sets *out, or
// VK_ENOMEM.
int vk_health_new(vk_health_t **out);

// vk_health_free finishes every open Watch with UNAVAILABLE and drops its
// reference to the call, then frees `h`. Free it after the server that
// serves vk_health_service(h) (a service must outlive its server); watches
// the server cancelled are already gone by then. Free(NULL) is a no-op.
void vk_health_free(vk_health_t *h);

// vk_health_service returns the grpc.health.v1.Health service over `h`, for
// vk_server_add_service(). It lives as long as `h`.
const vk_service_t *vk_health_service(vk_health_t *h);

// vk_health_set_serving records whether `service` ("" is the whole server)
// is SERVING or NOT_SERVING, adding it to the table if it is new. When the
// status changes, every Watch of `service` is sent the new status once; a
// Watch whose send queue is full gets the latest status when it drains.
// Setting the status a service already has does nothing. On an allocation
// failure for a new name the change is logged and dropped.
void vk_health_set_serving(vk_health_t *h, const char *service, bool serving);

#endif  // VK_HEALTH_H
