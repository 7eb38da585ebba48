// worker.c: the worker pool (the contract is in worker.h).
//
// A job moves through four singly linked lists, each with one owner:
//
//   local    loop thread only: submitted during this loop iteration
//   queue    under mu: waiting for a worker
//   done     under done_mu: run, waiting for the loop
//   deliver  loop thread only: taken from `done`, done() being called
//
// Why a loop-local list rather than locking on every submit: a burst of
// requests read in one iteration then costs one lock and a few condvar
// signals, and the workers see the whole burst at once, so they can size
// their batches. The prepare handle runs right before the loop blocks, so a
// lone job still starts in the iteration that submitted it.
//
// mu and done_mu are never held together, and no lock is held while a job
// runs or while done() is called.
#include "worker.h"

#include <stdbool.h>
#include <stdlib.h>

#include "common.h"
#include "log.h"

#define VK__WORKER_DEFAULT_QUEUE_CAP 65536u
#define VK__WORKER_DEFAULT_MAX_BATCH 64u
// A worker hands back what it finished at least this often: a batch of 64
// signature checks takes ~4 ms, and its first results must not wait for
// its last. At most ~5,000 extra wake-ups a second per busy worker.
#define VK__WORKER_POST_NS (200u * 1000u)

typedef struct vk__job_list_s {
  vk_job_t *head;
  vk_job_t *tail;
} vk__job_list_t;

struct vk_worker_pool_s {
  uv_loop_t *loop;
  uv_prepare_t prepare;  // hands `local` to the workers; data == this pool
  uv_async_t async;      // a batch is done; data == this pool
  int pending_closes;

  // Loop thread only.
  vk__job_list_t local;
  size_t local_len;
  vk__job_list_t deliver;
  size_t pending;  // submitted, done() not yet called
  bool closing;

  // Shared with the workers, under mu.
  uv_mutex_t mu;
  uv_cond_t cond;
  vk__job_list_t queue;
  size_t queued;
  unsigned idle;  // workers blocked in uv_cond_wait
  bool stop;

  // Shared with the workers, under done_mu.
  uv_mutex_t done_mu;
  vk__job_list_t done;
  vk_worker_stats_t stats;

  // Set before the threads start, then read-only.
  size_t queue_cap;
  size_t max_batch;
  unsigned nthreads;
  uv_thread_t threads[];
};

// list_append moves every job of `from` to the end of `to`.
static void list_append(vk__job_list_t *to, vk__job_list_t *from) {
  if (from->head == NULL) {
    return;
  }
  if (to->head == NULL) {
    to->head = from->head;
  } else {
    to->tail->next = from->head;
  }
  to->tail = from->tail;
  from->head = NULL;
  from->tail = NULL;
}

static vk_job_t *list_pop(vk__job_list_t *l) {
  vk_job_t *job = l->head;
  if (job != NULL) {
    l->head = job->next;
    if (l->head == NULL) {
      l->tail = NULL;
    }
    job->next = NULL;
  }
  return job;
}

// batch_size is how many jobs one worker takes when `queued` are waiting:
// an equal share for every thread, so a burst spreads over all of them, but
// never more than max_batch, so results keep flowing back to the loop.
static size_t batch_size(const vk_worker_pool_t *p, size_t queued) {
  size_t share = queued / p->nthreads + (queued % p->nthreads != 0 ? 1u : 0u);
  return share < p->max_batch ? share : p->max_batch;
}

// post hands the finished jobs first..last (`n` of them) to the loop.
static void post(vk_worker_pool_t *p, vk_job_t *first, vk_job_t *last,
                 size_t n) {
  vk__job_list_t done = {first, last};
  last->next = NULL;
  uv_mutex_lock(&p->done_mu);
  list_append(&p->done, &done);
  p->stats.jobs_run += n;
  p->stats.batches++;
  if (n > p->stats.max_batch) {
    p->stats.max_batch = n;
  }
  uv_mutex_unlock(&p->done_mu);
  // One wake-up per post; libuv coalesces sends the loop has not yet seen,
  // and the loop takes every finished job at once.
  (void)uv_async_send(&p->async);
}

// run_batch runs the jobs from `job` on and posts them in order: all at the
// end, or the ones finished so far whenever VK__WORKER_POST_NS has passed.
static void run_batch(vk_worker_pool_t *p, vk_job_t *job) {
  uint64_t last_post = uv_hrtime();
  vk_job_t *first = job;
  size_t n = 0;
  while (job != NULL) {
    job->run(job);
    n++;
    vk_job_t *next = job->next;
    uint64_t now = uv_hrtime();
    if (next == NULL || now - last_post >= VK__WORKER_POST_NS) {
      post(p, first, job, n);
      first = next;
      n = 0;
      last_post = now;
    }
    job = next;
  }
}

