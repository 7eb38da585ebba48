// main.c: vkeyd. Wires the modules together on one libuv loop: the gRPC
// server (server.c), Redis (cache/), the worker pool, health and reflection;
// starts the embedded redis-server when no --redis is given; and drains
// gracefully on SIGTERM/SIGINT.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>

#include "app.h"
#include "authorization.h"
#include "config.h"
#include "crypto.h"
#include "embedded.h"
#include "health.h"
#include "hub.h"
#include "identity.h"
#include "keys.h"
#include "log.h"
#include "redis.h"
#include "ratelimit.h"
#include "reflection.h"
#include "registry.h"
#include "server.h"
#include "session.h"
#include "store.h"
#include "tls.h"
#include "vehicle.h"
#include "verify.h"
#include "verify_cache.h"
#include "worker.h"

extern const uint8_t vk_fds_vkeyd[];
extern const size_t vk_fds_vkeyd_len;

typedef struct vk_daemon_s {
  uv_loop_t *loop;
  vk_config_t cfg;
  vk_app_t app;
  vk_server_t *server;
  vk_health_t *health;
  vk_reflection_t *reflection;
  vk_worker_pool_t *workers;
  vk_redis_t *redis;
  vk_redis_child_t *redis_child;
  SSL_CTX *tls;
  uv_signal_t sigterm;
  uv_signal_t sigint;
  bool stopping;
} vk_daemon_t;

static void on_issuer_published(vk_redis_t *r, int status,
                                const redisReply *reply, void *priv) {
  (void)r;
  (void)priv;
  if (status != VK_OK || reply->type == REDIS_REPLY_ERROR) {
    VK_WARN("redis: could not publish the signing key's public half");
  }
}

static void on_redis_state(vk_redis_t *r, bool connected, void *arg) {
  vk_daemon_t *d = arg;
  if (connected) {
    VK_INFO("redis: connected");
    // Every instance and every vehicle must be able to check keys signed by
    // any signing key still in use, so the public halves live in Redis.
    const vk_ed25519_key_t *k = &d->app.signing_key;
    vk_redis_command(r, on_issuer_published, NULL, "HSET %s %s %b",
                     VK_REDIS_ISSUERS, k->key_id, k->public_key,
                     sizeof(k->public_key));
  } else {
    VK_WARN("redis: connection lost; reconnecting");
  }
  if (!d->stopping) {
    vk_health_set_serving(d->health, "", connected);
  }
}

static void on_redis_child_stopped(void *arg) {
  (void)arg;
  VK_INFO("embedded redis-server stopped");
}

static void release_all(vk_daemon_t *d) {
  vk_server_free(d->server);
  d->server = NULL;
  // Services after the server: its teardown cancelled their calls.
  vk_health_free(d->health);
  d->health = NULL;
  vk_reflection_free(d->reflection);
  d->reflection = NULL;
  vk_worker_pool_close(d->workers);
  d->workers = NULL;
  vk_hub_free(d->app.hub);
  d->app.hub = NULL;
  vk_redis_free(d->redis);
  d->redis = NULL;
  d->app.redis = NULL;
  d->app.workers = NULL;
  vk_token_cache_free(d->app.token_cache);
  d->app.token_cache = NULL;
  vk_sessions_free(d->app.sessions);
  d->app.sessions = NULL;
  vk_verify_cache_free(d->app.verify_cache);
  d->app.verify_cache = NULL;
  vk_ratelimit_free(d->app.vehicle_limit);
  d->app.vehicle_limit = NULL;
  vk_ratelimit_free(d->app.caller_limit);
  d->app.caller_limit = NULL;
  vk_ed25519_key_cleanse(&d->app.signing_key);
  SSL_CTX_free(d->tls);
  d->tls = NULL;
  if (d->redis_child != NULL) {
    vk_redis_child_stop(d->redis_child, on_redis_child_stopped, d);
    d->redis_child = NULL;
  }
  if (!uv_is_closing((uv_handle_t *)&d->sigterm)) {
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
  }
}

static void on_drained(vk_server_t *s, void *arg) {
  (void)s;
  vk_daemon_t *d = arg;
  VK_INFO("drained; shutting down");
  release_all(d);
}

static void on_signal(uv_signal_t *h, int signum) {
  vk_daemon_t *d = h->data;
  if (d->stopping) {
    return;
  }
  d->stopping = true;
  VK_INFO("%s: draining (up to %u ms)", signum == SIGINT ? "SIGINT" : "SIGTERM",
          d->cfg.drain_timeout_ms);
  // Load balancers watching health stop sending new calls first.
  vk_health_set_serving(d->health, "", false);
  // Vehicles reconnect to another instance rather than wait out the drain.
  vk_hub_drain(d->app.hub);
  vk_server_drain(d->server, d->cfg.drain_timeout_ms, on_drained, d);
}

