// embedded.c: vkeyd's own redis-server child (see embedded.h).
//
// Why the lock and the stale-process check: Redis appends to
// <data_dir>/appendonlydir and two servers on one directory would corrupt
// it. A second vkeyd on the same directory is stopped by the flock (held on
// an O_CLOEXEC descriptor, so the kernel drops it when vkeyd dies even if
// its redis-server lives on). A redis-server that outlived a killed vkeyd is
// found through its pidfile; before we signal it we check that the pid is a
// redis-server whose working directory is this data dir (Redis chdirs to
// --dir), so that a recycled pid never gets an unrelated process killed.
#include "embedded.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include "common.h"
#include "log.h"

// Time Redis gets to flush its AOF after SIGTERM before SIGKILL.
#define VK__CHILD_STOP_MS 5000u
// The same for a stale server, which we wait for synchronously.
#define VK__STALE_TERM_MS 5000u
#define VK__STALE_KILL_MS 2000u
#define VK__STALE_POLL_MS 20u
// sun_path holds the path and its NUL.
#define VK__CHILD_UNIX_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1u)

struct vk_redis_child_s {
  uv_loop_t *loop;
  uv_process_t proc;      // proc.data == kill_timer.data == this child
  uv_timer_t kill_timer;  // SIGKILL if SIGTERM was not enough
  int pending_closes;
  int lock_fd;    // flock on <dir>/vkeyd.lock, released on free
  bool exited;    // the exit callback ran
  bool stopping;  // vk_redis_child_stop was called
  void (*done)(void *arg);
  void *done_arg;
  char dir[PATH_MAX];  // absolute
  char url[sizeof("unix:") + VK__CHILD_UNIX_MAX];
};

// path_join writes "<dir>/<name>" to `out` if it fits in `cap`.
static bool path_join(char *out, size_t cap, const char *dir,
                      const char *name) {
  int n = snprintf(out, cap, "%s/%s", dir, name);
  return n >= 0 && (size_t)n < cap;
}

// read_small reads at most `cap` - 1 bytes of `path` into `buf` and
// NUL-terminates them. Returns 0 or VK_EIO.
static int read_small(const char *path, char *buf, size_t cap,
                      size_t *out_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    return VK_EIO;
  }
  size_t n = 0;
  while (n < cap - 1) {
    ssize_t got = read(fd, buf + n, cap - 1 - n);
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got <= 0) {
      break;
    }
    n += (size_t)got;
  }
  close(fd);
  buf[n] = '\0';
  *out_len = n;
  return VK_OK;
}

// pid_gone: no such process, or only a zombie nobody reaped yet (the stale
// server may be a child of this very process, as in the tests, or of an
// init that does not reap).
static bool pid_gone(pid_t pid) {
  if (kill(pid, 0) != 0 && errno == ESRCH) {
    return true;
  }
  char path[64];
  char stat[512];
  size_t n;
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  if (read_small(path, stat, sizeof(stat), &n) != VK_OK) {
    return true;  // vanished between the two checks
  }
  // "pid (comm) S ...": comm may hold ')' itself, so use the last one.
  const char *paren = strrchr(stat, ')');
  if (paren == NULL || paren[1] != ' ') {
    return false;
  }
  return paren[2] == 'Z' || paren[2] == 'X';
}

static bool wait_gone(pid_t pid, uint64_t ms) {
  uint64_t deadline = vk_now_ms() + ms;
  while (!pid_gone(pid)) {
    if (vk_now_ms() >= deadline) {
      return false;
    }
    uv_sleep(VK__STALE_POLL_MS);
  }
  return true;
}

