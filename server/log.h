// log.h: one line per event on stderr: time, level, optional call id, text.
// Never pass key material or credentials to these functions.
#ifndef VK_LOG_H
#define VK_LOG_H

#include <stdint.h>

typedef enum {
  VK_LOG_DEBUG = 0,
  VK_LOG_INFO = 1,
  VK_LOG_WARN = 2,
  VK_LOG_ERROR = 3,
} vk_log_level_t;

// vk_log_set_level sets the lowest level that is printed (default INFO).
void vk_log_set_level(vk_log_level_t level);

// vk_log_parse_level maps "debug", "info", "warn" or "error" to a level.
// Returns 0, or VK_EINVAL for another string.
int vk_log_parse_level(vk_log_level_t *out_level, const char *name);

// vk_log prints one line. `call_id` 0 means "not about a call".
void vk_log(vk_log_level_t level, uint64_t call_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define VK_DEBUG(...) vk_log(VK_LOG_DEBUG, 0, __VA_ARGS__)
#define VK_INFO(...) vk_log(VK_LOG_INFO, 0, __VA_ARGS__)
#define VK_WARN(...) vk_log(VK_LOG_WARN, 0, __VA_ARGS__)
#define VK_ERROR(...) vk_log(VK_LOG_ERROR, 0, __VA_ARGS__)

#endif  // VK_LOG_H
