// client.c: the load generator's event loop.
//
// One thread, one libuv loop, -c connections each with its own nghttp2
// client session and a fixed array of -m stream slots (no allocation per
// request). Bytes move through nghttp2's mem_recv/mem_send: a read is fed to
// the session, then new requests are submitted and the session's output is
// written with at most one uv_write in flight per connection.
//
// Closed loop: each connection keeps min(-m, the server's
// MAX_CONCURRENT_STREAMS) calls in flight; latency runs from submission.
// Open loop (--rate): a schedule (schedule.h) hands out requests at their
// intended times, woken by a timerfd (libuv timers have 1 ms resolution,
// too coarse at 100k req/s); latency runs from the intended time, so a
// request that waits for a free stream is charged for the wait.
//
// Requests come from a prebuilt pool or from signer threads' rings
// (signer.h). A ring request is copied into its stream slot when taken, so
// the ring slot is free at once. An empty ring (the signers fell behind)
// is polled every millisecond and counted: the client is then the
// bottleneck, and the report says so.
//
// Operations of several calls (share: Authorize, then Redeem): a stream
// slot holds the whole operation. When a call succeeds, the source's
// `next` builds the following call from its response (in the slot's own
// buffer) and the slot waits on its connection's `chained` list, still in
// use, until the read callback submits it after nghttp2 returns. The
// operation is counted once, when its last call ends, with its latency
// from its start; in open loop only operations are scheduled.
//
// Timeline: CONNECTING (until every server SETTINGS arrived) -> WARMUP ->
// MEASURE (the window; only calls completing in it are counted) -> DONE.
// Nothing is torn down inside an nghttp2 callback (STYLE rule 9): callbacks
// only record results and set flags; the read/write/timer callbacks that
// called nghttp2 act on the flags afterwards.
#include "client.h"

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "common.h"
#include "procstat.h"
#include "schedule.h"

#define CONNECT_TIMEOUT_MS 5000
#define DRAIN_TIMEOUT_MS 500
#define READ_BUF_SIZE (256 * 1024)
// Output collected per write: past this, nghttp2 keeps the rest until the
// write completes (STYLE rule 7).
#define WRITE_BATCH_CAP (64 * 1024)
// HTTP/2 flow-control windows, as h2load's defaults (-w 30 -W 30), so that
// the h2load cross-check compares like with like.
#define WINDOW_SIZE ((1 << 30) - 1)
// A signed request older than this is not sent: its proof timestamp or
// session expiry would be too close to the service's limits (30 s).
#define MAX_REQUEST_AGE_NS (20ull * 1000 * 1000 * 1000)
#define MAX_HEADERS 16

typedef enum {
  PHASE_CONNECTING,
  PHASE_WARMUP,
  PHASE_MEASURE,
  PHASE_DONE,
} phase_t;

typedef struct bench_s bench_t;
typedef struct conn_s conn_t;

typedef struct stream_s {
  conn_t *conn;
  struct stream_s *next_free;
  vk_bench_req_t req;  // body (and hdr value) in the pool or in `own`
  vk_bench_buf_t own;  // this call's copy of a ring request
  int prepared;        // `req` is filled, the slot not yet submitted
  uint64_t start_ns;   // intended (open loop) or submission time
  size_t sent;         // request body bytes given to nghttp2
  int in_use;
  uint32_t step;             // the call's place in its operation, from 0
  uint64_t step_ns;          // the call's own start
  struct stream_s *chained;  // next on the connection's `chained` list
  int http_status;           // :status, 0 until seen
  int grpc_status;           // -1 until seen
  int resp_over_cap;         // the response body exceeded VK_BENCH_MAX_MESSAGE
  char grpc_message[64];     // start of grpc-message, for the first error
  vk_bench_buf_t resp;
} stream_t;

struct conn_s {
  uv_tcp_t tcp;  // tcp.data == this
  uv_connect_t connect_req;
  uv_write_t write_req;
  bench_t *bench;
  nghttp2_session *h2;
  stream_t *streams;  // -m slots
  stream_t *free_list;
  stream_t *chained;     // slots whose operation's next call waits
  uint32_t max_streams;  // min(-m, server's limit), once ready
  uint32_t inflight;
  int open;             // tcp initialised and not yet closed
  int closing;          // uv_close called
  int ready;            // the server's SETTINGS arrived
  int goaway;           // no new streams on this connection
  int writing;          // write_req in flight
  int draining;         // GOAWAY sent at shutdown: close after the last write
  int dirty;            // has submissions not yet flushed
  vk_bench_buf_t out;   // bytes being collected
  vk_bench_buf_t wbuf;  // bytes being written
  // Per signer ring, where this connection's search for its next request
  // resumes: the slots before it are other connections' (take_signed).
  uint64_t *cursor;
};

struct bench_s {
  uv_loop_t loop;
  const vk_bench_config_t *cfg;
  const vk_bench_source_t *src;
  vk_bench_result_t *res;
  nghttp2_session_callbacks *cbs;
  nghttp2_option *opt;
  struct sockaddr_storage addr;
  conn_t *conns;
  uint32_t nconns;
  uint32_t nopen;   // conns whose tcp handle is not closed yet
  uint32_t nready;  // conns that got SETTINGS
  uint32_t nalive;  // conns not lost
  phase_t phase;
  int shutting_down;
  uint64_t seq;         // next pool index
  uint64_t inflight;    // calls in flight, all connections
  uint64_t free_slots;  // stream slots usable now, all ready connections
  uint64_t done_in_window;
  // Timers and their timerfd.
  uv_timer_t phase_timer;  // connect timeout, warm-up end, window end, drain
  uv_timer_t progress_timer;
  uv_signal_t sigint;
  uv_poll_t sched_poll;
  uv_timer_t starve_timer;  // polls the rings while they are empty
  int starved;
  uint32_t next_ring;
  uint64_t taken;  // requests taken from the rings
  uint64_t dry;    // times every ring was empty when a stream was free
  uint64_t stale;
  uint64_t signed0;  // signer totals at the window's start
  double signer_cpu0;
  uint64_t taken0;
  uint64_t dry0;
  uint64_t stale0;
  int timer_fd;
  int open_loop;
  vk_sched_t sched;
  uint32_t rr;  // open loop: the next connection to try
  conn_t **dirty;
  uint32_t ndirty;
  // Samples at the window's start.
  uint64_t window_start_ns;
  double client_cpu0;
  vk_machine_sample_t machine0;
  vk_proc_sample_t server0;
  vk_proc_sample_t redis0;
  // Progress: the current one-second interval.
  vk_hist_t interval;
  uint64_t interval_ok;
  uint64_t interval_failed;
  uint64_t phase_start_ns;
  int warned_streams;
  // Outcome of the run.
  int rv;
  char *err;
  size_t errlen;
  uint8_t *rbuf;  // one read buffer: reads are consumed before the next
};

