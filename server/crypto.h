// crypto.h: the service's Ed25519 keys and the public-key operations every
// RPC needs, run on the worker pool (never on the loop thread) so that the
// loop hands them over in batches.
#ifndef VK_CRYPTO_H
#define VK_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker.h"

#ifdef __cplusplus
extern "C" {
#endif

// An Ed25519 key pair and its key id: the first 8 bytes of SHA-256 of the
// public key, in hex, so tokens can name the key that signed them.
typedef struct vk_ed25519_key_s {
  uint8_t private_key[64];  // BoringSSL's seed || public key form
  uint8_t public_key[32];
  char key_id[17];
} vk_ed25519_key_t;

// vk_ed25519_key_id writes the key id of `public_key` into `out`.
void vk_ed25519_key_id(char out[17], const uint8_t public_key[32]);

// vk_ed25519_key_load_or_create reads a key from `path` (a text file with
// the 32-byte seed in hex), creating it with a fresh random seed and mode
// 0600 when it does not exist. Returns 0, VK_EINVAL for a malformed file,
// VK_EIO when the file cannot be read or written.
int vk_ed25519_key_load_or_create(vk_ed25519_key_t *out, const char *path);

// vk_ed25519_key_cleanse wipes the private key.
void vk_ed25519_key_cleanse(vk_ed25519_key_t *key);

typedef enum {
  VK_SIG_ED25519 = 1,     // 32-byte public key, 64-byte signature
  VK_SIG_ECDSA_P256 = 2,  // 65-byte SEC1 point, DER or 64-byte r||s sig
} vk_sig_alg_t;

// vk_signature_verify checks a signature synchronously. For worker threads
// and tests; the loop thread uses vk_crypto_job_t. Returns true if valid.
bool vk_signature_verify(vk_sig_alg_t alg, const uint8_t *public_key,
                         size_t public_key_len, const uint8_t *msg,
                         size_t msg_len, const uint8_t *sig, size_t sig_len);

// vk_public_key_valid tells whether `public_key` is well formed for `alg`
// (length, and for P-256 a point on the curve).
bool vk_public_key_valid(vk_sig_alg_t alg, const uint8_t *public_key,
                         size_t len);

// A batch of up to VK_CRYPTO_MAX_OPS signing or verifying operations that
// run as one worker job. The caller owns the memory (typically the call's
// arena) and every buffer it points to until `done` runs.
#define VK_CRYPTO_MAX_OPS 16

typedef struct vk_crypto_op_s {
  bool sign;  // sign with `key`, else verify
  const vk_ed25519_key_t *key;
  vk_sig_alg_t alg;  // verify
  const uint8_t *public_key;
  size_t public_key_len;
  const uint8_t *msg;
  size_t msg_len;
  const uint8_t *sig;  // verify: the signature
  size_t sig_len;
  uint8_t out_sig[64];  // sign: the signature
  bool ok;              // the result
} vk_crypto_op_t;

typedef struct vk_crypto_job_s vk_crypto_job_t;
struct vk_crypto_job_s {
  vk_job_t job;  // for the pool
  vk_crypto_op_t ops[VK_CRYPTO_MAX_OPS];
  size_t n_ops;
  // done runs on the loop thread: status 0 after the ops ran (each op's
  // `ok` holds its result), VK_ECLOSED when the pool closed first.
  void (*done)(vk_crypto_job_t *job, int status, void *arg);
  void *arg;
};

// vk_crypto_submit runs `job` on the pool. Returns 0, VK_EBUSY when the
// pool's queue is full (answer RESOURCE_EXHAUSTED), VK_EINVAL.
int vk_crypto_submit(vk_worker_pool_t *pool, vk_crypto_job_t *job);

#ifdef __cplusplus
}
#endif

#endif  // VK_CRYPTO_H
