#include "common/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <limits>

#include "common/str_cat.h"
#include "common/files.h"
#include "common/status.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"

namespace pinmoe {
namespace {

using Json = nlohmann::json;

// The GPT-2 split used when a ByteLevel pre-tokenizer has use_regex=true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

// GPT-2's reversible byte -> printable code point table.
void ByteLevelTable(uint32_t table[256]) {
  bool direct[256] = {};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xa1; b <= 0xac; ++b) direct[b] = true;
  for (int b = 0xae; b <= 0xff; ++b) direct[b] = true;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = direct[b] ? static_cast<uint32_t>(b) : next++;
}

}  // namespace

std::string ByteLevelSymbol(uint8_t byte) {
  static const auto* table = [] {
    uint32_t cps[256];
    ByteLevelTable(cps);
    auto* t = new std::array<std::string, 256>();
    for (int b = 0; b < 256; ++b) AppendUtf8(cps[b], &(*t)[b]);
    return t;
  }();
  return (*table)[byte];
}

struct Tokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code != nullptr) pcre2_code_free(code);
  }
};

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, /*max_bytes=*/512ull << 20));
  return FromJson(text, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json_text,
                                                               std::string_view label) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(StrCat(label, ": ", why));
  };
  Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());

  // Model: byte-level BPE.
  if (!j.contains("model") || !j["model"].is_object()) return bad("missing 'model'");
  const Json& model = j["model"];
  if (!model.contains("type") || model["type"] != "BPE") {
    return bad("model.type is not \"BPE\"; only byte-level BPE tokenizers are supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      return bad(StrCat("model.", key, " is set; not supported"));
    }
  }
  if (model.contains("byte_fallback") && model["byte_fallback"] == true) {
    return bad("model.byte_fallback is true; not supported");
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) return bad("missing model.vocab");
  int64_t max_id = -1;
  for (const auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 24)) {
      return bad(StrCat("model.vocab entry '", token, "' has a bad id"));
    }
    tok->vocab_[token] = id.get<int32_t>();
    max_id = std::max<int64_t>(max_id, id.get<int64_t>());
  }

  // Added tokens.
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    if (!j["added_tokens"].is_array()) return bad("added_tokens is not a list");
    for (const auto& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string() || a["content"].get<std::string>().empty()) {
        return bad("an added_tokens entry lacks an integer id or a non-empty content");
      }
      int64_t id = a["id"].get<int64_t>();
      if (id < 0 || id > (1 << 24)) return bad("an added token has a bad id");
      if (a.value("single_word", false)) {
        return bad(StrCat("added token '", a["content"].get<std::string>(),
                                "' has single_word=true; not supported"));
      }
      tok->added_.push_back({static_cast<int32_t>(id), a["content"].get<std::string>(),
                             a.value("special", false), a.value("lstrip", false),
                             a.value("rstrip", false)});
      max_id = std::max<int64_t>(max_id, id);
    }
  }
  tok->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  tok->is_special_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : tok->vocab_) tok->id_to_token_[id] = token;
  for (const auto& a : tok->added_) {
    tok->id_to_token_[a.id] = a.content;
    tok->is_special_[a.id] = a.special;
  }
  tok->added_by_first_byte_.resize(256);
  for (size_t i = 0; i < tok->added_.size(); ++i) {
    tok->added_by_first_byte_[static_cast<unsigned char>(tok->added_[i].content[0])].push_back(i);
  }
  for (auto& list : tok->added_by_first_byte_) {
    std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
      return tok->added_[a].content.size() > tok->added_[b].content.size();
    });
  }

  // Byte-level symbols.
  uint32_t table[256];
  ByteLevelTable(table);
  for (int b = 0; b < 256; ++b) {
    AppendUtf8(table[b], &tok->byte_to_symbol_[b]);
    tok->symbol_to_byte_[table[b]] = static_cast<uint8_t>(b);
    auto it = tok->vocab_.find(tok->byte_to_symbol_[b]);
    if (it == tok->vocab_.end()) {
      return bad(StrCat("vocab lacks the byte-level symbol for byte ", b,
                              "; not a byte-level BPE vocabulary"));
    }
    tok->byte_to_id_[b] = it->second;
  }

  // Merges: "a b" strings (older files) or ["a", "b"] pairs.
  if (!model.contains("merges") || !model["merges"].is_array()) return bad("missing model.merges");
  int32_t rank = 0;
  for (const auto& m : model["merges"]) {
    std::string left, right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) return bad(StrCat("merge '", s, "' has no space"));
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return bad("a merge is neither \"a b\" nor [\"a\", \"b\"]");
    }
    auto l = tok->vocab_.find(left), r = tok->vocab_.find(right),
         merged = tok->vocab_.find(left + right);
    if (l == tok->vocab_.end() || r == tok->vocab_.end() || merged == tok->vocab_.end()) {
      return bad(StrCat("merge '", left, " ", right, "' uses tokens not in the vocab"));
    }
    uint64_t key = (static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(r->second);
    tok->merges_.emplace(key, std::make_pair(rank++, merged->second));
  }

  // Normaliser: NFC or none.
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const Json& n = j["normalizer"];
    if (n.value("type", "") == "NFC") {
      tok->nfc_ = true;
    } else {
      return bad(StrCat("normalizer ", n.dump().substr(0, 80), " is not supported (NFC only)"));
    }
  }

  // Pre-tokenizer: Sequence[Split(regex, Isolated), ByteLevel(use_regex=false)] or ByteLevel(true).
  std::string pattern;
  if (!j.contains("pre_tokenizer") || !j["pre_tokenizer"].is_object()) {
    return bad("missing pre_tokenizer");
  }
  const Json& pre = j["pre_tokenizer"];
  auto byte_level_ok = [&](const Json& b, bool want_regex) {
    return b.value("type", "") == "ByteLevel" && !b.value("add_prefix_space", false) &&
           b.value("use_regex", true) == want_regex;
  };
  if (pre.value("type", "") == "Sequence" && pre.contains("pretokenizers") &&
      pre["pretokenizers"].is_array() && pre["pretokenizers"].size() == 2) {
    const Json& split = pre["pretokenizers"][0];
    if (split.value("type", "") != "Split" || split.value("behavior", "") != "Isolated" ||
        split.value("invert", false) || !split.contains("pattern") ||
        !split["pattern"].contains("Regex") || !byte_level_ok(pre["pretokenizers"][1], false)) {
      return bad("pre_tokenizer is not Split(Regex, Isolated) + ByteLevel; not supported");
    }
    pattern = split["pattern"]["Regex"].get<std::string>();
  } else if (byte_level_ok(pre, true)) {
    pattern = std::string(kGpt2Pattern);
  } else {
    return bad("pre_tokenizer shape is not supported");
  }
  if (j.contains("decoder") && !j["decoder"].is_null() && j["decoder"].value("type", "") != "ByteLevel") {
    return bad("decoder is not ByteLevel; not supported");
  }

  int err = 0;
  PCRE2_SIZE err_off = 0;
  tok->regex_ = std::make_unique<Regex>();
  tok->regex_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                    PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
  if (tok->regex_->code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return bad(StrCat("pre-tokenizer regex does not compile at offset ", err_off, ": ",
                            reinterpret_cast<const char*>(msg)));
  }
  pcre2_jit_compile(tok->regex_->code, PCRE2_JIT_COMPLETE);  // optional speed-up; falls back if absent
  return tok;
}

