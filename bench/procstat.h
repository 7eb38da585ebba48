// procstat.h: CPU time and memory of a process and of the machine, read from
// /proc, sampled at both ends of vkey-bench's measured window.
#ifndef VK_BENCH_PROCSTAT_H
#define VK_BENCH_PROCSTAT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_proc_sample_s {
  double cpu_s;  // utime + stime, seconds
  // The same for the main thread and the threads named vkeyd-loop*
  // (/proc/PID/task/TID/stat): vkeyd's event loops, whose share tells
  // their cost from the workers'.
  double loop_threads_cpu_s;
  uint64_t rss_kb;  // VmRSS
  uint64_t hwm_kb;  // VmHWM: peak RSS since the process started
} vk_proc_sample_t;

// vk_proc_sample reads /proc/PID/stat, /proc/PID/task/*/{comm,stat} and
// /proc/PID/status. Returns 0,
// VK_ENOTFOUND if there is no such process, or VK_EPROTO if a file does not
// parse.
int vk_proc_sample(vk_proc_sample_t *out, int64_t pid);

// vk_proc_sample_family is vk_proc_sample plus the CPU of the process's
// children: those it has reaped (cutime + cstime) and those alive now (a
// scan of /proc for its pid as parent). For redis-server, whose AOF
// rewrites and snapshots run in a forked child: 0.5-0.7 of a core for a
// second or two at a time under write-heavy scenarios, which would
// otherwise look like another process disturbing the run.
int vk_proc_sample_family(vk_proc_sample_t *out, int64_t pid);

// vk_proc_stat_t is what vkey-bench uses of /proc/PID/stat.
typedef struct vk_proc_stat_s {
  int64_t ppid;          // field 4
  uint64_t ticks;        // utime + stime (fields 14, 15), clock ticks
  uint64_t child_ticks;  // cutime + cstime (16, 17): reaped children
} vk_proc_stat_t;

// vk_proc_parse_stat_fields parses the text of /proc/PID/stat. The command
// name may hold spaces and parentheses, so fields are counted from the
// last ')'. Returns 0 or VK_EPROTO.
int vk_proc_parse_stat_fields(vk_proc_stat_t *out, const char *text);

// vk_proc_parse_stat extracts utime + stime (in clock ticks) from the text
// of /proc/PID/stat. Returns 0 or VK_EPROTO.
int vk_proc_parse_stat(uint64_t *out_ticks, const char *text);

// vk_proc_parse_status_kb finds the line "`key`:   N kB" in the text of
// /proc/PID/status. Returns 0 or VK_ENOTFOUND.
int vk_proc_parse_status_kb(uint64_t *out_kb, const char *text,
                            const char *key);

typedef struct vk_machine_sample_s {
  uint64_t total;  // jiffies of every CPU state, all CPUs
  uint64_t idle;   // idle + iowait
  uint64_t steal;  // time the hypervisor ran something else on our vCPUs
  int ncpu;        // online CPUs
} vk_machine_sample_t;

// vk_machine_parse_stat reads the "cpu" line at the start of the text of
// /proc/stat into `out` (ncpu is left 0). Returns 0 or VK_EPROTO.
int vk_machine_parse_stat(vk_machine_sample_t *out, const char *text);

// vk_machine_sample reads /proc/stat. Returns 0 or VK_EIO / VK_EPROTO.
int vk_machine_sample(vk_machine_sample_t *out);

// vk_machine_busy_cores returns how many CPUs were busy on average between
// two samples (0..ncpu). Steal counts as busy: the CPU was not ours.
double vk_machine_busy_cores(const vk_machine_sample_t *before,
                             const vk_machine_sample_t *after);

// vk_machine_steal_cores returns how many CPUs the hypervisor took on
// average between two samples (the steal column; part of it may also be
// charged to the processes that were running).
double vk_machine_steal_cores(const vk_machine_sample_t *before,
                              const vk_machine_sample_t *after);

// vk_self_cpu_s returns this process's user + system CPU seconds.
double vk_self_cpu_s(void);

// vk_pidfile_read reads a pid file (decimal digits, optional newline), as
// redis-server writes <data-dir>/redis.pid. Returns 0, VK_ENOTFOUND or
// VK_EPROTO.
int vk_pidfile_read(int64_t *out_pid, const char *path);

// vk_redis_parse_used_memory finds "used_memory:N" in the text of INFO.
// Returns 0 or VK_ENOTFOUND.
int vk_redis_parse_used_memory(uint64_t *out, const char *text);

// vk_redis_used_memory asks the Redis at `addr` (a unix socket path, or
// HOST:PORT) for INFO memory with a raw RESP command, blocking up to 2 s.
// Returns 0, VK_EUNAVAIL (cannot connect or no answer) or VK_EPROTO.
int vk_redis_used_memory(uint64_t *out, const char *addr);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_PROCSTAT_H
