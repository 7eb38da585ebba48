// wire.c: gRPC wire-format helpers (see wire.h). Every byte from the peer is
// read through a CBS cursor and every output is built through a CBB, so no
// code here indexes a raw buffer (but for the base64 decoder, which writes a
// size it computed first into room it reserved with CBB_reserve).
#include "wire.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <openssl/base64.h>

// --- message framing --------------------------------------------------------

vk_parse_t vk_grpc_frame_parse(CBS *in, int *out_compressed, CBS *out_msg,
                               size_t max_len) {
  // Work on a copy so that every result but OK leaves `in` untouched: the
  // caller just appends more bytes and calls again.
  CBS copy = *in;
  uint8_t flag;
  uint32_t len;
  CBS msg;
  if (!CBS_get_u8(&copy, &flag)) {
    return VK_PARSE_INCOMPLETE;
  }
  // Fail on the flag byte alone: nothing after a bad prefix can be trusted.
  if (flag > 1) {
    return VK_PARSE_ERROR;
  }
  if (!CBS_get_u32(&copy, &len)) {
    return VK_PARSE_INCOMPLETE;
  }
  // The limit is checked before the body is awaited, so the caller never
  // buffers a message it would refuse anyway.
  if (len > max_len) {
    return VK_PARSE_TOO_BIG;
  }
  if (!CBS_get_bytes(&copy, &msg, len)) {
    return VK_PARSE_INCOMPLETE;
  }
  *out_compressed = flag;
  *out_msg = msg;
  *in = copy;
  return VK_PARSE_OK;
}

void vk_grpc_frame_prefix(uint8_t out[VK_GRPC_PREFIX_LEN], int compressed,
                          uint32_t len) {
  CBB cbb;
  // A fixed 5-byte CBB cannot fail to take 5 bytes.
  int ok = CBB_init_fixed(&cbb, out, VK_GRPC_PREFIX_LEN) &&
           CBB_add_u8(&cbb, compressed ? 1 : 0) && CBB_add_u32(&cbb, len);
  assert(ok);
  (void)ok;
  CBB_cleanup(&cbb);  // a fixed CBB owns no memory; this only resets it
}

// --- grpc-timeout -----------------------------------------------------------

// The spec caps the value at 8 digits.
#define TIMEOUT_MAX_DIGITS 8
#define TIMEOUT_MAX_VALUE 99999999u

int vk_grpc_timeout_parse(uint64_t *out_ms, const uint8_t *s, size_t len) {
  CBS cbs;
  CBS digits;
  uint8_t c;
  uint8_t unit;
  uint64_t value = 0;
  uint64_t ms;

  CBS_init(&cbs, s, len);
  if (len < 2 || len > TIMEOUT_MAX_DIGITS + 1 ||
      !CBS_get_bytes(&cbs, &digits, len - 1) || !CBS_get_u8(&cbs, &unit)) {
    return VK_EINVAL;
  }
  // At most 8 digits, so `value` stays under 10^8: no overflow below.
  while (CBS_get_u8(&digits, &c)) {
    if (c < '0' || c > '9') {
      return VK_EINVAL;
    }
    value = value * 10 + (uint64_t)(c - '0');
  }
  switch (unit) {
    case 'H':
      ms = value * 3600000u;
      break;
    case 'M':
      ms = value * 60000u;
      break;
    case 'S':
      ms = value * 1000u;
      break;
    case 'm':
      ms = value;
      break;
    // Sub-millisecond timeouts round up, so a tiny but non-zero timeout
    // still gets 1 ms instead of expiring at once; 0 stays 0.
    case 'u':
      ms = (value + 999u) / 1000u;
      break;
    case 'n':
      ms = (value + 999999u) / 1000000u;
      break;
    default:
      return VK_EINVAL;
  }
  *out_ms = ms > VK_GRPC_TIMEOUT_MAX_MS ? VK_GRPC_TIMEOUT_MAX_MS : ms;
  return 0;
}

typedef struct {
  char unit;
  uint64_t ms;
} timeout_unit_t;

// Largest first.
static const timeout_unit_t kTimeoutUnits[] = {
    {'H', 3600000u},
    {'M', 60000u},
    {'S', 1000u},
    {'m', 1u},
};

