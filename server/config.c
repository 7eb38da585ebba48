// config.c: command-line parsing with getopt_long. Numbers are parsed with
// strtoull and range-checked; anything odd is refused with a reason rather
// than silently clamped.
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

enum {
  OPT_LISTEN = 256,
  OPT_TLS_LISTEN,
  OPT_TLS_CERT,
  OPT_TLS_KEY,
  OPT_REDIS,
  OPT_DATA_DIR,
  OPT_REDIS_SERVER,
  OPT_WORKERS,
  OPT_LOOPS,
  OPT_MAX_STREAMS,
  OPT_MAX_HEADER_LIST,
  OPT_MAX_MESSAGE,
  OPT_MAX_CONNECTIONS,
  OPT_IDLE_TIMEOUT,
  OPT_DRAIN_TIMEOUT,
  OPT_REDIS_TIMEOUT,
  OPT_SEND_QUEUE,
  OPT_LOG_LEVEL,
  OPT_SIGNING_KEY,
  OPT_RATE_VEHICLE,
  OPT_RATE_CALLER,
  OPT_IDENTITY_PUB,
  OPT_HELP,
  OPT_VERSION,
};

static const struct option kOptions[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"tls-listen", required_argument, NULL, OPT_TLS_LISTEN},
    {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
    {"tls-key", required_argument, NULL, OPT_TLS_KEY},
    {"redis", required_argument, NULL, OPT_REDIS},
    {"data-dir", required_argument, NULL, OPT_DATA_DIR},
    {"redis-server", required_argument, NULL, OPT_REDIS_SERVER},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"loops", required_argument, NULL, OPT_LOOPS},
    {"max-streams", required_argument, NULL, OPT_MAX_STREAMS},
    {"max-header-list", required_argument, NULL, OPT_MAX_HEADER_LIST},
    {"max-message", required_argument, NULL, OPT_MAX_MESSAGE},
    {"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"drain-timeout", required_argument, NULL, OPT_DRAIN_TIMEOUT},
    {"redis-timeout", required_argument, NULL, OPT_REDIS_TIMEOUT},
    {"send-queue", required_argument, NULL, OPT_SEND_QUEUE},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"signing-key", required_argument, NULL, OPT_SIGNING_KEY},
    {"rate-vehicle", required_argument, NULL, OPT_RATE_VEHICLE},
    {"rate-caller", required_argument, NULL, OPT_RATE_CALLER},
    {"identity-issuer-pub", required_argument, NULL, OPT_IDENTITY_PUB},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static void usage(FILE *f) {
  fputs(
      "usage: vkeyd [options]\n"
      "\n"
      "vkey's gRPC server (HTTP/2, h2c and TLS). With no --redis it starts\n"
      "its own redis-server in --data-dir and stops it on exit.\n"
      "\n"
      "  --listen HOST:PORT       h2c (cleartext HTTP/2) address\n"
      "                           [127.0.0.1:50051]\n"
      "  --tls-listen HOST:PORT   also serve TLS (ALPN h2) here; needs\n"
      "                           --tls-cert and --tls-key\n"
      "  --tls-cert FILE          PEM certificate chain\n"
      "  --tls-key FILE           PEM private key\n"
      "  --redis URL              redis://HOST:PORT or unix:/PATH\n"
      "                           [embedded redis-server]\n"
      "  --data-dir DIR           embedded Redis data (AOF) [./vkey-data]\n"
      "  --redis-server PATH      redis-server binary [redis-server]\n"
      "  --redis-timeout MS       per-command Redis deadline [2000]\n"
      "  --signing-key FILE       seed of the key that signs virtual keys,\n"
      "                           made if missing [DATA/signing.key]\n"
      "  --identity-issuer-pub FILE\n"
      "                           public key (hex) of the identity issuer\n"
      "                           whose tokens to accept [vkeyd is its own\n"
      "                           development issuer: "
      "DATA/identity-issuer.key]\n"
      "  --workers N              signature worker threads of each event\n"
      "                           loop [CPUs]\n"
      "  --loops N                event loop threads; connections are\n"
      "                           dealt to them in turn [CPUs]\n"
      "  --rate-vehicle N         verifications per second per vehicle,\n"
      "                           per instance; 0 turns it off [100]\n"
      "  --rate-caller N          verifications per second per caller\n"
      "                           (vehicle or service), per instance [100000]\n"
      "  --max-streams N          concurrent streams per connection [100]\n"
      "  --max-header-list BYTES  request metadata per call [16384]\n"
      "  --max-message BYTES      one gRPC message [4194304]\n"
      "  --max-connections N      open connections, all loops together\n"
      "                           [18000]\n"
      "  --idle-timeout MS        close connections idle this long [300000]\n"
      "  --send-queue BYTES       per-call unsent response bytes [262144]\n"
      "  --drain-timeout MS       grace for in-flight calls on SIGTERM "
      "[5000]\n"
      "  --log-level LEVEL        debug, info, warn, error [info]\n"
      "  --help                   this text\n"
      "  --version                the version\n",
      f);
}

