// common.h: error codes and small helpers shared by every vkey module.
#ifndef VK_COMMON_H
#define VK_COMMON_H

#include <stddef.h>
#include <stdint.h>

// Return codes carry status only: 0 on success, a negative VK_E* on failure.
// Results travel through out_* parameters.
enum {
  VK_OK = 0,
  VK_ENOMEM = -1,      // an allocation failed
  VK_EINVAL = -2,      // bad argument or malformed input
  VK_EBUSY = -3,       // a bounded queue is full: retry later
  VK_EUNAVAIL = -4,    // a backend (Redis) is not reachable
  VK_ETIMEDOUT = -5,   // a deadline passed
  VK_ECLOSED = -6,     // the call, stream or connection is gone
  VK_EAGAIN = -7,      // would exceed a buffer cap; wait for a callback
  VK_EPROTO = -8,      // the peer broke the protocol
  VK_ETOOBIG = -9,     // input over a configured limit
  VK_EIO = -10,        // an operating-system call failed
  VK_ENOTFOUND = -11,  // no such item
};

// vk_strerror returns a static description of a VK_E* code.
const char *vk_strerror(int rv);

// vk_container_of recovers the struct holding `ptr` as its `member`.
#define vk_container_of(ptr, type, member) \
  ((type *)((char *)(ptr)-offsetof(type, member)))

#define VK_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

// vk_now_ms returns a monotonic clock in milliseconds.
uint64_t vk_now_ms(void);

// vk_hex_encode writes `len` bytes as 2 * len lowercase hex digits and a
// NUL into `out` (2 * len + 1 bytes).
void vk_hex_encode(char *out, const uint8_t *in, size_t len);

// vk_table_hash places a key in an in-process table: SipHash-2-4 under a
// key drawn at random once per process, so it is uniform and cheap, and
// whoever picks the keys (VINs, ids) cannot aim them at one slot.
uint64_t vk_table_hash(const void *p, size_t len);

// vk_wall_ms returns the wall clock in Unix milliseconds.
int64_t vk_wall_ms(void);

#endif  // VK_COMMON_H
