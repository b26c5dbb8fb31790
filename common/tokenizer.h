// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (the Qwen2/Qwen3 family), giving the
// same ids as the `tokenizers` library: added tokens are split out first (leftmost-longest), the rest is
// NFC-normalised, split by the pre-tokenizer's regex (PCRE2 in Unicode mode), mapped to byte-level
// symbols and merged by rank.
//
// tokenizer.json is untrusted: a shape we do not implement (another model type, normaliser or
// pre-tokenizer) is an error naming the file, never a silent approximation.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"

namespace pinmoe {

// GPT-2's reversible byte -> printable character map, as UTF-8 (the symbols of a byte-level vocabulary).
std::string ByteLevelSymbol(uint8_t byte);

class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json,
                                                             std::string_view label);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  ~Tokenizer();

  // Fails only for input that is not valid UTF-8.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;
  // Decodes like tokenizers' decode(ids, skip_special_tokens): invalid UTF-8 becomes U+FFFD.
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const;
  // The raw bytes a token stands for (before UTF-8 repair).
  std::string TokenBytes(int32_t id) const;
  std::optional<int32_t> TokenToId(std::string_view token) const;
  bool IsSpecial(int32_t id) const;
  // One past the largest id (model vocabulary and added tokens).
  int32_t size() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  struct AddedToken {
    int32_t id;
    std::string content;
    bool special;
    bool lstrip;
    bool rstrip;
  };
  Tokenizer() = default;
  absl::Status EncodeOrdinary(std::string_view text, std::vector<int32_t>* out) const;
  void Bpe(std::string_view piece, std::vector<int32_t>* out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> is_special_;
  std::vector<AddedToken> added_;
  // For each first byte, indices into added_ sorted longest first.
  std::vector<std::vector<size_t>> added_by_first_byte_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left,right) -> (rank, merged)
  int32_t byte_to_id_[256] = {};
  std::string byte_to_symbol_[256];
  std::unordered_map<uint32_t, uint8_t> symbol_to_byte_;  // code point -> byte
  bool nfc_ = false;
  struct Regex;
  std::unique_ptr<Regex> regex_;
};

// Turns a stream of token ids into text without ever splitting a UTF-8 character: bytes of an incomplete
// character wait for the next token.
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}
  std::string Push(int32_t id);
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace pinmoe