static void timeout_write(char out[VK_GRPC_TIMEOUT_FORMAT_LEN], uint64_t value,
                          char unit) {
  snprintf(out, VK_GRPC_TIMEOUT_FORMAT_LEN, "%" PRIu64 "%c", value, unit);
}

void vk_grpc_timeout_format(char out[VK_GRPC_TIMEOUT_FORMAT_LEN], uint64_t ms) {
  size_t i;
  if (ms == 0) {
    timeout_write(out, 0, 'm');
    return;
  }
  // Exact in the largest unit first: short headers, no rounding.
  for (i = 0; i < VK_ARRAY_LEN(kTimeoutUnits); i++) {
    const timeout_unit_t *u = &kTimeoutUnits[i];
    if (ms % u->ms == 0 && ms / u->ms <= TIMEOUT_MAX_VALUE) {
      timeout_write(out, ms / u->ms, u->unit);
      return;
    }
  }
  // Otherwise round up in the finest unit that fits: the peer's deadline may
  // come a little late, never early. (ms % 1 == 0 always, so reaching here
  // means ms > 99999999.)
  for (i = VK_ARRAY_LEN(kTimeoutUnits); i-- > 0;) {
    const timeout_unit_t *u = &kTimeoutUnits[i];
    uint64_t q = ms / u->ms + (ms % u->ms != 0);
    if (q <= TIMEOUT_MAX_VALUE) {
      timeout_write(out, q, u->unit);
      return;
    }
  }
  timeout_write(out, TIMEOUT_MAX_VALUE, 'H');
}

// --- grpc-message percent-encoding ------------------------------------------

static int percent_unreserved(uint8_t c) {
  return c >= 0x20 && c <= 0x7e && c != '%';
}

// hex_value returns the value of hex digit `c`, or -1.
static int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  return -1;
}

int vk_percent_encode(CBB *out, const uint8_t *in, size_t len) {
  static const char kHex[] = "0123456789ABCDEF";
  CBS cbs;
  uint8_t c;
  CBS_init(&cbs, in, len);
  while (CBS_get_u8(&cbs, &c)) {
    int ok;
    if (percent_unreserved(c)) {
      ok = CBB_add_u8(out, c);
    } else {
      ok = CBB_add_u8(out, '%') && CBB_add_u8(out, (uint8_t)kHex[c >> 4]) &&
           CBB_add_u8(out, (uint8_t)kHex[c & 0x0f]);
    }
    if (!ok) {
      return VK_ENOMEM;
    }
  }
  return 0;
}

int vk_percent_decode(CBB *out, const uint8_t *in, size_t len) {
  CBS cbs;
  uint8_t c;
  CBS_init(&cbs, in, len);
  while (CBS_get_u8(&cbs, &c)) {
    if (c == '%') {
      // Look ahead on a copy: a broken sequence ("%", "%4", "%zz") is kept
      // as-is, and its following bytes are then read as ordinary bytes.
      CBS peek = cbs;
      uint8_t hi;
      uint8_t lo;
      if (CBS_get_u8(&peek, &hi) && CBS_get_u8(&peek, &lo) &&
          hex_value(hi) >= 0 && hex_value(lo) >= 0) {
        c = (uint8_t)(hex_value(hi) << 4 | hex_value(lo));
        cbs = peek;
      }
    }
    if (!CBB_add_u8(out, c)) {
      return VK_ENOMEM;
    }
  }
  return 0;
}

// --- "-bin" metadata base64 -------------------------------------------------

int vk_base64_encode(CBB *out, const uint8_t *in, size_t len) {
  size_t max_len;
  size_t n;
  uint8_t *dst;
  // EVP_EncodedLength counts the NUL that EVP_EncodeBlock writes; it is
  // reserved but not kept.
  if (!EVP_EncodedLength(&max_len, len)) {
    return VK_ETOOBIG;
  }
  if (!CBB_reserve(out, &dst, max_len)) {
    return VK_ENOMEM;
  }
  n = EVP_EncodeBlock(dst, in, len);
  // EVP_EncodeBlock always pads to a multiple of 4; drop the '=' (one for
  // a 2-byte tail, two for a 1-byte tail).
  n -= (3 - len % 3) % 3;
  if (!CBB_did_write(out, n)) {
    return VK_ENOMEM;
  }
  return 0;
}

