// worker_test.cc: the worker pool (server/worker.c). No assertion depends on
// timing; a lost wake-up shows up as a hang, which ctest's TIMEOUT catches.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

extern "C" {
#include "common.h"
}
#include "worker.h"

namespace {

// TestJob records what happened to it. Deriving from vk_job_t lets the
// callbacks recover it with a static_cast.
struct TestJob : vk_job_t {
  size_t index = 0;
  std::atomic<int> runs{0};
  int dones = 0;
  int status = 1;  // not a VK_* code: "done() never called"
  std::thread::id run_thread;
  std::thread::id done_thread;
  std::vector<size_t> *order = nullptr;         // appended to by done()
  std::function<void(TestJob *)> on_run;        // optional, on the worker
  std::function<void(TestJob *, int)> on_done;  // optional, on the loop

  TestJob() : vk_job_t{} {
    run = Run;
    done = Done;
  }

  static void Run(vk_job_t *j) {
    TestJob *t = static_cast<TestJob *>(j);
    t->run_thread = std::this_thread::get_id();
    if (t->on_run) {
      t->on_run(t);
    }
    t->runs.fetch_add(1);
  }

  static void Done(vk_job_t *j, int status) {
    TestJob *t = static_cast<TestJob *>(j);
    t->dones++;
    t->status = status;
    t->done_thread = std::this_thread::get_id();
    if (t->order != nullptr) {
      t->order->push_back(t->index);
    }
    if (t->on_done) {
      t->on_done(t, status);
    }
  }
};

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    loop_thread_ = std::this_thread::get_id();
  }

  vk_worker_pool_t *NewPool(unsigned threads, size_t queue_cap = 0,
                            size_t max_batch = 0) {
    vk_worker_config_t cfg = {};
    cfg.threads = threads;
    cfg.queue_cap = queue_cap;
    cfg.max_batch = max_batch;
    vk_worker_pool_t *p = nullptr;
    EXPECT_EQ(vk_worker_pool_new(&p, &loop_, &cfg), 0);
    return p;
  }

  std::vector<TestJob> MakeJobs(size_t n) {
    std::vector<TestJob> jobs(n);
    for (size_t i = 0; i < n; i++) {
      jobs[i].index = i;
      jobs[i].order = &order_;
    }
    return jobs;
  }

  // Finish closes the pool, lets its close callbacks free it, and checks
  // that it left nothing on the loop.
  void Finish(vk_worker_pool_t *p) {
    vk_worker_pool_close(p);
    EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  uv_loop_t loop_;
  std::thread::id loop_thread_;
  std::vector<size_t> order_;
};

// Every job ran at most once and got exactly one done() on the loop thread,
// with 0 exactly when it ran.
void ExpectEachAnsweredOnce(const std::vector<TestJob> &jobs,
                            std::thread::id loop_thread) {
  for (const TestJob &j : jobs) {
    ASSERT_EQ(j.dones, 1) << "job " << j.index;
    ASSERT_EQ(j.done_thread, loop_thread) << "job " << j.index;
    if (j.runs.load() == 1) {
      ASSERT_EQ(j.status, 0) << "job " << j.index;
    } else {
      ASSERT_EQ(j.runs.load(), 0) << "job " << j.index;
      ASSERT_EQ(j.status, VK_ECLOSED) << "job " << j.index;
    }
  }
}

TEST_F(WorkerTest, RunsOnWorkersAndDoneOnLoop) {
  vk_worker_pool_t *p = NewPool(2);
  ASSERT_NE(p, nullptr);
  std::vector<TestJob> jobs = MakeJobs(100);
  for (TestJob &j : jobs) {
    ASSERT_EQ(vk_worker_submit(p, &j), 0);
  }
  EXPECT_EQ(vk_worker_pending(p), 100u);
  EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);
  EXPECT_EQ(vk_worker_pending(p), 0u);
  for (const TestJob &j : jobs) {
    EXPECT_EQ(j.runs.load(), 1);
    EXPECT_EQ(j.dones, 1);
    EXPECT_EQ(j.status, 0);
    EXPECT_NE(j.run_thread, loop_thread_);
    EXPECT_EQ(j.done_thread, loop_thread_);
  }
  EXPECT_EQ(order_.size(), jobs.size());
  Finish(p);
}

TEST_F(WorkerTest, OneThreadAnswersInSubmissionOrder) {
  vk_worker_pool_t *p = NewPool(1, 0, 7);  // batches of 7 and a remainder
  ASSERT_NE(p, nullptr);
  std::vector<TestJob> jobs = MakeJobs(1000);
  for (TestJob &j : jobs) {
    ASSERT_EQ(vk_worker_submit(p, &j), 0);
  }
  EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);
  ASSERT_EQ(order_.size(), jobs.size());
  for (size_t i = 0; i < order_.size(); i++) {
    ASSERT_EQ(order_[i], i);
  }
  ExpectEachAnsweredOnce(jobs, loop_thread_);
  Finish(p);
}

