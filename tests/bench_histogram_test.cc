// Tests for bench/histogram.c: percentiles on known distributions, the
// precision promise, merging and clamping.
#include <gtest/gtest.h>

#include <cstdint>

extern "C" {
#include "common.h"
#include "histogram.h"
}

namespace {

class HistTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(VK_OK, vk_hist_init(&h_, VK_HIST_LATENCY_HIGHEST,
                                  VK_HIST_LATENCY_SUB_BITS));
  }
  void TearDown() override {
    vk_hist_cleanup(&h_);
  }

  // The histogram promises: a reported value is within 1/128 of the true
  // one, and never below it (it reports the bucket's highest value).
  static void ExpectNear(uint64_t want, uint64_t got) {
    EXPECT_GE(got, want);
    EXPECT_LE(got, want + want / 128 + 1) << "want " << want;
  }

  vk_hist_t h_;
};

TEST_F(HistTest, EmptyReportsZero) {
  EXPECT_EQ(0u, h_.total);
  EXPECT_EQ(0u, vk_hist_percentile(&h_, 50));
  EXPECT_EQ(0u, vk_hist_percentile(&h_, 100));
  EXPECT_EQ(0.0, vk_hist_mean(&h_));
}

TEST_F(HistTest, UniformOneToThousand) {
  for (uint64_t v = 1; v <= 1000; v++) {
    vk_hist_record(&h_, v);
  }
  EXPECT_EQ(1000u, h_.total);
  ExpectNear(500, vk_hist_percentile(&h_, 50));
  ExpectNear(900, vk_hist_percentile(&h_, 90));
  ExpectNear(990, vk_hist_percentile(&h_, 99));
  ExpectNear(999, vk_hist_percentile(&h_, 99.9));
  EXPECT_EQ(1000u, vk_hist_percentile(&h_, 100));  // max is exact
  EXPECT_EQ(1u, vk_hist_percentile(&h_, 0));       // min is exact
  EXPECT_EQ(1000u, h_.max);
  EXPECT_DOUBLE_EQ(500.5, vk_hist_mean(&h_));
}

TEST_F(HistTest, SmallValuesAreExact) {
  // Below 2^(sub_bits+1) = 256 every value has its own bucket.
  for (uint64_t v = 0; v < 256; v++) {
    vk_hist_record(&h_, v);
  }
  EXPECT_EQ(127u, vk_hist_percentile(&h_, 50));  // rank 128 of 0..255
  EXPECT_EQ(253u, vk_hist_percentile(&h_, 99));  // rank ceil(253.44) = 254
  EXPECT_EQ(255u, vk_hist_percentile(&h_, 100));
}

TEST_F(HistTest, SkewedDistribution) {
  // 990 fast calls of 100 us and 10 slow ones of 50 ms: p99 is fast,
  // p99.9 is slow.
  for (int i = 0; i < 990; i++) {
    vk_hist_record(&h_, 100);
  }
  for (int i = 0; i < 10; i++) {
    vk_hist_record(&h_, 50000);
  }
  EXPECT_EQ(100u, vk_hist_percentile(&h_, 50));
  EXPECT_EQ(100u, vk_hist_percentile(&h_, 99));
  ExpectNear(50000, vk_hist_percentile(&h_, 99.9));
  EXPECT_EQ(50000u, vk_hist_percentile(&h_, 100));
}

TEST_F(HistTest, BucketsHoldTwoSignificantDigitsOverTheRange) {
  uint64_t prev_low = 0;
  for (uint64_t v = 1; v <= VK_HIST_LATENCY_HIGHEST; v += 1 + v / 97) {
    uint64_t lo = vk_hist_bucket_lowest(&h_, v);
    uint64_t hi = vk_hist_bucket_highest(&h_, v);
    ASSERT_LE(lo, v);
    ASSERT_GE(hi, v);
    // Width at most 1/128 of the value: better than 1% (2 digits).
    ASSERT_LE(hi - lo, v / 128) << v;
    ASSERT_GE(lo, prev_low);  // buckets are ordered by value
    prev_low = lo;
  }
}