// is_our_redis: `pid` runs redis (by comm or command line) in `dir`.
static bool is_our_redis(pid_t pid, const char *dir) {
  char path[64];
  char buf[4096];
  size_t n;
  bool redis = false;
  snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
  if (read_small(path, buf, sizeof(buf), &n) == VK_OK &&
      memmem(buf, n, "redis", 5) != NULL) {
    redis = true;
  }
  snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
  if (!redis && read_small(path, buf, sizeof(buf), &n) == VK_OK &&
      memmem(buf, n, "redis", 5) != NULL) {
    redis = true;
  }
  if (!redis) {
    return false;
  }
  // Unreadable when it belongs to another user, and then it cannot be
  // writing into our 0700 directory anyway.
  snprintf(path, sizeof(path), "/proc/%d/cwd", (int)pid);
  ssize_t len = readlink(path, buf, sizeof(buf) - 1);
  if (len < 0) {
    return false;
  }
  buf[len] = '\0';
  return strcmp(buf, dir) == 0;
}

// stop_stale ends a redis-server left running in `dir` by a previous vkeyd.
// Returns 0 when none runs (any more), or VK_EBUSY.
static int stop_stale(const char *dir, const char *pidfile) {
  char buf[32];
  size_t n;
  if (read_small(pidfile, buf, sizeof(buf), &n) != VK_OK) {
    return VK_OK;  // Redis removes its pidfile on a clean shutdown
  }
  long pid = 0;
  size_t i = 0;
  while (i < n && buf[i] >= '0' && buf[i] <= '9' && pid < 100000000L) {
    pid = pid * 10 + (buf[i++] - '0');
  }
  while (i < n && (buf[i] == '\n' || buf[i] == ' ')) {
    i++;
  }
  if (i != n || pid <= 1 || pid > INT_MAX || (pid_t)pid == getpid()) {
    VK_WARN("redis child: ignoring malformed pidfile %s", pidfile);
    return VK_OK;
  }
  pid_t p = (pid_t)pid;
  if (pid_gone(p)) {
    return VK_OK;
  }
  if (!is_our_redis(p, dir)) {
    VK_INFO("redis child: pidfile names pid %d, not a redis-server in %s",
            (int)p, dir);
    return VK_OK;
  }
  VK_WARN("redis child: stopping stale redis-server (pid %d) in %s", (int)p,
          dir);
  if (kill(p, SIGTERM) == 0 && wait_gone(p, VK__STALE_TERM_MS)) {
    return VK_OK;
  }
  VK_WARN("redis child: stale redis-server (pid %d) ignored SIGTERM; killing",
          (int)p);
  if (kill(p, SIGKILL) == 0 && wait_gone(p, VK__STALE_KILL_MS)) {
    return VK_OK;
  }
  if (pid_gone(p)) {
    return VK_OK;
  }
  VK_ERROR("redis child: stale redis-server (pid %d) will not exit", (int)p);
  return VK_EBUSY;
}

// write_pidfile records the child's pid at once. Redis writes the same file
// only once it is up; a vkeyd killed in between would otherwise leave a
// Redis that the next start cannot find. Both writers write the same pid.
static void write_pidfile(const char *path, int pid) {
  char buf[32];
  int n = snprintf(buf, sizeof(buf), "%d\n", pid);
  int fd =
      open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0 || n <= 0 || write(fd, buf, (size_t)n) != n) {
    VK_WARN("redis child: cannot write %s", path);
  }
  if (fd >= 0) {
    close(fd);
  }
}

static void on_child_closed(uv_handle_t *h) {
  vk_redis_child_t *c = h->data;
  if (--c->pending_closes > 0) {
    return;
  }
  // The lock goes last: a new vkeyd may start only once Redis is gone.
  if (c->lock_fd >= 0) {
    close(c->lock_fd);
  }
  void (*done)(void *arg) = c->done;
  void *arg = c->done_arg;
  free(c);
  if (done != NULL) {
    done(arg);
  }
}

static void child_close(vk_redis_child_t *c) {
  c->pending_closes = 2;
  uv_close((uv_handle_t *)&c->proc, on_child_closed);
  uv_close((uv_handle_t *)&c->kill_timer, on_child_closed);
}

