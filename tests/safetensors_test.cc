// Safetensors and checkpoint loading, including every kind of bad file the loader must refuse with an
// error that names the file and the tensor.
#include "common/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/dtype.h"
#include "common/files.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pinmoe {
namespace {

std::vector<uint8_t> F32Bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Writes a raw safetensors file from a header string and a data section.
void WriteRaw(const std::string& path, const std::string& header, size_t data_bytes) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  out << std::string(data_bytes, '\0');
}

void ExpectErrorMentions(const absl::Status& st, std::initializer_list<std::string> words) {
  ASSERT_FALSE(st.ok());
  for (const auto& w : words) {
    EXPECT_NE(st.message().find(w), std::string_view::npos) << "'" << w << "' not in: " << st;
  }
}

TEST(Safetensors, RoundTripsF32Bf16F16) {
  const std::string dir = testing::MakeTempDir("rt");
  std::vector<float> values = {1.0f, -2.5f, 3.140625f, 0.0f, 65504.0f, -0.000061035156f};
  std::vector<uint8_t> bf16, f16;
  for (float v : values) {
    uint16_t b = F32ToBf16(v), h = F32ToF16(v);
    bf16.push_back(b & 0xff);
    bf16.push_back(b >> 8);
    f16.push_back(h & 0xff);
    f16.push_back(h >> 8);
  }
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               {{"a", DType::kF32, {2, 3}, F32Bytes(values)},
                                {"b", DType::kBF16, {6}, bf16},
                                {"c", DType::kF16, {3, 2}, f16}})
                  .ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto a = (*ckpt)->ReadF32("a", std::vector<int64_t>{2, 3});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, values);
  auto b = (*ckpt)->ReadF32("b", std::vector<int64_t>{6});
  ASSERT_TRUE(b.ok());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_NEAR((*b)[i], values[i], std::fabs(values[i]) / 128);
  auto c = (*ckpt)->ReadF32("c", std::vector<int64_t>{3, 2});
  ASSERT_TRUE(c.ok());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_NEAR((*c)[i], values[i], std::fabs(values[i]) / 1024 + 1e-7);
  EXPECT_EQ((*ckpt)->bytes_read(), 24u + 12u + 12u);
}

TEST(Safetensors, ReadsOnlyTheTensorsAsked) {
  const std::string dir = testing::MakeTempDir("partial");
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               {{"x", DType::kF32, {1000}, std::vector<uint8_t>(4000)},
                                {"y", DType::kF32, {2}, std::vector<uint8_t>(8)}})
                  .ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  ASSERT_TRUE((*ckpt)->ReadF32("y", std::vector<int64_t>{2}).ok());
  EXPECT_EQ((*ckpt)->bytes_read(), 8u);
}

TEST(Safetensors, TruncatedFile) {
  const std::string dir = testing::MakeTempDir("trunc");
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               {{"w", DType::kF32, {64}, std::vector<uint8_t>(256)}}).ok());
  std::filesystem::resize_file(dir + "/model.safetensors",
                               std::filesystem::file_size(dir + "/model.safetensors") - 10);
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {"model.safetensors", "'w'", "truncated"});
  std::filesystem::resize_file(dir + "/model.safetensors", 5);
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {"model.safetensors", "too short"});
}

TEST(Safetensors, HeaderThatLiesAboutOffsets) {
  const std::string dir = testing::MakeTempDir("lies");
  const std::string p = dir + "/model.safetensors";
  WriteRaw(p, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,64]}})", 16);
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {p, "'w'", "past the end"});
  WriteRaw(p, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", 16);
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {p, "'w'", "does not hold"});
  WriteRaw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 32);
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {p, "overlap"});
  WriteRaw(p, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", 16);
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {p, "'w'"});
  WriteRaw(p, R"({"w":{"dtype":"F32","shape":[4611686018427387904, 8],"data_offsets":[0,16]}})", 16);
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {p, "'w'"});
  // A header length beyond the file.
  {
    std::ofstream out(p, std::ios::binary);
    uint64_t n = 1ull << 40;
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {p, "header length"});
  WriteRaw(p, "not json", 0);
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {p, "not a JSON object"});
}

TEST(Safetensors, UnknownDtype) {
  const std::string dir = testing::MakeTempDir("dtype");
  WriteRaw(dir + "/model.safetensors", R"({"w":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,16]}})", 16);
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {"'w'", "unknown dtype 'Q4_K'"});
  // A known dtype that is not a float weight type: refused when read as weights.
  WriteRaw(dir + "/model.safetensors", R"({"w":{"dtype":"I32","shape":[4],"data_offsets":[0,16]}})", 16);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  ExpectErrorMentions((*ckpt)->ReadF32("w", std::vector<int64_t>{4}).status(), {"'w'", "I32"});
}

TEST(Safetensors, WrongShape) {
  const std::string dir = testing::MakeTempDir("shape");
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               {{"w", DType::kF32, {4, 2}, std::vector<uint8_t>(32)}}).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  ExpectErrorMentions((*ckpt)->ReadF32("w", std::vector<int64_t>{2, 4}).status(),
                      {"model.safetensors", "'w'", "[4, 2]", "[2, 4]"});
}

TEST(Safetensors, ShardedIndexAndMissingShard) {
  const std::string dir = testing::MakeTempDir("sharded");
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00001-of-00002.safetensors",
                               {{"a", DType::kF32, {1}, F32Bytes({7.0f})}}).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors",
                               {{"b", DType::kF32, {1}, F32Bytes({8.0f})}}).ok());
  ASSERT_TRUE(WriteStringToFile(dir + "/model.safetensors.index.json",
                                R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})")
                  .ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->ReadF32("b", std::vector<int64_t>{1}).value()[0], 8.0f);
  std::filesystem::remove(dir + "/model-00002-of-00002.safetensors");
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {"model-00002-of-00002.safetensors", "missing"});
  ASSERT_TRUE(WriteStringToFile(dir + "/model.safetensors.index.json",
                                R"({"weight_map":{"a":"../etc/passwd"}})").ok());
  ExpectErrorMentions(Checkpoint::Open(dir).status(), {"'a'", "not a file in the model directory"});
}

TEST(Dtype, F16AndBf16Conversions) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(F16ToF32(0x7c00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_EQ(Bf16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBf16(1.00390625f), 0x3f80);  // ties to even
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // every finite positive half round-trips
    ASSERT_EQ(F32ToF16(F16ToF32(static_cast<uint16_t>(h))), h) << h;
  }
}

}  // namespace
}  // namespace pinmoe
