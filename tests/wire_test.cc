// wire_test.cc: tests for server/wire.c (gRPC framing, grpc-timeout,
// percent-encoding, base64, metadata keys).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "wire.h"

namespace {

const uint8_t *U(const std::string &s) {
  return reinterpret_cast<const uint8_t *>(s.data());
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

using CbbFn = int (*)(CBB *, const uint8_t *, size_t);

struct Result {
  int rv;
  std::string out;
};

Result Apply(CbbFn fn, const std::string &in) {
  Cbb cbb;
  int rv = fn(cbb.get(), U(in), in.size());
  return {rv, cbb.str()};
}

// --- framing ----------------------------------------------------------------

struct Msg {
  int compressed;
  std::string body;
};

std::string Frame(int compressed, const std::string &body) {
  uint8_t prefix[VK_GRPC_PREFIX_LEN];
  vk_grpc_frame_prefix(prefix, compressed, static_cast<uint32_t>(body.size()));
  return std::string(reinterpret_cast<const char *>(prefix), sizeof(prefix)) +
         body;
}

// Parser keeps a receive buffer and parses whole messages out of it, as the
// call layer does with DATA frames.
class Parser {
 public:
  explicit Parser(size_t max_len) : max_len_(max_len) {}

  // Feed appends bytes and parses every complete message; returns the last
  // result.
  vk_parse_t Feed(const std::string &bytes) {
    buf_ += bytes;
    for (;;) {
      CBS in;
      CBS_init(&in, U(buf_), buf_.size());
      int compressed = -1;
      CBS msg;
      vk_parse_t r = vk_grpc_frame_parse(&in, &compressed, &msg, max_len_);
      if (r != VK_PARSE_OK) {
        // Nothing consumed.
        EXPECT_EQ(CBS_len(&in), buf_.size());
        EXPECT_EQ(CBS_data(&in), U(buf_));
        return r;
      }
      msgs.push_back({compressed, std::string(reinterpret_cast<const char *>(
                                                  CBS_data(&msg)),
                                              CBS_len(&msg))});
      buf_.erase(0, buf_.size() - CBS_len(&in));
    }
  }
  size_t buffered() const {
    return buf_.size();
  }
  std::vector<Msg> msgs;

 private:
  size_t max_len_;
  std::string buf_;
};

std::vector<Msg> TestMessages() {
  std::string big(300, '\0');
  for (size_t i = 0; i < big.size(); i++) {
    big[i] = static_cast<char>(i * 7);
  }
  return {{0, ""}, {1, "abc"}, {0, big}, {1, ""}, {0, "x"}};
}

std::string Stream(const std::vector<Msg> &msgs) {
  std::string s;
  for (const Msg &m : msgs) {
    s += Frame(m.compressed, m.body);
  }
  return s;
}

void ExpectMessages(const std::vector<Msg> &want, const std::vector<Msg> &got) {
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); i++) {
    EXPECT_EQ(want[i].compressed, got[i].compressed) << i;
    EXPECT_EQ(want[i].body, got[i].body) << i;
  }
}

TEST(FrameParse, EverySplitPoint) {
  const std::vector<Msg> want = TestMessages();
  const std::string stream = Stream(want);
  for (size_t split = 0; split <= stream.size(); split++) {
    SCOPED_TRACE(split);
    Parser p(1024);
    vk_parse_t r = p.Feed(stream.substr(0, split));
    EXPECT_EQ(r, VK_PARSE_INCOMPLETE);
    EXPECT_EQ(p.Feed(stream.substr(split)), VK_PARSE_INCOMPLETE);
    EXPECT_EQ(p.buffered(), 0u);
    ExpectMessages(want, p.msgs);
  }
}

TEST(FrameParse, EveryTwoSplitPoints) {
  const std::vector<Msg> want = {{1, "hello"}, {0, ""}, {0, "world!"}};
  const std::string stream = Stream(want);
  for (size_t a = 0; a <= stream.size(); a++) {
    for (size_t b = a; b <= stream.size(); b++) {
      Parser p(16);
      p.Feed(stream.substr(0, a));
      p.Feed(stream.substr(a, b - a));
      EXPECT_EQ(p.Feed(stream.substr(b)), VK_PARSE_INCOMPLETE);
      ExpectMessages(want, p.msgs);
    }
  }
}

