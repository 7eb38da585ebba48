// log.c: structured-enough logs for operators: one line per event, prefixed
// with a UTC timestamp, the level and the call id when there is one. A line
// is formatted into one buffer and written with one write(2) so that lines
// from worker threads never interleave.
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static vk_log_level_t g_level = VK_LOG_INFO;

static const char *const kLevelNames[] = {"debug", "info", "warn", "error"};

void vk_log_set_level(vk_log_level_t level) {
  g_level = level;
}

int vk_log_parse_level(vk_log_level_t *out_level, const char *name) {
  for (size_t i = 0; i < VK_ARRAY_LEN(kLevelNames); i++) {
    if (strcmp(name, kLevelNames[i]) == 0) {
      *out_level = (vk_log_level_t)i;
      return VK_OK;
    }
  }
  return VK_EINVAL;
}

void vk_log(vk_log_level_t level, uint64_t call_id, const char *fmt, ...) {
  if (level < g_level) {
    return;
  }
  char line[1024];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  int n = snprintf(
      line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %-5s ",
      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
      tm.tm_sec, (int)(tv.tv_usec / 1000), kLevelNames[level]);
  if (call_id != 0 && n > 0 && (size_t)n < sizeof(line)) {
    n += snprintf(line + n, sizeof(line) - (size_t)n, "call=%llu ",
                  (unsigned long long)call_id);
  }
  if (n > 0 && (size_t)n < sizeof(line)) {
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    if (m > 0) {
      n += m;
    }
  }
  if (n < 0) {
    return;
  }
  size_t len = (size_t)n < sizeof(line) - 1 ? (size_t)n : sizeof(line) - 2;
  line[len++] = '\n';
  ssize_t ignored = write(STDERR_FILENO, line, len);
  (void)ignored;
}