void Tokenizer::Bpe(std::string_view piece, std::vector<int32_t>* out) const {
  std::vector<int32_t> syms;
  syms.reserve(piece.size());
  for (unsigned char b : piece) syms.push_back(byte_to_id_[b]);
  // Merge the lowest-ranked adjacent pair (leftmost on ties) until none is left, as tokenizers does.
  while (syms.size() > 1) {
    int32_t best_rank = std::numeric_limits<int32_t>::max();
    size_t best_pos = 0;
    int32_t best_id = -1;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      uint64_t key = (static_cast<uint64_t>(syms[i]) << 32) | static_cast<uint32_t>(syms[i + 1]);
      auto it = merges_.find(key);
      if (it != merges_.end() && it->second.first < best_rank) {
        best_rank = it->second.first;
        best_pos = i;
        best_id = it->second.second;
      }
    }
    if (best_id < 0) break;
    syms[best_pos] = best_id;
    syms.erase(syms.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
  }
  out->insert(out->end(), syms.begin(), syms.end());
}

absl::Status Tokenizer::EncodeOrdinary(std::string_view text, std::vector<int32_t>* out) const {
  if (text.empty()) return absl::OkStatus();
  std::string normalized;
  if (nfc_) {
    utf8proc_uint8_t* mapped = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                      static_cast<utf8proc_ssize_t>(text.size()), &mapped,
                                      static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (n < 0) {
      return absl::InvalidArgumentError(
          StrCat("NFC normalisation failed: ", utf8proc_errmsg(n)));
    }
    normalized.assign(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n));
    std::free(mapped);
    text = normalized;
  }
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(regex_->code, nullptr);
  PINMOE_CHECK(md != nullptr);
  size_t pos = 0;
  size_t last = 0;
  absl::Status status;
  while (pos < text.size()) {
    int rc = pcre2_match(regex_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos,
                         0, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      status = absl::InternalError(StrCat("pre-tokenizer regex failed with code ", rc));
      break;
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t s = ov[0], e = ov[1];
    if (s > last) Bpe(text.substr(last, s - last), out);
    if (e > s) {
      Bpe(text.substr(s, e - s), out);
      pos = e;
    } else {  // an empty match: step over one character
      pos = s + 1;
      while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xc0) == 0x80) ++pos;
      continue;
    }
    last = e;
  }
  if (status.ok() && last < text.size()) Bpe(text.substr(last), out);
  pcre2_match_data_free(md);
  return status;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text) const {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("input text is not valid UTF-8");
  std::vector<int32_t> out;
  size_t start = 0;  // start of the pending ordinary segment
  size_t i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (size_t idx : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const AddedToken& a = added_[idx];
      if (text.compare(i, a.content.size(), a.content) == 0) {
        hit = &a;
        break;  // candidates are sorted longest first
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t seg_end = i;
    if (hit->lstrip) {
      while (seg_end > start && (text[seg_end - 1] == ' ' || text[seg_end - 1] == '\t' ||
                                 text[seg_end - 1] == '\n' || text[seg_end - 1] == '\r')) {
        --seg_end;
      }
    }
    RETURN_IF_ERROR(EncodeOrdinary(text.substr(start, seg_end - start), &out));
    out.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip) {
      while (i < text.size() &&
             (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) {
        ++i;
      }
    }
    start = i;
  }
  RETURN_IF_ERROR(EncodeOrdinary(text.substr(start), &out));
  return out;
}

std::string Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) return {};
  const std::string& token = id_to_token_[id];
  // As tokenizers' ByteLevel decoder: map every character back to its byte; a token with a character
  // outside the byte table (an added token) stands for its own UTF-8 bytes.
  std::string bytes;
  size_t i = 0;
  while (i < token.size()) {
    unsigned char b = static_cast<unsigned char>(token[i]);
    uint32_t cp;
    size_t n;
    if (b < 0x80) {
      cp = b;
      n = 1;
    } else if ((b & 0xe0) == 0xc0 && i + 1 < token.size()) {
      cp = ((b & 0x1fu) << 6) | (static_cast<unsigned char>(token[i + 1]) & 0x3fu);
      n = 2;
    } else {
      return token;  // three-byte and longer characters are never byte-level symbols
    }
    auto it = symbol_to_byte_.find(cp);
    if (it == symbol_to_byte_.end()) return token;
    bytes.push_back(static_cast<char>(it->second));
    i += n;
  }
  return bytes;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (skip_special && IsSpecial(id)) continue;
    bytes += TokenBytes(id);
  }
  return Utf8Lossy(bytes);
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  for (const auto& a : added_) {
    if (a.content == token) return a.id;
  }
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < is_special_.size() && is_special_[id];
}

std::string StreamDecoder::Push(int32_t id) {
  if (skip_special_ && tokenizer_.IsSpecial(id)) return {};
  pending_ += tokenizer_.TokenBytes(id);
  size_t hold = IncompleteUtf8Tail(pending_);
  std::string out = Utf8Lossy(std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out = Utf8Lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace pinmoe
