// Fuzzes the safetensors header parser: the first 8 bytes choose the data-section size, the rest is the
// JSON header. Any input must give a Status, never a crash, and accepted tensors must lie inside the data.
#include <cstdint>
#include <cstring>
#include <string_view>

#include "common/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t data_size;
  std::memcpy(&data_size, data, 8);
  data_size %= (1ull << 32);
  std::string_view header(reinterpret_cast<const char*>(data + 8), size - 8);
  auto tensors = pinmoe::ParseSafetensorsHeader(header, data_size, "fuzz");
  if (tensors.ok()) {
    for (const auto& t : *tensors) {
      if (t.end > data_size || t.begin > t.end) __builtin_trap();
    }
  }
  return 0;
}
