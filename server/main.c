// main.c: vkeyd. Wires the modules together on --loops libuv loops, one
// thread each (shards): the gRPC server (server.c), Redis (cache/), the
// worker pool, health and reflection; starts the embedded redis-server when
// no --redis is given; and drains every loop gracefully on SIGTERM/SIGINT.
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
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

typedef struct vk_daemon_s vk_daemon_t;

// One event loop and everything its calls touch: its connections, its
// Redis connections, caches, vehicle channels and worker pool. Loops share
// nothing a call reaches but the rate limiters; they meet in Redis, as
// separate vkeyd instances do. Shard 0 runs on the main thread, on the
// default loop beside the signals and the embedded redis-server; the
// others each run a loop of their own in a thread of their own.
typedef struct vk_shard_s {
  vk_daemon_t *daemon;
  unsigned index;
  uv_loop_t *loop;
  uv_loop_t own_loop;  // the loop of shards 1..n-1
  uv_thread_t thread;
  bool thread_started;
  vk_app_t app;
  vk_server_t *server;
  vk_health_t *health;
  vk_reflection_t *reflection;
  vk_worker_pool_t *workers;
  vk_redis_t *redis;
  uv_async_t stop;  // the main thread asks this shard to drain
  // Another loop's Redis connection came or went: health is the
  // instance's, since any loop may be dealt a new connection.
  uv_async_t health_changed;
  bool health_changed_open;  // under the daemon's health_lock
  bool redis_up;
  bool stopping;
  bool released;
} vk_shard_t;

struct vk_daemon_s {
  vk_config_t cfg;
  const char *redis_url;  // --redis, or the embedded server's socket
  vk_redis_child_t *redis_child;
  SSL_CTX *tls;
  // Shared by every loop so a limit is the instance's (ratelimit.h).
  vk_ratelimit_t *vehicle_limit;
  vk_ratelimit_t *caller_limit;
  vk_shard_t *shards;
  unsigned n_shards;
  // Loops whose Redis connection is up; SERVING only when all are.
  atomic_uint loops_up;
  pthread_mutex_t health_lock;  // guards the shards' health_changed_open
  // Shard threads post here when their loop has ended.
  uv_async_t shard_ended;
  atomic_uint threads_ended;
  uv_signal_t sigterm;
  uv_signal_t sigint;
  bool stopping;
  bool finished;
};

static void on_issuer_published(vk_redis_t *r, int status,
                                const redisReply *reply, void *priv) {
  (void)r;
  (void)priv;
  if (status != VK_OK || reply->type == REDIS_REPLY_ERROR) {
    VK_WARN("redis: could not publish the signing key's public half");
  }
}

// On the shard's loop: SERVING while every loop has Redis.
static void update_health(vk_shard_t *sh) {
  vk_daemon_t *d = sh->daemon;
  if (!sh->stopping) {
    vk_health_set_serving(sh->health, "",
                          atomic_load(&d->loops_up) == d->n_shards);
  }
}

static void on_health_changed(uv_async_t *a) {
  update_health(a->data);
}

// Tells every loop that the instance's health may have changed.
static void health_changed(vk_daemon_t *d) {
  pthread_mutex_lock(&d->health_lock);
  for (unsigned i = 0; i < d->n_shards; i++) {
    if (d->shards[i].health_changed_open) {
      uv_async_send(&d->shards[i].health_changed);
    }
  }
  pthread_mutex_unlock(&d->health_lock);
}

static void close_health_changed(vk_shard_t *sh) {
  vk_daemon_t *d = sh->daemon;
  pthread_mutex_lock(&d->health_lock);
  bool open = sh->health_changed_open;
  sh->health_changed_open = false;
  pthread_mutex_unlock(&d->health_lock);
  if (open) {
    uv_close((uv_handle_t *)&sh->health_changed, NULL);
  }
}

