// crypto.c: Ed25519 and ECDSA P-256 through BoringSSL. The key files are
// plain hex seeds so that operators and vkeyctl can make them with any tool.
#include "crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/curve25519.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "common.h"
#include "log.h"

void vk_ed25519_key_id(char out[17], const uint8_t public_key[32]) {
  static const char kHex[] = "0123456789abcdef";
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(public_key, 32, digest);
  for (size_t i = 0; i < 8; i++) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 15];
  }
  out[16] = '\0';
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

static void key_from_seed(vk_ed25519_key_t *out, const uint8_t seed[32]) {
  ED25519_keypair_from_seed(out->public_key, out->private_key, seed);
  vk_ed25519_key_id(out->key_id, out->public_key);
}

static int create_key_file(vk_ed25519_key_t *out, const char *path) {
  uint8_t seed[32];
  char text[66];
  RAND_bytes(seed, sizeof(seed));
  for (size_t i = 0; i < 32; i++) {
    snprintf(text + 2 * i, 3, "%02x", seed[i]);
  }
  text[64] = '\n';
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    VK_ERROR("cannot create key file %s: %s", path, strerror(errno));
    return VK_EIO;
  }
  ssize_t n = write(fd, text, 65);
  int synced = fsync(fd);
  close(fd);
  if (n != 65 || synced != 0) {
    unlink(path);
    return VK_EIO;
  }
  key_from_seed(out, seed);
  OPENSSL_cleanse(seed, sizeof(seed));
  OPENSSL_cleanse(text, sizeof(text));
  VK_INFO("created Ed25519 key %s in %s", out->key_id, path);
  return VK_OK;
}

int vk_ed25519_key_load_or_create(vk_ed25519_key_t *out, const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      return create_key_file(out, path);
    }
    VK_ERROR("cannot read key file %s: %s", path, strerror(errno));
    return VK_EIO;
  }
  char text[80];
  ssize_t n = read(fd, text, sizeof(text));
  close(fd);
  int rv = VK_EINVAL;
  uint8_t seed[32];
  // 64 hex digits, optionally followed by a newline.
  if (n == 64 || (n == 65 && text[64] == '\n')) {
    rv = VK_OK;
    for (size_t i = 0; i < 32 && rv == VK_OK; i++) {
      int hi = hex_value(text[2 * i]);
      int lo = hex_value(text[2 * i + 1]);
      if (hi < 0 || lo < 0) {
        rv = VK_EINVAL;
      } else {
        seed[i] = (uint8_t)(hi << 4 | lo);
      }
    }
  }
  if (rv == VK_OK) {
    key_from_seed(out, seed);
  } else {
    VK_ERROR("key file %s: want 64 hex digits (a 32-byte Ed25519 seed)", path);
  }
  OPENSSL_cleanse(seed, sizeof(seed));
  OPENSSL_cleanse(text, sizeof(text));
  return rv;
}

void vk_ed25519_key_cleanse(vk_ed25519_key_t *key) {
  OPENSSL_cleanse(key->private_key, sizeof(key->private_key));
}

static EC_KEY *p256_key(const uint8_t *public_key, size_t len) {
  EC_KEY *key = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  if (key == NULL) {
    return NULL;
  }
  const EC_GROUP *group = EC_KEY_get0_group(key);
  EC_POINT *point = EC_POINT_new(group);
  if (point == NULL ||
      !EC_POINT_oct2point(group, point, public_key, len, NULL) ||
      !EC_KEY_set_public_key(key, point)) {
    EC_POINT_free(point);
    EC_KEY_free(key);
    return NULL;
  }
  EC_POINT_free(point);
  return key;
}

bool vk_public_key_valid(vk_sig_alg_t alg, const uint8_t *public_key,
                         size_t len) {
  switch (alg) {
    case VK_SIG_ED25519:
      return len == 32;
    case VK_SIG_ECDSA_P256: {
      if (len != 65 || public_key[0] != 0x04) {
        return false;
      }
      EC_KEY *key = p256_key(public_key, len);
      EC_KEY_free(key);
      return key != NULL;
    }
    default:
      return false;
  }
}

static bool p256_verify(const uint8_t *public_key, size_t public_key_len,
                        const uint8_t *msg, size_t msg_len, const uint8_t *sig,
                        size_t sig_len) {
  EC_KEY *key = p256_key(public_key, public_key_len);
  if (key == NULL) {
    return false;
  }
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(msg, msg_len, digest);
  bool ok;
  if (sig_len == 64) {
    // Raw r || s, as phones' secure elements often export it.
    ECDSA_SIG *s = ECDSA_SIG_new();
    ok = s != NULL && BN_bin2bn(sig, 32, s->r) != NULL &&
         BN_bin2bn(sig + 32, 32, s->s) != NULL &&
         ECDSA_do_verify(digest, sizeof(digest), s, key) == 1;
    ECDSA_SIG_free(s);
  } else {
    ok = ECDSA_verify(0, digest, sizeof(digest), sig, sig_len, key) == 1;
  }
  EC_KEY_free(key);
  return ok;
}

bool vk_signature_verify(vk_sig_alg_t alg, const uint8_t *public_key,
                         size_t public_key_len, const uint8_t *msg,
                         size_t msg_len, const uint8_t *sig, size_t sig_len) {
  switch (alg) {
    case VK_SIG_ED25519:
      return public_key_len == 32 && sig_len == 64 &&
             ED25519_verify(msg, msg_len, sig, public_key) == 1;
    case VK_SIG_ECDSA_P256:
      return p256_verify(public_key, public_key_len, msg, msg_len, sig,
                         sig_len);
    default:
      return false;
  }
}

static void crypto_run(vk_job_t *job) {
  vk_crypto_job_t *cj = vk_container_of(job, vk_crypto_job_t, job);
  for (size_t i = 0; i < cj->n_ops; i++) {
    vk_crypto_op_t *op = &cj->ops[i];
    if (op->sign) {
      op->ok = ED25519_sign(op->out_sig, op->msg, op->msg_len,
                            op->key->private_key) == 1;
    } else {
      op->ok = vk_signature_verify(op->alg, op->public_key, op->public_key_len,
                                   op->msg, op->msg_len, op->sig, op->sig_len);
    }
  }
}

static void crypto_done(vk_job_t *job, int status) {
  vk_crypto_job_t *cj = vk_container_of(job, vk_crypto_job_t, job);
  cj->done(cj, status, cj->arg);
}

int vk_crypto_submit(vk_worker_pool_t *pool, vk_crypto_job_t *job) {
  if (job->n_ops == 0 || job->n_ops > VK_CRYPTO_MAX_OPS || job->done == NULL) {
    return VK_EINVAL;
  }
  job->job.run = crypto_run;
  job->job.done = crypto_done;
  job->job.next = NULL;
  return vk_worker_submit(pool, &job->job);
}
