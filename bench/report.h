// report.h: the results of one vkey-bench run and their two printed forms,
// a table for people and one JSON object for scripts (bench/run.sh).
#ifndef VK_BENCH_REPORT_H
#define VK_BENCH_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "args.h"
#include "histogram.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VK_BENCH_NGRPC_CODES 17  // OK .. UNAUTHENTICATED
#define VK_BENCH_MAX_REASONS 24
#define VK_BENCH_MAX_STEPS 4  // calls in one operation (share: 2)

// Refusals by reason (the scenario check's `why`, e.g. a deny reason).
typedef struct vk_bench_reason_s {
  const char *why;  // static
  uint64_t n;
} vk_bench_reason_t;

// The results count operations: one call each, or for a scenario of
// several calls per operation (share) the whole sequence, which succeeds
// when every call does and fails with the first failure.
typedef struct vk_bench_result_s {
  double elapsed_s;  // length of the measured window
  uint64_t ok;       // grpc-status 0 and the response passed the check
  // Calls that ended with grpc-status N != 0, by N; codes above 16 go to
  // grpc_other.
  uint64_t grpc_errors[VK_BENCH_NGRPC_CODES];
  uint64_t grpc_other;
  // HTTP-level failures: :status not 200, RST_STREAM, no grpc-status, or the
  // connection lost while the call was in flight.
  uint64_t http_errors;
  uint64_t bad_responses;  // grpc-status 0, but the check refused the body
  vk_bench_reason_t bad_reasons[VK_BENCH_MAX_REASONS];  // bad_responses by why
  size_t n_bad_reasons;
  uint64_t bad_other_reasons;  // reasons past the table's end
  uint64_t unfinished;         // still in flight when the window closed
  uint64_t max_backlog;        // open loop: most requests due but not yet sent
  char first_error[160];       // the first failure, for the reader
  vk_hist_t latency;           // microseconds, successful calls only
  // Operations of several calls: each step's latency (from the step's own
  // submission; the first step's from the operation's start) and method,
  // successful steps inside the window only. n_steps is 0 otherwise.
  uint32_t n_steps;
  const char *step_path[VK_BENCH_MAX_STEPS];  // static
  vk_hist_t step_latency[VK_BENCH_MAX_STEPS];
  double client_cpu_s;        // this process, over the window
  double machine_busy_cores;  // every process, over the window
  double steal_cores;         // of those, what the hypervisor took
  int ncpu;
  uint32_t server_max_streams;  // SETTINGS_MAX_CONCURRENT_STREAMS seen
  int has_server;               // --server-pid was given
  double server_cpu_s;
  double server_loops_cpu_s;  // its event loop threads (procstat.h)
  uint64_t server_rss_kb_before;
  uint64_t server_rss_kb_after;
  uint64_t server_hwm_kb;
  int has_redis;  // the same for redis-server (--redis-pid)
  double redis_cpu_s;
  uint64_t redis_rss_kb_before;
  uint64_t redis_rss_kb_after;
  // Signed workloads: the signer threads over the window. Their CPU is
  // part of client_cpu_s already (getrusage counts every thread).
  int has_signers;
  uint32_t signers;
  double signer_cpu_s;
  uint64_t signed_in_window;  // requests the signers built
  uint64_t taken_in_window;   // requests the loop took from the rings
  uint32_t ring_start;        // ready requests at the window's start
  uint32_t ring_end;          // ... and at its end
  uint32_t ring_capacity;     // all rings
  uint64_t ring_dry;     // the loop had a free stream but every ring was empty
  uint64_t stale;        // requests dropped as too old to send
  uint64_t keys_reused;  // verify-cold: requests whose key was used before
  uint64_t taken_total;  // requests taken from the rings, warm-up included
  int ran_out;           // --prebuild: all were sent before the window's end
  double ran_out_s;      // ... this far into the window, which ended there
} vk_bench_result_t;

// vk_bench_result_init zeroes `r` and prepares its latency histogram.
// Returns 0 or VK_ENOMEM. Free with vk_bench_result_cleanup.
int vk_bench_result_init(vk_bench_result_t *r);
void vk_bench_result_cleanup(vk_bench_result_t *r);

// vk_bench_result_bad records a response the check refused, by `why`
// (compared by address first: the reasons are static strings).
void vk_bench_result_bad(vk_bench_result_t *r, const char *why);

// vk_bench_result_step records the latency of a successful step `step`
// (0-based; steps past VK_BENCH_MAX_STEPS are ignored) of an operation,
// a call to `path` (static).
void vk_bench_result_step(vk_bench_result_t *r, uint32_t step, const char *path,
                          uint64_t latency_us);

// vk_bench_result_failed returns every failed call: gRPC, HTTP and checks.
uint64_t vk_bench_result_failed(const vk_bench_result_t *r);

// vk_bench_report_text prints the human-readable report.
void vk_bench_report_text(FILE *out, const vk_bench_config_t *cfg,
                          const vk_bench_result_t *r);

// vk_bench_report_json prints one JSON object and a newline. Field names
// are documented in bench/README.md.
void vk_bench_report_json(FILE *out, const vk_bench_config_t *cfg,
                          const vk_bench_result_t *r);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_REPORT_H