int vk_parse_host_port(const char *s, char *out_host, size_t host_len,
                       int *out_port) {
  const char *colon = strrchr(s, ':');
  if (colon == NULL || colon == s) {
    return VK_EINVAL;
  }
  const char *host = s;
  size_t len = (size_t)(colon - s);
  if (host[0] == '[') {
    if (len < 2 || host[len - 1] != ']') {
      return VK_EINVAL;
    }
    host++;
    len -= 2;
  }
  if (len == 0 || len >= host_len) {
    return VK_EINVAL;
  }
  char *end;
  errno = 0;
  unsigned long port = strtoul(colon + 1, &end, 10);
  if (errno != 0 || end == colon + 1 || *end != '\0' || port > 65535) {
    return VK_EINVAL;
  }
  memcpy(out_host, host, len);
  out_host[len] = '\0';
  *out_port = (int)port;
  return VK_OK;
}

static int parse_u32(uint32_t *out, const char *s, uint32_t min, uint32_t max) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min ||
      v > max) {
    return VK_EINVAL;
  }
  *out = (uint32_t)v;
  return VK_OK;
}

static void defaults(vk_config_t *c) {
  memset(c, 0, sizeof(*c));
  strcpy(c->listen_host, "127.0.0.1");
  c->listen_port = 50051;
  c->tls_port = -1;
  c->data_dir = "./vkey-data";
  c->redis_server = "redis-server";
  c->drain_timeout_ms = 5000;
  c->redis_timeout_ms = 2000;
  c->log_level = VK_LOG_INFO;
  c->rate_vehicle = 100;
  c->rate_caller = 100000;
  vk_server_limits_default(&c->limits);
}

// A numeric option: its field and range.
typedef struct {
  int opt;
  const char *name;
  uint32_t min, max;
} num_opt_t;

static const num_opt_t kNumOpts[] = {
    {OPT_WORKERS, "--workers", 0, 256},
    {OPT_LOOPS, "--loops", 0, VK_CONFIG_MAX_LOOPS},
    {OPT_MAX_STREAMS, "--max-streams", 1, 1u << 20},
    {OPT_MAX_HEADER_LIST, "--max-header-list", 1024, 1u << 20},
    {OPT_MAX_MESSAGE, "--max-message", 64, 64u << 20},
    {OPT_MAX_CONNECTIONS, "--max-connections", 1, 1u << 20},
    {OPT_IDLE_TIMEOUT, "--idle-timeout", 0, UINT32_MAX},
    {OPT_DRAIN_TIMEOUT, "--drain-timeout", 0, 3600u * 1000},
    {OPT_REDIS_TIMEOUT, "--redis-timeout", 10, 3600u * 1000},
    {OPT_SEND_QUEUE, "--send-queue", 1024, 1u << 30},
    {OPT_RATE_VEHICLE, "--rate-vehicle", 0, 10000000},
    {OPT_RATE_CALLER, "--rate-caller", 0, 100000000},
};

