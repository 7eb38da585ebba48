// keytoken.c: KeyClaims rules and the SignedKey signature (see keytoken.h).
#include "keytoken.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/curve25519.h>
#include <openssl/mem.h>
#include <openssl/rand.h>

#include "common.h"

int vk_keytoken_new_key_id(char out[VK_KEY_ID_LEN + 1], const char *vin) {
  static const char kHex[] = "0123456789abcdef";
  if (!vk_vin_valid(vin)) {
    return VK_EINVAL;
  }
  uint8_t rnd[8];
  RAND_bytes(rnd, sizeof(rnd));
  memcpy(out, vin, VK_VIN_LEN);
  out[VK_VIN_LEN] = '.';
  char *hex = out + VK_VIN_LEN + 1;
  for (size_t i = 0; i < sizeof(rnd); i++) {
    hex[2 * i] = kHex[rnd[i] >> 4];
    hex[2 * i + 1] = kHex[rnd[i] & 15];
  }
  out[VK_KEY_ID_LEN] = '\0';
  return VK_OK;
}

bool vk_keytoken_type_valid(int type) {
  return type >= VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER &&
         type <= VKEY__V1__KEY_TYPE__KEY_TYPE_VALET;
}

static vk_function_mask_t fbit(Vkey__V1__VehicleFunction f) {
  return (vk_function_mask_t)1 << (unsigned)f;
}

vk_function_mask_t vk_keytoken_default_functions(Vkey__V1__KeyType type) {
  vk_function_mask_t basic =
      fbit(VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_UNLOCK) |
      fbit(VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_LOCK);
  switch (type) {
    case VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER: {
      vk_function_mask_t all = 0;
      for (int f = 1; f <= VK_KEYTOKEN_FUNCTION_MAX; f++) {
        all |= (vk_function_mask_t)1 << f;
      }
      return all;
    }
    case VKEY__V1__KEY_TYPE__KEY_TYPE_VALET:
      // A valet parks the car: no trunk, no frunk, nothing else.
      return basic | fbit(VKEY__V1__VEHICLE_FUNCTION__VEHICLE_FUNCTION_DRIVE);
    default:
      return basic;
  }
}

int vk_keytoken_check_functions(vk_function_mask_t *out_mask,
                                const char **out_err,
                                const Vkey__V1__VehicleFunction *functions,
                                size_t n) {
  if (n > VK_KEYTOKEN_MAX_FUNCTIONS) {
    *out_err = "too many functions (at most 16)";
    return VK_EINVAL;
  }
  vk_function_mask_t mask = 0;
  for (size_t i = 0; i < n; i++) {
    // proto3 enums are open: protobuf-c hands over any number it decodes.
    int f = (int)functions[i];
    if (f < 1 || f > VK_KEYTOKEN_FUNCTION_MAX) {
      *out_err = "unknown or unspecified vehicle function";
      return VK_EINVAL;
    }
    vk_function_mask_t bit = (vk_function_mask_t)1 << f;
    if ((mask & bit) != 0) {
      *out_err = "a vehicle function is listed twice";
      return VK_EINVAL;
    }
    mask |= bit;
  }
  *out_mask = mask;
  return VK_OK;
}

size_t vk_keytoken_mask_functions(Vkey__V1__VehicleFunction *out,
                                  vk_function_mask_t mask) {
  size_t n = 0;
  for (int f = 1; f <= VK_KEYTOKEN_FUNCTION_MAX; f++) {
    if ((mask & ((vk_function_mask_t)1 << f)) != 0) {
      out[n++] = (Vkey__V1__VehicleFunction)f;
    }
  }
  return n;
}

int vk_keytoken_check_validity(const char **out_err,
                               const Vkey__V1__Validity *v,
                               Vkey__V1__KeyType type, int64_t now_s) {
  int64_t nb = v != NULL ? v->not_before : 0;
  int64_t na = v != NULL ? v->not_after : 0;
  int64_t horizon = now_s + VK_KEYTOKEN_MAX_VALIDITY_S;
  if (nb < 0 || na < 0) {
    *out_err = "validity bounds must not be negative (0 means open)";
    return VK_EINVAL;
  }
  if (nb != 0 && na != 0 && na <= nb) {
    *out_err = "validity.not_after must be after validity.not_before";
    return VK_EINVAL;
  }
  if (na != 0 && na <= now_s) {
    *out_err = "validity.not_after is in the past";
    return VK_EINVAL;
  }
  if (na > horizon || nb > horizon) {
    *out_err = "validity reaches more than 10 years ahead";
    return VK_EINVAL;
  }
  if (type == VKEY__V1__KEY_TYPE__KEY_TYPE_TEMPORARY && na == 0) {
    *out_err = "a temporary key needs validity.not_after";
    return VK_EINVAL;
  }
  return VK_OK;
}

