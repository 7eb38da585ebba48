// wire.h: pure, I/O-free helpers for the gRPC wire protocol over HTTP/2
// (grpc/grpc doc/PROTOCOL-HTTP2.md): message framing, grpc-timeout,
// grpc-message percent-encoding, "-bin" metadata base64 and metadata key
// rules. The call layer (call.c, h2.c) feeds them bytes from the network.
//
// Every function here is thread-safe: none keeps state between calls.
//
// Output goes into a caller-owned CBB. When a function fails, the CBB may
// hold partial output (or be unusable after an allocation failure): the
// caller discards it with CBB_cleanup(), as with any failed CBB operation.
#ifndef VK_WIRE_H
#define VK_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/bytestring.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

// --- message framing --------------------------------------------------------

// VK_GRPC_PREFIX_LEN is the size of the prefix before every gRPC message:
// a compressed-flag byte and a big-endian 32-bit length.
#define VK_GRPC_PREFIX_LEN 5

typedef enum {
  VK_PARSE_OK,          // one message was read
  VK_PARSE_INCOMPLETE,  // more bytes are needed; nothing was consumed
  VK_PARSE_ERROR,       // the flag byte is neither 0 nor 1
  VK_PARSE_TOO_BIG,     // the announced length is over the limit
} vk_parse_t;

// vk_grpc_frame_parse reads one length-prefixed message from the front of
// `in`. Returns:
//  - VK_PARSE_OK: *out_compressed is 0 or 1, *out_msg is a view of the
//    message bytes inside `in`'s buffer (valid as long as that buffer), and
//    `in` is advanced past the message.
//  - VK_PARSE_INCOMPLETE: `in` holds only part of a message (maybe none);
//    `in` and the outputs are unchanged. Call again with more bytes.
//  - VK_PARSE_ERROR: the flag byte is over 1; decided as soon as the first
//    byte is there. A protocol error: `in` and the outputs are unchanged.
//  - VK_PARSE_TOO_BIG: the announced length is over `max_len`; decided as
//    soon as the 5-byte prefix is there, before any of the message is, so a
//    4 GiB announcement is refused without buffering it. `in` and the
//    outputs are unchanged. (gRPC answers RESOURCE_EXHAUSTED.)
// The error results are sticky: the same input gives the same result, so
// the caller must end the stream.
vk_parse_t vk_grpc_frame_parse(CBS *in, int *out_compressed, CBS *out_msg,
                               size_t max_len);

// vk_grpc_frame_prefix writes the 5-byte prefix of a message of `len` bytes
// into `out`; `compressed` non-zero sets the compressed flag.
void vk_grpc_frame_prefix(uint8_t out[VK_GRPC_PREFIX_LEN], int compressed,
                          uint32_t len);

// --- grpc-timeout -----------------------------------------------------------

// VK_GRPC_TIMEOUT_MAX_MS (100 days) caps parsed timeouts; larger values
// (up to 99999999 hours on the wire) mean "practically no deadline".
#define VK_GRPC_TIMEOUT_MAX_MS (100ull * 24 * 3600 * 1000)

// vk_grpc_timeout_parse parses a grpc-timeout header value: 1 to 8 ASCII
// digits followed by one unit, H (hours), M (minutes), S (seconds),
// m (milliseconds), u (microseconds) or n (nanoseconds). On success sets
// *out_ms to the timeout in milliseconds, rounding a non-zero sub-millisecond
// part up (so "1n" is 1 ms and "0n" is 0 ms) and clamping to
// VK_GRPC_TIMEOUT_MAX_MS, and returns 0. Returns VK_EINVAL for anything else
// (empty, no digits, over 8 digits, missing or unknown unit, sign, spaces,
// trailing bytes); *out_ms is then unchanged.
int vk_grpc_timeout_parse(uint64_t *out_ms, const uint8_t *s, size_t len);

// VK_GRPC_TIMEOUT_FORMAT_LEN is the buffer size vk_grpc_timeout_format needs.
#define VK_GRPC_TIMEOUT_FORMAT_LEN 16

