// StrCat for std::string_view. Debian's Abseil 20220623 is built with its own absl::string_view, which
// absl::StrCat accepts but std::string_view (used throughout pinmoe) is not; this keeps one spelling.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace pinmoe {
namespace internal {
inline void AppendPiece(std::string* out, std::string_view s) { out->append(s); }
inline void AppendPiece(std::string* out, const char* s) { out->append(s); }
inline void AppendPiece(std::string* out, const std::string& s) { out->append(s); }
inline void AppendPiece(std::string* out, absl::string_view s) { out->append(s.data(), s.size()); }
template <typename T>
  requires std::is_arithmetic_v<T>
void AppendPiece(std::string* out, T value) {
  absl::StrAppend(out, value);
}
}  // namespace internal

template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  (internal::AppendPiece(&out, args), ...);
  return out;
}

}  // namespace pinmoe