static void set_error(bench_t *b, int rv, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// set_error keeps the first failure of the run.
static void set_error(bench_t *b, int rv, const char *fmt, ...) {
  if (b->rv != 0) {
    return;
  }
  b->rv = rv;
  if (b->errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, b->errlen, fmt, ap);
    va_end(ap);
  }
}

static void note_first_error(bench_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void note_first_error(bench_t *b, const char *fmt, ...) {
  if (b->res->first_error[0] != '\0' || b->phase != PHASE_MEASURE) {
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b->res->first_error, sizeof(b->res->first_error), fmt, ap);
  va_end(ap);
}

static void bench_shutdown(bench_t *b);
static void forget_cursors(bench_t *b);
static void conn_flush(conn_t *c);
static void sched_dispatch(bench_t *b);

// --- the measured window ---------------------------------------------------

static void begin_window(bench_t *b);

// signer_totals sums the signer threads' counters and ring levels.
static void signer_totals(const bench_t *b, uint64_t *made, double *cpu_s,
                          uint32_t *level, uint32_t *capacity) {
  *made = 0;
  *cpu_s = 0;
  *level = 0;
  *capacity = 0;
  for (size_t i = 0; i < b->src->n_signers; i++) {
    vk_bench_signer_stats_t st;
    vk_bench_signer_stats(b->src->signers[i], &st);
    vk_bench_ring_t *ring = vk_bench_signer_ring(b->src->signers[i]);
    *made += st.made;
    *cpu_s += st.cpu_s;
    *level += vk_bench_ring_level(ring);
    *capacity += vk_bench_ring_capacity(ring);
  }
}

static void end_window(bench_t *b) {
  if (b->phase != PHASE_MEASURE) {
    b->phase = PHASE_DONE;
    return;
  }
  vk_bench_result_t *r = b->res;
  r->elapsed_s = (double)(uv_hrtime() - b->window_start_ns) / 1e9;
  r->client_cpu_s = vk_self_cpu_s() - b->client_cpu0;
  vk_machine_sample_t m1;
  if (vk_machine_sample(&m1) == VK_OK) {
    r->machine_busy_cores = vk_machine_busy_cores(&b->machine0, &m1);
    r->steal_cores = vk_machine_steal_cores(&b->machine0, &m1);
    r->ncpu = m1.ncpu;
  }
  if (b->cfg->server_pid > 0) {
    vk_proc_sample_t s1;
    if (vk_proc_sample(&s1, b->cfg->server_pid) == VK_OK) {
      r->has_server = 1;
      r->server_cpu_s = s1.cpu_s - b->server0.cpu_s;
      r->server_loops_cpu_s =
          s1.loop_threads_cpu_s - b->server0.loop_threads_cpu_s;
      r->server_rss_kb_before = b->server0.rss_kb;
      r->server_rss_kb_after = s1.rss_kb;
      r->server_hwm_kb = s1.hwm_kb;
    } else {
      fprintf(stderr, "vkey-bench: warning: server pid %lld is gone\n",
              (long long)b->cfg->server_pid);
    }
  }
  if (b->cfg->redis_pid > 0) {
    vk_proc_sample_t s1;
    if (vk_proc_sample_family(&s1, b->cfg->redis_pid) == VK_OK) {
      r->has_redis = 1;
      r->redis_cpu_s = s1.cpu_s - b->redis0.cpu_s;
      r->redis_rss_kb_before = b->redis0.rss_kb;
      r->redis_rss_kb_after = s1.rss_kb;
    }
  }
  r->unfinished = b->inflight;
  r->taken_total = b->taken;
  if (b->src->n_signers > 0) {
    uint64_t made;
    double cpu_s;
    r->has_signers = 1;
    r->signers = (uint32_t)b->src->n_signers;
    signer_totals(b, &made, &cpu_s, &r->ring_end, &r->ring_capacity);
    r->signed_in_window = made - b->signed0;
    r->signer_cpu_s = cpu_s - b->signer_cpu0;
    r->taken_in_window = b->taken - b->taken0;
    r->ring_dry = b->dry - b->dry0;
    r->stale = b->stale - b->stale0;
  }
  b->phase = PHASE_DONE;
}

static void on_window_timer(uv_timer_t *t) {
  bench_t *b = vk_container_of(t, bench_t, phase_timer);
  end_window(b);
  bench_shutdown(b);
}

static void begin_window(bench_t *b) {
  b->phase = PHASE_MEASURE;
  b->phase_start_ns = uv_hrtime();
  b->client_cpu0 = vk_self_cpu_s();
  (void)vk_machine_sample(&b->machine0);
  if (b->cfg->server_pid > 0 &&
      vk_proc_sample(&b->server0, b->cfg->server_pid) != VK_OK) {
    fprintf(stderr, "vkey-bench: warning: cannot read /proc/%lld\n",
            (long long)b->cfg->server_pid);
  }
  if (b->cfg->redis_pid > 0) {
    (void)vk_proc_sample_family(&b->redis0, b->cfg->redis_pid);
  }
  if (b->src->n_signers > 0) {
    uint32_t cap;
    signer_totals(b, &b->signed0, &b->signer_cpu0, &b->res->ring_start, &cap);
    b->taken0 = b->taken;
    b->dry0 = b->dry;
    b->stale0 = b->stale;
  }
  b->window_start_ns = uv_hrtime();
  if (b->cfg->duration_s > 0) {
    uv_timer_start(&b->phase_timer, on_window_timer,
                   (uint64_t)(b->cfg->duration_s * 1000 + 0.5), 0);
  }
}

static void on_warmup_timer(uv_timer_t *t) {
  bench_t *b = vk_container_of(t, bench_t, phase_timer);
  begin_window(b);
}

// --- recording one finished call -------------------------------------------

typedef enum { OUT_OK, OUT_GRPC, OUT_HTTP, OUT_BAD } outcome_t;

// classify judges a finished call; for a good one `*out_msg`/`*out_len`
// view its response message (in s->resp).
static outcome_t classify(bench_t *b, stream_t *s, uint32_t error_code,
                          int *out_code, const char **out_why,
                          const uint8_t **out_msg, size_t *out_len) {
  const char *why = "bad gRPC framing";
  *out_code = 0;
  if (error_code != NGHTTP2_NO_ERROR) {
    note_first_error(b, "stream reset: %s", nghttp2_http2_strerror(error_code));
    return OUT_HTTP;
  }
  if (s->http_status != 200) {
    note_first_error(b, "HTTP :status %d", s->http_status);
    return OUT_HTTP;
  }
  if (s->grpc_status < 0) {
    note_first_error(b, "response without grpc-status");
    return OUT_HTTP;
  }
  if (s->grpc_status != 0) {
    *out_code = s->grpc_status;
    note_first_error(b, "grpc-status %d %s: %s", s->grpc_status,
                     vk_bench_grpc_status_name(s->grpc_status),
                     s->grpc_message);
    return OUT_GRPC;
  }
  if (s->resp_over_cap) {
    note_first_error(b, "response body over %u bytes", VK_BENCH_MAX_MESSAGE);
    return OUT_BAD;
  }
  const uint8_t *msg;
  size_t len;
  if (vk_bench_grpc_unframe(&msg, &len, &why, s->resp.data, s->resp.len) !=
          VK_OK ||
      b->cfg->scenario->check(&why, s->req.path, msg, len) != VK_OK) {
    note_first_error(b, "bad response: %s", why);
    *out_why = why;
    return OUT_BAD;
  }
  *out_msg = msg;
  *out_len = len;
  return OUT_OK;
}

static void record(bench_t *b, outcome_t o, int code, const char *why,
                   uint64_t latency_us) {
  if (o == OUT_OK) {
    b->interval_ok++;
    vk_hist_record(&b->interval, latency_us);
  } else {
    b->interval_failed++;
  }
  if (b->phase != PHASE_MEASURE) {
    return;  // warm-up, or after the window
  }
  vk_bench_result_t *r = b->res;
  switch (o) {
    case OUT_OK:
      r->ok++;
      vk_hist_record(&r->latency, latency_us);
      break;
    case OUT_GRPC:
      if (code > 0 && code < VK_BENCH_NGRPC_CODES) {
        r->grpc_errors[code]++;
      } else {
        r->grpc_other++;
      }
      break;
    case OUT_HTTP:
      r->http_errors++;
      break;
    case OUT_BAD:
      vk_bench_result_bad(r, why != NULL ? why : "unknown");
      break;
  }
  b->done_in_window++;
  if (b->cfg->requests > 0 && b->done_in_window >= b->cfg->requests) {
    end_window(b);  // only samples; the shutdown waits for a safe place
  }
}

static void release_slot(conn_t *c, stream_t *s) {
  bench_t *b = c->bench;
  s->in_use = 0;
  s->next_free = c->free_list;
  c->free_list = s;
  c->inflight--;
  b->inflight--;
  if (c->ready && !c->goaway && !c->closing) {
    b->free_slots++;
  }
}

// --- nghttp2 callbacks: record, never tear down ----------------------------

static ssize_t on_data_source_read(nghttp2_session *session, int32_t stream_id,
                                   uint8_t *buf, size_t length,
                                   uint32_t *data_flags,
                                   nghttp2_data_source *source,
                                   void *user_data) {
  stream_t *s = source->ptr;
  (void)session;
  (void)stream_id;
  (void)user_data;
  size_t left = s->req.body_len - s->sent;
  size_t n = left < length ? left : length;
  memcpy(buf, s->req.body + s->sent, n);
  s->sent += n;
  if (s->sent == s->req.body_len) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  }
  return (ssize_t)n;
}

