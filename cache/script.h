// script.h: Lua scripts on Redis, sent by hash. EVALSHA sends 40 bytes
// where EVAL sends the whole text and makes Redis hash it on every call; on
// the hot path that is most of a short script's cost. When Redis does not
// know the script (a restart, a failover) it answers NOSCRIPT and the
// command is sent once more as EVAL, which also loads it.
#ifndef VK_SCRIPT_H
#define VK_SCRIPT_H

#include <stddef.h>

#include "redis.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_redis_script_s {
  const char *src;  // the Lua text; must outlive the script
  char sha[41];     // its SHA-1, in hex
} vk_redis_script_t;

// vk_redis_script_init computes the hash of `src`.
void vk_redis_script_init(vk_redis_script_t *s, const char *src);

// vk_redis_eval runs `s` with `nkeys` keys followed by the other arguments
// in `args` (`n_args` strings of `lens` bytes, copied). `cb` runs exactly
// once, as vk_redis_command's does. Returns what vk_redis_command_argv
// returns, or VK_EINVAL / VK_ENOMEM.
int vk_redis_eval(vk_redis_t *r, const vk_redis_script_t *s, vk_redis_cb cb,
                  void *priv, size_t nkeys, size_t n_args, const char **args,
                  const size_t *lens);

#ifdef __cplusplus
}
#endif

#endif  // VK_SCRIPT_H