static void on_redis_state(vk_redis_t *r, bool connected, void *arg) {
  vk_shard_t *sh = arg;
  vk_daemon_t *d = sh->daemon;
  if (connected != sh->redis_up) {
    sh->redis_up = connected;
    if (connected) {
      atomic_fetch_add(&d->loops_up, 1);
    } else {
      atomic_fetch_sub(&d->loops_up, 1);
    }
    health_changed(d);
  }
  if (connected) {
    VK_INFO("redis: loop %u connected", sh->index);
    // Every instance and every vehicle must be able to check keys signed by
    // any signing key still in use, so the public halves live in Redis.
    const vk_ed25519_key_t *k = &sh->app.signing_key;
    vk_redis_command(r, on_issuer_published, NULL, "HSET %s %s %b",
                     VK_REDIS_ISSUERS, k->key_id, k->public_key,
                     sizeof(k->public_key));
  } else {
    VK_WARN("redis: loop %u lost its connection; reconnecting", sh->index);
  }
}

static void on_redis_child_stopped(void *arg) {
  (void)arg;
  VK_INFO("embedded redis-server stopped");
}

// Closes every handle of the shard; its loop ends once they have closed.
static void release_shard(vk_shard_t *sh) {
  if (sh->released) {
    return;
  }
  sh->released = true;
  vk_server_free(sh->server);
  sh->server = NULL;
  // Services after the server: its teardown cancelled their calls.
  vk_health_free(sh->health);
  sh->health = NULL;
  vk_reflection_free(sh->reflection);
  sh->reflection = NULL;
  vk_worker_pool_close(sh->workers);
  sh->workers = NULL;
  vk_hub_free(sh->app.hub);
  sh->app.hub = NULL;
  vk_redis_free(sh->redis);
  sh->redis = NULL;
  sh->app.redis = NULL;
  sh->app.workers = NULL;
  vk_token_cache_free(sh->app.token_cache);
  sh->app.token_cache = NULL;
  vk_sessions_free(sh->app.sessions);
  sh->app.sessions = NULL;
  vk_verify_cache_free(sh->app.verify_cache);
  sh->app.verify_cache = NULL;
  vk_ed25519_key_cleanse(&sh->app.signing_key);
  close_health_changed(sh);
  if (sh->index > 0 && !uv_is_closing((uv_handle_t *)&sh->stop)) {
    uv_close((uv_handle_t *)&sh->stop, NULL);
  }
}

// On the main thread, once shard 0 is released and every other shard's
// loop has ended: the threads are joined, then what they shared goes.
static void finish(vk_daemon_t *d) {
  unsigned threads = 0;
  for (unsigned i = 1; i < d->n_shards; i++) {
    threads += d->shards[i].thread_started;
  }
  if (d->finished || !d->shards[0].released ||
      atomic_load(&d->threads_ended) < threads) {
    return;
  }
  d->finished = true;
  for (unsigned i = 1; i < d->n_shards; i++) {
    if (d->shards[i].thread_started) {
      uv_thread_join(&d->shards[i].thread);
    }
  }
  vk_ratelimit_free(d->vehicle_limit);
  d->vehicle_limit = NULL;
  vk_ratelimit_free(d->caller_limit);
  d->caller_limit = NULL;
  SSL_CTX_free(d->tls);
  d->tls = NULL;
  // Last: the loops used Redis until they were released.
  if (d->redis_child != NULL) {
    vk_redis_child_stop(d->redis_child, on_redis_child_stopped, d);
    d->redis_child = NULL;
  }
  uv_close((uv_handle_t *)&d->shard_ended, NULL);
  if (!uv_is_closing((uv_handle_t *)&d->sigterm)) {
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
  }
}

static void on_shard_ended(uv_async_t *a) {
  finish(a->data);
}

static void on_drained(vk_server_t *s, void *arg) {
  (void)s;
  vk_shard_t *sh = arg;
  VK_INFO("loop %u drained; shutting down", sh->index);
  release_shard(sh);
  if (sh->index == 0) {
    finish(sh->daemon);
  }
}

// On the shard's own loop.
static void drain_shard(vk_shard_t *sh) {
  if (sh->stopping) {
    return;
  }
  sh->stopping = true;
  // Load balancers watching health stop sending new calls first.
  vk_health_set_serving(sh->health, "", false);
  // Vehicles reconnect to another instance rather than wait out the drain.
  vk_hub_drain(sh->app.hub);
  vk_server_drain(sh->server, sh->daemon->cfg.drain_timeout_ms, on_drained, sh);
}