TEST_F(WorkerTest, BatchesUnderLoad) {
  vk_worker_pool_t *p = NewPool(2);
  ASSERT_NE(p, nullptr);
  // All 10,000 are submitted before the loop runs: one loop iteration.
  std::vector<TestJob> jobs = MakeJobs(10000);
  for (TestJob &j : jobs) {
    ASSERT_EQ(vk_worker_submit(p, &j), 0);
  }
  EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);
  for (const TestJob &j : jobs) {
    ASSERT_EQ(j.runs.load(), 1);
    ASSERT_EQ(j.dones, 1);
    ASSERT_EQ(j.status, 0);
  }
  vk_worker_stats_t st;
  vk_worker_stats(p, &st);
  EXPECT_EQ(st.jobs_run, 10000u);
  EXPECT_LT(st.batches, 10000u);
  EXPECT_GE(st.batches, 10000u / 64);  // default max_batch
  EXPECT_GT(st.max_batch, 1u);
  EXPECT_LE(st.max_batch, 64u);
  Finish(p);
}

TEST_F(WorkerTest, LightLoadJobCompletesInOneIteration) {
  vk_worker_pool_t *p = NewPool(4);
  ASSERT_NE(p, nullptr);
  std::vector<TestJob> jobs = MakeJobs(1);
  ASSERT_EQ(vk_worker_submit(p, &jobs[0]), 0);
  // The prepare callback hands the job over before the loop blocks, and
  // the loop then blocks until the result arrives: a single iteration.
  uv_run(&loop_, UV_RUN_ONCE);
  EXPECT_EQ(jobs[0].runs.load(), 1);
  EXPECT_EQ(jobs[0].dones, 1);
  EXPECT_EQ(jobs[0].status, 0);
  vk_worker_stats_t st;
  vk_worker_stats(p, &st);
  EXPECT_EQ(st.jobs_run, 1u);
  EXPECT_EQ(st.batches, 1u);
  EXPECT_EQ(st.max_batch, 1u);
  Finish(p);
}

TEST_F(WorkerTest, IdlePoolDoesNotKeepLoopAlive) {
  vk_worker_pool_t *p = nullptr;
  ASSERT_EQ(vk_worker_pool_new(&p, &loop_, nullptr), 0);  // defaults
  EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);
  std::vector<TestJob> jobs = MakeJobs(3);
  for (TestJob &j : jobs) {
    ASSERT_EQ(vk_worker_submit(p, &j), 0);
  }
  EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);
  ExpectEachAnsweredOnce(jobs, loop_thread_);
  EXPECT_EQ(order_.size(), 3u);
  Finish(p);
}

TEST_F(WorkerTest, BusyAtQueueCapThenRecovers) {
  vk_worker_pool_t *p = NewPool(1, 4);
  ASSERT_NE(p, nullptr);
  std::vector<TestJob> jobs = MakeJobs(5);
  for (size_t i = 0; i < 4; i++) {
    ASSERT_EQ(vk_worker_submit(p, &jobs[i]), 0);
  }
  EXPECT_EQ(vk_worker_submit(p, &jobs[4]), VK_EBUSY);
  EXPECT_EQ(vk_worker_pending(p), 4u);
  EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);
  EXPECT_EQ(jobs[4].dones, 0);  // a refused job is never answered
  EXPECT_EQ(vk_worker_pending(p), 0u);
  ASSERT_EQ(vk_worker_submit(p, &jobs[4]), 0);
  EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);
  for (const TestJob &j : jobs) {
    EXPECT_EQ(j.runs.load(), 1);
    EXPECT_EQ(j.dones, 1);
    EXPECT_EQ(j.status, 0);
  }
  Finish(p);
}

TEST_F(WorkerTest, DoneMaySubmitAgainAtQueueCap) {
  vk_worker_pool_t *p = NewPool(2, 1);
  ASSERT_NE(p, nullptr);
  TestJob job;
  int rounds = 0;
  job.on_done = [&](TestJob *t, int status) {
    ASSERT_EQ(status, 0);
    if (++rounds < 100) {
      ASSERT_EQ(vk_worker_submit(p, t), 0);  // pending already dropped
    }
  };
  ASSERT_EQ(vk_worker_submit(p, &job), 0);
  EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);
  EXPECT_EQ(rounds, 100);
  EXPECT_EQ(job.runs.load(), 100);
  Finish(p);
}

TEST_F(WorkerTest, CloseBeforeTheLoopRunsAnswersClosed) {
  vk_worker_pool_t *p = NewPool(2);
  ASSERT_NE(p, nullptr);
  std::vector<TestJob> jobs = MakeJobs(100);
  for (TestJob &j : jobs) {
    ASSERT_EQ(vk_worker_submit(p, &j), 0);
  }
  vk_worker_pool_close(p);  // done() is called before close returns
  for (const TestJob &j : jobs) {
    EXPECT_EQ(j.runs.load(), 0);
    EXPECT_EQ(j.dones, 1);
    EXPECT_EQ(j.status, VK_ECLOSED);
  }
  ASSERT_EQ(order_.size(), jobs.size());
  for (size_t i = 0; i < order_.size(); i++) {
    EXPECT_EQ(order_[i], i);
  }
  Finish(p);  // a second close is a no-op
}

