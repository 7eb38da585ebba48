// arena.h: one memory pool per call (h2o's pool): many small allocations,
// released together when the call is freed. Also a protobuf-c allocator over
// the pool, so a decoded request lives exactly as long as its call.
#ifndef VK_ARENA_H
#define VK_ARENA_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_arena_chunk_s vk_arena_chunk_t;

// vk_arena_t: the zero value is not usable; call vk_arena_init.
typedef struct vk_arena_s {
  vk_arena_chunk_t *chunks;   // heap chunks, newest first
  unsigned char *inline_buf;  // caller-provided first chunk (may be NULL)
  size_t inline_len;
  size_t used;   // bytes used in the current chunk
  size_t avail;  // bytes left in the current chunk
  unsigned char *cur;
  size_t total;                  // heap bytes held, checked against cap
  size_t cap;                    // most heap bytes this arena may hold
  ProtobufCAllocator allocator;  // allocates from this arena; free is a no-op
} vk_arena_t;

// vk_arena_init prepares `a`, first using the caller's `inline_buf` (which
// must outlive the arena; NULL for none), then heap chunks up to `cap` bytes.
void vk_arena_init(vk_arena_t *a, void *inline_buf, size_t inline_len,
                   size_t cap);

// vk_arena_cleanup frees every heap chunk. The arena may be reused after
// vk_arena_init.
void vk_arena_cleanup(vk_arena_t *a);

// vk_arena_alloc returns `len` zeroed, 16-byte-aligned bytes, or NULL when
// the cap would be exceeded or malloc fails.
void *vk_arena_alloc(vk_arena_t *a, size_t len);

// vk_arena_memdup copies `len` bytes into the arena and adds a NUL after
// them (handy for strings). NULL on failure.
void *vk_arena_memdup(vk_arena_t *a, const void *p, size_t len);

#ifdef __cplusplus
}
#endif

#endif  // VK_ARENA_H
