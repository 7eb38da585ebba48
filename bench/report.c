// report.c: printing. Rates are per second of the measured window; CPU per
// request divides the server's CPU seconds by every call completed in the
// window (failed ones cost CPU too).
#include "report.h"

#include <string.h>

#include "common.h"

int vk_bench_result_init(vk_bench_result_t *r) {
  memset(r, 0, sizeof(*r));
  int rv = vk_hist_init(&r->latency, VK_HIST_LATENCY_HIGHEST,
                        VK_HIST_LATENCY_SUB_BITS);
  for (size_t i = 0; rv == VK_OK && i < VK_BENCH_MAX_STEPS; i++) {
    rv = vk_hist_init(&r->step_latency[i], VK_HIST_LATENCY_HIGHEST,
                      VK_HIST_LATENCY_SUB_BITS);
  }
  if (rv != VK_OK) {
    vk_bench_result_cleanup(r);
  }
  return rv;
}

void vk_bench_result_cleanup(vk_bench_result_t *r) {
  vk_hist_cleanup(&r->latency);
  for (size_t i = 0; i < VK_BENCH_MAX_STEPS; i++) {
    vk_hist_cleanup(&r->step_latency[i]);
  }
}

void vk_bench_result_step(vk_bench_result_t *r, uint32_t step, const char *path,
                          uint64_t latency_us) {
  if (step >= VK_BENCH_MAX_STEPS) {
    return;
  }
  if (r->step_path[step] == NULL) {
    r->step_path[step] = path;
  }
  if (step + 1 > r->n_steps) {
    r->n_steps = step + 1;
  }
  vk_hist_record(&r->step_latency[step], latency_us);
}

void vk_bench_result_bad(vk_bench_result_t *r, const char *why) {
  r->bad_responses++;
  for (size_t i = 0; i < r->n_bad_reasons; i++) {
    if (r->bad_reasons[i].why == why ||
        strcmp(r->bad_reasons[i].why, why) == 0) {
      r->bad_reasons[i].n++;
      return;
    }
  }
  if (r->n_bad_reasons < VK_BENCH_MAX_REASONS) {
    r->bad_reasons[r->n_bad_reasons++] = (vk_bench_reason_t){why, 1};
  } else {
    r->bad_other_reasons++;
  }
}

uint64_t vk_bench_result_failed(const vk_bench_result_t *r) {
  uint64_t n = r->grpc_other + r->http_errors + r->bad_responses;
  for (int i = 1; i < VK_BENCH_NGRPC_CODES; i++) {
    n += r->grpc_errors[i];
  }
  return n;
}

static double per_second(uint64_t n, double seconds) {
  return seconds > 0 ? (double)n / seconds : 0.0;
}

static double us_per_request(const vk_bench_result_t *r, double cpu_s) {
  uint64_t done = r->ok + vk_bench_result_failed(r);
  return done > 0 ? cpu_s * 1e6 / (double)done : 0.0;
}

static double cpu_us_per_request(const vk_bench_result_t *r) {
  return us_per_request(r, r->server_cpu_s);
}

// other_cores is what neither the client nor the server used, steal
// included: a busy machine or a busy host makes a run suspect
// (BENCHMARKING.md).
static double other_cores(const vk_bench_result_t *r) {
  if (r->elapsed_s <= 0) {
    return 0;
  }
  double v = r->machine_busy_cores - r->client_cpu_s / r->elapsed_s -
             (r->has_server ? r->server_cpu_s / r->elapsed_s : 0.0) -
             (r->has_redis ? r->redis_cpu_s / r->elapsed_s : 0.0);
  return v < 0 ? 0 : v;
}

