// redis_test.cc: cache/redis.c and cache/embedded.c against a real
// redis-server that each test starts itself (loopback TCP on a free port, or
// a unix socket in a temporary directory). Waits are bounded by a watchdog
// that fails the test instead of hanging; no test asserts on timing.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

extern "C" {
#include "common.h"
}
#include "embedded.h"
#include "redis.h"

extern char **environ;

namespace {

namespace fs = std::filesystem;

// ------------------------------------------------------------------ helpers

std::string MakeTempDir() {
  char tmpl[] = "/tmp/vk_redis_test.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    return "";
  }
  char real[PATH_MAX];
  if (realpath(tmpl, real) == nullptr) {
    return "";
  }
  return real;
}

// FreePort asks the kernel for an unused loopback port.
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  if (bind(fd, reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr *>(&sa), &len) != 0) {
    close(fd);
    return -1;
  }
  close(fd);
  return ntohs(sa.sin_port);
}

pid_t Spawn(const std::vector<std::string> &args) {
  std::vector<char *> argv;
  for (const std::string &a : args) {
    argv.push_back(const_cast<char *>(a.c_str()));
  }
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ) !=
      0) {
    return -1;
  }
  return pid;
}

bool TcpAccepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) == 0;
  close(fd);
  return ok;
}

// WaitFor polls `pred` for up to 20 s (a hang guard, not a timing check).
bool WaitFor(const std::function<bool()> &pred) {
  for (int i = 0; i < 2000; i++) {
    if (pred()) {
      return true;
    }
    usleep(10 * 1000);
  }
  return pred();
}

