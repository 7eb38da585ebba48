// redis.c: the async Redis client (see redis.h for the contract).
//
// Structure. The file has two halves that share one struct:
//   - the connection half (conn_*, on_retry_timer, on_hiredis_connect,
//     on_hiredis_disconnect) owns the redisAsyncContext, the back-off and
//     `on_state`;
//   - the command half (submit, on_hiredis_reply, on_cmd_timer, fail_all)
//     owns the FIFO of pending commands and their deadlines.
// A pub/sub subscriber (key invalidation) is meant to be a second vk_redis_t
// in a "subscribe" mode: it keeps the connection half as it is and swaps the
// command half for a channel table that is re-SUBSCRIBEd from
// on_hiredis_connect, with no deadlines on pushed messages. submit()'s
// command-name filter is the point where the two modes part.
//
// hiredis rules this code lives by (hiredis 0.14.1, async.c):
//   - On a lost connection hiredis calls every pending reply callback with a
//     NULL reply, then onDisconnect, then frees the context itself. A failed
//     connect calls onConnect(REDIS_ERR) and then frees the context.
//   - redisAsyncFree() also runs the pending callbacks with NULL, and from
//     inside a hiredis callback it only defers. We call it only from our own
//     timer and close callbacks, never below a hiredis callback, so it
//     always completes at once.
//   - Before freeing a context ourselves we detach it (r->ac = NULL). Every
//     hiredis callback first checks `ac == r->ac`, so the callbacks that a
//     detached context fires while it is freed are ignored: its commands
//     were already completed from our own FIFO.
// The event adapter is our own (io_*), not <hiredis/adapters/libuv.h>: that
// 0.14 adapter drops libuv's error callback (status UV_EBADF, which libuv
// uses for POLLERR: a refused connect, a reset connection) after libuv has
// stopped the watcher, so hiredis never hears of the error and the
// connection hangs. Ours hands the event to hiredis, which then finds the
// error itself, as hiredis 1.x's adapter does.
//
// Our FIFO mirrors hiredis's reply list one to one; that is why commands
// that do not get exactly one reply (SUBSCRIBE, MONITOR) are refused.
#include "redis.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include <hiredis/async.h>
#include <hiredis/sds.h>

#include "common.h"
#include "log.h"
#include "uvadapter.h"

// Longest URL we look at; anything longer is garbage.
#define VK__REDIS_URL_MAX 1024u
// RFC 1035 limit on a host name.
#define VK__REDIS_HOST_MAX 253u
// sun_path holds the path and its NUL.
#define VK__REDIS_UNIX_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1u)

#define VK__REDIS_DEFAULT_TIMEOUT_MS 2000u
#define VK__REDIS_DEFAULT_MIN_MS 50u
#define VK__REDIS_DEFAULT_MAX_MS 2000u

typedef struct vk__redis_cmd_s {
  struct vk__redis_cmd_s *next;
  vk_redis_cb cb;
  void *priv;
  uint64_t deadline;  // loop time (uv_now) in ms
  size_t len;         // encoded size, counted in pending_bytes
} vk__redis_cmd_t;

struct vk_redis_s {
  uv_loop_t *loop;
  // Watches the oldest pending command's deadline. It is not re-armed on
  // every reply: when it fires early it re-arms for the new oldest command.
  uv_timer_t cmd_timer;
  // Waits out the back-off before a connect attempt, then bounds the
  // attempt itself.
  uv_timer_t retry_timer;
  int pending_closes;

  redisAsyncContext *ac;  // the current connection, or NULL
  bool connected;         // ac finished connecting and accepts commands
  bool closing;           // vk_redis_free was called
  uint64_t connected_at;  // loop time of the last successful connect
  // Loop time of the last reply, or of the last time the command timer
  // sent commands the loop had not flushed yet.
  uint64_t last_progress_at;

  // Pending commands, oldest first; replies arrive in this order.
  vk__redis_cmd_t *head;
  vk__redis_cmd_t *tail;
  uint32_t npending;
  size_t pending_bytes;

  uint32_t attempt;  // connect attempts since the connection last proved live
  uint64_t rng;      // xorshift state for the back-off jitter

