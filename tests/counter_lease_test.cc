// counter_lease_test.cc: the session counter window over leased ranges.
#include <gtest/gtest.h>

extern "C" {
#include "counter_lease.h"
}

namespace {

vk_counter_lease_t Leased(uint64_t from, uint64_t to) {
  vk_counter_lease_t l = {};
  EXPECT_TRUE(vk_counter_granted(&l, from, to));
  return l;
}

TEST(CounterLeaseTest, NothingIsAcceptedWithoutALease) {
  vk_counter_lease_t l = {};
  EXPECT_EQ(vk_counter_take(&l, 1), VK_COUNTER_NEED_LEASE);
}

TEST(CounterLeaseTest, AcceptsEachCounterOfTheLeaseOnce) {
  vk_counter_lease_t l = Leased(0, 10);
  for (uint64_t c = 1; c <= 10; c++) {
    EXPECT_EQ(vk_counter_take(&l, c), VK_COUNTER_OK) << c;
    EXPECT_EQ(vk_counter_take(&l, c), VK_COUNTER_REPLAYED) << c;
  }
  EXPECT_EQ(vk_counter_take(&l, 11), VK_COUNTER_NEED_LEASE);
}

TEST(CounterLeaseTest, ReorderedWithinTheWindowIsAcceptedOnce) {
  vk_counter_lease_t l = Leased(0, 1000);
  EXPECT_EQ(vk_counter_take(&l, 40), VK_COUNTER_OK);
  EXPECT_EQ(vk_counter_take(&l, 9), VK_COUNTER_OK);  // 31 behind
  EXPECT_EQ(vk_counter_take(&l, 9), VK_COUNTER_REPLAYED);
  EXPECT_EQ(vk_counter_take(&l, 8), VK_COUNTER_TOO_OLD);  // 32 behind
  EXPECT_EQ(vk_counter_take(&l, 41), VK_COUNTER_OK);
  EXPECT_EQ(vk_counter_take(&l, 9), VK_COUNTER_TOO_OLD);
  EXPECT_EQ(vk_counter_resync_point(&l), 41u);
}

TEST(CounterLeaseTest, ABigJumpForgetsTheWindow) {
  vk_counter_lease_t l = Leased(0, 1000);
  EXPECT_EQ(vk_counter_take(&l, 5), VK_COUNTER_OK);
  EXPECT_EQ(vk_counter_take(&l, 500), VK_COUNTER_OK);
  EXPECT_EQ(vk_counter_take(&l, 5), VK_COUNTER_TOO_OLD);
  EXPECT_EQ(vk_counter_take(&l, 499), VK_COUNTER_OK);
}

TEST(CounterLeaseTest, CountersBelowTheLeaseAreSomeoneElses) {
  // Another instance held (0, 100]: our lease starts above it.
  vk_counter_lease_t l = Leased(100, 200);
  EXPECT_EQ(vk_counter_take(&l, 100), VK_COUNTER_TOO_OLD);
  EXPECT_EQ(vk_counter_take(&l, 99), VK_COUNTER_TOO_OLD);
  // The vehicle resumes right above the point it is given.
  EXPECT_EQ(vk_counter_resync_point(&l), 100u);
  EXPECT_EQ(vk_counter_take(&l, 101), VK_COUNTER_OK);
}

TEST(CounterLeaseTest, AContiguousLeaseExtendsAndKeepsTheWindow) {
  vk_counter_lease_t l = Leased(0, 10);
  EXPECT_EQ(vk_counter_take(&l, 10), VK_COUNTER_OK);
  EXPECT_EQ(vk_counter_take(&l, 12), VK_COUNTER_NEED_LEASE);
  ASSERT_TRUE(vk_counter_granted(&l, 10, 20));
  EXPECT_EQ(vk_counter_take(&l, 12), VK_COUNTER_OK);
  EXPECT_EQ(vk_counter_take(&l, 10), VK_COUNTER_REPLAYED);
  EXPECT_EQ(vk_counter_take(&l, 11), VK_COUNTER_OK);  // reordered, in window
}

TEST(CounterLeaseTest, ALeaseAfterAGapReplacesOurs) {
  vk_counter_lease_t l = Leased(0, 10);
  EXPECT_EQ(vk_counter_take(&l, 3), VK_COUNTER_OK);
  // Someone leased (10, 30] meanwhile; ours is (30, 40] now.
  ASSERT_TRUE(vk_counter_granted(&l, 30, 40));
  EXPECT_EQ(vk_counter_take(&l, 4), VK_COUNTER_TOO_OLD);
  EXPECT_EQ(vk_counter_take(&l, 20), VK_COUNTER_TOO_OLD);
  EXPECT_EQ(vk_counter_take(&l, 31), VK_COUNTER_OK);
}

TEST(CounterLeaseTest, ALeaseBelowOursIsRefused) {
  vk_counter_lease_t l = Leased(10, 20);
  EXPECT_FALSE(vk_counter_granted(&l, 5, 30));
  EXPECT_FALSE(vk_counter_granted(&l, 30, 30));  // empty
  EXPECT_EQ(l.lo, 10u);
  EXPECT_EQ(l.hi, 20u);
}

TEST(CounterLeaseTest, LeasesGrowToTheMaximum) {
  vk_counter_lease_t l = {};
  uint64_t last = 0;
  for (int i = 0; i < 20; i++) {
    uint64_t extra = vk_counter_next_extra(&l);
    EXPECT_GE(extra, last);
    last = extra;
  }
  EXPECT_EQ(last, static_cast<uint64_t>(VK_COUNTER_LEASE_MAX));
  vk_counter_lease_t fresh = {};
  EXPECT_EQ(vk_counter_next_extra(&fresh), 1u);
}

}  // namespace
