// procstat.c: /proc readers. Each file is read whole into a fixed buffer
// (these files are small; a longer one is cut, which only loses fields we
// do not read) and parsed as text.
#include "procstat.h"

#include <errno.h>
#include <fcntl.h>
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

int vk_proc_parse_stat(uint64_t *out_ticks, const char *text) {
  const char *p = strrchr(text, ')');
  if (p == NULL) {
    return VK_EPROTO;
  }
  p++;
  // After ")" come field 3 (state) .. field 13; utime and stime are 14, 15.
  for (int field = 3; field <= 13; field++) {
    while (*p == ' ') {
      p++;
    }
    if (*p == '\0') {
      return VK_EPROTO;
    }
    while (*p != ' ' && *p != '\0') {
      p++;
    }
  }
  char *end;
  unsigned long long utime = strtoull(p, &end, 10);
  if (end == p) {
    return VK_EPROTO;
  }
  p = end;
  unsigned long long stime = strtoull(p, &end, 10);
  if (end == p) {
    return VK_EPROTO;
  }
  *out_ticks = (uint64_t)utime + (uint64_t)stime;
  return VK_OK;
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

int vk_proc_sample(vk_proc_sample_t *out, int64_t pid) {
  char path[64];
  char buf[4096];
  memset(out, 0, sizeof(*out));
  snprintf(path, sizeof(path), "/proc/%lld/stat", (long long)pid);
  int rv = read_text(buf, sizeof(buf), path);
  if (rv != VK_OK) {
    return rv;
  }
  uint64_t ticks;
  if (vk_proc_parse_stat(&ticks, buf) != VK_OK) {
    return VK_EPROTO;
  }
  long hz = sysconf(_SC_CLK_TCK);
  out->cpu_s = (double)ticks / (double)(hz > 0 ? hz : 100);
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

int vk_machine_sample(vk_machine_sample_t *out) {
  char buf[1024];  // only the first line is needed
  memset(out, 0, sizeof(*out));
  int rv = read_text(buf, sizeof(buf), "/proc/stat");
  if (rv != VK_OK) {
    return VK_EIO;
  }
  if (strncmp(buf, "cpu ", 4) != 0) {
    return VK_EPROTO;
  }
  // user nice system idle iowait irq softirq steal (guest is inside user).
  unsigned long long v[8] = {0};
  const char *p = buf + 4;
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

double vk_self_cpu_s(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) {
    return 0;
  }
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}