// RedisServer is a throwaway redis-server on 127.0.0.1:<port>.
class RedisServer {
 public:
  ~RedisServer() {
    Kill();
  }
  void Start(int port, const std::string &dir) {
    port_ = port;
    pid_ = Spawn({"redis-server", "--port", std::to_string(port), "--bind",
                  "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
                  "--daemonize", "no", "--logfile",
                  dir + "/redis-" + std::to_string(port) + ".log"});
    ASSERT_GT(pid_, 0);
    ASSERT_TRUE(WaitFor([&] { return TcpAccepts(port_); }));
  }
  void Signal(int sig) {
    if (pid_ > 0) {
      kill(pid_, sig);
    }
  }
  void Kill() {
    if (pid_ > 0) {
      kill(pid_, SIGCONT);
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

// Result records what one command's callback saw.
struct Result {
  int calls = 0;
  int status = 1;
  int type = -1;
  std::string str;
  long long integer = 0;
  // For callbacks that act on the client.
  bool free_client = false;
  bool try_command = false;
  int command_rv = 1;
};

void OnReply(vk_redis_t *r, int status, const redisReply *reply, void *priv) {
  auto *res = static_cast<Result *>(priv);
  res->calls++;
  res->status = status;
  EXPECT_EQ(status == 0, reply != nullptr);
  if (reply != nullptr) {
    res->type = reply->type;
    if (reply->str != nullptr) {
      res->str.assign(reply->str, reply->len);
    }
    res->integer = reply->integer;
  }
  if (res->try_command) {
    res->try_command = false;  // one follow-up command, not an endless chain
    res->command_rv = vk_redis_command(r, OnReply, res, "PING");
  }
  if (res->free_client) {
    vk_redis_free(r);
  }
}

struct State {
  int ups = 0;
  int downs = 0;
  bool connected = false;
};

void OnState(vk_redis_t *r, bool connected, void *arg) {
  auto *s = static_cast<State *>(arg);
  EXPECT_NE(connected, s->connected) << "repeated state";
  EXPECT_EQ(connected, vk_redis_connected(r));
  s->connected = connected;
  (connected ? s->ups : s->downs)++;
}

// --------------------------------------------------------------- fixture

class RedisTest : public ::testing::Test {
 protected:
  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);  // redis.h: the process must ignore SIGPIPE
    ASSERT_EQ(0, uv_loop_init(&loop_));
    ASSERT_EQ(0, uv_timer_init(&loop_, &watchdog_));
    watchdog_.data = this;
    dir_ = MakeTempDir();
    ASSERT_FALSE(dir_.empty());
  }

  void TearDown() override {
    if (!loop_closed_) {
      // A failed test left handles behind: close what can be closed.
      uv_walk(
          &loop_,
          [](uv_handle_t *h, void *) {
            if (!uv_is_closing(h)) {
              uv_close(h, nullptr);
            }
          },
          nullptr);
      uv_run(&loop_, UV_RUN_DEFAULT);
      uv_loop_close(&loop_);
    }
    server_.Kill();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // RunUntil runs the loop until `pred` holds or a 60 s watchdog fires.
  bool RunUntil(const std::function<bool()> &pred) {
    expired_ = false;
    uv_timer_start(
        &watchdog_,
        [](uv_timer_t *t) {
          static_cast<RedisTest *>(t->data)->expired_ = true;
        },
        60000, 0);
    while (!pred() && !expired_) {
      uv_run(&loop_, UV_RUN_ONCE);
    }
    uv_timer_stop(&watchdog_);
    return pred();
  }

  // RunFor runs the loop for about `ms` (to let retries happen).
  void RunFor(uint64_t ms) {
    bool fired = false;
    uv_timer_t t;
    uv_timer_init(&loop_, &t);
    t.data = &fired;
    uv_timer_start(
        &t, [](uv_timer_t *h) { *static_cast<bool *>(h->data) = true; }, ms, 0);
    RunUntil([&] { return fired; });
    uv_close(reinterpret_cast<uv_handle_t *>(&t), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);  // runs the close callback; `t` dies here
  }

  // CloseLoop runs the loop dry and checks that no handle is left.
  void CloseLoop() {
    uv_close(reinterpret_cast<uv_handle_t *>(&watchdog_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    ASSERT_EQ(0, uv_loop_close(&loop_));
    loop_closed_ = true;
  }

  vk_redis_t *Connect(const std::string &url, State *state,
                      uint32_t timeout_ms = 0, uint32_t max_pending = 0) {
    vk_redis_config_t cfg{};
    cfg.url = url.c_str();
    cfg.command_timeout_ms = timeout_ms;
    cfg.reconnect_min_ms = 10;
    cfg.reconnect_max_ms = 200;
    cfg.on_state = OnState;
    cfg.arg = state;
    cfg.max_pending = max_pending;
    vk_redis_t *r = nullptr;
    EXPECT_EQ(0, vk_redis_new(&r, &loop_, &cfg));
    if (r != nullptr) {
      EXPECT_TRUE(RunUntil([&] { return state->connected; }));
    }
    return r;
  }

  // Command queues `fmt` (no arguments) and runs the loop until it is done.
  Result Command(vk_redis_t *r, const char *fmt) {
    Result res;
    EXPECT_EQ(0, vk_redis_command(r, OnReply, &res, fmt));
    EXPECT_TRUE(RunUntil([&] { return res.calls > 0; }));
    EXPECT_EQ(1, res.calls);
    return res;
  }

  // StartAndConnect starts the fixture's Redis and connects to it with a
  // command timeout of `timeout_ms`, once it answers.
  vk_redis_t *StartAndConnect(State *state, uint32_t timeout_ms) {
    int port = FreePort();
    server_.Start(port, dir_);
    vk_redis_t *r =
        Connect("redis://127.0.0.1:" + std::to_string(port), state, timeout_ms);
    if (r != nullptr) {
      EXPECT_TRUE(PingUntilOk(r));
    }
    return r;
  }

  // PingUntilOk retries PING, waiting for reconnects, until Redis answers.
  bool PingUntilOk(vk_redis_t *r) {
    for (int i = 0; i < 100; i++) {
      if (!RunUntil([&] { return vk_redis_connected(r); })) {
        return false;
      }
      Result res;
      if (vk_redis_command(r, OnReply, &res, "PING") != 0) {
        continue;
      }
      if (!RunUntil([&] { return res.calls > 0; })) {
        return false;
      }
      if (res.status == 0 && res.str == "PONG") {
        return true;
      }
    }
    return false;
  }

  uv_loop_t loop_;
  uv_timer_t watchdog_;
  bool expired_ = false;
  bool loop_closed_ = false;
  std::string dir_;
  RedisServer server_;
};

// ---------------------------------------------------------- URL parsing

TEST_F(RedisTest, ParseUrlGood) {
  char host[256];
  char path[108];
  int port = -1;
  ASSERT_EQ(0, vk_redis_parse_url("redis://127.0.0.1:6379", host, sizeof(host),
                                  &port, path, sizeof(path)));
  EXPECT_STREQ("127.0.0.1", host);
  EXPECT_EQ(6379, port);
  EXPECT_STREQ("", path);

  ASSERT_EQ(0, vk_redis_parse_url("REDIS://cache-1.example_x.org:1", host,
                                  sizeof(host), &port, path, sizeof(path)));
  EXPECT_STREQ("cache-1.example_x.org", host);
  EXPECT_EQ(1, port);

  ASSERT_EQ(0, vk_redis_parse_url("redis://[::1]:65535", host, sizeof(host),
                                  &port, path, sizeof(path)));
  EXPECT_STREQ("::1", host);
  EXPECT_EQ(65535, port);

  ASSERT_EQ(0, vk_redis_parse_url("unix:/tmp/r.sock", host, sizeof(host), &port,
                                  path, sizeof(path)));
  EXPECT_STREQ("/tmp/r.sock", path);
  EXPECT_STREQ("", host);
  EXPECT_EQ(0, port);

  ASSERT_EQ(0, vk_redis_parse_url("unix:///var/run/r.sock", host, sizeof(host),
                                  &port, path, sizeof(path)));
  EXPECT_STREQ("/var/run/r.sock", path);

  // Exactly fits: 3 characters and the NUL in a 4-byte buffer.
  char small[4];
  ASSERT_EQ(0, vk_redis_parse_url("redis://abc:1", small, sizeof(small), &port,
                                  path, sizeof(path)));
  EXPECT_STREQ("abc", small);
  CloseLoop();
}

TEST_F(RedisTest, ParseUrlBad) {
  char host[256];
  char path[108];
  int port;
  const std::string long_host(300, 'a');
  const std::string long_path = "unix:/" + std::string(200, 'p');
  const std::string huge = "redis://" + std::string(5000, 'h') + ":1";
  const std::string long_url = "redis://" + long_host + ":1";
  const char *bad[] = {
      "",
      "redis://",
      "redis://host",            // missing port
      "redis://host:",           // empty port
      "redis://:6379",           // no host
      "redis://host:0",          // out of range
      "redis://host:65536",      // out of range
      "redis://host:99999999",   // out of range, too many digits
      "redis://host:-1",         // sign
      "redis://host:12a",        // trailing garbage
      "redis://host:6379/0",     // database paths are not supported
      "redis://user:pw@host:1",  // nor is user info
      "redis://ho st:1",
      "redis://[::1:1",   // unclosed bracket
      "redis://[abc]:1",  // not IPv6
      "http://host:1",
      "host:6379",
      "unix:",
      "unix:relative/path",
      "unix://relative",
      "unix:/with\nnewline",
      "\x01\x02\xff",
      long_path.c_str(),  // too long for sun_path
      huge.c_str(),
      long_url.c_str(),  // host over 253 characters
  };
  for (const char *url : bad) {
    EXPECT_EQ(VK_EINVAL, vk_redis_parse_url(url, host, sizeof(host), &port,
                                            path, sizeof(path)))
        << url;
  }
  // Overlong for the caller's buffers.
  char small[4];
  EXPECT_EQ(VK_EINVAL,
            vk_redis_parse_url("redis://abcd:1", small, sizeof(small), &port,
                               path, sizeof(path)));
  EXPECT_EQ(VK_EINVAL, vk_redis_parse_url("unix:/abcd", host, sizeof(host),
                                          &port, small, sizeof(small)));
  EXPECT_EQ(VK_EINVAL, vk_redis_parse_url(nullptr, host, sizeof(host), &port,
                                          path, sizeof(path)));
  EXPECT_EQ(VK_EINVAL, vk_redis_parse_url("redis://h:1", host, 0, &port, path,
                                          sizeof(path)));
  CloseLoop();
}

TEST_F(RedisTest, NewRejectsBadConfig) {
  vk_redis_t *r = nullptr;
  vk_redis_config_t cfg{};
  cfg.url = "redis://127.0.0.1";
  EXPECT_EQ(VK_EINVAL, vk_redis_new(&r, &loop_, &cfg));
  cfg.url = nullptr;
  EXPECT_EQ(VK_EINVAL, vk_redis_new(&r, &loop_, &cfg));
  cfg.url = "redis://127.0.0.1:1";
  cfg.reconnect_min_ms = 500;
  cfg.reconnect_max_ms = 100;
  EXPECT_EQ(VK_EINVAL, vk_redis_new(&r, &loop_, &cfg));
  EXPECT_EQ(VK_EINVAL, vk_redis_new(&r, &loop_, nullptr));
  EXPECT_EQ(nullptr, r);
  vk_redis_free(nullptr);
  EXPECT_FALSE(vk_redis_connected(nullptr));
  CloseLoop();
}

// ------------------------------------------------------------ client

TEST_F(RedisTest, CommandBeforeConnectIsUnavailable) {
  int port = FreePort();
  server_.Start(port, dir_);
  vk_redis_config_t cfg{};
  std::string url = "redis://127.0.0.1:" + std::to_string(port);
  cfg.url = url.c_str();
  vk_redis_t *r = nullptr;
  ASSERT_EQ(0, vk_redis_new(&r, &loop_, &cfg));
  Result res;
  EXPECT_FALSE(vk_redis_connected(r));
  EXPECT_EQ(VK_EUNAVAIL, vk_redis_command(r, OnReply, &res, "PING"));
  vk_redis_free(r);
  CloseLoop();
  EXPECT_EQ(0, res.calls);
}

// A pipeline that takes longer than the timeout to drain, with replies
// coming all along, is slow, not stuck: nothing is dropped.
TEST_F(RedisTest, SlowPipelineIsNotStuck) {
  State state;
  vk_redis_t *r = StartAndConnect(&state, 300);
  ASSERT_NE(nullptr, r);
  // Each script keeps Redis busy for 50 ms: 16 of them take 800 ms, the
  // last one's reply comes long after its own 300 ms. The padding makes
  // each command longer than one of Redis's 16 KiB reads, so Redis answers
  // them one by one instead of all 16 at the end.
  const char *spin =
      "local t = redis.call('TIME') "
      "local start = t[1] * 1000000 + t[2] "
      "repeat t = redis.call('TIME') "
      "until t[1] * 1000000 + t[2] - start >= 50000 return 1";
  const std::string pad(24 * 1024, 'x');
  Result res[16];
  for (Result &x : res) {
    ASSERT_EQ(0, vk_redis_command(r, OnReply, &x, "EVAL %s 0 %b", spin,
                                  pad.data(), pad.size()));
  }
  ASSERT_TRUE(RunUntil([&] { return res[15].calls > 0; }));
  for (const Result &x : res) {
    EXPECT_EQ(1, x.calls);
    EXPECT_EQ(0, x.status);
    EXPECT_EQ(REDIS_REPLY_INTEGER, x.type);
  }
  EXPECT_EQ(0, state.downs);
  vk_redis_free(r);
  CloseLoop();
}

// A loop that was busy elsewhere for longer than the timeout finds the
// reply waiting in the socket: the command timer reads it rather than
// dropping a connection that answered.
TEST_F(RedisTest, BusyLoopReadsTheReplyBeforeJudging) {
  State state;
  vk_redis_t *r = StartAndConnect(&state, 300);
  ASSERT_NE(nullptr, r);
  Result res;
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &res, "PING"));
  uv_run(&loop_, UV_RUN_NOWAIT);  // writes the command
  usleep(500 * 1000);             // the loop thread is busy elsewhere
  // Without blocking in the poll: the reply must come from the timer.
  for (int i = 0; i < 2000 && res.calls == 0; i++) {
    uv_run(&loop_, UV_RUN_NOWAIT);
    usleep(1000);
  }
  ASSERT_EQ(1, res.calls);
  EXPECT_EQ(0, res.status);
  EXPECT_EQ("PONG", res.str);
  EXPECT_EQ(0, state.downs);
  vk_redis_free(r);
  CloseLoop();
}

// A command queued in a loop iteration that then ran longer than the
// timeout has not been sent when the next iteration's timers run (writes
// happen in the poll phase, after them). It is due by the clock, but Redis
// never saw it: the timer sends it and waits for the reply instead of
// dropping the connection.
TEST_F(RedisTest, LongIterationSendsTheCommandBeforeJudging) {
  State state;
  vk_redis_t *r = StartAndConnect(&state, 300);
  ASSERT_NE(nullptr, r);
  Result res;
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &res, "PING"));
  usleep(500 * 1000);  // the rest of this iteration keeps the loop busy
  ASSERT_TRUE(RunUntil([&] { return res.calls > 0; }));
  EXPECT_EQ(1, res.calls);
  EXPECT_EQ(0, res.status);
  EXPECT_EQ("PONG", res.str);
  EXPECT_EQ(0, state.downs);
  vk_redis_free(r);
  CloseLoop();
}

