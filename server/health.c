// health.c: grpc.health.v1.Health.
//
// The status table is a small array: a server has a handful of named
// services, set by its own code, never by clients. Open Watch calls sit in an
// intrusive list and cost nothing while idle: no timer, no worker, only the
// call itself. Each linked watcher holds a reference to its call, so the
// watcher (allocated in the call's arena) and the call stay valid for as
// long as the list can reach them, whatever order the server and the health
// table are torn down in; unlinking drops that reference.
#include "health.h"

#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "log.h"

// The table is filled by the server, not by clients; the cap only keeps a
// runaway caller from growing it without end.
#define VK_HEALTH_MAX_SERVICES 1024

typedef Grpc__Health__V1__HealthCheckRequest health_req_t;
typedef Grpc__Health__V1__HealthCheckResponse health_resp_t;
typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus health_status_t;

#define HEALTH_SERVING \
  GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define HEALTH_NOT_SERVING \
  GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define HEALTH_SERVICE_UNKNOWN \
  GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

typedef struct health_entry_s {
  char *name;
  bool serving;
} health_entry_t;

// One open Watch call. Lives in the call's arena.
typedef struct health_watch_s {
  struct health_watch_s *next;
  struct health_watch_s **pprev;  // &previous->next or &h->watchers
  vk_health_t *h;
  vk_call_t *call;
  const char *service;  // the request's, valid as long as the call
  int sent;             // last status sent, -1 before the first
  bool pending;         // vk_call_send said EAGAIN: on_writable sends
} health_watch_t;

struct vk_health_s {
  vk_service_t service;  // service.ctx == this
  health_entry_t *entries;
  size_t n_entries;
  size_t cap_entries;
  health_watch_t *watchers;
};

static health_entry_t *health_find(const vk_health_t *h, const char *name) {
  for (size_t i = 0; i < h->n_entries; i++) {
    if (strcmp(h->entries[i].name, name) == 0) {
      return &h->entries[i];
    }
  }
  return NULL;
}

static health_status_t health_status(const vk_health_t *h, const char *name) {
  const health_entry_t *e = health_find(h, name);
  if (e == NULL) {
    return HEALTH_SERVICE_UNKNOWN;
  }
  return e->serving ? HEALTH_SERVING : HEALTH_NOT_SERVING;
}

static const char *req_service(const ProtobufCMessage *msg) {
  const health_req_t *req = (const health_req_t *)msg;
  // proto3 strings decode to "" when absent; NULL only guards a caller bug.
  return req != NULL && req->service != NULL ? req->service : "";
}

// --- watchers ----------------------------------------------------------------

static void watch_link(vk_health_t *h, health_watch_t *w) {
  vk_call_ref(w->call);
  w->next = h->watchers;
  if (w->next != NULL) {
    w->next->pprev = &w->next;
  }
  w->pprev = &h->watchers;
  h->watchers = w;
}

// watch_unlink takes `w` off the list and drops the list's reference to the
// call, which may free `w` with the call's arena: never touch `w` after.
// Idempotent, since both on_cancel and a failed send may get here.
static void watch_unlink(health_watch_t *w) {
  if (w->pprev == NULL) {
    return;
  }
  *w->pprev = w->next;
  if (w->next != NULL) {
    w->next->pprev = w->pprev;
  }
  w->next = NULL;
  w->pprev = NULL;
  vk_call_unref(w->call);
}

// watch_flush sends the service's current status if the client has not seen
// it yet. Only the latest status matters, so a full send queue just leaves
// `pending` set and on_writable calls here again. May unlink `w`.
static void watch_flush(health_watch_t *w) {
  health_status_t status = health_status(w->h, w->service);
  if ((int)status == w->sent) {
    w->pending = false;
    return;
  }
  health_resp_t resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = status;
  int rv = vk_call_send(w->call, &resp.base);
  if (rv == 0) {
    w->sent = (int)status;
    w->pending = false;
    return;
  }
  if (rv == VK_EAGAIN) {
    w->pending = true;
    return;
  }
  // VK_ECLOSED: the call ended and its on_cancel unlinks it too (no-op then);
  // anything else (VK_ENOMEM) cannot get better by waiting.
  if (rv != VK_ECLOSED) {
    vk_log(VK_LOG_WARN, vk_call_id(w->call), "health watch send: %s",
           vk_strerror(rv));
    vk_call_finish(w->call, VK_GRPC_INTERNAL, "cannot send health status");
  }
  watch_unlink(w);
}

// --- handlers
// ------------------------------------------------------------------

static void health_check_start(vk_call_t *call, const ProtobufCMessage *msg) {
  const vk_health_t *h = vk_call_service_ctx(call);
  const health_entry_t *e = health_find(h, req_service(msg));
  if (e == NULL) {
    vk_call_finish(call, VK_GRPC_NOT_FOUND, "unknown service");
    return;
  }
  health_resp_t resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = e->serving ? HEALTH_SERVING : HEALTH_NOT_SERVING;
  int rv = vk_call_send(call, &resp.base);
  if (rv != 0) {
    vk_call_finish(call, VK_GRPC_INTERNAL, vk_strerror(rv));
    return;
  }
  vk_call_finish(call, VK_GRPC_OK, NULL);
}

