// args.h: vkey-bench's command line, parsed without touching the network so
// that the tests can check every accepted and refused combination.
#ifndef VK_BENCH_ARGS_H
#define VK_BENCH_ARGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "scenario.h"

#ifdef __cplusplus
extern "C" {
#endif

// Bounds of the numeric options. Connections are capped by the machine's
// hard limit of 20,000 open files (docs: BENCHMARKING.md).
#define VK_BENCH_MAX_CONNECTIONS 19000u
#define VK_BENCH_MAX_STREAMS 65536u
#define VK_BENCH_MAX_RATE 1e8
#define VK_BENCH_MAX_SECONDS 86400.0
#define VK_BENCH_MAX_VEHICLES 1000000u
#define VK_BENCH_MAX_SIGNERS 16u

typedef struct vk_bench_config_s {
  char host[256];        // target host or IP literal, without brackets
  char port[6];          // decimal port
  char authority[300];   // ":authority" as the user wrote it, host:port
  uint32_t connections;  // -c: HTTP/2 connections
  uint32_t streams;      // -m: concurrent streams per connection
  double rate;           // --rate: requests/s (open loop); 0 = closed loop
  double duration_s;     // -d: measured seconds; 0 when -n is given
  uint64_t requests;     // -n: measured requests; 0 when -d is used
  double warmup_s;       // --warmup: seconds run first and not counted
  const vk_bench_scenario_t *scenario;  // never NULL after a parse
  vk_bench_params_t params;             // scenario parameters
  int64_t server_pid;                   // --server-pid; 0: none
  // --redis-pid, else redis-server's pid from DATA-DIR/redis.pid (vkeyd's
  // embedded Redis), found by main; 0: none.
  int64_t redis_pid;
  int json;                  // --json: one JSON object on stdout
  int quiet;                 // -q: no progress lines
  int help;                  // -h: print usage, run nothing
  const char *dump_request;  // --dump-request FILE: write body, run nothing
} vk_bench_config_t;

// vk_bench_args_parse fills `cfg` from argv[1..argc-1]. Returns 0 (check
// cfg->help and cfg->dump_request for what to do), or VK_EINVAL with a
// one-line message in `err` (NUL-terminated, truncated to `errlen`) for a
// usage error: unknown option, bad number, impossible value (-c 0, -m 0,
// --rate <= 0, ...), -d and -n together, unknown or not-yet-available
// scenario, missing or malformed target. Strings in `cfg` point into argv.
int vk_bench_args_parse(vk_bench_config_t *cfg, char *err, size_t errlen,
                        int argc, char **argv);

// vk_bench_usage prints the --help text, scenarios included, to `out`.
void vk_bench_usage(FILE *out);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_ARGS_H