TEST_F(RedisTest, SetGetRoundTrip) {
  int port = FreePort();
  server_.Start(port, dir_);
  State state;
  vk_redis_t *r = Connect("redis://127.0.0.1:" + std::to_string(port), &state);
  ASSERT_NE(nullptr, r);
  EXPECT_EQ(1, state.ups);
  EXPECT_EQ(0, state.downs);
  EXPECT_TRUE(vk_redis_connected(r));

  Result set = Command(r, "SET vk:k hello");
  EXPECT_EQ(0, set.status);
  EXPECT_EQ(REDIS_REPLY_STATUS, set.type);
  EXPECT_EQ("OK", set.str);
  Result get = Command(r, "GET vk:k");
  EXPECT_EQ(0, get.status);
  EXPECT_EQ(REDIS_REPLY_STRING, get.type);
  EXPECT_EQ("hello", get.str);

  // Binary-safe values through both entry points; replies come in order.
  const std::string bin("a\0b\r\nc", 6);
  Result r1, r2, r3;
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &r1, "SET %s %b", "vk:bin",
                                bin.data(), bin.size()));
  const char *argv[] = {"GET", "vk:bin"};
  ASSERT_EQ(0, vk_redis_command_argv(r, OnReply, &r2, 2, argv, nullptr));
  // An error reply is a reply: status 0, type ERROR.
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &r3, "INCR vk:k"));
  ASSERT_TRUE(RunUntil([&] { return r3.calls > 0; }));
  EXPECT_EQ(1, r1.calls);
  EXPECT_EQ(1, r2.calls);
  EXPECT_EQ(bin, r2.str);
  EXPECT_EQ(0, r3.status);
  EXPECT_EQ(REDIS_REPLY_ERROR, r3.type);

  // Commands that would desynchronise the reply order, and malformed ones.
  Result never;
  EXPECT_EQ(VK_EINVAL, vk_redis_command(r, OnReply, &never, "SUBSCRIBE c"));
  EXPECT_EQ(VK_EINVAL, vk_redis_command(r, OnReply, &never, "psubscribe c"));
  EXPECT_EQ(VK_EINVAL, vk_redis_command(r, OnReply, &never, "MONITOR"));
  EXPECT_EQ(VK_EINVAL, vk_redis_command(r, OnReply, &never, ""));
  EXPECT_EQ(VK_EINVAL, vk_redis_command(r, OnReply, &never, "GET %hq"));
  EXPECT_EQ(VK_EINVAL, vk_redis_command(r, nullptr, &never, "PING"));
  EXPECT_EQ(VK_EINVAL,
            vk_redis_command_argv(r, OnReply, &never, 0, argv, nullptr));
  const char *sub[] = {"unsubscribe"};
  EXPECT_EQ(VK_EINVAL,
            vk_redis_command_argv(r, OnReply, &never, 1, sub, nullptr));

  vk_redis_free(r);
  CloseLoop();
  EXPECT_EQ(0, never.calls);
  EXPECT_EQ(0, state.downs);  // no on_state after vk_redis_free
}