static void worker_main(void *arg) {
  vk_worker_pool_t *p = arg;

  uv_mutex_lock(&p->mu);
  for (;;) {
    // A while loop, not an if: wake-ups can be spurious, and another worker
    // may have taken the jobs we were signalled for.
    while (!p->stop && p->queued == 0) {
      p->idle++;
      uv_cond_wait(&p->cond, &p->mu);
      p->idle--;
    }
    // On stop, queued jobs stay where they are: close answers them with
    // VK_ECLOSED rather than make the loop thread wait for them to run.
    if (p->stop) {
      break;
    }

    size_t n = batch_size(p, p->queued);
    vk__job_list_t batch = {p->queue.head, p->queue.head};
    for (size_t i = 1; i < n; i++) {
      batch.tail = batch.tail->next;
    }
    p->queue.head = batch.tail->next;
    if (p->queue.head == NULL) {
      p->queue.tail = NULL;
    }
    batch.tail->next = NULL;
    p->queued -= n;
    uv_mutex_unlock(&p->mu);

    run_batch(p, batch.head);

    uv_mutex_lock(&p->mu);
  }
  uv_mutex_unlock(&p->mu);
}

// deliver_all calls done(job, status) for every job of `l`, popping each
// before its callback so that a done() that closes the pool (and so drains
// `l` itself) never sees a job twice.
static void deliver_all(vk_worker_pool_t *p, vk__job_list_t *l, int status) {
  vk_job_t *job;
  while ((job = list_pop(l)) != NULL) {
    // Count the job done before done() runs, so done() can submit again
    // even at queue_cap. An idle pool must not keep the loop alive.
    if (--p->pending == 0) {
      uv_unref((uv_handle_t *)&p->async);
    }
    job->done(job, status);
  }
}

static void on_prepare(uv_prepare_t *h) {
  vk_worker_pool_t *p = vk_container_of(h, vk_worker_pool_t, prepare);

  // Stopped until the next submit, so an idle pool costs the loop nothing.
  uv_prepare_stop(h);
  if (p->local.head == NULL) {
    return;
  }

  uv_mutex_lock(&p->mu);
  list_append(&p->queue, &p->local);
  p->queued += p->local_len;
  // Wake only as many idle workers as the batches need: busy workers look
  // at the queue again before they sleep.
  size_t per = batch_size(p, p->queued);
  size_t want = p->queued / per + (p->queued % per != 0 ? 1u : 0u);
  size_t wake = want < p->idle ? want : p->idle;
  uv_mutex_unlock(&p->mu);
  p->local_len = 0;

  // Signalled after unlocking so that a woken worker does not block at
  // once on mu. No wake-up is lost: a worker counted in `idle` was already
  // waiting when we took mu, and any other worker checks `queued` under mu
  // before it waits.
  for (size_t i = 0; i < wake; i++) {
    uv_cond_signal(&p->cond);
  }
}

static void on_async(uv_async_t *h) {
  vk_worker_pool_t *p = vk_container_of(h, vk_worker_pool_t, async);

  uv_mutex_lock(&p->done_mu);
  list_append(&p->deliver, &p->done);
  uv_mutex_unlock(&p->done_mu);
  deliver_all(p, &p->deliver, 0);
}

static void on_handle_closed(uv_handle_t *h) {
  vk_worker_pool_t *p = h->data;
  if (--p->pending_closes == 0) {
    uv_cond_destroy(&p->cond);
    uv_mutex_destroy(&p->done_mu);
    uv_mutex_destroy(&p->mu);
    free(p);
  }
}

// stop_threads asks the first `started` workers to exit and joins them.
static void stop_threads(vk_worker_pool_t *p, unsigned started) {
  uv_mutex_lock(&p->mu);
  p->stop = true;
  uv_mutex_unlock(&p->mu);
  uv_cond_broadcast(&p->cond);
  for (unsigned i = 0; i < started; i++) {
    (void)uv_thread_join(&p->threads[i]);
  }
}

