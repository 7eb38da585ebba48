// fuzz_percent_roundtrip: percent-encoding arbitrary bytes gives printable
// ASCII without a bare '%' that decodes back to the input; lenient decoding
// of arbitrary bytes never fails and never grows the input.
#include "fuzz.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  CBB enc;
  CBB dec;
  CBB raw;
  CBS cbs;
  uint8_t c;

  vk_fuzz_cbb_init(&enc);
  vk_fuzz_cbb_init(&dec);
  vk_fuzz_cbb_init(&raw);

  VK_FUZZ_CHECK(vk_percent_encode(&enc, data, size) == 0);
  VK_FUZZ_CHECK(CBB_len(&enc) >= size && CBB_len(&enc) <= 3 * size);
  CBS_init(&cbs, CBB_data(&enc), CBB_len(&enc));
  while (CBS_get_u8(&cbs, &c)) {
    VK_FUZZ_CHECK(c >= 0x20 && c <= 0x7e);
  }
  VK_FUZZ_CHECK(vk_percent_decode(&dec, CBB_data(&enc), CBB_len(&enc)) == 0);
  VK_FUZZ_CHECK(vk_fuzz_cbb_equal(&dec, data, size));

  VK_FUZZ_CHECK(vk_percent_decode(&raw, data, size) == 0);
  VK_FUZZ_CHECK(CBB_len(&raw) <= size);

  CBB_cleanup(&enc);
  CBB_cleanup(&dec);
  CBB_cleanup(&raw);
  return 0;
}