static void on_stop(uv_async_t *a) {
  drain_shard(a->data);
}

static void on_signal(uv_signal_t *h, int signum) {
  vk_daemon_t *d = h->data;
  if (d->stopping) {
    return;
  }
  d->stopping = true;
  VK_INFO("%s: draining (up to %u ms)", signum == SIGINT ? "SIGINT" : "SIGTERM",
          d->cfg.drain_timeout_ms);
  // Shard 0 first: draining it closes the listeners, after which no
  // connection is dealt to another loop.
  drain_shard(&d->shards[0]);
  for (unsigned i = 1; i < d->n_shards; i++) {
    uv_async_send(&d->shards[i].stop);
  }
}

static int start_redis_child(vk_daemon_t *d) {
  d->redis_url = d->cfg.redis_url;
  if (d->redis_url != NULL) {
    return VK_OK;
  }
  int rv = vk_redis_child_start(&d->redis_child, uv_default_loop(),
                                d->cfg.data_dir, d->cfg.redis_server);
  if (rv != VK_OK) {
    VK_ERROR("cannot start the embedded redis-server in %s: %s",
             d->cfg.data_dir, vk_strerror(rv));
    return rv;
  }
  d->redis_url = vk_redis_child_url(d->redis_child);
  return VK_OK;
}

