// verify_cache_test.cc: the hot path's caches, without Redis: token LRU and
// TTL, status invalidation by vehicle, and distrust while the feed is down
// or silent.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

extern "C" {
#include "common.h"
#include "verify_cache.h"
}

namespace {

const char kKey1[] = "1HGCM82633A004352.00000000000000a1";
const char kKey2[] = "1HGCM82633A004352.00000000000000a2";
const char kOther[] = "5YJ3E1EA7KF317000.00000000000000b1";

class VerifyCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(vk_verify_cache_new(&c_, 8, 64), VK_OK);
  }
  void TearDown() override {
    vk_verify_cache_free(c_);
  }
  void FeedUp() {
    vk_verify_cache_feed_state(c_, true);
    vk_verify_cache_feed_heard(c_, vk_now_ms());
  }
  static void Digest(uint8_t d[32], int n) {
    memset(d, 0, 32);
    d[0] = (uint8_t)n;  // the set index comes from the first 8 bytes
    d[31] = (uint8_t)n;
  }
  vk_verify_cache_t *c_ = nullptr;
};

TEST_F(VerifyCacheTest, TokenHitAndTtl) {
  uint8_t d[32];
  Digest(d, 1);
  EXPECT_FALSE(vk_verify_cache_token_ok(c_, d, 1000));
  vk_verify_cache_token_put(c_, d, 1000);
  EXPECT_TRUE(vk_verify_cache_token_ok(c_, d, 1000));
  EXPECT_FALSE(vk_verify_cache_token_ok(c_, d, 1000 + VK_TOKEN_SIG_TTL_MS));
}

TEST_F(VerifyCacheTest, TokenSetEvictsLeastRecentlyUsed) {
  // 8 slots = 2 sets of 4; digests 0, 2, 4, ... land in one set.
  uint8_t d[6][32];
  for (int i = 0; i < 6; i++) {
    Digest(d[i], 2 * i);
  }
  for (int i = 0; i < 4; i++) {
    vk_verify_cache_token_put(c_, d[i], 0);
  }
  // Touch the oldest so that the second oldest becomes the victim.
  EXPECT_TRUE(vk_verify_cache_token_ok(c_, d[0], 0));
  vk_verify_cache_token_put(c_, d[4], 0);
  EXPECT_TRUE(vk_verify_cache_token_ok(c_, d[0], 0));
  EXPECT_FALSE(vk_verify_cache_token_ok(c_, d[1], 0));
  EXPECT_TRUE(vk_verify_cache_token_ok(c_, d[2], 0));
  EXPECT_TRUE(vk_verify_cache_token_ok(c_, d[4], 0));
}

TEST_F(VerifyCacheTest, StatusOnlyWhileFeedIsUpAndFresh) {
  vk_key_state_t st = {1, 1}, out;
  // Feed down: nothing is cached, nothing is served.
  EXPECT_EQ(vk_verify_cache_stamp(c_, kKey1), 0u);
  vk_verify_cache_status_put(c_, kKey1, &st, 0);
  EXPECT_FALSE(vk_verify_cache_status_get(c_, kKey1, &out));
  FeedUp();
  uint64_t stamp = vk_verify_cache_stamp(c_, kKey1);
  ASSERT_NE(stamp, 0u);
  vk_verify_cache_status_put(c_, kKey1, &st, stamp);
  ASSERT_TRUE(vk_verify_cache_status_get(c_, kKey1, &out));
  EXPECT_EQ(out.status, 1);
  // The feed is lost: the entry is not trusted any more.
  vk_verify_cache_feed_state(c_, false);
  EXPECT_FALSE(vk_verify_cache_status_get(c_, kKey1, &out));
}

TEST_F(VerifyCacheTest, SilentFeedStopsTheCache) {
  vk_key_state_t st = {1, 1}, out;
  vk_verify_cache_feed_state(c_, true);
  // Subscribed, but our last heartbeat came back long ago.
  vk_verify_cache_feed_heard(c_, vk_now_ms() - 10 * VK_FEED_FRESH_MS);
  EXPECT_EQ(vk_verify_cache_stamp(c_, kKey1), 0u);
  vk_verify_cache_feed_heard(c_, vk_now_ms());
  uint64_t stamp = vk_verify_cache_stamp(c_, kKey1);
  vk_verify_cache_status_put(c_, kKey1, &st, stamp);
  EXPECT_TRUE(vk_verify_cache_status_get(c_, kKey1, &out));
}

TEST_F(VerifyCacheTest, InvalidationDropsTheVehicleOnly) {
  FeedUp();
  vk_key_state_t st = {1, 1}, out;
  for (const char *k : {kKey1, kKey2, kOther}) {
    vk_verify_cache_status_put(c_, k, &st, vk_verify_cache_stamp(c_, k));
  }
  vk_verify_cache_invalidate_vehicle(c_, kKey1, 17);
  EXPECT_FALSE(vk_verify_cache_status_get(c_, kKey1, &out));
  EXPECT_FALSE(vk_verify_cache_status_get(c_, kKey2, &out));
  EXPECT_TRUE(vk_verify_cache_status_get(c_, kOther, &out));
}

TEST_F(VerifyCacheTest, ReadRacingAnInvalidationIsNotCached) {
  FeedUp();
  vk_key_state_t st = {1, 1}, out;
  uint64_t stamp = vk_verify_cache_stamp(c_, kKey1);  // read sent
  vk_verify_cache_invalidate_vehicle(c_, kKey1, 17);  // a revoke lands
  vk_verify_cache_status_put(c_, kKey1, &st, stamp);  // the stale reply
  EXPECT_FALSE(vk_verify_cache_status_get(c_, kKey1, &out));
  EXPECT_NE(vk_verify_cache_stamp(c_, kKey1), stamp);
}

TEST_F(VerifyCacheTest, IssuerKeys) {
  uint8_t pub[32] = {7};
  EXPECT_EQ(vk_verify_cache_issuer(c_, "0123456789abcdef"), nullptr);
  vk_verify_cache_issuer_put(c_, "0123456789abcdef", pub);
  const uint8_t *got = vk_verify_cache_issuer(c_, "0123456789abcdef");
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got[0], 7);
  vk_verify_cache_issuer_put(c_, "short", pub);  // ignored
  EXPECT_EQ(vk_verify_cache_issuer(c_, "short"), nullptr);
}

}  // namespace
