// fuzz_gzip: gzip decompression of arbitrary bytes under a cap, and
// compress/decompress round trips. The first byte picks the cap, so bombs
// and exact-cap boundaries are reachable.
#include "fuzz.h"
#include "compress.h"

static size_t pick_cap(uint8_t b) {
  switch (b % 4) {
    case 0:
      return b / 4;  // 0..63
    case 1:
      return (size_t)b * 97;
    case 2:
      return 1u << 20;
    default:
      return 64u << 20;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  CBS cbs;
  CBS rest;
  uint8_t b;
  size_t cap;
  CBB out;
  CBB z;
  CBB back;
  int rv;

  CBS_init(&cbs, data, size);
  if (!CBS_get_u8(&cbs, &b)) {
    return 0;
  }
  cap = pick_cap(b);
  rest = cbs;

  // Arbitrary bytes as a gzip stream.
  vk_fuzz_cbb_init(&out);
  rv = vk_gzip_decompress(&out, CBS_data(&rest), CBS_len(&rest), cap);
  VK_FUZZ_CHECK(rv == 0 || rv == VK_EINVAL || rv == VK_ETOOBIG);
  VK_FUZZ_CHECK(CBB_len(&out) <= cap);
  if (rv == 0) {
    // What decompressed once decompresses the same with the exact cap, and
    // is too big for one byte less.
    CBB again;
    vk_fuzz_cbb_init(&again);
    VK_FUZZ_CHECK(vk_gzip_decompress(&again, CBS_data(&rest), CBS_len(&rest),
                                     CBB_len(&out)) == 0);
    VK_FUZZ_CHECK(vk_fuzz_cbb_equal(&again, CBB_data(&out), CBB_len(&out)));
    CBB_cleanup(&again);
    if (CBB_len(&out) > 0) {
      vk_fuzz_cbb_init(&again);
      VK_FUZZ_CHECK(vk_gzip_decompress(&again, CBS_data(&rest), CBS_len(&rest),
                                       CBB_len(&out) - 1) == VK_ETOOBIG);
      CBB_cleanup(&again);
    }
  }
  CBB_cleanup(&out);

  // Round trip of the input itself.
  vk_fuzz_cbb_init(&z);
  vk_fuzz_cbb_init(&back);
  VK_FUZZ_CHECK(vk_gzip_compress(&z, CBS_data(&rest), CBS_len(&rest)) == 0);
  VK_FUZZ_CHECK(vk_gzip_decompress(&back, CBB_data(&z), CBB_len(&z),
                                   CBS_len(&rest)) == 0);
  VK_FUZZ_CHECK(vk_fuzz_cbb_equal(&back, CBS_data(&rest), CBS_len(&rest)));
  CBB_cleanup(&z);
  CBB_cleanup(&back);
  return 0;
}
