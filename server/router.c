// router.c: an open-addressing hash table keyed by the full :path. The table
// is small (tens of methods) and never changes after start-up.
#include "router.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash_path(const char *p, size_t len) {
  // FNV-1a: paths are short and trusted to be few; no need for a keyed hash
  // since the table is fixed and a collision only costs a probe.
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < len; i++) {
    h ^= (unsigned char)p[i];
    h *= 1099511628211ull;
  }
  return h;
}

void vk_router_init(vk_router_t *r) {
  memset(r, 0, sizeof(*r));
}

void vk_router_cleanup(vk_router_t *r) {
  for (size_t i = 0; i < r->n_slots; i++) {
    free(r->slots[i].path);
  }
  free(r->slots);
  free(r->services);
  memset(r, 0, sizeof(*r));
}

static vk_route_t *find_slot(vk_route_t *slots, size_t n_slots,
                             const char *path, size_t len) {
  size_t mask = n_slots - 1;
  for (size_t i = (size_t)hash_path(path, len) & mask;; i = (i + 1) & mask) {
    vk_route_t *s = &slots[i];
    if (s->path == NULL ||
        (s->path_len == len && memcmp(s->path, path, len) == 0)) {
      return s;
    }
  }
}

static int grow(vk_router_t *r, size_t need) {
  if (need * 2 <= r->n_slots) {
    return VK_OK;
  }
  size_t n = r->n_slots ? r->n_slots : 16;
  while (n < need * 2) {
    n *= 2;
  }
  vk_route_t *slots = calloc(n, sizeof(*slots));
  if (slots == NULL) {
    return VK_ENOMEM;
  }
  for (size_t i = 0; i < r->n_slots; i++) {
    if (r->slots[i].path != NULL) {
      *find_slot(slots, n, r->slots[i].path, r->slots[i].path_len) =
          r->slots[i];
    }
  }
  free(r->slots);
  r->slots = slots;
  r->n_slots = n;
  return VK_OK;
}

// Checks a service before anything is inserted, so that a refused service
// leaves no route behind.
static int validate_service(const vk_router_t *r, const vk_service_t *svc) {
  if (svc->name == NULL || svc->name[0] == '\0' || svc->n_methods == 0) {
    return VK_EINVAL;
  }
  for (size_t i = 0; i < r->n_services; i++) {
    if (strcmp(r->services[i]->name, svc->name) == 0) {
      return VK_EINVAL;
    }
  }
  for (size_t i = 0; i < svc->n_methods; i++) {
    const vk_method_t *m = &svc->methods[i];
    if (m->name == NULL || m->name[0] == '\0' || m->on_start == NULL) {
      return VK_EINVAL;
    }
    for (size_t j = 0; j < i; j++) {
      if (strcmp(svc->methods[j].name, m->name) == 0) {
        return VK_EINVAL;
      }
    }
  }
  return VK_OK;
}

int vk_router_add(vk_router_t *r, const vk_service_t *svc) {
  int rv = validate_service(r, svc);
  if (rv != VK_OK) {
    return rv;
  }
  const vk_service_t **services =
      realloc(r->services, (r->n_services + 1) * sizeof(*services));
  if (services == NULL) {
    return VK_ENOMEM;
  }
  r->services = services;
  rv = grow(r, r->n_routes + svc->n_methods);
  if (rv != VK_OK) {
    return rv;
  }
  // Build every path first: an allocation failure then changes nothing.
  char **paths = calloc(svc->n_methods, sizeof(*paths));
  if (paths == NULL) {
    return VK_ENOMEM;
  }
  for (size_t i = 0; i < svc->n_methods; i++) {
    size_t len = strlen(svc->name) + strlen(svc->methods[i].name) + 2;
    paths[i] = malloc(len + 1);
    if (paths[i] == NULL) {
      for (size_t j = 0; j < i; j++) {
        free(paths[j]);
      }
      free(paths);
      return VK_ENOMEM;
    }
    snprintf(paths[i], len + 1, "/%s/%s", svc->name, svc->methods[i].name);
  }
  for (size_t i = 0; i < svc->n_methods; i++) {
    size_t len = strlen(paths[i]);
    vk_route_t *slot = find_slot(r->slots, r->n_slots, paths[i], len);
    slot->path = paths[i];
    slot->path_len = len;
    slot->service = svc;
    slot->method = &svc->methods[i];
    r->n_routes++;
  }
  free(paths);
  r->services[r->n_services++] = svc;
  return VK_OK;
}

const vk_route_t *vk_router_find(const vk_router_t *r, const char *path,
                                 size_t len) {
  if (r->n_slots == 0) {
    return NULL;
  }
  const vk_route_t *s = find_slot(r->slots, r->n_slots, path, len);
  return s->path != NULL ? s : NULL;
}

int vk_router_has_service(const vk_router_t *r, const char *path, size_t len) {
  if (len < 2 || path[0] != '/') {
    return 0;
  }
  const char *slash = memchr(path + 1, '/', len - 1);
  size_t name_len = slash ? (size_t)(slash - path - 1) : len - 1;
  for (size_t i = 0; i < r->n_services; i++) {
    const char *name = r->services[i]->name;
    if (strlen(name) == name_len && memcmp(name, path + 1, name_len) == 0) {
      return 1;
    }
  }
  return 0;
}