static void health_watch_start(vk_call_t *call, const ProtobufCMessage *msg) {
  vk_health_t *h = vk_call_service_ctx(call);
  health_watch_t *w = vk_call_alloc(call, sizeof(*w));
  if (w == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->h = h;
  w->call = call;
  w->service = req_service(msg);
  w->sent = -1;
  vk_call_set_data(call, w);
  watch_link(h, w);
  // The current status goes out at once; SERVICE_UNKNOWN for a name not in
  // the table, and the stream stays open in case it is added later.
  watch_flush(w);
}

static void health_watch_cancel(vk_call_t *call) {
  health_watch_t *w = vk_call_data(call);
  if (w != NULL) {
    watch_unlink(w);
  }
}

static void health_watch_writable(vk_call_t *call) {
  health_watch_t *w = vk_call_data(call);
  if (w != NULL && w->pprev != NULL && w->pending) {
    watch_flush(w);
  }
}

static const vk_method_t health_methods[] = {
    {
        .name = "Check",
        .kind = VK_RPC_UNARY,
        .input = &grpc__health__v1__health_check_request__descriptor,
        .output = &grpc__health__v1__health_check_response__descriptor,
        .on_start = health_check_start,
    },
    {
        .name = "Watch",
        .kind = VK_RPC_SERVER_STREAM,
        .input = &grpc__health__v1__health_check_request__descriptor,
        .output = &grpc__health__v1__health_check_response__descriptor,
        .on_start = health_watch_start,
        .on_cancel = health_watch_cancel,
        .on_writable = health_watch_writable,
    },
};

// --- public API
// ----------------------------------------------------------------

int vk_health_new(vk_health_t **out) {
  *out = NULL;
  vk_health_t *h = calloc(1, sizeof(*h));
  if (h == NULL) {
    return VK_ENOMEM;
  }
  h->service.name = "grpc.health.v1.Health";
  h->service.methods = health_methods;
  h->service.n_methods = VK_ARRAY_LEN(health_methods);
  h->service.ctx = h;
  h->entries = calloc(4, sizeof(*h->entries));
  if (h->entries == NULL) {
    goto fail_entries;
  }
  h->cap_entries = 4;
  h->entries[0].name = strdup("");
  if (h->entries[0].name == NULL) {
    goto fail_name;
  }
  h->entries[0].serving = true;
  h->n_entries = 1;
  *out = h;
  return 0;

fail_name:
  free(h->entries);
fail_entries:
  free(h);
  return VK_ENOMEM;
}

void vk_health_free(vk_health_t *h) {
  if (h == NULL) {
    return;
  }
  // Each watcher still linked holds a reference to its call, so finishing
  // it is safe even when its connection is gone (finish is a no-op then).
  while (h->watchers != NULL) {
    health_watch_t *w = h->watchers;
    vk_call_finish(w->call, VK_GRPC_UNAVAILABLE, "health service stopped");
    watch_unlink(w);
  }
  for (size_t i = 0; i < h->n_entries; i++) {
    free(h->entries[i].name);
  }
  free(h->entries);
  free(h);
}

const vk_service_t *vk_health_service(vk_health_t *h) {
  return &h->service;
}

// health_add appends `name` to the table. Returns the entry or NULL.
static health_entry_t *health_add(vk_health_t *h, const char *name) {
  if (h->n_entries == h->cap_entries) {
    if (h->cap_entries >= VK_HEALTH_MAX_SERVICES) {
      return NULL;
    }
    size_t cap = h->cap_entries * 2;
    health_entry_t *entries = realloc(h->entries, cap * sizeof(*entries));
    if (entries == NULL) {
      return NULL;
    }
    h->entries = entries;
    h->cap_entries = cap;
  }
  char *copy = strdup(name);
  if (copy == NULL) {
    return NULL;
  }
  health_entry_t *e = &h->entries[h->n_entries++];
  e->name = copy;
  e->serving = false;
  return e;
}

void vk_health_set_serving(vk_health_t *h, const char *service, bool serving) {
  health_entry_t *e = health_find(h, service);
  if (e == NULL) {
    e = health_add(h, service);
    if (e == NULL) {
      VK_ERROR("health: cannot add service \"%s\"", service);
      return;
    }
  } else if (e->serving == serving) {
    return;
  }
  e->serving = serving;
  VK_INFO("health: \"%s\" is %s", service, serving ? "SERVING" : "NOT_SERVING");
  // watch_flush may unlink (and free) the watcher it is given: step first.
  // It never ends another call: vk_call_send only queues.
  health_watch_t *next;
  for (health_watch_t *w = h->watchers; w != NULL; w = next) {
    next = w->next;
    if (!w->pending && strcmp(w->service, service) == 0) {
      watch_flush(w);
    }
  }
}
