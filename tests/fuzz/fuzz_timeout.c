// fuzz_timeout: grpc-timeout parsing of arbitrary bytes against a simple
// oracle, and format/parse round trips of arbitrary millisecond values.
#include <string.h>

#include "fuzz.h"
#include "wire.h"

// oracle_parse is the spec read literally, and written differently from
// wire.c (indexing, a unit table): returns 1 and sets *out_ms when `s` is a
// valid grpc-timeout, else 0.
static int oracle_parse(const uint8_t *s, size_t len, uint64_t *out_ms) {
  static const char kUnits[] = "HMSmun";
  static const uint64_t kNum[] = {3600000, 60000, 1000, 1, 1, 1};
  static const uint64_t kDen[] = {1, 1, 1, 1, 1000, 1000000};
  uint64_t v = 0;
  size_t i;
  const char *u;
  if (len < 2 || len > 9 || s[len - 1] == 0) {
    return 0;
  }
  for (i = 0; i + 1 < len; i++) {
    if (s[i] < '0' || s[i] > '9') {
      return 0;
    }
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  u = strchr(kUnits, s[len - 1]);
  if (u == NULL) {
    return 0;
  }
  i = (size_t)(u - kUnits);
  v = (v * kNum[i] + kDen[i] - 1) / kDen[i];
  *out_ms = v < VK_GRPC_TIMEOUT_MAX_MS ? v : VK_GRPC_TIMEOUT_MAX_MS;
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint64_t got = 0xdeadbeef;
  uint64_t want = 0;
  int rv = vk_grpc_timeout_parse(&got, data, size);
  int ok = oracle_parse(data, size, &want);
  char text[VK_GRPC_TIMEOUT_FORMAT_LEN];
  uint64_t ms = 0;
  uint64_t back = 0;
  CBS cbs;
  size_t i;

  VK_FUZZ_CHECK(rv == 0 || rv == VK_EINVAL);
  VK_FUZZ_CHECK((rv == 0) == ok);
  VK_FUZZ_CHECK(rv == 0 ? got == want : got == 0xdeadbeef);

  // The first 8 bytes as a millisecond value (fewer bytes: a small value).
  CBS_init(&cbs, data, size);
  for (i = 0; i < 8; i++) {
    uint8_t b;
    if (!CBS_get_u8(&cbs, &b)) {
      break;
    }
    ms = ms << 8 | b;
  }
  vk_grpc_timeout_format(text, ms);
  VK_FUZZ_CHECK(strlen(text) >= 2 && strlen(text) <= 9);
  VK_FUZZ_CHECK(
      vk_grpc_timeout_parse(&back, (const uint8_t *)text, strlen(text)) == 0);
  if (ms <= 99999999) {
    VK_FUZZ_CHECK(back == ms);
  } else if (ms <= VK_GRPC_TIMEOUT_MAX_MS) {
    VK_FUZZ_CHECK(back >= ms && back - ms < 60000);  // late, never early
  } else {
    VK_FUZZ_CHECK(back == VK_GRPC_TIMEOUT_MAX_MS);
  }
  return 0;
}
