// placeholder: being written
#include "vehicle.h"

const vk_service_t *vk_vehicle_service(vk_app_t *app) {
  (void)app;
  return NULL;
}
