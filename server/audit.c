// audit.c: the audit trail (see audit.h).
//
// Writing from C is deliberately fire-and-forget: an audit entry of a
// refusal has nothing to commit atomically with, and the caller's answer
// must not wait on (or fail because of) the audit stream. Entries that
// belong to a change are written by the change's own Lua script with
// VK_AUDIT_LUA instead.
#include "audit.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "log.h"

void vk_audit_stream(char *out, const char *vin_or_null) {
  if (vin_or_null == NULL || vin_or_null[0] == '\0') {
    snprintf(out, VK_REDIS_KEY_MAX, "%s", VK_REDIS_AUDIT_GLOBAL);
    return;
  }
  vk_store_vehicle_sub(out, vin_or_null, "audit");
}

void vk_audit_actor(char out[VK_AUDIT_ACTOR_MAX], const vk_identity_t *who) {
  const char *kind = "vehicle";
  if (who->role == VK_ROLE_USER) {
    kind = "user";
  } else if (who->role == VK_ROLE_OPERATOR) {
    kind = "operator";
  }
  snprintf(out, VK_AUDIT_ACTOR_MAX, "%s:%s", kind, who->subject);
}

const char *vk_audit_result(vk_grpc_status_t status) {
  // Indexed by the status number: the names of grpc/doc/statuscodes.md.
  static const char *const kNames[] = {
      "ok",
      "CANCELLED",
      "UNKNOWN",
      "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED",
      "NOT_FOUND",
      "ALREADY_EXISTS",
      "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION",
      "ABORTED",
      "OUT_OF_RANGE",
      "UNIMPLEMENTED",
      "INTERNAL",
      "UNAVAILABLE",
      "DATA_LOSS",
      "UNAUTHENTICATED",
  };
  size_t i = (size_t)status;
  return i < VK_ARRAY_LEN(kNames) ? kNames[i] : "UNKNOWN";
}

static void audit_written(vk_redis_t *r, int status, const redisReply *reply,
                          void *priv) {
  (void)r;
  (void)priv;
  if (status != VK_OK) {
    VK_WARN("audit: entry may be lost: %s", vk_strerror(status));
  } else if (reply->type == REDIS_REPLY_ERROR) {
    VK_WARN("audit: entry lost: %s", reply->str);
  }
}

void vk_audit_record(vk_app_t *app, const char *vin_or_null, const char *actor,
                     const char *op, const char *key_id, const char *result,
                     const char *detail) {
  char stream[VK_REDIS_KEY_MAX];
  vk_audit_stream(stream, vin_or_null);
  char at[24];
  snprintf(at, sizeof(at), "%" PRId64, vk_wall_ms());
  const char *argv[] = {
      "XADD",
      stream,
      "MAXLEN",
      "~",
      VK_AUDIT_MAXLEN,
      "*",
      "at",
      at,
      "actor",
      actor,
      "op",
      op,
      "vin",
      vin_or_null ? vin_or_null : "",
      "key",
      key_id ? key_id : "",
      "result",
      result,
      "detail",
      detail ? detail : "",
  };
  int rv = vk_redis_command_argv(app->redis, audit_written, NULL,
                                 (int)VK_ARRAY_LEN(argv), argv, NULL);
  if (rv != VK_OK) {
    VK_WARN("audit: entry lost (%s %s %s): %s", actor, op, result,
            vk_strerror(rv));
  }
}

bool vk_audit_id_valid(const char *id) {
  // "<ms>-<seq>", both 1-20 decimal digits: what Redis generates.
  size_t ms = strspn(id, "0123456789");
  if (ms == 0 || ms > 20 || id[ms] != '-') {
    return false;
  }
  const char *seq = id + ms + 1;
  size_t n = strspn(seq, "0123456789");
  return n > 0 && n <= 20 && seq[n] == '\0';
}

// Copies a bulk string into the allocator as a NUL-terminated string.
static char *dup_str(ProtobufCAllocator *alloc, const redisReply *r) {
  size_t len = r->type == REDIS_REPLY_STRING ? r->len : 0;
  char *s = alloc->alloc(alloc->allocator_data, len + 1);
  if (s != NULL) {
    if (len > 0) {
      memcpy(s, r->str, len);
    }
    s[len] = '\0';
  }
  return s;
}

// Fills `e` from one stream entry's flat field/value array.
static int entry_fields(ProtobufCAllocator *alloc, Vkey__V1__AuditEntry *e,
                        const redisReply *kv) {
  for (size_t i = 0; i + 1 < kv->elements; i += 2) {
    const redisReply *f = kv->element[i];
    const redisReply *v = kv->element[i + 1];
    if (f->type != REDIS_REPLY_STRING) {
      continue;
    }
    char **dst = NULL;
    if (strcmp(f->str, "actor") == 0) {
      dst = &e->actor;
    } else if (strcmp(f->str, "op") == 0) {
      dst = &e->operation;
    } else if (strcmp(f->str, "vin") == 0) {
      dst = &e->vin;
    } else if (strcmp(f->str, "key") == 0) {
      dst = &e->key_id;
    } else if (strcmp(f->str, "result") == 0) {
      dst = &e->result;
    } else if (strcmp(f->str, "detail") == 0) {
      dst = &e->detail;
    } else if (strcmp(f->str, "at") == 0 && v->type == REDIS_REPLY_STRING) {
      e->at_ms = strtoll(v->str, NULL, 10);
    }
    if (dst != NULL && (*dst = dup_str(alloc, v)) == NULL) {
      return VK_ENOMEM;
    }
  }
  return VK_OK;
}

int vk_audit_entries_from_reply(ProtobufCAllocator *alloc,
                                const redisReply *reply, size_t max,
                                Vkey__V1__AuditEntry ***out, size_t *out_n) {
  *out = NULL;
  *out_n = 0;
  if (reply->type != REDIS_REPLY_ARRAY) {
    return VK_EPROTO;
  }
  size_t n = reply->elements < max ? reply->elements : max;
  if (n == 0) {
    return VK_OK;
  }
  Vkey__V1__AuditEntry **list =
      alloc->alloc(alloc->allocator_data, n * sizeof(*list));
  if (list == NULL) {
    return VK_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    const redisReply *item = reply->element[i];
    if (item->type != REDIS_REPLY_ARRAY || item->elements != 2 ||
        item->element[0]->type != REDIS_REPLY_STRING ||
        item->element[1]->type != REDIS_REPLY_ARRAY) {
      return VK_EPROTO;
    }
    Vkey__V1__AuditEntry *e = alloc->alloc(alloc->allocator_data, sizeof(*e));
    if (e == NULL) {
      return VK_ENOMEM;
    }
    vkey__v1__audit_entry__init(e);
    if ((e->id = dup_str(alloc, item->element[0])) == NULL ||
        entry_fields(alloc, e, item->element[1]) != VK_OK) {
      return VK_ENOMEM;
    }
    list[i] = e;
  }
  *out = list;
  *out_n = n;
  return VK_OK;
}
