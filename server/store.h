// store.h: vkey's data model in Redis: key names and validation of the ids
// that go into them. docs/ARCHITECTURE.md describes every key. Everything
// about one vehicle carries the hash tag {VIN}, so a Redis Cluster keeps a
// vehicle's data in one slot and a Lua script may touch all of it at once.
#ifndef VK_STORE_H
#define VK_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VK_VIN_LEN 17
#define VK_USER_ID_MAX 64
#define VK_REQUEST_ID_MAX 64
// A key id is "<VIN>.<16 hex digits>", so any instance finds the vehicle.
#define VK_KEY_ID_LEN (VK_VIN_LEN + 1 + 16)
#define VK_REDIS_KEY_MAX 256

// Public keys of the service's key-signing keys: kid -> 32 raw bytes.
#define VK_REDIS_ISSUERS "vk:issuers"
// Sorted sets (score 0, by name) for paginated listing.
#define VK_REDIS_VEHICLES "vk:vehicles"
#define VK_REDIS_USERS "vk:users"
// Audit of operations not tied to one vehicle (users).
#define VK_REDIS_AUDIT_GLOBAL "vk:audit"

// vk_vin_valid: 17 characters of ISO 3779 (digits and capitals but I, O, Q).
bool vk_vin_valid(const char *vin);
// vk_user_id_valid: 1-64 of [A-Za-z0-9._@-].
bool vk_user_id_valid(const char *id);
// vk_request_id_valid: empty (no idempotency) or 1-64 printable, no spaces.
bool vk_request_id_valid(const char *id);
// vk_key_id_valid: the VIN part is valid and 16 lowercase hex digits follow.
bool vk_key_id_valid(const char *key_id);

// Key builders: each writes a NUL-terminated name into `out`
// (VK_REDIS_KEY_MAX bytes) from already validated parts.
//   vehicle hash        vk:veh:{VIN}
//   vehicle's keys      vk:veh:{VIN}:keys        zset, score = created ms
//   key record          vk:veh:{VIN}:key:<id>    hash
//   outbox              vk:veh:{VIN}:outbox      stream, ids "<seq>-1"
//   vehicle audit       vk:veh:{VIN}:audit       stream
//   nonce               vk:veh:{VIN}:nonce:<hex> string, EX 120
//   idempotency         vk:veh:{VIN}:idem:<actor>:<request id>
//   notify channel      vk:veh:{VIN}:notify      pub/sub
//   user hash           vk:user:<id>
//   user's keys         vk:user:<id>:keys        zset
//   user idempotency    vk:idem:<actor>:<request id>
void vk_store_vehicle(char *out, const char *vin);
void vk_store_vehicle_sub(char *out, const char *vin, const char *suffix);
void vk_store_key(char *out, const char *key_id);
void vk_store_user(char *out, const char *user_id);
void vk_store_user_keys(char *out, const char *user_id);

#ifdef __cplusplus
}
#endif

#endif  // VK_STORE_H