TEST(FrameParse, ByteByByte) {
  const std::vector<Msg> want = TestMessages();
  const std::string stream = Stream(want);
  Parser p(1024);
  for (char c : stream) {
    EXPECT_EQ(p.Feed(std::string(1, c)), VK_PARSE_INCOMPLETE);
  }
  ExpectMessages(want, p.msgs);
}

// ParseOnce runs the parser once over `bytes` and checks `in` is unchanged
// unless the result is OK.
vk_parse_t ParseOnce(const std::string &bytes, size_t max_len,
                     int *out_compressed = nullptr,
                     std::string *out_msg = nullptr) {
  CBS in;
  CBS_init(&in, U(bytes), bytes.size());
  int compressed = 42;
  CBS msg;
  CBS_init(&msg, nullptr, 0);
  vk_parse_t r = vk_grpc_frame_parse(&in, &compressed, &msg, max_len);
  if (r == VK_PARSE_OK) {
    EXPECT_EQ(bytes.size() - CBS_len(&in), VK_GRPC_PREFIX_LEN + CBS_len(&msg));
    if (out_compressed != nullptr) {
      *out_compressed = compressed;
    }
    if (out_msg != nullptr) {
      out_msg->assign(reinterpret_cast<const char *>(CBS_data(&msg)),
                      CBS_len(&msg));
    }
  } else {
    EXPECT_EQ(CBS_len(&in), bytes.size());
    EXPECT_EQ(compressed, 42);  // outputs untouched
  }
  return r;
}

std::string Bytes(std::initializer_list<uint8_t> b) {
  return std::string(b.begin(), b.end());
}

TEST(FrameParse, Incomplete) {
  EXPECT_EQ(ParseOnce("", 100), VK_PARSE_INCOMPLETE);
  EXPECT_EQ(ParseOnce(Bytes({0}), 100), VK_PARSE_INCOMPLETE);
  EXPECT_EQ(ParseOnce(Bytes({1, 0, 0, 0}), 100), VK_PARSE_INCOMPLETE);
  EXPECT_EQ(ParseOnce(Bytes({0, 0, 0, 0, 3}), 100), VK_PARSE_INCOMPLETE);
  EXPECT_EQ(ParseOnce(Bytes({0, 0, 0, 0, 3, 'a', 'b'}), 100),
            VK_PARSE_INCOMPLETE);
  // A NULL, empty input.
  CBS in;
  CBS_init(&in, nullptr, 0);
  int compressed;
  CBS msg;
  EXPECT_EQ(vk_grpc_frame_parse(&in, &compressed, &msg, 100),
            VK_PARSE_INCOMPLETE);
}

TEST(FrameParse, Ok) {
  int compressed = -1;
  std::string msg;
  EXPECT_EQ(ParseOnce(Bytes({0, 0, 0, 0, 0}), 0, &compressed, &msg),
            VK_PARSE_OK);
  EXPECT_EQ(compressed, 0);
  EXPECT_EQ(msg, "");
  EXPECT_EQ(
      ParseOnce(Bytes({1, 0, 0, 0, 2, 'h', 'i', 'x'}), 2, &compressed, &msg),
      VK_PARSE_OK);
  EXPECT_EQ(compressed, 1);
  EXPECT_EQ(msg, "hi");
}

TEST(FrameParse, BadFlag) {
  for (unsigned flag = 2; flag <= 255; flag++) {
    const uint8_t f = static_cast<uint8_t>(flag);
    // Refused on the flag byte alone, and with a whole valid-looking frame.
    EXPECT_EQ(ParseOnce(Bytes({f}), 100), VK_PARSE_ERROR) << flag;
    EXPECT_EQ(ParseOnce(Bytes({f, 0, 0, 0, 1, 'a'}), 100), VK_PARSE_ERROR);
  }
  // The flag is checked before the length.
  EXPECT_EQ(ParseOnce(Bytes({2, 0xff, 0xff, 0xff, 0xff}), 100), VK_PARSE_ERROR);
}

