// Tests for bench/schedule.c: the open-loop schedule hands out request k at
// start + k/R exactly, without drift, and after a stall hands out every
// overdue request in order. Time is simulated: no clocks, no sleeps.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

extern "C" {
#include "common.h"
#include "schedule.h"
}

namespace {

constexpr uint64_t kStart = UINT64_C(5000000000);  // any monotonic origin

// The exact intended time for an integer rate, in integer arithmetic.
uint64_t Exact(uint64_t k, uint64_t rate) {
  return kStart + static_cast<uint64_t>(
                      (static_cast<unsigned __int128>(k) * 1000000000u) / rate);
}

TEST(Schedule, RejectsImpossibleRates) {
  vk_sched_t s;
  EXPECT_EQ(VK_EINVAL, vk_sched_init(&s, 0, 0, UINT64_MAX));
  EXPECT_EQ(VK_EINVAL, vk_sched_init(&s, 0, -5, UINT64_MAX));
  EXPECT_EQ(VK_EINVAL,
            vk_sched_init(&s, 0, std::numeric_limits<double>::quiet_NaN(),
                          UINT64_MAX));
  EXPECT_EQ(VK_EINVAL, vk_sched_init(&s, 0, INFINITY, UINT64_MAX));
}

TEST(Schedule, KthIntendedTimeIsStartPlusKOverRNoDrift) {
  for (uint64_t rate : {3u, 1000u, 70000u, 123457u}) {
    vk_sched_t s;
    ASSERT_EQ(VK_OK,
              vk_sched_init(&s, kStart, static_cast<double>(rate), UINT64_MAX));
    for (uint64_t k = 0; k <= 1000000; k++) {
      ASSERT_EQ(Exact(k, rate), vk_sched_intended(&s, k))
          << "rate " << rate << " k " << k;
    }
  }
}

TEST(Schedule, AddingThePeriodWouldDriftButTheScheduleDoesNot) {
  // 1/3 s is not a whole number of nanoseconds: summing a rounded period
  // drifts by 1/3 ns per step, 333 us after 1e6 steps.
  vk_sched_t s;
  ASSERT_EQ(VK_OK, vk_sched_init(&s, kStart, 3.0, UINT64_MAX));
  uint64_t summed = kStart;
  for (int k = 0; k < 1000000; k++) {
    summed += 333333333;
  }
  EXPECT_EQ(kStart + UINT64_C(333333333333333), vk_sched_intended(&s, 1000000));
  EXPECT_NE(summed, vk_sched_intended(&s, 1000000));
}

TEST(Schedule, FractionalRate) {
  vk_sched_t s;
  ASSERT_EQ(VK_OK, vk_sched_init(&s, kStart, 2.5, UINT64_MAX));
  for (uint64_t k = 0; k <= 1000000; k++) {
    ASSERT_EQ(kStart + k * UINT64_C(400000000), vk_sched_intended(&s, k));
  }
}

TEST(Schedule, TakesEachRequestWhenDueAndNotBefore) {
  vk_sched_t s;
  ASSERT_EQ(VK_OK, vk_sched_init(&s, kStart, 1000.0, UINT64_MAX));
  uint64_t t = 0;
  EXPECT_EQ(0, vk_sched_take(&s, &t, kStart - 1));  // before the start
  for (uint64_t k = 0; k < 1000; k++) {
    uint64_t due = vk_sched_next_due(&s);
    ASSERT_EQ(kStart + k * 1000000, due);
    ASSERT_EQ(0, vk_sched_take(&s, &t, due - 1));
    ASSERT_EQ(1, vk_sched_take(&s, &t, due));
    ASSERT_EQ(due, t);
    ASSERT_EQ(0, vk_sched_take(&s, &t, due));  // the next one is not due
  }
}

TEST(Schedule, CatchingUpAfterAStallSkipsNothing) {
  vk_sched_t s;
  ASSERT_EQ(VK_OK, vk_sched_init(&s, kStart, 1000.0, UINT64_MAX));
  uint64_t t = 0;
  uint64_t k = 0;
  // Run on time for 10 ms: requests 0..10.
  while (vk_sched_take(&s, &t, kStart + 10000000)) {
    ASSERT_EQ(kStart + k * 1000000, t);
    k++;
  }
  ASSERT_EQ(11u, k);
  // The client stalls for a second: 990 more requests fall due.
  uint64_t now = kStart + 1000000000;
  EXPECT_EQ(990u, vk_sched_overdue(&s, now));
  while (vk_sched_take(&s, &t, now)) {
    // Each keeps its own intended time, so its latency includes the stall.
    ASSERT_EQ(kStart + k * 1000000, t);
    k++;
  }
  EXPECT_EQ(1001u, k);  // 0..1000, each exactly once
  EXPECT_EQ(0u, vk_sched_overdue(&s, now));
  EXPECT_EQ(kStart + 1001 * UINT64_C(1000000), vk_sched_next_due(&s));
}

TEST(Schedule, OverdueCountsWithARateThatDoesNotDivideASecond) {
  vk_sched_t s;
  ASSERT_EQ(VK_OK, vk_sched_init(&s, kStart, 7.0, UINT64_MAX));
  for (uint64_t now = kStart; now < kStart + 3000000000u; now += 12345678) {
    uint64_t n = 0;
    while (vk_sched_intended(&s, n) <= now) {
      n++;
    }
    ASSERT_EQ(n, vk_sched_overdue(&s, now)) << now;
  }
}

TEST(Schedule, LimitStopsTheSchedule) {
  vk_sched_t s;
  ASSERT_EQ(VK_OK, vk_sched_init(&s, kStart, 100.0, 5));
  uint64_t t;
  int n = 0;
  while (vk_sched_take(&s, &t, kStart + 1000000000)) {
    n++;
  }
  EXPECT_EQ(5, n);
  EXPECT_EQ(UINT64_MAX, vk_sched_next_due(&s));
  EXPECT_EQ(0u, vk_sched_overdue(&s, kStart + 1000000000));
}

}  // namespace
