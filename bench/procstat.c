// procstat.c: /proc readers. Each file is read whole into a fixed buffer
// (these files are small; a longer one is cut, which only loses fields we
// do not read) and parsed as text.
#include "procstat.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common.h"

// read_text reads at most cap-1 bytes of `path` into `buf`, NUL-terminated.
static int read_text(char *buf, size_t cap, const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return errno == ENOENT || errno == ESRCH ? VK_ENOTFOUND : VK_EIO;
  }
  size_t len = 0;
  while (len + 1 < cap) {
    ssize_t n = read(fd, buf + len, cap - 1 - len);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      close(fd);
      return errno == ESRCH ? VK_ENOTFOUND : VK_EIO;
    }
    if (n == 0) {
      break;
    }
    len += (size_t)n;
  }
  close(fd);
  buf[len] = '\0';
  return VK_OK;
}

// read_field moves `*p` past the field it is at (and the spaces before it)
// and reads it as a number into `*out`: false if it is not one, or the text
// has ended.
static bool read_field(const char **p, unsigned long long *out) {
  char *end;
  while (**p == ' ') {
    (*p)++;
  }
  if (**p == '\0') {
    return false;
  }
  *out = strtoull(*p, &end, 10);
  bool number = end != *p;
  while (*end != ' ' && *end != '\0') {
    end++;
  }
  *p = end;
  return number;
}

int vk_proc_parse_stat_fields(vk_proc_stat_t *out, const char *text) {
  const char *p = strrchr(text, ')');
  if (p == NULL) {
    return VK_EPROTO;
  }
  p++;
  // After ")" come field 3 (state), 4 (ppid), ... 14 utime, 15 stime,
  // 16 cutime, 17 cstime.
  unsigned long long v[18] = {0};
  for (int field = 3; field <= 17; field++) {
    if (!read_field(&p, &v[field]) && field != 3) {
      return VK_EPROTO;  // field 3 is a letter; every other one a number
    }
  }
  out->ppid = (int64_t)v[4];
  out->ticks = (uint64_t)(v[14] + v[15]);
  out->child_ticks = (uint64_t)(v[16] + v[17]);
  return VK_OK;
}

int vk_proc_parse_stat(uint64_t *out_ticks, const char *text) {
  vk_proc_stat_t st;
  int rv = vk_proc_parse_stat_fields(&st, text);
  if (rv == VK_OK) {
    *out_ticks = st.ticks;
  }
  return rv;
}

int vk_proc_parse_status_kb(uint64_t *out_kb, const char *text,
                            const char *key) {
  size_t key_len = strlen(key);
  const char *line = text;
  while (line != NULL && *line != '\0') {
    if (strncmp(line, key, key_len) == 0 && line[key_len] == ':') {
      char *end;
      unsigned long long v = strtoull(line + key_len + 1, &end, 10);
      if (end == line + key_len + 1) {
        return VK_ENOTFOUND;
      }
      *out_kb = (uint64_t)v;
      return VK_OK;
    }
    line = strchr(line, '\n');
    if (line != NULL) {
      line++;
    }
  }
  return VK_ENOTFOUND;
}

static double ticks_to_s(uint64_t ticks) {
  long hz = sysconf(_SC_CLK_TCK);
  return (double)ticks / (double)(hz > 0 ? hz : 100);
}

// Whether thread `tid` of `pid` runs an event loop: the main thread, or
// one vkeyd named vkeyd-loopN.
static bool is_loop_thread(int64_t pid, long long tid) {
  if (tid == pid) {
    return true;
  }
  char path[64];
  char comm[32];
  snprintf(path, sizeof(path), "/proc/%lld/task/%lld/comm", (long long)pid,
           tid);
  return read_text(comm, sizeof(comm), path) == VK_OK &&
         strncmp(comm, "vkeyd-loop", 10) == 0;
}

// The CPU ticks of `pid`'s event loop threads.
static int loop_threads_ticks(uint64_t *out, int64_t pid) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%lld/task", (long long)pid);
  DIR *dir = opendir(path);
  if (dir == NULL) {
    return VK_ENOTFOUND;
  }
  *out = 0;
  struct dirent *e;
  while ((e = readdir(dir)) != NULL) {
    char *end;
    long long tid = strtoll(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || !is_loop_thread(pid, tid)) {
      continue;
    }
    char buf[4096];
    uint64_t ticks;
    snprintf(path, sizeof(path), "/proc/%lld/task/%lld/stat", (long long)pid,
             tid);
    // A thread that ended between readdir and here has no stat: skip it.
    if (read_text(buf, sizeof(buf), path) == VK_OK &&
        vk_proc_parse_stat(&ticks, buf) == VK_OK) {
      *out += ticks;
    }
  }
  closedir(dir);
  return VK_OK;
}

