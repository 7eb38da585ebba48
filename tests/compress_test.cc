// compress_test.cc: tests for server/compress.c (gzip, grpc-accept-encoding).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <zlib.h>

#include "compress.h"

namespace {

const uint8_t *U(const std::string &s) {
  return reinterpret_cast<const uint8_t *>(s.data());
}

std::string Bytes(std::initializer_list<uint8_t> b) {
  return std::string(b.begin(), b.end());
}

// Cbb is a growable CBB freed at scope exit.
class Cbb {
 public:
  Cbb() {
    EXPECT_TRUE(CBB_init(&cbb_, 0));
  }
  ~Cbb() {
    CBB_cleanup(&cbb_);
  }
  CBB *get() {
    return &cbb_;
  }
  std::string str() const {
    return std::string(reinterpret_cast<const char *>(CBB_data(&cbb_)),
                       CBB_len(&cbb_));
  }

 private:
  CBB cbb_;
};

std::string Compress(const std::string &in) {
  Cbb cbb;
  EXPECT_EQ(vk_gzip_compress(cbb.get(), U(in), in.size()), 0);
  return cbb.str();
}

int Decompress(const std::string &in, size_t max_out, std::string *out) {
  Cbb cbb;
  int rv = vk_gzip_decompress(cbb.get(), U(in), in.size(), max_out);
  *out = cbb.str();
  return rv;
}

std::string Random(size_t len, uint32_t seed) {
  std::string s(len, '\0');
  for (size_t i = 0; i < len; i++) {
    seed = seed * 1103515245u + 12345u;
    s[i] = static_cast<char>(seed >> 24);
  }
  return s;
}

// "hello\n" from `gzip -n -9`, and from `gzip` with a file name (FNAME).
const std::string kHelloGzip =
    Bytes({0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
           0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xe7, 0x02, 0x00,
           0x20, 0x30, 0x3a, 0x36, 0x06, 0x00, 0x00, 0x00});
const std::string kHelloGzipNamed = Bytes(
    {0x1f, 0x8b, 0x08, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x68, 0x65,
     0x6c, 0x6c, 0x6f, 0x2e, 0x74, 0x78, 0x74, 0x00, 0xcb, 0x48, 0xcd, 0xc9,
     0xc9, 0xe7, 0x02, 0x00, 0x20, 0x30, 0x3a, 0x36, 0x06, 0x00, 0x00, 0x00});

TEST(Gzip, RoundTrip) {
  const std::vector<std::string> inputs = {
      "",
      "a",
      "hello, world",
      std::string(100000, 'x'),
      Random(1 << 20, 1),  // incompressible: output larger than input
      Random(300000, 2) + std::string(300000, '\0') + Random(1000, 3),
  };
  for (const std::string &in : inputs) {
    std::string z = Compress(in);
    ASSERT_GE(z.size(), 18u);
    EXPECT_EQ(z.substr(0, 3), Bytes({0x1f, 0x8b, 0x08}));  // gzip, deflate
    std::string out;
    EXPECT_EQ(Decompress(z, in.size(), &out), 0);
    EXPECT_TRUE(out == in) << in.size();
  }
}

TEST(Gzip, EmptyMessage) {
  std::string z = Compress("");
  EXPECT_EQ(z.size(), 20u);
  std::string out = "junk";
  EXPECT_EQ(Decompress(z, 0, &out), 0);
  EXPECT_EQ(out, "");
  Cbb cbb;
  EXPECT_EQ(vk_gzip_compress(cbb.get(), nullptr, 0), 0);
  EXPECT_EQ(cbb.str(), z);
}

TEST(Gzip, DecompressesGzipTool) {
  std::string out;
  EXPECT_EQ(Decompress(kHelloGzip, 100, &out), 0);
  EXPECT_EQ(out, "hello\n");
  EXPECT_EQ(Decompress(kHelloGzipNamed, 100, &out), 0);
  EXPECT_EQ(out, "hello\n");
}

TEST(Gzip, AppendsToExistingContent) {
  Cbb cbb;
  ASSERT_TRUE(CBB_add_u8(cbb.get(), '>'));
  ASSERT_EQ(vk_gzip_decompress(cbb.get(), U(kHelloGzip), kHelloGzip.size(), 6),
            0);
  EXPECT_EQ(cbb.str(), ">hello\n");
}

TEST(Gzip, Bomb) {
  const std::string zeros(1 << 20, '\0');
  const std::string z = Compress(zeros);
  EXPECT_LT(z.size(), 2000u);
  std::string out;
  EXPECT_EQ(Decompress(z, 1000, &out), VK_ETOOBIG);
  EXPECT_LE(out.size(), 1000u);

  // With a fixed buffer of max_out bytes the cap is a hard bound: the CBB
  // cannot grow, so any attempt to allocate more would fail with ENOMEM.
  uint8_t buf[1000];
  CBB cbb;
  ASSERT_TRUE(CBB_init_fixed(&cbb, buf, sizeof(buf)));
  EXPECT_EQ(vk_gzip_decompress(&cbb, U(z), z.size(), sizeof(buf)), VK_ETOOBIG);
  CBB_cleanup(&cbb);
}

TEST(Gzip, CapBoundary) {
  const std::string in = Random(200000, 4);
  const std::string z = Compress(in);
  std::string out;
  EXPECT_EQ(Decompress(z, in.size(), &out), 0);
  EXPECT_TRUE(out == in);
  EXPECT_EQ(Decompress(z, in.size() - 1, &out), VK_ETOOBIG);
  EXPECT_EQ(Decompress(z, 0, &out), VK_ETOOBIG);
  EXPECT_EQ(Decompress(z, SIZE_MAX, &out), 0);

  // Exactly max_out bytes into a fixed buffer of exactly max_out bytes.
  std::vector<uint8_t> buf(in.size());
  CBB cbb;
  ASSERT_TRUE(CBB_init_fixed(&cbb, buf.data(), buf.size()));
  EXPECT_EQ(vk_gzip_decompress(&cbb, U(z), z.size(), buf.size()), 0);
  EXPECT_EQ(CBB_len(&cbb), in.size());
  CBB_cleanup(&cbb);
  EXPECT_EQ(memcmp(buf.data(), in.data(), in.size()), 0);

  // Around multiples of the 64 KiB output chunk, where the cap probe runs.
  for (size_t n : {65535u, 65536u, 65537u, 131072u}) {
    const std::string s = Random(n, static_cast<uint32_t>(n));
    const std::string zs = Compress(s);
    EXPECT_EQ(Decompress(zs, n, &out), 0) << n;
    EXPECT_TRUE(out == s) << n;
    EXPECT_EQ(Decompress(zs, n - 1, &out), VK_ETOOBIG) << n;
    EXPECT_LE(out.size(), n - 1);
    EXPECT_EQ(Decompress(zs, n + 1, &out), 0) << n;
  }

  EXPECT_EQ(Decompress(Compress("a"), 0, &out), VK_ETOOBIG);
  EXPECT_EQ(Decompress(Compress("a"), 1, &out), 0);
}

TEST(Gzip, Truncated) {
  for (const std::string &z :
       {kHelloGzip, kHelloGzipNamed, Compress(Random(5000, 5))}) {
    for (size_t n = 0; n < z.size(); n++) {
      std::string out;
      EXPECT_EQ(Decompress(z.substr(0, n), 1 << 20, &out), VK_EINVAL) << n;
    }
  }
}

TEST(Gzip, EmptyInput) {
  std::string out;
  EXPECT_EQ(Decompress("", 100, &out), VK_EINVAL);
  Cbb cbb;
  EXPECT_EQ(vk_gzip_decompress(cbb.get(), nullptr, 0, 100), VK_EINVAL);
}

TEST(Gzip, TrailingGarbage) {
  std::string out;
  EXPECT_EQ(Decompress(kHelloGzip + "x", 100, &out), VK_EINVAL);
  EXPECT_EQ(Decompress(kHelloGzip + std::string(1, '\0'), 100, &out),
            VK_EINVAL);
  // A second member counts as trailing bytes too.
  EXPECT_EQ(Decompress(kHelloGzip + kHelloGzip, 100, &out), VK_EINVAL);
  const std::string z = Compress(Random(100000, 6));
  EXPECT_EQ(Decompress(z + "garbage", 1 << 20, &out), VK_EINVAL);
}

TEST(Gzip, Corrupt) {
  std::string out;
  std::string bad = kHelloGzip;
  bad[0] = 0x1e;  // magic
  EXPECT_EQ(Decompress(bad, 100, &out), VK_EINVAL);
  bad = kHelloGzip;
  bad[2] = 0x07;  // compression method
  EXPECT_EQ(Decompress(bad, 100, &out), VK_EINVAL);
  bad = kHelloGzip;
  bad[bad.size() - 8] ^= 1;  // CRC-32
  EXPECT_EQ(Decompress(bad, 100, &out), VK_EINVAL);
  bad = kHelloGzip;
  bad[bad.size() - 4] ^= 1;  // ISIZE
  EXPECT_EQ(Decompress(bad, 100, &out), VK_EINVAL);
  bad = kHelloGzip;
  bad[10] = static_cast<char>(0xff);  // deflate block type 3
  EXPECT_EQ(Decompress(bad, 100, &out), VK_EINVAL);
  // A zlib (RFC 1950) stream is not gzip.
  uint8_t zbuf[64];
  uLongf zlen = sizeof(zbuf);
  ASSERT_EQ(compress(zbuf, &zlen, U(std::string("hello")), 5), Z_OK);
  EXPECT_EQ(
      Decompress(std::string(reinterpret_cast<char *>(zbuf), zlen), 100, &out),
      VK_EINVAL);
  EXPECT_EQ(Decompress("hello, not gzip", 100, &out), VK_EINVAL);
}

TEST(Gzip, EveryByteFlipIsCaught) {
  const std::string z = Compress("The quick brown fox jumps over the lazy dog");
  // Bit 0 of FLG (byte 3, FTEXT) and bytes 4..9 (MTIME, XFL, OS) are
  // informational; all others are checked by zlib or by the CRC.
  for (size_t i = 0; i < z.size(); i++) {
    if (i >= 3 && i < 10) {
      continue;
    }
    std::string bad = z;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    std::string out;
    EXPECT_NE(Decompress(bad, 1000, &out), 0) << i;
  }
}

TEST(Gzip, FixedCbbTooSmallForCompress) {
  uint8_t buf[8];
  CBB cbb;
  ASSERT_TRUE(CBB_init_fixed(&cbb, buf, sizeof(buf)));
  EXPECT_EQ(vk_gzip_compress(&cbb, U(std::string("hello")), 5), VK_ENOMEM);
  CBB_cleanup(&cbb);
}

// --- grpc-accept-encoding ---------------------------------------------------

bool Accepts(const std::string &hdr, const char *enc) {
  return vk_accepts_encoding(U(hdr), hdr.size(), enc);
}

TEST(AcceptEncoding, Lists) {
  for (const char *h :
       {"gzip", "identity,gzip", "identity, gzip", "gzip,identity",
        " gzip ,deflate", "\tgzip\t", "deflate , gzip , identity", "GZIP",
        "Gzip", ",gzip,", "identity,,gzip", "x, gzip"}) {
    EXPECT_TRUE(Accepts(h, "gzip")) << h;
  }
  for (const char *h :
       {"", ",", " , ", "identity", "deflate", "gzipx", "x-gzip", "gz ip",
        "gzip;q=1", "gzip2,identity", "identity,deflat"}) {
    EXPECT_FALSE(Accepts(h, "gzip")) << h;
  }
  EXPECT_TRUE(Accepts("identity,deflate", "deflate"));
  EXPECT_TRUE(Accepts("identity,deflate", "identity"));
  EXPECT_FALSE(Accepts("a,,b", ""));
  EXPECT_FALSE(Accepts("", ""));
  EXPECT_FALSE(vk_accepts_encoding(nullptr, 0, "gzip"));
  // Only `len` bytes count.
  EXPECT_FALSE(vk_accepts_encoding(U(std::string("identity,gzip")), 9, "gzip"));
}

}  // namespace
