// main.c: vkey-bench, the load generator. See bench/README.md.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "client.h"
#include "common.h"
#include "connect.h"
#include "procstat.h"
#include "provision.h"
#include "report.h"
#include "scenario.h"
#include "signer.h"
#include "workload.h"

// Exit statuses, as documented in --help.
enum { EXIT_RUN_FAILED = 1, EXIT_USAGE = 2 };

// Provisioning runs over a few connections, well inside vkeyd's default
// limit of 100 streams each.
enum { kProvisionConnections = 4, kProvisionStreams = 64 };

static int dump_request(const vk_bench_config_t *cfg,
                        const vk_bench_pool_t *pool) {
  FILE *f = fopen(cfg->dump_request, "wb");
  if (f == NULL) {
    perror(cfg->dump_request);
    return EXIT_RUN_FAILED;
  }
  // The first request of the pool: the only one for fixed-request
  // scenarios such as health.
  const vk_bench_req_t *req = &pool->reqs[0];
  size_t n = fwrite(req->body, 1, req->body_len, f);
  if (fclose(f) != 0 || n != req->body_len) {
    perror(cfg->dump_request);
    return EXIT_RUN_FAILED;
  }
  fprintf(stderr, "vkey-bench: wrote %zu bytes (%s request for %s) to %s\n",
          req->body_len, cfg->scenario->name, req->path, cfg->dump_request);
  return EXIT_SUCCESS;
}

// The signed workloads: what to provision.
static void provision_opts(vk_bench_provision_t *p,
                           const vk_bench_config_t *cfg) {
  vk_bench_work_t w = cfg->scenario->workload;
  memset(p, 0, sizeof(*p));
  p->rpc.authority = cfg->authority;
  p->rpc.connections = kProvisionConnections;
  p->rpc.streams = kProvisionStreams;
  p->data_dir = cfg->params.data_dir;
  p->seed = cfg->params.seed;
  p->vehicles = cfg->params.vehicles;
  p->phone_alg =
      w == VK_BENCH_WORK_VERIFY_P256 ? VK_BENCH_ALG_P256 : VK_BENCH_ALG_ED25519;
  // connect gives each vehicle an owner key too: its ISSUED event waits in
  // the outbox (never acknowledged), so every channel gets one message
  // when it opens, which tells us the server took it.
  p->owner_keys = 1;
  p->sessions = w == VK_BENCH_WORK_VERIFY || w == VK_BENCH_WORK_VERIFY_P256 ||
                w == VK_BENCH_WORK_CHECK || w == VK_BENCH_WORK_MIXED;
  p->cold_keys = w == VK_BENCH_WORK_VERIFY_COLD ? cfg->params.cold_keys : 0;
  p->recipient = w == VK_BENCH_WORK_SHARE;
  p->quiet = cfg->quiet;
}

// fill_limit: how far ahead each signer builds. A prebuilt run builds all
// its share before the window; otherwise a closed loop takes all it can,
// and an open loop at R/s needs about 2 s worth (a longer lookahead would
// only age requests).
static uint32_t fill_limit(const vk_bench_config_t *cfg, uint32_t signers) {
  if (cfg->params.prebuild > 0) {
    return (cfg->params.prebuild + signers - 1) / signers;
  }
  uint32_t ring = cfg->params.ring;
  if (cfg->rate <= 0) {
    return ring;
  }
  double per = cfg->rate * 2.0 / signers;
  if (per < 256) {
    per = 256;
  }
  return per < ring ? (uint32_t)per : ring;
}

typedef struct {
  vk_bench_fleet_t fleet;
  vk_bench_work_ctx_t ctx[VK_BENCH_MAX_SIGNERS];
  vk_bench_signer_t *signers[VK_BENCH_MAX_SIGNERS];
  uint32_t n;
} signed_t;

// signer_opts: a connect run's single signer makes one assertion per
// vehicle; a prebuilt run's signers make their share and stop; the others
// keep their rings filled, an open loop's at low priority (they build
// about 2 s ahead and can wait for idle CPU), a closed loop's at the
// server's pace.
static vk_bench_signer_opts_t signer_opts(const vk_bench_config_t *cfg,
                                          const signed_t *sg, uint32_t n) {
  if (cfg->scenario->kind == VK_BENCH_KIND_CONNECT) {
    return (vk_bench_signer_opts_t){sg->fleet.n, sg->fleet.n, 0, 0};
  }
  uint32_t limit = fill_limit(cfg, n);
  if (cfg->params.prebuild > 0) {
    return (vk_bench_signer_opts_t){limit, limit, limit, 0};
  }
  return (vk_bench_signer_opts_t){cfg->params.ring, limit, 0, cfg->rate > 0};
}

