#include "common/dtype.h"

#include <cmath>

#include "common/status.h"

namespace pinmoe {
namespace {
struct DTypeEntry {
  std::string_view name;
  DType dtype;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {"F32", DType::kF32, 4},    {"F16", DType::kF16, 2},       {"BF16", DType::kBF16, 2},
    {"F64", DType::kF64, 8},    {"I64", DType::kI64, 8},       {"I32", DType::kI32, 4},
    {"I16", DType::kI16, 2},    {"I8", DType::kI8, 1},         {"U8", DType::kU8, 1},
    {"BOOL", DType::kBool, 1},  {"F8_E4M3", DType::kF8E4M3, 1}, {"F8_E5M2", DType::kF8E5M2, 1},
};
}  // namespace

std::optional<DType> ParseDType(std::string_view name) {
  for (const auto& e : kDTypes) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}

std::string_view DTypeName(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  PINMOE_CHECK(false);
}

size_t DTypeSize(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  PINMOE_CHECK(false);
}

bool IsWeightDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

float F16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: value = mant * 2^-24, exact in fp32
      float v = std::ldexp(static_cast<float>(mant), -24);
      std::memcpy(&bits, &v, sizeof(bits));
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

uint16_t F32ToF16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  float mag = std::fabs(value);
  if (std::isnan(value)) return sign | 0x7e00u;
  if (mag >= 65520.0f) return sign | 0x7c00u;
  if (mag < 6.103515625e-05f) {  // subnormal range, round to nearest even on 2^-24 steps
    float scaled = mag * 16777216.0f;
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t m = bits & 0x7fffffffu;
  uint32_t rounded = m + 0xfffu + ((m >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - (112u << 23)) >> 13);
}

void WidenToF32(DType dtype, const uint8_t* src, size_t count, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    case DType::kBF16:
      for (size_t i = 0; i < count; ++i) {
        uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        dst[i] = Bf16ToF32(b);
      }
      return;
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) {
        uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        dst[i] = F16ToF32(b);
      }
      return;
    case DType::kF64:
    case DType::kI64:
    case DType::kI32:
    case DType::kI16:
    case DType::kI8:
    case DType::kU8:
    case DType::kBool:
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      break;
  }
  PINMOE_CHECK(false && "WidenToF32 on a non-weight dtype");
}

}  // namespace pinmoe
