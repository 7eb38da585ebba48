// ratelimit_test.cc: token buckets, on a clock the test controls.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

extern "C" {
#include "common.h"
#include "ratelimit.h"
}

namespace {

class RateLimitTest : public ::testing::Test {
 protected:
  void TearDown() override {
    vk_ratelimit_free(r_);
  }
  vk_ratelimit_t *r_ = nullptr;
};

TEST_F(RateLimitTest, BurstThenRefusalWithRetryHint) {
  ASSERT_EQ(vk_ratelimit_new(&r_, 10, 5, 64), VK_OK);
  uint64_t retry = 0;
  for (int i = 0; i < 5; i++) {
    EXPECT_TRUE(vk_ratelimit_take(r_, "car", 1, 1000, &retry)) << i;
  }
  EXPECT_FALSE(vk_ratelimit_take(r_, "car", 1, 1000, &retry));
  EXPECT_EQ(retry, 100u);  // 10 per second: one token per 100 ms
  EXPECT_FALSE(vk_ratelimit_take(r_, "car", 1, 1099, &retry));
  EXPECT_TRUE(vk_ratelimit_take(r_, "car", 1, 1100, &retry));
}

TEST_F(RateLimitTest, RefillIsCappedAtTheBurst) {
  ASSERT_EQ(vk_ratelimit_new(&r_, 10, 3, 64), VK_OK);
  uint64_t retry = 0;
  EXPECT_TRUE(vk_ratelimit_take(r_, "car", 3, 0, &retry));
  // An hour later there are still only 3 tokens.
  EXPECT_FALSE(vk_ratelimit_take(r_, "car", 4, 3600000, &retry));
  EXPECT_TRUE(vk_ratelimit_take(r_, "car", 3, 3600000, &retry));
}

TEST_F(RateLimitTest, KeysAreIndependent) {
  ASSERT_EQ(vk_ratelimit_new(&r_, 1, 1, 4096), VK_OK);
  uint64_t retry = 0;
  EXPECT_TRUE(vk_ratelimit_take(r_, "a", 1, 0, &retry));
  EXPECT_FALSE(vk_ratelimit_take(r_, "a", 1, 0, &retry));
  EXPECT_TRUE(vk_ratelimit_take(r_, "b", 1, 0, &retry));
}

TEST_F(RateLimitTest, ZeroRateAdmitsEverything) {
  ASSERT_EQ(vk_ratelimit_new(&r_, 0, 0, 16), VK_OK);
  uint64_t retry = 0;
  for (int i = 0; i < 1000; i++) {
    EXPECT_TRUE(vk_ratelimit_take(r_, "car", 1, 0, &retry));
  }
}

TEST_F(RateLimitTest, BatchCostsItsSize) {
  ASSERT_EQ(vk_ratelimit_new(&r_, 100, 64, 16), VK_OK);
  uint64_t retry = 0;
  EXPECT_TRUE(vk_ratelimit_take(r_, "car", 64, 0, &retry));
  EXPECT_FALSE(vk_ratelimit_take(r_, "car", 1, 0, &retry));
  EXPECT_EQ(retry, 10u);
}

// vkeyd's event loops share one limiter: two threads taking from one
// bucket at once are admitted exactly as often as the bucket holds.
TEST_F(RateLimitTest, LoopsShareTheBucket) {
  ASSERT_EQ(vk_ratelimit_new(&r_, 1, 20000, 64), VK_OK);
  std::atomic<int> admitted{0};
  auto take_all = [&] {
    uint64_t retry = 0;
    for (int i = 0; i < 20000; i++) {
      if (vk_ratelimit_take(r_, "car", 1, 0, &retry)) {
        admitted++;
      }
    }
  };
  std::thread a(take_all), b(take_all);
  a.join();
  b.join();
  EXPECT_EQ(admitted.load(), 20000);
}

// The loops' clocks differ by a millisecond or so: a call stamped earlier
// than the bucket's last update earns no tokens and does not rewind it.
TEST_F(RateLimitTest, ClockRunningBackwardsEarnsNothing) {
  ASSERT_EQ(vk_ratelimit_new(&r_, 1000, 1, 64), VK_OK);
  uint64_t retry = 0;
  EXPECT_TRUE(vk_ratelimit_take(r_, "car", 1, 1000, &retry));
  EXPECT_FALSE(vk_ratelimit_take(r_, "car", 1, 999, &retry));
  // Had 999 rewound the bucket, 1000 would find a token earned again.
  EXPECT_FALSE(vk_ratelimit_take(r_, "car", 1, 1000, &retry));
  EXPECT_TRUE(vk_ratelimit_take(r_, "car", 1, 1001, &retry));
}

}  // namespace
