// args.c: a small table-driven parser. getopt_long is not used because its
// state is global (optind), which makes parsing many command lines in one
// test process fragile; this one is a pure function of argv.
#include "args.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef enum {
  OPT_CONNECTIONS,
  OPT_STREAMS,
  OPT_DURATION,
  OPT_REQUESTS,
  OPT_RATE,
  OPT_WARMUP,
  OPT_SCENARIO,
  OPT_SERVER_PID,
  OPT_JSON,
  OPT_QUIET,
  OPT_HELP,
  OPT_DUMP_REQUEST,
  OPT_HEALTH_SERVICE,
  OPT_DATA_DIR,
  OPT_VEHICLES,
  OPT_SEED,
  OPT_SIGNERS,
  OPT_RING,
  OPT_PREBUILD,
  OPT_COLD_KEYS,
  OPT_SOURCES,
  OPT_PUSH,
  OPT_PUSH_RATE,
  OPT_HOLD,
  OPT_REDIS,
  OPT_REDIS_PID,
} opt_id_t;

typedef struct {
  char short_name;  // 0: long only
  const char *long_name;
  int has_arg;
  opt_id_t id;
} opt_t;

static const opt_t kOpts[] = {
    {'c', "connections", 1, OPT_CONNECTIONS},
    {'m', "streams", 1, OPT_STREAMS},
    {'d', "duration", 1, OPT_DURATION},
    {'n', "requests", 1, OPT_REQUESTS},
    {'r', "rate", 1, OPT_RATE},
    {'w', "warmup", 1, OPT_WARMUP},
    {'s', "scenario", 1, OPT_SCENARIO},
    {0, "server-pid", 1, OPT_SERVER_PID},
    {0, "json", 0, OPT_JSON},
    {'q', "quiet", 0, OPT_QUIET},
    {'h', "help", 0, OPT_HELP},
    {0, "dump-request", 1, OPT_DUMP_REQUEST},
    {0, "health-service", 1, OPT_HEALTH_SERVICE},
    {0, "data-dir", 1, OPT_DATA_DIR},
    {0, "vehicles", 1, OPT_VEHICLES},
    {0, "seed", 1, OPT_SEED},
    {0, "signers", 1, OPT_SIGNERS},
    {0, "ring", 1, OPT_RING},
    {0, "prebuild", 1, OPT_PREBUILD},
    {0, "cold-keys", 1, OPT_COLD_KEYS},
    {0, "sources", 1, OPT_SOURCES},
    {0, "push", 1, OPT_PUSH},
    {0, "push-rate", 1, OPT_PUSH_RATE},
    {0, "hold", 1, OPT_HOLD},
    {0, "redis", 1, OPT_REDIS},
    {0, "redis-pid", 1, OPT_REDIS_PID},
};

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...) {
  if (errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return VK_EINVAL;
}

// parse_u64 accepts plain decimal digits only: strtoull alone would take
// "-1" (as 2^64-1), leading blanks and "0x10".
static int parse_u64(uint64_t *out, const char *s) {
  if (*s == '\0') {
    return VK_EINVAL;
  }
  for (const char *p = s; *p != '\0'; p++) {
    if (!isdigit((unsigned char)*p)) {
      return VK_EINVAL;
    }
  }
  errno = 0;
  unsigned long long v = strtoull(s, NULL, 10);
  if (errno == ERANGE) {
    return VK_EINVAL;
  }
  *out = (uint64_t)v;
  return VK_OK;
}

// parse_double accepts a finite decimal number, sign included so that the
// caller can say "must be > 0" rather than "not a number".
static int parse_double(double *out, const char *s) {
  if (*s == '\0' || isspace((unsigned char)*s)) {
    return VK_EINVAL;
  }
  for (const char *p = s; *p != '\0'; p++) {
    if (!isdigit((unsigned char)*p) && *p != '.' && *p != '-' && *p != '+' &&
        *p != 'e' && *p != 'E') {
      return VK_EINVAL;  // refuses "inf", "nan" and hex floats
    }
  }
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (*end != '\0' || errno == ERANGE || !isfinite(v)) {
    return VK_EINVAL;
  }
  *out = v;
  return VK_OK;
}

static int parse_target(vk_bench_config_t *cfg, char *err, size_t errlen,
                        const char *arg) {
  const char *s = arg;
  if (strncmp(s, "https://", 8) == 0) {
    return fail(err, errlen,
                "target '%s': TLS is not supported, vkey-bench speaks h2c "
                "(use http:// or HOST:PORT)",
                arg);
  }
  if (strncmp(s, "http://", 7) == 0) {
    s += 7;
  }
  size_t len = strlen(s);
  if (len > 0 && s[len - 1] == '/') {
    len--;  // "http://host:port/" is common in h2load commands
  }
  const char *host = s;
  size_t host_len;
  const char *port;
  if (len > 0 && s[0] == '[') {
    const char *close = memchr(s, ']', len);
    if (close == NULL || close + 1 >= s + len || close[1] != ':') {
      return fail(err, errlen, "target '%s': expected [IPV6]:PORT", arg);
    }
    host = s + 1;
    host_len = (size_t)(close - host);
    port = close + 2;
  } else {
    const char *colon = NULL;
    for (size_t i = 0; i < len; i++) {
      if (s[i] == ':') {
        if (colon != NULL) {
          return fail(err, errlen,
                      "target '%s': write IPv6 addresses as [ADDR]:PORT", arg);
        }
        colon = s + i;
      }
    }
    if (colon == NULL) {
      return fail(err, errlen, "target '%s': expected HOST:PORT", arg);
    }
    host_len = (size_t)(colon - s);
    port = colon + 1;
  }
  size_t port_len = (size_t)(s + len - port);
  if (host_len == 0 || host_len >= sizeof(cfg->host)) {
    return fail(err, errlen, "target '%s': bad host", arg);
  }
  char port_str[8];
  uint64_t port_num = 0;
  if (port_len == 0 || port_len >= sizeof(port_str)) {
    return fail(err, errlen, "target '%s': bad port", arg);
  }
  memcpy(port_str, port, port_len);
  port_str[port_len] = '\0';
  if (parse_u64(&port_num, port_str) != VK_OK || port_num < 1 ||
      port_num > 65535) {
    return fail(err, errlen, "target '%s': port must be 1..65535", arg);
  }
  memcpy(cfg->host, host, host_len);
  cfg->host[host_len] = '\0';
  snprintf(cfg->port, sizeof(cfg->port), "%u", (unsigned)port_num);
  // The authority keeps the brackets of an IPv6 literal (RFC 3986).
  snprintf(cfg->authority, sizeof(cfg->authority), "%.*s", (int)len, s);
  if (s[0] != '[') {
    snprintf(cfg->authority, sizeof(cfg->authority), "%s:%s", cfg->host,
             cfg->port);
  }
  return VK_OK;
}

static const opt_t *find_long(const char *name, size_t len) {
  for (size_t i = 0; i < VK_ARRAY_LEN(kOpts); i++) {
    if (strlen(kOpts[i].long_name) == len &&
        strncmp(kOpts[i].long_name, name, len) == 0) {
      return &kOpts[i];
    }
  }
  return NULL;
}

static const opt_t *find_short(char c) {
  for (size_t i = 0; i < VK_ARRAY_LEN(kOpts); i++) {
    if (kOpts[i].short_name == c) {
      return &kOpts[i];
    }
  }
  return NULL;
}

typedef struct {
  int seen_streams;
  int seen_connections;
  int seen_duration;
  int seen_requests;
  int seen_rate;
  const char *scenario;
  const char *target;
} parse_state_t;

// The integer options of the signed scenarios, each with its range.
static int apply_count(vk_bench_config_t *cfg, char *err, size_t errlen,
                       const opt_t *o, const char *val) {
  static const struct {
    opt_id_t id;
    uint64_t min, max;
  } kRanges[] = {
      {OPT_VEHICLES, 1, VK_BENCH_MAX_VEHICLES},
      {OPT_SEED, 0, 99999999},
      {OPT_SIGNERS, 1, VK_BENCH_MAX_SIGNERS},
      {OPT_RING, 16, 1u << 20},
      {OPT_PREBUILD, 1, 2000000},
      {OPT_COLD_KEYS, 1, 10000000},
      {OPT_SOURCES, 1, 250},
      {OPT_PUSH, 0, VK_BENCH_MAX_VEHICLES},
  };
  uint64_t u = 0;
  for (size_t i = 0; i < VK_ARRAY_LEN(kRanges); i++) {
    if (kRanges[i].id != o->id) {
      continue;
    }
    if (parse_u64(&u, val) != VK_OK || u < kRanges[i].min ||
        u > kRanges[i].max) {
      return fail(err, errlen, "--%s must be %llu..%llu, got '%s'",
                  o->long_name, (unsigned long long)kRanges[i].min,
                  (unsigned long long)kRanges[i].max, val);
    }
  }
  uint32_t v = (uint32_t)u;
  vk_bench_params_t *p = &cfg->params;
  switch (o->id) {
    case OPT_VEHICLES:
      p->vehicles = v;
      break;
    case OPT_SEED:
      p->seed = v;
      break;
    case OPT_SIGNERS:
      p->signers = v;
      break;
    case OPT_RING:
      p->ring = v;
      break;
    case OPT_PREBUILD:
      p->prebuild = v;
      break;
    case OPT_COLD_KEYS:
      p->cold_keys = v;
      break;
    case OPT_SOURCES:
      p->sources = v;
      break;
    default:
      p->push = v;
      break;
  }
  return VK_OK;
}

static int apply(vk_bench_config_t *cfg, parse_state_t *st, char *err,
                 size_t errlen, const opt_t *o, const char *val) {
  uint64_t u = 0;
  double d = 0;
  switch (o->id) {
    case OPT_CONNECTIONS:
      if (parse_u64(&u, val) != VK_OK || u < 1 ||
          u > VK_BENCH_MAX_CONNECTIONS) {
        return fail(err, errlen, "-c/--connections must be 1..%u, got '%s'",
                    VK_BENCH_MAX_CONNECTIONS, val);
      }
      cfg->connections = (uint32_t)u;
      st->seen_connections = 1;
      return VK_OK;
    case OPT_STREAMS:
      if (parse_u64(&u, val) != VK_OK || u < 1 || u > VK_BENCH_MAX_STREAMS) {
        return fail(err, errlen, "-m/--streams must be 1..%u, got '%s'",
                    VK_BENCH_MAX_STREAMS, val);
      }
      cfg->streams = (uint32_t)u;
      st->seen_streams = 1;
      return VK_OK;
    case OPT_DURATION:
      if (parse_double(&d, val) != VK_OK || d <= 0 ||
          d > VK_BENCH_MAX_SECONDS) {
        return fail(err, errlen,
                    "-d/--duration must be seconds in (0, %.0f], got '%s'",
                    VK_BENCH_MAX_SECONDS, val);
      }
      cfg->duration_s = d;
      st->seen_duration = 1;
      return VK_OK;
    case OPT_REQUESTS:
      if (parse_u64(&u, val) != VK_OK || u < 1) {
        return fail(err, errlen, "-n/--requests must be >= 1, got '%s'", val);
      }
      cfg->requests = u;
      st->seen_requests = 1;
      return VK_OK;
    case OPT_RATE:
      if (parse_double(&d, val) != VK_OK) {
        return fail(err, errlen, "--rate: '%s' is not a number", val);
      }
      if (d <= 0 || d > VK_BENCH_MAX_RATE) {
        return fail(err, errlen,
                    "--rate must be > 0 and <= %.0f requests/s, got '%s' "
                    "(omit --rate for a closed-loop run)",
                    VK_BENCH_MAX_RATE, val);
      }
      cfg->rate = d;
      st->seen_rate = 1;
      return VK_OK;
    case OPT_WARMUP:
      if (parse_double(&d, val) != VK_OK || d < 0 || d > VK_BENCH_MAX_SECONDS) {
        return fail(err, errlen,
                    "--warmup must be seconds in [0, %.0f], got '%s'",
                    VK_BENCH_MAX_SECONDS, val);
      }
      cfg->warmup_s = d;
      return VK_OK;
    case OPT_SCENARIO:
      st->scenario = val;
      return VK_OK;
    case OPT_SERVER_PID:
    case OPT_REDIS_PID:
      if (parse_u64(&u, val) != VK_OK || u < 1 || u > INT32_MAX) {
        return fail(err, errlen, "--%s must be a process id, got '%s'",
                    o->long_name, val);
      }
      if (o->id == OPT_SERVER_PID) {
        cfg->server_pid = (int64_t)u;
      } else {
        cfg->redis_pid = (int64_t)u;
      }
      return VK_OK;
    case OPT_JSON:
      cfg->json = 1;
      return VK_OK;
    case OPT_QUIET:
      cfg->quiet = 1;
      return VK_OK;
    case OPT_HELP:
      cfg->help = 1;
      return VK_OK;
    case OPT_DUMP_REQUEST:
      if (*val == '\0') {
        return fail(err, errlen, "--dump-request needs a file name");
      }
      cfg->dump_request = val;
      return VK_OK;
    case OPT_HEALTH_SERVICE:
      cfg->params.health_service = val;
      return VK_OK;
    case OPT_DATA_DIR:
      if (*val == '\0') {
        return fail(err, errlen, "--data-dir needs a directory");
      }
      cfg->params.data_dir = val;
      return VK_OK;
    case OPT_REDIS:
      if (*val == '\0') {
        return fail(err, errlen, "--redis needs a unix socket or HOST:PORT");
      }
      cfg->params.redis = val;
      return VK_OK;
    case OPT_VEHICLES:
    case OPT_SEED:
    case OPT_SIGNERS:
    case OPT_RING:
    case OPT_PREBUILD:
    case OPT_COLD_KEYS:
    case OPT_SOURCES:
    case OPT_PUSH:
      return apply_count(cfg, err, errlen, o, val);
    case OPT_PUSH_RATE:
    case OPT_HOLD:
      if (parse_double(&d, val) != VK_OK || d < 0 || d > VK_BENCH_MAX_SECONDS ||
          (o->id == OPT_PUSH_RATE && d <= 0)) {
        return fail(err, errlen, "--%s: bad value '%s'", o->long_name, val);
      }
      if (o->id == OPT_PUSH_RATE) {
        cfg->params.push_rate = d;
      } else {
        cfg->params.hold_s = d;
      }
      return VK_OK;
  }
  return fail(err, errlen, "internal: unhandled option");
}

int vk_bench_args_parse(vk_bench_config_t *cfg, char *err, size_t errlen,
                        int argc, char **argv) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->connections = 8;
  cfg->streams = 32;
  cfg->warmup_s = 1;
  cfg->params.health_service = "";
  cfg->params.vehicles = 1024;
  cfg->params.seed = 1;
  cfg->params.signers = 1;
  cfg->params.ring = 16384;
  cfg->params.cold_keys = 50000;
  cfg->params.sources = 16;
  cfg->params.push = 200;
  cfg->params.push_rate = 100;
  cfg->params.hold_s = 2;
  if (errlen > 0) {
    err[0] = '\0';
  }
  parse_state_t st = {0};
  int only_positional = 0;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const opt_t *o = NULL;
    const char *val = NULL;
    if (only_positional || arg[0] != '-' || arg[1] == '\0') {
      if (st.target != NULL) {
        return fail(err, errlen, "unexpected argument '%s': one target only",
                    arg);
      }
      st.target = arg;
      continue;
    }
    if (strcmp(arg, "--") == 0) {
      only_positional = 1;
      continue;
    }
    if (arg[1] == '-') {
      const char *name = arg + 2;
      const char *eq = strchr(name, '=');
      size_t name_len = eq != NULL ? (size_t)(eq - name) : strlen(name);
      o = find_long(name, name_len);
      if (o == NULL) {
        return fail(err, errlen, "unknown option '%.*s'", (int)(name_len + 2),
                    arg);
      }
      if (eq != NULL) {
        if (!o->has_arg) {
          return fail(err, errlen, "option '--%s' takes no value",
                      o->long_name);
        }
        val = eq + 1;
      }
    } else {
      o = find_short(arg[1]);
      if (o == NULL) {
        return fail(err, errlen, "unknown option '-%c'", arg[1]);
      }
      if (arg[2] != '\0') {
        if (!o->has_arg) {
          return fail(err, errlen, "option '-%c' takes no value", arg[1]);
        }
        val = arg + 2;  // "-c8"
      }
    }
    if (o->has_arg && val == NULL) {
      if (i + 1 >= argc) {
        return fail(err, errlen, "option '--%s' needs a value", o->long_name);
      }
      val = argv[++i];
    }
    int rv = apply(cfg, &st, err, errlen, o, val);
    if (rv != VK_OK) {
      return rv;
    }
  }
  if (cfg->help) {
    return VK_OK;
  }
  if (st.seen_duration && st.seen_requests) {
    return fail(err, errlen, "give -d/--duration or -n/--requests, not both");
  }
  if (!st.seen_duration && !st.seen_requests) {
    cfg->duration_s = 10;
  }
  const char *name = st.scenario != NULL ? st.scenario : "health";
  cfg->scenario = vk_bench_scenario_find(name);
  if (cfg->scenario == NULL) {
    return fail(err, errlen, "unknown scenario '%s' (see --help)", name);
  }
  if (!cfg->scenario->available) {
    return fail(err, errlen, "scenario '%s' is not yet available: %s", name,
                cfg->scenario->missing);
  }
  const vk_bench_scenario_t *sc = cfg->scenario;
  if (sc->workload != VK_BENCH_WORK_POOL) {
    if (cfg->dump_request != NULL) {
      return fail(err, errlen,
                  "--dump-request: scenario '%s' signs each request afresh; "
                  "there is no fixed request to dump",
                  name);
    }
    if (cfg->params.data_dir == NULL) {
      return fail(err, errlen,
                  "scenario '%s' needs --data-dir (vkeyd's, for its "
                  "identity-issuer.key)",
                  name);
    }
  }
  if (cfg->params.prebuild > 0 && (sc->workload == VK_BENCH_WORK_POOL ||
                                   sc->kind == VK_BENCH_KIND_CONNECT)) {
    return fail(err, errlen,
                "--prebuild: scenario '%s' has no signed requests to build "
                "ahead",
                name);
  }
  if (sc->kind == VK_BENCH_KIND_CONNECT) {
    // -m is vehicles per connection here: one each unless told.
    if (!st.seen_streams) {
      cfg->streams = 1;
    }
    uint64_t conns =
        ((uint64_t)cfg->params.vehicles + cfg->streams - 1) / cfg->streams;
    if (conns > VK_BENCH_MAX_CONNECTIONS) {
      return fail(err, errlen,
                  "--vehicles %u with -m %u needs %llu connections; at most "
                  "%u fit the open-file limit (raise -m)",
                  cfg->params.vehicles, cfg->streams, (unsigned long long)conns,
                  VK_BENCH_MAX_CONNECTIONS);
    }
    cfg->connections = (uint32_t)conns;
  }
  if (st.target == NULL) {
    if (cfg->dump_request != NULL) {
      return VK_OK;  // dumping the request needs no server
    }
    return fail(err, errlen, "missing target HOST:PORT (see --help)");
  }
  return parse_target(cfg, err, errlen, st.target);
}