static int start_signers(signed_t *sg, char *err, size_t errlen,
                         const vk_bench_config_t *cfg) {
  uint32_t n = cfg->params.signers;
  if (cfg->scenario->kind == VK_BENCH_KIND_CONNECT) {
    n = 1;  // one assertion per vehicle, once: one thread is plenty
  }
  if (n > sg->fleet.n) {
    n = sg->fleet.n;  // each thread needs a vehicle of its own
  }
  for (uint32_t i = 0; i < n; i++) {
    vk_bench_work_ctx_t *w = &sg->ctx[i];
    w->fleet = &sg->fleet;
    w->work = cfg->scenario->workload;
    w->first = i;
    w->stride = n;
    vk_bench_signer_opts_t opts = signer_opts(cfg, sg, n);
    int rv =
        vk_bench_signer_start(&sg->signers[i], &opts, vk_bench_work_make, w);
    if (rv != VK_OK) {
      snprintf(err, errlen, "cannot start a signer thread: %s",
               vk_strerror(rv));
      return rv;
    }
    sg->n = i + 1;
  }
  return VK_OK;
}

// wait_rings_full waits until every ring holds its fill limit, so that the
// window starts in the steady state: from then on the signers build as
// many requests as the loop takes, and their CPU in the window is the cost
// of the requests sent in it. A prebuilt run waits for every request; the
// others wait at most 60 s.
static void wait_rings_full(const signed_t *sg, uint32_t limit,
                            const vk_bench_config_t *cfg) {
  struct timespec nap = {0, 10 * 1000 * 1000};
  for (int tries = 0; tries < 6000 || cfg->params.prebuild > 0; tries++) {
    int full = 1;
    for (uint32_t i = 0; i < sg->n && full; i++) {
      vk_bench_signer_stats_t st;
      vk_bench_signer_stats(sg->signers[i], &st);
      full = st.error != VK_OK || st.finished ||
             vk_bench_ring_level(vk_bench_signer_ring(sg->signers[i])) >= limit;
    }
    if (full) {
      return;
    }
    if (tries == 100 && !cfg->quiet) {
      fprintf(stderr,
              "vkey-bench: waiting for the signers to fill their "
              "rings\n");
    }
    nanosleep(&nap, NULL);
  }
}

static void stop_signers(signed_t *sg) {
  for (uint32_t i = 0; i < sg->n; i++) {
    vk_bench_signer_stop(sg->signers[i]);
    vk_bench_work_ctx_cleanup(&sg->ctx[i]);
  }
  sg->n = 0;
  vk_bench_fleet_cleanup(&sg->fleet);
}

// find_redis_pid: vkeyd's embedded redis-server writes its pid next to its
// data, so redis-server's CPU per request can be reported too.
static void find_redis_pid(vk_bench_config_t *cfg) {
  if (cfg->redis_pid > 0 || cfg->params.data_dir == NULL) {
    return;
  }
  char path[4096];
  int64_t pid;
  snprintf(path, sizeof(path), "%s/redis.pid", cfg->params.data_dir);
  vk_proc_sample_t s;
  if (vk_pidfile_read(&pid, path) == VK_OK &&
      vk_proc_sample(&s, pid) == VK_OK) {
    cfg->redis_pid = pid;
  }
}

static int run_and_report(vk_bench_config_t *cfg, const vk_bench_source_t *src,
                          const signed_t *sg) {
  char err[256];
  vk_bench_result_t res;
  if (vk_bench_result_init(&res) != VK_OK) {
    fprintf(stderr, "vkey-bench: out of memory\n");
    return EXIT_RUN_FAILED;
  }
  int status = EXIT_SUCCESS;
  int rv = vk_bench_run(&res, err, sizeof(err), cfg, src);
  if (rv == VK_EUNAVAIL || rv == VK_EINVAL) {
    fprintf(stderr, "vkey-bench: %s\n", err);
    status = EXIT_USAGE;
    goto out;
  }
  if (rv != VK_OK) {
    fprintf(stderr, "vkey-bench: %s\n", err);
    status = EXIT_RUN_FAILED;
    if (res.elapsed_s <= 0) {
      goto out;  // nothing measured to report
    }
  }
  if (sg != NULL && sg->fleet.n_cold > 0 &&
      res.taken_total > sg->fleet.n_cold) {
    res.keys_reused = res.taken_total - sg->fleet.n_cold;
  }
  for (uint32_t i = 0; sg != NULL && i < sg->n; i++) {
    vk_bench_signer_stats_t st;
    vk_bench_signer_stats(sg->signers[i], &st);
    if (st.error != VK_OK) {
      fprintf(stderr, "vkey-bench: a signer thread stopped: %s\n",
              vk_strerror(st.error));
    }
  }
  if (cfg->json) {
    vk_bench_report_json(stdout, cfg, &res);
  } else {
    vk_bench_report_text(stdout, cfg, &res);
  }
  if (res.ok == 0) {
    fprintf(stderr, "vkey-bench: no request succeeded%s%s\n",
            res.first_error[0] != '\0' ? ": " : "", res.first_error);
    status = EXIT_RUN_FAILED;
  }

out:
  vk_bench_result_cleanup(&res);
  return status;
}