static int parse_small_int(const uint8_t *v, size_t len) {
  if (len == 0 || len > 4) {
    return 1000;  // not a code we know: counted as "other"
  }
  int n = 0;
  for (size_t i = 0; i < len; i++) {
    if (v[i] < '0' || v[i] > '9') {
      return 1000;
    }
    n = n * 10 + (v[i] - '0');
  }
  return n;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame,
                     const uint8_t *name, size_t namelen, const uint8_t *value,
                     size_t valuelen, uint8_t flags, void *user_data) {
  (void)flags;
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS) {
    return 0;
  }
  stream_t *s =
      nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (s == NULL) {
    return 0;
  }
  if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
    s->http_status = parse_small_int(value, valuelen);
  } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
    s->grpc_status = parse_small_int(value, valuelen);
  } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
    size_t n = valuelen < sizeof(s->grpc_message) - 1
                   ? valuelen
                   : sizeof(s->grpc_message) - 1;
    memcpy(s->grpc_message, value, n);
    s->grpc_message[n] = '\0';
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags,
                         int32_t stream_id, const uint8_t *data, size_t len,
                         void *user_data) {
  (void)flags;
  (void)user_data;
  stream_t *s = nghttp2_session_get_stream_user_data(session, stream_id);
  if (s == NULL || s->resp_over_cap) {
    return 0;
  }
  if (vk_bench_buf_append(&s->resp, data, len) != VK_OK) {
    s->resp_over_cap = 1;  // judged when the stream closes
  }
  return 0;
}

static uint64_t us_since(uint64_t start_ns, uint64_t now) {
  return now > start_ns ? (now - start_ns + 500) / 1000 : 0;
}

// step_next handles a successful call of an operation of several calls:
// records its step's latency and builds the next call into the slot.
// Returns 0 (the slot is chained), VK_ENOTFOUND (the operation is done) or
// a failure with `*out_why`.
static int step_next(conn_t *c, stream_t *s, uint64_t now, const uint8_t *msg,
                     size_t len, const char **out_why) {
  bench_t *b = c->bench;
  const vk_bench_source_t *src = b->src;
  if (b->phase == PHASE_MEASURE) {
    vk_bench_result_step(b->res, s->step, s->req.path,
                         us_since(s->step_ns, now));
  }
  vk_bench_req_t next;
  memset(&next, 0, sizeof(next));
  // The response stays in s->resp; the next body goes to s->own, where
  // the finished call's request was.
  int rv =
      src->next(src->next_ctx, &s->own, &next, out_why, s->req.path, msg, len);
  if (rv != VK_OK) {
    if (rv != VK_ENOTFOUND && rv != VK_EPROTO) {
      *out_why = "cannot build the operation's next call";
    }
    return rv;
  }
  s->req = next;
  s->step++;
  s->chained = c->chained;
  c->chained = s;
  return VK_OK;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id,
                           uint32_t error_code, void *user_data) {
  conn_t *c = user_data;
  stream_t *s = nghttp2_session_get_stream_user_data(session, stream_id);
  if (s == NULL || !s->in_use) {
    return 0;
  }
  uint64_t now = uv_hrtime();
  uint64_t latency_us = us_since(s->start_ns, now);
  int code;
  const char *why = NULL;
  const uint8_t *msg = NULL;
  size_t len = 0;
  outcome_t o = classify(c->bench, s, error_code, &code, &why, &msg, &len);
  if (o == OUT_OK && c->bench->src->next != NULL) {
    int rv = step_next(c, s, now, msg, len, &why);
    if (rv == VK_OK) {
      return 0;  // sent by conn_chain once nghttp2 has returned
    }
    if (rv != VK_ENOTFOUND) {
      note_first_error(c->bench, "bad response: %s", why);
      o = OUT_BAD;
    }
  }
  // Release first, so that a window ended by this call (-n) does not count
  // it as unfinished. The slot's data stays intact until it is reused,
  // which never happens inside this callback.
  release_slot(c, s);
  record(c->bench, o, code, why, latency_us);
  return 0;
}

