// hub_test.cc: server/hub.c and cache/subscriber.c against a real
// redis-server the test starts: one subscription per vehicle, refcounted
// across links; notifications fan out; a subscription that churns (leave
// and join again before the UNSUBSCRIBE is confirmed) keeps working; a lost
// pub/sub connection is remade and every link is told to re-read; deferral
// and drain. Publishing goes through a blocking hiredis client. Waits are
// bounded polls of the loop (hang guards, not timing checks), and every
// test ends with uv_loop_close() == 0.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <hiredis/hiredis.h>

extern "C" {
#include "common.h"
}
#include "hub.h"
#include "subscriber.h"

extern char **environ;

namespace {

const char kVin1[] = "5YJ3E1EA7KF000001";
const char kVin2[] = "5YJ3E1EA7KF000002";

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&sa), &len) == 0) {
    port = ntohs(sa.sin_port);
  }
  close(fd);
  return port;
}

// Link is one fake channel: it counts what the hub tells it.
struct Link : vk_hub_link_t {
  Link() : vk_hub_link_t{} {}
  std::vector<uint64_t> notified;
  int closed = 0;
  bool leave_on_notify = false;
};

void OnNotify(vk_hub_link_t *l, uint64_t seq) {
  Link *k = static_cast<Link *>(l);
  k->notified.push_back(seq);
  if (k->leave_on_notify) {
    vk_hub_leave(l);
  }
}

void OnClosed(vk_hub_link_t *l) {
  static_cast<Link *>(l)->closed++;
}

const vk_hub_link_ops_t kOps = {OnNotify, OnClosed};

class HubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);
    char tmpl[] = "/tmp/vk_hub_test.XXXXXX";
    ASSERT_NE(nullptr, mkdtemp(tmpl));
    dir_ = tmpl;
    port_ = FreePort();
    ASSERT_GT(port_, 0);
    std::string p = std::to_string(port_);
    std::vector<std::string> args = {"redis-server",
                                     "--port",
                                     p,
                                     "--bind",
                                     "127.0.0.1",
                                     "--save",
                                     "",
                                     "--dir",
                                     dir_,
                                     "--logfile",
                                     dir_ + "/redis.log",
                                     "--appendonly",
                                     "no"};
    std::vector<char *> argv;
    for (std::string &a : args) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    ASSERT_EQ(0, posix_spawnp(&pid_, "redis-server", nullptr, nullptr,
                              argv.data(), environ));
    for (int i = 0; i < 2000 && pub_ == nullptr; i++) {
      redisContext *c = redisConnect("127.0.0.1", port_);
      if (c != nullptr && c->err == 0) {
        pub_ = c;
      } else {
        redisFree(c);
        usleep(10 * 1000);
      }
    }
    ASSERT_NE(nullptr, pub_);
    ASSERT_EQ(0, uv_loop_init(&loop_));
    app_.loop = &loop_;
    std::string url = "redis://127.0.0.1:" + p;
    ASSERT_EQ(0, vk_hub_new(&hub_, &app_, url.c_str()));
  }

  void TearDown() override {
    vk_hub_free(hub_);
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(0, uv_loop_close(&loop_));
    redisFree(pub_);
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    std::string rm = "rm -rf " + dir_;
    EXPECT_EQ(0, system(rm.c_str()));
  }

  // RunUntil turns the loop until `pred` holds, for up to ~20 s.
  bool RunUntil(const std::function<bool()> &pred) {
    uv_timer_t tick;
    uv_timer_init(&loop_, &tick);
    bool ok = false;
    for (int i = 0; i < 2000 && !(ok = pred()); i++) {
      // A short timer keeps UV_RUN_ONCE from blocking forever.
      uv_timer_start(
          &tick, [](uv_timer_t *) {}, 10, 0);
      uv_run(&loop_, UV_RUN_ONCE);
    }
    uv_close(reinterpret_cast<uv_handle_t *>(&tick), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);
    return ok;
  }

  long long Numsub(const char *vin) {
    std::string ch = std::string("vk:veh:{") + vin + "}:notify";
    auto *r = static_cast<redisReply *>(
        redisCommand(pub_, "PUBSUB NUMSUB %s", ch.c_str()));
    long long n = -1;
    if (r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
      n = r->element[1]->integer;
    }
    freeReplyObject(r);
    return n;
  }

  void Publish(const char *vin, const char *payload) {
    std::string ch = std::string("vk:veh:{") + vin + "}:notify";
    freeReplyObject(redisCommand(pub_, "PUBLISH %s %s", ch.c_str(), payload));
  }

  static bool Has(const Link &l, uint64_t seq) {
    for (uint64_t s : l.notified) {
      if (s == seq) {
        return true;
      }
    }
    return false;
  }

  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
  redisContext *pub_ = nullptr;
  uv_loop_t loop_;
  vk_app_t app_{};
  vk_hub_t *hub_ = nullptr;
};

