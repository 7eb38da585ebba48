// Tests for bench/args.c: good command lines parse to the right config,
// each impossible one is refused with a message that names the problem.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

extern "C" {
#include "args.h"
#include "common.h"
}

namespace {

struct Parsed {
  int rv;
  vk_bench_config_t cfg;
  std::string err;
};

// Parse builds a writable argv (the parser's strings point into it, so it
// lives as long as the test's Parsed is used: static storage per call is
// enough because each test reads the result right away).
Parsed Parse(std::initializer_list<const char *> args) {
  static std::vector<std::string> storage;
  static std::vector<char *> argv;
  storage.assign(1, "vkey-bench");
  for (const char *a : args) {
    storage.emplace_back(a);
  }
  argv.clear();
  for (std::string &s : storage) {
    argv.push_back(&s[0]);
  }
  argv.push_back(nullptr);
  Parsed p;
  char err[256];
  p.rv = vk_bench_args_parse(&p.cfg, err, sizeof(err),
                             static_cast<int>(storage.size()), argv.data());
  p.err = err;
  return p;
}

TEST(BenchArgs, DefaultsWithATarget) {
  Parsed p = Parse({"127.0.0.1:50051"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_STREQ("127.0.0.1", p.cfg.host);
  EXPECT_STREQ("50051", p.cfg.port);
  EXPECT_STREQ("127.0.0.1:50051", p.cfg.authority);
  EXPECT_EQ(8u, p.cfg.connections);
  EXPECT_EQ(32u, p.cfg.streams);
  EXPECT_EQ(10.0, p.cfg.duration_s);
  EXPECT_EQ(0u, p.cfg.requests);
  EXPECT_EQ(0.0, p.cfg.rate);  // closed loop
  EXPECT_EQ(1.0, p.cfg.warmup_s);
  ASSERT_NE(nullptr, p.cfg.scenario);
  EXPECT_STREQ("health", p.cfg.scenario->name);
  EXPECT_EQ(0, p.cfg.json);
  EXPECT_EQ(0, p.cfg.server_pid);
}

TEST(BenchArgs, EveryOptionInBothSpellings) {
  Parsed p = Parse({"-c", "4", "-m16", "--duration=2.5", "--rate", "1500.5",
                    "--warmup", "0", "--scenario=health", "--server-pid",
                    "4242", "--json", "-q", "--health-service", "vkey",
                    "http://localhost:8080/"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(4u, p.cfg.connections);
  EXPECT_EQ(16u, p.cfg.streams);
  EXPECT_EQ(2.5, p.cfg.duration_s);
  EXPECT_EQ(1500.5, p.cfg.rate);
  EXPECT_EQ(0.0, p.cfg.warmup_s);
  EXPECT_EQ(4242, p.cfg.server_pid);
  EXPECT_EQ(1, p.cfg.json);
  EXPECT_EQ(1, p.cfg.quiet);
  EXPECT_STREQ("vkey", p.cfg.params.health_service);
  EXPECT_STREQ("localhost", p.cfg.host);
  EXPECT_STREQ("8080", p.cfg.port);
  EXPECT_STREQ("localhost:8080", p.cfg.authority);
}

TEST(BenchArgs, CountInsteadOfDuration) {
  Parsed p = Parse({"-n", "100000", "-c", "1", "-m", "1", "h:1"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(100000u, p.cfg.requests);
  EXPECT_EQ(0.0, p.cfg.duration_s);
}

TEST(BenchArgs, OpenLoopWithCount) {
  Parsed p = Parse({"--rate", "10", "-n", "50", "h:1"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(10.0, p.cfg.rate);
  EXPECT_EQ(50u, p.cfg.requests);
}

TEST(BenchArgs, Ipv6Literal) {
  Parsed p = Parse({"[::1]:50051"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_STREQ("::1", p.cfg.host);
  EXPECT_STREQ("50051", p.cfg.port);
  EXPECT_STREQ("[::1]:50051", p.cfg.authority);
}

TEST(BenchArgs, LargestAllowedValues) {
  Parsed p = Parse({"-c", "19000", "-m", "65536", "h:65535"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(19000u, p.cfg.connections);
  EXPECT_EQ(65536u, p.cfg.streams);
}

TEST(BenchArgs, DumpRequestNeedsNoTarget) {
  Parsed p = Parse({"--dump-request", "/tmp/req.bin"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_STREQ("/tmp/req.bin", p.cfg.dump_request);
  EXPECT_STREQ("health", p.cfg.scenario->name);
}

TEST(BenchArgs, IssuersIsAFixedRequestForH2load) {
  Parsed p = Parse({"-s", "issuers", "--dump-request", "/tmp/iss.bin"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_STREQ("issuers", p.cfg.scenario->name);
  EXPECT_EQ(VK_BENCH_WORK_POOL, p.cfg.scenario->workload);
  p = Parse({"-s", "issuers", "-c", "8", "-m", "32", "h:1"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;  // no --data-dir: no credential
}

TEST(BenchArgs, ShareIsASignedScenario) {
  Parsed p = Parse({"-s", "share", "--data-dir", "/d", "--rate", "500", "h:1"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(VK_BENCH_WORK_SHARE, p.cfg.scenario->workload);
  EXPECT_EQ(VK_BENCH_KIND_RPC, p.cfg.scenario->kind);
  EXPECT_EQ(500.0, p.cfg.rate);
  EXPECT_EQ(8u, p.cfg.connections);
  EXPECT_EQ(32u, p.cfg.streams);
}

TEST(BenchArgs, HelpWinsOverEverythingElse) {
  Parsed p = Parse({"--help"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(1, p.cfg.help);
  p = Parse({"-c", "3", "-h"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(1, p.cfg.help);
}

// Each impossible command line, and a word its message must contain.
struct Bad {
  std::vector<const char *> args;
  const char *message_part;
};

class BenchArgsRefused : public ::testing::TestWithParam<Bad> {};

TEST_P(BenchArgsRefused, WithAMessage) {
  const Bad &bad = GetParam();
  static std::vector<std::string> storage;
  static std::vector<char *> argv;
  storage.assign(1, "vkey-bench");
  for (const char *a : bad.args) {
    storage.emplace_back(a);
  }
  argv.clear();
  for (std::string &s : storage) {
    argv.push_back(&s[0]);
  }
  vk_bench_config_t cfg;
  char err[256];
  EXPECT_EQ(VK_EINVAL,
            vk_bench_args_parse(&cfg, err, sizeof(err),
                                static_cast<int>(argv.size()), argv.data()));
  EXPECT_NE(std::string::npos, std::string(err).find(bad.message_part))
      << "message was: " << err;
}

INSTANTIATE_TEST_SUITE_P(
    Impossible, BenchArgsRefused,
    ::testing::Values(
        Bad{{"-c", "0", "h:1"}, "-c/--connections must be 1..19000"},
        Bad{{"-c", "19001", "h:1"}, "-c/--connections"},
        Bad{{"-c", "-1", "h:1"}, "-c/--connections"},
        Bad{{"-c", "1x", "h:1"}, "-c/--connections"},
        Bad{{"-c", "", "h:1"}, "-c/--connections"},
        Bad{{"-m", "0", "h:1"}, "-m/--streams must be 1..65536"},
        Bad{{"-m", "65537", "h:1"}, "-m/--streams"},
        Bad{{"--rate", "-1", "h:1"}, "--rate must be > 0"},
        Bad{{"--rate", "0", "h:1"}, "--rate must be > 0"},
        Bad{{"--rate", "nan", "h:1"}, "not a number"},
        Bad{{"--rate", "inf", "h:1"}, "not a number"},
        Bad{{"--rate", "fast", "h:1"}, "not a number"},
        Bad{{"-d", "0", "h:1"}, "-d/--duration"},
        Bad{{"-d", "-3", "h:1"}, "-d/--duration"},
        Bad{{"-n", "0", "h:1"}, "-n/--requests must be >= 1"},
        Bad{{"-d", "5", "-n", "10", "h:1"}, "not both"},
        Bad{{"--warmup", "-1", "h:1"}, "--warmup"},
        Bad{{"-s", "nosuch", "h:1"}, "unknown scenario 'nosuch'"},
        Bad{{"-s", "verify", "h:1"}, "'verify' needs --data-dir"},
        Bad{{"-s", "verify-p256", "h:1"}, "needs --data-dir"},
        Bad{{"-s", "verify-cold", "h:1"}, "needs --data-dir"},
        Bad{{"-s", "check", "h:1"}, "needs --data-dir"},
        Bad{{"-s", "connect", "h:1"}, "needs --data-dir"},
        Bad{{"-s", "verify", "--data-dir", "d", "--dump-request", "f"},
            "signs each request afresh"},
        Bad{{"-s", "apply", "h:1"}, "needs --data-dir"},
        Bad{{"-s", "mixed", "h:1"}, "needs --data-dir"},
        Bad{{"-s", "share", "h:1"}, "'share' needs --data-dir"},
        Bad{{"-s", "share", "--data-dir", "d", "--dump-request", "f"},
            "signs each request afresh"},
        Bad{{"--vehicles", "0", "h:1"}, "--vehicles must be 1..1000000"},
        Bad{{"--signers", "17", "h:1"}, "--signers must be 1..16"},
        Bad{{"--ring", "8", "h:1"}, "--ring must be"},
        Bad{{"--prebuild", "0", "h:1"}, "--prebuild must be 1..2000000"},
        Bad{{"--prebuild", "2000001", "h:1"}, "--prebuild"},
        Bad{{"--prebuild", "100", "h:1"}, "scenario 'health' has no signed"},
        Bad{{"-s", "connect", "--data-dir", "d", "--prebuild", "100", "h:1"},
            "scenario 'connect' has no signed"},
        Bad{{"--cold-keys", "0", "h:1"}, "--cold-keys"},
        Bad{{"--sources", "251", "h:1"}, "--sources"},
        Bad{{"--push-rate", "0", "h:1"}, "--push-rate"},
        Bad{{"--hold", "-1", "h:1"}, "--hold"},
        Bad{{"--data-dir", "", "h:1"}, "--data-dir needs"},
        Bad{{"--redis-pid", "x", "h:1"}, "--redis-pid"},
        Bad{{"-s", "connect", "--data-dir", "d", "--vehicles", "20000", "h:1"},
            "needs 20000 connections"},
        Bad{{"--server-pid", "0", "h:1"}, "--server-pid"},
        Bad{{"--server-pid", "abc", "h:1"}, "--server-pid"},
        Bad{{"--json=1", "h:1"}, "takes no value"},
        Bad{{"--frobnicate", "h:1"}, "unknown option '--frobnicate'"},
        Bad{{"-x", "h:1"}, "unknown option '-x'"},
        Bad{{"h:1", "-c"}, "needs a value"},
        Bad{{"--dump-request", ""}, "needs a file name"},
        Bad{{}, "missing target"}, Bad{{"-c", "2"}, "missing target"},
        Bad{{"h:1", "h:2"}, "one target only"},
        Bad{{"localhost"}, "expected HOST:PORT"},
        Bad{{"localhost:0"}, "port must be 1..65535"},
        Bad{{"localhost:65536"}, "port must be 1..65535"},
        Bad{{"localhost:http"}, "port must be 1..65535"},
        Bad{{":50051"}, "bad host"}, Bad{{"::1:50051"}, "[ADDR]:PORT"},
        Bad{{"[::1]50051"}, "[IPV6]:PORT"},
        Bad{{"https://h:443"}, "TLS is not supported"}));

TEST(BenchArgs, SignedScenarios) {
  Parsed p = Parse({"-s", "verify-p256", "--data-dir", "/d", "--vehicles", "8",
                    "--seed", "7", "--signers", "2", "--ring", "1024",
                    "--prebuild", "50000", "h:1"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(VK_BENCH_WORK_VERIFY_P256, p.cfg.scenario->workload);
  EXPECT_STREQ("/d", p.cfg.params.data_dir);
  EXPECT_EQ(8u, p.cfg.params.vehicles);
  EXPECT_EQ(7u, p.cfg.params.seed);
  EXPECT_EQ(2u, p.cfg.params.signers);
  EXPECT_EQ(1024u, p.cfg.params.ring);
  EXPECT_EQ(50000u, p.cfg.params.prebuild);
  EXPECT_EQ(32u, p.cfg.streams);  // RPC scenarios keep -m's default
  p = Parse({"-s", "check", "--data-dir", "/d", "h:1"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(1024u, p.cfg.params.vehicles);
  EXPECT_EQ(1u, p.cfg.params.seed);
  EXPECT_EQ(1u, p.cfg.params.signers);
  EXPECT_EQ(0u, p.cfg.params.prebuild);  // signers keep pace by default
}

TEST(BenchArgs, ConnectDerivesConnectionsFromVehicles) {
  Parsed p = Parse(
      {"-s", "connect", "--data-dir", "/d", "--vehicles", "19000", "h:1"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(1u, p.cfg.streams);  // one vehicle per connection by default
  EXPECT_EQ(19000u, p.cfg.connections);
  p = Parse({"-s", "connect", "--data-dir", "/d", "--vehicles", "20000", "-m",
             "100", "--push", "10", "--push-rate", "5", "--hold", "0",
             "--sources", "4", "--redis", "/r.sock", "h:1"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(200u, p.cfg.connections);
  EXPECT_EQ(100u, p.cfg.streams);
  EXPECT_EQ(10u, p.cfg.params.push);
  EXPECT_EQ(5.0, p.cfg.params.push_rate);
  EXPECT_EQ(0.0, p.cfg.params.hold_s);
  EXPECT_EQ(4u, p.cfg.params.sources);
  EXPECT_STREQ("/r.sock", p.cfg.params.redis);
  p = Parse({"-s", "connect", "--data-dir", "/d", "--vehicles", "250", "-m",
             "100", "h:1"});
  ASSERT_EQ(VK_OK, p.rv) << p.err;
  EXPECT_EQ(3u, p.cfg.connections);  // rounded up
}

TEST(BenchArgs, UsageListsEveryScenarioAndMarksTheMissingOnes) {
  char *text = nullptr;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  ASSERT_NE(nullptr, f);
  vk_bench_usage(f);
  fclose(f);
  std::string usage(text, len);
  free(text);
  for (size_t i = 0; i < vk_bench_nscenarios; i++) {
    const vk_bench_scenario_t *sc = &vk_bench_scenarios[i];
    size_t at = usage.find(std::string("  ") + sc->name + " ");
    ASSERT_NE(std::string::npos, at) << sc->name;
    std::string line = usage.substr(at, usage.find('\n', at) - at);
    EXPECT_EQ(!sc->available,
              line.find("not yet available") != std::string::npos)
        << line;
  }
}

}  // namespace