// vk_redis_format_argv writes what hiredis's own encoder writes.
TEST(RedisFormatTest, MatchesHiredis) {
  const std::string bin("a\0b\r\nc", 6);
  const std::string big(70000, 'x');
  std::vector<std::vector<std::string>> commands = {
      {"PING"},
      {"SET", "vk:k", "v"},
      {"SET", "", bin, "NX", "EX", "70"},
      {"HMGET", "vk:veh:{1HGCM82633A004352}:session", "epoch", "key", "exp"},
      {"SET", "vk:big", big},
      std::vector<std::string>(12, "0123456789"),
  };
  for (const auto &cmd : commands) {
    std::vector<const char *> argv;
    std::vector<size_t> lens;
    for (const auto &a : cmd) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    int argc = static_cast<int>(argv.size());
    char *want = nullptr;
    int want_len =
        redisFormatCommandArgv(&want, argc, argv.data(), lens.data());
    ASSERT_GT(want_len, 0);
    char tiny[4];
    size_t len = vk_redis_format_argv(tiny, sizeof(tiny), argc, argv.data(),
                                      lens.data());
    ASSERT_EQ(static_cast<size_t>(want_len), len) << cmd[0];
    std::string got(len, '\0');
    ASSERT_EQ(len, vk_redis_format_argv(got.data(), got.size(), argc,
                                        argv.data(), lens.data()));
    EXPECT_EQ(std::string(want, static_cast<size_t>(want_len)), got) << cmd[0];
    redisFreeCommand(want);
  }
  // NUL-terminated arguments when no lengths are given.
  const char *plain[] = {"GET", "vk:k"};
  char out[64];
  size_t len = vk_redis_format_argv(out, sizeof(out), 2, plain, nullptr);
  EXPECT_EQ("*2\r\n$3\r\nGET\r\n$4\r\nvk:k\r\n", std::string(out, len));
}