static int run_signed(vk_bench_config_t *cfg) {
  char err[512];
  vk_bench_provision_t p;
  provision_opts(&p, cfg);
  if (vk_bench_rpc_resolve(&p.rpc.addr, cfg->host, cfg->port) != VK_OK) {
    fprintf(stderr, "vkey-bench: cannot resolve '%s'\n", cfg->host);
    return EXIT_USAGE;
  }
  signed_t *sg = calloc(1, sizeof(*sg));
  if (sg == NULL) {
    return EXIT_RUN_FAILED;
  }
  uint64_t redis_unprovisioned = 0;
  if (cfg->scenario->kind == VK_BENCH_KIND_CONNECT) {
    char addr[4200];
    vk_bench_connect_redis_addr(addr, sizeof(addr), cfg);
    if (addr[0] != '\0') {
      (void)vk_redis_used_memory(&redis_unprovisioned, addr);
    }
  }
  int rv = vk_bench_provision(&sg->fleet, err, sizeof(err), &p);
  if (rv != VK_OK) {
    fprintf(stderr, "vkey-bench: provisioning failed: %s\n", err);
    free(sg);
    return rv == VK_EUNAVAIL || rv == VK_ENOTFOUND ? EXIT_USAGE
                                                   : EXIT_RUN_FAILED;
  }
  find_redis_pid(cfg);
  int status;
  rv = start_signers(sg, err, sizeof(err), cfg);
  if (rv != VK_OK) {
    fprintf(stderr, "vkey-bench: %s\n", err);
    status = EXIT_RUN_FAILED;
  } else if (cfg->scenario->kind == VK_BENCH_KIND_CONNECT) {
    status = vk_bench_connect_run(cfg, &sg->fleet, sg->signers[0],
                                  redis_unprovisioned);
  } else {
    // verify-cold's verifications come from a cloud service with the
    // operator's token; the other workloads carry their own credential in
    // each request.
    vk_bench_hdr_t auth = {"authorization", sg->fleet.operator_auth,
                           sg->fleet.operator_auth_len};
    vk_bench_work_t w = cfg->scenario->workload;
    int bearer = w == VK_BENCH_WORK_VERIFY_COLD;
    vk_bench_source_t src = {
        NULL,           sg->signers, sg->n, bearer ? &auth : NULL,
        bearer ? 1 : 0, NULL,        NULL};
    if (w == VK_BENCH_WORK_SHARE) {
      // Authorize (from the signers), then the loop sends the Redeem.
      src.next = vk_bench_share_next;
      src.next_ctx = &sg->fleet;
    }
    wait_rings_full(sg, fill_limit(cfg, sg->n), cfg);
    status = run_and_report(cfg, &src, sg);
  }
  stop_signers(sg);
  free(sg);
  return status;
}

int main(int argc, char **argv) {
  vk_bench_config_t cfg;
  char err[256];
  if (vk_bench_args_parse(&cfg, err, sizeof(err), argc, argv) != VK_OK) {
    fprintf(stderr, "vkey-bench: %s\nTry 'vkey-bench --help'.\n", err);
    return EXIT_USAGE;
  }
  if (cfg.help) {
    vk_bench_usage(stdout);
    return EXIT_SUCCESS;
  }
  if (cfg.server_pid > 0) {
    vk_proc_sample_t s;
    if (vk_proc_sample(&s, cfg.server_pid) != VK_OK) {
      fprintf(stderr, "vkey-bench: --server-pid %lld: no such process\n",
              (long long)cfg.server_pid);
      return EXIT_USAGE;
    }
  }
  // A peer that closes while we write must give EPIPE, not kill us.
  signal(SIGPIPE, SIG_IGN);
  if (cfg.scenario->workload != VK_BENCH_WORK_POOL) {
    return run_signed(&cfg);
  }
  vk_bench_pool_t pool;
  int rv = vk_bench_pool_build(&pool, cfg.scenario, &cfg.params);
  if (rv != VK_OK) {
    fprintf(stderr, "vkey-bench: cannot build the %s requests: %s\n",
            cfg.scenario->name, vk_strerror(rv));
    return EXIT_RUN_FAILED;
  }
  if (cfg.dump_request != NULL) {
    int status = dump_request(&cfg, &pool);
    vk_bench_pool_cleanup(&pool);
    return status;
  }
  find_redis_pid(&cfg);
  // A fixed request is sent as `h2load -d FILE` sends the file: with a
  // content-length, so that the h2load cross-check gives vkeyd the same
  // header fields to parse.
  char len_text[24];
  vk_bench_hdr_t fixed_len = {"content-length", len_text, 0};
  fixed_len.value_len = (size_t)snprintf(len_text, sizeof(len_text), "%zu",
                                         pool.reqs[0].body_len);
  vk_bench_source_t src = {&pool, NULL, 0, &fixed_len, pool.n == 1 ? 1 : 0,
                           NULL,  NULL};
  int status = run_and_report(&cfg, &src, NULL);
  vk_bench_pool_cleanup(&pool);
  return status;
}
