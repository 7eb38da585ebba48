// compress.c: gzip through zlib, and grpc-accept-encoding (see compress.h).
//
// zlib counts in uInt (32 bits), so input is fed from a CBS in pieces of at
// most UINT_MAX bytes and output space is handed out in bounded chunks
// reserved in the caller's CBB: zlib writes straight into it, no copies.
#define ZLIB_CONST  // next_in is const: we never write through it
#include "compress.h"

#include <limits.h>
#include <string.h>

#include <zlib.h>

// windowBits 15 (32 KiB window) plus 16 selects the gzip wrapper.
#define GZIP_WINDOW_BITS (16 + MAX_WBITS)
// Output space reserved per deflate/inflate call. Small enough that a tiny
// message does not reserve much, large enough to keep calls few.
#define OUT_CHUNK ((size_t)64 * 1024)

static size_t min_size(size_t a, size_t b) {
  return a < b ? a : b;
}

// feed_input gives zlib the next piece of `in` once it used up the last.
static void feed_input(z_stream *zs, CBS *in) {
  CBS piece;
  size_t n;
  if (zs->avail_in != 0 || CBS_len(in) == 0) {
    return;
  }
  n = min_size(CBS_len(in), UINT_MAX);
  if (CBS_get_bytes(in, &piece, n)) {
    zs->next_in = CBS_data(&piece);
    zs->avail_in = (uInt)n;
  }
}

int vk_gzip_compress(CBB *out, const uint8_t *in, size_t len) {
  z_stream zs;
  CBS cbs;
  int rv = 0;

  memset(&zs, 0, sizeof(zs));
  if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, GZIP_WINDOW_BITS, 8,
                   Z_DEFAULT_STRATEGY) != Z_OK) {
    return VK_ENOMEM;  // the only failure with constant, valid arguments
  }
  CBS_init(&cbs, in, len);
  for (;;) {
    uint8_t *dst;
    size_t room;
    int flush;
    int zr;

    feed_input(&zs, &cbs);
    flush = CBS_len(&cbs) == 0 ? Z_FINISH : Z_NO_FLUSH;
    // deflateBound is an upper bound for all the remaining output, so small
    // messages reserve little and most finish in one call.
    room = min_size(deflateBound(&zs, zs.avail_in + CBS_len(&cbs)), OUT_CHUNK);
    if (!CBB_reserve(out, &dst, room)) {
      rv = VK_ENOMEM;
      break;
    }
    zs.next_out = dst;
    zs.avail_out = (uInt)room;
    zr = deflate(&zs, flush);
    if (!CBB_did_write(out, room - zs.avail_out)) {
      rv = VK_ENOMEM;
      break;
    }
    if (zr == Z_STREAM_END) {
      break;
    }
    // Z_BUF_ERROR only means "no progress this time" and the next round
    // brings room or input; anything else is zlib misuse.
    if (zr != Z_OK && zr != Z_BUF_ERROR) {
      rv = zr == Z_MEM_ERROR ? VK_ENOMEM : VK_EINVAL;
      break;
    }
  }
  deflateEnd(&zs);
  return rv;
}

int vk_gzip_decompress(CBB *out, const uint8_t *in, size_t len,
                       size_t max_out) {
  z_stream zs;
  CBS cbs;
  size_t produced = 0;
  int rv;

  memset(&zs, 0, sizeof(zs));
  if (inflateInit2(&zs, GZIP_WINDOW_BITS) != Z_OK) {
    return VK_ENOMEM;
  }
  CBS_init(&cbs, in, len);
  for (;;) {
    uint8_t probe;
    uint8_t *dst;
    size_t room = min_size(max_out - produced, OUT_CHUNK);
    size_t got;
    int zr;

    feed_input(&zs, &cbs);
    if (room > 0) {
      if (!CBB_reserve(out, &dst, room)) {
        rv = VK_ENOMEM;
        break;
      }
    } else {
      // The cap is reached. Inflate into one spare byte: if the stream has
      // any more output it is too big; if it only has its trailer left,
      // this round reaches Z_STREAM_END without output.
      dst = &probe;
      room = 1;
    }
    zs.next_out = dst;
    zs.avail_out = (uInt)room;
    zr = inflate(&zs, Z_NO_FLUSH);
    got = room - zs.avail_out;
    if (dst == &probe) {
      if (got > 0) {
        rv = VK_ETOOBIG;
        break;
      }
    } else {
      if (!CBB_did_write(out, got)) {
        rv = VK_ENOMEM;
        break;
      }
      produced += got;
    }
    if (zr == Z_STREAM_END) {
      // One member only: anything after its trailer is garbage.
      rv = zs.avail_in == 0 && CBS_len(&cbs) == 0 ? 0 : VK_EINVAL;
      break;
    }
    if (zr == Z_OK) {
      continue;
    }
    // Z_BUF_ERROR with room to write means the input ran out before the
    // end of the stream: truncated. Z_DATA_ERROR is a bad header, bad
    // deflate data or a CRC/length mismatch; Z_NEED_DICT cannot happen in
    // gzip but would be corrupt input too.
    rv = zr == Z_MEM_ERROR ? VK_ENOMEM : VK_EINVAL;
    break;
  }
  inflateEnd(&zs);
  return rv;
}

static uint8_t ascii_lower(uint8_t c) {
  return c >= 'A' && c <= 'Z' ? (uint8_t)(c - 'A' + 'a') : c;
}

static bool is_ows(uint8_t c) {
  return c == ' ' || c == '\t';
}

// token_trim sets *out to `token` without the spaces and tabs around it.
static void token_trim(CBS *out, const CBS *token) {
  CBS cbs = *token;
  CBS rest;
  uint8_t c;
  size_t len = 0;  // length up to the last non-OWS byte
  size_t i = 0;

  // Leading OWS.
  for (rest = cbs; CBS_get_u8(&rest, &c) && is_ows(c);) {
    cbs = rest;
  }
  // Trailing OWS: find the end of the last non-OWS byte.
  for (rest = cbs; CBS_get_u8(&rest, &c);) {
    i++;
    if (!is_ows(c)) {
      len = i;
    }
  }
  *out = cbs;
  CBS_get_bytes(&cbs, out, len);  // cannot fail: len <= CBS_len(&cbs)
}

// token_equal tells whether `token` is `enc` (`enc_len` bytes) ignoring case.
static bool token_equal(const CBS *token, const char *enc, size_t enc_len) {
  CBS a = *token;
  CBS b;
  uint8_t ca;
  uint8_t cb;
  if (CBS_len(&a) != enc_len) {
    return false;
  }
  CBS_init(&b, (const uint8_t *)enc, enc_len);
  while (CBS_get_u8(&a, &ca) && CBS_get_u8(&b, &cb)) {
    if (ascii_lower(ca) != ascii_lower(cb)) {
      return false;
    }
  }
  return true;
}

bool vk_accepts_encoding(const uint8_t *hdr, size_t len, const char *enc) {
  size_t enc_len = strlen(enc);
  CBS cbs;
  if (enc_len == 0) {
    return false;
  }
  CBS_init(&cbs, hdr, len);
  for (;;) {
    CBS token;
    CBS trimmed;
    bool last = !CBS_get_until_first(&cbs, &token, ',');
    if (last) {
      token = cbs;
    } else {
      CBS_skip(&cbs, 1);  // the comma
    }
    token_trim(&trimmed, &token);
    if (token_equal(&trimmed, enc, enc_len)) {
      return true;
    }
    if (last) {
      return false;
    }
  }
}