TEST(FrameParse, TooBig) {
  // Refused on the prefix alone, before any body byte arrives.
  EXPECT_EQ(ParseOnce(Bytes({0, 0, 0, 0, 101}), 100), VK_PARSE_TOO_BIG);
  EXPECT_EQ(ParseOnce(Bytes({1, 0, 0, 0, 101, 'a'}), 100), VK_PARSE_TOO_BIG);
  // At the limit it waits for the body.
  EXPECT_EQ(ParseOnce(Bytes({0, 0, 0, 0, 100}), 100), VK_PARSE_INCOMPLETE);
  EXPECT_EQ(ParseOnce(Bytes({0, 0, 0, 0, 1}), 0), VK_PARSE_TOO_BIG);
  // The largest announcement, 4 GiB - 1, with a 4 MiB limit; and even with
  // the largest limit that fits in 32 bits minus one.
  const std::string huge = Bytes({0, 0xff, 0xff, 0xff, 0xff});
  EXPECT_EQ(ParseOnce(huge, 4u << 20), VK_PARSE_TOO_BIG);
  EXPECT_EQ(ParseOnce(huge, 0xfffffffeu), VK_PARSE_TOO_BIG);
  EXPECT_EQ(ParseOnce(huge, 0xffffffffu), VK_PARSE_INCOMPLETE);
  EXPECT_EQ(ParseOnce(huge, SIZE_MAX), VK_PARSE_INCOMPLETE);
  // A stream stops at the oversized message; earlier ones are delivered.
  Parser p(3);
  EXPECT_EQ(p.Feed(Frame(0, "abc") + Frame(0, "abcd")), VK_PARSE_TOO_BIG);
  ExpectMessages({{0, "abc"}}, p.msgs);
  EXPECT_EQ(p.buffered(), VK_GRPC_PREFIX_LEN + 4);
}

TEST(FramePrefix, Layout) {
  uint8_t out[VK_GRPC_PREFIX_LEN];
  vk_grpc_frame_prefix(out, 1, 0x01020304u);
  EXPECT_EQ(std::string(reinterpret_cast<char *>(out), sizeof(out)),
            Bytes({1, 1, 2, 3, 4}));
  vk_grpc_frame_prefix(out, 7, 0xffffffffu);  // any non-zero flag is 1
  EXPECT_EQ(std::string(reinterpret_cast<char *>(out), sizeof(out)),
            Bytes({1, 0xff, 0xff, 0xff, 0xff}));
  vk_grpc_frame_prefix(out, 0, 0);
  EXPECT_EQ(std::string(reinterpret_cast<char *>(out), sizeof(out)),
            Bytes({0, 0, 0, 0, 0}));
}

// --- grpc-timeout -----------------------------------------------------------

int ParseTimeout(const std::string &s, uint64_t *out_ms) {
  return vk_grpc_timeout_parse(out_ms, U(s), s.size());
}

TEST(TimeoutParse, Valid) {
  const struct {
    const char *in;
    uint64_t ms;
  } cases[] = {
      {"1H", 3600000},
      {"2M", 120000},
      {"3S", 3000},
      {"4m", 4},
      {"0H", 0},
      {"0M", 0},
      {"0S", 0},
      {"0m", 0},
      {"0u", 0},
      {"0n", 0},
      {"1u", 1},  // sub-millisecond rounds up
      {"999u", 1},
      {"1000u", 1},
      {"1001u", 2},
      {"1n", 1},
      {"999999n", 1},
      {"1000000n", 1},
      {"1000001n", 2},
      {"99999999n", 100},
      {"99999999u", 100000},
      {"99999999m", 99999999},
      {"00000001S", 1000},  // 8 digits, leading zeros
      {"00000000m", 0},
      {"2400H", VK_GRPC_TIMEOUT_MAX_MS},  // exactly 100 days
      {"144000M", VK_GRPC_TIMEOUT_MAX_MS},
      {"2401H", VK_GRPC_TIMEOUT_MAX_MS},  // clamped
      {"99999999S", VK_GRPC_TIMEOUT_MAX_MS},
      {"99999999M", VK_GRPC_TIMEOUT_MAX_MS},
      {"99999999H", VK_GRPC_TIMEOUT_MAX_MS},
  };
  for (const auto &c : cases) {
    uint64_t ms = 12345;
    EXPECT_EQ(ParseTimeout(c.in, &ms), 0) << c.in;
    EXPECT_EQ(ms, c.ms) << c.in;
  }
  EXPECT_EQ(VK_GRPC_TIMEOUT_MAX_MS, 8640000000ull);
}