static void on_conn_ready(conn_t *c);

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                         void *user_data) {
  conn_t *c = user_data;
  (void)session;
  if (frame->hd.type == NGHTTP2_SETTINGS &&
      !(frame->hd.flags & NGHTTP2_FLAG_ACK) && !c->ready) {
    on_conn_ready(c);
  } else if (frame->hd.type == NGHTTP2_GOAWAY && !c->goaway) {
    c->goaway = 1;
    forget_cursors(c->bench);
    if (c->ready && !c->closing) {
      c->bench->free_slots -= c->max_streams - c->inflight;
    }
  }
  return 0;
}

// --- connections -----------------------------------------------------------

static void on_conn_ready(conn_t *c) {
  bench_t *b = c->bench;
  uint32_t limit = nghttp2_session_get_remote_settings(
      c->h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  c->ready = 1;
  c->max_streams = b->cfg->streams < limit ? b->cfg->streams : limit;
  if (c->max_streams == 0) {
    c->max_streams = 1;  // a server that allows none would stall us forever
  }
  if (limit < b->cfg->streams && !b->warned_streams) {
    b->warned_streams = 1;
    fprintf(stderr,
            "vkey-bench: warning: the server allows %u concurrent streams per "
            "connection; using %u instead of -m %u\n",
            limit, c->max_streams, b->cfg->streams);
  }
  if (b->res->server_max_streams == 0 || limit < b->res->server_max_streams) {
    b->res->server_max_streams = limit;
  }
  if (!c->goaway) {
    b->free_slots += c->max_streams - c->inflight;
  }
  b->nready++;
}

static void mark_dirty(conn_t *c) {
  if (!c->dirty) {
    c->dirty = 1;
    c->bench->dirty[c->bench->ndirty++] = c;
  }
}

static void flush_dirty(bench_t *b) {
  for (uint32_t i = 0; i < b->ndirty; i++) {
    b->dirty[i]->dirty = 0;
    conn_flush(b->dirty[i]);
  }
  b->ndirty = 0;
}

// may_issue says whether one more request may start now.
static int may_issue(const bench_t *b) {
  if (b->phase != PHASE_WARMUP && b->phase != PHASE_MEASURE) {
    return 0;
  }
  if (b->cfg->requests > 0 && b->phase == PHASE_MEASURE &&
      b->done_in_window + b->inflight >= b->cfg->requests) {
    return 0;  // the calls in flight complete the count
  }
  return 1;
}

static int conn_usable(const conn_t *c) {
  return c->ready && !c->goaway && !c->closing && c->h2 != NULL &&
         c->inflight < c->max_streams;
}

static void on_starve_timer(uv_timer_t *t);

// fill_from_slot copies a ring request into `s`. Returns 0 or VK_ENOMEM.
static int fill_from_slot(stream_t *s, const vk_bench_slot_t *slot) {
  s->own.len = 0;
  if (vk_bench_buf_append(&s->own, slot->data,
                          slot->body_len + slot->hdr_len) != VK_OK) {
    return VK_ENOMEM;
  }
  s->req.path = slot->path;
  s->req.body = s->own.data;
  s->req.body_len = slot->body_len;
  s->req.hdr = (vk_bench_hdr_t){slot->hdr_name,
                                (const char *)s->own.data + slot->body_len,
                                slot->hdr_len};
  return VK_OK;
}

static int is_stale(const vk_bench_slot_t *slot, uint64_t now) {
  return now > slot->made_ns && now - slot->made_ns > MAX_REQUEST_AGE_NS;
}

// Whether a ring request is for `c`: in the session of one of its
// vehicles (vehicle i on connection i mod -c), or in none, or of a vehicle
// whose connection can take no more calls (a car that lost its connection
// reconnects).
static int is_for(const bench_t *b, const vk_bench_slot_t *slot,
                  const conn_t *c) {
  if (slot->vehicle == 0) {
    return 1;
  }
  const conn_t *home = &b->conns[(slot->vehicle - 1) % b->nconns];
  return home == c || !home->open || home->closing || home->goaway;
}

// A connection stopped taking calls: its vehicles' requests are now for
// the others, which must look again at what they passed over.
static void forget_cursors(bench_t *b) {
  for (uint32_t i = 0; i < b->nconns; i++) {
    memset(b->conns[i].cursor, 0,
           (b->src->n_signers + 1) * sizeof(*b->conns[i].cursor));
  }
}

// take_signed fills `s` with the oldest fresh request for its connection,
// taken out of order from the rings: other connections' requests stay for
// them, so each vehicle's calls go out in order on one connection.
// Returns 0, or VK_EAGAIN when there is none (the poll timer then retries).
static int take_signed(bench_t *b, stream_t *s) {
  const vk_bench_source_t *src = b->src;
  conn_t *c = s->conn;
  uint64_t now = uv_hrtime();
  for (size_t n = 0; n < src->n_signers; n++) {
    size_t k = (b->next_ring + n) % src->n_signers;
    vk_bench_ring_t *ring = vk_bench_signer_ring(src->signers[k]);
    uint64_t i = vk_bench_ring_tail(ring);
    if (c->cursor[k] > i) {
      i = c->cursor[k];
    }
    const vk_bench_slot_t *slot;
    for (; (slot = vk_bench_ring_at(ring, i)) != NULL; i++) {
      if (slot->consumed) {
        continue;
      }
      if (is_stale(slot, now)) {
        vk_bench_ring_consume(ring, i);
        b->stale++;
        continue;
      }
      if (is_for(b, slot, c)) {
        break;
      }
    }
    c->cursor[k] = i;
    if (slot == NULL) {
      continue;
    }
    int rv = fill_from_slot(s, slot);
    if (rv != VK_OK) {
      return rv;
    }
    vk_bench_ring_consume(ring, i);
    c->cursor[k] = i + 1;
    b->next_ring = (uint32_t)((k + 1) % src->n_signers);
    b->taken++;
    return VK_OK;
  }
  if (!b->starved && !b->shutting_down) {
    b->starved = 1;
    b->dry++;
    uv_timer_start(&b->starve_timer, on_starve_timer, 1, 0);
  }
  return VK_EAGAIN;
}

// conn_prepare fills the next free stream slot's request. Returns 0, or
// VK_EAGAIN when the signers have none ready (nothing was consumed: the
// open-loop schedule keeps its slot).
static int conn_prepare(conn_t *c) {
  bench_t *b = c->bench;
  stream_t *s = c->free_list;
  if (s->prepared) {
    return VK_OK;
  }
  if (b->src->pool != NULL) {
    s->req = b->src->pool->reqs[b->seq % b->src->pool->n];
  } else {
    int rv = take_signed(b, s);
    if (rv != VK_OK) {
      return rv;
    }
  }
  s->prepared = 1;
  return VK_OK;
}

// submit_call queues slot `s`'s request on the connection's session and
// resets the slot's per-call state. Returns the stream id, or a negative
// nghttp2 error (stream ids exhausted, out of memory): the connection
// then takes no new calls.
static int32_t submit_call(conn_t *c, stream_t *s) {
  bench_t *b = c->bench;
  const vk_bench_config_t *cfg = b->cfg;
  const vk_bench_source_t *src = b->src;
  const vk_bench_req_t *req = &s->req;
#define VK_NV(n, v, vlen)                                         \
  (nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), strlen(n), (vlen), \
               NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE}
  // Names and values outlive the HEADERS frame: static strings, the pool,
  // the source, the config and the stream's own copy (NO_COPY saves
  // nghttp2 a copy per request).
  nghttp2_nv nva[MAX_HEADERS];
  size_t n = 0;
  nva[n++] = VK_NV(":method", "POST", 4);
  nva[n++] = VK_NV(":scheme", "http", 4);
  nva[n++] = VK_NV(":path", req->path, strlen(req->path));
  nva[n++] = VK_NV(":authority", cfg->authority, strlen(cfg->authority));
  nva[n++] = VK_NV("content-type", "application/grpc", 16);
  nva[n++] = VK_NV("te", "trailers", 8);
  nva[n++] = VK_NV("user-agent", "vkey-bench/0.1", 14);
  for (size_t i = 0; i < src->n_hdrs && n < MAX_HEADERS - 1; i++) {
    nva[n++] =
        VK_NV(src->hdrs[i].name, src->hdrs[i].value, src->hdrs[i].value_len);
  }
  if (req->hdr.name != NULL) {
    // A request's own credential (a session tag, an assertion) is new in
    // every request: indexing it would only push the headers that do
    // repeat out of both ends' HPACK tables, as gRPC's encoders know.
    nva[n] = VK_NV(req->hdr.name, req->hdr.value, req->hdr.value_len);
    nva[n++].flags |= NGHTTP2_NV_FLAG_NO_INDEX;
  }
#undef VK_NV
  nghttp2_data_provider prd;
  prd.source.ptr = s;
  prd.read_callback = on_data_source_read;
  s->sent = 0;
  s->http_status = 0;
  s->grpc_status = -1;
  s->resp_over_cap = 0;
  s->grpc_message[0] = '\0';
  s->resp.len = 0;
  int32_t id = nghttp2_submit_request(c->h2, NULL, nva, n, &prd, s);
  if (id < 0) {
    // Stream ids exhausted (2^31 per connection) or out of memory: stop
    // using this connection for new calls.
    if (!c->goaway) {
      c->goaway = 1;
      b->free_slots -= c->max_streams - c->inflight;
      forget_cursors(b);
    }
    note_first_error(b, "cannot submit a request: %s", nghttp2_strerror(id));
  }
  return id;
}