TEST_F(HubTest, OneSubscriptionPerVehicleAndFanOut) {
  Link a, b, c;
  ASSERT_EQ(0, vk_hub_join(hub_, &a, kVin1, &kOps));
  ASSERT_EQ(0, vk_hub_join(hub_, &b, kVin1, &kOps));
  ASSERT_EQ(0, vk_hub_join(hub_, &c, kVin2, &kOps));
  EXPECT_EQ(3u, vk_hub_channels(hub_));
  EXPECT_EQ(2u, vk_hub_vehicles(hub_));
  // The confirmation tells every link to read (seq 0).
  ASSERT_TRUE(RunUntil([&] { return Has(a, 0) && Has(b, 0) && Has(c, 0); }));
  EXPECT_EQ(1, Numsub(kVin1));
  Publish(kVin1, "7");
  ASSERT_TRUE(RunUntil([&] { return Has(a, 7) && Has(b, 7); }));
  EXPECT_FALSE(Has(c, 7));
  Publish(kVin2, "garbage");  // not a seq: "read", i.e. 0
  ASSERT_TRUE(RunUntil([&] { return c.notified.size() == 2; }));
  EXPECT_EQ(0u, c.notified[1]);
  vk_hub_leave(&a);
  vk_hub_leave(&a);  // idempotent
  EXPECT_EQ(2u, vk_hub_channels(hub_));
  EXPECT_EQ(2u, vk_hub_vehicles(hub_));
  Publish(kVin1, "8");
  ASSERT_TRUE(RunUntil([&] { return Has(b, 8); }));
  EXPECT_FALSE(Has(a, 8));
  vk_hub_leave(&b);
  vk_hub_leave(&c);
  EXPECT_EQ(0u, vk_hub_channels(hub_));
  EXPECT_EQ(0u, vk_hub_vehicles(hub_));
  ASSERT_TRUE(
      RunUntil([&] { return Numsub(kVin1) == 0 && Numsub(kVin2) == 0; }));
}

TEST_F(HubTest, ChurnKeepsTheSubscription) {
  Link a;
  ASSERT_EQ(0, vk_hub_join(hub_, &a, kVin1, &kOps));
  ASSERT_TRUE(RunUntil([&] { return Has(a, 0); }));
  // Leave and join again before Redis confirms the UNSUBSCRIBE: the
  // subscriber must subscribe again once it is confirmed.
  for (int i = 0; i < 5; i++) {
    vk_hub_leave(&a);
    Link tmp;
    ASSERT_EQ(0, vk_hub_join(hub_, &tmp, kVin1, &kOps));
    vk_hub_leave(&tmp);
    a.notified.clear();
    ASSERT_EQ(0, vk_hub_join(hub_, &a, kVin1, &kOps));
  }
  // Join and leave before the SUBSCRIBE is confirmed: it is undone after.
  Link b;
  ASSERT_EQ(0, vk_hub_join(hub_, &b, kVin2, &kOps));
  vk_hub_leave(&b);
  ASSERT_TRUE(RunUntil([&] { return Has(a, 0) && Numsub(kVin1) == 1; }));
  ASSERT_TRUE(RunUntil([&] { return Numsub(kVin2) == 0; }));
  EXPECT_TRUE(b.notified.empty());
  Publish(kVin1, "42");
  ASSERT_TRUE(RunUntil([&] { return Has(a, 42); }));
  vk_hub_leave(&a);
}

