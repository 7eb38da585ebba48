// config.h: vkeyd's command line. Every limit the server enforces has a flag.
#ifndef VK_CONFIG_H
#define VK_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"
#include "server.h"

#ifdef __cplusplus
extern "C" {
#endif

// --loops is at most this.
#define VK_CONFIG_MAX_LOOPS 64u

typedef struct vk_config_s {
  char listen_host[256];  // h2c listener
  int listen_port;
  char tls_host[256];  // TLS listener, when tls_port >= 0
  int tls_port;
  const char *tls_cert;
  const char *tls_key;
  const char *redis_url;     // NULL: start the embedded redis-server
  const char *data_dir;      // the embedded Redis's home
  const char *redis_server;  // the redis-server binary for the embedded mode
  const char *signing_key;   // key-signing seed file; NULL: DATA/signing.key
  // A trusted identity issuer's public key (hex file); NULL: vkeyd is its
  // own development issuer with DATA/identity-issuer.key.
  const char *identity_pub;
  unsigned workers;  // per event loop; 0: one per CPU
  unsigned loops;    // event loop threads; 0: one per CPU
  uint32_t drain_timeout_ms;
  uint32_t redis_timeout_ms;
  vk_log_level_t log_level;
  uint32_t rate_vehicle;  // verifications per second per vehicle; 0: off
  uint32_t rate_caller;   // verifications per second per caller; 0: off
  vk_server_limits_t limits;
} vk_config_t;

// vk_config_parse fills `out` from argv. Returns 0 to run; 1 when --help or
// --version printed to `info` and the program should exit 0; VK_EINVAL after
// printing a one-line reason to `err`. Strings point into argv.
int vk_config_parse(vk_config_t *out, int argc, char **argv, FILE *info,
                    FILE *err);

// vk_parse_host_port splits "HOST:PORT" or "[V6]:PORT". Returns 0 or
// VK_EINVAL (no port, port out of 0..65535, host too long).
int vk_parse_host_port(const char *s, char *out_host, size_t host_len,
                       int *out_port);

#ifdef __cplusplus
}
#endif

#endif  // VK_CONFIG_H
