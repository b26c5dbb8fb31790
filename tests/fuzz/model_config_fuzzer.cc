// Fuzzes config.json and generation_config.json parsing.
#include <cstdint>
#include <string_view>

#include "common/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = pinmoe::ParseModelConfig(text, "fuzz");
  if (config.ok()) {
    for (int l = 0; l < config->num_layers && l < 4096; ++l) (void)config->IsMoeLayer(l);
    (void)config->ExpertBytes();
  }
  (void)pinmoe::ParseGenerationConfig(text, "fuzz");
  return 0;
}
