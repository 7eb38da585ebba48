// fuzz_base64_roundtrip: unpadded base64 of arbitrary bytes decodes back to
// them, padded or not; decoding arbitrary bytes either fails without output
// or gives bytes whose encoding decodes to the same bytes.
#include "fuzz.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  CBB enc;
  CBB dec;
  CBB raw;
  CBS cbs;
  uint8_t c;
  size_t enc_len;
  int rv;

  vk_fuzz_cbb_init(&enc);
  vk_fuzz_cbb_init(&dec);
  vk_fuzz_cbb_init(&raw);

  VK_FUZZ_CHECK(vk_base64_encode(&enc, data, size) == 0);
  enc_len = CBB_len(&enc);
  VK_FUZZ_CHECK(enc_len == (size * 4 + 2) / 3);  // ceil(4n/3), no padding
  CBS_init(&cbs, CBB_data(&enc), enc_len);
  while (CBS_get_u8(&cbs, &c)) {
    VK_FUZZ_CHECK(c != '=');
  }
  VK_FUZZ_CHECK(vk_base64_decode(&dec, CBB_data(&enc), enc_len) == 0);
  VK_FUZZ_CHECK(vk_fuzz_cbb_equal(&dec, data, size));

  // Padded, it decodes the same (appended after the first copy).
  while (CBB_len(&enc) % 4 != 0) {
    VK_FUZZ_CHECK(CBB_add_u8(&enc, '='));
  }
  VK_FUZZ_CHECK(vk_base64_decode(&dec, CBB_data(&enc), CBB_len(&enc)) == 0);
  VK_FUZZ_CHECK(CBB_len(&dec) == 2 * size);

  // Arbitrary input.
  rv = vk_base64_decode(&raw, data, size);
  VK_FUZZ_CHECK(rv == 0 || rv == VK_EINVAL);
  if (rv == 0) {
    CBB again;
    CBB back;
    VK_FUZZ_CHECK(CBB_len(&raw) <= size / 4 * 3 + 2);
    vk_fuzz_cbb_init(&again);
    vk_fuzz_cbb_init(&back);
    VK_FUZZ_CHECK(vk_base64_encode(&again, CBB_data(&raw), CBB_len(&raw)) == 0);
    VK_FUZZ_CHECK(vk_base64_decode(&back, CBB_data(&again), CBB_len(&again)) ==
                  0);
    VK_FUZZ_CHECK(vk_fuzz_cbb_equal(&back, CBB_data(&raw), CBB_len(&raw)));
    CBB_cleanup(&again);
    CBB_cleanup(&back);
  } else {
    VK_FUZZ_CHECK(CBB_len(&raw) == 0);
  }

  CBB_cleanup(&enc);
  CBB_cleanup(&dec);
  CBB_cleanup(&raw);
  return 0;
}