int vk_proc_sample(vk_proc_sample_t *out, int64_t pid) {
  char path[64];
  char buf[4096];
  memset(out, 0, sizeof(*out));
  // The loop threads first: read after the process's total, their ticks
  // could exceed it.
  uint64_t ticks;
  int rv = loop_threads_ticks(&ticks, pid);
  if (rv != VK_OK) {
    return rv;
  }
  out->loop_threads_cpu_s = ticks_to_s(ticks);
  snprintf(path, sizeof(path), "/proc/%lld/stat", (long long)pid);
  rv = read_text(buf, sizeof(buf), path);
  if (rv != VK_OK) {
    return rv;
  }
  if (vk_proc_parse_stat(&ticks, buf) != VK_OK) {
    return VK_EPROTO;
  }
  out->cpu_s = ticks_to_s(ticks);
  snprintf(path, sizeof(path), "/proc/%lld/status", (long long)pid);
  rv = read_text(buf, sizeof(buf), path);
  if (rv != VK_OK) {
    return rv;
  }
  // A zombie has no VmRSS: report 0 rather than fail.
  (void)vk_proc_parse_status_kb(&out->rss_kb, buf, "VmRSS");
  (void)vk_proc_parse_status_kb(&out->hwm_kb, buf, "VmHWM");
  return VK_OK;
}

int vk_proc_sample_family(vk_proc_sample_t *out, int64_t pid) {
  int rv = vk_proc_sample(out, pid);
  if (rv != VK_OK) {
    return rv;
  }
  char path[64];
  char buf[4096];
  vk_proc_stat_t st;
  snprintf(path, sizeof(path), "/proc/%lld/stat", (long long)pid);
  if (read_text(buf, sizeof(buf), path) == VK_OK &&
      vk_proc_parse_stat_fields(&st, buf) == VK_OK) {
    out->cpu_s += ticks_to_s(st.child_ticks);
  }
  DIR *d = opendir("/proc");
  if (d == NULL) {
    return VK_OK;  // the process alone
  }
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char *end;
    long long child = strtoll(e->d_name, &end, 10);
    if (*end != '\0' || child <= 0 || child == pid) {
      continue;
    }
    snprintf(path, sizeof(path), "/proc/%lld/stat", child);
    // A process may end between readdir and the read: skip it.
    if (read_text(buf, sizeof(buf), path) == VK_OK &&
        vk_proc_parse_stat_fields(&st, buf) == VK_OK && st.ppid == pid) {
      out->cpu_s += ticks_to_s(st.ticks + st.child_ticks);
    }
  }
  closedir(d);
  return VK_OK;
}

int vk_machine_parse_stat(vk_machine_sample_t *out, const char *text) {
  memset(out, 0, sizeof(*out));
  if (strncmp(text, "cpu ", 4) != 0) {
    return VK_EPROTO;
  }
  // user nice system idle iowait irq softirq steal (guest is inside user).
  unsigned long long v[8] = {0};
  const char *p = text + 4;
  for (int i = 0; i < 8; i++) {
    char *end;
    v[i] = strtoull(p, &end, 10);
    if (end == p) {
      if (i < 4) {
        return VK_EPROTO;
      }
      break;
    }
    p = end;
  }
  for (int i = 0; i < 8; i++) {
    out->total += (uint64_t)v[i];
  }
  out->idle = (uint64_t)v[3] + (uint64_t)v[4];
  out->steal = (uint64_t)v[7];
  return VK_OK;
}

