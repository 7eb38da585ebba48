// connect.c: see connect.h. One loop, two rpc clients: `chans` holds the
// vehicle channels, `ctl` sends the ApplyKey calls that push events. The
// phases run from timers, never from inside an rpc callback:
//
//   CONNECTING  take assertions from the signer's ring (1 ms poll), open a
//               channel for each; done when every channel is confirmed or
//               failed, or at the timeout
//   SETTLE      1 s, then sample memory (the figure of the scenario)
//   PUSH        one ApplyKey every 1/--push-rate s to vehicles spread over
//               the fleet; wait for the events (at most 10 s after)
//   HOLD        --hold s, then sample again and close everything
#include "connect.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/rand.h>
#include <uv.h>

#include "common.h"
#include "histogram.h"
#include "procstat.h"
#include "report.h"
#include "rpc.h"
#include "vkey/v1/keys.pb-c.h"
#include "vkey/v1/vehicle.pb-c.h"

enum {
  kSettleMs = 1000,
  kPushWaitMs = 10000,
  kCtlStreams = 64,
  kMaxConnecting = 256,
};

typedef enum {
  CH_IDLE,       // not opened yet
  CH_OPENING,    // call queued or in flight, nothing received
  CH_CONFIRMED,  // its first event arrived: the server holds it
  CH_ENDED,
} chan_state_t;

typedef struct bench_s bench_t;

typedef struct {
  bench_t *b;
  uint32_t index;
  chan_state_t state;
  uint64_t max_seq;     // highest event seq received
  uint64_t push_t0;     // uv_hrtime of the pushing ApplyKey; 0: none
  uint64_t push_floor;  // events above this seq answer the push
} chan_t;

typedef enum { PH_CONNECTING, PH_SETTLE, PH_PUSH, PH_HOLD, PH_DONE } phase_t;

typedef struct {
  uint64_t rss_kb;  // vkeyd
  double cpu_s;
  uint64_t redis_used;  // bytes, INFO memory used_memory; 0 if unknown
  uint64_t redis_rss_kb;
  uint64_t self_rss_kb;
  double self_cpu_s;
  uint64_t at_ns;
} sample_t;

struct bench_s {
  uv_loop_t loop;
  const vk_bench_config_t *cfg;
  vk_bench_fleet_t *fleet;
  vk_bench_signer_t *signer;
  vk_bench_rpc_t *chans_rpc;
  vk_bench_rpc_t *ctl;
  struct sockaddr_storage addr;
  struct sockaddr_storage *sources;
  size_t n_sources;
  char redis_addr[4200];
  chan_t *chans;
  uint32_t n;
  uint32_t opened;
  uint32_t confirmed;
  uint32_t failed;
  uint32_t lost;  // ended after being confirmed, before the end
  uint64_t by_status[VK_BENCH_NGRPC_CODES + 1];  // failed, by gRPC status
  char first_error[200];
  phase_t phase;
  uv_timer_t poll;  // the ring, while connecting
  uv_timer_t phase_timer;
  uv_timer_t progress;
  uv_timer_t push_timer;
  uv_signal_t sigint;
  uint64_t start_ns;
  uint64_t confirmed_ns;  // when the last channel was confirmed
  sample_t before, after, held;
  // Pushes.
  uint32_t tried;   // sample positions visited
  uint32_t pushes;  // ApplyKey calls made
  uint32_t delivered;
  uint32_t apply_ok;
  uint32_t apply_failed;
  char apply_error[200];
  vk_hist_t push_lat;   // us, ApplyKey call -> event on the channel
  vk_hist_t apply_lat;  // us, ApplyKey call -> its answer
  char run_id[17];
  int interrupted;
  uint64_t redis_unprovisioned;
};

// --- samples ---------------------------------------------------------------

static void take_sample(bench_t *b, sample_t *s) {
  memset(s, 0, sizeof(*s));
  s->at_ns = uv_hrtime();
  vk_proc_sample_t p;
  if (b->cfg->server_pid > 0 &&
      vk_proc_sample(&p, b->cfg->server_pid) == VK_OK) {
    s->rss_kb = p.rss_kb;
    s->cpu_s = p.cpu_s;
  }
  if (b->cfg->redis_pid > 0 &&
      vk_proc_sample_family(&p, b->cfg->redis_pid) == VK_OK) {
    s->redis_rss_kb = p.rss_kb;
  }
  if (b->redis_addr[0] != '\0') {
    (void)vk_redis_used_memory(&s->redis_used, b->redis_addr);
  }
  if (vk_proc_sample(&p, (int64_t)getpid()) == VK_OK) {
    s->self_rss_kb = p.rss_kb;
  }
  s->self_cpu_s = vk_self_cpu_s();
}