void vk_bench_report_text(FILE *out, const vk_bench_config_t *cfg,
                          const vk_bench_result_t *r) {
  const vk_hist_t *h = &r->latency;
  fprintf(out, "scenario     %s  (%s, %u connections x %u streams, ",
          cfg->scenario->name, cfg->authority, cfg->connections, cfg->streams);
  if (cfg->rate > 0) {
    fprintf(out, "open loop at %.0f req/s)\n", cfg->rate);
  } else {
    fprintf(out, "closed loop)\n");
  }
  fprintf(out, "window       %.2f s after %.2f s warm-up\n", r->elapsed_s,
          cfg->warmup_s);
  fprintf(out, "requests     %llu ok, %llu failed, %llu unfinished\n",
          (unsigned long long)r->ok,
          (unsigned long long)vk_bench_result_failed(r),
          (unsigned long long)r->unfinished);
  fprintf(out, "throughput   %.1f %s/s\n", per_second(r->ok, r->elapsed_s),
          r->n_steps > 0 ? "operations" : "req");
  fprintf(out,
          "latency us   p50 %llu  p90 %llu  p99 %llu  p99.9 %llu  max %llu"
          "  (mean %.1f, min %llu)\n",
          (unsigned long long)vk_hist_percentile(h, 50),
          (unsigned long long)vk_hist_percentile(h, 90),
          (unsigned long long)vk_hist_percentile(h, 99),
          (unsigned long long)vk_hist_percentile(h, 99.9),
          (unsigned long long)vk_hist_percentile(h, 100), vk_hist_mean(h),
          (unsigned long long)(h->total > 0 ? h->min : 0));
  if (r->n_steps > 0) {
    fprintf(out,
            "operation    %u calls each; requests, throughput, latency, "
            "errors and CPU per request count operations\n",
            r->n_steps);
  }
  for (uint32_t i = 0; i < r->n_steps; i++) {
    const vk_hist_t *s = &r->step_latency[i];
    fprintf(out,
            "step %u       %s: %llu ok, latency us p50 %llu  p99 %llu  "
            "max %llu\n",
            i + 1, r->step_path[i] != NULL ? r->step_path[i] : "?",
            (unsigned long long)s->total,
            (unsigned long long)vk_hist_percentile(s, 50),
            (unsigned long long)vk_hist_percentile(s, 99),
            (unsigned long long)vk_hist_percentile(s, 100));
  }
  fprintf(out, "errors       HTTP %llu, bad responses %llu, gRPC",
          (unsigned long long)r->http_errors,
          (unsigned long long)r->bad_responses);
  int any = 0;
  for (int i = 1; i < VK_BENCH_NGRPC_CODES; i++) {
    if (r->grpc_errors[i] > 0) {
      fprintf(out, " %s %llu", vk_bench_grpc_status_name(i),
              (unsigned long long)r->grpc_errors[i]);
      any = 1;
    }
  }
  if (r->grpc_other > 0) {
    fprintf(out, " other %llu", (unsigned long long)r->grpc_other);
    any = 1;
  }
  fprintf(out, "%s\n", any ? "" : " 0");
  if (r->n_bad_reasons > 0) {
    fprintf(out, "refused by   ");
    for (size_t i = 0; i < r->n_bad_reasons; i++) {
      fprintf(out, "%s%s %llu", i > 0 ? ", " : "", r->bad_reasons[i].why,
              (unsigned long long)r->bad_reasons[i].n);
    }
    if (r->bad_other_reasons > 0) {
      fprintf(out, ", other %llu", (unsigned long long)r->bad_other_reasons);
    }
    fputc('\n', out);
  }
  if (r->first_error[0] != '\0') {
    fprintf(out, "first error  %s\n", r->first_error);
  }
  if (cfg->rate > 0) {
    fprintf(out, "backlog      at most %llu requests due but not sent\n",
            (unsigned long long)r->max_backlog);
  }
  fprintf(out, "client CPU   %.2f s = %.2f cores\n", r->client_cpu_s,
          r->elapsed_s > 0 ? r->client_cpu_s / r->elapsed_s : 0.0);
  if (r->has_server) {
    fprintf(out,
            "server       pid %lld: CPU %.2f s = %.2f cores, %.1f us/request"
            " (event loops %.1f, others %.1f); RSS %llu -> %llu kB (peak %llu"
            " kB)\n",
            (long long)cfg->server_pid, r->server_cpu_s,
            r->elapsed_s > 0 ? r->server_cpu_s / r->elapsed_s : 0.0,
            cpu_us_per_request(r), us_per_request(r, r->server_loops_cpu_s),
            us_per_request(r, r->server_cpu_s - r->server_loops_cpu_s),
            (unsigned long long)r->server_rss_kb_before,
            (unsigned long long)r->server_rss_kb_after,
            (unsigned long long)r->server_hwm_kb);
  }
  if (r->has_redis) {
    fprintf(out,
            "redis        CPU %.2f s = %.2f cores, %.1f us/request;"
            " RSS %llu -> %llu kB\n",
            r->redis_cpu_s,
            r->elapsed_s > 0 ? r->redis_cpu_s / r->elapsed_s : 0.0,
            us_per_request(r, r->redis_cpu_s),
            (unsigned long long)r->redis_rss_kb_before,
            (unsigned long long)r->redis_rss_kb_after);
  }
  if (r->has_signers) {
    fprintf(out,
            "signers      %u threads: CPU %.2f s = %.2f cores (in client CPU);"
            " built %llu, sent %llu; ready %u -> %u of %u; ring empty %llu"
            " times; stale %llu\n",
            r->signers, r->signer_cpu_s,
            r->elapsed_s > 0 ? r->signer_cpu_s / r->elapsed_s : 0.0,
            (unsigned long long)r->signed_in_window,
            (unsigned long long)r->taken_in_window, r->ring_start, r->ring_end,
            r->ring_capacity, (unsigned long long)r->ring_dry,
            (unsigned long long)r->stale);
    if (cfg->params.prebuild > 0 && r->ran_out) {
      fprintf(out,
              "prebuilt     %u requests before the run: all sent %.2f s into"
              " the window, which ended there\n",
              cfg->params.prebuild, r->ran_out_s);
    } else if (cfg->params.prebuild > 0) {
      fprintf(out, "prebuilt     %u requests before the run\n",
              cfg->params.prebuild);
    }
    if (r->keys_reused > 0) {
      fprintf(out,
              "WARNING      %llu requests reused a key already verified "
              "(give more --cold-keys)\n",
              (unsigned long long)r->keys_reused);
    }
  }
  fprintf(out,
          "machine      %.2f of %d cores busy, %.2f by other processes; "
          "the hypervisor took %.2f (steal)\n",
          r->machine_busy_cores, r->ncpu, other_cores(r), r->steal_cores);
}

