// tls.h: TLS 1.2/1.3 through BoringSSL, with ALPN "h2" only. Connections run
// TLS over memory BIOs (see conn.c), so the loop owns every socket operation.
#ifndef VK_TLS_H
#define VK_TLS_H

#include <openssl/ssl.h>

#ifdef __cplusplus
extern "C" {
#endif

// vk_tls_ctx_new loads a PEM certificate chain and private key and returns a
// server context that negotiates only "h2". Returns NULL (after logging why)
// on an unreadable or mismatched cert/key. Free with SSL_CTX_free.
SSL_CTX *vk_tls_ctx_new(const char *cert_file, const char *key_file);

#ifdef __cplusplus
}
#endif

#endif  // VK_TLS_H