TEST_F(RedisTest, ReconnectsAfterRedisRestarts) {
  int port = FreePort();
  server_.Start(port, dir_);
  State state;
  // A 10-minute timeout (also the connect deadline): only the connection
  // loss may fail the commands, and a refused reconnect must be noticed from
  // the socket, not by the deadline, or the 60 s watchdog fails the test.
  vk_redis_t *r =
      Connect("redis://127.0.0.1:" + std::to_string(port), &state, 600000);
  ASSERT_NE(nullptr, r);

  Result blocked, behind;
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &blocked, "BLPOP vk:nothing 0"));
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &behind, "PING"));
  server_.Kill();
  ASSERT_TRUE(RunUntil([&] { return behind.calls > 0; }));
  EXPECT_EQ(1, blocked.calls);
  EXPECT_EQ(VK_EUNAVAIL, blocked.status);
  EXPECT_EQ(1, behind.calls);
  EXPECT_EQ(VK_EUNAVAIL, behind.status);
  ASSERT_TRUE(RunUntil([&] { return !state.connected; }));
  EXPECT_EQ(1, state.downs);
  Result refused;
  EXPECT_EQ(VK_EUNAVAIL, vk_redis_command(r, OnReply, &refused, "PING"));

  RunFor(300);  // a few failed attempts: no state change for them
  EXPECT_EQ(1, state.downs);
  EXPECT_EQ(1, state.ups);

  server_.Start(port, dir_);
  ASSERT_TRUE(RunUntil([&] { return state.connected; }));
  EXPECT_EQ(2, state.ups);
  EXPECT_EQ(0, Command(r, "SET vk:again 1").status);
  Result get = Command(r, "GET vk:again");
  EXPECT_EQ(0, get.status);
  EXPECT_EQ("1", get.str);

  vk_redis_free(r);
  CloseLoop();
  EXPECT_EQ(0, refused.calls);
}

