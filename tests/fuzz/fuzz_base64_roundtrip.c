// fuzz_base64_roundtrip: unpadded base64 of arbitrary bytes decodes back to
// them, padded or not; decoding arbitrary bytes either fails without output
// or gives bytes whose encoding decodes to the same bytes. And
// vk_base64_decode, a table-driven decoder, decides and decodes exactly as
// reference_decode, the EVP_DecodeBase64-based decoder it replaced, on the
// input itself and on the input mapped onto base64-looking text.
#include "fuzz.h"
#include "wire.h"

#include <openssl/base64.h>

// reference_decode is vk_base64_decode as it was, on BoringSSL's
// constant-time EVP_DecodeBase64: the oracle for the same contract.
static int reference_decode(CBB *out, const uint8_t *in, size_t len) {
  CBS cbs;
  CBS head;
  size_t rem = len % 4;
  size_t head_max;
  size_t head_n = 0;
  size_t tail_n = 0;
  uint8_t tail_out[3];
  uint8_t *dst;

  // EVP_DecodeBase64 takes only whole, padded 4-character groups. Unpadded
  // input ends in a 2- or 3-character group: decode the whole groups in
  // place and the tail after padding a copy of it. A 1-character tail is
  // never valid.
  if (rem == 1) {
    return VK_EINVAL;
  }
  CBS_init(&cbs, in, len);
  if (!CBS_get_bytes(&cbs, &head, len - rem)) {
    return VK_EINVAL;  // unreachable: len - rem <= len
  }

  // The tail first, so that nothing is written when it is bad.
  if (rem != 0) {
    uint8_t quad[4] = {'=', '=', '=', '='};
    CBS tail = cbs;
    uint8_t c;
    // An unpadded tail must not hold '=' itself: "QQ=" is neither padded
    // nor unpadded base64.
    while (CBS_get_u8(&tail, &c)) {
      if (c == '=') {
        return VK_EINVAL;
      }
    }
    if (!CBS_copy_bytes(&cbs, quad, rem) ||
        !EVP_DecodeBase64(tail_out, &tail_n, sizeof(tail_out), quad,
                          sizeof(quad))) {
      return VK_EINVAL;
    }
  }

  if (CBS_len(&head) > 0) {
    head_max = CBS_len(&head) / 4 * 3;
    if (!CBB_reserve(out, &dst, head_max)) {
      return VK_ENOMEM;
    }
    if (!EVP_DecodeBase64(dst, &head_n, head_max, CBS_data(&head),
                          CBS_len(&head))) {
      return VK_EINVAL;
    }
    // Padding is allowed only at the very end: when a tail follows, the
    // whole groups must each have given three bytes ("QQ==QQ" is bad).
    if (rem != 0 && head_n != head_max) {
      return VK_EINVAL;
    }
    if (!CBB_did_write(out, head_n)) {
      return VK_ENOMEM;
    }
  }
  if (tail_n > 0 && !CBB_add_bytes(out, tail_out, tail_n)) {
    return VK_ENOMEM;
  }
  return 0;
}

// check_against_reference decodes `in` with both decoders, each appending to
// a CBB that already holds a prefix, and checks that they give the same
// result and the same bytes (so nothing appended on VK_EINVAL for both).
static void check_against_reference(const uint8_t *in, size_t len) {
  static const uint8_t kPrefix[] = {'>', '>'};
  CBB got;
  CBB want;
  int rv;

  vk_fuzz_cbb_init(&got);
  vk_fuzz_cbb_init(&want);
  VK_FUZZ_CHECK(CBB_add_bytes(&got, kPrefix, sizeof(kPrefix)));
  VK_FUZZ_CHECK(CBB_add_bytes(&want, kPrefix, sizeof(kPrefix)));
  rv = vk_base64_decode(&got, in, len);
  VK_FUZZ_CHECK(rv == 0 || rv == VK_EINVAL);
  VK_FUZZ_CHECK(rv == reference_decode(&want, in, len));
  VK_FUZZ_CHECK(vk_fuzz_cbb_equal(&got, CBB_data(&want), CBB_len(&want)));
  if (rv != 0) {
    VK_FUZZ_CHECK(CBB_len(&got) == sizeof(kPrefix));
  }
  CBB_cleanup(&got);
  CBB_cleanup(&want);
}

// to_text maps a byte onto base64-looking text, so that mostly valid input,
// and padding in every place, are common: 3/4 of the bytes give an alphabet
// character, 3/16 '=', and the rest characters outside the alphabet.
static uint8_t to_text(uint8_t b) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  static const char kBad[] = " \n-_.\0\xc3\x80";
  if (b < 0xc0) {
    return (uint8_t)kAlphabet[b & 63];
  }
  if (b < 0xf0) {
    return '=';
  }
  return (uint8_t)kBad[b % (sizeof(kBad) - 1)];
}

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

  // The same verdict and bytes as the reference, on the raw input and on
  // the input as base64-looking text.
  check_against_reference(data, size);
  {
    CBB text;
    CBS in;
    vk_fuzz_cbb_init(&text);
    CBS_init(&in, data, size);
    while (CBS_get_u8(&in, &c)) {
      VK_FUZZ_CHECK(CBB_add_u8(&text, to_text(c)));
    }
    check_against_reference(CBB_data(&text), CBB_len(&text));
    CBB_cleanup(&text);
  }

  CBB_cleanup(&enc);
  CBB_cleanup(&dec);
  CBB_cleanup(&raw);
  return 0;
}
