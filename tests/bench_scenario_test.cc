// Tests for bench/scenario.c, procstat.c and report.c: the exact request
// bytes (h2load replays them), response checks, /proc parsing and the JSON
// report's shape.
#include <gtest/gtest.h>
#include <pthread.h>

#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

extern "C" {
#include "common.h"
#include "procstat.h"
#include "report.h"
#include "scenario.h"
#include "vkey/v1/keys.pb-c.h"
}

namespace {

std::vector<uint8_t> Body(const vk_bench_req_t &r) {
  return std::vector<uint8_t>(r.body, r.body + r.body_len);
}

TEST(BenchScenario, HealthRequestBytes) {
  const vk_bench_scenario_t *sc = vk_bench_scenario_find("health");
  ASSERT_NE(nullptr, sc);
  ASSERT_TRUE(sc->available);
  vk_bench_params_t params = {""};
  vk_bench_pool_t pool;
  ASSERT_EQ(VK_OK, vk_bench_pool_build(&pool, sc, &params));
  ASSERT_EQ(1u, pool.n);
  EXPECT_STREQ("/grpc.health.v1.Health/Check", pool.reqs[0].path);
  // An empty HealthCheckRequest: the 5-byte prefix and no message bytes.
  EXPECT_EQ((std::vector<uint8_t>{0, 0, 0, 0, 0}), Body(pool.reqs[0]));
  vk_bench_pool_cleanup(&pool);

  params.health_service = "x";
  ASSERT_EQ(VK_OK, vk_bench_pool_build(&pool, sc, &params));
  // Field 1 (service), length 1, "x".
  EXPECT_EQ((std::vector<uint8_t>{0, 0, 0, 0, 3, 0x0a, 0x01, 'x'}),
            Body(pool.reqs[0]));
  vk_bench_pool_cleanup(&pool);
  vk_bench_pool_cleanup(&pool);  // cleanup twice is safe
}

TEST(BenchScenario, IssuersRequestBytesAndCheck) {
  const vk_bench_scenario_t *sc = vk_bench_scenario_find("issuers");
  ASSERT_NE(nullptr, sc);
  ASSERT_TRUE(sc->available);
  vk_bench_params_t params = {""};
  vk_bench_pool_t pool;
  ASSERT_EQ(VK_OK, vk_bench_pool_build(&pool, sc, &params));
  ASSERT_EQ(1u, pool.n);
  EXPECT_STREQ("/vkey.v1.KeyService/GetIssuerKeys", pool.reqs[0].path);
  // An empty GetIssuerKeysRequest: the prefix alone, as h2load replays it.
  EXPECT_EQ((std::vector<uint8_t>{0, 0, 0, 0, 0}), Body(pool.reqs[0]));
  vk_bench_pool_cleanup(&pool);

  const char *why = nullptr;
  const char *path = "/vkey.v1.KeyService/GetIssuerKeys";
  uint8_t pub[32] = {1};
  Vkey__V1__IssuerKey k = VKEY__V1__ISSUER_KEY__INIT;
  k.key_id = const_cast<char *>("0123456789abcdef");
  k.public_key = {sizeof(pub), pub};
  Vkey__V1__IssuerKey *keys[1] = {&k};
  Vkey__V1__GetIssuerKeysResponse resp =
      VKEY__V1__GET_ISSUER_KEYS_RESPONSE__INIT;
  resp.n_keys = 1;
  resp.keys = keys;
  uint8_t buf[128];
  size_t len = vkey__v1__get_issuer_keys_response__pack(&resp, buf);
  EXPECT_EQ(VK_OK, sc->check(&why, path, buf, len));
  k.public_key.len = 31;
  len = vkey__v1__get_issuer_keys_response__pack(&resp, buf);
  EXPECT_EQ(VK_EPROTO, sc->check(&why, path, buf, len));
  resp.n_keys = 0;
  len = vkey__v1__get_issuer_keys_response__pack(&resp, buf);
  EXPECT_EQ(VK_EPROTO, sc->check(&why, path, buf, len));
  EXPECT_STREQ("GetIssuerKeysResponse does not parse or has no key", why);
}

TEST(BenchScenario, HealthCheckAcceptsOnlyServing) {
  const vk_bench_scenario_t *sc = vk_bench_scenario_find("health");
  const char *why = nullptr;
  const uint8_t serving[] = {0x08, 0x01};
  const uint8_t not_serving[] = {0x08, 0x02};
  const uint8_t garbage[] = {0xff, 0xff, 0xff};
  const char *path = "/grpc.health.v1.Health/Check";
  EXPECT_EQ(VK_OK, sc->check(&why, path, serving, sizeof(serving)));
  EXPECT_EQ(VK_EPROTO, sc->check(&why, path, not_serving, sizeof(not_serving)));
  EXPECT_STREQ("status is not SERVING", why);
  EXPECT_EQ(VK_EPROTO, sc->check(&why, path, garbage, sizeof(garbage)));
  // An empty message is UNKNOWN status: refused.
  EXPECT_EQ(VK_EPROTO, sc->check(&why, path, serving, 0));
}

TEST(BenchScenario, UnavailableScenariosHaveNoPoolButAReason) {
  for (size_t i = 0; i < vk_bench_nscenarios; i++) {
    const vk_bench_scenario_t *sc = &vk_bench_scenarios[i];
    if (sc->available && sc->workload == VK_BENCH_WORK_POOL) {
      EXPECT_NE(nullptr, sc->build) << sc->name;
      EXPECT_NE(nullptr, sc->check) << sc->name;
      continue;
    }
    if (sc->available) {
      // Signed scenarios: requests come from the signers, never a pool;
      // every RPC one checks its answers.
      EXPECT_EQ(nullptr, sc->build) << sc->name;
      EXPECT_EQ(sc->kind == VK_BENCH_KIND_RPC, sc->check != nullptr)
          << sc->name;
      vk_bench_params_t params = {""};
      vk_bench_pool_t pool;
      EXPECT_EQ(VK_EINVAL, vk_bench_pool_build(&pool, sc, &params));
      continue;
    }
    ASSERT_NE(nullptr, sc->missing) << sc->name;
    vk_bench_params_t params = {""};
    vk_bench_pool_t pool;
    EXPECT_EQ(VK_EINVAL, vk_bench_pool_build(&pool, sc, &params)) << sc->name;
  }
  EXPECT_EQ(nullptr, vk_bench_scenario_find("nosuch"));
  ASSERT_NE(nullptr, vk_bench_scenario_find("connect"));
  EXPECT_EQ(VK_BENCH_KIND_CONNECT, vk_bench_scenario_find("connect")->kind);
}

TEST(BenchScenario, Unframe) {
  const uint8_t *msg = nullptr;
  size_t len = 0;
  const char *why = nullptr;
  const uint8_t good[] = {0, 0, 0, 0, 2, 0x08, 0x01};
  ASSERT_EQ(VK_OK, vk_bench_grpc_unframe(&msg, &len, &why, good, sizeof(good)));
  EXPECT_EQ(2u, len);
  EXPECT_EQ(good + 5, msg);
  const uint8_t empty[] = {0, 0, 0, 0, 0};
  ASSERT_EQ(VK_OK,
            vk_bench_grpc_unframe(&msg, &len, &why, empty, sizeof(empty)));
  EXPECT_EQ(0u, len);
  const uint8_t truncated[] = {0, 0, 0, 0, 3, 0x08};
  EXPECT_EQ(VK_EPROTO, vk_bench_grpc_unframe(&msg, &len, &why, truncated,
                                             sizeof(truncated)));
  const uint8_t compressed[] = {1, 0, 0, 0, 0};
  EXPECT_EQ(VK_EPROTO, vk_bench_grpc_unframe(&msg, &len, &why, compressed,
                                             sizeof(compressed)));
  const uint8_t two[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(VK_EPROTO,
            vk_bench_grpc_unframe(&msg, &len, &why, two, sizeof(two)));
  const uint8_t huge[] = {0, 0xff, 0xff, 0xff, 0xff};
  EXPECT_EQ(VK_EPROTO,
            vk_bench_grpc_unframe(&msg, &len, &why, huge, sizeof(huge)));
  EXPECT_EQ(VK_EPROTO, vk_bench_grpc_unframe(&msg, &len, &why, good, 3));
  EXPECT_EQ(VK_EPROTO, vk_bench_grpc_unframe(&msg, &len, &why, nullptr, 0));
}

TEST(BenchScenario, StatusNames) {
  EXPECT_STREQ("OK", vk_bench_grpc_status_name(0));
  EXPECT_STREQ("NOT_FOUND", vk_bench_grpc_status_name(5));
  EXPECT_STREQ("UNAVAILABLE", vk_bench_grpc_status_name(14));
  EXPECT_STREQ("UNAUTHENTICATED", vk_bench_grpc_status_name(16));
  EXPECT_STREQ("UNKNOWN_CODE", vk_bench_grpc_status_name(17));
  EXPECT_STREQ("UNKNOWN_CODE", vk_bench_grpc_status_name(-1));
}

TEST(BenchScenario, BufferCap) {
  vk_bench_buf_t b = {};
  std::vector<uint8_t> chunk(VK_BENCH_MAX_MESSAGE / 2);
  EXPECT_EQ(VK_OK, vk_bench_buf_append(&b, chunk.data(), chunk.size()));
  EXPECT_EQ(VK_OK, vk_bench_buf_append(&b, chunk.data(), chunk.size()));
  EXPECT_EQ(VK_ETOOBIG, vk_bench_buf_append(&b, chunk.data(), 1));
  EXPECT_EQ(VK_BENCH_MAX_MESSAGE, b.len);
  vk_bench_buf_cleanup(&b);
  EXPECT_EQ(0u, b.len);
}

TEST(BenchProcstat, ParsesStatWithAWickedCommandName) {
  // The command name may hold spaces and ')': fields count from the last
  // ')'. utime = 1234 and stime = 56 are fields 14 and 15.
  const char *stat =
      "4242 (vk d) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 "
      "0 3 0 12345 1000000 250 18446744073709551615";
  uint64_t ticks = 0;
  ASSERT_EQ(VK_OK, vk_proc_parse_stat(&ticks, stat));
  EXPECT_EQ(1290u, ticks);
  EXPECT_EQ(VK_EPROTO, vk_proc_parse_stat(&ticks, "4242 (short) S 1 2"));
  EXPECT_EQ(VK_EPROTO, vk_proc_parse_stat(&ticks, "no parenthesis"));
}

TEST(BenchProcstat, MachineBusyCountsStealAndReportsItApart) {
  // user nice system idle iowait irq softirq steal guest guest_nice
  vk_machine_sample_t a, b;
  ASSERT_EQ(VK_OK, vk_machine_parse_stat(
                       &a, "cpu  1000 0 100 5000 10 0 50 200 0 0\ncpu0 1 2"));
  ASSERT_EQ(VK_OK, vk_machine_parse_stat(
                       &b, "cpu  1300 0 150 5130 20 0 50 300 0 0\ncpu0 1 2"));
  EXPECT_EQ(200u, a.steal);
  EXPECT_EQ(5010u, a.idle);
  a.ncpu = b.ncpu = 2;
  // 590 jiffies passed: 140 idle, 450 busy of which 100 stolen.
  EXPECT_NEAR(2.0 * 450 / 590, vk_machine_busy_cores(&a, &b), 1e-9);
  EXPECT_NEAR(2.0 * 100 / 590, vk_machine_steal_cores(&a, &b), 1e-9);
  // A kernel without the steal field reports none.
  ASSERT_EQ(VK_OK, vk_machine_parse_stat(&a, "cpu  1 2 3 4 5"));
  EXPECT_EQ(0u, a.steal);
  EXPECT_EQ(VK_EPROTO, vk_machine_parse_stat(&a, "cpu  1 2 3"));
  EXPECT_EQ(VK_EPROTO, vk_machine_parse_stat(&a, "intr 1 2 3 4 5"));
}

TEST(BenchProcstat, ParsesParentAndChildrenTicks) {
  // ppid is field 4; cutime = 7 and cstime = 8 are fields 16 and 17.
  const char *stat =
      "4242 (redis-server *:0) S 99 4242 4242 0 -1 4194560 100 0 0 0 1234 "
      "56 7 8 20 0 3 0 12345 1000000 250";
  vk_proc_stat_t st;
  ASSERT_EQ(VK_OK, vk_proc_parse_stat_fields(&st, stat));
  EXPECT_EQ(99, st.ppid);
  EXPECT_EQ(1290u, st.ticks);
  EXPECT_EQ(15u, st.child_ticks);
  EXPECT_EQ(VK_EPROTO, vk_proc_parse_stat_fields(&st, "1 (x) S 1 2 3"));
}

// A child's CPU counts in its parent's family, alive (found by its ppid)
// and once reaped (cutime): as redis-server's AOF-rewrite child must.
TEST(BenchProcstat, FamilyCountsChildrenAliveAndReaped) {
  int ready[2];
  ASSERT_EQ(0, pipe(ready));
  vk_proc_sample_t before, alive, reaped, self_alive;
  ASSERT_EQ(VK_OK, vk_proc_sample_family(&before, getpid()));
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Burn 0.3 s of CPU, say so, then wait to be killed.
    struct timespec ts;
    do {
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    } while (ts.tv_sec == 0 && ts.tv_nsec < 300 * 1000 * 1000);
    char c = 1;
    (void)!write(ready[1], &c, 1);
    pause();
    _exit(0);
  }
  char c;
  ASSERT_EQ(1, read(ready[0], &c, 1));
  ASSERT_EQ(VK_OK, vk_proc_sample_family(&alive, getpid()));
  ASSERT_EQ(VK_OK, vk_proc_sample(&self_alive, getpid()));
  kill(child, SIGKILL);
  int status;
  ASSERT_EQ(child, waitpid(child, &status, 0));
  ASSERT_EQ(VK_OK, vk_proc_sample_family(&reaped, getpid()));
  close(ready[0]);
  close(ready[1]);
  // Tick counters are 10 ms coarse: 0.3 s shows as at least 0.2.
  EXPECT_GE(alive.cpu_s - before.cpu_s, 0.2);
  EXPECT_GE(reaped.cpu_s - before.cpu_s, 0.2);
  EXPECT_LT(self_alive.cpu_s - before.cpu_s, alive.cpu_s - before.cpu_s);
}

TEST(BenchProcstat, ParsesStatus) {
  const char *status =
      "Name:\tvkeyd\nVmPeak:\t  9000 kB\nVmHWM:\t    5000 kB\n"
      "VmRSS:\t    4321 kB\nThreads:\t3\n";
  uint64_t kb = 0;
  ASSERT_EQ(VK_OK, vk_proc_parse_status_kb(&kb, status, "VmRSS"));
  EXPECT_EQ(4321u, kb);
  ASSERT_EQ(VK_OK, vk_proc_parse_status_kb(&kb, status, "VmHWM"));
  EXPECT_EQ(5000u, kb);
  EXPECT_EQ(VK_ENOTFOUND, vk_proc_parse_status_kb(&kb, status, "VmSwap"));
  EXPECT_EQ(VK_ENOTFOUND, vk_proc_parse_status_kb(&kb, status, "VmRS"));
}

// Burns `seconds` of this thread's CPU, named `name` if not NULL.
static void burn(const char *name, double seconds) {
  if (name != nullptr) {
    pthread_setname_np(pthread_self(), name);
  }
  struct timespec start, now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start);
  do {
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  } while ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 <
           seconds);
}

