// config_test: vkeyd's command line (server/config.c).
#include <gtest/gtest.h>

#include <cstdio>
#include <initializer_list>
#include <string>
#include <vector>

#include "config.h"

namespace {

// Runs vk_config_parse over "vkeyd" + args, capturing both streams.
class Parse {
 public:
  explicit Parse(std::initializer_list<const char *> args) {
    storage_.push_back("vkeyd");
    for (const char *a : args) {
      storage_.push_back(a);
    }
    for (std::string &s : storage_) {
      argv_.push_back(&s[0]);
    }
    argv_.push_back(nullptr);
    char *info_buf = nullptr;
    char *err_buf = nullptr;
    size_t info_len = 0;
    size_t err_len = 0;
    FILE *info = open_memstream(&info_buf, &info_len);
    FILE *err = open_memstream(&err_buf, &err_len);
    rv = vk_config_parse(&cfg, static_cast<int>(argv_.size() - 1), argv_.data(),
                         info, err);
    fclose(info);
    fclose(err);
    out = info_buf != nullptr ? info_buf : "";
    error = err_buf != nullptr ? err_buf : "";
    free(info_buf);
    free(err_buf);
  }

  int rv;
  vk_config_t cfg;
  std::string out;
  std::string error;

 private:
  // Kept alive: the config's strings point into argv.
  std::vector<std::string> storage_;
  std::vector<char *> argv_;
};

TEST(Config, Defaults) {
  Parse p({});
  ASSERT_EQ(p.rv, VK_OK) << p.error;
  EXPECT_STREQ(p.cfg.listen_host, "127.0.0.1");
  EXPECT_EQ(p.cfg.listen_port, 50051);
  EXPECT_LT(p.cfg.tls_port, 0);
  EXPECT_EQ(p.cfg.tls_cert, nullptr);
  EXPECT_EQ(p.cfg.redis_url, nullptr);
  EXPECT_STREQ(p.cfg.data_dir, "./vkey-data");
  EXPECT_STREQ(p.cfg.redis_server, "redis-server");
  EXPECT_EQ(p.cfg.workers, 0u);
  EXPECT_EQ(p.cfg.loops, 0u);
  EXPECT_EQ(p.cfg.drain_timeout_ms, 5000u);
  EXPECT_EQ(p.cfg.redis_timeout_ms, 2000u);
  EXPECT_EQ(p.cfg.log_level, VK_LOG_INFO);
  EXPECT_EQ(p.cfg.limits.max_concurrent_streams, 100u);
  EXPECT_EQ(p.cfg.limits.max_header_list_size, 16384u);
  EXPECT_EQ(p.cfg.limits.max_message_size, 4u * 1024 * 1024);
  EXPECT_EQ(p.cfg.limits.max_connections, 18000u);
  EXPECT_EQ(p.cfg.limits.idle_timeout_ms, 300000u);
  EXPECT_EQ(p.cfg.limits.send_queue_bytes, 262144u);
  EXPECT_TRUE(p.error.empty());
}

TEST(Config, EveryFlag) {
  Parse p({"--listen",          "0.0.0.0:6000",
           "--tls-listen",      "[::1]:6443",
           "--tls-cert",        "c.pem",
           "--tls-key",         "k.pem",
           "--redis",           "redis://127.0.0.1:7000",
           "--data-dir",        "/tmp/d",
           "--redis-server",    "/usr/bin/redis-server",
           "--workers",         "3",
           "--max-streams",     "7",
           "--max-header-list", "2048",
           "--max-message",     "1000",
           "--max-connections", "3",
           "--idle-timeout",    "300",
           "--drain-timeout",   "500",
           "--redis-timeout",   "750",
           "--send-queue",      "4096",
           "--log-level",       "debug"});
  ASSERT_EQ(p.rv, VK_OK) << p.error;
  EXPECT_STREQ(p.cfg.listen_host, "0.0.0.0");
  EXPECT_EQ(p.cfg.listen_port, 6000);
  EXPECT_STREQ(p.cfg.tls_host, "::1");
  EXPECT_EQ(p.cfg.tls_port, 6443);
  EXPECT_STREQ(p.cfg.tls_cert, "c.pem");
  EXPECT_STREQ(p.cfg.tls_key, "k.pem");
  EXPECT_STREQ(p.cfg.redis_url, "redis://127.0.0.1:7000");
  EXPECT_STREQ(p.cfg.data_dir, "/tmp/d");
  EXPECT_STREQ(p.cfg.redis_server, "/usr/bin/redis-server");
  EXPECT_EQ(p.cfg.workers, 3u);
  EXPECT_EQ(p.cfg.limits.max_concurrent_streams, 7u);
  EXPECT_EQ(p.cfg.limits.max_header_list_size, 2048u);
  EXPECT_EQ(p.cfg.limits.max_message_size, 1000u);
  EXPECT_EQ(p.cfg.limits.max_connections, 3u);
  EXPECT_EQ(p.cfg.limits.idle_timeout_ms, 300u);
  EXPECT_EQ(p.cfg.drain_timeout_ms, 500u);
  EXPECT_EQ(p.cfg.redis_timeout_ms, 750u);
  EXPECT_EQ(p.cfg.limits.send_queue_bytes, 4096u);
  EXPECT_EQ(p.cfg.log_level, VK_LOG_DEBUG);
}

TEST(Config, EqualsSyntaxAndLastWins) {
  Parse p({"--max-streams=9", "--max-streams", "10", "--listen=h:1"});
  ASSERT_EQ(p.rv, VK_OK) << p.error;
  EXPECT_EQ(p.cfg.limits.max_concurrent_streams, 10u);
  EXPECT_STREQ(p.cfg.listen_host, "h");
  EXPECT_EQ(p.cfg.listen_port, 1);
}

TEST(Config, LogLevels) {
  for (auto [name, level] :
       {std::pair<const char *, vk_log_level_t>{"debug", VK_LOG_DEBUG},
        {"info", VK_LOG_INFO},
        {"warn", VK_LOG_WARN},
        {"error", VK_LOG_ERROR}}) {
    Parse p({"--log-level", name});
    ASSERT_EQ(p.rv, VK_OK) << name;
    EXPECT_EQ(p.cfg.log_level, level) << name;
  }
  Parse bad({"--log-level", "loud"});
  EXPECT_EQ(bad.rv, VK_EINVAL);
  EXPECT_NE(bad.error.find("--log-level"), std::string::npos);
}

TEST(Config, HelpAndVersionReturnOne) {
  Parse help({"--help"});
  EXPECT_EQ(help.rv, 1);
  EXPECT_NE(help.out.find("usage: vkeyd"), std::string::npos);
  EXPECT_NE(help.out.find("--max-header-list"), std::string::npos);
  EXPECT_TRUE(help.error.empty());
  // --help wins even after other flags.
  Parse late({"--max-streams", "5", "--help"});
  EXPECT_EQ(late.rv, 1);
  Parse version({"--version"});
  EXPECT_EQ(version.rv, 1);
  EXPECT_NE(version.out.find("vkeyd"), std::string::npos);
}

TEST(Config, BadNumbers) {
  for (const char *v : {"", "abc", "12abc", "-1", " -1", "1.5", "0x10",
                        "99999999999999999999", "4294967296"}) {
    Parse p({"--max-streams", v});
    EXPECT_EQ(p.rv, VK_EINVAL) << "'" << v << "'";
    EXPECT_NE(p.error.find("--max-streams"), std::string::npos) << v;
  }
}

// Each numeric flag: its minimum and maximum pass, one past either fails.
TEST(Config, Ranges) {
  struct Range {
    const char *flag;
    const char *min, *max, *below, *above;
  };
  const Range ranges[] = {
      {"--workers", "0", "256", nullptr, "257"},
      {"--loops", "0", "64", nullptr, "65"},
      {"--max-streams", "1", "1048576", "0", "1048577"},
      {"--max-header-list", "1024", "1048576", "1023", "1048577"},
      {"--max-message", "64", "67108864", "63", "67108865"},
      {"--max-connections", "1", "1048576", "0", "1048577"},
      {"--idle-timeout", "0", "4294967295", nullptr, "4294967296"},
      {"--drain-timeout", "0", "3600000", nullptr, "3600001"},
      {"--redis-timeout", "10", "3600000", "9", "3600001"},
      {"--send-queue", "1024", "1073741824", "1023", "1073741825"},
  };
  for (const Range &r : ranges) {
    EXPECT_EQ(Parse({r.flag, r.min}).rv, VK_OK) << r.flag << " " << r.min;
    EXPECT_EQ(Parse({r.flag, r.max}).rv, VK_OK) << r.flag << " " << r.max;
    if (r.below != nullptr) {
      EXPECT_EQ(Parse({r.flag, r.below}).rv, VK_EINVAL) << r.flag;
    }
    EXPECT_EQ(Parse({r.flag, r.above}).rv, VK_EINVAL) << r.flag;
  }
}

TEST(Config, TlsNeedsCertAndKey) {
  Parse no_cert({"--tls-listen", "127.0.0.1:6443"});
  EXPECT_EQ(no_cert.rv, VK_EINVAL);
  EXPECT_NE(no_cert.error.find("--tls-cert"), std::string::npos);
  Parse no_key({"--tls-listen", "127.0.0.1:6443", "--tls-cert", "c.pem"});
  EXPECT_EQ(no_key.rv, VK_EINVAL);
  Parse no_listen({"--tls-cert", "c.pem", "--tls-key", "k.pem"});
  EXPECT_EQ(no_listen.rv, VK_EINVAL);
  Parse ok({"--tls-listen", "127.0.0.1:6443", "--tls-cert", "c.pem",
            "--tls-key", "k.pem"});
  EXPECT_EQ(ok.rv, VK_OK) << ok.error;
}

TEST(Config, UnknownAndIncompleteOptions) {
  Parse unknown({"--frobnicate"});
  EXPECT_EQ(unknown.rv, VK_EINVAL);
  EXPECT_NE(unknown.error.find("--frobnicate"), std::string::npos);
  Parse missing({"--listen"});
  EXPECT_EQ(missing.rv, VK_EINVAL);
  Parse extra({"positional"});
  EXPECT_EQ(extra.rv, VK_EINVAL);
  EXPECT_NE(extra.error.find("positional"), std::string::npos);
  Parse bad_listen({"--listen", "nohostport"});
  EXPECT_EQ(bad_listen.rv, VK_EINVAL);
  EXPECT_NE(bad_listen.error.find("HOST:PORT"), std::string::npos);
  // Repeated parses in one process start from a clean getopt state.
  Parse good({"--max-streams", "3"});
  EXPECT_EQ(good.rv, VK_OK) << good.error;
  EXPECT_EQ(good.cfg.limits.max_concurrent_streams, 3u);
}

// --- vk_parse_host_port -------------------------------------------------

struct HostPort {
  int rv;
  std::string host;
  int port;
};

HostPort Split(const char *s, size_t host_len = 256) {
  char host[256] = "unchanged";
  int port = -7;
  int rv = vk_parse_host_port(s, host, host_len, &port);
  return {rv, host, port};
}

TEST(HostPort, Valid) {
  HostPort v4 = Split("127.0.0.1:50051");
  EXPECT_EQ(v4.rv, VK_OK);
  EXPECT_EQ(v4.host, "127.0.0.1");
  EXPECT_EQ(v4.port, 50051);
  HostPort v6 = Split("[::1]:50051");
  EXPECT_EQ(v6.rv, VK_OK);
  EXPECT_EQ(v6.host, "::1");
  EXPECT_EQ(v6.port, 50051);
  HostPort any6 = Split("[::]:0");
  EXPECT_EQ(any6.rv, VK_OK);
  EXPECT_EQ(any6.host, "::");
  EXPECT_EQ(any6.port, 0);
  HostPort name = Split("localhost:65535");
  EXPECT_EQ(name.rv, VK_OK);
  EXPECT_EQ(name.host, "localhost");
  EXPECT_EQ(name.port, 65535);
}

TEST(HostPort, Invalid) {
  for (const char *s :
       {"127.0.0.1", "127.0.0.1:", ":50051", "", ":", "host:70000",
        "host:65536", "host:-1", "host:80x", "host:99999999999999999999",
        "[::1:50051", "[]:80", "[::1]50051x"}) {
    HostPort r = Split(s);
    EXPECT_EQ(r.rv, VK_EINVAL) << "'" << s << "'";
    EXPECT_EQ(r.host, "unchanged") << s;  // outputs untouched on failure
    EXPECT_EQ(r.port, -7) << s;
  }
}

TEST(HostPort, HostTooLong) {
  std::string long_host(300, 'h');
  std::string s = long_host + ":80";
  EXPECT_EQ(Split(s.c_str()).rv, VK_EINVAL);
  // Exactly fits: 9 bytes + NUL in a 10-byte buffer.
  EXPECT_EQ(Split("hhhhhhhhh:80", 10).rv, VK_OK);
  EXPECT_EQ(Split("hhhhhhhhhh:80", 10).rv, VK_EINVAL);
  // Through the command line too.
  std::string flag = "--listen=" + s;
  EXPECT_EQ(Parse({flag.c_str()}).rv, VK_EINVAL);
}

}  // namespace