// conn_submit sends the prepared request of the next free stream slot: the
// first call of an operation starting at `start_ns`.
static int conn_submit(conn_t *c, uint64_t start_ns) {
  bench_t *b = c->bench;
  stream_t *s = c->free_list;
  if (submit_call(c, s) < 0) {
    return VK_EIO;
  }
  s->start_ns = start_ns;
  s->step_ns = start_ns;
  s->step = 0;
  b->seq++;
  s->prepared = 0;
  c->free_list = s->next_free;
  s->in_use = 1;
  c->inflight++;
  b->inflight++;
  b->free_slots--;
  mark_dirty(c);
  return VK_OK;
}

// conn_chain sends the next call of every operation that continues on
// this connection (step_next queued them). Their slots stay in use: the
// operation keeps its place in the closed loop, and in open loop it is
// not scheduled again. Not inside an nghttp2 callback.
static void conn_chain(conn_t *c) {
  bench_t *b = c->bench;
  while (c->chained != NULL) {
    stream_t *s = c->chained;
    c->chained = s->chained;
    s->chained = NULL;
    if (b->shutting_down ||
        (b->phase != PHASE_WARMUP && b->phase != PHASE_MEASURE)) {
      release_slot(c, s);  // the window is over: counted as unfinished
      continue;
    }
    if (c->goaway || c->closing || c->h2 == NULL || submit_call(c, s) < 0) {
      note_first_error(b,
                       "connection closing: an operation's next call "
                       "could not be sent");
      release_slot(c, s);
      record(b, OUT_HTTP, 0, NULL, 0);
      continue;
    }
    s->step_ns = uv_hrtime();
    mark_dirty(c);
  }
}

// conn_fill keeps a closed-loop connection's streams busy.
static void conn_fill(conn_t *c) {
  uint64_t now = uv_hrtime();
  while (conn_usable(c) && may_issue(c->bench)) {
    if (conn_prepare(c) != VK_OK || conn_submit(c, now) != VK_OK) {
      break;
    }
  }
}

// requests_exhausted: a prebuilt run's signers have all finished and every
// ring is empty: no request will come any more.
static int requests_exhausted(const bench_t *b) {
  if (b->cfg->params.prebuild == 0 || b->src->n_signers == 0) {
    return 0;
  }
  for (size_t i = 0; i < b->src->n_signers; i++) {
    vk_bench_signer_stats_t st;
    vk_bench_signer_stats(b->src->signers[i], &st);
    if (!st.finished ||
        vk_bench_ring_level(vk_bench_signer_ring(b->src->signers[i])) > 0) {
      return 0;
    }
  }
  return 1;
}

// ran_out ends a prebuilt run whose requests are all sent: the window is
// cut short there (its rate is still the rate it measured), or, before the
// window, the run fails.
static void ran_out(bench_t *b) {
  if (b->phase == PHASE_MEASURE) {
    b->res->ran_out = 1;
    b->res->ran_out_s = (double)(uv_hrtime() - b->window_start_ns) / 1e9;
    end_window(b);
  } else {
    set_error(b, VK_EINVAL,
              "the %u prebuilt requests ran out before the measured window: "
              "give --prebuild more",
              b->cfg->params.prebuild);
  }
  bench_shutdown(b);
}

static void on_starve_timer(uv_timer_t *t) {
  bench_t *b = vk_container_of(t, bench_t, starve_timer);
  b->starved = 0;
  if (b->shutting_down) {
    return;
  }
  if (requests_exhausted(b)) {
    ran_out(b);
    return;
  }
  if (b->open_loop) {
    sched_dispatch(b);
  } else {
    for (uint32_t i = 0; i < b->nconns; i++) {
      conn_fill(&b->conns[i]);
    }
    flush_dirty(b);
  }
}

static void conn_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  bench_t *b = c->bench;
  nghttp2_session_del(c->h2);
  c->h2 = NULL;
  for (uint32_t i = 0; i < b->cfg->streams; i++) {
    vk_bench_buf_cleanup(&c->streams[i].resp);
    vk_bench_buf_cleanup(&c->streams[i].own);
  }
  vk_bench_buf_cleanup(&c->out);
  vk_bench_buf_cleanup(&c->wbuf);
  c->open = 0;
  b->nopen--;
  if (b->shutting_down && b->nopen == 0 &&
      !uv_is_closing((uv_handle_t *)&b->phase_timer)) {
    uv_close((uv_handle_t *)&b->phase_timer, NULL);
  }
}