TEST(TimeoutParse, Invalid) {
  const std::string cases[] = {
      "",
      "H",
      "m",
      "1",
      "12345678",
      "123456789S",  // 9 digits
      "000000000m",
      "1h",  // units are case-sensitive
      "1s",
      "1U",
      "1N",
      "1x",
      "1%",
      "-1S",
      "+1S",
      " 1S",
      "1 S",
      "1S ",
      "1S\r\n",
      "1.5S",
      "1e3m",
      "1SS",
      "S1",
      "0x1S",
      std::string("1\0S", 3),
      std::string("\0S", 2),
      "\xd9\xa1S",  // ARABIC-INDIC DIGIT ONE
      "1\xc2\xb5",  // micro sign
  };
  for (const std::string &c : cases) {
    uint64_t ms = 777;
    EXPECT_EQ(ParseTimeout(c, &ms), VK_EINVAL) << c;
    EXPECT_EQ(ms, 777u) << c;  // untouched
  }
  uint64_t ms = 777;
  EXPECT_EQ(vk_grpc_timeout_parse(&ms, nullptr, 0), VK_EINVAL);
}

std::string FormatTimeout(uint64_t ms) {
  char out[VK_GRPC_TIMEOUT_FORMAT_LEN];
  memset(out, 'z', sizeof(out));
  vk_grpc_timeout_format(out, ms);
  EXPECT_LT(strlen(out), 10u);
  return out;
}

TEST(TimeoutFormat, Table) {
  EXPECT_EQ(FormatTimeout(0), "0m");
  EXPECT_EQ(FormatTimeout(1), "1m");
  EXPECT_EQ(FormatTimeout(1500), "1500m");
  EXPECT_EQ(FormatTimeout(2000), "2S");
  EXPECT_EQ(FormatTimeout(60000), "1M");
  EXPECT_EQ(FormatTimeout(90000), "90S");
  EXPECT_EQ(FormatTimeout(3600000), "1H");
  EXPECT_EQ(FormatTimeout(99999999), "99999999m");
  EXPECT_EQ(FormatTimeout(100000000), "100000S");
  EXPECT_EQ(FormatTimeout(100000001), "100001S");  // rounded up
  EXPECT_EQ(FormatTimeout(VK_GRPC_TIMEOUT_MAX_MS), "2400H");
  EXPECT_EQ(FormatTimeout(99999999ull * 3600000), "99999999H");
  EXPECT_EQ(FormatTimeout(99999999ull * 3600000 + 1), "99999999H");
  EXPECT_EQ(FormatTimeout(UINT64_MAX), "99999999H");
}

TEST(TimeoutFormat, RoundTrip) {
  std::vector<uint64_t> values;
  for (uint64_t v = 0; v < 2000; v++) {
    values.push_back(v);
  }
  for (uint64_t p = 1; p < UINT64_MAX / 7; p *= 7) {
    values.push_back(p - 1);
    values.push_back(p);
    values.push_back(p + 1);
  }
  for (uint64_t ms : values) {
    std::string s = FormatTimeout(ms);
    uint64_t back = 0;
    ASSERT_EQ(ParseTimeout(s, &back), 0) << s;
    uint64_t want = ms < VK_GRPC_TIMEOUT_MAX_MS ? ms : VK_GRPC_TIMEOUT_MAX_MS;
    if (ms <= 99999999) {
      EXPECT_EQ(back, ms) << s;  // exact
    } else {
      EXPECT_GE(back, want) << ms << " " << s;  // never early
      if (ms < VK_GRPC_TIMEOUT_MAX_MS) {
        EXPECT_LT(back - ms, 60000u) << ms << " " << s;  // at worst a minute
      }
    }
  }
}