// vk_base64_decode does not use BoringSSL's EVP_DecodeBase64. That one is
// constant-time, because PEM carries private keys: each character goes
// through a dozen masked compares and selects, 6,000 to 8,000 instructions
// (callgrind) for the ~110-character x-vkey-session-bin header that every
// request carries, 12% of the loop thread's work per request; the table
// below takes ~1,800. Metadata values are not secret, so a lookup whose
// timing depends on the data is fine here; do not reuse this decoder for
// key material. tests/fuzz/fuzz_base64_roundtrip.c checks that it accepts,
// refuses and decodes exactly as the EVP_DecodeBase64-based version did.

// kBase64Values maps each byte of the standard alphabet to its 6-bit value,
// and every other byte, '=' included, to 0xff: any value over 63 is bad.
#define XX 0xff
static const uint8_t kBase64Values[256] = {
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,  // 0x00
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,  // 0x10
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, 62, XX, XX, XX, 63,  // 0x20
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, XX, XX, XX, XX, XX, XX,  // 0x30
    XX, 0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14,  // 0x40
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, XX, XX, XX, XX, XX,  // 0x50
    XX, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,  // 0x60
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, XX, XX, XX, XX, XX,  // 0x70
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,  // 0x80
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,  // 0x90
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,  // 0xa0
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,  // 0xb0
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,  // 0xc0
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,  // 0xd0
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,  // 0xe0
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,  // 0xf0
};
#undef XX

int vk_base64_decode(CBB *out, const uint8_t *in, size_t len) {
  CBS cbs;
  CBS head;  // whole 4-character groups, 3 bytes each
  CBS tail;  // the last, partial group without its padding: 0, 2 or 3 chars
  size_t tail_len = len % 4;
  size_t head_len;
  size_t out_len;
  size_t i = 0;
  uint32_t tail_bits = 0;
  uint32_t group;
  uint8_t ch;
  uint8_t *dst;

  if (len == 0) {
    return 0;
  }
  // Unpadded input ends in 2 or 3 characters; 1 is never valid (6 bits
  // are not a byte).
  if (tail_len == 1) {
    return VK_EINVAL;
  }
  CBS_init(&cbs, in, len);
  head_len = len - tail_len;
  if (tail_len == 0) {
    // Padded input ends in "xx==" or "xxx=": its characters before the
    // '=' are the tail. Any other '=' is caught below as a bad character,
    // since padding is not in the table: "x===", "x=x=", "Zg==Zg==".
    CBS end = cbs;
    uint8_t c1;
    uint8_t c2;
    if (!CBS_skip(&end, len - 2) || !CBS_get_u8(&end, &c1) ||
        !CBS_get_u8(&end, &c2)) {
      return VK_EINVAL;  // unreachable: len >= 4
    }
    if (c2 == '=') {
      tail_len = c1 == '=' ? 2 : 3;
      head_len = len - 4;
    }
  }
  if (!CBS_get_bytes(&cbs, &head, head_len) ||
      !CBS_get_bytes(&cbs, &tail, tail_len)) {
    return VK_EINVAL;  // unreachable: head_len + tail_len <= len
  }
  // What is left of `cbs` is the padding, checked above.

  // The tail first: its bits, left-aligned in 24 like a whole group's, give
  // tail_len - 1 bytes. Its unused low bits are dropped unchecked ("Zh" is
  // "f"), as BoringSSL does.
  while (CBS_get_u8(&tail, &ch)) {
    uint8_t v = kBase64Values[ch];
    if (v > 63) {
      return VK_EINVAL;
    }
    tail_bits = tail_bits << 6 | v;
  }
  out_len = CBS_len(&head) / 4 * 3;
  if (tail_len != 0) {
    tail_bits <<= 6 * (4 - tail_len);
    out_len += tail_len - 1;
  }

  // Decode straight into the CBB's spare room, committed only once the
  // whole input has proved valid, so nothing is appended on VK_EINVAL.
  // `dst` takes exactly `out_len` bytes.
  if (!CBB_reserve(out, &dst, out_len)) {
    return VK_ENOMEM;
  }
  // CBS_get_u32 reads a group's 4 characters big-endian: the first is in
  // the top byte.
  while (CBS_get_u32(&head, &group)) {
    uint32_t a = kBase64Values[group >> 24];
    uint32_t b = kBase64Values[(group >> 16) & 0xff];
    uint32_t c = kBase64Values[(group >> 8) & 0xff];
    uint32_t d = kBase64Values[group & 0xff];
    uint32_t bits;
    if ((a | b | c | d) > 63) {
      return VK_EINVAL;
    }
    bits = a << 18 | b << 12 | c << 6 | d;
    dst[i++] = (uint8_t)(bits >> 16);
    dst[i++] = (uint8_t)(bits >> 8);
    dst[i++] = (uint8_t)bits;
  }
  if (tail_len != 0) {
    dst[i++] = (uint8_t)(tail_bits >> 16);
  }
  if (tail_len == 3) {
    dst[i++] = (uint8_t)(tail_bits >> 8);
  }
  assert(i == out_len);
  if (!CBB_did_write(out, out_len)) {
    return VK_ENOMEM;
  }
  return 0;
}