static void on_child_exit(uv_process_t *p, int64_t exit_status,
                          int term_signal) {
  vk_redis_child_t *c = p->data;
  c->exited = true;
  uv_timer_stop(&c->kill_timer);
  if (!c->stopping) {
    // Not restarted: the vk_redis_t clients report the outage, and a
    // Redis that dies on start-up would only die again. See redis.log.
    VK_ERROR(
        "redis child: redis-server (pid %d) exited unexpectedly (status %lld, "
        "signal %d); see %s/redis.log",
        p->pid, (long long)exit_status, term_signal, c->dir);
    return;
  }
  VK_INFO("redis child: redis-server exited (status %lld, signal %d)",
          (long long)exit_status, term_signal);
  child_close(c);
}

static void on_kill_timer(uv_timer_t *t) {
  vk_redis_child_t *c = t->data;
  VK_WARN(
      "redis child: redis-server did not exit %u ms after SIGTERM; "
      "sending SIGKILL",
      VK__CHILD_STOP_MS);
  uv_process_kill(&c->proc, SIGKILL);
}

// lock_dir takes the directory's lock. Returns 0, VK_EBUSY or VK_EIO.
static int lock_dir(vk_redis_child_t *c) {
  char path[PATH_MAX];
  if (!path_join(path, sizeof(path), c->dir, "vkeyd.lock")) {
    return VK_EINVAL;
  }
  c->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (c->lock_fd < 0) {
    VK_ERROR("redis child: cannot open %s: %s", path, strerror(errno));
    return VK_EIO;
  }
  if (flock(c->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    close(c->lock_fd);
    c->lock_fd = -1;
    if (err == EWOULDBLOCK) {
      VK_ERROR("redis child: %s is in use by another vkeyd", c->dir);
      return VK_EBUSY;
    }
    VK_ERROR("redis child: cannot lock %s: %s", path, strerror(err));
    return VK_EIO;
  }
  return VK_OK;
}

// prepare_dir creates `data_dir` if needed and stores its absolute path.
static int prepare_dir(vk_redis_child_t *c, const char *data_dir) {
  if (mkdir(data_dir, 0700) != 0 && errno != EEXIST) {
    VK_ERROR("redis child: cannot create %s: %s", data_dir, strerror(errno));
    return VK_EIO;
  }
  // Absolute, because the socket path becomes a URL and Redis chdirs.
  if (realpath(data_dir, c->dir) == NULL) {
    VK_ERROR("redis child: cannot resolve %s: %s", data_dir, strerror(errno));
    return VK_EIO;
  }
  struct stat st;
  if (stat(c->dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    VK_ERROR("redis child: %s is not a directory", c->dir);
    return VK_EIO;
  }
  if ((st.st_mode & 077) != 0) {
    VK_WARN("redis child: %s is accessible to other users (mode %o)", c->dir,
            (unsigned)(st.st_mode & 0777));
  }
  return VK_OK;
}

int vk_redis_child_start(vk_redis_child_t **out, uv_loop_t *loop,
                         const char *data_dir, const char *redis_server_path) {
  if (out == NULL || loop == NULL || data_dir == NULL) {
    return VK_EINVAL;
  }
  const char *file =
      redis_server_path != NULL ? redis_server_path : "redis-server";
  vk_redis_child_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    return VK_ENOMEM;
  }
  c->loop = loop;
  c->lock_fd = -1;
  int rv = prepare_dir(c, data_dir);
  if (rv != VK_OK) {
    goto fail_dir;
  }
  char sock[PATH_MAX];
  char pidfile[PATH_MAX];
  char logfile[PATH_MAX];
  if (!path_join(sock, sizeof(sock), c->dir, "redis.sock") ||
      strlen(sock) > VK__CHILD_UNIX_MAX ||
      !path_join(pidfile, sizeof(pidfile), c->dir, "redis.pid") ||
      !path_join(logfile, sizeof(logfile), c->dir, "redis.log")) {
    VK_ERROR("redis child: data dir path %s is too long for a unix socket",
             c->dir);
    rv = VK_EINVAL;
    goto fail_dir;
  }
  // Fits: the socket path was bounded by sun_path just above.
  memcpy(c->url, "unix:", 5);
  memcpy(c->url + 5, sock, strlen(sock) + 1);

  rv = lock_dir(c);
  if (rv != VK_OK) {
    goto fail_dir;
  }
  rv = stop_stale(c->dir, pidfile);
  if (rv != VK_OK) {
    goto fail_lock;
  }

  // libuv takes `char **` as execvp does; the strings are not modified.
  char *args[] = {
      (char *)file,
      (char *)"--port",
      (char *)"0",
      (char *)"--unixsocket",
      sock,
      (char *)"--unixsocketperm",
      (char *)"700",
      (char *)"--dir",
      c->dir,
      (char *)"--appendonly",
      (char *)"yes",
      (char *)"--appendfsync",
      (char *)"everysec",
      (char *)"--save",
      (char *)"",
      // Every vehicle has two small streams (outbox, audit); Redis 7.0
      // preallocates a whole node for each new stream, 4 KiB by default.
      // 512 B nodes halve Redis's memory per vehicle (12.4 -> 5.3 KB with
      // an owner and one key, measured with CONFIG SET on a bench fleet).
      (char *)"--stream-node-max-bytes",
      (char *)"512",
      (char *)"--pidfile",
      pidfile,
      (char *)"--daemonize",
      (char *)"no",
      (char *)"--logfile",
      logfile,
      NULL,
  };
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_IGNORE;
  // Redis reports a bad configuration on stderr before it opens its log.
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = 2;
  uv_process_options_t opts;
  memset(&opts, 0, sizeof(opts));
  opts.exit_cb = on_child_exit;
  opts.file = file;
  opts.args = args;
  opts.cwd = c->dir;
  // Its own session: a Ctrl-C meant for vkeyd must not stop Redis before
  // vkeyd has drained; vkeyd stops it last, through vk_redis_child_stop.
  opts.flags = UV_PROCESS_DETACHED;
  opts.stdio_count = 3;
  opts.stdio = stdio;

  if (uv_timer_init(loop, &c->kill_timer) != 0) {
    rv = VK_EIO;
    goto fail_lock;
  }
  c->kill_timer.data = c;
  c->proc.data = c;
  int err = uv_spawn(loop, &c->proc, &opts);
  if (err != 0) {
    VK_ERROR("redis child: cannot run %s: %s", file, uv_strerror(err));
    // The process handle is initialised even when the spawn fails and is
    // the loop's until its close callback, which also frees `c`.
    c->stopping = true;
    c->exited = true;
    child_close(c);
    return err == UV_ENOENT ? VK_ENOTFOUND : VK_EIO;
  }
  write_pidfile(pidfile, c->proc.pid);
  VK_INFO("redis child: started redis-server (pid %d) in %s", c->proc.pid,
          c->dir);
  *out = c;
  return VK_OK;

fail_lock:
  close(c->lock_fd);
fail_dir:
  free(c);
  return rv;
}

const char *vk_redis_child_url(const vk_redis_child_t *c) {
  return c->url;
}

void vk_redis_child_stop(vk_redis_child_t *c, void (*done)(void *arg),
                         void *arg) {
  if (c == NULL || c->stopping) {
    return;
  }
  c->stopping = true;
  c->done = done;
  c->done_arg = arg;
  if (c->exited) {
    child_close(c);
    return;
  }
  // SIGTERM makes Redis fsync the AOF and exit; the exit callback closes.
  int err = uv_process_kill(&c->proc, SIGTERM);
  if (err != 0) {
    VK_WARN("redis child: cannot signal redis-server: %s", uv_strerror(err));
  }
  uv_timer_start(&c->kill_timer, on_kill_timer, VK__CHILD_STOP_MS, 0);
}