// --- channels --------------------------------------------------------------

static void chan_msg(void *arg, const uint8_t *msg, size_t len) {
  chan_t *ch = arg;
  bench_t *b = ch->b;
  Vkey__V1__KeyEvent *ev = vkey__v1__key_event__unpack(NULL, len, msg);
  if (ev == NULL) {
    return;
  }
  uint64_t seq = ev->seq;
  vkey__v1__key_event__free_unpacked(ev, NULL);
  if (ch->state == CH_OPENING) {
    ch->state = CH_CONFIRMED;
    b->confirmed++;
    if (b->confirmed + b->failed == b->n) {
      b->confirmed_ns = uv_hrtime();
    }
  }
  if (ch->push_t0 != 0 && seq > ch->push_floor) {
    uint64_t now = uv_hrtime();
    vk_hist_record(&b->push_lat, (now - ch->push_t0 + 500) / 1000);
    ch->push_t0 = 0;
    b->delivered++;
  }
  if (seq > ch->max_seq) {
    ch->max_seq = seq;
  }
}

static void chan_done(void *arg, const vk_bench_rpc_result_t *res) {
  chan_t *ch = arg;
  bench_t *b = ch->b;
  if (ch->state == CH_CONFIRMED) {
    if (b->phase != PH_DONE) {
      b->lost++;
      if (b->first_error[0] == '\0') {
        snprintf(
            b->first_error, sizeof(b->first_error),
            "channel of %s ended: %s %s", b->fleet->vehicles[ch->index].vin,
            res->grpc_status < 0 ? "transport"
                                 : vk_bench_grpc_status_name(res->grpc_status),
            res->message);
      }
    }
  } else if (ch->state == CH_OPENING) {
    b->failed++;
    int code = res->grpc_status;
    b->by_status[code >= 0 && code < VK_BENCH_NGRPC_CODES
                     ? code
                     : VK_BENCH_NGRPC_CODES]++;
    if (b->first_error[0] == '\0') {
      snprintf(b->first_error, sizeof(b->first_error), "channel of %s: %s %s",
               b->fleet->vehicles[ch->index].vin,
               code < 0 ? "transport" : vk_bench_grpc_status_name(code),
               res->message);
    }
    if (b->confirmed + b->failed == b->n) {
      b->confirmed_ns = uv_hrtime();
    }
  }
  ch->state = CH_ENDED;
}

static void start_phase(bench_t *b, phase_t p);

// open_some takes every ready assertion from the ring and opens its
// channel.
static void on_poll(uv_timer_t *t) {
  bench_t *b = vk_container_of(t, bench_t, poll);
  vk_bench_ring_t *ring = vk_bench_signer_ring(b->signer);
  const vk_bench_slot_t *slot;
  while (b->opened < b->n && (slot = vk_bench_ring_front(ring)) != NULL) {
    chan_t *ch = &b->chans[slot->tag];
    vk_bench_hdr_t hdr = {slot->hdr_name,
                          (const char *)slot->data + slot->body_len,
                          slot->hdr_len};
    ch->state = CH_OPENING;
    int rv =
        vk_bench_rpc_call(b->chans_rpc, slot->path, &hdr, 1, slot->data + 5,
                          slot->body_len - 5, chan_msg, chan_done, ch);
    vk_bench_ring_pop(ring);
    if (rv != VK_OK) {
      ch->state = CH_ENDED;
      b->failed++;
      snprintf(b->first_error, sizeof(b->first_error), "cannot queue: %s",
               vk_strerror(rv));
    }
    b->opened++;
  }
  if (b->opened == b->n) {
    uv_timer_stop(t);
  }
  if (b->phase == PH_CONNECTING && b->confirmed + b->failed == b->n) {
    start_phase(b, PH_SETTLE);
  }
}

// --- pushes ----------------------------------------------------------------

typedef struct {
  bench_t *b;
  uint64_t t0;
} push_t;