// --- percent-encoding -------------------------------------------------------

TEST(Percent, Encode) {
  EXPECT_EQ(Apply(vk_percent_encode, "").out, "");
  EXPECT_EQ(Apply(vk_percent_encode, "plain text ~!").out, "plain text ~!");
  EXPECT_EQ(Apply(vk_percent_encode, "100%").out, "100%25");
  EXPECT_EQ(
      Apply(vk_percent_encode, std::string("\x00\x1f\x7f\x80\xff", 5)).out,
      "%00%1F%7F%80%FF");
  Cbb cbb;
  EXPECT_EQ(vk_percent_encode(cbb.get(), nullptr, 0), 0);
}

// The interop test's special_status_message (grpc/grpc
// doc/interop-test-descriptions.md) and its wire form.
const char kSpecial[] =
    "\t\ntest with whitespace\r\nand Unicode BMP \xe2\x98\xba and non-BMP "
    "\xf0\x9f\x98\x88\t\n";
const char kSpecialEncoded[] =
    "%09%0Atest with whitespace%0D%0Aand Unicode BMP %E2%98%BA and non-BMP "
    "%F0%9F%98%88%09%0A";

TEST(Percent, SpecialStatusMessage) {
  Result enc = Apply(vk_percent_encode, kSpecial);
  ASSERT_EQ(enc.rv, 0);
  EXPECT_EQ(enc.out, kSpecialEncoded);
  Result dec = Apply(vk_percent_decode, enc.out);
  ASSERT_EQ(dec.rv, 0);
  EXPECT_EQ(dec.out, kSpecial);
}

TEST(Percent, DecodeLenient) {
  const struct {
    const char *in;
    const char *out;
  } cases[] = {
      {"", ""},
      {"abc", "abc"},
      {"%41", "A"},
      {"%e2%98%ba", "\xe2\x98\xba"},  // lower-case hex is accepted
      {"%E2%98%Ba", "\xe2\x98\xba"},
      {"%25", "%"},
      {"%2541", "%41"},  // one level only
      {"%", "%"},        // broken sequences pass through
      {"%4", "%4"},
      {"100%", "100%"},
      {"%zz", "%zz"},
      {"%4g", "%4g"},
      {"%g4", "%g4"},
      {"%%41", "%A"},
      {"%%", "%%"},
      {"% 41", "% 41"},
      {"a%4", "a%4"},
      {"\t\xff", "\t\xff"},  // raw bytes, even invalid, are kept
  };
  for (const auto &c : cases) {
    Result r = Apply(vk_percent_decode, c.in);
    EXPECT_EQ(r.rv, 0) << c.in;
    EXPECT_EQ(r.out, c.out) << c.in;
  }
  Result nul = Apply(vk_percent_decode, "a%00b");
  EXPECT_EQ(nul.out, std::string("a\0b", 3));
}

TEST(Percent, RoundTripEveryByte) {
  std::string all;
  for (int i = 0; i < 256; i++) {
    all.push_back(static_cast<char>(i));
  }
  Result enc = Apply(vk_percent_encode, all);
  ASSERT_EQ(enc.rv, 0);
  for (char c : enc.out) {
    EXPECT_TRUE(c >= 0x20 && c <= 0x7e);
  }
  // 95 printable bytes, less '%', are kept; the other 162 take 3 bytes.
  EXPECT_EQ(enc.out.size(), 94u + 162u * 3u);
  EXPECT_EQ(Apply(vk_percent_decode, enc.out).out, all);
}

