// arena.c: a bump allocator in chunks. Frees nothing until cleanup, which is
// what a request-scoped pool wants: no per-object bookkeeping, one free.
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct vk_arena_chunk_s {
  vk_arena_chunk_t *next;
  size_t len;
  // The payload follows, aligned by the union below.
  union {
    max_align_t align;
    unsigned char bytes[1];
  } data;
};

enum { kAlign = 16, kMinChunk = 4096 };

static void *arena_pb_alloc(void *ctx, size_t len) {
  return vk_arena_alloc(ctx, len);
}

static void arena_pb_free(void *ctx, void *p) {
  // Memory is released with the whole arena.
  (void)ctx;
  (void)p;
}

void vk_arena_init(vk_arena_t *a, void *inline_buf, size_t inline_len,
                   size_t cap) {
  memset(a, 0, sizeof(*a));
  a->cap = cap;
  a->inline_buf = inline_buf;
  a->inline_len = inline_buf != NULL ? inline_len : 0;
  a->cur = inline_buf;
  a->avail = a->inline_len;
  a->allocator.alloc = arena_pb_alloc;
  a->allocator.free = arena_pb_free;
  a->allocator.allocator_data = a;
}

void vk_arena_cleanup(vk_arena_t *a) {
  vk_arena_chunk_t *c = a->chunks;
  while (c != NULL) {
    vk_arena_chunk_t *next = c->next;
    free(c);
    c = next;
  }
  a->chunks = NULL;
  a->cur = a->inline_buf;
  a->avail = a->inline_len;
  a->total = 0;
}

static size_t align_up(size_t n) {
  return (n + (kAlign - 1)) & ~(size_t)(kAlign - 1);
}

void *vk_arena_alloc(vk_arena_t *a, size_t len) {
  if (len == 0) {
    len = 1;
  }
  if (len > SIZE_MAX / 2) {
    return NULL;
  }
  // Align the cursor, then see whether the current chunk has room.
  size_t pad = (size_t)(-(uintptr_t)a->cur & (kAlign - 1));
  if (a->cur != NULL && pad + len <= a->avail) {
    unsigned char *p = a->cur + pad;
    a->cur = p + len;
    a->avail -= pad + len;
    memset(p, 0, len);
    return p;
  }
  size_t want = align_up(len) + kAlign;
  size_t chunk_len = want > kMinChunk ? want : kMinChunk;
  if (a->total + chunk_len > a->cap) {
    chunk_len = want;  // try the smallest chunk that fits before refusing
    if (a->total + chunk_len > a->cap) {
      return NULL;
    }
  }
  vk_arena_chunk_t *c = malloc(offsetof(vk_arena_chunk_t, data) + chunk_len);
  if (c == NULL) {
    return NULL;
  }
  c->len = chunk_len;
  c->next = a->chunks;
  a->chunks = c;
  a->total += chunk_len;
  unsigned char *base = c->data.bytes;
  size_t cpad = (size_t)(-(uintptr_t)base & (kAlign - 1));
  unsigned char *p = base + cpad;
  a->cur = p + len;
  a->avail = chunk_len - cpad - len;
  memset(p, 0, len);
  return p;
}

void *vk_arena_memdup(vk_arena_t *a, const void *p, size_t len) {
  if (len == SIZE_MAX) {
    return NULL;
  }
  unsigned char *out = vk_arena_alloc(a, len + 1);
  if (out != NULL && len > 0) {
    memcpy(out, p, len);
  }
  return out;
}