TEST_F(WorkerTest, CloseWhileJobsRun) {
  vk_worker_pool_t *p = NewPool(1, 0, 8);
  ASSERT_NE(p, nullptr);
  std::vector<TestJob> jobs = MakeJobs(100);

  // Job 0 holds its worker until the gate opens, so that close finds one
  // batch running and the rest queued.
  std::mutex mu;
  std::condition_variable cv;
  bool started = false;
  bool open = false;
  jobs[0].on_run = [&](TestJob *) {
    std::unique_lock<std::mutex> lock(mu);
    started = true;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
  };
  for (TestJob &j : jobs) {
    ASSERT_EQ(vk_worker_submit(p, &j), 0);
  }
  uv_run(&loop_, UV_RUN_NOWAIT);  // hands the jobs to the worker
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return started; });
  }
  // The gate opens from another thread, since close blocks until the
  // running batch ends. The delay only makes it likely that close finds
  // jobs still queued; nothing asserts that it did.
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  });
  vk_worker_pool_close(p);
  opener.join();

  ExpectEachAnsweredOnce(jobs, loop_thread_);
  // The batch that was running when close came finished: 0..7.
  for (size_t i = 0; i < 8; i++) {
    EXPECT_EQ(jobs[i].status, 0) << "job " << i;
  }
  EXPECT_EQ(order_.size(), jobs.size());
  Finish(p);
}

TEST_F(WorkerTest, CloseFromInsideDone) {
  vk_worker_pool_t *p = NewPool(2, 0, 4);
  ASSERT_NE(p, nullptr);
  std::vector<TestJob> jobs = MakeJobs(1000);
  TestJob late;
  bool closed = false;
  auto close_once = [&](TestJob *, int) {
    if (!closed) {
      closed = true;
      vk_worker_pool_close(p);
      EXPECT_EQ(vk_worker_submit(p, &late), VK_ECLOSED);
      vk_worker_pool_close(p);  // no-op
    }
  };
  for (TestJob &j : jobs) {
    j.on_done = close_once;
    ASSERT_EQ(vk_worker_submit(p, &j), 0);
  }
  EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);  // runs the close callbacks
  EXPECT_TRUE(closed);
  ExpectEachAnsweredOnce(jobs, loop_thread_);
  EXPECT_EQ(late.dones, 0);
  EXPECT_EQ(order_.size(), jobs.size());
  EXPECT_EQ(uv_loop_close(&loop_), 0);  // the pool freed itself already
}

// Many small submissions spread over many loop iterations, from done():
// exercises the hand-over and wake-up paths (under TSan, too).
TEST_F(WorkerTest, SustainedResubmission) {
  vk_worker_pool_t *p = NewPool(2, 0, 4);
  ASSERT_NE(p, nullptr);
  const int kInFlight = 16;
  const int kTotal = 20000;
  int submitted = 0;
  int answered = 0;
  std::vector<TestJob> jobs = MakeJobs(kInFlight);
  for (TestJob &j : jobs) {
    j.order = nullptr;
    j.on_done = [&](TestJob *t, int status) {
      ASSERT_EQ(status, 0);
      answered++;
      if (submitted < kTotal) {
        submitted++;
        ASSERT_EQ(vk_worker_submit(p, t), 0);
      }
    };
    submitted++;
    ASSERT_EQ(vk_worker_submit(p, &j), 0);
  }
  EXPECT_EQ(uv_run(&loop_, UV_RUN_DEFAULT), 0);
  EXPECT_EQ(answered, kTotal);
  EXPECT_EQ(vk_worker_pending(p), 0u);
  vk_worker_stats_t st;
  vk_worker_stats(p, &st);
  EXPECT_EQ(st.jobs_run, static_cast<uint64_t>(kTotal));
  EXPECT_LE(st.max_batch, 4u);
  Finish(p);
}

TEST_F(WorkerTest, RejectsBadArguments) {
  vk_worker_pool_t *p = nullptr;
  EXPECT_EQ(vk_worker_pool_new(nullptr, &loop_, nullptr), VK_EINVAL);
  EXPECT_EQ(vk_worker_pool_new(&p, nullptr, nullptr), VK_EINVAL);
  vk_worker_config_t cfg = {};
  cfg.threads = VK_WORKER_MAX_THREADS + 1;
  EXPECT_EQ(vk_worker_pool_new(&p, &loop_, &cfg), VK_EINVAL);
  EXPECT_EQ(p, nullptr);

  p = NewPool(1);
  ASSERT_NE(p, nullptr);
  vk_job_t bare = {};
  EXPECT_EQ(vk_worker_submit(p, &bare), VK_EINVAL);
  EXPECT_EQ(vk_worker_submit(p, nullptr), VK_EINVAL);
  EXPECT_EQ(vk_worker_pending(p), 0u);
  vk_worker_pool_close(nullptr);  // no-op
  Finish(p);
}

}  // namespace
