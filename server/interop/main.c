// main.c: vkey-interop-server, the gRPC interop test server on vkey's
// framework: grpc.testing.TestService plus health and reflection (v1 and
// v1alpha), so the official interop clients of other gRPC implementations
// can test the framework.
//
//   vkey-interop-server --port N [--host H] [--tls-cert F --tls-key F]
//                       [--use_tls=true|false] [--log-level L]
//
// Options take "--name value" or "--name=value". The host defaults to
// 127.0.0.1; pass --host 0.0.0.0 to serve other machines. --use_tls is
// accepted for the interop spec's sake: TLS is on exactly when --tls-cert and
// --tls-key are given, and --use_tls must agree.
//
// SIGTERM or SIGINT drains the server (calls in flight get 5 s), frees
// everything and exits 0 once the loop closes cleanly: the integration
// harness checks both the exit code and that ASan found no leak.
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "health.h"
#include "log.h"
#include "reflection.h"
#include "server.h"
#include "test_service.h"
#include "tls.h"

extern const uint8_t vk_fds_interop[];
extern const size_t vk_fds_interop_len;

#define VK_INTEROP_DRAIN_MS 5000u

typedef struct vk__opts_s {
  const char *host;
  int port;  // -1 until given
  const char *tls_cert;
  const char *tls_key;
  bool use_tls;
  bool use_tls_given;
  vk_log_level_t log_level;
} vk__opts_t;

// vk__app_t: everything the server owns. vk__app_cleanup() is safe on any
// partly initialized state, starting from all zeros.
typedef struct vk__app_s {
  uv_loop_t loop;
  uv_signal_t sigterm;
  uv_signal_t sigint;
  bool loop_ready;
  bool sigterm_ready;
  bool sigint_ready;
  bool draining;
  vk_test_service_t *tests;
  vk_health_t *health;
  vk_reflection_t *reflection;
  vk_server_t *server;
} vk__app_t;

static void usage(FILE *out) {
  fprintf(out,
          "usage: vkey-interop-server --port N [--host H]\n"
          "         [--tls-cert FILE --tls-key FILE] [--use_tls=true|false]\n"
          "         [--log-level debug|info|warn|error]\n");
}

static int parse_port(int *out_port, const char *s) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 0 || v > 65535) {
    return VK_EINVAL;
  }
  *out_port = (int)v;
  return 0;
}

// parse_args fills `o` from the command line. Returns 0, or VK_EINVAL after
// printing why.
static int parse_args(vk__opts_t *o, int argc, char **argv) {
  *o = (vk__opts_t){.host = "127.0.0.1", .port = -1, .log_level = VK_LOG_INFO};
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      usage(stdout);
      exit(0);
    }
    if (strncmp(arg, "--", 2) != 0) {
      fprintf(stderr, "unexpected argument: %s\n", arg);
      return VK_EINVAL;
    }
    // "--name=value" or "--name value"
    char name[32];
    const char *value;
    const char *eq = strchr(arg + 2, '=');
    size_t name_len = eq != NULL ? (size_t)(eq - (arg + 2)) : strlen(arg + 2);
    if (name_len >= sizeof(name)) {
      fprintf(stderr, "unknown option: %s\n", arg);
      return VK_EINVAL;
    }
    memcpy(name, arg + 2, name_len);
    name[name_len] = '\0';
    static const char *const known[] = {"port",    "host",    "tls-cert",
                                        "tls-key", "use_tls", "log-level"};
    bool is_known = false;
    for (size_t k = 0; k < VK_ARRAY_LEN(known); k++) {
      is_known = is_known || strcmp(name, known[k]) == 0;
    }
    if (!is_known) {
      fprintf(stderr, "unknown option: --%s\n", name);
      return VK_EINVAL;
    }
    if (eq != NULL) {
      value = eq + 1;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      fprintf(stderr, "option --%s needs a value\n", name);
      return VK_EINVAL;
    }

    if (strcmp(name, "port") == 0) {
      if (parse_port(&o->port, value) != 0) {
        fprintf(stderr, "bad port: %s\n", value);
        return VK_EINVAL;
      }
    } else if (strcmp(name, "host") == 0) {
      o->host = value;
    } else if (strcmp(name, "tls-cert") == 0) {
      o->tls_cert = value;
    } else if (strcmp(name, "tls-key") == 0) {
      o->tls_key = value;
    } else if (strcmp(name, "use_tls") == 0) {
      o->use_tls_given = true;
      if (strcmp(value, "true") == 0) {
        o->use_tls = true;
      } else if (strcmp(value, "false") == 0) {
        o->use_tls = false;
      } else {
        fprintf(stderr, "bad --use_tls: %s\n", value);
        return VK_EINVAL;
      }
    } else {  // log-level
      if (vk_log_parse_level(&o->log_level, value) != 0) {
        fprintf(stderr, "bad log level: %s\n", value);
        return VK_EINVAL;
      }
    }
  }
  if (o->port < 0) {
    fprintf(stderr, "--port is required\n");
    return VK_EINVAL;
  }
  if ((o->tls_cert == NULL) != (o->tls_key == NULL)) {
    fprintf(stderr, "--tls-cert and --tls-key go together\n");
    return VK_EINVAL;
  }
  if (o->use_tls_given && o->use_tls != (o->tls_cert != NULL)) {
    fprintf(stderr, o->use_tls ? "--use_tls=true needs --tls-cert/--tls-key\n"
                               : "--use_tls=false contradicts --tls-cert\n");
    return VK_EINVAL;
  }
  return 0;
}