static void push_done(void *arg, const vk_bench_rpc_result_t *res) {
  push_t *p = arg;
  bench_t *b = p->b;
  if (res->grpc_status == 0) {
    b->apply_ok++;
    vk_hist_record(&b->apply_lat, (uv_hrtime() - p->t0 + 500) / 1000);
  } else {
    b->apply_failed++;
    if (b->apply_error[0] == '\0') {
      snprintf(b->apply_error, sizeof(b->apply_error), "ApplyKey: %s %s",
               res->grpc_status < 0
                   ? "transport"
                   : vk_bench_grpc_status_name(res->grpc_status),
               res->message);
    }
  }
  free(p);
}

static int push_one(bench_t *b, chan_t *ch) {
  vk_bench_fleet_t *f = b->fleet;
  vk_bench_vehicle_t *v = &f->vehicles[ch->index];
  char rid[64];
  snprintf(rid, sizeof(rid), "vkb%u-push-%s-%u", f->seed, b->run_id, ch->index);
  Vkey__V1__ApplyKeyRequest req = VKEY__V1__APPLY_KEY_REQUEST__INIT;
  req.request_id = rid;
  req.key_type = VKEY__V1__KEY_TYPE__KEY_TYPE_OWNER;
  req.user_id = f->user_id;
  req.vin = v->vin;
  req.holder_key_algorithm = VKEY__V1__KEY_ALGORITHM__KEY_ALGORITHM_ED25519;
  req.holder_public_key = (ProtobufCBinaryData){32, v->phone.pub};
  uint8_t msg[256];
  size_t len = vkey__v1__apply_key_request__get_packed_size(&req);
  push_t *p = malloc(sizeof(*p));
  if (p == NULL || len > sizeof(msg)) {
    free(p);
    return VK_ENOMEM;
  }
  vkey__v1__apply_key_request__pack(&req, msg);
  vk_bench_hdr_t auth = {"authorization", f->user_auth, f->user_auth_len};
  p->b = b;
  p->t0 = uv_hrtime();
  ch->push_floor = ch->max_seq;
  ch->push_t0 = p->t0;
  int rv = vk_bench_rpc_call(b->ctl, "/vkey.v1.KeyService/ApplyKey", &auth, 1,
                             msg, len, NULL, push_done, p);
  if (rv != VK_OK) {
    ch->push_t0 = 0;
    free(p);
  }
  return rv;
}

static void on_push_timer(uv_timer_t *t) {
  bench_t *b = vk_container_of(t, bench_t, push_timer);
  uint32_t want = b->cfg->params.push;
  if (want > b->n) {
    want = b->n;
  }
  // Vehicles spread evenly over the fleet (and so over the connections);
  // only confirmed channels can answer.
  while (b->tried < want) {
    uint32_t i = (uint32_t)((uint64_t)b->tried * b->n / want);
    b->tried++;
    chan_t *ch = &b->chans[i];
    if (ch->state == CH_CONFIRMED && push_one(b, ch) == VK_OK) {
      b->pushes++;
      return;  // one per tick
    }
  }
  // All issued: on_progress moves on once the events arrived, the phase
  // timer at the latest.
  uv_timer_stop(t);
}

// --- phases ----------------------------------------------------------------

static uint32_t pushes_pending(const bench_t *b) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < b->n; i++) {
    n += b->chans[i].push_t0 != 0;
  }
  return n;
}

static void on_phase_timer(uv_timer_t *t);

static void finish(bench_t *b) {
  b->phase = PH_DONE;
  uv_timer_stop(&b->poll);
  uv_timer_stop(&b->push_timer);
  uv_timer_stop(&b->phase_timer);
  uv_close((uv_handle_t *)&b->poll, NULL);
  uv_close((uv_handle_t *)&b->push_timer, NULL);
  uv_close((uv_handle_t *)&b->phase_timer, NULL);
  uv_close((uv_handle_t *)&b->progress, NULL);
  uv_close((uv_handle_t *)&b->sigint, NULL);
  vk_bench_rpc_close(b->chans_rpc);
  vk_bench_rpc_close(b->ctl);
}

