// arena_test: the per-call bump allocator and its protobuf-c allocator
// (server/arena.c).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "arena.h"
#include "grpc/health/v1/health.pb-c.h"

namespace {

bool Aligned16(const void *p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

TEST(Arena, AlignmentInlineAndHeap) {
  alignas(16) unsigned char inline_buf[256];
  vk_arena_t a;
  // An inline buffer that starts off 16-byte alignment.
  vk_arena_init(&a, inline_buf + 3, sizeof(inline_buf) - 3, 1 << 20);
  for (size_t len : {1u, 3u, 7u, 16u, 17u, 33u, 100u, 5000u, 1u, 2u}) {
    void *p = vk_arena_alloc(&a, len);
    ASSERT_NE(p, nullptr) << len;
    EXPECT_TRUE(Aligned16(p)) << len;
  }
  vk_arena_cleanup(&a);
}

TEST(Arena, ZeroedAndDistinct) {
  vk_arena_t a;
  vk_arena_init(&a, nullptr, 0, 1 << 20);
  std::vector<unsigned char *> ptrs;
  for (int i = 0; i < 100; i++) {
    auto *p = static_cast<unsigned char *>(vk_arena_alloc(&a, 40));
    ASSERT_NE(p, nullptr);
    for (int j = 0; j < 40; j++) {
      ASSERT_EQ(p[j], 0);
    }
    memset(p, i + 1, 40);  // ASan flags any overlap or overflow
    ptrs.push_back(p);
  }
  for (int i = 0; i < 100; i++) {
    for (int j = 0; j < 40; j++) {
      ASSERT_EQ(ptrs[i][j], i + 1);
    }
  }
  // A zero-length allocation still returns a usable, unique pointer.
  void *z1 = vk_arena_alloc(&a, 0);
  void *z2 = vk_arena_alloc(&a, 0);
  EXPECT_NE(z1, nullptr);
  EXPECT_NE(z1, z2);
  vk_arena_cleanup(&a);
}

TEST(Arena, CapEnforced) {
  vk_arena_t a;
  vk_arena_init(&a, nullptr, 0, 10000);
  // One allocation over the cap.
  EXPECT_EQ(vk_arena_alloc(&a, 20000), nullptr);
  // Fill up to the cap; the heap bytes held never pass it.
  size_t got = 0;
  while (vk_arena_alloc(&a, 100) != nullptr) {
    got += 100;
    ASSERT_LE(a.total, 10000u);
    ASSERT_LT(got, 20000u);
  }
  EXPECT_GT(got, 5000u);  // most of the cap was usable
  EXPECT_LE(a.total, 10000u);
  // Still refusing after the first refusal.
  EXPECT_EQ(vk_arena_alloc(&a, 100), nullptr);
  EXPECT_EQ(vk_arena_alloc(&a, SIZE_MAX), nullptr);
  EXPECT_EQ(vk_arena_alloc(&a, SIZE_MAX / 2 + 1), nullptr);
  vk_arena_cleanup(&a);
}

TEST(Arena, InlineBufferCostsNothingAgainstTheCap) {
  alignas(16) unsigned char inline_buf[1024];
  vk_arena_t a;
  vk_arena_init(&a, inline_buf, sizeof(inline_buf), 0);  // no heap at all
  void *p = vk_arena_alloc(&a, 512);
  ASSERT_NE(p, nullptr);
  EXPECT_GE(static_cast<unsigned char *>(p), inline_buf);
  EXPECT_LT(static_cast<unsigned char *>(p), inline_buf + sizeof(inline_buf));
  EXPECT_EQ(a.total, 0u);
  EXPECT_EQ(vk_arena_alloc(&a, 1024), nullptr);  // would need the heap
  vk_arena_cleanup(&a);
}

TEST(Arena, ManyAllocations) {
  vk_arena_t a;
  vk_arena_init(&a, nullptr, 0, 64u << 20);
  size_t total = 0;
  for (int i = 0; i < 100000; i++) {
    size_t len = 1 + static_cast<size_t>(i % 97);
    auto *p = static_cast<unsigned char *>(vk_arena_alloc(&a, len));
    ASSERT_NE(p, nullptr) << i;
    ASSERT_TRUE(Aligned16(p));
    p[0] = 1;
    p[len - 1] = 2;
    total += len;
  }
  // Bump allocation: the heap used is within a small factor of what was
  // asked (alignment padding, chunk tails).
  EXPECT_LT(a.total, total * 4);
  // Large allocations get their own chunk.
  void *big = vk_arena_alloc(&a, 1 << 20);
  ASSERT_NE(big, nullptr);
  memset(big, 0xab, 1 << 20);
  vk_arena_cleanup(&a);
}

TEST(Arena, MemdupAddsNul) {
  vk_arena_t a;
  vk_arena_init(&a, nullptr, 0, 1 << 20);
  const char src[] = {'a', 'b', 'c', 'd'};
  auto *s = static_cast<char *>(vk_arena_memdup(&a, src, 3));
  ASSERT_NE(s, nullptr);
  EXPECT_STREQ(s, "abc");
  auto *e = static_cast<char *>(vk_arena_memdup(&a, nullptr, 0));
  ASSERT_NE(e, nullptr);
  EXPECT_STREQ(e, "");
  // Binary data with a NUL inside is copied whole.
  const unsigned char bin[] = {0, 1, 0, 255};
  auto *b = static_cast<unsigned char *>(vk_arena_memdup(&a, bin, 4));
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(memcmp(b, bin, 4), 0);
  EXPECT_EQ(b[4], 0);
  EXPECT_EQ(vk_arena_memdup(&a, src, SIZE_MAX), nullptr);
  vk_arena_cleanup(&a);
}

TEST(Arena, CleanupThenReuse) {
  alignas(16) unsigned char inline_buf[128];
  vk_arena_t a;
  vk_arena_init(&a, inline_buf, sizeof(inline_buf), 8192);
  for (int round = 0; round < 3; round++) {
    // The inline buffer is handed out first again after each cleanup.
    void *first = vk_arena_alloc(&a, 16);
    EXPECT_EQ(first, inline_buf) << round;
    for (int i = 0; i < 50; i++) {
      ASSERT_NE(vk_arena_alloc(&a, 100), nullptr) << round << " " << i;
    }
    EXPECT_GT(a.total, 0u);
    vk_arena_cleanup(&a);
    EXPECT_EQ(a.total, 0u);
    EXPECT_EQ(a.chunks, nullptr);
  }
  // Cleanup twice, and cleanup of a fresh arena, are harmless.
  vk_arena_cleanup(&a);
  vk_arena_t fresh;
  vk_arena_init(&fresh, nullptr, 0, 100);
  vk_arena_cleanup(&fresh);
}

TEST(Arena, ProtobufAllocator) {
  vk_arena_t a;
  vk_arena_init(&a, nullptr, 0, 1 << 20);
  Grpc__Health__V1__HealthCheckRequest req =
      GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  std::string name(3000, 's');
  req.service = const_cast<char *>(name.c_str());
  std::vector<uint8_t> wire(
      grpc__health__v1__health_check_request__get_packed_size(&req));
  grpc__health__v1__health_check_request__pack(&req, wire.data());

  size_t before = a.total;
  Grpc__Health__V1__HealthCheckRequest *got =
      grpc__health__v1__health_check_request__unpack(&a.allocator, wire.size(),
                                                     wire.data());
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(std::string(got->service), name);
  EXPECT_GT(a.total, before);  // the strings came from the arena
  // free_unpacked through the arena allocator is a no-op, not a crash;
  // the memory goes with the arena (LSan would report it otherwise).
  grpc__health__v1__health_check_request__free_unpacked(got, &a.allocator);
  vk_arena_cleanup(&a);

  // Over the cap, unpack fails cleanly instead of overrunning.
  vk_arena_t tiny;
  vk_arena_init(&tiny, nullptr, 0, 1024);
  EXPECT_EQ(grpc__health__v1__health_check_request__unpack(
                &tiny.allocator, wire.size(), wire.data()),
            nullptr);
  vk_arena_cleanup(&tiny);
}

}  // namespace