TEST_F(RedisTest, StuckRedisTimesOutAndRecovers) {
  State state;
  vk_redis_t *r = StartAndConnect(&state, 300);
  ASSERT_NE(nullptr, r);

  server_.Signal(SIGSTOP);
  Result a, b;
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &a, "PING"));
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &b, "GET vk:x"));
  ASSERT_TRUE(RunUntil([&] { return b.calls > 0; }));
  EXPECT_EQ(1, a.calls);
  EXPECT_EQ(VK_ETIMEDOUT, a.status);
  EXPECT_EQ(1, b.calls);
  EXPECT_EQ(VK_ETIMEDOUT, b.status);
  EXPECT_GE(state.downs, 1);

  server_.Signal(SIGCONT);
  EXPECT_TRUE(PingUntilOk(r));
  vk_redis_free(r);
  CloseLoop();
}

TEST_F(RedisTest, FreeFailsPendingWithClosed) {
  int port = FreePort();
  server_.Start(port, dir_);
  State state;
  vk_redis_t *r =
      Connect("redis://127.0.0.1:" + std::to_string(port), &state, 60000);
  ASSERT_NE(nullptr, r);
  Result res[4];
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &res[0], "BLPOP vk:nothing 0"));
  for (int i = 1; i < 4; i++) {
    res[i].try_command = true;  // a new command after free is refused
    ASSERT_EQ(0, vk_redis_command(r, OnReply, &res[i], "GET vk:%d", i));
  }
  vk_redis_free(r);
  CloseLoop();
  for (const Result &x : res) {
    EXPECT_EQ(1, x.calls);
    EXPECT_EQ(VK_ECLOSED, x.status);
  }
  EXPECT_EQ(VK_ECLOSED, res[1].command_rv);
}

TEST_F(RedisTest, FreeFromInsideReplyCallback) {
  int port = FreePort();
  server_.Start(port, dir_);
  State state;
  vk_redis_t *r =
      Connect("redis://127.0.0.1:" + std::to_string(port), &state, 60000);
  ASSERT_NE(nullptr, r);
  Result ping, blocked, after;
  ping.free_client = true;
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &ping, "PING"));
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &blocked, "BLPOP vk:nothing 0"));
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &after, "PING"));
  CloseLoop();
  EXPECT_EQ(1, ping.calls);
  EXPECT_EQ(0, ping.status);
  EXPECT_EQ(1, blocked.calls);
  EXPECT_EQ(VK_ECLOSED, blocked.status);
  EXPECT_EQ(1, after.calls);
  EXPECT_EQ(VK_ECLOSED, after.status);
}

void OnStateFree(vk_redis_t *r, bool connected, void *arg) {
  auto *s = static_cast<State *>(arg);
  (connected ? s->ups : s->downs)++;
  vk_redis_free(r);
}