static void start_phase(bench_t *b, phase_t p) {
  b->phase = p;
  uv_timer_stop(&b->phase_timer);
  switch (p) {
    case PH_SETTLE:
      if (b->confirmed_ns == 0) {
        b->confirmed_ns = uv_hrtime();  // the timeout ended connecting
      }
      uv_timer_start(&b->phase_timer, on_phase_timer, kSettleMs, 0);
      break;
    case PH_PUSH:
      take_sample(b, &b->after);
      if (b->cfg->params.push > 0 && b->confirmed > 0) {
        uint64_t every = (uint64_t)(1000.0 / b->cfg->params.push_rate);
        uv_timer_start(&b->push_timer, on_push_timer, 1, every > 0 ? every : 1);
        // The deadline for the whole phase: issuing plus the wait.
        uint64_t issue_ms =
            (uint64_t)(1000.0 * b->cfg->params.push / b->cfg->params.push_rate);
        uv_timer_start(&b->phase_timer, on_phase_timer, issue_ms + kPushWaitMs,
                       0);
      } else {
        start_phase(b, PH_HOLD);
      }
      break;
    case PH_HOLD:
      uv_timer_start(&b->phase_timer, on_phase_timer,
                     (uint64_t)(b->cfg->params.hold_s * 1000), 0);
      break;
    case PH_DONE:
      take_sample(b, &b->held);
      finish(b);
      break;
    default:
      break;
  }
}

static void on_phase_timer(uv_timer_t *t) {
  bench_t *b = vk_container_of(t, bench_t, phase_timer);
  switch (b->phase) {
    case PH_CONNECTING:
      if (!b->cfg->quiet) {
        fprintf(stderr,
                "vkey-bench: connect: timeout with %u of %u channels "
                "confirmed\n",
                b->confirmed, b->n);
      }
      start_phase(b, PH_SETTLE);
      break;
    case PH_SETTLE:
      start_phase(b, PH_PUSH);
      break;
    case PH_PUSH:
      start_phase(b, PH_HOLD);
      break;
    case PH_HOLD:
      start_phase(b, PH_DONE);
      break;
    default:
      break;
  }
}

// While pushing, the phase ends early once every event arrived.
static void on_progress(uv_timer_t *t) {
  bench_t *b = vk_container_of(t, bench_t, progress);
  vk_bench_rpc_stats_t st;
  vk_bench_rpc_stats(b->chans_rpc, &st);
  if (!b->cfg->quiet) {
    fprintf(stderr,
            "vkey-bench: connect: %5.1fs  connections %u ready, %u failed;"
            "  channels %u opened, %u confirmed, %u failed, %u lost;"
            "  pushes %u, delivered %u\n",
            (double)(uv_hrtime() - b->start_ns) / 1e9, st.ready, st.failed,
            b->opened, b->confirmed, b->failed, b->lost, b->pushes,
            b->delivered);
  }
  if (b->phase == PH_CONNECTING && b->confirmed + b->failed == b->n) {
    start_phase(b, PH_SETTLE);
  } else if (b->phase == PH_PUSH &&
             !uv_is_active((uv_handle_t *)&b->push_timer) &&
             pushes_pending(b) == 0) {
    start_phase(b, PH_HOLD);
  }
}

static void on_sigint(uv_signal_t *sig, int signum) {
  bench_t *b = vk_container_of(sig, bench_t, sigint);
  (void)signum;
  b->interrupted = 1;
  if (b->phase != PH_DONE) {
    start_phase(b, PH_DONE);
  }
}

// --- setup and report ------------------------------------------------------

// sources: 127.0.0.2, .3, ... for a loopback IPv4 target; none otherwise.
static int make_sources(bench_t *b) {
  const struct sockaddr_in *to = (const struct sockaddr_in *)&b->addr;
  if (b->addr.ss_family != AF_INET ||
      (ntohl(to->sin_addr.s_addr) >> 24) != 127) {
    return VK_OK;
  }
  b->n_sources = b->cfg->params.sources;
  b->sources = calloc(b->n_sources, sizeof(*b->sources));
  if (b->sources == NULL) {
    return VK_ENOMEM;
  }
  for (size_t i = 0; i < b->n_sources; i++) {
    struct sockaddr_in *a = (struct sockaddr_in *)&b->sources[i];
    a->sin_family = AF_INET;
    a->sin_port = 0;
    a->sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)i);
  }
  return VK_OK;
}