static int start_redis(vk_daemon_t *d) {
  const char *url = d->cfg.redis_url;
  if (url == NULL) {
    int rv = vk_redis_child_start(&d->redis_child, d->loop, d->cfg.data_dir,
                                  d->cfg.redis_server);
    if (rv != VK_OK) {
      VK_ERROR("cannot start the embedded redis-server in %s: %s",
               d->cfg.data_dir, vk_strerror(rv));
      return rv;
    }
    url = vk_redis_child_url(d->redis_child);
  }
  vk_redis_config_t rc = {
      .url = url,
      .command_timeout_ms = d->cfg.redis_timeout_ms,
      .on_state = on_redis_state,
      .arg = d,
  };
  int rv = vk_redis_new(&d->redis, d->loop, &rc);
  if (rv != VK_OK) {
    VK_ERROR("bad --redis '%s' (want redis://HOST:PORT or unix:/PATH)", url);
    return rv;
  }
  // Vehicle channels hear of new events on a pub/sub connection of their own,
  // and so does the key status cache of writes to key records.
  d->app.loop = d->loop;
  rv = vk_hub_new(&d->app.hub, &d->app, url);
  if (rv == VK_OK) {
    rv =
        vk_verify_cache_feed_start(d->app.verify_cache, d->loop, d->redis, url);
  }
  return rv;
}

static int read_hex_public_key(uint8_t out[32], const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    VK_ERROR("cannot read %s: %s", path, strerror(errno));
    return VK_EIO;
  }
  char text[80] = {0};
  size_t n = fread(text, 1, sizeof(text) - 1, f);
  fclose(f);
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r')) {
    n--;
  }
  if (n != 64) {
    VK_ERROR("%s: want 64 hex digits (an Ed25519 public key)", path);
    return VK_EINVAL;
  }
  for (size_t i = 0; i < 32; i++) {
    unsigned v;
    if (sscanf(text + 2 * i, "%2x", &v) != 1) {
      VK_ERROR("%s: not hex", path);
      return VK_EINVAL;
    }
    out[i] = (uint8_t)v;
  }
  return VK_OK;
}

// The keys: the one that signs virtual keys, and the identity issuer whose
// tokens we trust. In the embedded default both live in --data-dir.
static int load_keys(vk_daemon_t *d) {
  char path[4096];
  if (mkdir(d->cfg.data_dir, 0700) != 0 && errno != EEXIST) {
    VK_ERROR("cannot create %s: %s", d->cfg.data_dir, strerror(errno));
    return VK_EIO;
  }
  const char *signing = d->cfg.signing_key;
  if (signing == NULL) {
    snprintf(path, sizeof(path), "%s/signing.key", d->cfg.data_dir);
    signing = path;
  }
  int rv = vk_ed25519_key_load_or_create(&d->app.signing_key, signing);
  if (rv != VK_OK) {
    return rv;
  }
  uint8_t *pub = d->app.trusted_issuers[0];
  if (d->cfg.identity_pub != NULL) {
    rv = read_hex_public_key(pub, d->cfg.identity_pub);
  } else {
    vk_ed25519_key_t issuer;
    snprintf(path, sizeof(path), "%s/identity-issuer.key", d->cfg.data_dir);
    rv = vk_ed25519_key_load_or_create(&issuer, path);
    memcpy(pub, issuer.public_key, 32);
    vk_ed25519_key_cleanse(&issuer);
  }
  if (rv != VK_OK) {
    return rv;
  }
  vk_ed25519_key_id(d->app.trusted_issuer_ids[0], pub);
  d->app.n_trusted_issuers = 1;
  VK_INFO("signing key %s; trusting identity issuer %s",
          d->app.signing_key.key_id, d->app.trusted_issuer_ids[0]);
  rv = vk_token_cache_new(&d->app.token_cache, 65536);
  if (rv == VK_OK) {
    rv = vk_sessions_new(&d->app.sessions, &d->app, 65536);
  }
  if (rv == VK_OK) {
    rv = vk_verify_cache_new(&d->app.verify_cache, 65536, 65536);
  }
  // Bursts of twice the rate: a vehicle checking several keys at once.
  if (rv == VK_OK) {
    rv = vk_ratelimit_new(&d->app.vehicle_limit, d->cfg.rate_vehicle,
                          2.0 * d->cfg.rate_vehicle, 65536);
  }
  if (rv == VK_OK) {
    rv = vk_ratelimit_new(&d->app.caller_limit, d->cfg.rate_caller,
                          2.0 * d->cfg.rate_caller, 16384);
  }
  return rv;
}