TEST_F(RedisTest, CommandFromCallbackAndFreeFromOnState) {
  int port = FreePort();
  server_.Start(port, dir_);
  State state;
  vk_redis_t *r = Connect("redis://127.0.0.1:" + std::to_string(port), &state);
  ASSERT_NE(nullptr, r);
  // A reply callback queues the next command; it runs later, exactly once.
  Result chained;
  chained.try_command = true;
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &chained, "PING"));
  ASSERT_TRUE(RunUntil([&] { return chained.calls == 2; }));
  EXPECT_EQ(0, chained.command_rv);  // set by the first call
  EXPECT_EQ(0, chained.status);
  vk_redis_free(r);

  // on_state may free the client the moment it connects.
  vk_redis_config_t cfg{};
  std::string url = "redis://127.0.0.1:" + std::to_string(port);
  cfg.url = url.c_str();
  cfg.on_state = OnStateFree;
  State freed;
  cfg.arg = &freed;
  ASSERT_EQ(0, vk_redis_new(&r, &loop_, &cfg));
  CloseLoop();
  EXPECT_EQ(1, freed.ups);
}

TEST_F(RedisTest, FreeWhileReconnecting) {
  // Nothing listens: the client keeps retrying until freed.
  std::string tcp = "redis://127.0.0.1:" + std::to_string(FreePort());
  std::string unx = "unix:" + dir_ + "/missing.sock";
  vk_redis_config_t cfg{};
  cfg.reconnect_min_ms = 5;
  cfg.reconnect_max_ms = 20;
  vk_redis_t *a = nullptr;
  vk_redis_t *b = nullptr;
  vk_redis_t *c = nullptr;
  cfg.url = tcp.c_str();
  ASSERT_EQ(0, vk_redis_new(&a, &loop_, &cfg));
  cfg.url = unx.c_str();
  ASSERT_EQ(0, vk_redis_new(&b, &loop_, &cfg));
  ASSERT_EQ(0, vk_redis_new(&c, &loop_, &cfg));
  vk_redis_free(c);  // before the first attempt
  RunFor(200);
  EXPECT_FALSE(vk_redis_connected(a));
  EXPECT_FALSE(vk_redis_connected(b));
  vk_redis_free(a);
  vk_redis_free(b);
  CloseLoop();
}

TEST_F(RedisTest, PendingCapReturnsBusy) {
  int port = FreePort();
  server_.Start(port, dir_);
  State state;
  vk_redis_t *r =
      Connect("redis://127.0.0.1:" + std::to_string(port), &state, 60000, 2);
  ASSERT_NE(nullptr, r);
  Result a, b, c;
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &a, "PING"));
  ASSERT_EQ(0, vk_redis_command(r, OnReply, &b, "PING"));
  EXPECT_EQ(VK_EBUSY, vk_redis_command(r, OnReply, &c, "PING"));
  ASSERT_TRUE(RunUntil([&] { return b.calls > 0; }));
  EXPECT_EQ(0, a.status);
  EXPECT_EQ(0, b.status);
  EXPECT_EQ(0, vk_redis_command(r, OnReply, &c, "PING"));  // room again
  ASSERT_TRUE(RunUntil([&] { return c.calls > 0; }));
  vk_redis_free(r);
  CloseLoop();
}

// ------------------------------------------------------ embedded child

// AofHolds reports whether an AOF under `dir` (Redis 7: appendonlydir/)
// contains `needle`.
bool AofHolds(const std::string &dir, const std::string &needle) {
  std::error_code ec;
  for (const auto &e : fs::recursive_directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && name.find(".aof") != std::string::npos) {
      std::ifstream in(e.path(), std::ios::binary);
      std::string data((std::istreambuf_iterator<char>(in)),
                       std::istreambuf_iterator<char>());
      if (data.find(needle) != std::string::npos) {
        return true;
      }
    }
  }
  return false;
}

void OnDone(void *arg) {
  (*static_cast<int *>(arg))++;
}