// vk_grpc_timeout_format writes `ms` as a NUL-terminated grpc-timeout value
// into `out` (at most 9 characters and the NUL). It uses the largest unit
// that is exact within 8 digits ("1500m", "2S", "5M"); a value that no unit
// holds exactly in 8 digits is rounded up to the smallest unit that holds it
// (a deadline may be late, never early), and values over 99999999 hours are
// written as "99999999H".
void vk_grpc_timeout_format(char out[VK_GRPC_TIMEOUT_FORMAT_LEN], uint64_t ms);

// --- grpc-message percent-encoding ------------------------------------------

// vk_percent_encode appends `in` to `out` with every byte outside 0x20..0x7E,
// and '%' itself, written as "%XX" (upper-case hex), the grpc-message
// encoding. UTF-8 text is thus encoded byte by byte. Returns 0, or
// VK_ENOMEM when `out` cannot grow.
int vk_percent_encode(CBB *out, const uint8_t *in, size_t len);

// vk_percent_decode appends the decoding of `in` to `out`. It is lenient, as
// the spec asks of receivers: each "%XX" with two hex digits (either case)
// becomes one byte; a '%' that does not start a valid sequence, and every
// other byte, is copied unchanged. The output may be any bytes (it is not
// checked to be UTF-8). Returns 0, or VK_ENOMEM when `out` cannot grow.
int vk_percent_decode(CBB *out, const uint8_t *in, size_t len);

// --- "-bin" metadata base64 -------------------------------------------------

// vk_base64_encode appends the standard base64 (RFC 4648 section 4, '+' and
// '/') of `in` to `out` without '=' padding, as gRPC sends "-bin" values.
// Returns 0, VK_ETOOBIG when `len` is too large to encode, or VK_ENOMEM when
// `out` cannot grow.
int vk_base64_encode(CBB *out, const uint8_t *in, size_t len);

// vk_base64_decode appends the decoding of the standard base64 `in` to `out`.
// It accepts padded and unpadded input (peers may send either). Returns 0;
// VK_EINVAL for a character outside the alphabet (whitespace included),
// padding anywhere but at the end of a padded 4-character group, or a
// length that is 1 mod 4 (when unpadded); VK_ENOMEM when `out` cannot grow.
// On VK_EINVAL nothing is appended to `out`. Non-zero unused bits in the
// last group ("Zh" for "f") are accepted, as BoringSSL does.
int vk_base64_decode(CBB *out, const uint8_t *in, size_t len);

// --- metadata keys and values -----------------------------------------------

// vk_metadata_key_valid tells whether `key` (`len` bytes, no NUL needed) is a
// valid gRPC metadata key: one or more of [0-9a-z_.-]. Upper case is invalid
// (HTTP/2 header names are lower case), and so are pseudo-headers (":path").
bool vk_metadata_key_valid(const char *key, size_t len);

// vk_metadata_key_is_reserved tells whether `key` is one a handler may not
// set, because the framework or HTTP/2 owns it: pseudo-headers (":..."),
// "grpc-..." keys (grpc-status, grpc-message, grpc-timeout, grpc-encoding,
// ...) except "grpc-status-details-bin" (which a handler sets to send rich
// error details in the trailers), "content-type", "te", "user-agent", and
// the connection-specific headers HTTP/2 forbids (connection, keep-alive,
// proxy-connection, transfer-encoding, upgrade; RFC 9113 section 8.2.2).
// The test is on the exact, lower-case bytes.
bool vk_metadata_key_is_reserved(const char *key, size_t len);

// vk_metadata_key_is_bin tells whether `key` ends in "-bin", so its values
// are binary and travel base64-encoded.
bool vk_metadata_key_is_bin(const char *key, size_t len);

// vk_metadata_value_valid tells whether `value` may be sent as the value of
// an ASCII (non "-bin") metadata key: bytes 0x20..0x7E only (empty is valid).
bool vk_metadata_value_valid(const uint8_t *value, size_t len);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // VK_WIRE_H