void vk_bench_usage(FILE *out) {
  fputs(
      "usage: vkey-bench [options] HOST:PORT\n"
      "       vkey-bench --dump-request FILE [-s SCENARIO]\n"
      "\n"
      "Drives a gRPC server over cleartext HTTP/2 (h2c, prior knowledge) and\n"
      "reports throughput, latency percentiles, errors by gRPC status and,\n"
      "with --server-pid, the server's CPU time and memory.\n"
      "\n"
      "  -c, --connections N   HTTP/2 connections (default 8)\n"
      "  -m, --streams N       concurrent streams per connection "
      "(default 32)\n"
      "  -d, --duration S      measured seconds (default 10)\n"
      "  -n, --requests N      measure N requests instead of -d\n"
      "  -r, --rate R          open loop: R requests/s in all, latency from\n"
      "                        each request's intended send time; without\n"
      "                        it the run is closed loop (c*m in flight)\n"
      "  -w, --warmup S        seconds run first and not counted (default 1)\n"
      "  -s, --scenario NAME   what to send (default health), see below\n"
      "      --server-pid PID  report the server's CPU seconds, CPU per\n"
      "                        request and RSS over the measured window\n"
      "      --redis-pid PID   the same for redis-server (default: the pid in\n"
      "                        DATA-DIR/redis.pid, vkeyd's embedded Redis)\n"
      "      --json            print one JSON object on stdout\n"
      "  -q, --quiet           no progress line on stderr\n"
      "      --dump-request F  write the scenario's framed request body to F\n"
      "                        and exit (for h2load -d F)\n"
      "      --health-service S  HealthCheckRequest.service (default \"\")\n"
      "\n"
      "Signed scenarios (verify*, check, connect) provision a fleet through\n"
      "vkeyd's public API first, then sign requests in their own threads:\n"
      "      --data-dir DIR    vkeyd's data directory (identity-issuer.key)\n"
      "      --vehicles N      vehicles (default 1024)\n"
      "      --seed N          names the fleet: VINs, keys, request ids\n"
      "                        (default 1; re-runs reuse what exists)\n"
      "      --signers N       signing threads (default 1)\n"
      "      --ring N          requests kept ready per signer (default "
      "16384)\n"
      "      --prebuild N      build N requests in all before the run and "
      "none\n"
      "                        in it (the phones' signatures are not the\n"
      "                        server's work); the window ends early if they\n"
      "                        run out\n"
      "      --cold-keys N     verify-cold: keys made for the run, each used\n"
      "                        once (default 50000)\n"
      "connect (-m is vehicles per connection, default 1; -c is derived):\n"
      "      --sources N       127.0.0.x source addresses (default 16)\n"
      "      --push N          vehicles sent one key event (default 200)\n"
      "      --push-rate R     those events per second (default 100)\n"
      "      --hold S          seconds to hold the channels at the end\n"
      "                        (default 2)\n"
      "      --redis ADDR      Redis for INFO memory: unix socket path or\n"
      "                        HOST:PORT (default DATA-DIR/redis.sock)\n"
      "  -h, --help            this text\n"
      "\n"
      "Scenarios:\n",
      out);
  for (size_t i = 0; i < vk_bench_nscenarios; i++) {
    const vk_bench_scenario_t *sc = &vk_bench_scenarios[i];
    fprintf(out, "  %-12s %s%s\n", sc->name, sc->summary,
            sc->available ? "" : " [not yet available]");
  }
  fputs(
      "\n"
      "Exit status: 0 done; 1 the run failed (no request succeeded, every\n"
      "connection lost); 2 usage error or the server cannot be reached.\n",
      out);
}
