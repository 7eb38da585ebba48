// client.h: the load generator proper: one libuv loop driving -c nghttp2
// client sessions over cleartext TCP (h2c with prior knowledge).
#ifndef VK_BENCH_CLIENT_H
#define VK_BENCH_CLIENT_H

#include <stddef.h>

#include "args.h"
#include "report.h"
#include "scenario.h"
#include "signer.h"

#ifdef __cplusplus
extern "C" {
#endif

// Where requests come from: a prebuilt pool, or the rings of signer
// threads (taken round-robin, a request at most once). `hdrs` go on every
// request (e.g. the operator's authorization). With `next`, a request
// starts an operation of several calls: each successful call's response
// gives the next call (next(next_ctx, ...)), sent on the same stream slot
// as soon as the response is in; the operation is what the run counts,
// times and paces (see vk_bench_next_fn).
typedef struct vk_bench_source_s {
  const vk_bench_pool_t *pool;
  vk_bench_signer_t *const *signers;
  size_t n_signers;
  const vk_bench_hdr_t *hdrs;
  size_t n_hdrs;
  vk_bench_next_fn next;  // NULL: one call per operation
  void *next_ctx;
} vk_bench_source_t;

// vk_bench_run connects -c connections to cfg's target, waits for each
// server's SETTINGS, runs the warm-up, then the measured window, and fills
// `out` (initialised by the caller with vk_bench_result_init). Progress
// lines go to stderr unless cfg->quiet. SIGINT ends the window early.
//
// Returns 0 when the window ran (whatever the calls' outcomes: see `out`);
// VK_EUNAVAIL when the target cannot be resolved or connected to, or does
// not speak h2c (the caller exits 2); VK_ECLOSED when every connection was
// lost during the run; VK_EIO or VK_ENOMEM for a local failure. On failure
// a one-line message is in `err`.
int vk_bench_run(vk_bench_result_t *out, char *err, size_t errlen,
                 const vk_bench_config_t *cfg, const vk_bench_source_t *src);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_CLIENT_H