static int start_services(vk_daemon_t *d) {
  int rv = vk_health_new(&d->health);
  if (rv != VK_OK) {
    return rv;
  }
  // NOT_SERVING until Redis answers.
  vk_health_set_serving(d->health, "", false);
  rv = vk_reflection_new(&d->reflection, vk_fds_vkeyd, vk_fds_vkeyd_len);
  if (rv != VK_OK) {
    VK_ERROR("embedded descriptor set does not parse");
    return rv;
  }
  vk_worker_config_t wc = {.threads = d->cfg.workers};
  rv = vk_worker_pool_new(&d->workers, d->loop, &wc);
  if (rv != VK_OK) {
    return rv;
  }
  d->app.loop = d->loop;
  d->app.workers = d->workers;
  d->app.redis = d->redis;
  rv = vk_server_new(&d->server, d->loop, &d->cfg.limits);
  if (rv != VK_OK) {
    return rv;
  }
  const vk_service_t *services[] = {
      vk_health_service(d->health),
      vk_reflection_service_v1(d->reflection),
      vk_reflection_service_v1alpha(d->reflection),
      vk_registry_service(&d->app),
      vk_keys_service(&d->app),
      vk_vehicle_service(&d->app),
      vk_verify_service(&d->app),
      vk_authorization_service(&d->app),
  };
  for (size_t i = 0; i < VK_ARRAY_LEN(services); i++) {
    if (services[i] == NULL) {
      continue;
    }
    rv = vk_server_add_service(d->server, services[i]);
    if (rv != VK_OK) {
      return rv;
    }
  }
  return VK_OK;
}

static int start_listeners(vk_daemon_t *d) {
  int port;
  int rv = vk_server_listen(d->server, d->cfg.listen_host, d->cfg.listen_port,
                            NULL, &port);
  if (rv != VK_OK) {
    return rv;
  }
  printf("vkeyd 0.1.0: gRPC over h2c on %s:%d\n", d->cfg.listen_host, port);
  if (d->cfg.tls_port >= 0) {
    d->tls = vk_tls_ctx_new(d->cfg.tls_cert, d->cfg.tls_key);
    if (d->tls == NULL) {
      return VK_EINVAL;
    }
    int tls_port;
    rv = vk_server_listen(d->server, d->cfg.tls_host, d->cfg.tls_port, d->tls,
                          &tls_port);
    if (rv != VK_OK) {
      return rv;
    }
    printf("vkeyd 0.1.0: gRPC over TLS (ALPN h2) on %s:%d, cert %s\n",
           d->cfg.tls_host, tls_port, d->cfg.tls_cert);
  }
  if (d->cfg.redis_url != NULL) {
    printf("redis: %s\n", d->cfg.redis_url);
  } else {
    printf("redis: embedded redis-server, data in %s (append-only)\n",
           d->cfg.data_dir);
  }
  printf(
      "Call it with any gRPC client (it serves reflection, so no .proto is\n"
      "needed), or with vkeyctl, for example:\n"
      "  ./deploy/vkeyctl --server %s:%d health\n"
      "  ./deploy/vkeyctl --server %s:%d call grpc.health.v1.Health/Check "
      "'{}'\n"
      "The README's quickstart walks through a key's whole life.\n"
      "Stop with Ctrl-C or SIGTERM: in-flight calls finish first.\n",
      d->cfg.listen_host, port, d->cfg.listen_host, port);
  fflush(stdout);
  return VK_OK;
}

int main(int argc, char **argv) {
  vk_daemon_t d;
  memset(&d, 0, sizeof(d));
  int rv = vk_config_parse(&d.cfg, argc, argv, stdout, stderr);
  if (rv != VK_OK) {
    return rv == 1 ? 0 : 2;
  }
  vk_log_set_level(d.cfg.log_level);
  // hiredis and our own sockets may write to a peer that went away.
  signal(SIGPIPE, SIG_IGN);
  d.loop = uv_default_loop();
  uv_signal_init(d.loop, &d.sigterm);
  uv_signal_init(d.loop, &d.sigint);
  d.sigterm.data = d.sigint.data = &d;

  int exit_code = 0;
  if (load_keys(&d) != VK_OK || start_redis(&d) != VK_OK ||
      start_services(&d) != VK_OK || start_listeners(&d) != VK_OK) {
    exit_code = 1;
    d.stopping = true;
    release_all(&d);
  } else {
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_start(&d.sigint, on_signal, SIGINT);
  }
  uv_run(d.loop, UV_RUN_DEFAULT);
  if (uv_loop_close(d.loop) != 0) {
    VK_ERROR("handles left open at exit");
    exit_code = exit_code ? exit_code : 1;
  }
  return exit_code;
}