// raise_nofile lifts the soft limit on open files to the hard one.
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static double per_vehicle(int64_t delta_bytes, uint32_t n) {
  return n > 0 ? (double)delta_bytes / (double)n : 0.0;
}

static int64_t kb_delta(uint64_t after, uint64_t before) {
  return ((int64_t)after - (int64_t)before) * 1024;
}

static void report(const bench_t *b) {
  const vk_bench_config_t *cfg = b->cfg;
  double connect_s = (double)(b->confirmed_ns - b->start_ns) / 1e9;
  int64_t srv = kb_delta(b->after.rss_kb, b->before.rss_kb);
  int64_t red = (int64_t)b->after.redis_used - (int64_t)b->before.redis_used;
  int64_t self = kb_delta(b->after.self_rss_kb, b->before.self_rss_kb);
  double srv_cpu = b->after.cpu_s - b->before.cpu_s;
  double self_cpu = b->after.self_cpu_s - b->before.self_cpu_s;
  // Registration, owner and one key per vehicle, as stored: known when
  // the fleet was new (a re-run finds it provisioned already).
  double prov = b->redis_unprovisioned > 0 && b->before.redis_used > 0
                    ? per_vehicle((int64_t)b->before.redis_used -
                                      (int64_t)b->redis_unprovisioned,
                                  b->n)
                    : 0.0;
  const vk_hist_t *pl = &b->push_lat;
  const vk_hist_t *al = &b->apply_lat;
  if (cfg->json) {
    printf(
        "{\"scenario\":\"connect\",\"target\":\"%s\",\"vehicles\":%u,"
        "\"connections\":%u,\"vehicles_per_connection\":%u,"
        "\"sources\":%zu,\"confirmed\":%u,\"failed\":%u,\"lost\":%u,"
        "\"connect_s\":%.3f,\"first_error\":\"",
        cfg->authority, b->n, cfg->connections, cfg->streams, b->n_sources,
        b->confirmed, b->failed, b->lost, connect_s);
    for (const char *p = b->first_error; *p != '\0'; p++) {
      if (*p == '"' || *p == '\\') {
        putchar('\\');
      }
      putchar(*p >= 0x20 && *p < 0x7f ? *p : '?');
    }
    printf(
        "\",\"server\":{\"rss_kb_before\":%llu,\"rss_kb_after\":%llu,"
        "\"rss_kb_held\":%llu,\"bytes_per_vehicle\":%.1f,"
        "\"cpu_s_connecting\":%.3f,\"cpu_us_per_vehicle\":%.1f},",
        (unsigned long long)b->before.rss_kb,
        (unsigned long long)b->after.rss_kb, (unsigned long long)b->held.rss_kb,
        per_vehicle(srv, b->confirmed), srv_cpu,
        b->confirmed > 0 ? srv_cpu * 1e6 / b->confirmed : 0.0);
    printf(
        "\"redis\":{\"used_unprovisioned\":%llu,"
        "\"provisioned_bytes_per_vehicle\":%.1f,\"used_before\":%llu,"
        "\"used_after\":%llu,\"used_held\":%llu,\"bytes_per_vehicle\":%.1f,"
        "\"rss_kb_before\":%llu,\"rss_kb_after\":%llu},",
        (unsigned long long)b->redis_unprovisioned, prov,
        (unsigned long long)b->before.redis_used,
        (unsigned long long)b->after.redis_used,
        (unsigned long long)b->held.redis_used, per_vehicle(red, b->confirmed),
        (unsigned long long)b->before.redis_rss_kb,
        (unsigned long long)b->after.redis_rss_kb);
    printf("\"client\":{\"rss_bytes_per_vehicle\":%.1f,\"cpu_s\":%.3f},",
           per_vehicle(self, b->confirmed), self_cpu);
    printf(
        "\"push\":{\"sent\":%u,\"delivered\":%u,\"apply_ok\":%u,"
        "\"apply_failed\":%u,\"latency_us\":{\"p50\":%llu,\"p90\":%llu,"
        "\"p99\":%llu,\"max\":%llu},\"apply_latency_us\":{\"p50\":%llu,"
        "\"p99\":%llu,\"max\":%llu}}}\n",
        b->pushes, b->delivered, b->apply_ok, b->apply_failed,
        (unsigned long long)vk_hist_percentile(pl, 50),
        (unsigned long long)vk_hist_percentile(pl, 90),
        (unsigned long long)vk_hist_percentile(pl, 99),
        (unsigned long long)vk_hist_percentile(pl, 100),
        (unsigned long long)vk_hist_percentile(al, 50),
        (unsigned long long)vk_hist_percentile(al, 99),
        (unsigned long long)vk_hist_percentile(al, 100));
    return;
  }
  printf(
      "scenario     connect  (%s, %u vehicles on %u connections, %u per "
      "connection, %zu source addresses)\n",
      cfg->authority, b->n, cfg->connections, cfg->streams, b->n_sources);
  printf(
      "channels     %u confirmed, %u failed, %u lost while held; all in "
      "%.1f s\n",
      b->confirmed, b->failed, b->lost, connect_s);
  if (b->failed > 0) {
    printf("failed by    ");
    for (int i = 0; i <= VK_BENCH_NGRPC_CODES; i++) {
      if (b->by_status[i] > 0) {
        printf("%s %llu  ",
               i < VK_BENCH_NGRPC_CODES ? vk_bench_grpc_status_name(i)
                                        : "transport",
               (unsigned long long)b->by_status[i]);
      }
    }
    printf("\n");
  }
  if (b->first_error[0] != '\0') {
    printf("first error  %s\n", b->first_error);
  }
  printf(
      "vkeyd        RSS %llu -> %llu kB: %.0f bytes per vehicle; %.2f s "
      "CPU opening them (%.0f us each); %llu kB after the hold\n",
      (unsigned long long)b->before.rss_kb, (unsigned long long)b->after.rss_kb,
      per_vehicle(srv, b->confirmed), srv_cpu,
      b->confirmed > 0 ? srv_cpu * 1e6 / b->confirmed : 0.0,
      (unsigned long long)b->held.rss_kb);
  if (prov > 0) {
    printf(
        "provisioned  Redis used_memory %llu -> %llu: %.0f bytes per "
        "vehicle registered with its owner and one key\n",
        (unsigned long long)b->redis_unprovisioned,
        (unsigned long long)b->before.redis_used, prov);
  }
  printf(
      "redis        used_memory %llu -> %llu: %.0f bytes per vehicle; "
      "%llu after the hold\n",
      (unsigned long long)b->before.redis_used,
      (unsigned long long)b->after.redis_used, per_vehicle(red, b->confirmed),
      (unsigned long long)b->held.redis_used);
  printf("client       %.0f bytes RSS per vehicle; CPU %.2f s\n",
         per_vehicle(self, b->confirmed), self_cpu);
  printf(
      "push         %u ApplyKey sent (%u ok, %u failed), %u events "
      "delivered; ApplyKey -> event us p50 %llu p90 %llu p99 %llu max "
      "%llu; ApplyKey answered p50 %llu p99 %llu\n",
      b->pushes, b->apply_ok, b->apply_failed, b->delivered,
      (unsigned long long)vk_hist_percentile(pl, 50),
      (unsigned long long)vk_hist_percentile(pl, 90),
      (unsigned long long)vk_hist_percentile(pl, 99),
      (unsigned long long)vk_hist_percentile(pl, 100),
      (unsigned long long)vk_hist_percentile(al, 50),
      (unsigned long long)vk_hist_percentile(al, 99));
  if (b->apply_error[0] != '\0') {
    printf("push error   %s\n", b->apply_error);
  }
}