// json_string prints `s` as a JSON string. Server text (grpc-message) can
// hold anything, so every control or non-ASCII byte is escaped.
static void json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    if (*p == '"' || *p == '\\') {
      fprintf(out, "\\%c", *p);
    } else if (*p < 0x20 || *p >= 0x7f) {
      fprintf(out, "\\u%04x", *p);
    } else {
      fputc(*p, out);
    }
  }
  fputc('"', out);
}

void vk_bench_report_json(FILE *out, const vk_bench_config_t *cfg,
                          const vk_bench_result_t *r) {
  const vk_hist_t *h = &r->latency;
  fprintf(out, "{\"scenario\":");
  json_string(out, cfg->scenario->name);
  fprintf(out, ",\"target\":");
  json_string(out, cfg->authority);
  fprintf(out,
          ",\"connections\":%u,\"streams\":%u,\"mode\":\"%s\",\"rate\":%.3f,"
          "\"warmup_s\":%.3f,\"elapsed_s\":%.6f",
          cfg->connections, cfg->streams, cfg->rate > 0 ? "open" : "closed",
          cfg->rate, cfg->warmup_s, r->elapsed_s);
  fprintf(out,
          ",\"ok\":%llu,\"failed\":%llu,\"unfinished\":%llu,"
          "\"throughput_rps\":%.3f",
          (unsigned long long)r->ok,
          (unsigned long long)vk_bench_result_failed(r),
          (unsigned long long)r->unfinished, per_second(r->ok, r->elapsed_s));
  fprintf(out,
          ",\"latency_us\":{\"p50\":%llu,\"p90\":%llu,\"p99\":%llu,"
          "\"p999\":%llu,\"max\":%llu,\"min\":%llu,\"mean\":%.3f,"
          "\"clamped\":%llu}",
          (unsigned long long)vk_hist_percentile(h, 50),
          (unsigned long long)vk_hist_percentile(h, 90),
          (unsigned long long)vk_hist_percentile(h, 99),
          (unsigned long long)vk_hist_percentile(h, 99.9),
          (unsigned long long)vk_hist_percentile(h, 100),
          (unsigned long long)(h->total > 0 ? h->min : 0), vk_hist_mean(h),
          (unsigned long long)h->clamped);
  if (r->n_steps > 0) {
    fprintf(out, ",\"steps\":[");
    for (uint32_t i = 0; i < r->n_steps; i++) {
      const vk_hist_t *s = &r->step_latency[i];
      fprintf(out, "%s{\"path\":", i > 0 ? "," : "");
      json_string(out, r->step_path[i] != NULL ? r->step_path[i] : "");
      fprintf(out,
              ",\"ok\":%llu,\"latency_us\":{\"p50\":%llu,\"p90\":%llu,"
              "\"p99\":%llu,\"p999\":%llu,\"max\":%llu}}",
              (unsigned long long)s->total,
              (unsigned long long)vk_hist_percentile(s, 50),
              (unsigned long long)vk_hist_percentile(s, 90),
              (unsigned long long)vk_hist_percentile(s, 99),
              (unsigned long long)vk_hist_percentile(s, 99.9),
              (unsigned long long)vk_hist_percentile(s, 100));
    }
    fprintf(out, "]");
  } else {
    fprintf(out, ",\"steps\":null");
  }
  fprintf(out, ",\"errors\":{\"http\":%llu,\"bad_response\":%llu,\"grpc\":{",
          (unsigned long long)r->http_errors,
          (unsigned long long)r->bad_responses);
  const char *sep = "";
  for (int i = 1; i < VK_BENCH_NGRPC_CODES; i++) {
    if (r->grpc_errors[i] > 0) {
      fprintf(out, "%s\"%s\":%llu", sep, vk_bench_grpc_status_name(i),
              (unsigned long long)r->grpc_errors[i]);
      sep = ",";
    }
  }
  if (r->grpc_other > 0) {
    fprintf(out, "%s\"other\":%llu", sep, (unsigned long long)r->grpc_other);
  }
  fprintf(out, "}},\"bad_reasons\":{");
  for (size_t i = 0; i < r->n_bad_reasons; i++) {
    fprintf(out, "%s", i > 0 ? "," : "");
    json_string(out, r->bad_reasons[i].why);
    fprintf(out, ":%llu", (unsigned long long)r->bad_reasons[i].n);
  }
  if (r->bad_other_reasons > 0) {
    fprintf(out, "%s\"other\":%llu", r->n_bad_reasons > 0 ? "," : "",
            (unsigned long long)r->bad_other_reasons);
  }
  fprintf(out, "},\"first_error\":");
  json_string(out, r->first_error);
  fprintf(out,
          ",\"max_backlog\":%llu,\"server_max_streams\":%u,"
          "\"client_cpu_s\":%.3f,\"client_cpu_cores\":%.4f,"
          "\"machine_busy_cores\":%.4f,\"other_cpu_cores\":%.4f,"
          "\"steal_cpu_cores\":%.4f,\"ncpu\":%d",
          (unsigned long long)r->max_backlog, r->server_max_streams,
          r->client_cpu_s,
          r->elapsed_s > 0 ? r->client_cpu_s / r->elapsed_s : 0.0,
          r->machine_busy_cores, other_cores(r), r->steal_cores, r->ncpu);
  if (r->has_server) {
    fprintf(out,
            ",\"server\":{\"pid\":%lld,\"cpu_s\":%.3f,\"cpu_cores\":%.4f,"
            "\"cpu_us_per_request\":%.3f,\"loop_threads_cpu_us_per_request\":"
            "%.3f,\"other_threads_cpu_us_per_request\":%.3f,"
            "\"rss_kb_before\":%llu,\"rss_kb_after\":%llu,\"hwm_kb\":%llu}",
            (long long)cfg->server_pid, r->server_cpu_s,
            r->elapsed_s > 0 ? r->server_cpu_s / r->elapsed_s : 0.0,
            cpu_us_per_request(r), us_per_request(r, r->server_loops_cpu_s),
            us_per_request(r, r->server_cpu_s - r->server_loops_cpu_s),
            (unsigned long long)r->server_rss_kb_before,
            (unsigned long long)r->server_rss_kb_after,
            (unsigned long long)r->server_hwm_kb);
  } else {
    fprintf(out, ",\"server\":null");
  }
  if (r->has_redis) {
    fprintf(out,
            ",\"redis\":{\"cpu_s\":%.3f,\"cpu_cores\":%.4f,"
            "\"cpu_us_per_request\":%.3f,\"rss_kb_before\":%llu,"
            "\"rss_kb_after\":%llu}",
            r->redis_cpu_s,
            r->elapsed_s > 0 ? r->redis_cpu_s / r->elapsed_s : 0.0,
            us_per_request(r, r->redis_cpu_s),
            (unsigned long long)r->redis_rss_kb_before,
            (unsigned long long)r->redis_rss_kb_after);
  } else {
    fprintf(out, ",\"redis\":null");
  }
  if (r->has_signers) {
    fprintf(out,
            ",\"signers\":{\"threads\":%u,\"cpu_s\":%.3f,\"cpu_cores\":%.4f,"
            "\"built\":%llu,\"sent\":%llu,\"ring_start\":%u,\"ring_end\":%u,"
            "\"ring_capacity\":%u,\"ring_empty\":%llu,\"stale\":%llu,"
            "\"keys_reused\":%llu,\"prebuilt\":%u,\"ran_out\":%s}",
            r->signers, r->signer_cpu_s,
            r->elapsed_s > 0 ? r->signer_cpu_s / r->elapsed_s : 0.0,
            (unsigned long long)r->signed_in_window,
            (unsigned long long)r->taken_in_window, r->ring_start, r->ring_end,
            r->ring_capacity, (unsigned long long)r->ring_dry,
            (unsigned long long)r->stale, (unsigned long long)r->keys_reused,
            cfg->params.prebuild, r->ran_out ? "true" : "false");
  } else {
    fprintf(out, ",\"signers\":null");
  }
  fprintf(out, "}\n");
}
