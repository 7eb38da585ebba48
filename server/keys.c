// placeholder: being written
#include "keys.h"

const vk_service_t *vk_keys_service(vk_app_t *app) {
  (void)app;
  return NULL;
}
