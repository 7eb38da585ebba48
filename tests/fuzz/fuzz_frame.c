// fuzz_frame: the gRPC message framer on arbitrary bytes. The first byte
// picks the size limit; the rest is a receive buffer parsed to its end.
// Checks: every OK consumes exactly prefix + message, inside the limit, with
// a prefix that re-encodes to the same bytes; every other result consumes
// nothing and is stable; and feeding the same bytes split in two gives the
// same messages.
#include <string.h>

#include "fuzz.h"
#include "wire.h"

static size_t pick_limit(uint8_t b) {
  switch (b % 4) {
    case 0:
      return b / 4;  // tiny: 0..63
    case 1:
      return (size_t)b * 64;
    case 2:
      return 4u << 20;  // the server's default
    default:
      return SIZE_MAX;
  }
}

// parse_all parses `in` until a result other than OK, which it stores in
// *out_last, and returns the number of messages read.
static size_t parse_all(CBS in, size_t max_len, vk_parse_t *out_last) {
  size_t n = 0;
  for (;;) {
    CBS before = in;
    int compressed = -1;
    CBS msg;
    uint8_t prefix[VK_GRPC_PREFIX_LEN];
    vk_parse_t r = vk_grpc_frame_parse(&in, &compressed, &msg, max_len);
    if (r != VK_PARSE_OK) {
      CBS again = in;
      int c2 = -1;
      CBS m2;
      VK_FUZZ_CHECK(r == VK_PARSE_INCOMPLETE || r == VK_PARSE_ERROR ||
                    r == VK_PARSE_TOO_BIG);
      VK_FUZZ_CHECK(CBS_data(&in) == CBS_data(&before) &&
                    CBS_len(&in) == CBS_len(&before));
      VK_FUZZ_CHECK(compressed == -1);
      VK_FUZZ_CHECK(vk_grpc_frame_parse(&again, &c2, &m2, max_len) == r);
      if (r == VK_PARSE_INCOMPLETE && CBS_len(&in) >= VK_GRPC_PREFIX_LEN) {
        // Incomplete after a whole prefix: the body is not all there.
        CBS p = in;
        uint32_t len;
        VK_FUZZ_CHECK(CBS_skip(&p, 1) && CBS_get_u32(&p, &len));
        VK_FUZZ_CHECK(len <= max_len && CBS_len(&p) < len);
      }
      *out_last = r;
      return n;
    }
    VK_FUZZ_CHECK(compressed == 0 || compressed == 1);
    VK_FUZZ_CHECK(CBS_len(&msg) <= max_len);
    VK_FUZZ_CHECK(CBS_len(&before) - CBS_len(&in) ==
                  VK_GRPC_PREFIX_LEN + CBS_len(&msg));
    VK_FUZZ_CHECK(CBS_data(&msg) == CBS_data(&before) + VK_GRPC_PREFIX_LEN);
    vk_grpc_frame_prefix(prefix, compressed, (uint32_t)CBS_len(&msg));
    VK_FUZZ_CHECK(memcmp(prefix, CBS_data(&before), sizeof(prefix)) == 0);
    n++;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  CBS cbs;
  CBS head;
  uint8_t b;
  size_t max_len;
  size_t n_all;
  size_t n_head;
  vk_parse_t last_all;
  vk_parse_t last_head;

  CBS_init(&cbs, data, size);
  if (!CBS_get_u8(&cbs, &b)) {
    return 0;
  }
  max_len = pick_limit(b);
  n_all = parse_all(cbs, max_len, &last_all);

  // A prefix of the stream yields a prefix of the messages, and never an
  // error the whole stream does not have.
  CBS_init(&head, CBS_data(&cbs), CBS_len(&cbs) / 2);
  n_head = parse_all(head, max_len, &last_head);
  VK_FUZZ_CHECK(n_head <= n_all);
  if (last_head != VK_PARSE_INCOMPLETE) {
    VK_FUZZ_CHECK(n_head == n_all && last_head == last_all);
  }
  return 0;
}
