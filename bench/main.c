// main.c: vkey-bench, the load generator. See bench/README.md.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "args.h"
#include "client.h"
#include "common.h"
#include "procstat.h"
#include "report.h"
#include "scenario.h"

// Exit statuses, as documented in --help.
enum { EXIT_RUN_FAILED = 1, EXIT_USAGE = 2 };

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
  // A peer that closes while we write must give EPIPE, not kill us.
  signal(SIGPIPE, SIG_IGN);

  vk_bench_result_t res;
  if (vk_bench_result_init(&res) != VK_OK) {
    fprintf(stderr, "vkey-bench: out of memory\n");
    vk_bench_pool_cleanup(&pool);
    return EXIT_RUN_FAILED;
  }
  int status = EXIT_SUCCESS;
  rv = vk_bench_run(&res, err, sizeof(err), &cfg, &pool);
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
  if (cfg.json) {
    vk_bench_report_json(stdout, &cfg, &res);
  } else {
    vk_bench_report_text(stdout, &cfg, &res);
  }
  if (res.ok == 0) {
    fprintf(stderr, "vkey-bench: no request succeeded%s%s\n",
            res.first_error[0] != '\0' ? ": " : "", res.first_error);
    status = EXIT_RUN_FAILED;
  }

out:
  vk_bench_result_cleanup(&res);
  vk_bench_pool_cleanup(&pool);
  return status;
}