// The event loops' CPU is told apart from the others': here a second,
// unnamed thread burns a third of a second while the main thread waits.
TEST(BenchProcstat, LoopThreadsCpuApartFromTheOthers) {
  vk_proc_sample_t before, after;
  ASSERT_EQ(VK_OK, vk_proc_sample(&before, getpid()));
  EXPECT_LE(before.loop_threads_cpu_s, before.cpu_s);
  std::thread burner(burn, nullptr, 0.3);
  burner.join();
  ASSERT_EQ(VK_OK, vk_proc_sample(&after, getpid()));
  // /proc counts in 10 ms ticks.
  EXPECT_GE(after.cpu_s - before.cpu_s, 0.25);
  EXPECT_LT(after.loop_threads_cpu_s - before.loop_threads_cpu_s, 0.1);
}

// vkeyd's other event loops run in threads named vkeyd-loopN: they count
// with the main thread. Sampled while the thread runs: an ended thread's
// time stays in the process's total only. The thread burns a measured
// amount of its own CPU, not of wall time: a busy machine (parallel tests,
// a host that steals) gives it less CPU per second.
TEST(BenchProcstat, ThreadsNamedVkeydLoopCountAsLoops) {
  std::atomic<bool> named{false}, go{false}, burned{false}, stop{false};
  std::thread loop([&] {
    pthread_setname_np(pthread_self(), "vkeyd-loop1");
    named = true;
    while (!go) {
    }
    burn(nullptr, 0.3);
    burned = true;
    while (!stop) {
    }
  });
  while (!named) {
  }
  vk_proc_sample_t before, after;
  ASSERT_EQ(VK_OK, vk_proc_sample(&before, getpid()));
  go = true;
  while (!burned) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(VK_OK, vk_proc_sample(&after, getpid()));
  stop = true;
  loop.join();
  // /proc counts in 10 ms ticks.
  EXPECT_GE(after.loop_threads_cpu_s - before.loop_threads_cpu_s, 0.25);
}

