// fuzz.h: shared by the fuzz targets. Each target defines the libFuzzer
// entry point; replay_main.c drives it over a corpus when libFuzzer is not
// linked in.
#ifndef VK_FUZZ_H
#define VK_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/bytestring.h>

// LLVMFuzzerTestOneInput runs one input; it returns 0 and aborts on a bug.
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// VK_FUZZ_CHECK aborts with the failed condition, which libFuzzer reports
// as a crash (assert() would vanish under NDEBUG).
#define VK_FUZZ_CHECK(cond)                                                    \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                 \
    }                                                                          \
  } while (0)

// vk_fuzz_cbb_init starts a growable CBB, aborting when out of memory.
static inline void vk_fuzz_cbb_init(CBB *cbb) {
  VK_FUZZ_CHECK(CBB_init(cbb, 0));
}

// vk_fuzz_cbs_equal tells whether `cbb` holds exactly `len` bytes `data`.
static inline int vk_fuzz_cbb_equal(const CBB *cbb, const uint8_t *data,
                                    size_t len) {
  CBS cbs;
  CBS_init(&cbs, CBB_data(cbb), CBB_len(cbb));
  return CBS_mem_equal(&cbs, data, len);
}

#endif  // VK_FUZZ_H