TEST(Percent, FixedCbbOverflow) {
  uint8_t buf[4];
  CBB cbb;
  ASSERT_TRUE(CBB_init_fixed(&cbb, buf, sizeof(buf)));
  EXPECT_EQ(vk_percent_encode(&cbb, U(std::string("\n\n")), 2), VK_ENOMEM);
  CBB_cleanup(&cbb);
  ASSERT_TRUE(CBB_init_fixed(&cbb, buf, sizeof(buf)));
  EXPECT_EQ(vk_percent_decode(&cbb, U(std::string("abcde")), 5), VK_ENOMEM);
  CBB_cleanup(&cbb);
}

// --- base64 -----------------------------------------------------------------

TEST(Base64, EncodeUnpadded) {
  // RFC 4648 section 10, without the padding.
  const struct {
    const char *in;
    const char *out;
  } cases[] = {
      {"", ""},
      {"f", "Zg"},
      {"fo", "Zm8"},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg"},
      {"fooba", "Zm9vYmE"},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto &c : cases) {
    Result r = Apply(vk_base64_encode, c.in);
    EXPECT_EQ(r.rv, 0);
    EXPECT_EQ(r.out, c.out);
  }
  // The standard alphabet, not the URL one.
  EXPECT_EQ(Apply(vk_base64_encode, "\xfb\xff\xbf").out, "+/+/");
  Cbb cbb;
  EXPECT_EQ(vk_base64_encode(cbb.get(), nullptr, 0), 0);
  EXPECT_EQ(CBB_len(cbb.get()), 0u);
}

TEST(Base64, DecodePaddedAndUnpadded) {
  const struct {
    const char *in;
    const char *out;
  } cases[] = {
      {"", ""},
      {"Zg", "f"},
      {"Zg==", "f"},
      {"Zm8", "fo"},
      {"Zm8=", "fo"},
      {"Zm9v", "foo"},
      {"Zm9vYg", "foob"},
      {"Zm9vYg==", "foob"},
      {"Zm9vYmE", "fooba"},
      {"Zm9vYmE=", "fooba"},
      {"Zm9vYmFy", "foobar"},
      {"+/+/", "\xfb\xff\xbf"},
      {"Zh", "f"},  // non-zero unused bits are accepted
      {"Zh==", "f"},
      {"QQ", "A"},
      {"QQ==", "A"},
      {"QR", "A"},  // 4 unused bits, 0001
      {"QR==", "A"},
      {"QUI", "AB"},
      {"QUI=", "AB"},
      {"QUJ", "AB"},  // 2 unused bits, 01
      {"QUJ=", "AB"},
      {"QUJD", "ABC"},
      {"QUJDQUJD", "ABCABC"},
      {"QUJDQUJDQQ", "ABCABCA"},
      {"QUJDQUJDQQ==", "ABCABCA"},
      {"////", "\xff\xff\xff"},
  };
  for (const auto &c : cases) {
    Result r = Apply(vk_base64_decode, c.in);
    EXPECT_EQ(r.rv, 0) << c.in;
    EXPECT_EQ(r.out, c.out) << c.in;
  }
}

TEST(Base64, DecodeInvalid) {
  const std::string cases[] = {
      "Z",         // 1 mod 4
      "Zm9vY",     // 1 mod 4
      "Zg=",       // partial padding
      "Zm9vYg=",   // partial padding
      "Z===",      // too much padding
      "====",      //
      "=",         //
      "Zg==Zg==",  // padding in the middle
      "Zg==Zg",    //
      "Zm8=Zg",    //
      "Z=g",       //
      "Zm 9v",     // whitespace
      "Zm9v\n",    //
      " Zm9v",     //
      "Zm9v ",     //
      "Zm9-",      // URL-safe alphabet
      "Zm9_",      //
      "Zm9v!",     //
      "Zm9.",      //
      std::string("Zm\0v", 4),
      "Zm9\xc3\xa9",
      "QQ=",           // neither padded nor unpadded
      "QUJDQQ=",       //
      "Q",             // 1 mod 4, any length
      "QUJDR",         //
      "QUJDRUZHS",     //
      "QUJDRUZHS===",  // too much padding
      "Q=Q=",          // '=' in the middle of a group
      "=QQQ",          //
      "QQ=Q",          //
      "Q=QQ",          //
      "==QQ",          //
      "QQ==QUJD",      // padding before the last group
      "QUJ=QUJD",      //
      "QUJDQQ==QUJD",  //
      "QUJD=",         //
      "QUJD==",        // padding as an unpadded tail
      "QUJDQ=",        //
      "QUJD====",      //
      "QUJD\t",        // whitespace anywhere
      "\r\nQUJD",      //
      "QU\nJD",        //
      "QUJD QQ",       //
      "QUJD\r\n",      //
  };
  for (const std::string &c : cases) {
    Cbb cbb;
    ASSERT_TRUE(CBB_add_bytes(cbb.get(), U(std::string("keep")), 4));
    EXPECT_EQ(vk_base64_decode(cbb.get(), U(c), c.size()), VK_EINVAL) << c;
    EXPECT_EQ(cbb.str(), "keep") << c;  // nothing appended
  }
}

