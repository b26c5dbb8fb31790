#include "coordinator/kv_cache_dtype.h"

#include "common/str_cat.h"

namespace pinmoe {

absl::StatusOr<KvCacheDtype> ParseKvCacheDtype(std::string_view text) {
  if (text == "auto") return KvCacheDtype::kAuto;
  if (text == "f32" || text == "fp32" || text == "float32") return KvCacheDtype::kF32;
  if (text == "bf16" || text == "bfloat16") return KvCacheDtype::kBf16;
  return absl::InvalidArgumentError(
      StrCat("--kv-cache-dtype ", std::string(text), ": expected auto, f32 or bf16"));
}

const char* KvCacheDtypeName(KvCacheDtype dtype) {
  switch (dtype) {
    case KvCacheDtype::kAuto: return "auto";
    case KvCacheDtype::kF32: return "f32";
    case KvCacheDtype::kBf16: return "bf16";
  }
  return "?";
}

}  // namespace pinmoe