// The shard's Redis connection, and the pub/sub connections on which its
// vehicle channels hear of new events and its key status cache hears of
// writes to key records.
static int start_shard_redis(vk_shard_t *sh) {
  vk_daemon_t *d = sh->daemon;
  vk_redis_config_t rc = {
      .url = d->redis_url,
      .command_timeout_ms = d->cfg.redis_timeout_ms,
      .on_state = on_redis_state,
      .arg = sh,
  };
  int rv = vk_redis_new(&sh->redis, sh->loop, &rc);
  if (rv != VK_OK) {
    VK_ERROR("bad --redis '%s' (want redis://HOST:PORT or unix:/PATH)",
             d->redis_url);
    return rv;
  }
  sh->app.redis = sh->redis;
  rv = vk_hub_new(&sh->app.hub, &sh->app, d->redis_url);
  if (rv == VK_OK) {
    rv = vk_verify_cache_feed_start(sh->app.verify_cache, sh->loop, sh->redis,
                                    d->redis_url);
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
// tokens we trust, loaded into `app` (shard 0's; the others copy them). In
// the embedded default both live in --data-dir.
static int load_keys(vk_daemon_t *d, vk_app_t *app) {
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
  int rv = vk_ed25519_key_load_or_create(&app->signing_key, signing);
  if (rv != VK_OK) {
    return rv;
  }
  uint8_t *pub = app->trusted_issuers[0];
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
  vk_ed25519_key_id(app->trusted_issuer_ids[0], pub);
  app->n_trusted_issuers = 1;
  VK_INFO("signing key %s; trusting identity issuer %s",
          app->signing_key.key_id, app->trusted_issuer_ids[0]);
  return VK_OK;
}

static int new_rate_limits(vk_daemon_t *d) {
  // Bursts of twice the rate: a vehicle checking several keys at once.
  int rv = vk_ratelimit_new(&d->vehicle_limit, d->cfg.rate_vehicle,
                            2.0 * d->cfg.rate_vehicle, 65536);
  if (rv == VK_OK) {
    rv = vk_ratelimit_new(&d->caller_limit, d->cfg.rate_caller,
                          2.0 * d->cfg.rate_caller, 16384);
  }
  return rv;
}

// The shard's caches. Each loop has its own (no locks on the hot path);
// they are kept true across loops the way they are across instances.
static int new_caches(vk_shard_t *sh) {
  int rv = vk_token_cache_new(&sh->app.token_cache, 65536);
  if (rv == VK_OK) {
    rv = vk_sessions_new(&sh->app.sessions, &sh->app, 65536);
  }
  if (rv == VK_OK) {
    rv = vk_verify_cache_new(&sh->app.verify_cache, 65536, 65536);
  }
  return rv;
}

static int start_services(vk_shard_t *sh) {
  vk_daemon_t *d = sh->daemon;
  int rv = vk_health_new(&sh->health);
  if (rv != VK_OK) {
    return rv;
  }
  // NOT_SERVING until Redis answers.
  vk_health_set_serving(sh->health, "", false);
  rv = vk_reflection_new(&sh->reflection, vk_fds_vkeyd, vk_fds_vkeyd_len);
  if (rv != VK_OK) {
    VK_ERROR("embedded descriptor set does not parse");
    return rv;
  }
  vk_worker_config_t wc = {.threads = d->cfg.workers};
  rv = vk_worker_pool_new(&sh->workers, sh->loop, &wc);
  if (rv != VK_OK) {
    return rv;
  }
  sh->app.workers = sh->workers;
  // The connection limit is the instance's: vk_server_share makes the
  // loops' servers share one budget.
  rv = vk_server_new(&sh->server, sh->loop, &d->cfg.limits);
  if (rv != VK_OK) {
    return rv;
  }
  const vk_service_t *services[] = {
      vk_health_service(sh->health),
      vk_reflection_service_v1(sh->reflection),
      vk_reflection_service_v1alpha(sh->reflection),
      vk_registry_service(&sh->app),
      vk_keys_service(&sh->app),
      vk_vehicle_service(&sh->app),
      vk_verify_service(&sh->app),
      vk_authorization_service(&sh->app),
  };
  for (size_t i = 0; i < VK_ARRAY_LEN(services); i++) {
    if (services[i] == NULL) {
      continue;
    }
    rv = vk_server_add_service(sh->server, services[i]);
    if (rv != VK_OK) {
      return rv;
    }
  }
  return VK_OK;
}

// Everything a shard needs before its loop runs; on the main thread.
static int start_shard(vk_daemon_t *d, unsigned i) {
  vk_shard_t *sh = &d->shards[i];
  sh->daemon = d;
  sh->index = i;
  if (i == 0) {
    sh->loop = uv_default_loop();
    int rv = load_keys(d, &sh->app);
    if (rv != VK_OK) {
      return rv;
    }
  } else {
    if (uv_loop_init(&sh->own_loop) != 0) {
      return VK_ENOMEM;
    }
    sh->loop = &sh->own_loop;
    const vk_app_t *first = &d->shards[0].app;
    sh->app.signing_key = first->signing_key;
    memcpy(sh->app.trusted_issuers, first->trusted_issuers,
           sizeof(first->trusted_issuers));
    memcpy(sh->app.trusted_issuer_ids, first->trusted_issuer_ids,
           sizeof(first->trusted_issuer_ids));
    sh->app.n_trusted_issuers = first->n_trusted_issuers;
    uv_async_init(sh->loop, &sh->stop, on_stop);
    sh->stop.data = sh;
  }
  uv_async_init(sh->loop, &sh->health_changed, on_health_changed);
  sh->health_changed.data = sh;
  sh->health_changed_open = true;
  sh->app.loop = sh->loop;
  sh->app.vehicle_limit = d->vehicle_limit;
  sh->app.caller_limit = d->caller_limit;
  int rv = new_caches(sh);
  if (rv == VK_OK) {
    rv = start_shard_redis(sh);
  }
  if (rv == VK_OK) {
    rv = start_services(sh);
  }
  return rv;
}

static int start_listeners(vk_daemon_t *d) {
  vk_server_t *first = d->shards[0].server;
  vk_server_t *others[VK_CONFIG_MAX_LOOPS];
  for (unsigned i = 1; i < d->n_shards; i++) {
    others[i - 1] = d->shards[i].server;
  }
  int rv = vk_server_share(first, others, d->n_shards - 1);
  if (rv != VK_OK) {
    return rv;
  }
  int port;
  rv = vk_server_listen(first, d->cfg.listen_host, d->cfg.listen_port, NULL,
                        &port);
  if (rv != VK_OK) {
    return rv;
  }
  printf("vkeyd 0.1.0: gRPC over h2c on %s:%d (%u event loop%s)\n",
         d->cfg.listen_host, port, d->n_shards, d->n_shards == 1 ? "" : "s");
  if (d->cfg.tls_port >= 0) {
    d->tls = vk_tls_ctx_new(d->cfg.tls_cert, d->cfg.tls_key);
    if (d->tls == NULL) {
      return VK_EINVAL;
    }
    int tls_port;
    rv = vk_server_listen(first, d->cfg.tls_host, d->cfg.tls_port, d->tls,
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

static void run_shard(void *arg) {
  vk_shard_t *sh = arg;
  char name[16];
  snprintf(name, sizeof(name), "vkeyd-loop%u", sh->index);
  pthread_setname_np(pthread_self(), name);  // for top -H and the bench
  uv_run(sh->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(sh->loop) != 0) {
    VK_ERROR("loop %u: handles left open at exit", sh->index);
  }
  vk_daemon_t *d = sh->daemon;
  atomic_fetch_add(&d->threads_ended, 1);
  uv_async_send(&d->shard_ended);
}

static int start_threads(vk_daemon_t *d) {
  for (unsigned i = 1; i < d->n_shards; i++) {
    vk_shard_t *sh = &d->shards[i];
    if (uv_thread_create(&sh->thread, run_shard, sh) != 0) {
      VK_ERROR("cannot start the thread of event loop %u", i);
      return VK_EIO;
    }
    sh->thread_started = true;
  }
  return VK_OK;
}

// Startup failed: releases what was made. Loops whose thread runs are
// asked to drain; the others are run here until their handles close.
static void abandon(vk_daemon_t *d) {
  d->stopping = true;
  for (unsigned i = 0; i < d->n_shards; i++) {
    vk_shard_t *sh = &d->shards[i];
    if (sh->loop == NULL) {
      continue;
    }
    if (sh->thread_started) {
      uv_async_send(&sh->stop);
      continue;
    }
    sh->stopping = true;
    release_shard(sh);
    if (i > 0) {
      if (!uv_is_closing((uv_handle_t *)&sh->stop)) {
        uv_close((uv_handle_t *)&sh->stop, NULL);
      }
      uv_run(sh->loop, UV_RUN_DEFAULT);
      uv_loop_close(sh->loop);
    }
  }
  finish(d);
}

int main(int argc, char **argv) {
  static vk_daemon_t d;  // its loops' threads use it until main returns
  int rv = vk_config_parse(&d.cfg, argc, argv, stdout, stderr);
  if (rv != VK_OK) {
    return rv == 1 ? 0 : 2;
  }
  vk_log_set_level(d.cfg.log_level);
  // hiredis and our own sockets may write to a peer that went away.
  signal(SIGPIPE, SIG_IGN);
  d.n_shards = d.cfg.loops ? d.cfg.loops : uv_available_parallelism();
  if (d.n_shards > VK_CONFIG_MAX_LOOPS) {
    d.n_shards = VK_CONFIG_MAX_LOOPS;
  }
  d.shards = calloc(d.n_shards, sizeof(*d.shards));
  if (d.shards == NULL) {
    return 1;
  }
  pthread_mutex_init(&d.health_lock, NULL);
  uv_loop_t *main_loop = uv_default_loop();
  uv_signal_init(main_loop, &d.sigterm);
  uv_signal_init(main_loop, &d.sigint);
  uv_async_init(main_loop, &d.shard_ended, on_shard_ended);
  d.sigterm.data = d.sigint.data = d.shard_ended.data = &d;

  int exit_code = 0;
  rv = start_redis_child(&d);
  if (rv == VK_OK) {
    rv = new_rate_limits(&d);
  }
  for (unsigned i = 0; rv == VK_OK && i < d.n_shards; i++) {
    rv = start_shard(&d, i);
  }
  if (rv == VK_OK) {
    rv = start_listeners(&d);
  }
  if (rv == VK_OK) {
    rv = start_threads(&d);
  }
  if (rv != VK_OK) {
    exit_code = 1;
    abandon(&d);
  } else {
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_start(&d.sigint, on_signal, SIGINT);
  }
  uv_run(main_loop, UV_RUN_DEFAULT);
  if (uv_loop_close(main_loop) != 0) {
    VK_ERROR("handles left open at exit");
    exit_code = exit_code ? exit_code : 1;
  }
  free(d.shards);
  pthread_mutex_destroy(&d.health_lock);
  return exit_code;
}