int vk_worker_pool_new(vk_worker_pool_t **out, uv_loop_t *loop,
                       const vk_worker_config_t *cfg) {
  static const vk_worker_config_t defaults;  // all zero: every default

  if (out == NULL || loop == NULL) {
    return VK_EINVAL;
  }
  *out = NULL;
  if (cfg == NULL) {
    cfg = &defaults;
  }
  unsigned n = cfg->threads;
  if (n > VK_WORKER_MAX_THREADS) {
    return VK_EINVAL;
  }
  if (n == 0) {
    n = uv_available_parallelism();  // at least 1
    if (n > VK_WORKER_MAX_THREADS) {
      n = VK_WORKER_MAX_THREADS;
    }
  }

  vk_worker_pool_t *p = calloc(1, sizeof(*p) + n * sizeof(uv_thread_t));
  if (p == NULL) {
    return VK_ENOMEM;
  }
  p->loop = loop;
  p->queue_cap =
      cfg->queue_cap != 0 ? cfg->queue_cap : VK__WORKER_DEFAULT_QUEUE_CAP;
  p->max_batch =
      cfg->max_batch != 0 ? cfg->max_batch : VK__WORKER_DEFAULT_MAX_BATCH;
  p->nthreads = n;

  int rv = VK_EIO;
  unsigned started = 0;
  if (uv_mutex_init(&p->mu) != 0) {
    goto fail_mu;
  }
  if (uv_mutex_init(&p->done_mu) != 0) {
    goto fail_done_mu;
  }
  if (uv_cond_init(&p->cond) != 0) {
    goto fail_cond;
  }
  for (; started < n; started++) {
    int err = uv_thread_create(&p->threads[started], worker_main, p);
    if (err != 0) {
      VK_ERROR("worker pool: cannot start thread %u of %u: %s", started + 1, n,
               uv_strerror(err));
      goto fail_threads;
    }
  }
  // The handles come last: once they are on the loop, memory can only be
  // released from a close callback, and nothing after them can fail.
  if (uv_async_init(loop, &p->async, on_async) != 0) {
    goto fail_threads;
  }
  p->async.data = p;
  uv_unref((uv_handle_t *)&p->async);  // referenced only while jobs pending
  (void)uv_prepare_init(loop, &p->prepare);  // always succeeds (libuv docs)
  p->prepare.data = p;

  *out = p;
  return 0;

fail_threads:
  stop_threads(p, started);
  uv_cond_destroy(&p->cond);
fail_cond:
  uv_mutex_destroy(&p->done_mu);
fail_done_mu:
  uv_mutex_destroy(&p->mu);
fail_mu:
  free(p);
  return rv;
}

int vk_worker_submit(vk_worker_pool_t *p, vk_job_t *job) {
  if (p == NULL || job == NULL || job->run == NULL || job->done == NULL) {
    return VK_EINVAL;
  }
  if (p->closing) {
    return VK_ECLOSED;
  }
  if (p->pending >= p->queue_cap) {
    return VK_EBUSY;
  }
  if (p->local.head == NULL) {
    (void)uv_prepare_start(&p->prepare, on_prepare);
  }
  job->next = NULL;
  vk__job_list_t one = {job, job};
  list_append(&p->local, &one);
  p->local_len++;
  if (p->pending++ == 0) {
    uv_ref((uv_handle_t *)&p->async);
  }
  return 0;
}

void vk_worker_pool_close(vk_worker_pool_t *p) {
  if (p == NULL || p->closing) {
    return;
  }
  p->closing = true;
  stop_threads(p, p->nthreads);

  // The workers are gone, and joining them ordered their writes before
  // ours: every list belongs to this thread now. Answer in the order the
  // jobs would have been answered: those that ran (a done() in progress
  // first), then the queue, then this iteration's submissions.
  uv_prepare_stop(&p->prepare);
  list_append(&p->deliver, &p->done);
  deliver_all(p, &p->deliver, 0);
  list_append(&p->queue, &p->local);
  p->queued = 0;
  p->local_len = 0;
  deliver_all(p, &p->queue, VK_ECLOSED);

  p->pending_closes = 2;
  uv_close((uv_handle_t *)&p->async, on_handle_closed);
  uv_close((uv_handle_t *)&p->prepare, on_handle_closed);
}

size_t vk_worker_pending(const vk_worker_pool_t *p) {
  return p->pending;
}

void vk_worker_stats(vk_worker_pool_t *p, vk_worker_stats_t *out) {
  uv_mutex_lock(&p->done_mu);
  *out = p->stats;
  uv_mutex_unlock(&p->done_mu);
}