static int setup(bench_t *b) {
  if (vk_bench_rpc_resolve(&b->addr, b->cfg->host, b->cfg->port) != VK_OK ||
      make_sources(b) != VK_OK) {
    return VK_EUNAVAIL;
  }
  b->chans = calloc(b->n, sizeof(*b->chans));
  if (b->chans == NULL ||
      vk_hist_init(&b->push_lat, VK_HIST_LATENCY_HIGHEST,
                   VK_HIST_LATENCY_SUB_BITS) != VK_OK ||
      vk_hist_init(&b->apply_lat, VK_HIST_LATENCY_HIGHEST,
                   VK_HIST_LATENCY_SUB_BITS) != VK_OK) {
    return VK_ENOMEM;
  }
  for (uint32_t i = 0; i < b->n; i++) {
    b->chans[i] = (chan_t){b, i, CH_IDLE, 0, 0, 0};
  }
  uint8_t rnd[8];
  RAND_bytes(rnd, sizeof(rnd));
  for (size_t i = 0; i < sizeof(rnd); i++) {
    snprintf(b->run_id + 2 * i, 3, "%02x", rnd[i]);
  }
  vk_bench_rpc_config_t rc;
  memset(&rc, 0, sizeof(rc));
  rc.addr = b->addr;
  rc.authority = b->cfg->authority;
  rc.connections = b->cfg->connections;
  rc.streams = b->cfg->streams;
  rc.sources = b->sources;
  rc.n_sources = b->n_sources;
  rc.max_connecting = kMaxConnecting;
  vk_bench_rpc_config_t ctl = rc;
  ctl.connections = 1;
  ctl.streams = kCtlStreams;
  ctl.sources = NULL;
  ctl.n_sources = 0;
  if (vk_bench_rpc_new(&b->chans_rpc, &b->loop, &rc) != VK_OK ||
      vk_bench_rpc_new(&b->ctl, &b->loop, &ctl) != VK_OK) {
    return VK_ENOMEM;
  }
  return VK_OK;
}