// Every byte value in every place of a group and of an unpadded tail: the
// 64 alphabet characters decode to their values, '=' only as padding, and
// anything else is refused without output.
TEST(Base64, DecodeEveryByte) {
  const std::string alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  ASSERT_EQ(alphabet.size(), 64u);
  for (int b = 0; b < 256; b++) {
    const char ch = static_cast<char>(b);
    const size_t value = alphabet.find(ch);
    for (size_t pos = 0; pos < 4; pos++) {
      std::string in = "AAAA";
      in[pos] = ch;
      Result r = Apply(vk_base64_decode, in);
      if (value != std::string::npos) {
        const uint32_t bits = static_cast<uint32_t>(value) << (18 - 6 * pos);
        const std::string want = {static_cast<char>(bits >> 16),
                                  static_cast<char>(bits >> 8),
                                  static_cast<char>(bits)};
        EXPECT_EQ(r.rv, 0) << b << " at " << pos;
        EXPECT_EQ(r.out, want) << b << " at " << pos;
      } else if (ch == '=' && pos == 3) {
        EXPECT_EQ(r.rv, 0);  // "AAA="
        EXPECT_EQ(r.out, std::string(2, '\0'));
      } else {
        EXPECT_EQ(r.rv, VK_EINVAL) << b << " at " << pos;
        EXPECT_EQ(r.out, "") << b << " at " << pos;
      }
    }
    // In an unpadded 2-character tail after a whole group.
    Result r = Apply(vk_base64_decode, std::string("AAAA") + ch + "A");
    if (value != std::string::npos) {
      EXPECT_EQ(r.rv, 0) << b;
      EXPECT_EQ(r.out, std::string(3, '\0') + static_cast<char>(value << 2));
    } else {
      EXPECT_EQ(r.rv, VK_EINVAL) << b;
      EXPECT_EQ(r.out, "") << b;
    }
  }
  // The whole alphabet in order: the values 0..63 packed 6 bits each.
  std::string want;
  for (uint32_t v = 0; v < 64; v += 4) {
    const uint32_t bits = v << 18 | (v + 1) << 12 | (v + 2) << 6 | (v + 3);
    want += static_cast<char>(bits >> 16);
    want += static_cast<char>(bits >> 8);
    want += static_cast<char>(bits);
  }
  Result r = Apply(vk_base64_decode, alphabet);
  EXPECT_EQ(r.rv, 0);
  EXPECT_EQ(r.out, want);
  EXPECT_EQ(Apply(vk_base64_encode, want).out, alphabet);
}

TEST(Base64, RoundTrip) {
  std::string data;
  uint32_t x = 12345;
  for (size_t len = 0; len < 200; len++) {
    Result enc = Apply(vk_base64_encode, data);
    ASSERT_EQ(enc.rv, 0);
    EXPECT_EQ(enc.out.find('='), std::string::npos);
    EXPECT_NE(enc.out.size() % 4, 1u);
    Result dec = Apply(vk_base64_decode, enc.out);
    ASSERT_EQ(dec.rv, 0) << enc.out;
    EXPECT_EQ(dec.out, data);
    // The padded form decodes the same.
    std::string padded =
        enc.out + std::string((4 - enc.out.size() % 4) % 4, '=');
    EXPECT_EQ(Apply(vk_base64_decode, padded).out, data);
    x = x * 1103515245u + 12345u;
    data.push_back(static_cast<char>(x >> 24));
  }
}