int vk_machine_sample(vk_machine_sample_t *out) {
  char buf[1024];  // only the first line is needed
  memset(out, 0, sizeof(*out));
  if (read_text(buf, sizeof(buf), "/proc/stat") != VK_OK) {
    return VK_EIO;
  }
  int rv = vk_machine_parse_stat(out, buf);
  if (rv != VK_OK) {
    return rv;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  out->ncpu = n > 0 ? (int)n : 1;
  return VK_OK;
}

double vk_machine_busy_cores(const vk_machine_sample_t *before,
                             const vk_machine_sample_t *after) {
  if (after->total <= before->total) {
    return 0;
  }
  double total = (double)(after->total - before->total);
  double idle =
      after->idle >= before->idle ? (double)(after->idle - before->idle) : 0.0;
  double busy = (total - idle) / total;
  return busy < 0 ? 0 : busy * after->ncpu;
}

double vk_machine_steal_cores(const vk_machine_sample_t *before,
                              const vk_machine_sample_t *after) {
  if (after->total <= before->total || after->steal < before->steal) {
    return 0;
  }
  return (double)(after->steal - before->steal) /
         (double)(after->total - before->total) * after->ncpu;
}

double vk_self_cpu_s(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) {
    return 0;
  }
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int vk_pidfile_read(int64_t *out_pid, const char *path) {
  char buf[32];
  int rv = read_text(buf, sizeof(buf), path);
  if (rv != VK_OK) {
    return rv;
  }
  int64_t pid = 0;
  size_t i = 0;
  while (buf[i] >= '0' && buf[i] <= '9' && pid < INT32_MAX) {
    pid = pid * 10 + (buf[i++] - '0');
  }
  if (i == 0 || pid <= 0 || pid > INT32_MAX ||
      (buf[i] != '\0' && buf[i] != '\n')) {
    return VK_EPROTO;
  }
  *out_pid = pid;
  return VK_OK;
}

int vk_redis_parse_used_memory(uint64_t *out, const char *text) {
  static const char kKey[] = "used_memory:";
  for (const char *p = text; (p = strstr(p, kKey)) != NULL; p++) {
    // Only at the start of a line: "used_memory_rss:" must not match.
    if (p != text && p[-1] != '\n') {
      continue;
    }
    const char *v = p + sizeof(kKey) - 1;
    if (*v < '0' || *v > '9') {
      continue;
    }
    uint64_t n = 0;
    while (*v >= '0' && *v <= '9') {
      n = n * 10 + (uint64_t)(*v++ - '0');
    }
    *out = n;
    return VK_OK;
  }
  return VK_ENOTFOUND;
}

// redis_connect opens a blocking socket to `addr` with 2 s timeouts.
static int redis_connect(const char *addr) {
  int fd = -1;
  const char *colon = strrchr(addr, ':');
  if (addr[0] == '/' || colon == NULL) {
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if (strlen(addr) >= sizeof(sun.sun_path)) {
      return -1;
    }
    memcpy(sun.sun_path, addr, strlen(addr));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
      close(fd);
      fd = -1;
    }
  } else {
    char host[256];
    size_t hlen = (size_t)(colon - addr);
    if (hlen == 0 || hlen >= sizeof(host)) {
      return -1;
    }
    memcpy(host, addr, hlen);
    host[hlen] = '\0';
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || ai == NULL) {
      return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
    freeaddrinfo(ai);
  }
  if (fd >= 0) {
    struct timeval tv = {2, 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  return fd;
}

int vk_redis_used_memory(uint64_t *out, const char *addr) {
  static const char kCmd[] = "*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n";
  int fd = redis_connect(addr);
  if (fd < 0) {
    return VK_EUNAVAIL;
  }
  int rv = VK_EUNAVAIL;
  char buf[16384];
  size_t len = 0;
  if (write(fd, kCmd, sizeof(kCmd) - 1) == (ssize_t)(sizeof(kCmd) - 1)) {
    // A bulk string: "$<n>\r\n<n bytes>\r\n". Read until it is whole.
    for (;;) {
      ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
      if (n <= 0) {
        break;
      }
      len += (size_t)n;
      buf[len] = '\0';
      char *end = strstr(buf, "\r\n");
      if (buf[0] != '$' || end == NULL) {
        if (len > 0 && buf[0] != '$') {
          rv = VK_EPROTO;
          break;
        }
        continue;
      }
      size_t want = (size_t)strtoull(buf + 1, NULL, 10);
      size_t have = len - (size_t)(end + 2 - buf);
      if (have >= want || len == sizeof(buf) - 1) {
        rv = vk_redis_parse_used_memory(out, end + 2) == VK_OK ? VK_OK
                                                               : VK_EPROTO;
        break;
      }
    }
  }
  close(fd);
  return rv;
}
