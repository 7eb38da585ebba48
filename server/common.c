// common.c: error strings and the clock.
#include "common.h"

#include <pthread.h>
#include <time.h>

#include <openssl/rand.h>
#include <openssl/siphash.h>
#include <uv.h>

const char *vk_strerror(int rv) {
  switch (rv) {
    case VK_OK:
      return "ok";
    case VK_ENOMEM:
      return "out of memory";
    case VK_EINVAL:
      return "invalid argument";
    case VK_EBUSY:
      return "queue full";
    case VK_EUNAVAIL:
      return "backend unavailable";
    case VK_ETIMEDOUT:
      return "timed out";
    case VK_ECLOSED:
      return "closed";
    case VK_EAGAIN:
      return "would block";
    case VK_EPROTO:
      return "protocol error";
    case VK_ETOOBIG:
      return "too big";
    case VK_EIO:
      return "I/O error";
    case VK_ENOTFOUND:
      return "not found";
    default:
      return "unknown error";
  }
}

uint64_t vk_now_ms(void) {
  return uv_hrtime() / 1000000u;
}

int64_t vk_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void vk_hex_encode(char *out, const uint8_t *in, size_t len) {
  static const char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = kHex[in[i] >> 4];
    out[2 * i + 1] = kHex[in[i] & 15];
  }
  out[2 * len] = '\0';
}

static uint64_t table_key[2];
static pthread_once_t table_key_once = PTHREAD_ONCE_INIT;

static void draw_table_key(void) {
  RAND_bytes((uint8_t *)table_key, sizeof(table_key));
}

uint64_t vk_table_hash(const void *p, size_t len) {
  pthread_once(&table_key_once, draw_table_key);
  return SIPHASH_24(table_key, p, len);
}
