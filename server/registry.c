// placeholder: being written
#include "registry.h"

const vk_service_t *vk_registry_service(vk_app_t *app) {
  (void)app;
  return NULL;
}
