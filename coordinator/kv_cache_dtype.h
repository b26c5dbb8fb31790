// The element type of the GPU path's KV cache (--kv-cache-dtype): fp32, the exact one, or bf16, which
// halves the bytes a decode step reads at long contexts (each key and value rounded to nearest even as
// it is stored; attention still computes in fp32). "auto" follows the weights: bf16 for a bf16
// checkpoint, as transformers and vLLM keep it. The CPU path's cache is always fp32.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace pinmoe {

enum class KvCacheDtype { kAuto, kF32, kBf16 };

// "auto", "f32" (or "fp32", "float32"), "bf16" (or "bfloat16").
absl::StatusOr<KvCacheDtype> ParseKvCacheDtype(std::string_view text);
const char* KvCacheDtypeName(KvCacheDtype dtype);
// kAuto resolved for the model: bf16 when config.json's dtype is bfloat16 (as every synthetic shape's is).
inline KvCacheDtype ResolveKvCacheDtype(KvCacheDtype dtype, const ModelConfig& config) {
  if (dtype != KvCacheDtype::kAuto) return dtype;
  return config.weight_dtype == DType::kBF16 ? KvCacheDtype::kBf16 : KvCacheDtype::kF32;
}
// Bytes of one cached element (kAuto must be resolved first: it counts as fp32).
inline int KvCacheElementBytes(KvCacheDtype dtype) { return dtype == KvCacheDtype::kBf16 ? 2 : 4; }

}  // namespace pinmoe
