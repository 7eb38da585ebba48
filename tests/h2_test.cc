// h2_test: nghttp2's memory on a connection (server/h2.c). The session's
// output frame buffer is placed on pages of its own; releasing it returns
// those pages to the kernel and the session still packs frames into it
// afterwards; the sweep releases a connection that stays quiet and leaves
// one that keeps writing. Residency is read with mincore(2) on the buffer's
// own pages, so the checks do not depend on the rest of the heap. Every test
// ends with uv_loop_close() == 0.
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

// Included first, outside extern "C": BoringSSL's headers declare C++
// templates when compiled as C++.
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <uv.h>

extern "C" {
#include "internal.h"
}

namespace {

size_t PageSize() {
  return static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

// True if the first page of `p` (page-aligned) is resident.
bool FirstPageResident(const void *p) {
  unsigned char vec = 0;
  EXPECT_EQ(mincore(const_cast<void *>(p), PageSize(), &vec), 0);
  return (vec & 1) != 0;
}

// Drains what nghttp2 has to send, as conn.c's flush does.
std::vector<uint8_t> Drain(nghttp2_session *h2) {
  std::vector<uint8_t> out;
  const uint8_t *data;
  ssize_t n;
  while ((n = nghttp2_session_mem_send(h2, &data)) > 0) {
    out.insert(out.end(), data, data + n);
  }
  EXPECT_EQ(n, 0);
  return out;
}

// A server and bare connections: enough for vk__h2_session_new and the
// sweep, without sockets.
class H2Memory : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    ASSERT_EQ(vk_server_new(&server_, &loop_, nullptr), VK_OK);
  }

  void TearDown() override {
    for (vk_conn_t *c : conns_) {
      vk__h2_framebuf_forget(c);
      nghttp2_session_del(c->h2);
      EXPECT_EQ(c->fb, nullptr);  // the session's free reached the hook
      free(c);
    }
    vk_server_free(server_);
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  vk_conn_t *NewConn() {
    auto *c = static_cast<vk_conn_t *>(calloc(1, sizeof(vk_conn_t)));
    c->server = server_;
    EXPECT_EQ(vk__h2_session_new(c), VK_OK);
    conns_.push_back(c);
    return c;
  }

  // Runs the loop for about `ms` (the sweep timer does not keep it alive).
  void RunFor(uint64_t ms) {
    uv_timer_t t;
    uv_timer_init(&loop_, &t);
    uv_timer_start(
        &t, [](uv_timer_t *h) { uv_stop(h->loop); }, ms, 0);
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_close(reinterpret_cast<uv_handle_t *>(&t), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);
  }

  uv_loop_t loop_;
  vk_server_t *server_ = nullptr;
  std::vector<vk_conn_t *> conns_;
};

TEST_F(H2Memory, FrameBufferOnPagesOfItsOwn) {
  vk_conn_t *c = NewConn();
  ASSERT_NE(c->fb, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c->fb) % PageSize(), 0u);
  // nghttp2's frame buffer holds a whole maximal frame.
  EXPECT_GE(c->fb_len, 16384u);
}

TEST_F(H2Memory, ReleasedBufferStillCarriesFrames) {
  vk_conn_t *c = NewConn();
  ASSERT_NE(c->fb, nullptr);
  std::vector<uint8_t> settings = Drain(c->h2);  // SETTINGS, WINDOW_UPDATE
  ASSERT_GE(settings.size(), 9u);
  EXPECT_EQ(settings[3], NGHTTP2_SETTINGS);
  EXPECT_TRUE(FirstPageResident(c->fb));

  EXPECT_TRUE(vk__h2_framebuf_release(c));
  EXPECT_FALSE(FirstPageResident(c->fb));

  // The next frame is packed into the released pages: it must come out
  // whole (nghttp2 never reads back what it wrote before).
  const uint8_t opaque[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  ASSERT_EQ(nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, opaque), 0);
  std::vector<uint8_t> ping = Drain(c->h2);
  ASSERT_EQ(ping.size(), 9u + 8u);
  EXPECT_EQ(ping[2], 8);  // length
  EXPECT_EQ(ping[3], NGHTTP2_PING);
  EXPECT_EQ(memcmp(ping.data() + 9, opaque, 8), 0);
  EXPECT_TRUE(FirstPageResident(c->fb));
}

TEST_F(H2Memory, SweepReleasesQuietConnectionsOnly) {
  vk_conn_t *quiet = NewConn();
  vk_conn_t *busy = NewConn();
  ASSERT_NE(quiet->fb, nullptr);
  ASSERT_NE(busy->fb, nullptr);
  Drain(quiet->h2);
  vk__h2_framebuf_touched(quiet);
  EXPECT_TRUE(quiet->fb_listed);
  // `busy` writes a frame every tenth of the quiet period, for three
  // periods; `quiet` writes nothing more. Timers run in due order, so the
  // quiet connection's sweep comes before the end of the loop however late.
  uint64_t max_gap = 0;
  uint64_t last = uv_now(&loop_);
  for (int i = 0; i < 30; i++) {
    const uint8_t opaque[8] = {};
    ASSERT_EQ(nghttp2_submit_ping(busy->h2, NGHTTP2_FLAG_NONE, opaque), 0);
    Drain(busy->h2);
    uint64_t now = uv_now(&loop_);
    max_gap = now - last > max_gap ? now - last : max_gap;
    last = now;
    vk__h2_framebuf_touched(busy);
    RunFor(VK_H2_FRAMEBUF_QUIET_MS / 10);
  }
  EXPECT_FALSE(quiet->fb_listed);
  EXPECT_FALSE(FirstPageResident(quiet->fb));
  // Kept, unless this process was stalled longer than the quiet period
  // between two of its frames (then releasing it was right).
  if (max_gap < VK_H2_FRAMEBUF_QUIET_MS) {
    EXPECT_TRUE(busy->fb_listed);
    EXPECT_TRUE(FirstPageResident(busy->fb));
  }
  // Once it stops writing, it goes the same way.
  RunFor(VK_H2_FRAMEBUF_QUIET_MS * 2);
  EXPECT_FALSE(busy->fb_listed);
  EXPECT_FALSE(FirstPageResident(busy->fb));
}

TEST_F(H2Memory, ClosingConnectionLeavesTheSweep) {
  vk_conn_t *a = NewConn();
  vk_conn_t *b = NewConn();
  vk__h2_framebuf_touched(a);
  vk__h2_framebuf_touched(b);
  vk__h2_framebuf_forget(a);
  EXPECT_FALSE(a->fb_listed);
  EXPECT_EQ(server_->fb_head, b);
  EXPECT_EQ(server_->fb_tail, b);
  vk__h2_framebuf_forget(b);
  EXPECT_EQ(server_->fb_head, nullptr);
  EXPECT_EQ(server_->fb_tail, nullptr);
}

}  // namespace