  uint32_t timeout_ms;
  uint32_t min_ms;
  uint32_t max_ms;
  uint32_t max_pending;
  void (*on_state)(vk_redis_t *r, bool connected, void *arg);
  void *arg;

  int port;  // 0 for a unix socket
  char host[VK__REDIS_HOST_MAX + 1];
  char url[VK__REDIS_URL_MAX + 1];  // for log lines (holds no secret)
  char unix_path[VK__REDIS_UNIX_MAX + 1];
};

static void on_retry_timer(uv_timer_t *t);

// ---------------------------------------------------------------- URL parsing

static bool has_prefix_nocase(const char *s, const char *prefix) {
  return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

static bool is_host_char(char c) {
  return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

static bool is_ipv6_char(char c) {
  return isxdigit((unsigned char)c) || c == ':' || c == '.';
}

// copy_bounded copies `n` bytes of `src` and a NUL into `dst` if they fit.
static bool copy_bounded(char *dst, size_t dst_len, const char *src, size_t n) {
  if (n >= dst_len) {
    return false;
  }
  memcpy(dst, src, n);
  dst[n] = '\0';
  return true;
}

int vk_redis_parse_url(const char *url, char *out_host, size_t host_len,
                       int *out_port, char *out_unix_path, size_t path_len) {
  if (url == NULL || out_host == NULL || host_len == 0 || out_port == NULL ||
      out_unix_path == NULL || path_len == 0) {
    return VK_EINVAL;
  }
  out_host[0] = '\0';
  out_unix_path[0] = '\0';
  *out_port = 0;
  // Bound every later scan: strnlen never reads past the limit + 1.
  size_t url_len = strnlen(url, VK__REDIS_URL_MAX + 1);
  if (url_len > VK__REDIS_URL_MAX) {
    return VK_EINVAL;
  }

  if (has_prefix_nocase(url, "unix:")) {
    const char *p = url + 5;
    // "unix:///p" is the URI form of "unix:/p"; "unix://p" would name a
    // host, which a unix socket has not.
    if (p[0] == '/' && p[1] == '/') {
      p += 2;
    }
    if (p[0] != '/') {
      return VK_EINVAL;
    }
    size_t n = strlen(p);
    for (size_t i = 0; i < n; i++) {
      if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f) {
        return VK_EINVAL;
      }
    }
    if (n > VK__REDIS_UNIX_MAX ||
        !copy_bounded(out_unix_path, path_len, p, n)) {
      return VK_EINVAL;
    }
    return VK_OK;
  }

  if (!has_prefix_nocase(url, "redis://")) {
    return VK_EINVAL;
  }
  const char *h = url + 8;
  const char *host;
  size_t n = 0;
  const char *p;
  if (h[0] == '[') {
    host = h + 1;
    while (is_ipv6_char(host[n])) {
      n++;
    }
    if (host[n] != ']' || memchr(host, ':', n) == NULL) {
      return VK_EINVAL;
    }
    p = host + n + 1;
  } else {
    host = h;
    while (is_host_char(host[n])) {
      n++;
    }
    p = host + n;
  }
  if (n == 0 || n > VK__REDIS_HOST_MAX || *p != ':') {
    return VK_EINVAL;
  }
  p++;
  // Up to five digits and nothing after: no "/db", no "?options".
  long port = 0;
  size_t digits = 0;
  while (isdigit((unsigned char)p[digits]) && digits < 5) {
    port = port * 10 + (p[digits] - '0');
    digits++;
  }
  if (digits == 0 || p[digits] != '\0' || port < 1 || port > 65535) {
    return VK_EINVAL;
  }
  if (!copy_bounded(out_host, host_len, host, n)) {
    return VK_EINVAL;
  }
  *out_port = (int)port;
  return VK_OK;
}

// ---------------------------------------------------------- connection half

// next_rand is xorshift64: the jitter needs spread, not secrecy.
static uint64_t next_rand(vk_redis_t *r) {
  uint64_t x = r->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  r->rng = x;
  return x;
}

// backoff_ms is "equal jitter": half of the exponential step is fixed and
// half random, so that the many clients of one Redis that went away
// together do not come back in lockstep, yet none retries much sooner than
// its step.
static uint64_t backoff_ms(vk_redis_t *r) {
  uint64_t cap = r->min_ms;
  for (uint32_t i = 0; i < r->attempt && cap < r->max_ms; i++) {
    cap *= 2;
  }
  if (cap > r->max_ms) {
    cap = r->max_ms;
  }
  uint64_t half = cap / 2;
  uint64_t d = half + next_rand(r) % (cap - half + 1);
  return d < r->min_ms ? r->min_ms : d;
}

static void schedule_retry(vk_redis_t *r) {
  uint64_t delay = backoff_ms(r);
  if (r->attempt < 32) {
    r->attempt++;
  }
  uv_timer_start(&r->retry_timer, on_retry_timer, delay, 0);
}

// fail_all completes every pending command with `status`. The queue is
// detached first, so callbacks that queue new commands or free `r` (which
// only marks it) cannot disturb the walk.
static void fail_all(vk_redis_t *r, int status) {
  vk__redis_cmd_t *cmd = r->head;
  r->head = NULL;
  r->tail = NULL;
  r->npending = 0;
  r->pending_bytes = 0;
  while (cmd != NULL) {
    vk__redis_cmd_t *next = cmd->next;
    cmd->cb(r, status, NULL, cmd->priv);
    free(cmd);
    cmd = next;
  }
}

// conn_down handles the end of a connection (or of a connect attempt) that
// is already detached from `r`: it schedules the next attempt, fails the
// pending commands and reports the transition.
static void conn_down(vk_redis_t *r, int status) {
  bool was_connected = r->connected;
  r->connected = false;
  if (r->closing) {
    // The close callback fails the queue with VK_ECLOSED; the timers are
    // closing and must not be restarted.
    return;
  }
  uv_timer_stop(&r->cmd_timer);
  if (was_connected) {
    VK_WARN("redis: connection to %s lost (%s); reconnecting", r->url,
            vk_strerror(status));
    // A connection that stayed up for a while was healthy even if it
    // carried no reply: start the back-off over.
    if (uv_now(r->loop) - r->connected_at >= r->max_ms) {
      r->attempt = 0;
    }
  }
  // Scheduled before any user callback runs: if one calls vk_redis_free,
  // closing the timer cancels the attempt.
  schedule_retry(r);
  fail_all(r, status);
  if (was_connected && !r->closing && r->on_state != NULL) {
    r->on_state(r, false, r->arg);
  }
}

// conn_drop closes the current connection on our initiative. Only called
// from our own timer or close callbacks, so redisAsyncFree completes here.
static void conn_drop(vk_redis_t *r, int status) {
  redisAsyncContext *ac = r->ac;
  r->ac = NULL;  // detach first: the callbacks it fires are now ignored
  if (ac != NULL) {
    redisAsyncFree(ac);
  }
  conn_down(r, status);
}

// conn_lost is hiredis telling us that it is freeing the current context.
static void conn_lost(vk_redis_t *r) {
  r->ac = NULL;  // hiredis frees it once we return
  conn_down(r, VK_EUNAVAIL);
}

static void on_hiredis_connect(const redisAsyncContext *ac, int status) {
  vk_redis_t *r = ac->data;
  if (ac != r->ac) {
    return;
  }
  if (status != REDIS_OK) {
    VK_DEBUG("redis: connect failed: %s", ac->c.errstr);
    conn_lost(r);
    return;
  }
  uv_timer_stop(&r->retry_timer);  // the connect deadline
  r->connected = true;
  r->connected_at = uv_now(r->loop);
  if (r->closing) {
    return;
  }
  VK_INFO("redis: connected to %s", r->url);
  if (r->on_state != NULL) {
    r->on_state(r, true, r->arg);
  }
}

static void on_hiredis_disconnect(const redisAsyncContext *ac, int status) {
  vk_redis_t *r = ac->data;
  (void)status;
  // Reached only if no pending reply callback saw the loss first.
  if (ac == r->ac) {
    conn_lost(r);
  }
}

static void on_hiredis_reply(redisAsyncContext *ac, void *reply, void *priv);

// conn_start makes one connect attempt. Runs from the retry timer only.
static void conn_start(vk_redis_t *r) {
  redisAsyncContext *ac;
  if (r->port != 0) {
    ac = redisAsyncConnect(r->host, r->port);
  } else {
    ac = redisAsyncConnectUnix(r->unix_path);
  }
  if (ac == NULL) {
    VK_WARN("redis: cannot allocate a connection");
    schedule_retry(r);
    return;
  }
  if (ac->err != 0) {
    // Refused at once (no socket file, ECONNREFUSED, name not found): no
    // event hooks are attached yet, so this frees synchronously and quietly.
    VK_DEBUG("redis: connect failed: %s", ac->errstr);
    redisAsyncFree(ac);
    schedule_retry(r);
    return;
  }
  ac->data = r;
  if (vk_redis_uv_attach(ac, r->loop) != VK_OK) {
    redisAsyncFree(ac);  // no hooks set: frees synchronously
    VK_WARN("redis: cannot watch the connection's socket");
    schedule_retry(r);
    return;
  }
  // The connect callback arms the write watcher, so it must come after the
  // adapter is attached (hiredis detects a finished connect by writability).
  redisAsyncSetConnectCallback(ac, on_hiredis_connect);
  redisAsyncSetDisconnectCallback(ac, on_hiredis_disconnect);
  r->ac = ac;
  // hiredis 0.14 has no connect timeout: a black-holed address would hang
  // until the kernel gives up. The retry timer doubles as the deadline.
  uv_timer_start(&r->retry_timer, on_retry_timer, r->timeout_ms, 0);
}

static void on_retry_timer(uv_timer_t *t) {
  vk_redis_t *r = vk_container_of(t, vk_redis_t, retry_timer);
  if (r->ac != NULL) {
    if (!r->connected) {
      VK_DEBUG("redis: connect attempt timed out");
      conn_drop(r, VK_ETIMEDOUT);
    }
    return;
  }
  conn_start(r);
}

// ------------------------------------------------------------- command half

// When the oldest pending command is due: its deadline, or later if there
// was progress since. A command waits for the replies to the commands ahead
// of it: a deep pipeline (19,000 vehicles opening channels at once) drains
// slowly but is not stuck. Only time without any progress counts.
static uint64_t oldest_due(const vk_redis_t *r) {
  uint64_t due = r->head->deadline;
  if (r->last_progress_at + r->timeout_ms > due) {
    due = r->last_progress_at + r->timeout_ms;
  }
  return due;
}

// Writes what hiredis holds for Redis. Commands queued during a loop
// iteration are written in the next one's poll phase, after its timers: if
// that iteration ran longer than the timeout (thousands of connections
// handled in one go), the oldest command is due before Redis has seen it.
// Redis cannot be blamed for that, so bytes that leave count as progress;
// a Redis that stopped reading fills the socket and makes none. This may
// run hiredis's disconnect path and fail every pending command.
static void flush_unsent(vk_redis_t *r) {
  size_t unsent = sdslen(r->ac->c.obuf);
  if (unsent == 0) {
    return;
  }
  redisAsyncHandleWrite(r->ac);
  if (r->ac != NULL && sdslen(r->ac->c.obuf) < unsent) {
    r->last_progress_at = uv_now(r->loop);
  }
}

static void on_cmd_timer(uv_timer_t *t) {
  vk_redis_t *r = vk_container_of(t, vk_redis_t, cmd_timer);
  if (r->head == NULL) {
    return;
  }
  uint64_t now = uv_now(r->loop);
  if (oldest_due(r) <= now && r->ac != NULL) {
    // Timers run before I/O in a loop iteration: after a long iteration
    // (thousands of connections accepted at once) the replies may be in
    // the socket already, unread, and commands may not have been sent at
    // all. Send and read before judging. This may run reply callbacks,
    // which may free `r` (it stays allocated until its timers' close
    // callbacks) or drop the connection.
    flush_unsent(r);
    if (r->closing || r->head == NULL || r->ac == NULL) {
      return;
    }
    redisAsyncHandleRead(r->ac);
    if (r->closing || r->head == NULL) {
      return;
    }
  }
  if (oldest_due(r) > now) {
    uv_timer_start(&r->cmd_timer, on_cmd_timer, oldest_due(r) - now, 0);
    return;
  }
  // Replies come in order, so nothing behind the oldest command can be
  // answered before it, and none came for timeout_ms: the connection (or
  // Redis) is stuck. Drop it, which fails every pending command, rather
  // than let the queue grow behind it.
  VK_WARN("redis: no reply for %u ms; dropping the connection",
          (unsigned)r->timeout_ms);
  conn_drop(r, VK_ETIMEDOUT);
}

static void on_hiredis_reply(redisAsyncContext *ac, void *reply, void *priv) {
  vk_redis_t *r = ac->data;
  (void)priv;
  if (ac != r->ac) {
    return;  // a detached context being freed; its commands are done
  }
  if (reply == NULL) {
    // hiredis is failing its callbacks because the connection broke.
    conn_lost(r);
    return;
  }
  if (r->closing) {
    return;  // leave the command for the VK_ECLOSED sweep
  }
  vk__redis_cmd_t *cmd = r->head;
  if (cmd == NULL) {
    VK_ERROR("redis: reply without a pending command");
    return;
  }
  r->head = cmd->next;
  if (r->head == NULL) {
    r->tail = NULL;
  }
  r->npending--;
  r->pending_bytes -= cmd->len;
  r->attempt = 0;  // a reply proves the server alive
  r->last_progress_at = uv_now(r->loop);
  cmd->cb(r, 0, reply, cmd->priv);
  free(cmd);
}

// first_arg finds the command name in a RESP-encoded command made by
// hiredis ("*<argc>\r\n$<len>\r\n<name>\r\n..."), checking every bound.
static int first_arg(const char *buf, size_t len, const char **out_name,
                     size_t *out_len) {
  size_t i = 0;
  size_t argc = 0;
  size_t n = 0;
  if (len < 1 || buf[i++] != '*') {
    return VK_EINVAL;
  }
  while (i < len && isdigit((unsigned char)buf[i]) && argc < 1000000000u) {
    argc = argc * 10 + (size_t)(buf[i++] - '0');
  }
  if (argc < 1 || len - i < 3 || buf[i] != '\r' || buf[i + 1] != '\n' ||
      buf[i + 2] != '$') {
    return VK_EINVAL;
  }
  i += 3;
  while (i < len && isdigit((unsigned char)buf[i]) && n < 1000000000u) {
    n = n * 10 + (size_t)(buf[i++] - '0');
  }
  if (len - i < 2 || buf[i] != '\r' || buf[i + 1] != '\n') {
    return VK_EINVAL;
  }
  i += 2;
  if (n == 0 || len - i < n) {
    return VK_EINVAL;
  }
  *out_name = buf + i;
  *out_len = n;
  return VK_OK;
}

// Commands whose replies are not one per command: hiredis would route them
// outside its reply list (or assert), and our FIFO would lose step.
static const char *const kRefused[] = {
    "subscribe",    "psubscribe",   "ssubscribe", "unsubscribe",
    "punsubscribe", "sunsubscribe", "monitor",    "hello",
};

static bool refused(const char *name, size_t n) {
  for (size_t i = 0; i < VK_ARRAY_LEN(kRefused); i++) {
    if (strlen(kRefused[i]) == n && strncasecmp(name, kRefused[i], n) == 0) {
      return true;
    }
  }
  return false;
}

// admit checks what can be checked before encoding the command.
static int admit(const vk_redis_t *r) {
  if (r->closing) {
    return VK_ECLOSED;
  }
  if (!r->connected || r->ac == NULL) {
    return VK_EUNAVAIL;
  }
  if (r->npending >= r->max_pending) {
    return VK_EBUSY;
  }
  return VK_OK;
}

// submit hands an encoded command to hiredis and queues its record.
static int submit(vk_redis_t *r, vk_redis_cb cb, void *priv, const char *buf,
                  size_t len) {
  const char *name;
  size_t name_len;
  if (first_arg(buf, len, &name, &name_len) != VK_OK ||
      refused(name, name_len)) {
    return VK_EINVAL;
  }
  if (len > VK_REDIS_MAX_PENDING_BYTES) {
    return VK_ETOOBIG;
  }
  if (len > VK_REDIS_MAX_PENDING_BYTES - r->pending_bytes) {
    return VK_EBUSY;
  }
  vk__redis_cmd_t *cmd = malloc(sizeof(*cmd));
  if (cmd == NULL) {
    return VK_ENOMEM;
  }
  if (redisAsyncFormattedCommand(r->ac, on_hiredis_reply, NULL, buf, len) !=
      REDIS_OK) {
    // hiredis refuses only while it tears the context down.
    free(cmd);
    return VK_EUNAVAIL;
  }
  cmd->next = NULL;
  cmd->cb = cb;
  cmd->priv = priv;
  cmd->deadline = uv_now(r->loop) + r->timeout_ms;
  cmd->len = len;
  if (r->tail != NULL) {
    r->tail->next = cmd;
  } else {
    r->head = cmd;
  }
  r->tail = cmd;
  r->npending++;
  r->pending_bytes += len;
  if (!uv_is_active((uv_handle_t *)&r->cmd_timer)) {
    uv_timer_start(&r->cmd_timer, on_cmd_timer, r->timeout_ms, 0);
  }
  return VK_OK;
}

int vk_redis_command(vk_redis_t *r, vk_redis_cb cb, void *priv, const char *fmt,
                     ...) {
  if (r == NULL || cb == NULL || fmt == NULL) {
    return VK_EINVAL;
  }
  int rv = admit(r);
  if (rv != VK_OK) {
    return rv;
  }
  char *buf = NULL;
  va_list ap;
  va_start(ap, fmt);
  int len = redisvFormatCommand(&buf, fmt, ap);
  va_end(ap);
  if (len < 0) {
    // hiredis 0.14: -1 is out of memory, -2 a bad format.
    return len == -1 ? VK_ENOMEM : VK_EINVAL;
  }
  rv = submit(r, cb, priv, buf, (size_t)len);
  redisFreeCommand(buf);
  return rv;
}

int vk_redis_command_argv(vk_redis_t *r, vk_redis_cb cb, void *priv, int argc,
                          const char **argv, const size_t *argvlen) {
  if (r == NULL || cb == NULL || argc < 1 || argv == NULL) {
    return VK_EINVAL;
  }
  int rv = admit(r);
  if (rv != VK_OK) {
    return rv;
  }
  // Bounded before encoding, so no length computed below can overflow.
  size_t total = 0;
  for (int i = 0; i < argc; i++) {
    if (argv[i] == NULL) {
      return VK_EINVAL;
    }
    size_t n = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
    if (n > VK_REDIS_MAX_PENDING_BYTES - total) {
      return VK_ETOOBIG;
    }
    total += n;
  }
  if ((size_t)argc > VK_REDIS_MAX_PENDING_BYTES / 32) {
    return VK_ETOOBIG;  // each argument costs up to ~30 bytes of framing
  }
  // Small commands (every one on the verification path) encode on the stack.
  char small[512];
  size_t len = vk_redis_format_argv(small, sizeof(small), argc, argv, argvlen);
  char *buf = small;
  if (len > sizeof(small)) {
    buf = malloc(len);
    if (buf == NULL) {
      return VK_ENOMEM;
    }
    vk_redis_format_argv(buf, len, argc, argv, argvlen);
  }
  rv = submit(r, cb, priv, buf, len);
  if (buf != small) {
    free(buf);
  }
  return rv;
}

static size_t decimal_len(size_t v) {
  size_t n = 1;
  while (v >= 10) {
    v /= 10;
    n++;
  }
  return n;
}

static char *put_decimal(char *p, size_t v, size_t len) {
  for (size_t i = len; i > 0; i--) {
    p[i - 1] = (char)('0' + v % 10);
    v /= 10;
  }
  return p + len;
}

size_t vk_redis_format_argv(char *out, size_t cap, int argc, const char **argv,
                            const size_t *lens) {
  size_t count = argc > 0 ? (size_t)argc : 0;
  size_t total = 1 + decimal_len(count) + 2;  // *<count>\r\n
  for (size_t i = 0; i < count; i++) {
    size_t n = lens != NULL ? lens[i] : strlen(argv[i]);
    total += 1 + decimal_len(n) + 2 + n + 2;  // $<n>\r\n<bytes>\r\n
  }
  if (total > cap) {
    return total;
  }
  char *p = out;
  *p++ = '*';
  p = put_decimal(p, count, decimal_len(count));
  *p++ = '\r';
  *p++ = '\n';
  for (size_t i = 0; i < count; i++) {
    size_t n = lens != NULL ? lens[i] : strlen(argv[i]);
    *p++ = '$';
    p = put_decimal(p, n, decimal_len(n));
    *p++ = '\r';
    *p++ = '\n';
    memcpy(p, argv[i], n);
    p += n;
    *p++ = '\r';
    *p++ = '\n';
  }
  return total;
}

// ----------------------------------------------------------------- lifetime

static void on_handle_closed(uv_handle_t *h) {
  vk_redis_t *r = h->data;
  if (--r->pending_closes > 0) {
    return;
  }
  // A close callback runs at the top of the loop, never below hiredis, so
  // the context can be freed here; its callbacks are ignored (detached).
  redisAsyncContext *ac = r->ac;
  r->ac = NULL;
  r->connected = false;
  if (ac != NULL) {
    redisAsyncFree(ac);
  }
  fail_all(r, VK_ECLOSED);
  free(r);
}

int vk_redis_new(vk_redis_t **out, uv_loop_t *loop,
                 const vk_redis_config_t *cfg) {
  if (out == NULL || loop == NULL || cfg == NULL) {
    return VK_EINVAL;
  }
  vk_redis_t *r = calloc(1, sizeof(*r));
  if (r == NULL) {
    return VK_ENOMEM;
  }
  int rv = vk_redis_parse_url(cfg->url, r->host, sizeof(r->host), &r->port,
                              r->unix_path, sizeof(r->unix_path));
  if (rv != VK_OK) {
    goto fail_config;
  }
  // parse_url bounded the length, so this copy fits.
  memcpy(r->url, cfg->url, strlen(cfg->url) + 1);
  r->loop = loop;
  r->timeout_ms = cfg->command_timeout_ms ? cfg->command_timeout_ms
                                          : VK__REDIS_DEFAULT_TIMEOUT_MS;
  r->min_ms =
      cfg->reconnect_min_ms ? cfg->reconnect_min_ms : VK__REDIS_DEFAULT_MIN_MS;
  r->max_ms =
      cfg->reconnect_max_ms ? cfg->reconnect_max_ms : VK__REDIS_DEFAULT_MAX_MS;
  r->max_pending = cfg->max_pending ? cfg->max_pending : VK_REDIS_MAX_PENDING;
  if (r->min_ms > r->max_ms) {
    rv = VK_EINVAL;
    goto fail_config;
  }
  r->on_state = cfg->on_state;
  r->arg = cfg->arg;
  r->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)r;
  if (r->rng == 0) {
    r->rng = 1;  // xorshift's one fixed point
  }

  if (uv_timer_init(loop, &r->cmd_timer) != 0) {
    rv = VK_EIO;
    goto fail_config;
  }
  r->cmd_timer.data = r;
  if (uv_timer_init(loop, &r->retry_timer) != 0) {
    rv = VK_EIO;
    goto fail_retry_timer;
  }
  r->retry_timer.data = r;
  r->pending_closes = 2;
  // The first attempt runs from the loop, like every later one, so that
  // this function never blocks on a name lookup and calls no callback.
  uv_timer_start(&r->retry_timer, on_retry_timer, 0, 0);
  *out = r;
  return VK_OK;

fail_retry_timer:
  // An initialised handle is the loop's until its close callback.
  r->closing = true;
  r->pending_closes = 1;
  uv_close((uv_handle_t *)&r->cmd_timer, on_handle_closed);
  return rv;
fail_config:
  free(r);
  return rv;
}

void vk_redis_free(vk_redis_t *r) {
  if (r == NULL || r->closing) {
    return;
  }
  // Mark only: we may be deep inside a hiredis callback, where neither the
  // context nor `r` may go away. The close callbacks finish the job.
  r->closing = true;
  uv_close((uv_handle_t *)&r->cmd_timer, on_handle_closed);
  uv_close((uv_handle_t *)&r->retry_timer, on_handle_closed);
}

bool vk_redis_connected(const vk_redis_t *r) {
  return r != NULL && r->connected && !r->closing;
}
