// Fuzzes the tokenizer two ways: the input as text to encode with a small byte-level tokenizer (encode,
// then decode must give the NFC text back), and the input as a tokenizer.json to load.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/tokenizer.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"

namespace {

const pinmoe::Tokenizer& Small() {
  static const pinmoe::Tokenizer* tok = [] {
    nlohmann::json v = nlohmann::json::object();
    for (int b = 0; b < 256; ++b) v[pinmoe::ByteLevelSymbol(static_cast<uint8_t>(b))] = b;
    std::string vocab = v.dump();
    vocab = vocab.substr(1, vocab.size() - 2);  // the members, to splice into the model below
    vocab += ",\"ab\":256,\"abab\":257";
    std::string json = R"({"added_tokens":[{"id":258,"content":"<|x|>","special":true}],)"
                       R"("normalizer":{"type":"NFC"},"pre_tokenizer":{"type":"ByteLevel",)"
                       R"("add_prefix_space":false,"use_regex":true},"decoder":{"type":"ByteLevel"},)"
                       R"("model":{"type":"BPE","merges":["a b","ab ab"],"vocab":{)" + vocab + "}}}";
    auto t = pinmoe::Tokenizer::FromJson(json, "fuzz");
    if (!t.ok()) __builtin_trap();
    return t->release();
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto ids = Small().Encode(text);
  if (ids.ok()) {
    std::string back = Small().Decode(*ids, /*skip_special=*/false);
    if (!pinmoe::IsValidUtf8(back)) __builtin_trap();
    pinmoe::StreamDecoder stream(Small(), /*skip_special=*/false);
    std::string joined;
    for (int32_t id : *ids) joined += stream.Push(id);
    joined += stream.Flush();
    if (joined != back) __builtin_trap();
  }
  auto loaded = pinmoe::Tokenizer::FromJson(text, "fuzz");
  if (loaded.ok()) (void)(*loaded)->Encode("hello world 123");
  return 0;
}