static void conn_close(conn_t *c) {
  if (c->closing || !c->open) {
    return;
  }
  if (c->ready && !c->goaway) {
    c->bench->free_slots -= c->max_streams - c->inflight;
  }
  c->closing = 1;
  forget_cursors(c->bench);
  uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

// conn_lost ends a connection that broke. Calls in flight on it count as
// HTTP-level failures. Before the run starts, losing any connection is
// fatal: the target is down or is not an h2c server.
static void conn_lost(conn_t *c, const char *why) {
  bench_t *b = c->bench;
  if (c->closing) {
    return;
  }
  if (b->phase == PHASE_CONNECTING) {
    set_error(b, VK_EUNAVAIL,
              "%s: %s (is it a gRPC server speaking cleartext HTTP/2?)",
              b->cfg->authority, why);
    bench_shutdown(b);
    return;
  }
  if (!b->shutting_down) {
    fprintf(stderr, "vkey-bench: connection to %s lost: %s\n",
            b->cfg->authority, why);
  }
  c->chained = NULL;  // those slots are in use: failed below
  for (uint32_t i = 0; i < b->cfg->streams; i++) {
    stream_t *s = &c->streams[i];
    if (s->in_use) {
      note_first_error(b, "connection lost: %s", why);
      release_slot(c, s);
      record(b, OUT_HTTP, 0, NULL, 0);
    }
  }
  conn_close(c);
  if (--b->nalive == 0 && !b->shutting_down) {
    end_window(b);
    set_error(b, VK_ECLOSED, "every connection to %s was lost (%s)",
              b->cfg->authority, why);
  }
  if (b->phase == PHASE_DONE && !b->shutting_down) {
    bench_shutdown(b);  // the window ended (-n reached or all lost)
  }
}

static void on_write(uv_write_t *req, int status) {
  conn_t *c = vk_container_of(req, conn_t, write_req);
  c->writing = 0;
  c->wbuf.len = 0;
  if (c->closing) {
    return;
  }
  if (status < 0) {
    conn_lost(c, uv_strerror(status));
    return;
  }
  conn_flush(c);
}

// conn_flush writes whatever nghttp2 has queued, one write at a time.
static void conn_flush(conn_t *c) {
  if (c->writing || c->closing || c->h2 == NULL) {
    return;
  }
  while (c->out.len < WRITE_BATCH_CAP) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(c->h2, &data);
    if (n < 0) {
      conn_lost(c, nghttp2_strerror((int)n));
      return;
    }
    if (n == 0) {
      break;
    }
    if (vk_bench_buf_append(&c->out, data, (size_t)n) != VK_OK) {
      conn_lost(c, "out of memory");
      return;
    }
  }
  if (c->out.len == 0) {
    if (c->draining) {
      conn_close(c);  // GOAWAY is out: done
    }
    return;
  }
  vk_bench_buf_t tmp = c->wbuf;
  c->wbuf = c->out;
  c->out = tmp;
  c->out.len = 0;
  uv_buf_t buf = uv_buf_init((char *)c->wbuf.data, (unsigned)c->wbuf.len);
  int rv = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
  if (rv != 0) {
    c->wbuf.len = 0;
    conn_lost(c, uv_strerror(rv));
    return;
  }
  c->writing = 1;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn_t *c = h->data;
  (void)suggested;
  *buf = uv_buf_init((char *)c->bench->rbuf, READ_BUF_SIZE);
}

static void start_load(bench_t *b);

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = stream->data;
  bench_t *b = c->bench;
  if (nread == 0 || c->closing) {
    return;
  }
  if (nread < 0) {
    conn_lost(
        c, nread == UV_EOF ? "closed by the server" : uv_strerror((int)nread));
    return;
  }
  uint32_t was_ready = b->nready;
  ssize_t rv = nghttp2_session_mem_recv(c->h2, (const uint8_t *)buf->base,
                                        (size_t)nread);
  if (rv < 0) {
    conn_lost(c, nghttp2_strerror((int)rv));
    return;
  }
  if (b->phase == PHASE_DONE && !b->shutting_down) {
    bench_shutdown(b);  // -n reached inside a callback
  }
  conn_chain(c);
  if (b->phase == PHASE_CONNECTING && b->nready == b->nconns &&
      was_ready != b->nready) {
    start_load(b);  // the last SETTINGS arrived
  } else if (b->open_loop) {
    sched_dispatch(b);  // completions freed slots for overdue requests
  } else {
    conn_fill(c);
  }
  mark_dirty(c);
  flush_dirty(b);
  if (!c->closing && c->h2 != NULL && !nghttp2_session_want_read(c->h2) &&
      !nghttp2_session_want_write(c->h2)) {
    conn_lost(c, c->ready ? "the HTTP/2 session ended (GOAWAY)"
                          : "no HTTP/2 SETTINGS from the server");
  }
}

static void on_connect(uv_connect_t *req, int status) {
  conn_t *c = vk_container_of(req, conn_t, connect_req);
  bench_t *b = c->bench;
  if (status == UV_ECANCELED || c->closing) {
    return;
  }
  if (status < 0) {
    set_error(b, VK_EUNAVAIL, "cannot connect to %s: %s (is the server up?)",
              b->cfg->authority, uv_strerror(status));
    bench_shutdown(b);
    return;
  }
  (void)uv_tcp_nodelay(&c->tcp, 1);
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_SIZE},
  };
  if (nghttp2_session_client_new2(&c->h2, b->cbs, c, b->opt) != 0) {
    c->h2 = NULL;
    set_error(b, VK_ENOMEM, "nghttp2_session_client_new2 failed");
    bench_shutdown(b);
    return;
  }
  if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, VK_ARRAY_LEN(iv)) !=
          0 ||
      nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
                                            WINDOW_SIZE) != 0) {
    set_error(b, VK_ENOMEM, "cannot queue the HTTP/2 SETTINGS");
    bench_shutdown(b);
    return;
  }
  int rv = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rv != 0) {
    conn_lost(c, uv_strerror(rv));
    return;
  }
  conn_flush(c);
}

// --- open loop -------------------------------------------------------------

static conn_t *pick_conn(bench_t *b) {
  if (b->free_slots == 0) {
    return NULL;
  }
  for (uint32_t i = 0; i < b->nconns; i++) {
    conn_t *c = &b->conns[(b->rr + i) % b->nconns];
    if (conn_usable(c)) {
      b->rr = (b->rr + i + 1) % b->nconns;
      return c;
    }
  }
  return NULL;
}

