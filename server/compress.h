// compress.h: gzip message compression for gRPC ("grpc-encoding: gzip",
// RFC 1952 through zlib) and the grpc-accept-encoding list. Pure and
// I/O-free; every function is thread-safe.
//
// As in wire.h, output goes into a caller-owned CBB; on failure the CBB may
// hold partial output and the caller discards it with CBB_cleanup().
#ifndef VK_COMPRESS_H
#define VK_COMPRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/bytestring.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

// vk_gzip_compress appends the gzip (RFC 1952) compression of `in` to `out`,
// at zlib's default level. An empty `in` gives a valid, 20-byte gzip stream.
// Returns 0, or VK_ENOMEM when zlib or `out` cannot allocate.
int vk_gzip_compress(CBB *out, const uint8_t *in, size_t len);

// vk_gzip_decompress appends the decompression of the gzip stream `in` to
// `out`, producing at most `max_out` bytes. `out` grows only as output is
// produced and by no more than `max_out` bytes of content, so a small bomb
// cannot make it allocate more (the CBB may round its capacity up as it
// grows; pass a CBB_init_fixed buffer of `max_out` bytes for a hard bound).
// zlib itself uses about 40 KiB while running. Returns:
//  - 0: `in` is exactly one complete gzip member, CRC and length checked;
//  - VK_ETOOBIG: the output would be over `max_out` bytes;
//  - VK_EINVAL: `in` is empty, corrupt, truncated, or has bytes after the
//    member (concatenated members are refused too: gRPC senders emit one);
//  - VK_ENOMEM: zlib or `out` could not allocate.
int vk_gzip_decompress(CBB *out, const uint8_t *in, size_t len, size_t max_out);

// vk_accepts_encoding tells whether the grpc-accept-encoding header value
// `hdr` (`len` bytes, e.g. "identity, deflate,gzip") lists the encoding
// `enc` (a NUL-terminated token such as "gzip"). The list is comma-separated,
// with optional spaces and tabs around each token; tokens compare
// case-insensitively. An empty `enc` is never listed.
bool vk_accepts_encoding(const uint8_t *hdr, size_t len, const char *enc);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // VK_COMPRESS_H