// --- metadata keys and values -----------------------------------------------

static int key_char_valid(uint8_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '_' ||
         c == '.' || c == '-';
}

bool vk_metadata_key_valid(const char *key, size_t len) {
  CBS cbs;
  uint8_t c;
  if (len == 0) {
    return false;
  }
  CBS_init(&cbs, (const uint8_t *)key, len);
  while (CBS_get_u8(&cbs, &c)) {
    if (!key_char_valid(c)) {
      return false;
    }
  }
  return true;
}

// cbs_equal_str tells whether `cbs` holds exactly the bytes of `s`.
static bool cbs_equal_str(const CBS *cbs, const char *s) {
  return CBS_mem_equal(cbs, (const uint8_t *)s, strlen(s));
}

bool vk_metadata_key_is_reserved(const char *key, size_t len) {
  // Keys owned by HTTP/2 or by the framework's own headers.
  static const char *const kReserved[] = {
      "content-type", "te",      "user-agent",       "connection",
      "keep-alive",   "upgrade", "proxy-connection", "transfer-encoding",
  };
  static const char kGrpcPrefix[] = "grpc-";
  CBS cbs;
  CBS peek;
  CBS prefix;
  uint8_t first;
  size_t i;

  CBS_init(&cbs, (const uint8_t *)key, len);
  peek = cbs;
  if (CBS_get_u8(&peek, &first) && first == ':') {
    return true;  // pseudo-headers: HTTP/2's
  }
  peek = cbs;
  if (CBS_get_bytes(&peek, &prefix, sizeof(kGrpcPrefix) - 1) &&
      cbs_equal_str(&prefix, kGrpcPrefix)) {
    // Rich error details (google.rpc.Status) are the handler's to send.
    return !cbs_equal_str(&cbs, "grpc-status-details-bin");
  }
  for (i = 0; i < VK_ARRAY_LEN(kReserved); i++) {
    if (cbs_equal_str(&cbs, kReserved[i])) {
      return true;
    }
  }
  return false;
}

bool vk_metadata_key_is_bin(const char *key, size_t len) {
  static const char kSuffix[] = "-bin";
  CBS cbs;
  CBS suffix;
  CBS_init(&cbs, (const uint8_t *)key, len);
  return len >= sizeof(kSuffix) - 1 &&
         CBS_skip(&cbs, len - (sizeof(kSuffix) - 1)) &&
         CBS_get_bytes(&cbs, &suffix, sizeof(kSuffix) - 1) &&
         cbs_equal_str(&suffix, kSuffix);
}

bool vk_metadata_value_valid(const uint8_t *value, size_t len) {
  CBS cbs;
  uint8_t c;
  CBS_init(&cbs, value, len);
  while (CBS_get_u8(&cbs, &c)) {
    if (c < 0x20 || c > 0x7e) {
      return false;
    }
  }
  return true;
}