TEST(BenchProcstat, SamplesThisProcessAndTheMachine) {
  vk_proc_sample_t s;
  ASSERT_EQ(VK_OK, vk_proc_sample(&s, getpid()));
  EXPECT_GT(s.rss_kb, 0u);
  EXPECT_GE(s.hwm_kb, s.rss_kb);
  EXPECT_GE(s.cpu_s, 0.0);
  EXPECT_EQ(VK_ENOTFOUND, vk_proc_sample(&s, 0x7ffffffe));
  vk_machine_sample_t a, b;
  ASSERT_EQ(VK_OK, vk_machine_sample(&a));
  ASSERT_EQ(VK_OK, vk_machine_sample(&b));
  EXPECT_GE(a.ncpu, 1);
  double busy = vk_machine_busy_cores(&a, &b);
  EXPECT_GE(busy, 0.0);
  EXPECT_LE(busy, a.ncpu);
}

TEST(BenchReport, JsonHasEveryFigureAndEscapesServerText) {
  vk_bench_config_t cfg = {};
  snprintf(cfg.authority, sizeof(cfg.authority), "127.0.0.1:1");
  cfg.connections = 8;
  cfg.streams = 32;
  cfg.scenario = vk_bench_scenario_find("health");
  cfg.server_pid = 77;
  vk_bench_result_t r;
  ASSERT_EQ(VK_OK, vk_bench_result_init(&r));
  r.elapsed_s = 2;
  r.ok = 1000;
  for (uint64_t v = 1; v <= 1000; v++) {
    vk_hist_record(&r.latency, v);
  }
  r.grpc_errors[14] = 3;
  r.http_errors = 2;
  r.has_server = 1;
  r.server_cpu_s = 0.0201;
  r.server_loops_cpu_s = 0.00603;
  snprintf(r.first_error, sizeof(r.first_error), "say \"hi\"\n\x01");
  char *text = nullptr;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  ASSERT_NE(nullptr, f);
  vk_bench_report_json(f, &cfg, &r);
  fclose(f);
  std::string json(text, len);
  free(text);
  for (const char *part :
       {"\"scenario\":\"health\"", "\"ok\":1000", "\"failed\":5",
        "\"throughput_rps\":500.000", "\"p50\":", "\"p999\":", "\"max\":1000",
        "\"UNAVAILABLE\":3", "\"http\":2", "\"cpu_us_per_request\":20.000",
        "\"loop_threads_cpu_us_per_request\":6.000",
        "\"other_threads_cpu_us_per_request\":14.000", "\"pid\":77",
        "say \\\"hi\\\"\\u000a\\u0001"}) {
    EXPECT_NE(std::string::npos, json.find(part)) << part << " in " << json;
  }
  EXPECT_NE(std::string::npos, json.find("\"steps\":null")) << json;
  EXPECT_EQ('\n', json.back());
  EXPECT_EQ(json.size() - 1, json.find('\n')) << "one line";
  vk_bench_result_cleanup(&r);
}