static uint32_t *num_field(vk_config_t *c, int opt) {
  switch (opt) {
    case OPT_WORKERS:
      return &c->workers;
    case OPT_LOOPS:
      return &c->loops;
    case OPT_MAX_STREAMS:
      return &c->limits.max_concurrent_streams;
    case OPT_MAX_HEADER_LIST:
      return &c->limits.max_header_list_size;
    case OPT_MAX_MESSAGE:
      return &c->limits.max_message_size;
    case OPT_MAX_CONNECTIONS:
      return &c->limits.max_connections;
    case OPT_IDLE_TIMEOUT:
      return &c->limits.idle_timeout_ms;
    case OPT_DRAIN_TIMEOUT:
      return &c->drain_timeout_ms;
    case OPT_REDIS_TIMEOUT:
      return &c->redis_timeout_ms;
    case OPT_SEND_QUEUE:
      return &c->limits.send_queue_bytes;
    case OPT_RATE_VEHICLE:
      return &c->rate_vehicle;
    case OPT_RATE_CALLER:
      return &c->rate_caller;
    default:
      return NULL;
  }
}

static int parse_num_opt(vk_config_t *c, int opt, const char *arg, FILE *err) {
  for (size_t i = 0; i < VK_ARRAY_LEN(kNumOpts); i++) {
    if (kNumOpts[i].opt == opt) {
      if (parse_u32(num_field(c, opt), arg, kNumOpts[i].min, kNumOpts[i].max) !=
          VK_OK) {
        fprintf(err, "vkeyd: %s wants a number in %u..%u, not '%s'\n",
                kNumOpts[i].name, kNumOpts[i].min, kNumOpts[i].max, arg);
        return VK_EINVAL;
      }
      return VK_OK;
    }
  }
  return VK_EINVAL;
}

int vk_config_parse(vk_config_t *out, int argc, char **argv, FILE *info,
                    FILE *err) {
  defaults(out);
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "", kOptions, NULL)) != -1) {
    switch (opt) {
      case OPT_LISTEN:
      case OPT_TLS_LISTEN: {
        bool tls = opt == OPT_TLS_LISTEN;
        if (vk_parse_host_port(optarg, tls ? out->tls_host : out->listen_host,
                               sizeof(out->listen_host),
                               tls ? &out->tls_port : &out->listen_port) !=
            VK_OK) {
          fprintf(err, "vkeyd: %s wants HOST:PORT, not '%s'\n",
                  tls ? "--tls-listen" : "--listen", optarg);
          return VK_EINVAL;
        }
        break;
      }
      case OPT_TLS_CERT:
        out->tls_cert = optarg;
        break;
      case OPT_TLS_KEY:
        out->tls_key = optarg;
        break;
      case OPT_REDIS:
        out->redis_url = optarg;
        break;
      case OPT_DATA_DIR:
        out->data_dir = optarg;
        break;
      case OPT_REDIS_SERVER:
        out->redis_server = optarg;
        break;
      case OPT_SIGNING_KEY:
        out->signing_key = optarg;
        break;
      case OPT_IDENTITY_PUB:
        out->identity_pub = optarg;
        break;
      case OPT_LOG_LEVEL:
        if (vk_log_parse_level(&out->log_level, optarg) != VK_OK) {
          fprintf(err, "vkeyd: --log-level wants debug, info, warn or error\n");
          return VK_EINVAL;
        }
        break;
      case OPT_HELP:
        usage(info);
        return 1;
      case OPT_VERSION:
        fprintf(info, "vkeyd 0.1.0\n");
        return 1;
      case '?':
        fprintf(err, "vkeyd: unknown or incomplete option '%s' (try --help)\n",
                argv[optind - 1]);
        return VK_EINVAL;
      default:
        if (parse_num_opt(out, opt, optarg, err) != VK_OK) {
          return VK_EINVAL;
        }
        break;
    }
  }
  if (optind < argc) {
    fprintf(err, "vkeyd: unexpected argument '%s' (try --help)\n",
            argv[optind]);
    return VK_EINVAL;
  }
  if (out->tls_port >= 0 && (out->tls_cert == NULL || out->tls_key == NULL)) {
    fprintf(err, "vkeyd: --tls-listen needs --tls-cert and --tls-key\n");
    return VK_EINVAL;
  }
  if ((out->tls_cert != NULL || out->tls_key != NULL) && out->tls_port < 0) {
    fprintf(err, "vkeyd: --tls-cert/--tls-key need --tls-listen\n");
    return VK_EINVAL;
  }
  return VK_OK;
}
