// script.c: EVALSHA with an EVAL fallback (see script.h).
#include "script.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "common.h"

#define MAX_ARGS 64

void vk_redis_script_init(vk_redis_script_t *s, const char *src) {
  uint8_t d[SHA_DIGEST_LENGTH];
  SHA1((const uint8_t *)src, strlen(src), d);
  vk_hex_encode(s->sha, d, sizeof(d));
  s->src = src;
}

// One EVAL in flight: the arguments are copied so that a NOSCRIPT answer
// can resend them after the caller's buffers are gone.
typedef struct {
  const vk_redis_script_t *script;
  vk_redis_cb cb;
  void *priv;
  int argc;
  const char *argv[MAX_ARGS + 3];
  size_t argvlen[MAX_ARGS + 3];
  char nkeys[24];
  bool resent;
  char data[];  // the copied arguments
} eval_t;

static int eval_send(vk_redis_t *r, eval_t *e);

static void on_reply(vk_redis_t *r, int status, const redisReply *reply,
                     void *priv) {
  eval_t *e = priv;
  if (status == VK_OK && !e->resent && reply->type == REDIS_REPLY_ERROR &&
      strncmp(reply->str, "NOSCRIPT", 8) == 0) {
    e->resent = true;
    e->argv[0] = "EVAL";
    e->argvlen[0] = 4;
    e->argv[1] = e->script->src;
    e->argvlen[1] = strlen(e->script->src);
    int rv = eval_send(r, e);
    if (rv == VK_OK) {
      return;
    }
    status = rv;
    reply = NULL;
  }
  e->cb(r, status, reply, e->priv);
  free(e);
}

static int eval_send(vk_redis_t *r, eval_t *e) {
  return vk_redis_command_argv(r, on_reply, e, e->argc, e->argv, e->argvlen);
}

int vk_redis_eval(vk_redis_t *r, const vk_redis_script_t *s, vk_redis_cb cb,
                  void *priv, size_t nkeys, size_t n_args, const char **args,
                  const size_t *lens) {
  if (n_args > MAX_ARGS || nkeys > n_args) {
    return VK_EINVAL;
  }
  size_t total = 0;
  for (size_t i = 0; i < n_args; i++) {
    total += lens[i];
  }
  eval_t *e = malloc(sizeof(*e) + total);
  if (e == NULL) {
    return VK_ENOMEM;
  }
  e->script = s;
  e->cb = cb;
  e->priv = priv;
  e->resent = false;
  e->argv[0] = "EVALSHA";
  e->argvlen[0] = 7;
  e->argv[1] = s->sha;
  e->argvlen[1] = 40;
  int n = snprintf(e->nkeys, sizeof(e->nkeys), "%zu", nkeys);
  e->argv[2] = e->nkeys;
  e->argvlen[2] = (size_t)n;
  char *p = e->data;
  for (size_t i = 0; i < n_args; i++) {
    memcpy(p, args[i], lens[i]);
    e->argv[3 + i] = p;
    e->argvlen[3 + i] = lens[i];
    p += lens[i];
  }
  e->argc = (int)(3 + n_args);
  int rv = eval_send(r, e);
  if (rv != VK_OK) {
    free(e);
  }
  return rv;
}