TEST_F(RedisTest, EmbeddedChildPersistsToAof) {
  const std::string data = dir_ + "/data";  // does not exist yet
  vk_redis_child_t *child = nullptr;
  ASSERT_EQ(0, vk_redis_child_start(&child, &loop_, data.c_str(), nullptr));
  struct stat st;
  ASSERT_EQ(0, stat(data.c_str(), &st));
  EXPECT_EQ(0700u, st.st_mode & 0777u);
  const std::string url = vk_redis_child_url(child);
  EXPECT_EQ("unix:" + data + "/redis.sock", url);

  State state;
  vk_redis_t *r = Connect(url, &state);  // retries until the socket is up
  ASSERT_NE(nullptr, r);
  Result set = Command(r, "SET vk-embedded-key vk-embedded-value");
  EXPECT_EQ(0, set.status);
  EXPECT_EQ("OK", set.str);
  vk_redis_free(r);

  int done = 0;
  vk_redis_child_stop(child, OnDone, &done);
  ASSERT_TRUE(RunUntil([&] { return done > 0; }));
  CloseLoop();
  EXPECT_EQ(1, done);
  EXPECT_TRUE(AofHolds(data, "vk-embedded-value"));
  EXPECT_FALSE(fs::exists(data + "/redis.pid"));  // clean shutdown
}

TEST_F(RedisTest, EmbeddedChildReplacesStaleServer) {
  const std::string data = dir_ + "/data";
  ASSERT_EQ(0, mkdir(data.c_str(), 0700));
  // What a SIGKILLed vkeyd leaves behind: its redis-server, still running.
  pid_t stale = Spawn({"redis-server", "--port", "0", "--unixsocket",
                       data + "/redis.sock", "--unixsocketperm", "700", "--dir",
                       data, "--appendonly", "yes", "--save", "", "--pidfile",
                       data + "/redis.pid", "--daemonize", "no", "--logfile",
                       data + "/stale.log"});
  ASSERT_GT(stale, 0);
  ASSERT_TRUE(WaitFor([&] { return fs::exists(data + "/redis.pid"); }));

  vk_redis_child_t *child = nullptr;
  ASSERT_EQ(0, vk_redis_child_start(&child, &loop_, data.c_str(), nullptr));
  // The stale server is gone (a zombie until we reap it here).
  int status = 0;
  EXPECT_EQ(stale, waitpid(stale, &status, WNOHANG));

  State state;
  vk_redis_t *r = Connect(vk_redis_child_url(child), &state);
  ASSERT_NE(nullptr, r);
  EXPECT_EQ(0, Command(r, "SET vk:fresh 1").status);
  vk_redis_free(r);

  int done = 0;
  vk_redis_child_stop(child, OnDone, &done);
  ASSERT_TRUE(RunUntil([&] { return done > 0; }));
  CloseLoop();
}

TEST_F(RedisTest, EmbeddedChildDiesUnexpectedly) {
  const std::string data = dir_ + "/data";
  vk_redis_child_t *child = nullptr;
  ASSERT_EQ(0, vk_redis_child_start(&child, &loop_, data.c_str(), nullptr));
  State state;
  vk_redis_t *r = Connect(vk_redis_child_url(child), &state);
  ASSERT_NE(nullptr, r);
  pid_t pid = 0;
  ASSERT_TRUE(WaitFor([&] {
    std::ifstream in(data + "/redis.pid");
    return static_cast<bool>(in >> pid) && pid > 1;
  }));
  kill(pid, SIGKILL);  // logged as unexpected; the client loses Redis
  ASSERT_TRUE(RunUntil([&] { return !state.connected; }));
  // Reaped by libuv's exit handling, which logs the unexpected exit.
  ASSERT_TRUE(RunUntil([&] { return kill(pid, 0) != 0; }));
  vk_redis_free(r);
  int done = 0;
  vk_redis_child_stop(child, OnDone, &done);  // only cleans up
  ASSERT_TRUE(RunUntil([&] { return done > 0; }));
  CloseLoop();
}

TEST_F(RedisTest, EmbeddedChildLockAndSpawnFailure) {
  const std::string data = dir_ + "/data";
  vk_redis_child_t *a = nullptr;
  vk_redis_child_t *b = nullptr;
  ASSERT_EQ(0, vk_redis_child_start(&a, &loop_, data.c_str(), nullptr));
  // A second owner of the same directory is refused, and nothing is killed.
  EXPECT_EQ(VK_EBUSY, vk_redis_child_start(&b, &loop_, data.c_str(), nullptr));
  EXPECT_EQ(nullptr, b);
  int done = 0;
  vk_redis_child_stop(a, OnDone, &done);
  ASSERT_TRUE(RunUntil([&] { return done > 0; }));

  const std::string other = dir_ + "/other";
  EXPECT_EQ(VK_ENOTFOUND, vk_redis_child_start(&b, &loop_, other.c_str(),
                                               "/nonexistent/redis-server"));
  EXPECT_EQ(nullptr, b);
  vk_redis_child_stop(nullptr, OnDone, &done);
  CloseLoop();
  EXPECT_EQ(1, done);
}

}  // namespace
