// tls.c: the server's TLS context. BoringSSL defaults are already modern
// (no SSLv3/RC4/compression); we pin the floor to TLS 1.2 as RFC 9113 §9.2
// requires for HTTP/2 and refuse any ALPN other than h2, since vkey speaks
// gRPC only.
#include "tls.h"

#include <string.h>

#include <openssl/err.h>

#include "common.h"
#include "log.h"

static int select_alpn_cb(SSL *ssl, const uint8_t **out, uint8_t *out_len,
                          const uint8_t *in, unsigned in_len, void *arg) {
  (void)ssl;
  (void)arg;
  CBS protos;
  CBS_init(&protos, in, in_len);
  while (CBS_len(&protos) > 0) {
    CBS proto;
    if (!CBS_get_u8_length_prefixed(&protos, &proto)) {
      return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (CBS_len(&proto) == 2 && memcmp(CBS_data(&proto), "h2", 2) == 0) {
      *out = CBS_data(&proto);
      *out_len = 2;
      return SSL_TLSEXT_ERR_OK;
    }
  }
  // No h2 offered: fail the handshake with no_application_protocol.
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static void log_ssl_error(const char *what, const char *file) {
  char buf[256];
  ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
  VK_ERROR("tls: %s %s: %s", what, file, buf);
}

SSL_CTX *vk_tls_ctx_new(const char *cert_file, const char *key_file) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) {
    return NULL;
  }
  if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
    goto fail;
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
    log_ssl_error("cannot load certificate", cert_file);
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
    log_ssl_error("cannot load private key", key_file);
    goto fail;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    log_ssl_error("key does not match certificate", key_file);
    goto fail;
  }
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn_cb, NULL);
  // Idle connections should not pin 2 x 16 KiB of record buffers.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  return ctx;

fail:
  SSL_CTX_free(ctx);
  return NULL;
}