// on_drained runs once every connection has closed. It only stops the loop:
// the server is freed by main() after uv_run() returns, never from inside
// one of its own callbacks.
static void on_drained(vk_server_t *s, void *arg) {
  vk__app_t *app = arg;
  (void)s;
  VK_INFO("drained");
  uv_stop(&app->loop);
}

static void on_signal(uv_signal_t *handle, int signum) {
  vk__app_t *app = handle->data;
  if (app->draining) {
    VK_INFO("signal %d: already draining", signum);
    return;
  }
  app->draining = true;
  VK_INFO("signal %d: draining for up to %u ms", signum, VK_INTEROP_DRAIN_MS);
  vk_health_set_serving(app->health, "", false);
  vk_health_set_serving(app->health, "grpc.testing.TestService", false);
  vk_server_drain(app->server, VK_INTEROP_DRAIN_MS, on_drained, app);
}

static void walk_cb(uv_handle_t *handle, void *arg) {
  (void)arg;
  VK_ERROR("handle still open: %s%s", uv_handle_type_name(handle->type),
           uv_is_closing(handle) ? " (closing)" : "");
}

// vk__app_cleanup frees everything in reverse order of setup and closes the
// loop. Returns 0, or the uv_loop_close() error when a handle is left open.
static int vk__app_cleanup(vk__app_t *app) {
  if (!app->loop_ready) {
    return 0;
  }
  // A streaming call's timer holds a reference to its call; once the
  // server is drained every call has ended and those timers are already
  // closing, so a few iterations release them before the server goes.
  for (int i = 0; i < 100 && app->tests != NULL &&
                  vk_test_service_open_handles(app->tests) > 0;
       i++) {
    uv_run(&app->loop, UV_RUN_NOWAIT);
  }
  vk_server_free(app->server);
  app->server = NULL;
  if (app->sigterm_ready) {
    uv_close((uv_handle_t *)&app->sigterm, NULL);
  }
  if (app->sigint_ready) {
    uv_close((uv_handle_t *)&app->sigint, NULL);
  }
  uv_run(&app->loop, UV_RUN_DEFAULT);  // the server's close callbacks

  // The services outlive the server that routed to them.
  vk_reflection_free(app->reflection);
  vk_health_free(app->health);
  vk_test_service_free(app->tests);
  uv_run(&app->loop, UV_RUN_DEFAULT);

  int rv = uv_loop_close(&app->loop);
  if (rv != 0) {
    VK_ERROR("loop did not close: %s", uv_strerror(rv));
    uv_walk(&app->loop, walk_cb, NULL);
  }
  return rv;
}