int vk_keytoken_check_max_uses(uint32_t *out_uses, const char **out_err,
                               Vkey__V1__KeyType type, uint32_t max_uses) {
  if (type == VKEY__V1__KEY_TYPE__KEY_TYPE_ONE_TIME) {
    if (max_uses > 1) {
      *out_err = "a one-time key allows exactly one use";
      return VK_EINVAL;
    }
    *out_uses = 1;
    return VK_OK;
  }
  if (max_uses > VK_KEYTOKEN_MAX_USES) {
    *out_err = "max_uses is over 1000000";
    return VK_EINVAL;
  }
  *out_uses = max_uses;
  return VK_OK;
}

uint8_t *vk_keytoken_message(ProtobufCAllocator *alloc, const uint8_t *claims,
                             size_t claims_len, size_t *out_len) {
  size_t len = VK_KEYTOKEN_CONTEXT_LEN + claims_len;
  uint8_t *msg =
      alloc != NULL ? alloc->alloc(alloc->allocator_data, len) : malloc(len);
  if (msg == NULL) {
    return NULL;
  }
  // sizeof the literal includes its NUL: exactly the 0x00 separator.
  memcpy(msg, VK_KEYTOKEN_CONTEXT, VK_KEYTOKEN_CONTEXT_LEN);
  if (claims_len > 0) {
    memcpy(msg + VK_KEYTOKEN_CONTEXT_LEN, claims, claims_len);
  }
  *out_len = len;
  return msg;
}

void vk_keytoken_sign_op(vk_crypto_op_t *op, const vk_ed25519_key_t *key,
                         const uint8_t *msg, size_t msg_len) {
  memset(op, 0, sizeof(*op));
  op->sign = true;
  op->key = key;
  op->alg = VK_SIG_ED25519;
  op->msg = msg;
  op->msg_len = msg_len;
}

int vk_keytoken_sign(uint8_t out_sig[64], const vk_ed25519_key_t *key,
                     const uint8_t *claims, size_t claims_len) {
  if (claims_len > VK_KEYTOKEN_MAX_CLAIMS) {
    return VK_EINVAL;
  }
  uint8_t msg[VK_KEYTOKEN_CONTEXT_LEN + VK_KEYTOKEN_MAX_CLAIMS];
  memcpy(msg, VK_KEYTOKEN_CONTEXT, VK_KEYTOKEN_CONTEXT_LEN);
  if (claims_len > 0) {
    memcpy(msg + VK_KEYTOKEN_CONTEXT_LEN, claims, claims_len);
  }
  int ok = ED25519_sign(out_sig, msg, VK_KEYTOKEN_CONTEXT_LEN + claims_len,
                        key->private_key);
  return ok == 1 ? VK_OK : VK_ENOMEM;
}

int vk_keytoken_verify(const uint8_t *claims, size_t claims_len,
                       const uint8_t *sig, size_t sig_len,
                       const char *issuer_key_id,
                       const uint8_t issuer_public[32]) {
  if (claims_len == 0 || claims_len > VK_KEYTOKEN_MAX_CLAIMS || sig_len != 64) {
    return VK_EINVAL;
  }
  // The claims are parsed before the signature is checked only to learn
  // which issuer key they name; the parse is bounded by the size check.
  Vkey__V1__KeyClaims *c =
      vkey__v1__key_claims__unpack(NULL, claims_len, claims);
  if (c == NULL) {
    return VK_EINVAL;
  }
  int rv = VK_OK;
  if (c->format != VK_KEYTOKEN_FORMAT) {
    rv = VK_EINVAL;
  } else if (strcmp(c->issuer_key_id, issuer_key_id) != 0) {
    rv = VK_ENOTFOUND;
  }
  vkey__v1__key_claims__free_unpacked(c, NULL);
  if (rv != VK_OK) {
    return rv;
  }
  uint8_t msg[VK_KEYTOKEN_CONTEXT_LEN + VK_KEYTOKEN_MAX_CLAIMS];
  memcpy(msg, VK_KEYTOKEN_CONTEXT, VK_KEYTOKEN_CONTEXT_LEN);
  memcpy(msg + VK_KEYTOKEN_CONTEXT_LEN, claims, claims_len);
  if (ED25519_verify(msg, VK_KEYTOKEN_CONTEXT_LEN + claims_len, sig,
                     issuer_public) != 1) {
    return VK_EPROTO;
  }
  return VK_OK;
}