TEST_F(HubTest, LostConnectionResubscribesAndRereads) {
  Link a, b;
  ASSERT_EQ(0, vk_hub_join(hub_, &a, kVin1, &kOps));
  ASSERT_EQ(0, vk_hub_join(hub_, &b, kVin2, &kOps));
  ASSERT_TRUE(RunUntil([&] { return Has(a, 0) && Has(b, 0); }));
  a.notified.clear();
  b.notified.clear();
  freeReplyObject(redisCommand(pub_, "CLIENT KILL TYPE pubsub"));
  // After the reconnect every vehicle is subscribed again and each link
  // is told to read what it may have missed.
  ASSERT_TRUE(RunUntil([&] { return Has(a, 0) && Has(b, 0); }));
  ASSERT_TRUE(RunUntil([&] { return Numsub(kVin1) == 1; }));
  Publish(kVin1, "3");
  ASSERT_TRUE(RunUntil([&] { return Has(a, 3); }));
  vk_hub_leave(&a);
  vk_hub_leave(&b);
}

TEST_F(HubTest, DeferLeaveFromCallbackAndDrain) {
  Link a, b, c;
  ASSERT_EQ(0, vk_hub_join(hub_, &a, kVin1, &kOps));
  ASSERT_EQ(0, vk_hub_join(hub_, &b, kVin1, &kOps));
  ASSERT_EQ(0, vk_hub_join(hub_, &c, kVin2, &kOps));
  ASSERT_TRUE(RunUntil([&] { return Has(a, 0) && Has(b, 0) && Has(c, 0); }));
  // Deferred: told again later, once, even if deferred twice.
  a.notified.clear();
  vk_hub_defer(&a);
  vk_hub_defer(&a);
  ASSERT_TRUE(RunUntil([&] { return a.notified.size() == 1; }));
  // A deferred link that leaves is not told.
  b.notified.clear();
  vk_hub_defer(&b);
  vk_hub_leave(&b);
  vk_hub_defer(&b);  // not joined: no-op
  // A link may leave from its own notification.
  a.leave_on_notify = true;
  Publish(kVin1, "9");
  ASSERT_TRUE(RunUntil([&] { return Has(a, 9); }));
  EXPECT_TRUE(b.notified.empty());
  EXPECT_EQ(1u, vk_hub_channels(hub_));
  // Drain closes what is left and refuses newcomers.
  vk_hub_drain(hub_);
  EXPECT_EQ(1, c.closed);
  EXPECT_EQ(0, a.closed);
  EXPECT_EQ(0u, vk_hub_channels(hub_));
  Link d;
  EXPECT_EQ(VK_ECLOSED, vk_hub_join(hub_, &d, kVin1, &kOps));
}

TEST(SubscriberTest, RejectsBadArguments) {
  uv_loop_t loop;
  ASSERT_EQ(0, uv_loop_init(&loop));
  vk_subscriber_t *s = nullptr;
  vk_subscriber_config_t cfg{};
  cfg.url = "redis://127.0.0.1:1";
  EXPECT_EQ(VK_EINVAL, vk_subscriber_new(&s, &loop, &cfg));  // no on_message
  cfg.on_message = [](vk_subscriber_t *, const char *, size_t, const char *,
                      size_t, void *) {};
  cfg.url = "http://x";
  EXPECT_EQ(VK_EINVAL, vk_subscriber_new(&s, &loop, &cfg));
  cfg.url = "redis://127.0.0.1:1";
  ASSERT_EQ(0, vk_subscriber_new(&s, &loop, &cfg));
  EXPECT_EQ(VK_EINVAL, vk_subscriber_subscribe(s, ""));
  std::string longname(VK_SUBSCRIBER_CHANNEL_MAX + 1, 'x');
  EXPECT_EQ(VK_EINVAL, vk_subscriber_subscribe(s, longname.c_str()));
  EXPECT_EQ(0, vk_subscriber_subscribe(s, "a"));
  EXPECT_EQ(0, vk_subscriber_subscribe(s, "a"));
  EXPECT_EQ(1u, vk_subscriber_count(s));
  vk_subscriber_unsubscribe(s, "a");
  vk_subscriber_unsubscribe(s, "never");
  EXPECT_EQ(0u, vk_subscriber_count(s));
  EXPECT_FALSE(vk_subscriber_connected(s));
  vk_subscriber_free(s);
  vk_subscriber_free(nullptr);
  uv_run(&loop, UV_RUN_DEFAULT);
  EXPECT_EQ(0, uv_loop_close(&loop));
}

}  // namespace