static void sched_arm(bench_t *b, uint64_t at_ns) {
  struct itimerspec its;
  memset(&its, 0, sizeof(its));
  if (at_ns == 0) {
    at_ns = 1;  // zero would disarm the timer
  }
  its.it_value.tv_sec = (time_t)(at_ns / 1000000000u);
  its.it_value.tv_nsec = (long)(at_ns % 1000000000u);
  (void)timerfd_settime(b->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void sched_dispatch(bench_t *b) {
  uint64_t now = uv_hrtime();
  while (may_issue(b) && vk_sched_next_due(&b->sched) <= now) {
    conn_t *c = pick_conn(b);
    if (c == NULL) {
      break;  // backlog: completions call us again
    }
    if (conn_prepare(c) != VK_OK) {
      break;  // backlog: the signers are behind; the poll timer retries
    }
    uint64_t intended;
    if (!vk_sched_take(&b->sched, &intended, now)) {
      break;
    }
    if (conn_submit(c, intended) != VK_OK) {
      break;
    }
  }
  uint64_t backlog = vk_sched_overdue(&b->sched, now);
  if (b->phase == PHASE_MEASURE && backlog > b->res->max_backlog) {
    b->res->max_backlog = backlog;
  }
  flush_dirty(b);
  if (backlog == 0 && may_issue(b)) {
    sched_arm(b, vk_sched_next_due(&b->sched));
  }
}

static void on_sched_timer(uv_poll_t *p, int status, int events) {
  bench_t *b = vk_container_of(p, bench_t, sched_poll);
  uint64_t expirations;
  (void)status;
  (void)events;
  // Non-blocking: EAGAIN when a re-arm raced the wake-up.
  (void)!read(b->timer_fd, &expirations, sizeof(expirations));
  sched_dispatch(b);
}

// --- phases, progress, shutdown --------------------------------------------

static const char *phase_name(phase_t p) {
  switch (p) {
    case PHASE_CONNECTING:
      return "connecting";
    case PHASE_WARMUP:
      return "warm-up";
    case PHASE_MEASURE:
      return "measure";
    case PHASE_DONE:
      return "done";
  }
  return "?";
}

static void on_progress(uv_timer_t *t) {
  bench_t *b = vk_container_of(t, bench_t, progress_timer);
  if (!b->cfg->quiet && b->phase != PHASE_CONNECTING) {
    double secs = (double)(uv_hrtime() - b->phase_start_ns) / 1e9;
    fprintf(stderr,
            "vkey-bench: %-7s %5.1fs  %8llu req/s  p50 %5llu us  p99 %6llu us"
            "  errors %llu  in flight %llu\n",
            phase_name(b->phase), secs, (unsigned long long)b->interval_ok,
            (unsigned long long)vk_hist_percentile(&b->interval, 50),
            (unsigned long long)vk_hist_percentile(&b->interval, 99),
            (unsigned long long)b->interval_failed,
            (unsigned long long)b->inflight);
  }
  b->interval_ok = 0;
  b->interval_failed = 0;
  vk_hist_reset(&b->interval);
}

static void on_connect_timeout(uv_timer_t *t) {
  bench_t *b = vk_container_of(t, bench_t, phase_timer);
  set_error(b, VK_EUNAVAIL,
            "%s: %u of %u connections ready after %d ms (is it an h2c "
            "server?)",
            b->cfg->authority, b->nready, b->nconns, CONNECT_TIMEOUT_MS);
  bench_shutdown(b);
}

static void start_load(bench_t *b) {
  uv_timer_stop(&b->phase_timer);
  b->phase_start_ns = uv_hrtime();
  if (b->cfg->warmup_s > 0) {
    b->phase = PHASE_WARMUP;
    uv_timer_start(&b->phase_timer, on_warmup_timer,
                   (uint64_t)(b->cfg->warmup_s * 1000 + 0.5), 0);
  } else {
    begin_window(b);
  }
  if (b->open_loop) {
    (void)vk_sched_init(&b->sched, uv_hrtime(), b->cfg->rate, UINT64_MAX);
    sched_dispatch(b);
  } else {
    for (uint32_t i = 0; i < b->nconns; i++) {
      conn_fill(&b->conns[i]);
    }
    flush_dirty(b);
  }
}

static void on_drain_timeout(uv_timer_t *t) {
  bench_t *b = vk_container_of(t, bench_t, phase_timer);
  for (uint32_t i = 0; i < b->nconns; i++) {
    conn_close(&b->conns[i]);
  }
  if (b->nopen == 0 && !uv_is_closing((uv_handle_t *)t)) {
    uv_close((uv_handle_t *)t, NULL);
  }
}

static void on_sched_poll_closed(uv_handle_t *h) {
  bench_t *b = vk_container_of(h, bench_t, sched_poll);
  close(b->timer_fd);
  b->timer_fd = -1;
}

// bench_shutdown stops new work, says GOAWAY on every session and closes
// every handle; uv_run returns when the last one is closed. Idempotent. Not
// to be called inside an nghttp2 callback.
static void bench_shutdown(bench_t *b) {
  if (b->shutting_down) {
    return;
  }
  end_window(b);
  b->shutting_down = 1;
  if (!uv_is_closing((uv_handle_t *)&b->progress_timer)) {
    uv_close((uv_handle_t *)&b->progress_timer, NULL);
  }
  if (!uv_is_closing((uv_handle_t *)&b->sigint)) {
    uv_close((uv_handle_t *)&b->sigint, NULL);
  }
  if (!uv_is_closing((uv_handle_t *)&b->starve_timer)) {
    uv_close((uv_handle_t *)&b->starve_timer, NULL);
  }
  if (b->open_loop && !uv_is_closing((uv_handle_t *)&b->sched_poll)) {
    uv_close((uv_handle_t *)&b->sched_poll, on_sched_poll_closed);
  }
  for (uint32_t i = 0; i < b->nconns; i++) {
    conn_t *c = &b->conns[i];
    if (!c->open || c->closing) {
      continue;
    }
    if (c->ready && c->h2 != NULL) {
      // A polite GOAWAY so the server does not log a broken connection.
      (void)nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
      c->draining = 1;
      conn_flush(c);
    } else {
      conn_close(c);
    }
  }
  uv_timer_stop(&b->phase_timer);
  if (b->nopen == 0) {
    uv_close((uv_handle_t *)&b->phase_timer, NULL);
  } else {
    uv_timer_start(&b->phase_timer, on_drain_timeout, DRAIN_TIMEOUT_MS, 0);
  }
}

static void on_sigint(uv_signal_t *sig, int signum) {
  bench_t *b = vk_container_of(sig, bench_t, sigint);
  (void)signum;
  fprintf(stderr, "vkey-bench: interrupted: reporting what was measured\n");
  end_window(b);
  bench_shutdown(b);
}

// --- setup -----------------------------------------------------------------

static int resolve(bench_t *b) {
  struct addrinfo hints;
  struct addrinfo *ai = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  int rv = getaddrinfo(b->cfg->host, b->cfg->port, &hints, &ai);
  if (rv != 0 || ai == NULL) {
    set_error(b, VK_EUNAVAIL, "cannot resolve '%s': %s", b->cfg->host,
              gai_strerror(rv));
    return VK_EUNAVAIL;
  }
  memcpy(&b->addr, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  return VK_OK;
}

// raise_fd_limit makes room for -c sockets plus the loop's own descriptors.
static int raise_fd_limit(bench_t *b) {
  struct rlimit rl;
  rlim_t need = (rlim_t)b->nconns + 64;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need) {
    return VK_OK;
  }
  if (rl.rlim_max < need) {
    set_error(b, VK_EINVAL,
              "-c %u needs %llu open files, the hard limit is %llu", b->nconns,
              (unsigned long long)need, (unsigned long long)rl.rlim_max);
    return VK_EINVAL;
  }
  rl.rlim_cur = need;
  (void)setrlimit(RLIMIT_NOFILE, &rl);
  return VK_OK;
}

static int setup_nghttp2(bench_t *b) {
  if (nghttp2_session_callbacks_new(&b->cbs) != 0) {
    return VK_ENOMEM;
  }
  nghttp2_session_callbacks_set_on_header_callback(b->cbs, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(b->cbs,
                                                            on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(b->cbs,
                                                         on_stream_close);
  nghttp2_session_callbacks_set_on_frame_recv_callback(b->cbs, on_frame_recv);
  if (nghttp2_option_new(&b->opt) != 0) {
    return VK_ENOMEM;
  }
  // Explicit limits (STYLE rule 7): no server push, a small HPACK encoder
  // table, and nghttp2's flood guards at their documented defaults.
  nghttp2_option_set_max_reserved_remote_streams(b->opt, 0);
  nghttp2_option_set_max_deflate_dynamic_table_size(b->opt, 4096);
  nghttp2_option_set_max_outbound_ack(b->opt, 1000);
  nghttp2_option_set_max_settings(b->opt, 32);
  return VK_OK;
}

static int setup_conns(bench_t *b) {
  b->conns = calloc(b->nconns, sizeof(*b->conns));
  b->dirty = calloc(b->nconns, sizeof(*b->dirty));
  if (b->conns == NULL || b->dirty == NULL) {
    return VK_ENOMEM;
  }
  for (uint32_t i = 0; i < b->nconns; i++) {
    conn_t *c = &b->conns[i];
    c->bench = b;
    c->streams = calloc(b->cfg->streams, sizeof(*c->streams));
    c->cursor = calloc(b->src->n_signers + 1, sizeof(*c->cursor));
    if (c->streams == NULL || c->cursor == NULL) {
      return VK_ENOMEM;
    }
    for (uint32_t j = b->cfg->streams; j-- > 0;) {
      c->streams[j].conn = c;
      c->streams[j].next_free = c->free_list;
      c->free_list = &c->streams[j];
    }
  }
  return VK_OK;
}

static void connect_all(bench_t *b) {
  for (uint32_t i = 0; i < b->nconns && !b->shutting_down; i++) {
    conn_t *c = &b->conns[i];
    int rv = uv_tcp_init(&b->loop, &c->tcp);
    if (rv != 0) {
      set_error(b, VK_EIO, "uv_tcp_init: %s", uv_strerror(rv));
      bench_shutdown(b);
      return;
    }
    c->tcp.data = c;
    c->open = 1;
    b->nopen++;
    b->nalive++;
    rv = uv_tcp_connect(&c->connect_req, &c->tcp,
                        (const struct sockaddr *)&b->addr, on_connect);
    if (rv != 0) {
      set_error(b, VK_EUNAVAIL, "cannot connect to %s: %s", b->cfg->authority,
                uv_strerror(rv));
      bench_shutdown(b);
      return;
    }
  }
}

static void bench_free(bench_t *b) {
  if (b->conns != NULL) {
    for (uint32_t i = 0; i < b->nconns; i++) {
      free(b->conns[i].streams);
      free(b->conns[i].cursor);
    }
  }
  free(b->conns);
  free(b->dirty);
  free(b->rbuf);
  vk_hist_cleanup(&b->interval);
  nghttp2_session_callbacks_del(b->cbs);
  nghttp2_option_del(b->opt);
}

int vk_bench_run(vk_bench_result_t *out, char *err, size_t errlen,
                 const vk_bench_config_t *cfg, const vk_bench_source_t *src) {
  bench_t *b = calloc(1, sizeof(*b));
  if (b == NULL) {
    return VK_ENOMEM;
  }
  b->cfg = cfg;
  b->src = src;
  b->res = out;
  b->err = err;
  b->errlen = errlen;
  b->nconns = cfg->connections;
  b->open_loop = cfg->rate > 0;
  b->timer_fd = -1;
  if (errlen > 0) {
    err[0] = '\0';
  }
  if (cfg->scenario->kind != VK_BENCH_KIND_RPC ||
      (src->pool == NULL && src->n_signers == 0)) {
    set_error(b, VK_EINVAL, "scenario %s: not a request-rate scenario",
              cfg->scenario->name);
    goto done;
  }
  int rv = resolve(b);
  if (rv == VK_OK) {
    rv = raise_fd_limit(b);
  }
  if (rv != VK_OK) {
    goto done;
  }
  b->rbuf = malloc(READ_BUF_SIZE);
  if (b->rbuf == NULL || setup_nghttp2(b) != VK_OK || setup_conns(b) != VK_OK ||
      vk_hist_init(&b->interval, VK_HIST_LATENCY_HIGHEST,
                   VK_HIST_LATENCY_SUB_BITS) != VK_OK) {
    set_error(b, VK_ENOMEM, "out of memory");
    goto done;
  }
  if (uv_loop_init(&b->loop) != 0) {
    set_error(b, VK_EIO, "uv_loop_init failed");
    goto done;
  }
  if (b->open_loop) {
    // Wake-ups within a few µs of the intended time, not the default 50 µs
    // timer slack.
    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    b->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (b->timer_fd < 0 ||
        uv_poll_init(&b->loop, &b->sched_poll, b->timer_fd) != 0) {
      set_error(b, VK_EIO, "timerfd: %s", strerror(errno));
      if (b->timer_fd >= 0) {
        close(b->timer_fd);
      }
      b->open_loop = 0;
      (void)uv_loop_close(&b->loop);
      goto done;
    }
    (void)uv_poll_start(&b->sched_poll, UV_READABLE, on_sched_timer);
  }
  uv_timer_init(&b->loop, &b->phase_timer);
  uv_timer_init(&b->loop, &b->progress_timer);
  uv_timer_init(&b->loop, &b->starve_timer);
  uv_signal_init(&b->loop, &b->sigint);
  uv_signal_start(&b->sigint, on_sigint, SIGINT);
  uv_timer_start(&b->phase_timer, on_connect_timeout, CONNECT_TIMEOUT_MS, 0);
  uv_timer_start(&b->progress_timer, on_progress, 1000, 1000);
  connect_all(b);
  uv_run(&b->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&b->loop) != 0) {
    fprintf(stderr, "vkey-bench: warning: handles left open at exit\n");
  }

done:
  rv = b->rv;
  bench_free(b);
  free(b);
  return rv;
}
