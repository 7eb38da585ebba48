// worker.h: a pool of threads that runs CPU-bound jobs (signing, verifying)
// for one libuv loop, in batches.
//
// Threading: every function here is for the loop thread only, except that a
// job's run() executes on a worker thread. A job travels:
//
//   vk_worker_submit (loop) -> run() (worker) -> done() (loop)
//
// Batching: jobs submitted during one loop iteration are handed to the
// workers together, right before the loop blocks for I/O (one lock, and one
// condition-variable signal per worker that has to wake). A worker takes up
// to min(max_batch, ceil(queued / threads)) jobs at a time, runs them, and
// posts them back with one loop wake-up (or one per 200 us of work, so a
// long batch does not hold back its first results), so a lone job starts at
// once while a burst costs a few wake-ups rather than one per job. The loop
// calls done() for each finished batch in the order the batches finished, and
// for the jobs of one batch in submission order; with one thread, that is
// submission order.
//
// Loop lifetime: the pool keeps its loop alive (uv_run does not return)
// only while jobs are pending.
#ifndef VK_WORKER_H
#define VK_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

// VK_WORKER_MAX_THREADS bounds vk_worker_config_t.threads.
#define VK_WORKER_MAX_THREADS 256u

typedef struct vk_job_s vk_job_t;

// vk_job_t: one unit of work. The caller owns the memory, usually embedded in
// a larger struct recovered with vk_container_of, and must keep it valid
// until done() has been called; done() may free it.
struct vk_job_s {
  // run does the work on a worker thread. It must not touch the loop, any
  // handle on it, or a gRPC call: store the result in the job's owner.
  void (*run)(vk_job_t *job);
  // done runs on the loop thread exactly once per accepted job: `status` is
  // 0 after run() returned, or VK_ECLOSED if the pool closed before run()
  // started (then run() never runs). done() may submit jobs, free the job,
  // or close the pool.
  void (*done)(vk_job_t *job, int status);
  // next is owned by the pool while the job is queued.
  vk_job_t *next;
};

typedef struct vk_worker_pool_s vk_worker_pool_t;

// vk_worker_config_t: zero fields take the defaults.
typedef struct vk_worker_config_s {
  unsigned threads;  // worker threads; 0 = available CPUs (at most 256)
  size_t queue_cap;  // jobs submitted and not yet done; 0 = 65536
  size_t max_batch;  // jobs a worker takes at a time; 0 = 64
} vk_worker_config_t;

// vk_worker_stats_t: counters since the pool was created.
typedef struct vk_worker_stats_s {
  uint64_t jobs_run;  // jobs whose run() has returned
  uint64_t batches;   // batches posted back, one loop wake-up each
  size_t max_batch;   // the largest batch posted so far
} vk_worker_stats_t;

// vk_worker_pool_new starts a pool of threads that posts results to `loop`.
// `cfg` may be NULL for all defaults. On success sets `*out` and returns 0;
// free it with vk_worker_pool_close. Returns VK_EINVAL for a NULL `out` or
// `loop` or more than VK_WORKER_MAX_THREADS threads, VK_ENOMEM, or VK_EIO
// when a thread, lock or libuv handle cannot be created; on failure nothing
// is left to free.
int vk_worker_pool_new(vk_worker_pool_t **out, uv_loop_t *loop,
                       const vk_worker_config_t *cfg);

// vk_worker_submit queues `job`; its run() starts in this loop iteration if a
// worker is free. The pool owns job->next until done() is called. Returns 0,
// VK_EBUSY when queue_cap jobs are pending (answer RESOURCE_EXHAUSTED and
// retry after some complete), VK_ECLOSED after vk_worker_pool_close, or
// VK_EINVAL for a job without run or done. On failure done() is not called.
//
// A job submitted from another uv_prepare callback may wait until the loop
// next wakes up: the pool hands jobs over from its own prepare callback.
int vk_worker_submit(vk_worker_pool_t *p, vk_job_t *job);

// vk_worker_pool_close stops the pool. It waits for the batches the workers
// are running (at most max_batch jobs each), joins the threads, and before it
// returns calls done() on the loop thread for every pending job: first 0 for
// those that ran, then VK_ECLOSED for the others in submission order. The
// memory is
// released from the last handle close callback, so run the loop afterwards.
// Later submissions return VK_ECLOSED; a second close and close(NULL) are
// no-ops. It may be called from inside done().
void vk_worker_pool_close(vk_worker_pool_t *p);

// vk_worker_pending returns the jobs submitted and not yet done (the count
// that queue_cap bounds).
size_t vk_worker_pending(const vk_worker_pool_t *p);

// vk_worker_stats copies the counters into `*out`. The values include every
// batch whose done() calls have run and possibly some that are still on
// their way to the loop.
void vk_worker_stats(vk_worker_pool_t *p, vk_worker_stats_t *out);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // VK_WORKER_H