void vk_bench_connect_redis_addr(char *out, size_t cap,
                                 const vk_bench_config_t *cfg) {
  out[0] = '\0';
  if (cfg->params.redis != NULL) {
    snprintf(out, cap, "%s", cfg->params.redis);
  } else if (cfg->params.data_dir != NULL) {
    snprintf(out, cap, "%s/redis.sock", cfg->params.data_dir);
  }
}

int vk_bench_connect_run(const vk_bench_config_t *cfg, vk_bench_fleet_t *fleet,
                         vk_bench_signer_t *signer,
                         uint64_t redis_unprovisioned) {
  bench_t *b = calloc(1, sizeof(*b));
  if (b == NULL || uv_loop_init(&b->loop) != 0) {
    free(b);
    return 1;
  }
  b->cfg = cfg;
  b->fleet = fleet;
  b->signer = signer;
  b->n = fleet->n;
  b->redis_unprovisioned = redis_unprovisioned;
  raise_nofile();
  vk_bench_connect_redis_addr(b->redis_addr, sizeof(b->redis_addr), cfg);
  // Before the first connection: the baseline of every memory figure.
  take_sample(b, &b->before);
  int rv = setup(b);
  if (rv != VK_OK) {
    fprintf(stderr, "vkey-bench: connect: %s\n", vk_strerror(rv));
    if (b->chans_rpc != NULL) {
      vk_bench_rpc_close(b->chans_rpc);
    }
    if (b->ctl != NULL) {
      vk_bench_rpc_close(b->ctl);
    }
    uv_run(&b->loop, UV_RUN_DEFAULT);
    (void)uv_loop_close(&b->loop);
    vk_hist_cleanup(&b->push_lat);
    vk_hist_cleanup(&b->apply_lat);
    free(b->chans);
    free(b->sources);
    free(b);
    return rv == VK_EUNAVAIL ? 2 : 1;
  }
  b->start_ns = uv_hrtime();
  uv_timer_init(&b->loop, &b->poll);
  uv_timer_init(&b->loop, &b->phase_timer);
  uv_timer_init(&b->loop, &b->progress);
  uv_timer_init(&b->loop, &b->push_timer);
  uv_signal_init(&b->loop, &b->sigint);
  uv_signal_start(&b->sigint, on_sigint, SIGINT);
  uv_timer_start(&b->poll, on_poll, 0, 1);
  uv_timer_start(&b->progress, on_progress, 1000, 1000);
  // Connecting may take a while at 20,000 vehicles: allow 30 s plus 2 ms
  // per vehicle.
  uv_timer_start(&b->phase_timer, on_phase_timer, 30000 + 2 * (uint64_t)b->n,
                 0);
  uv_run(&b->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&b->loop) != 0) {
    fprintf(stderr, "vkey-bench: warning: handles left open at exit\n");
  }
  report(b);
  int status = b->confirmed == b->n && b->lost == 0 ? 0 : 1;
  if (b->confirmed == 0 && b->failed > 0) {
    fprintf(stderr, "vkey-bench: no channel was confirmed: %s\n",
            b->first_error);
  }
  vk_hist_cleanup(&b->push_lat);
  vk_hist_cleanup(&b->apply_lat);
  free(b->chans);
  free(b->sources);
  free(b);
  return status;
}