TEST_F(HistTest, MergeEqualsRecordingEverything) {
  vk_hist_t a, b;
  ASSERT_EQ(VK_OK, vk_hist_init(&a, VK_HIST_LATENCY_HIGHEST,
                                VK_HIST_LATENCY_SUB_BITS));
  ASSERT_EQ(VK_OK, vk_hist_init(&b, VK_HIST_LATENCY_HIGHEST,
                                VK_HIST_LATENCY_SUB_BITS));
  for (uint64_t v = 1; v <= 100000; v += 7) {
    vk_hist_record(&h_, v);
    vk_hist_record(v % 2 ? &a : &b, v);
  }
  ASSERT_EQ(VK_OK, vk_hist_merge(&a, &b));
  EXPECT_EQ(h_.total, a.total);
  EXPECT_EQ(h_.min, a.min);
  EXPECT_EQ(h_.max, a.max);
  EXPECT_DOUBLE_EQ(vk_hist_mean(&h_), vk_hist_mean(&a));
  for (double p : {1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0}) {
    EXPECT_EQ(vk_hist_percentile(&h_, p), vk_hist_percentile(&a, p)) << p;
  }
  vk_hist_cleanup(&a);
  vk_hist_cleanup(&b);
}

TEST_F(HistTest, MergeRefusesAnotherShape) {
  vk_hist_t other;
  ASSERT_EQ(VK_OK, vk_hist_init(&other, 1000, 5));
  vk_hist_record(&other, 10);
  EXPECT_EQ(VK_EINVAL, vk_hist_merge(&h_, &other));
  EXPECT_EQ(0u, h_.total);  // unchanged
  vk_hist_cleanup(&other);
}

TEST_F(HistTest, OverflowIsClampedAndCounted) {
  vk_hist_record(&h_, 10);
  vk_hist_record(&h_, VK_HIST_LATENCY_HIGHEST);
  vk_hist_record(&h_, VK_HIST_LATENCY_HIGHEST + 1);
  vk_hist_record(&h_, UINT64_MAX);
  EXPECT_EQ(4u, h_.total);
  EXPECT_EQ(2u, h_.clamped);
  EXPECT_EQ(VK_HIST_LATENCY_HIGHEST, h_.max);
  EXPECT_EQ(VK_HIST_LATENCY_HIGHEST, vk_hist_percentile(&h_, 100));
  EXPECT_EQ(VK_HIST_LATENCY_HIGHEST, vk_hist_percentile(&h_, 99));
  EXPECT_EQ(10u, vk_hist_percentile(&h_, 25));
}

TEST_F(HistTest, ResetKeepsTheShape) {
  vk_hist_record(&h_, 123);
  vk_hist_reset(&h_);
  EXPECT_EQ(0u, h_.total);
  EXPECT_EQ(0u, vk_hist_percentile(&h_, 50));
  vk_hist_record(&h_, 7);
  EXPECT_EQ(7u, vk_hist_percentile(&h_, 50));
}

TEST(HistShape, BadShapesAreRefusedAndCleanupIsSafe) {
  vk_hist_t h;
  EXPECT_EQ(VK_EINVAL, vk_hist_init(&h, 1000, 0));
  vk_hist_cleanup(&h);
  EXPECT_EQ(VK_EINVAL, vk_hist_init(&h, 0, 7));
  vk_hist_cleanup(&h);
  EXPECT_EQ(VK_EINVAL, vk_hist_init(&h, 1000, 17));
  vk_hist_cleanup(&h);
  vk_hist_cleanup(&h);  // twice: still fine
}

TEST(HistShape, LatencyShapeIsSmall) {
  vk_hist_t h;
  ASSERT_EQ(VK_OK, vk_hist_init(&h, VK_HIST_LATENCY_HIGHEST,
                                VK_HIST_LATENCY_SUB_BITS));
  // 1 us .. 60 s at 2 digits: a few thousand counters, cheap to reset
  // every second for the progress line.
  EXPECT_LT(h.nbuckets, 4000u);
  vk_hist_cleanup(&h);
}

}  // namespace