// start_signal watches `signum`; *ready says whether `sig` needs closing.
static int start_signal(vk__app_t *app, uv_signal_t *sig, bool *ready,
                        int signum) {
  int rv = uv_signal_init(&app->loop, sig);
  if (rv != 0) {
    return rv;
  }
  *ready = true;
  sig->data = app;
  return uv_signal_start(sig, on_signal, signum);
}

// vk__app_init builds the server and starts listening. On failure the
// caller runs vk__app_cleanup() on what was built.
static int vk__app_init(vk__app_t *app, const vk__opts_t *o) {
  int rv = uv_loop_init(&app->loop);
  if (rv != 0) {
    VK_ERROR("uv_loop_init: %s", uv_strerror(rv));
    return rv;
  }
  app->loop_ready = true;

  if (vk_test_service_new(&app->tests) != 0 ||
      vk_health_new(&app->health) != 0) {
    VK_ERROR("out of memory");
    return VK_ENOMEM;
  }
  rv = vk_reflection_new(&app->reflection, vk_fds_interop, vk_fds_interop_len);
  if (rv != 0) {
    VK_ERROR("reflection: %s", vk_strerror(rv));
    return rv;
  }

  vk_server_limits_t limits;
  vk_server_limits_default(&limits);
  rv = vk_server_new(&app->server, &app->loop, &limits);
  if (rv != 0) {
    VK_ERROR("server: %s", vk_strerror(rv));
    return rv;
  }
  const vk_service_t *services[] = {
      vk_test_service_get(app->tests),
      vk_health_service(app->health),
      vk_reflection_service_v1(app->reflection),
      vk_reflection_service_v1alpha(app->reflection),
  };
  for (size_t i = 0; i < VK_ARRAY_LEN(services); i++) {
    rv = vk_server_add_service(app->server, services[i]);
    if (rv != 0) {
      VK_ERROR("add service %s: %s", services[i]->name, vk_strerror(rv));
      return rv;
    }
  }
  vk_health_set_serving(app->health, "", true);
  vk_health_set_serving(app->health, "grpc.testing.TestService", true);

  SSL_CTX *tls = NULL;
  bool use_tls = o->tls_cert != NULL;
  if (use_tls) {
    tls = vk_tls_ctx_new(o->tls_cert, o->tls_key);
    if (tls == NULL) {
      return VK_EINVAL;  // vk_tls_ctx_new logged why
    }
  }
  int port = 0;
  rv = vk_server_listen(app->server, o->host, o->port, tls, &port);
  SSL_CTX_free(tls);  // the listener holds its own reference
  if (rv != 0) {
    VK_ERROR("cannot listen on %s:%d: %s", o->host, o->port, vk_strerror(rv));
    return rv;
  }

  rv = start_signal(app, &app->sigterm, &app->sigterm_ready, SIGTERM);
  if (rv == 0) {
    rv = start_signal(app, &app->sigint, &app->sigint_ready, SIGINT);
  }
  if (rv != 0) {
    VK_ERROR("signals: %s", uv_strerror(rv));
    return rv;
  }
  VK_INFO("vkey-interop-server listening on %s:%d (%s)", o->host, port,
          use_tls ? "TLS" : "h2c");
  return 0;
}

int main(int argc, char **argv) {
  vk__opts_t opts;
  if (parse_args(&opts, argc, argv) != 0) {
    usage(stderr);
    return 2;
  }
  vk_log_set_level(opts.log_level);
  // A peer that resets mid-write must cost an EPIPE, not the process.
  signal(SIGPIPE, SIG_IGN);

  vk__app_t app;
  memset(&app, 0, sizeof(app));
  int rv = vk__app_init(&app, &opts);
  if (rv == 0) {
    uv_run(&app.loop, UV_RUN_DEFAULT);  // until on_drained stops it
  }
  int close_rv = vk__app_cleanup(&app);
  if (rv != 0 || close_rv != 0) {
    return 1;
  }
  VK_INFO("exiting");
  return 0;
}
