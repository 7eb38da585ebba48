// store.c: id validation and Redis key names (see store.h).
#include "store.h"

#include <string.h>

bool vk_vin_valid(const char *vin) {
  if (strlen(vin) != VK_VIN_LEN) {
    return false;
  }
  for (size_t i = 0; i < VK_VIN_LEN; i++) {
    char c = vin[i];
    bool ok = (c >= '0' && c <= '9') ||
              (c >= 'A' && c <= 'Z' && c != 'I' && c != 'O' && c != 'Q');
    if (!ok) {
      return false;
    }
  }
  return true;
}

bool vk_user_id_valid(const char *id) {
  size_t len = strlen(id);
  if (len == 0 || len > VK_USER_ID_MAX) {
    return false;
  }
  for (size_t i = 0; i < len; i++) {
    char c = id[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' ||
          c == '@')) {
      return false;
    }
  }
  return true;
}

bool vk_request_id_valid(const char *id) {
  size_t len = strlen(id);
  if (len > VK_REQUEST_ID_MAX) {
    return false;
  }
  for (size_t i = 0; i < len; i++) {
    if (id[i] <= 0x20 || id[i] >= 0x7f) {
      return false;
    }
  }
  return true;
}

bool vk_key_id_valid(const char *key_id) {
  if (strlen(key_id) != VK_KEY_ID_LEN || key_id[VK_VIN_LEN] != '.') {
    return false;
  }
  char vin[VK_VIN_LEN + 1];
  memcpy(vin, key_id, VK_VIN_LEN);
  vin[VK_VIN_LEN] = '\0';
  if (!vk_vin_valid(vin)) {
    return false;
  }
  for (size_t i = VK_VIN_LEN + 1; i < VK_KEY_ID_LEN; i++) {
    char c = key_id[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

void vk_store_vehicle(char *out, const char *vin) {
  snprintf(out, VK_REDIS_KEY_MAX, "vk:veh:{%s}", vin);
}

void vk_store_vehicle_sub(char *out, const char *vin, const char *suffix) {
  snprintf(out, VK_REDIS_KEY_MAX, "vk:veh:{%s}:%s", vin, suffix);
}

void vk_store_key(char *out, const char *key_id) {
  snprintf(out, VK_REDIS_KEY_MAX, "vk:veh:{%.*s}:key:%s", VK_VIN_LEN, key_id,
           key_id);
}

void vk_store_user(char *out, const char *user_id) {
  snprintf(out, VK_REDIS_KEY_MAX, "vk:user:%s", user_id);
}

void vk_store_user_keys(char *out, const char *user_id) {
  snprintf(out, VK_REDIS_KEY_MAX, "vk:user:%s:keys", user_id);
}