TEST(Base64, AppendsToExistingContent) {
  Cbb cbb;
  ASSERT_TRUE(CBB_add_u8(cbb.get(), '>'));
  ASSERT_EQ(vk_base64_encode(cbb.get(), U(std::string("fo")), 2), 0);
  ASSERT_EQ(vk_base64_decode(cbb.get(), U(std::string("Zm9vYg")), 6), 0);
  EXPECT_EQ(cbb.str(), ">Zm8foob");
}

// --- metadata ---------------------------------------------------------------

bool KeyValid(const std::string &k) {
  return vk_metadata_key_valid(k.data(), k.size());
}
bool KeyReserved(const std::string &k) {
  return vk_metadata_key_is_reserved(k.data(), k.size());
}
bool KeyBin(const std::string &k) {
  return vk_metadata_key_is_bin(k.data(), k.size());
}

TEST(Metadata, KeyValid) {
  for (const char *k : {"a", "0", "x-foo_bar.baz-bin", "grpc-timeout",
                        "abcdefghijklmnopqrstuvwxyz0123456789-_."}) {
    EXPECT_TRUE(KeyValid(k)) << k;
  }
  for (const std::string &k :
       {std::string(""), std::string("A"), std::string("X-Foo"),
        std::string("a b"), std::string(":path"), std::string("a/b"),
        std::string("a:b"), std::string("a\tb"), std::string("\xc3\xa9"),
        std::string("a\0b", 3), std::string("a~")}) {
    EXPECT_FALSE(KeyValid(k)) << k;
  }
  EXPECT_FALSE(vk_metadata_key_valid(nullptr, 0));
  // Only `len` bytes count.
  EXPECT_TRUE(vk_metadata_key_valid("ab:", 2));
}

TEST(Metadata, KeyReserved) {
  for (const char *k : {":path", ":status", ":", "grpc-status", "grpc-message",
                        "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
                        "grpc-", "grpc-foo-bin", "content-type", "te",
                        "user-agent", "connection", "transfer-encoding"}) {
    EXPECT_TRUE(KeyReserved(k)) << k;
  }
  for (const char *k :
       {"grpc-status-details-bin", "grpc", "grpcx", "x-grpc-status", "tea",
        "my-key", "content-type2", "authorization", ""}) {
    EXPECT_FALSE(KeyReserved(k)) << k;
  }
  EXPECT_FALSE(vk_metadata_key_is_reserved(nullptr, 0));
}

TEST(Metadata, KeyBin) {
  EXPECT_TRUE(KeyBin("a-bin"));
  EXPECT_TRUE(KeyBin("grpc-status-details-bin"));
  EXPECT_TRUE(KeyBin("-bin"));
  EXPECT_FALSE(KeyBin("bin"));
  EXPECT_FALSE(KeyBin("a-binx"));
  EXPECT_FALSE(KeyBin("a-BIN"));
  EXPECT_FALSE(KeyBin("abin"));
  EXPECT_FALSE(KeyBin(""));
  EXPECT_FALSE(vk_metadata_key_is_bin(nullptr, 0));
}

TEST(Metadata, ValueValid) {
  std::string printable;
  for (int c = 0x20; c <= 0x7e; c++) {
    printable.push_back(static_cast<char>(c));
  }
  EXPECT_TRUE(vk_metadata_value_valid(U(printable), printable.size()));
  EXPECT_TRUE(vk_metadata_value_valid(nullptr, 0));
  for (int c : {0x00, 0x09, 0x0a, 0x0d, 0x1f, 0x7f, 0x80, 0xff}) {
    std::string v = "ab";
    v.push_back(static_cast<char>(c));
    EXPECT_FALSE(vk_metadata_value_valid(U(v), v.size())) << c;
  }
}

}  // namespace