TEST(BenchReport, OperationsOfSeveralCallsReportEachStep) {
  vk_bench_config_t cfg = {};
  snprintf(cfg.authority, sizeof(cfg.authority), "127.0.0.1:1");
  cfg.scenario = vk_bench_scenario_find("share");
  vk_bench_result_t r;
  ASSERT_EQ(VK_OK, vk_bench_result_init(&r));
  r.elapsed_s = 1;
  r.ok = 3;
  for (uint64_t v : {10, 20, 30}) {
    vk_hist_record(&r.latency, 2 * v);
    vk_bench_result_step(&r, 0, "/a.A/First", v);
    vk_bench_result_step(&r, 1, "/a.A/Second", v);
  }
  vk_bench_result_step(&r, 0, "/other", 5);  // the first path names a step
  vk_bench_result_step(&r, VK_BENCH_MAX_STEPS, "/x", 1);  // ignored
  EXPECT_EQ(2u, r.n_steps);
  EXPECT_EQ(4u, r.step_latency[0].total);
  char *text = nullptr;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  ASSERT_NE(nullptr, f);
  vk_bench_report_json(f, &cfg, &r);
  vk_bench_report_text(f, &cfg, &r);
  fclose(f);
  std::string out(text, len);
  free(text);
  for (const char *part :
       {"\"steps\":[{\"path\":\"/a.A/First\",\"ok\":4,",
        "{\"path\":\"/a.A/Second\",\"ok\":3,\"latency_us\":{\"p50\":20,",
        "3.0 operations/s", "2 calls each"}) {
    EXPECT_NE(std::string::npos, out.find(part)) << part << " in " << out;
  }
  vk_bench_result_cleanup(&r);
}

}  // namespace
